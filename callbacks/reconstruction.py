"""`ReconstructionGridLogger`: reconstruction grids of fixed validation images during pretraining."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from lit_mae.callbacks.monitors import sharded_strategy
from lit_mae.datamodules.base import declared_statistics
from lit_mae.datamodules.batch import read_batch
from lit_mae.visualize import legible_scale, reconstruction_grid, save_png, titled


class ReconstructionGridLogger(Callback):
    """Every `every_n_epochs` validations (and when training ends), a `reconstruction_grid` of the
    first `num_images` validation images (captured once, so every grid shows the same images and
    masks, drawn from `seed`).

    The grid (small images enlarged to at least 96 px, a title above each column: `titled`) goes
    to TensorBoard (`add_image`), to any logger with a `log_image` method (as W&B's), and to
    `<run directory>/<dirname>/epoch{N:03d}.png` (N the 0-based epoch). Pixels are de-normalised
    with the DataModule's `mean`/`std` (attributes or hyper-parameters); a DataModule that declares
    neither gets each channel stretched from its lowest to its highest value over the captured
    images (a warning says so). Display only: a logger that takes no images, or any failure, warns
    once and never stops training.

    Images of other than 1 or 3 channels are shown through `display_bands` (e.g. [3, 2, 1]: true
    colour for Sentinel-2; one band: grey; default the first three), and `stretch` maps each shown
    band's 2nd-98th percentile to black..white (`lit_mae.visualize`); `stretch: null` stretches
    when the images have other than 1 or 3 channels or the DataModule reads them at full depth
    (16-bit and float data, whose values fill little of the [0, 1] range).

    Rank 0 only: under DDP the other ranks draw and write nothing (the run directory is resolved
    once in `setup`, where every rank takes part in Lightning's broadcast of it). Off (a warning)
    under FSDP/ModelParallel, whose sharded weights run only inside every rank's wrapped forward.
    """

    def __init__(self, every_n_epochs: int = 10, num_images: int = 8, mask_ratio: float | None = None,
                 seed: int = 0, dirname: str = "reconstructions", display_bands: list[int] | None = None,
                 stretch: bool | None = None) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError(f"ReconstructionGridLogger: every_n_epochs={every_n_epochs} and "
                             f"num_images={num_images} must be at least 1")
        self.every_n_epochs, self.num_images = every_n_epochs, num_images
        self.mask_ratio, self.seed, self.dirname = mask_ratio, seed, dirname
        self.display_bands, self.stretch = display_bands, stretch
        self._images: list[Tensor] = []  # (b, C, H, W) chunks on the CPU, normalised as the model sees them
        self._captured = False  # set after the first validation: the image set is then fixed
        self._logged_step: int | None = None
        self._run_dir: Path | None = None
        self._sharded_by: str | None = None
        self._warned: set[str] = set()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # `trainer.log_dir` is a collective under DDP (rank 0's path is broadcast): ask on every
        # rank here, never from the rank-0-only hooks below, where rank 0 would wait for the others
        self._run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        self._sharded_by = sharded_strategy(trainer)

    def folder(self, trainer: Trainer) -> Path:
        """Where the PNG files go: `<run directory>/<dirname>`."""
        return (self._run_dir or Path(trainer.default_root_dir)) / self.dirname

    # --- capturing the images ----------------------------------------------------------------
    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._captured or dataloader_idx != 0 or not trainer.is_global_zero:
            return
        have = sum(len(chunk) for chunk in self._images)
        if have < self.num_images:
            self._images.append(read_batch(batch).images[: self.num_images - have].detach().float().cpu())

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._captured = self._captured or bool(self._images)
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._log(trainer, pl_module, trainer.current_epoch)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero and self._logged_step != trainer.global_step:
            self._log(trainer, pl_module, max(trainer.current_epoch - 1, 0))  # the epoch loop has moved on

    # --- drawing and sending -----------------------------------------------------------------
    def _log(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        if self._sharded_by:
            self._warn_once("sharded", f"ReconstructionGridLogger is off: the model is sharded by "
                                       f"{self._sharded_by}, so one rank cannot run it alone")
            return
        if not self._images:
            self._warn_once("no-images", "ReconstructionGridLogger: no validation images were seen, so there "
                                         "is no reconstruction grid (is validation turned off?)")
            return
        self._logged_step = trainer.global_step
        try:
            grid = self._grid(trainer, pl_module)
        except Exception as error:  # display only: never stop training
            self._warn_once("grid", f"ReconstructionGridLogger: could not draw the grid ({error!r}); "
                                    "training goes on without it")
            return
        tag = "val/reconstructions"
        for logger in trainer.loggers:
            self._send(logger, grid, tag, trainer.global_step)
        folder = self.folder(trainer)
        try:
            save_png(grid, folder / f"epoch{epoch:03d}.png")
        except Exception as error:
            self._warn_once("png", f"ReconstructionGridLogger: could not write the PNG under {folder} "
                                   f"({error!r}); training goes on without it")

    def _grid(self, trainer: Trainer, pl_module: LightningModule) -> Tensor:
        images = torch.cat(self._images)  # (B, C, H, W)
        mean, std = self._statistics(trainer, images)
        model = getattr(pl_module, "model", pl_module)
        stretch = self.stretch
        if stretch is None:
            full_depth = getattr(getattr(trainer, "datamodule", None), "full_depth", False) is True
            stretch = images.shape[1] not in (1, 3) or full_depth
        grid = reconstruction_grid(model, images, mean, std, self.mask_ratio, self.seed,
                                   display_bands=self.display_bands, stretch=stretch)
        return titled(grid, legible_scale(images.shape[-2]))

    def _statistics(self, trainer: Trainer, images: Tensor) -> tuple[Sequence[float], Sequence[float]]:
        declared = declared_statistics(getattr(trainer, "datamodule", None))
        if declared is not None and len(declared[0]) == images.shape[1]:
            return declared
        self._warn_once("statistics", "ReconstructionGridLogger: the DataModule declares no `mean`/`std` "
                                      "(attributes or hyper-parameters); each channel of the grid is stretched "
                                      "from its lowest to its highest value")
        low = images.amin(dim=(0, 2, 3))  # (C,)
        span = (images.amax(dim=(0, 2, 3)) - low).clamp_min(1e-12)
        # pixels = images * std + mean maps low -> 0 and high -> 1
        return tuple((-low / span).tolist()), tuple((1 / span).tolist())

    def _send(self, logger: Any, grid: Tensor, tag: str, step: int) -> None:
        name = type(logger).__name__
        try:
            experiment = logger.experiment
            if hasattr(experiment, "add_image"):  # TensorBoard's SummaryWriter
                experiment.add_image(tag, grid, global_step=step, dataformats="CHW")
            elif callable(getattr(logger, "log_image", None)):  # W&B, Neptune, ... : (H, W, C) arrays
                logger.log_image(key=tag, images=[grid.permute(1, 2, 0).numpy()], step=step)
            else:
                self._warn_once(f"unsupported-{name}", f"ReconstructionGridLogger: {name} takes no images; "
                                                       "the grids are only written as PNG files")
        except Exception as error:
            self._warn_once(f"failed-{name}", f"ReconstructionGridLogger: sending the grid to {name} failed "
                                              f"({error!r}); training goes on without it")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=2)
