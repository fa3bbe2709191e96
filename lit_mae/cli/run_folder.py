"""Where a run writes, checked before it starts: one run per folder, evaluations beside it.

- `fit` without `--ckpt_path` into a folder that already holds a run (its `config.yaml`, or
  checkpoints where this run would write its own) stops with a message saying how to resume
  it or where else to write: two runs never mix their logs, grids, `config.yaml` or checkpoints,
  and `last.ckpt` is always the newest checkpoint of the one run in its folder.
- `validate`, `test` and `predict` write their logs and `config.yaml` into a new folder inside the
  run's (`<run>/validate_0`, `<run>/test_1`, ...), never over the training record.
- Every folder a run will write into is written to once before any work, so that an unwritable
  or read-only place is named at once rather than after hours of training.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lit_mae.callbacks.checkpoint_io import is_local

FOLDER_LOGGERS = (TensorBoardLogger, CSVLogger)


def _class_of(entry: Any) -> type | None:
    """The class a parsed `class_path` entry names, or None."""
    class_path = entry.get("class_path") if hasattr(entry, "get") else None
    if not isinstance(class_path, str):
        return None
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _entries(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _folder_loggers(trainer_config: Any) -> list[Any]:
    """The logger entries whose (save_dir, name, version) is the run's folder: TensorBoard and CSV
    loggers with a fixed version (an automatic one gives every run a new folder anyway)."""
    return [entry for entry in _entries(trainer_config.get("logger"))
            if isinstance(_class_of(entry), type) and issubclass(_class_of(entry), FOLDER_LOGGERS)
            and isinstance((entry.get("init_args") or {}).get("version"), str)]


def _first_free(folder: Path, prefix: str) -> str:
    index = 0
    while (folder / f"{prefix}_{index}").exists():
        index += 1
    return f"{prefix}_{index}"


def evaluation_beside_training(trainer_config: Any, subcommand: str) -> None:
    """Point the parsed trainer config of `validate`/`test`/`predict` at `<run>/<subcommand>_<n>`
    for its logs and `config.yaml`; its checkpoint callbacks keep the run's `checkpoints/` folder,
    where `--ckpt_path last` looks. Other loggers (and remote folders) are left as they are."""
    loggers = _folder_loggers(trainer_config)
    if loggers:
        args = loggers[0]["init_args"]
        root = str(args.get("save_dir") or trainer_config.get("default_root_dir") or ".")
        parts = [str(args.get("name") or ""), args["version"]]
    elif trainer_config.get("logger") is False:  # config.yaml would land in default_root_dir itself
        root, parts = str(trainer_config.get("default_root_dir") or "."), []
    else:
        return
    if not is_local(root):
        return
    run = Path(root, *parts)
    for entry in _entries(trainer_config.get("callbacks")):
        cls = _class_of(entry)
        if isinstance(cls, type) and issubclass(cls, ModelCheckpoint) and not entry["init_args"].get("dirpath"):
            entry["init_args"]["dirpath"] = str(run / "checkpoints")
    folder = _first_free(run, subcommand)
    for entry in loggers:
        entry["init_args"]["version"] = str(Path(entry["init_args"]["version"]) / folder)
    if trainer_config.get("logger") is False:
        trainer_config["default_root_dir"] = str(run / folder)


def _checkpoint_folders(trainer: Trainer) -> list[str]:
    """Where the checkpoint callbacks will write: their `dirpath`, else Lightning's default,
    `<save_dir>/<name>/<version>/checkpoints` of the first logger (`<default_root_dir>/checkpoints`
    without one)."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        default = os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version, "checkpoints")
    else:
        default = os.path.join(trainer.default_root_dir, "checkpoints")
    return [str(callback.dirpath or default) for callback in trainer.checkpoint_callbacks]  # remote ones keep "://"


def _run_folder(trainer: Trainer) -> Path | None:
    """The run's own local folder (its logs and `config.yaml`), or None: a logger that shares its
    folder between runs (MLflow, W&B) or a remote one."""
    if any(not isinstance(logger, FOLDER_LOGGERS) for logger in trainer.loggers):
        return None
    folder = trainer.log_dir or trainer.default_root_dir
    return Path(folder) if is_local(folder) else None


def check_fresh_fit(trainer: Trainer, ckpt_path: str | None) -> None:
    """A FileExistsError when a fit without `ckpt_path` would write into another run's folder."""
    # rank 0 only: ranks that Lightning's launcher starts later would find rank 0's first files
    # (under torchrun, the agent stops the others when rank 0 exits)
    if ckpt_path or not trainer.is_global_zero:
        return
    run = _run_folder(trainer)
    if run is None:
        return
    found = [str(run / "config.yaml")] if (run / "config.yaml").is_file() else []
    for folder in _checkpoint_folders(trainer):
        if is_local(folder):
            found += sorted(str(path) for path in Path(folder).glob("*.ckpt"))[:2]
    if found:
        raise FileExistsError(
            f"{run} already holds a run ({', '.join(found[:3])}): resume it with --ckpt_path last (or a "
            "checkpoint file), or give this run a folder of its own, e.g. --trainer.logger.init_args.name NAME "
            "(or --trainer.default_root_dir DIR without a logger); delete the folder to start over in it")


def check_writable(trainer: Trainer, checkpoints: bool = True) -> None:
    """An OSError naming the first folder of the run (its log folder, and with `checkpoints` the
    checkpoint folders) that cannot be written; missing ones are made."""
    if not trainer.is_global_zero:
        return
    folders = [str(trainer.log_dir or trainer.default_root_dir), *(_checkpoint_folders(trainer) if checkpoints else [])]
    for folder in dict.fromkeys(Path(folder) for folder in folders if is_local(folder)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
                pass
        except OSError as error:
            raise OSError(error.errno, f"cannot write into {folder}, where this run would keep its logs and "
                                       f"checkpoints: {error.strerror or error}; choose a writable place "
                                       "(--trainer.logger.init_args.save_dir, --trainer.default_root_dir)") from None
