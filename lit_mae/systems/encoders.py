"""Pretrained encoders for probing and fine-tuning, from weights in any format `lit_mae.interop` reads."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from lit_mae.interop import load_encoder_weights
from lit_mae.models import MAEConfig
from lit_mae.models.pos_embed import resize_pos_embed


def load_encoder(path: str | Path, img_size: int | None = None,
                 in_chans: int | None = None) -> tuple[MAEConfig, dict[str, Tensor]]:
    """(architecture, encoder state dict with official names) from pretrained weights.

    `path`: a lit-mae Lightning checkpoint (LitMAE, LitLinearProbe, LitFineTune), an official MAE
    `.pth` (pretrain, full or fine-tuned), a Hugging Face ViTMAE directory or file, or a timm ViT
    state dict (see `lit_mae.interop.load_encoder_weights`; a fine-tuned file's head is left out
    with a warning). With `img_size` different from the checkpoint's, the position table is
    resized bicubically. With `in_chans` different from the checkpoint's, the patch embedding is
    adapted (`lit_mae.interop.channels`, reported in a warning).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pretrained: {path} does not exist (expected a LitMAE .ckpt or pretrained MAE weights)")
    config, state, _ = load_encoder_weights(path, **({} if in_chans is None else {"in_chans": in_chans}))
    if img_size is not None and img_size != config.img_size:
        config = config.replace(img_size=img_size)
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], (config.grid_size, config.grid_size))
    return config, state


__all__ = ["load_encoder"]
