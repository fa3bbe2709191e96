"""Optimisation helpers as pure functions: parameter groups (with layer-wise lr decay), lr scaling,
the per-step warmup-cosine schedule, and the linear probe's LARS optimizer."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


# what wrappers insert into parameter names: FSDP, activation checkpointing, torch.compile
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def unwrapped_name(name: str) -> str:
    """A parameter's name as the bare model has it (wrapper prefixes removed)."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def parameter_ndims(module: nn.Module) -> dict[str, int]:
    """{name: ndim} of the bare model, to be taken before a strategy wraps it: FSDP hands the
    optimizer flattened 1-D shards, on which `param.ndim` would put every weight in no-decay."""
    return {unwrapped_name(name): param.ndim for name, param in module.named_parameters()}


def _named_ndims(module: nn.Module, ndims: Mapping[str, int] | None) -> Iterable[tuple[str, int, nn.Parameter]]:
    """(bare name, original ndim, parameter) of every trainable parameter."""
    for name, param in module.named_parameters():
        if param.requires_grad:
            name = unwrapped_name(name)
            yield name, (ndims or {}).get(name, param.ndim), param


def param_groups_weight_decay(
    module: nn.Module, weight_decay: float, skip: Iterable[str] = (), ndims: Mapping[str, int] | None = None
) -> list[dict]:
    """Two AdamW groups, as the official MAE code: decay on weights with ndim >= 2 (cls and mask
    tokens included), none on 1-D parameters, biases and names in `skip`; frozen parameters
    (the sin-cos position tables) are left out. `ndims` (from `parameter_ndims` before wrapping)
    gives the shapes when `module` holds flattened shards."""
    skip = set(skip)
    decay, no_decay = [], []
    for name, ndim, param in _named_ndims(module, ndims):
        if ndim <= 1 or name.endswith(".bias") or name in skip:
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


def vit_layer_id(name: str, depth: int) -> int:
    """Layer of a ViT parameter for layer-wise lr decay (official `get_layer_id_for_vit`):
    patch_embed, cls_token and pos_embed are layer 0, block i is layer i+1, everything after the
    blocks (final norm, fc_norm, head) is layer depth+1. A leading `encoder.` is ignored."""
    name = name.removeprefix("encoder.")
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups_layer_decay(
    module: nn.Module, weight_decay: float, layer_decay: float, depth: int,
    no_weight_decay: Iterable[str] = ("pos_embed", "cls_token"), ndims: Mapping[str, int] | None = None,
) -> list[dict]:
    """AdamW groups per (layer, decay or not), each with `lr_scale` = layer_decay^(depth+1-layer).

    No weight decay on 1-D parameters and on names in `no_weight_decay` (with or without a leading
    `encoder.`). `lr_scale` is applied to the lr itself by `warmup_cosine_scheduler`. `ndims`: as in
    `param_groups_weight_decay`.
    """
    skip = set(no_weight_decay)
    groups: dict[tuple[int, bool], dict] = {}
    for name, ndim, param in _named_ndims(module, ndims):
        decays = not (ndim == 1 or name.removeprefix("encoder.") in skip)
        layer = vit_layer_id(name, depth)
        group = groups.setdefault((layer, decays), {
            "params": [], "weight_decay": weight_decay if decays else 0.0,
            "lr_scale": layer_decay ** (depth + 1 - layer), "layer": layer,
        })
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def warmup_cosine_scheduler(
    optimizer: Optimizer, total_steps: int, warmup_steps: int, min_lr: float = 0.0
) -> LambdaLR:
    """Per-step warmup-cosine on each group's initial lr (the peak), times its `lr_scale` (default 1).

    The floor `min_lr` is scaled like the rest, as the official fine-tuning code does.
    """
    def factor(scale: float, peak: float):
        floor = min_lr / peak if peak > 0 else 0.0
        return lambda step: scale * warmup_cosine(step, total_steps, warmup_steps, 1.0, floor)

    return LambdaLR(optimizer, [factor(g.get("lr_scale", 1.0), g["lr"]) for g in optimizer.param_groups])


class LARS(Optimizer):
    """LARS, as the official MAE linear probe uses it (momentum SGD with a layer-wise trust ratio).

    Parameters with ndim > 1 get weight decay and the trust ratio `trust_coefficient * |w| / |update|`;
    1-D parameters (biases, norms) get neither. The trust ratio applies even at weight decay 0 (timm's
    `Lars` skips it there unless `always_adapt=True`, and it also scales 1-D parameters).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 0.0,
                 weight_decay: float = 0.0, momentum: float = 0.9, trust_coefficient: float = 0.001) -> None:
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum),
                            ("trust_coefficient", trust_coefficient)):
            if value < 0:
                raise ValueError(f"LARS {name} must be >= 0, got {value}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                update = param.grad
                if update is None:
                    continue
                if param.ndim > 1:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(update)
                    ratio = group["trust_coefficient"] * param_norm / update_norm
                    one = torch.ones_like(param_norm)
                    update = update.mul(torch.where((param_norm > 0) & (update_norm > 0), ratio, one))
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                param.add_(buffer, alpha=-group["lr"])
        return loss
