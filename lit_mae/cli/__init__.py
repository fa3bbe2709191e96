"""The command line: `lightning fit --config configs/pretrain.yaml` (also `lit-mae ...` and
`python -m lit_mae ...`), one LightningCLI, plus lit-mae's own `convert` and `visualize`."""

from __future__ import annotations

import sys
from datetime import timedelta

import torch


def main(args: list[str] | None = None) -> None:
    """The console scripts' entry point (returns None: a console script exits with what it returns).

    `convert` (weights between formats) and `visualize` (a reconstruction grid of image files) are
    lit-mae's own subcommands; the rest is LightningCLI's."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["convert"]:
        from lit_mae.cli.convert import main as convert_main

        convert_main(argv[1:])
        return
    if argv[:1] == ["visualize"]:
        from lit_mae.cli.visualize import main as visualize_main

        visualize_main(argv[1:])
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

