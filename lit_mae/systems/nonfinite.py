"""What a message about a NaN or inf training loss says: the inputs, the weights, the gradients,
and a hint that depends on which of them is off. Used by `LitSystem.training_loss`."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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


def nonfinite_hint(inputs_bad: bool, weights_bad: bool, skippable_by: str | None) -> str:
    """What to try: check the data, or precision / lr / clipping; `skippable_by` names the switch
    that would skip such steps (None when skipping is already on)."""
    if inputs_bad:
        return ("the batch itself holds NaN/inf: check the data (a corrupt file, a normalisation std of 0, "
                "a transform dividing by zero)")
    hint = ("try bf16-mixed instead of 16-mixed precision, a lower lr, or gradient clipping "
            "(trainer.gradient_clip_val: 1.0)")
    if weights_bad:
        hint = ("the weights are already non-finite (an earlier update blew up, or the loaded weights "
                f"hold NaN/inf): {hint}")
    return hint + (f"; or {skippable_by} to skip such steps" if skippable_by else "")
