"""What the LightningModules share about the Trainer: batch sizes, schedule lengths, seeds, and
what a training step does with a NaN or inf loss."""

from __future__ import annotations

import hashlib
import math
import warnings
from typing import Callable, Literal

import torch
from lightning.pytorch import Trainer
from torch import Tensor, nn

from lit_mae.optim import scaled_lr


def images_of(batch: object) -> Tensor:
    """The images of a batch: a tensor, an `(images, labels, ...)` sequence or a dict."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("images", "image", "pixel_values"):
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    raise TypeError(
        "a batch must be an image tensor (B, C, H, W), a sequence whose first item is one, or a dict "
        f"with an 'images' or 'pixel_values' tensor; got {type(batch).__name__}"
    )


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


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, e.g. (seed, "order", epoch); unrelated parts give unrelated seeds."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def step_generator(seed: int, step: int, rank: int, stream: str = "train") -> torch.Generator:
    """A CPU generator seeded from (seed, step, rank, stream), so masks survive a resume."""
    return torch.Generator().manual_seed(derive_seed(seed, stream, step, rank))


# --- non-finite losses ---------------------------------------------------------------------------

NonFinitePolicy = Literal["raise", "skip"]


def tensor_report(tensor: Tensor) -> str:
    """'finite, max |x| 3.1' or '12 of 3072 values non-finite (12 NaN)'."""
    values = tensor.detach().float()
    bad = ~torch.isfinite(values)
    if not bad.any():
        return f"finite, max |x| {values.abs().max().item():.3g}" if values.numel() else "empty"
    nan = int(values.isnan().sum())
    return f"{int(bad.sum())} of {values.numel()} values non-finite ({nan} NaN, {int(bad.sum()) - nan} inf)"


def parameter_report(module: nn.Module) -> tuple[str, bool]:
    """(a line about the weights, whether any is non-finite)."""
    bad = [name for name, param in module.named_parameters() if not torch.isfinite(param).all()]
    if bad:
        return f"{len(bad)} non-finite tensors, e.g. {bad[:3]}", True
    largest = max((p.detach().abs().max().item() for p in module.parameters() if p.numel()), default=0.0)
    return f"all finite, max |w| {largest:.3g}", False


def gradient_report(module: nn.Module) -> str:
    """The gradients still held from the previous backward (zeroed only after this step's forward)."""
    grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]
    if not grads:
        return "none yet"
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
    return f"norm {norm:.3g}"


class NonFiniteGuard:
    """Mixin for a LightningModule (put it first among the bases): what a NaN or inf loss does.

    `on_nonfinite="raise"` stops with the step, the loss components and a hint. `"skip"` skips the
    update and counts it (`skipped_steps`, logged as `train/skipped_steps`), and still stops after
    `max_consecutive_skips` skipped steps in a row. One process: `training_step` returns None, so
    Lightning runs no backward; the optimizer sees no gradients (or, inside a gradient-accumulation
    window, only those of the window's other batches), the weights and optimizer state stay, and
    the lr schedule and `global_step` move on. Several processes (DDP): every rank learns whether
    any rank's loss is non-finite (one all-reduce of a flag per step), so all raise or all skip
    together; a skipping rank returns a zero loss tied to every trainable weight (DDP's gradient
    all-reduce completes) and the gradients are dropped before the optimizer step, so a skip
    drops the whole accumulation window. Finite losses with non-finite gradients are not caught
    here: with `16-mixed` Lightning's GradScaler skips those steps itself (and lowers its scale).
    """

    on_nonfinite: NonFinitePolicy
    max_consecutive_skips: int

    def init_nonfinite_guard(self, on_nonfinite: NonFinitePolicy, max_consecutive_skips: int) -> None:
        name = type(self).__name__
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"{name}.on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        if not isinstance(max_consecutive_skips, int) or max_consecutive_skips < 0:
            raise ValueError(f"{name}.max_consecutive_skips must be an integer >= 0, got {max_consecutive_skips!r}")
        self.on_nonfinite, self.max_consecutive_skips = on_nonfinite, max_consecutive_skips
        self.skipped_steps, self._consecutive_skips, self._drop_grads = 0, 0, False

    def guard_loss(self, loss: Tensor, inputs: Tensor, components: Callable[[], dict[str, object]]
                   ) -> Tensor | None:
        """`loss` when it is finite on every rank; else raise, or None: skip this update by returning
        `self.skipped_update()` from `training_step`.

        `components` (called only on failure) names what went into the loss: tensors are summarised
        (non-finite counts, largest value), anything else is printed as it is."""
        local_bad = ~torch.isfinite(loss.detach()).all()
        trainer = self.trainer
        bad = trainer.strategy.reduce(local_bad.float(), reduce_op="sum") if trainer.world_size > 1 else local_bad
        if not bad:  # the one host sync of the check
            self._consecutive_skips = 0
            if self.on_nonfinite == "skip":
                self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
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
        return None

    def skipped_update(self) -> Tensor | None:
        """What `training_step` returns to skip an update (see the class docstring)."""
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
        if "non-finite" in inputs_line:
            hint = ("the batch itself holds NaN/inf: check the data (a corrupt file, a normalisation std of 0, "
                    "a transform dividing by zero)")
        else:
            hint = ("try bf16-mixed instead of 16-mixed precision, a lower lr, or gradient clipping "
                    "(trainer.gradient_clip_val: 1.0)")
            if weights_bad:
                hint = ("the weights are already non-finite (an earlier update blew up, or the loaded weights "
                        f"hold NaN/inf): {hint}")
            if self.on_nonfinite == "raise":
                hint += f"; or {name}(on_nonfinite='skip') to skip such steps"
        return (f"non-finite training loss ({loss.detach().float().item()}) at global step {self.global_step} "
                f"(epoch {self.current_epoch}) of {name}; {lines}. Hint: {hint}")
