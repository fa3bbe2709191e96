"""LARS, as the official MAE linear probe uses it (momentum SGD with a layer-wise trust ratio).

Parameters with ndim > 1 get weight decay and the trust ratio `trust_coefficient * |w| / |update|`;
1-D parameters (biases, norms) get neither. The trust ratio applies even at weight decay 0 (timm's
`Lars` skips it there unless `always_adapt=True`, and it also scales 1-D parameters).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer


class LARS(Optimizer):
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
