"""Weights trained on C input channels, started on N: the patch embedding and the decoder's
prediction layer, adapted the way timm adapts a first convolution (`adapt_input_conv`).

Patch embedding `patch_embed.proj.weight` (D, C, p, p) -> (D, N, p, p):
    N = 1: the sum over the C channels (a grey image then gives the tokens the C-channel model
           gives that image repeated in every channel);
    else:  the C channels' kernels repeated in turn (0, 1, .., C-1, 0, 1, ..) up to N, scaled by
           C / N (the response to an image equal in every band keeps its size).
For C = 3 this is timm's `adapt_input_conv` exactly (tests compare the two). The bias stays.

Decoder prediction `decoder_pred` (p*p*C, Dd) rows, one per (row, column, channel), channel
fastest -> p*p*N rows: N = 1: the mean of the C channels' rows (the grey prediction is the mean
of the C predictions); else the first min(C, N) channels' rows are kept and those of new channels
are the model's own fresh initialisation (xavier-uniform, bias 0).
"""

from __future__ import annotations

import math
from typing import Mapping

from torch import Tensor

PATCH_EMBED = "encoder.patch_embed.proj.weight"
DECODER_PRED = ("decoder_pred.weight", "decoder_pred.bias")


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """(D, C, p, p) -> (D, in_chans, p, p) by the rule in the module docstring (in float32, then
    back to the weight's dtype)."""
    D, C, p, q = weight.shape
    w = weight.float()
    if in_chans == 1:
        adapted = w.sum(dim=1, keepdim=True)  # (D, 1, p, p)
    else:
        repeats = math.ceil(in_chans / C)
        adapted = w.repeat(1, repeats, 1, 1)[:, :in_chans] * (C / in_chans)  # (D, N, p, p)
    return adapted.to(weight.dtype)


def adapt_output_rows(pred: Tensor, fresh: Tensor, in_chans: int) -> Tensor:
    """decoder_pred weight (p*p*C, Dd) or bias (p*p*C,) -> p*p*N rows (module docstring); `fresh`
    is the new model's own (p*p*N, ...) tensor, the values of channels the file does not have."""
    area = fresh.shape[0] // in_chans  # p*p
    C = pred.shape[0] // area
    old = pred.reshape(area, C, *pred.shape[1:])  # (p*p, C, ...)
    if in_chans == 1:
        return old.float().mean(dim=1).to(pred.dtype)  # (p*p, ...)
    new = fresh.reshape(area, in_chans, *fresh.shape[1:]).clone()  # (p*p, N, ...)
    keep = min(C, in_chans)
    new[:, :keep] = old[:, :keep]
    return new.reshape(fresh.shape)


def adapt_channels(state: dict[str, Tensor], template: Mapping[str, Tensor], in_chans: int) -> list[str]:
    """Adapt `state` (lit-mae names) in place to `in_chans` input channels; `template` is the new
    model's state dict (shapes and fresh values). Returns the report's lines (empty when the file
    already has `in_chans` channels)."""
    if PATCH_EMBED not in state or state[PATCH_EMBED].shape[1] == in_chans:
        return []
    C = state[PATCH_EMBED].shape[1]
    state[PATCH_EMBED] = adapt_input_conv(state[PATCH_EMBED], in_chans)
    rule = "the sum over its channels" if in_chans == 1 else f"its channels repeated in turn, scaled by {C}/{in_chans}"
    lines = [f"in_chans {C} -> {in_chans}: patch_embed.proj.weight is {rule} (timm's adapt_input_conv rule)"]
    if all(k in state and k in template for k in DECODER_PRED):
        for key in DECODER_PRED:
            state[key] = adapt_output_rows(state[key], template[key], in_chans)
        if in_chans == 1:
            lines.append(f"decoder_pred predicts the mean of its {C} channels' outputs")
        elif in_chans > C:
            lines.append(f"decoder_pred: channels {C}-{in_chans - 1} freshly initialised, 0-{C - 1} kept")
        else:
            lines.append(f"decoder_pred: channels 0-{in_chans - 1} kept, {in_chans}-{C - 1} left out")
    return lines


__all__ = ["adapt_channels", "adapt_input_conv", "adapt_output_rows"]
