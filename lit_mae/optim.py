"""Optimisation helpers as pure functions: parameter groups, lr scaling and warmup-cosine."""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn


def param_groups_weight_decay(
    module: nn.Module, weight_decay: float, skip: Iterable[str] = ()
) -> list[dict]:
    """Two AdamW groups, as the official MAE code: decay on weights with ndim >= 2 (cls and mask
    tokens included), none on 1-D parameters, biases and names in `skip`; frozen parameters
    (the sin-cos position tables) are left out."""
    skip = set(skip)
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def scaled_lr(base_lr: float, per_device_batch: int, devices: int, nodes: int, accumulation: int) -> float:
    """The linear scaling rule: lr = base_lr * effective batch / 256."""
    return base_lr * per_device_batch * devices * nodes * accumulation / 256


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, minimum: float = 0.0) -> float:
    """Linear warmup from 0 to `peak` over `warmup_steps`, then half-cosine down to `minimum`."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return minimum + (peak - minimum) * 0.5 * (1.0 + math.cos(math.pi * progress))
