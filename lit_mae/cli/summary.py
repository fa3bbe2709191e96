"""What `fit` prints when it ends: where the run's folder, checkpoints and grids are, and the
latest metrics (losses, probe and kNN accuracies), which otherwise live only in the logs."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

# shown first, in this order, when logged; then any other accuracy
LEADING_METRICS = ("train/loss_epoch", "train/loss", "val/loss", "val/acc_top1", "online_probe/val_acc", "knn/val_acc")


def latest_metrics(trainer: Trainer) -> dict[str, float]:
    """The epoch-level losses and accuracies of `trainer.callback_metrics`, as floats."""
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
               if getattr(value, "numel", lambda: 1)() == 1}
    shown = {name: metrics[name] for name in LEADING_METRICS if name in metrics}
    if "train/loss_epoch" in shown:
        shown.pop("train/loss", None)  # the last step's value; the epoch mean is the one to read
    shown.update({name: value for name, value in metrics.items() if "acc" in name and "train" not in name})
    return shown


def _format(name: str, value: float) -> str:
    shown = name.removesuffix("_epoch")
    return f"{shown} {value:.1%}" if "acc" in name else f"{shown} {value:.4f}"


def _checkpoints(trainer: Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    if callback is None or not getattr(callback, "dirpath", None):
        return None
    folder = Path(callback.dirpath)
    last = folder / "last.ckpt"
    detail = ""
    if last.is_symlink():
        detail = f"  (last.ckpt -> {os.readlink(last)})"
    elif last.is_file():
        detail = "  (last.ckpt)"
    best = getattr(callback, "best_model_path", "")
    if best and getattr(callback, "monitor", None):
        detail += f"  best by {callback.monitor}: {Path(best).name}"
    return f"{folder}{os.sep}{detail}"


def _grids(trainer: Trainer) -> str | None:
    from lit_mae.callbacks import ReconstructionGridLogger

    for callback in trainer.callbacks:
        if isinstance(callback, ReconstructionGridLogger):
            folder = callback.folder(trainer)
            pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
            return f"{folder}{os.sep}  ({len(pngs)} PNG, newest {pngs[-1].name})" if pngs else None
    return None


def fit_summary(trainer: Trainer) -> str:
    """A few lines: the run's folder, checkpoints, grids, how to watch the logs, the latest metrics.
    Call it on every rank (it reads `trainer.log_dir`, a broadcast from rank 0 under DDP)."""
    run = Path(trainer.log_dir or trainer.default_root_dir)
    lines = [f"fit finished after {trainer.current_epoch} epochs, {trainer.global_step} steps; run folder {run}"]
    metrics = latest_metrics(trainer)
    if metrics:
        lines.append("  metrics      " + ", ".join(_format(name, value) for name, value in metrics.items()))
    for label, where in (("checkpoints", _checkpoints(trainer)), ("grids", _grids(trainer))):
        if where:
            lines.append(f"  {label:<12} {where}")
    board = next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)
    if board is not None:
        lines.append(f"  logs         tensorboard --logdir {board.save_dir}")
    return "\n".join(lines)
