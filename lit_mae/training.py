"""What the LightningModules share about the Trainer: batch sizes, schedule lengths, seeds."""

from __future__ import annotations

import hashlib
import math

import torch
from lightning.pytorch import Trainer
from torch import Tensor

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


def step_generator(seed: int, step: int, rank: int, stream: str = "train") -> torch.Generator:
    """A CPU generator seeded from (seed, step, rank, stream), so masks survive a resume."""
    digest = hashlib.blake2b(f"{seed}/{stream}/{step}/{rank}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
