"""`python -m lit_mae fit --config configs/pretrain.yaml`."""

from lit_mae.cli import main

main()
