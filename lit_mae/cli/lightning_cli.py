"""One LightningCLI in subclass mode for model and data: `lightning fit --config configs/pretrain.yaml`."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
import warnings
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lit_mae.datamodules  # noqa: F401  (registers the DataModules as subclasses for short names)
import lit_mae.systems  # noqa: F401  (likewise the LightningModules)
from lit_mae.callbacks.predictions import EmbeddingWriter
from lit_mae.cli.checkpoint_rule import model_settings
from lit_mae.cli.run_folder import check_fresh_fit, check_writable, evaluation_beside_training
from lit_mae.cli.summary import fit_summary
from lit_mae.systems.base import LitSystem


class UnknownKey(NamedTuple):
    key: str  # the misspelled name
    where: str  # a class path ('lit_mae.LitMAE') or a dotted group ('trainer'; '' for the top level)
    in_class: bool  # `where` is a class path


def unknown_keys(message: str) -> list[UnknownKey]:
    """The unknown keys a jsonargparse error message names, and where each was given.

    jsonargparse (4.3x-4.5x) names an unknown key only in its message text: neither the exception
    nor `ArgumentParser.error` carries it as data, and there is no public hook for it. This is the
    one place that reads that text; tests/test_cli.py::test_unknown_keys_reads_what_jsonargparse_says
    fails when jsonargparse words it otherwise.
    """
    found = [UnknownKey(key, class_path, True) for class_path, key in _CLASS_OPTION.findall(message)]
    dotted = [f"{group}.{key}" if group else key for group, key in _GROUP_OPTION.findall(message)]
    for arguments in _UNRECOGNIZED.findall(message):
        dotted += [argument.lstrip("-").split("=")[0] for argument in arguments.split() if argument.startswith("--")]
    for name in dotted:
        where, _, key = name.rpartition(".")
        found.append(UnknownKey(key, where, False))
    return found


_CLASS_OPTION = re.compile(r"class_path '([\w.]+)'[^\n]*\n\s*Option '(\w+)' is not accepted")
_GROUP_OPTION = re.compile(r"(?:Group '([\w.]+)' )?does not accept option '([\w.]+)'")
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


def _group_names(parsers: list[LightningArgumentParser], group: str) -> list[str]:
    """The keys directly under `group` ('' for the top level) in any of `parsers`, from their defaults."""
    prefix = f"{group}." if group else ""
    keys = [key.removeprefix(prefix) for parser in parsers for key in parser.get_defaults().keys()
            if key.startswith(prefix)]
    return sorted({key.split(".")[0] for key in keys})


def _is_lit_system(class_path: object) -> bool:
    """Whether a model's class path names one of lit-mae's systems (LitMAE, LitLinearProbe, LitFineTune)."""
    module, _, name = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, LitSystem)


def _hint(wrong: str, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(wrong, valid, n=1)
    guess = f" Did you mean '{close[0]}'?" if close else ""
    return f"\n'{wrong}' is not a key of {where}.{guess} Valid keys: {', '.join(sorted(valid))}"


class LitMAEArgumentParser(LightningArgumentParser):
    """Rejects unknown config keys with the valid names at that level (and a likely intended one).

    The main parser reports errors in a subcommand's keys (`trainer.max_epoch` in a YAML file) and
    has no public view of the subcommand parsers: `LitMAECLI.init_parser` hands it them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subcommand_parsers: list[LightningArgumentParser] = []

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        hints = []
        parsers = [self, *self.subcommand_parsers]
        for wrong in unknown_keys(message):
            valid = _parameter_names(wrong.where) if wrong.in_class else _group_names(parsers, wrong.where)
            if valid:
                label = wrong.where if wrong.in_class else (f"'{wrong.where}'" if wrong.where else "the top level")
                hints.append(_hint(wrong.key, valid, label))
        super().error(message + "".join(dict.fromkeys(hints)), ex)


class LitMAECLI(LightningCLI):
    """LightningCLI that knows lit-mae's modules by their short class names, applies lit-mae's
    `--ckpt_path` rule (`lit_mae.cli.checkpoint_rule`) and keeps one run per folder
    (`lit_mae.cli.run_folder`).

    `test_after_fit: true` (top level of a config) runs `test` when `fit` ends, on the checkpoint
    that the ModelCheckpoint callback rates best (the final weights if there is none), and prints
    the test metrics.
    """

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # LightningCLI makes the main parser first, then one per subcommand (fit, validate, ...)
        parser = super().init_parser(**kwargs)
        main = getattr(self, "_main_parser", None)
        if main is None:
            self._main_parser = parser
        elif isinstance(main, LitMAEArgumentParser):
            main.subcommand_parsers.append(parser)
        return parser

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        # LightningCLI 2.6's step of this name; `lit-mae --help` then lists every subcommand with
        # one line: LightningCLI's (its own lines are docstrings cut mid-sentence) and lit-mae's
        # own, which `lit_mae.cli.main` runs before this parser sees them (help-only entries here)
        super()._add_subcommands(parser, **kwargs)
        from lit_mae.cli import LIGHTNING_SUBCOMMANDS, OWN_SUBCOMMANDS

        subcommands = parser._subcommands_action
        for action in subcommands._choices_actions:
            action.help = LIGHTNING_SUBCOMMANDS.get(action.dest, action.help)
        for name, own in OWN_SUBCOMMANDS.items():
            subcommands.add_subcommand(name, LightningArgumentParser(description=own.help), help=own.help)

    def _parse_ckpt_path(self) -> None:
        # Replaces LightningCLI 2.6's step of this name, which writes the checkpoint's
        # hyper-parameters over the model's settings (no public switch turns it off); the
        # rule and why: lit_mae.cli.checkpoint_rule. tests/test_cli_checkpoint_rule.py checks the name
        # still exists.
        subcommand = self.config.get("subcommand")
        if not subcommand or self.config[subcommand].get("model") is None:
            return
        model = self.config[subcommand]["model"]
        if not _is_lit_system(model.get("class_path")):  # another LightningModule: Lightning's way
            super()._parse_ckpt_path()
            return
        changes = model_settings(model.get("init_args") or {}, self.config[subcommand].get("ckpt_path"))
        if changes:
            update = {subcommand: {"model": {"class_path": model["class_path"], "init_args": changes}}}
            self.config = self.parser.parse_object(update, self.config)

    def before_instantiate_classes(self) -> None:
        if self.subcommand in ("validate", "test", "predict"):
            evaluation_beside_training(self.config[self.subcommand]["trainer"], self.subcommand)

    def before_fit(self) -> None:
        check_fresh_fit(self.trainer, self.config["fit"].get("ckpt_path"))
        check_writable(self.trainer)

    def before_validate(self) -> None:
        check_writable(self.trainer, checkpoints=False)
        # the checkpoint callbacks point at the run's checkpoints/ (an absolute path now, a relative
        # one when fit saved its state): Lightning then warns that it will not reload their
        # top-k bookkeeping, which validate/test/predict never use (they save nothing)
        warnings.filterwarnings("ignore", message=r"The dirpath has changed from .* won't be reloaded")

    before_test = before_validate

    def before_predict(self) -> None:
        self.before_validate()
        if isinstance(self.model, LitSystem) and not any(isinstance(callback, BasePredictionWriter)
                                                         for callback in self.trainer.callbacks):
            # what predict is for with lit-mae's systems: the embeddings, in the run's predict folder
            folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            self.trainer.callbacks.append(EmbeddingWriter(folder / "predictions.pt"))

    def after_predict(self) -> None:
        writers = [callback for callback in self.trainer.callbacks if isinstance(callback, EmbeddingWriter)]
        if self.trainer.is_global_zero:
            for writer in writers:
                path = writer.output_path(self.trainer)
                if path.is_file():
                    print(f"\nwrote the embeddings to {path} (torch.load(path, weights_only=True) gives a dict: "
                          "embeddings, labels, indices, paths; docs/training.md)", flush=True)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, test the best checkpoint (or the final weights) and print the metrics")

    def after_fit(self) -> None:
        summary = fit_summary(self.trainer)  # on every rank: under DDP `trainer.log_dir` is a collective
        if self.trainer.is_global_zero:
            print("\n" + summary, flush=True)
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
        parser_kwargs={"description": "lit-mae: MAE pretraining of Vision Transformers, linear probes and "
                                      "fine-tuning with PyTorch Lightning. Start with: lit-mae fit --config "
                                      "configs/pretrain.yaml"},
        save_config_kwargs={"overwrite": True},
        args=args,
    )
