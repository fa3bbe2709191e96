"""The command line: one LightningCLI in subclass mode for model and data.

`lightning fit --config configs/pretrain.yaml` (also `lit-mae ...` and `python -m lit_mae ...`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import inspect
import re
import sys
from datetime import timedelta
from typing import NoReturn

import torch

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lit_mae.datamodules  # noqa: F401  (registers the DataModules as subclasses for short names)
import lit_mae.classification  # noqa: F401  (likewise the LightningModules)
import lit_mae.pretrain  # noqa: F401

_CLASS_OPTION = re.compile(r"class_path '([\w.]+)'[^\n]*\n\s*Option '(\w+)' is not accepted")
_PARSER_OPTION = re.compile(r"(?:Group '([\w.]+)' )?does not accept option '([\w.]+)'")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)")


def _parameter_names(class_path: str) -> list[str]:
    """The keyword names a class accepts: dataclass fields or `__init__` parameters."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return []
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _hint(wrong: str, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(wrong, valid, n=1)
    guess = f" Did you mean '{close[0]}'?" if close else ""
    return f"\n'{wrong}' is not a key of {where}.{guess} Valid keys: {', '.join(sorted(valid))}"


def _option_names(parser: argparse.ArgumentParser) -> set[str]:
    """Every option destination of a parser and of its subcommands' parsers (`trainer.max_epochs`)."""
    names = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names |= _option_names(sub)
        elif action.dest:
            names.add(action.dest)
    return names


class LitMAEArgumentParser(LightningArgumentParser):
    """Rejects unknown config keys with the valid names at that level (and a likely intended one)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        hints = []
        for class_path, wrong in _CLASS_OPTION.findall(message):
            if valid := _parameter_names(class_path):
                hints.append(_hint(wrong, valid, class_path))
        parser = getattr(ex, "subcommand_parser", None) or self
        keys = [f"{group}.{key}" if group else key for group, key in _PARSER_OPTION.findall(message)]
        for args in _UNRECOGNIZED.findall(message):
            keys += [a.lstrip("-").split("=")[0] for a in args.split() if a.startswith("--")]
        for key in keys:
            prefix, _, wrong = key.rpartition(".")
            depth = key.count(".")
            valid = sorted({name.split(".")[depth] for name in _option_names(parser)
                            if name.count(".") >= depth and name.startswith(prefix)})
            if valid:
                hints.append(_hint(wrong, valid, f"'{prefix}'" if prefix else "the top level"))
        super().error(message + "".join(dict.fromkeys(hints)), ex)


class LitMAECLI(LightningCLI):
    """LightningCLI that knows lit-mae's modules by their short class names.

    `test_after_fit: true` (top level of a config) runs `test` when `fit` ends, on the checkpoint
    that the ModelCheckpoint callback rates best (the final weights if there is none), and prints
    the test metrics.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, test the best checkpoint (or the final weights) and print the metrics")

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit"):
            return
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if self.trainer.is_global_zero:  # the test itself runs on every rank
            print(f"\ntesting {'the best checkpoint ' + best if best else 'the final weights'}", flush=True)
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


def run_cli(args: list[str] | None = None) -> LitMAECLI:
    """Parse `args` (default: sys.argv), run the subcommand, return the CLI (its trainer, model, data)."""
    return LitMAECLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_class=LitMAEArgumentParser,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """The console scripts' entry point (returns None: a console script exits with what it returns).

    `convert` (weights between formats) and `visualize` (a reconstruction grid of image files) are
    lit-mae's own subcommands; the rest is LightningCLI's."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["convert"]:
        from lit_mae.interop.convert import main as convert_main

        convert_main(argv[1:])
        return
    if argv[:1] == ["visualize"]:
        from lit_mae.visualize import main as visualize_main

        visualize_main(argv[1:])
        return
    run_cli(args)
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


if __name__ == "__main__":
    main()
