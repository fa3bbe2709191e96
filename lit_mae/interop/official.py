"""Official MAE (`models_mae.py`, `models_vit.py`) and timm names <-> lit-mae names, and `export_official`.

The encoder names are the same in the official code, timm and lit-mae's `ViTEncoder`; lit-mae adds
`encoder.` in front inside `MaskedAutoencoderViT` and `ViTClassifier`. The official linear probe
wraps its head as `head = Sequential(BatchNorm1d, Linear)`: `head.0.*` / `head.1.*` here map to
lit-mae's `head_norm.*` / `head.*`.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from lit_mae.models import PRESETS, MAEConfig, MaskedAutoencoderViT, ViTClassifier, ViTEncoder

DECODER_PREFIXES = ("mask_token", "decoder_")
CLASSIFIER_PREFIXES = ("fc_norm.", "head.", "head_norm.")
CONFIG_KEY = "lit_mae_config"  # beside "model" in exported files; official tools ignore it
OFFICIAL_LAYER_NORM_EPS = 1e-6  # hard-coded in the official models (partial(nn.LayerNorm, eps=1e-6))
_OFFICIAL_MODEL_NAME = re.compile(r"mae_vit_(base|large|huge)_patch(\d+)")


def heads_of_official_model(name: object) -> dict[str, int]:
    """{num_heads, decoder_num_heads} of an official model name (training checkpoints' `args.model`,
    e.g. "mae_vit_large_patch16"); {} for any other name."""
    match = _OFFICIAL_MODEL_NAME.fullmatch(str(name))
    if not match:
        return {}
    config = PRESETS[match.group(1)]()
    return {"num_heads": config.num_heads, "decoder_num_heads": config.decoder_num_heads}

ExportableModel = MaskedAutoencoderViT | ViTEncoder | ViTClassifier


def official_kind(state_dict: Mapping[str, Tensor]) -> str:
    """"official-full" (with decoder), "official-finetuned" (fc_norm/head) or "official-encoder"."""
    if any(k.startswith(DECODER_PREFIXES) for k in state_dict):
        return "official-full"
    if any(k.startswith(CLASSIFIER_PREFIXES) for k in state_dict):
        return "official-finetuned"
    return "official-encoder"


def official_to_lit(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official or timm names -> lit-mae names.

    A timm `no_embed_class=True` position table (1, L, D) gets a zero cls row, which is what that
    option computes (the cls token is added no position).
    """
    probe = "head.1.weight" in state_dict
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if probe and key.startswith(("head.0.", "head.1.")):
            key = ("head_norm." if key.startswith("head.0.") else "head.") + key[len("head.0."):]
        elif not key.startswith(DECODER_PREFIXES + CLASSIFIER_PREFIXES):
            key = f"encoder.{key}"
        out[key] = value
    pos = out.get("encoder.pos_embed")
    if pos is not None and pos.ndim == 3 and _is_square(pos.shape[1]) and not _is_square(pos.shape[1] - 1):
        out["encoder.pos_embed"] = torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1)
    return out


def _is_square(n: int) -> bool:
    return n >= 0 and math.isqrt(n) ** 2 == n


def lit_to_official(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """lit-mae names -> official names (the probe's BatchNorm + head as `head.0` / `head.1`)."""
    probe = any(k.startswith("head_norm.") for k in state_dict)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if probe and key.startswith(("head_norm.", "head.")):
            key = ("head.0." if key.startswith("head_norm.") else "head.1.") + key.split(".", 1)[1]
        out[key.removeprefix("encoder.")] = value
    return out


def model_config(model: ExportableModel) -> MAEConfig:
    return model.encoder.config if isinstance(model, ViTClassifier) else model.config


def official_state_dict(model: ExportableModel) -> dict[str, Tensor]:
    """What the official code's model would hold: `models_mae` names for a MaskedAutoencoderViT,
    `models_vit` names for an encoder or classifier (an "avg" classifier has `fc_norm` and, like the
    official global-pool model, no final `norm`)."""
    if isinstance(model, ViTEncoder):
        state = {f"encoder.{k}": v for k, v in model.state_dict().items()}
    elif isinstance(model, (MaskedAutoencoderViT, ViTClassifier)):
        state = model.state_dict()
        if isinstance(model, ViTClassifier) and model.global_pool == "avg":
            state = {k: v for k, v in state.items() if not k.startswith("encoder.norm.")}
    else:
        raise TypeError(f"cannot export a {type(model).__name__}: expected MaskedAutoencoderViT, ViTEncoder or ViTClassifier")
    return lit_to_official({k: v.detach().clone() for k, v in state.items()})


def export_official(model: ExportableModel, path: str | Path) -> Path:
    """Write `{"model": official state dict, "lit_mae_config": config}` with `torch.save`.

    The official fine-tuning script reads `checkpoint["model"]` (and ignores the config, which lets
    `load_pretrained` rebuild the exact architecture, heads included). The official code builds
    every LayerNorm with eps 1e-6: a model with another eps (1e-12 in every Hugging Face file)
    warns, since the official model would compute other outputs from these weights.
    """
    path = Path(path)
    eps = model_config(model).layer_norm_eps
    if eps != OFFICIAL_LAYER_NORM_EPS:
        warnings.warn(f"export_official: this model's layer_norm_eps is {eps:g}, the official code's is fixed at "
                      f"{OFFICIAL_LAYER_NORM_EPS:g}: its outputs from {path} will differ from this model's "
                      "(by about 5e-4 for 1e-12); lit-mae's own loaders read the true eps from the file", stacklevel=2)
    torch.save({"model": official_state_dict(model), CONFIG_KEY: model_config(model).to_dict()}, path)
    return path
