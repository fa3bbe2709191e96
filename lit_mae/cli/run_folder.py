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

import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer


def _loggers(trainer_config: Any) -> list[Any]:
    """The logger entries of a parsed trainer config that take a `version` (TensorBoard, CSV)."""
    logger = trainer_config.get("logger")
    entries = logger if isinstance(logger, list) else [logger]
    return [entry for entry in entries if hasattr(entry, "get") and "version" in (entry.get("init_args") or {})]


def _first_free(folder: Path, prefix: str) -> str:
    index = 0
    while (folder / f"{prefix}_{index}").exists():
        index += 1
    return f"{prefix}_{index}"


def evaluation_beside_training(trainer_config: Any, subcommand: str) -> None:
    """Point the parsed trainer config of `validate`/`test`/`predict` at `<run>/<subcommand>_<n>`."""
    loggers = _loggers(trainer_config)
    for entry in loggers:
        args = entry["init_args"]
        version = args.get("version")
        run = Path(args.get("save_dir") or trainer_config.get("default_root_dir") or ".") / str(args.get("name") or "")
        run = run / (version if isinstance(version, str) else "")
        args["version"] = str(Path(version if isinstance(version, str) else "") / _first_free(run, subcommand))
    if trainer_config.get("logger") is False:  # config.yaml would land in default_root_dir itself
        root = Path(trainer_config.get("default_root_dir") or ".")
        trainer_config["default_root_dir"] = str(root / _first_free(root, subcommand))


def _checkpoint_folders(trainer: Trainer) -> list[Path]:
    """Where the checkpoint callbacks will write (their `dirpath`, else `<log_dir>/checkpoints`)."""
    log_dir = Path(trainer.log_dir or trainer.default_root_dir)
    return [Path(callback.dirpath) if callback.dirpath else log_dir / "checkpoints"
            for callback in trainer.checkpoint_callbacks]


def check_fresh_fit(trainer: Trainer, ckpt_path: str | None) -> None:
    """A FileExistsError when a fit without `ckpt_path` would write into another run's folder."""
    if ckpt_path or not trainer.is_global_zero:  # other ranks start after rank 0 has begun writing
        return
    run = Path(trainer.log_dir or trainer.default_root_dir)
    found = [str(run / "config.yaml")] if (run / "config.yaml").is_file() else []
    for folder in _checkpoint_folders(trainer):
        found += sorted(str(path) for path in folder.glob("*.ckpt"))[:2]
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
    folders = [Path(trainer.log_dir or trainer.default_root_dir), *(_checkpoint_folders(trainer) if checkpoints else [])]
    for folder in dict.fromkeys(folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
                pass
        except OSError as error:
            raise OSError(error.errno, f"cannot write into {folder}, where this run would keep its logs and "
                                       f"checkpoints: {error.strerror or error}; choose a writable place "
                                       "(--trainer.logger.init_args.save_dir, --trainer.default_root_dir)") from None
