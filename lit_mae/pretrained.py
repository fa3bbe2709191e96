"""Pretrained encoders for probing and fine-tuning: from a LitMAE checkpoint or any `load_pretrained` source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from lit_mae.interop import load_pretrained, read_state_dict
from lit_mae.models import MAEConfig
from lit_mae.models.pos_embed import resize_pos_embed
from lit_mae.pretrain import resolve_config


def _config_from_hparams(hparams: dict[str, Any]) -> MAEConfig:
    config = hparams.get("config")
    return resolve_config(config, None if config is not None else hparams.get("preset"), hparams.get("overrides"))


def load_encoder(path: str | Path, img_size: int | None = None) -> tuple[MAEConfig, dict[str, Tensor]]:
    """(architecture, encoder state dict with official names) from pretrained weights.

    `path`: a LitMAE Lightning checkpoint, or anything `lit_mae.interop.load_pretrained` reads.
    With `img_size` different from the checkpoint's, the position table is resized bicubically.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pretrained: {path} does not exist (expected a LitMAE .ckpt or pretrained MAE weights)")
    checkpoint = read_state_dict(path) if path.is_file() else None
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint and "hyper_parameters" in checkpoint:
        try:
            config = _config_from_hparams(checkpoint["hyper_parameters"])
        except (ValueError, TypeError) as error:
            raise ValueError(f"pretrained: {path} is a Lightning checkpoint but not of LitMAE ({error})") from error
        prefix = "model.encoder."
        state = {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"pretrained: {path} is a Lightning checkpoint without LitMAE encoder weights ({prefix}*)")
    else:
        model = load_pretrained(path)
        config, state = model.config, model.encoder.state_dict()
    if img_size is not None and img_size != config.img_size:
        config = config.replace(img_size=img_size)
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], (config.grid_size, config.grid_size))
    return config, state


__all__ = ["load_encoder"]
