"""`python -m lit_mae fit --config configs/pretrain.yaml`."""

import sys

from lit_mae.cli import main

sys.argv[0] = "python -m lit_mae"  # what usage lines and errors call the command
main()
