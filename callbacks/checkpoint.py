"""`AtomicModelCheckpoint`: Lightning's `ModelCheckpoint` that a kill or a full disk cannot corrupt."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_mae.callbacks.checkpoint_io import PARTIAL_SUFFIX, AtomicCheckpointIO, replace_with_symlink

log = logging.getLogger(__name__)


class AtomicModelCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` (same arguments) whose files are always whole: a run killed at any moment,
    even while saving, resumes from an intact `last.ckpt` and loses at most one interval.

    - Files are written by `lit_mae.callbacks.checkpoint_io.AtomicCheckpointIO` (staged beside the target,
      fsynced, renamed), which this callback installs when the Trainer uses Lightning's default
      writer (a custom `CheckpointIO` plugin is kept, with a warning).
    - `save_last: link` swaps the link in one rename (Lightning removes it, then links anew), and
      the file the link points to is deleted only after the link has moved on (Lightning deletes
      the previous top-k file first, leaving `last.ckpt` dangling meanwhile).
    - A write that fails (disk full, unwritable folder) raises `CheckpointWriteError` naming the
      file, its folder and the OS error; the previous files stay as they were.

    - A `last.ckpt` already in the folder is kept current by this run (one run per folder; the
      command line refuses a fresh run into a folder that holds one): resuming from a backup copy
      relinks it instead of starting a `last-v1.ckpt` beside a stale `last.ckpt`.

    A kill between writing a new file and moving the link leaves that file beside the link (it is
    overwritten when the resumed run reaches the same step or epoch).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._removal_after_link: list[str] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        writer = trainer.strategy.checkpoint_io
        if type(writer) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        elif not isinstance(writer, AtomicCheckpointIO):
            log.warning("AtomicModelCheckpoint: the Trainer writes checkpoints with %s, kept as given; files "
                        "are atomic only with lit_mae.callbacks.checkpoint_io.AtomicCheckpointIO", type(writer).__name__)
        if trainer.is_global_zero and self.dirpath is not None and os.path.isdir(self.dirpath):
            for staging in Path(self.dirpath).glob(f".*{PARTIAL_SUFFIX}"):  # left by a killed run
                staging.unlink(missing_ok=True)

    @staticmethod
    def _link_checkpoint(trainer: Trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            replace_with_symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), linkpath)
        trainer.strategy.barrier()

    def _remove_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        if self.save_last == "link":  # the link may still point there: delete once it has moved
            self._removal_after_link.append(filepath)
            return
        super()._remove_checkpoint(trainer, filepath)

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict) -> None:
        if self.save_last and not self.last_model_path:
            # a last.ckpt already in the folder is this run's to keep current (a resumed run, from
            # last.ckpt or from a backup saved before any last.ckpt). Lightning would write a
            # last-v1.ckpt beside it, and the stale last.ckpt would go on naming the old file
            name = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
            if os.path.lexists(name):
                self.last_model_path = name
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._remove_unlinked(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._remove_unlinked(trainer)

    def _remove_unlinked(self, trainer: Trainer) -> None:
        pending, self._removal_after_link = self._removal_after_link, []
        linked = os.path.realpath(self.last_model_path) if self.last_model_path else None
        for filepath in pending:
            if linked is not None and os.path.realpath(filepath) == linked:
                self._removal_after_link.append(filepath)  # still the link's target
            else:
                super()._remove_checkpoint(trainer, filepath)
