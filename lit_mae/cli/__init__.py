"""The command line: `lightning fit --config configs/pretrain.yaml` (also `lit-mae ...` and
`python -m lit_mae ...`): one LightningCLI for fit/validate/test/predict, plus lit-mae's own
subcommands, listed in `OWN_SUBCOMMANDS`."""

from __future__ import annotations

import importlib
import sys
from datetime import timedelta
from typing import NamedTuple

import torch


class Subcommand(NamedTuple):
    module: str  # a module with `main(argv: list[str]) -> None`
    help: str  # one line for `lit-mae --help`


# lit-mae's own subcommands (argparse, each in its module); `lit-mae --help` lists them beside
# LightningCLI's. A new one is a line here and a module with `main(argv)`.
OWN_SUBCOMMANDS: dict[str, Subcommand] = {
    "convert": Subcommand("lit_mae.cli.convert", "Convert MAE weights between formats (lightning, hf, official, timm)."),
    "visualize": Subcommand("lit_mae.cli.visualize", "Draw a reconstruction grid of image files with a checkpoint."),
    "export-encoder": Subcommand("lit_mae.cli.export_encoder", "Write the encoder (no masking) as ONNX or a torch.export .pt2 file."),
    "embed": Subcommand("lit_mae.cli.embed", "Write one row of features per image (a folder or a DataModule), no masking."),
    "prepare": Subcommand("lit_mae.cli.prepare", "Write LitData shards (for StreamingDataModule) from an image folder, CIFAR or the digits."),
    "stats": Subcommand("lit_mae.cli.stats", "Print the per-channel mean/std of an image folder's training split (for normalize)."),
}

# one line each for LightningCLI's subcommands (Lightning's own docstrings are cut mid-sentence)
LIGHTNING_SUBCOMMANDS: dict[str, str] = {
    "fit": "Train a model: pretraining, linear probe or fine-tuning (--config configs/...).",
    "validate": "Run the validation set once through a checkpoint.",
    "test": "Run the test set once through a checkpoint and print the metrics.",
    "predict": "Embed a DataModule's images with a checkpoint: writes predictions.pt into the run's predict_N folder.",
}


def main(args: list[str] | None = None) -> None:
    """The console scripts' entry point (returns None: a console script exits with what it returns)."""
    from lit_mae.cli.noise import quiet_known_noise

    quiet_known_noise()
    argv = sys.argv[1:] if args is None else args
    if argv[:1] and argv[0] in OWN_SUBCOMMANDS:
        importlib.import_module(OWN_SUBCOMMANDS[argv[0]].module).main(argv[1:])
        return
    from lit_mae.cli.errors import exit_on_user_error
    from lit_mae.cli.lightning_cli import run_cli

    try:
        run_cli(args)
    except Exception as error:  # a bad value or file: its own message as the last line, exit 2
        exit_on_user_error(error)
        raise
    leave_process_group()


def leave_process_group(timeout: timedelta = timedelta(seconds=60)) -> None:
    """After a run, leave torch.distributed (Lightning leaves its group to interpreter exit). With
    gloo every rank first waits for the others: otherwise a rank whose peer has already gone can
    abort at exit ("terminate called without an active exception", exit code -6) although the
    work is done and saved. A rank that never comes is named after `timeout`."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    try:
        if torch.distributed.get_backend() == "gloo":
            torch.distributed.monitored_barrier(timeout=timeout)
    finally:
        torch.distributed.destroy_process_group()

