"""`LitSystem`: what lit-mae's LightningModules share about the Trainer: the lr scaling rule, the
schedule's length, seeded per-step generators, and what a training step does with a NaN or inf loss."""

from __future__ import annotations

import contextlib
import math
import pickle
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

import numpy as np

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor

from lit_mae.datamodules.base import declared_statistics
from lit_mae.datamodules.sampling import derive_seed
from lit_mae.interop.checkpoint import (
    DATA_STATE, METRICS_STATE, config_from_hparams, describe_conflicts, read_lightning_checkpoint, weight_conflicts,
)
from lit_mae.models import MAEConfig
from lit_mae.optim import scaled_lr, warmup_cosine_scheduler
from lit_mae.systems.nonfinite import gradient_report, nonfinite_hint, parameter_report, tensor_report

NonFinitePolicy = Literal["raise", "skip"]
NONFINITE_STATE = "lit_mae_nonfinite"  # the skip counters, in every checkpoint of a LitSystem


def _train_loader_ready(trainer: Trainer) -> object:
    """The training dataloader, built now if the fit loop has not built it yet."""
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()
    return trainer.train_dataloader


def per_device_batch_size(trainer: Trainer) -> int:
    """Batch size of the training dataloader."""
    loader = _train_loader_ready(trainer)
    size = getattr(loader, "batch_size", None)
    if size is None:
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    if size is None:
        raise ValueError("cannot tell the training batch size to scale the learning rate; pass lr= explicitly")
    return int(size)


def effective_lr(trainer: Trainer, base_lr: float) -> float:
    """base_lr x per-device batch x devices x nodes x gradient accumulation / 256."""
    return scaled_lr(base_lr, per_device_batch_size(trainer), trainer.num_devices, trainer.num_nodes,
                     trainer.accumulate_grad_batches)


def schedule_steps(trainer: Trainer, warmup_epochs: float) -> tuple[int, int]:
    """(total optimizer steps, warmup steps) of this fit."""
    _train_loader_ready(trainer)  # with only max_steps set, nothing else counts the batches
    estimated = trainer.estimated_stepping_batches
    if not math.isfinite(estimated):
        raise ValueError("the warmup-cosine schedule needs a length: set trainer.max_epochs or trainer.max_steps")
    total = int(estimated)
    batches = trainer.num_training_batches
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else total
    return total, min(total, round(warmup_epochs * max(1, per_epoch)))


def check_numbers(owner: str, positive: Mapping[str, float] | None = None,
                  non_negative: Mapping[str, float] | None = None) -> None:
    """A ValueError naming the first setting that is not a finite number of the right sign."""
    for kind, values in (("positive", positive or {}), ("non-negative", non_negative or {})):
        for field, value in values.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or value < 0 or (kind == "positive" and value == 0):
                raise ValueError(f"{owner}.{field} must be a {kind} number, got {value!r}")


def step_seed(seed: int, stream: str, step: int, rank: int, micro: int = 0) -> int:
    """The seed of one training batch: (seed, stream, optimizer step, rank, and `micro`, the batch's
    place in a gradient-accumulation window, left out at 0 so that runs without accumulation keep
    their draws)."""
    return derive_seed(seed, stream, step, rank, *([micro] if micro else []))


def step_generator(seed: int, step: int, rank: int, stream: str = "train", micro: int = 0) -> torch.Generator:
    """A CPU generator seeded by `step_seed`, so masks survive a resume."""
    return torch.Generator().manual_seed(step_seed(seed, stream, step, rank, micro))


class LitSystem(LightningModule):
    """The base of `LitMAE`, `LitLinearProbe` and `LitFineTune`.

    Learning rate: `lr` when given, else `base_lr` x effective batch / 256 (`peak_lr`), with a
    per-step warmup-cosine schedule whose length comes from the Trainer (`with_schedule`).

    Non-finite losses: a training step ends with `return self.training_loss(loss, inputs, parts)`.
    `on_nonfinite="raise"` stops with the step, the loss components and a hint. `"skip"` skips the
    update and counts it (`skipped_steps`, logged as `train/skipped_steps`), and still stops after
    `max_consecutive_skips` skipped steps in a row. One process: the step returns None, so
    Lightning runs no backward; the optimizer sees no gradients (or, inside a gradient-accumulation
    window, only those of the window's other batches), the weights and optimizer state stay, and
    the lr schedule and `global_step` move on. Several processes (DDP): every rank learns whether
    any rank's loss is non-finite (one all-reduce of a flag per step), so all raise or all skip
    together; a skipping rank returns a zero loss tied to every trainable weight (DDP's gradient
    all-reduce completes) and the gradients are dropped before the optimizer step, so a skip
    drops the whole accumulation window. Finite losses with non-finite gradients are not caught
    here: with `16-mixed` Lightning's GradScaler skips those steps itself (and lowers its scale).
    `step_skipped` tells callbacks whether the latest step's update was skipped.
    """

    def __init__(self, base_lr: float, lr: float | None, warmup_epochs: float, min_lr: float,
                 on_nonfinite: NonFinitePolicy = "raise", max_consecutive_skips: int = 10) -> None:
        super().__init__()
        name = type(self).__name__
        check_numbers(name, positive={"base_lr": base_lr, **({} if lr is None else {"lr": lr})},
                      non_negative={"warmup_epochs": warmup_epochs, "min_lr": min_lr})
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"{name}.on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        if not isinstance(max_consecutive_skips, int) or max_consecutive_skips < 0:
            raise ValueError(f"{name}.max_consecutive_skips must be an integer >= 0, got {max_consecutive_skips!r}")
        self.base_lr, self.lr, self.warmup_epochs, self.min_lr = base_lr, lr, warmup_epochs, min_lr
        self.on_nonfinite, self.max_consecutive_skips = on_nonfinite, max_consecutive_skips
        self.skipped_steps, self._consecutive_skips, self._drop_grads = 0, 0, False
        self.step_skipped = False  # whether the latest training step's update was skipped (the same on every rank)

    @property
    def architecture(self) -> MAEConfig:
        """The encoder's (and for LitMAE the decoder's) architecture."""
        raise NotImplementedError

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> LitSystem:
        """Lightning's `load_from_checkpoint`; a file that is no Lightning checkpoint (empty, truncated,
        random bytes, plain weights) is named with what is wrong, instead of torch's reader error."""
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except (EOFError, KeyError, OSError, RuntimeError, pickle.UnpicklingError) as error:
            if isinstance(checkpoint_path, (str, Path)) and "://" not in str(checkpoint_path):
                read_lightning_checkpoint(checkpoint_path)  # raises the named error when the file is at fault
            raise error

    def on_fit_start(self) -> None:
        # Lightning warns when an epoch has fewer batches than `log_every_n_steps`: the step-level
        # curve would be empty. lit-mae's systems also log every epoch's mean (train/loss), so
        # nothing is lost; tiny folders (an epoch of 1-4 batches) would see it every run.
        warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the "
                                                  r"logging interval", category=PossibleUserWarning)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[NONFINITE_STATE] = {"skipped_steps": self.skipped_steps, "consecutive": self._consecutive_skips}
        if self._trainer is None:
            return
        # for readers of the file alone (`lit-mae visualize`, model cards): how the data was
        # normalised and what the run measured last
        statistics = declared_statistics(self._trainer.datamodule)
        if statistics is not None:
            checkpoint[DATA_STATE] = {"mean": list(statistics[0]), "std": list(statistics[1])}
        checkpoint[METRICS_STATE] = {name: float(value) for name, value in self._trainer.callback_metrics.items()
                                     if isinstance(value, (int, float, Tensor)) and torch.as_tensor(value).numel() == 1}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(NONFINITE_STATE, {})
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self._consecutive_skips = int(state.get("consecutive", 0))
        # before Lightning loads the weights: name the architecture fields, not only torch's key list
        ours, theirs = self.state_dict(), checkpoint.get("state_dict", {})
        mismatched = [f"{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)}" for k, v in ours.items()
                      if k in theirs and theirs[k].shape != v.shape]
        try:
            written = config_from_hparams(checkpoint.get("hyper_parameters", {}), "checkpoint")
        except ValueError:
            written = None
        fields = [] if written is None else weight_conflicts(written, self.architecture)
        if mismatched or fields:
            shown = mismatched[:4] + ([f"... {len(mismatched) - 4} more"] if len(mismatched) > 4 else [])
            name = type(self).__name__
            raise ValueError(
                f"{name}: the checkpoint is of another architecture"
                + (f" ({describe_conflicts(fields, written, self.architecture)})" if fields else "")
                + ("; shape-mismatched weights (checkpoint vs here): " + ", ".join(shown) if shown else "") + ". "
                f"{name}.load_from_checkpoint(path) builds the checkpoint's architecture; a resumed fit "
                "(ckpt_path) needs the config of the run that wrote it")

    # --- learning rate ------------------------------------------------------------------------
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else effective_lr(self.trainer, self.base_lr)

    def with_schedule(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """`configure_optimizers`' answer: `optimizer` with warmup-cosine set every step."""
        total, warmup = schedule_steps(self.trainer, self.warmup_epochs)
        schedule = warmup_cosine_scheduler(optimizer, total, warmup, self.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # --- randomness -------------------------------------------------------------------------
    def micro_batch(self, batch_idx: int) -> int:
        """The training batch's place in its gradient-accumulation window (0 without accumulation)."""
        return batch_idx % self.trainer.accumulate_grad_batches

    @contextlib.contextmanager
    def seeded_randomness(self, seed: int, stream: str, batch_idx: int) -> Iterator[None]:
        """Inside: torch's (CPU and this device's), NumPy's and Python's global RNGs seeded by
        `step_seed` (seed, stream, global step, rank, place in the accumulation window); afterwards
        as they were. What draws from them there (timm's mixup/cutmix, drop path, dropout) is then
        the same in a resumed run. Give each use its own `stream`, apart from the masks'."""
        devices = [self.device] if self.device.type != "cpu" else []
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=devices, device_type=self.device.type if devices else "cuda"):
            value = step_seed(seed, stream, self.global_step, self.global_rank, self.micro_batch(batch_idx))
            torch.manual_seed(value)
            np.random.seed(value % 2**32)
            random.seed(value)
            try:
                yield
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)

    # --- the end of a training step -------------------------------------------------------------
    def training_loss(self, loss: Tensor, inputs: Tensor, components: Callable[[], dict[str, object]]
                      ) -> Tensor | None:
        """What `training_step` returns: `loss` (logged as `train/loss`) when it is finite on every
        rank; else raise, or what skips this update (see the class docstring).

        `components` (called only on failure) names what went into the loss: tensors are summarised
        (non-finite counts, largest value), anything else is printed as it is."""
        local_bad = ~torch.isfinite(loss.detach()).all()
        trainer = self.trainer
        bad = trainer.strategy.reduce(local_bad.float(), reduce_op="sum") if trainer.world_size > 1 else local_bad
        self.step_skipped = bool(bad)  # the one host sync of the check
        if not self.step_skipped:
            self._consecutive_skips = 0
            if self.on_nonfinite == "skip":
                self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
            return loss
        message = self._describe_nonfinite(loss, inputs, components) if local_bad else (
            f"non-finite training loss on another rank at global step {self.global_step}")
        if self.on_nonfinite == "raise":
            raise FloatingPointError(message)
        self.skipped_steps += 1
        self._consecutive_skips += 1
        if self._consecutive_skips > self.max_consecutive_skips:
            raise FloatingPointError(f"{self._consecutive_skips} training steps in a row had a non-finite loss "
                                     f"(max_consecutive_skips={self.max_consecutive_skips}); the last: {message}")
        warnings.warn(f"skipping the update: {message}", stacklevel=2)
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        return self._skipped_update()

    def _skipped_update(self) -> Tensor | None:
        if self.trainer.world_size == 1:
            return None  # Lightning skips backward (and, with a GradScaler, the optimizer step)
        self._drop_grads = True
        return torch.stack([p.sum() for p in self.parameters() if p.requires_grad]).sum() * 0.0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._drop_grads:  # a skipped DDP step: the optimizer skips parameters without gradients
            optimizer.zero_grad(set_to_none=True)
            self._drop_grads = False

    def _describe_nonfinite(self, loss: Tensor, inputs: Tensor, components: Callable[[], dict[str, object]]) -> str:
        with torch.no_grad():
            inputs_line = tensor_report(inputs)
            parts = {"inputs": inputs_line, **components()}
            weights, weights_bad = parameter_report(self)
            parts.update(lr=f"{self.optimizers().param_groups[0]['lr']:.3g}", weights=weights,
                         **{"previous gradients": gradient_report(self), "precision": self.trainer.precision})
        lines = "; ".join(f"{key}: {tensor_report(value) if isinstance(value, Tensor) else value}"
                          for key, value in parts.items())
        name = type(self).__name__
        skip = f"{name}(on_nonfinite='skip')" if self.on_nonfinite == "raise" else None
        hint = nonfinite_hint("non-finite" in inputs_line, weights_bad, skip)
        return (f"non-finite training loss ({loss.detach().float().item()}) at global step {self.global_step} "
                f"(epoch {self.current_epoch}) of {name}; {lines}. Hint: {hint}")
