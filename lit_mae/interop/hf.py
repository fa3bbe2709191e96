"""Hugging Face transformers ViTMAE <-> lit-mae: config fields and state-dict key names.

transformers 4.x names (what the hub's `facebook/vit-mae-*` files hold); `ViTMAEModel` files lack
the `vit.` prefix. q, k, v Linears are stacked into one `qkv` (q rows first).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import Tensor

from lit_mae.models.config import MAEConfig

# per-block sub-names: HF 4.x -> official / timm
_BLOCK_NAMES = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
# top-level names: HF 4.x (without `vit.`) -> lit-mae
_TOP_NAMES = {
    "embeddings.cls_token": "encoder.cls_token",
    "embeddings.position_embeddings": "encoder.pos_embed",
    "embeddings.patch_embeddings.projection": "encoder.patch_embed.proj",
    "layernorm": "encoder.norm",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.decoder_embed": "decoder_embed",
    "decoder.decoder_norm": "decoder_norm",
    "decoder.decoder_pred": "decoder_pred",
}
# transformers 5.x save_pretrained writes decoder layers as `decoder.decoder_encoder.layer.N`: an alias
_LAYER = re.compile(
    r"^(encoder\.layer|decoder\.decoder_layers|decoder\.decoder_encoder\.layer)\.(\d+)\.(.+)\.(weight|bias)$"
)
_QKV = re.compile(r"^attention\.attention\.(query|key|value)$")


def is_hf_state_dict(state_dict: Mapping[str, Any]) -> bool:
    return any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.", "decoder.decoder_"))
               for k in state_dict)


def hf_to_lit(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a transformers 4.x ViTMAE state dict to lit-mae names, fusing q/k/v into qkv."""
    out: dict[str, Tensor] = {}
    qkv_parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("vit.")
        match = _LAYER.match(key)
        if match:
            stack, index, sub, kind = match.groups()
            prefix = f"encoder.blocks.{index}" if stack == "encoder.layer" else f"decoder_blocks.{index}"
            qkv = _QKV.match(sub)
            if qkv:
                qkv_parts.setdefault((f"{prefix}.attn.qkv.{kind}", kind), {})[qkv.group(1)] = value
                continue
            out[f"{prefix}.{_BLOCK_NAMES.get(sub, sub)}.{kind}"] = value
            continue
        stem, _, kind = key.rpartition(".")
        if key in _TOP_NAMES:
            out[_TOP_NAMES[key]] = value
        elif stem in _TOP_NAMES:
            out[f"{_TOP_NAMES[stem]}.{kind}"] = value
        else:
            out[key] = value  # unknown: left as is so that a strict load names it
    for (name, _), parts in qkv_parts.items():
        if set(parts) != {"query", "key", "value"}:
            missing = sorted({"query", "key", "value"} - set(parts))
            raise ValueError(f"{name}: the checkpoint lacks the {missing} part(s) of attention")
        out[name] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> MAEConfig:
    """MAEConfig from a transformers `ViTMAEConfig` dict (`config.json`)."""
    act = hf_config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"config.json: hidden_act={act!r} is not supported; lit-mae uses exact GELU ('gelu')")
    size = hf_config.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"config.json: image_size={size!r}; lit-mae models have a square native size")
        size = size[0]
    hidden = hf_config.get("hidden_size", 768)
    decoder_hidden = hf_config.get("decoder_hidden_size", 512)
    values = dict(
        img_size=size,
        patch_size=hf_config.get("patch_size", 16),
        in_chans=hf_config.get("num_channels", 3),
        embed_dim=hidden,
        depth=hf_config.get("num_hidden_layers", 12),
        num_heads=hf_config.get("num_attention_heads", 12),
        mlp_ratio=hf_config.get("intermediate_size", 3072) / hidden,
        decoder_embed_dim=decoder_hidden,
        decoder_depth=hf_config.get("decoder_num_hidden_layers", 8),
        decoder_num_heads=hf_config.get("decoder_num_attention_heads", 16),
        decoder_mlp_ratio=hf_config.get("decoder_intermediate_size", 2048) / decoder_hidden,
        mask_ratio=hf_config.get("mask_ratio", 0.75),
        norm_pix_loss=bool(hf_config.get("norm_pix_loss", False)),
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        qkv_bias=bool(hf_config.get("qkv_bias", True)),
    )
    return MAEConfig.from_dict({**values, **overrides})
