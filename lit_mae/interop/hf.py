"""Hugging Face transformers ViTMAE <-> lit-mae: config fields and state-dict key names.

transformers 4.x names (what the hub's `facebook/vit-mae-*` files hold, and what `lit_to_hf` writes):
`vit.encoder.layer.{i}.attention.attention.{query,key,value}`, `...attention.output.dense`,
`...intermediate.dense` (fc1), `...output.dense` (fc2), `...layernorm_{before,after}`; the decoder's
under `decoder.decoder_layers.{i}`. `ViTMAEModel` files lack the `vit.` prefix. transformers 5.x
renames blocks in memory (checked against 5.24): `vit.layers.{i}.attention.{q,k,v,o}_proj`,
`vit.layers.{i}.mlp.{fc1,fc2}`, norms unchanged (`layernorm_before`, `layernorm_after`), decoder
blocks `decoder.decoder_layers.{i}.` with the same sub-names; everything outside the blocks keeps
its 4.x name. lit-mae stacks q, k, v into one `qkv` (q rows first).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import Tensor

from lit_mae.models.config import MAEConfig

# per-block sub-names: HF 4.x -> official / timm (`lit_to_hf` inverts this table)
_BLOCK_NAMES = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
# HF 5.x in-memory sub-names not in the table above (its `mlp.fc1`/`mlp.fc2` already are lit-mae's)
_BLOCK_NAMES_V5 = {"attention.o_proj": "attn.proj"}
# top-level names: HF 4.x (without `vit.`) -> lit-mae; the same in 5.x
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
# encoder stacks: 4.x `encoder.layer`, 5.x `layers`; decoder stacks: `decoder.decoder_layers` (4.x and
# 5.x in memory) and `decoder.decoder_encoder.layer`, which 5.x save_pretrained writes: an alias
_LAYER = re.compile(
    r"^(encoder\.layer|layers|decoder\.decoder_layers|decoder\.decoder_encoder\.layer)\.(\d+)\.(.+)\.(weight|bias)$"
)
_ENCODER_STACKS = ("encoder.layer", "layers")
_QKV = re.compile(r"^attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)$")
_QKV_PART = {"q": "query", "k": "key", "v": "value"}
# lit-mae -> HF 4.x, for `lit_to_hf`
_LIT_LAYER = re.compile(r"^(encoder\.blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)$")
_LIT_TOP = {lit: hf for hf, lit in _TOP_NAMES.items()}
_LIT_BLOCK = {lit: hf for hf, lit in _BLOCK_NAMES.items()}
_HF_PREFIXES = ("vit.", "embeddings.", "encoder.layer.", "layers.", "decoder.decoder_", "decoder.mask_token")


def is_hf_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether the keys are transformers ViTMAE names (4.x or 5.x, with or without `vit.`)."""
    return any(k.startswith(_HF_PREFIXES) for k in state_dict)


def hf_to_lit(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a transformers ViTMAE state dict (4.x, or 5.x in-memory names) to lit-mae names,
    fusing q/k/v into qkv. Unknown keys pass through unchanged, so that a strict load names them."""
    out: dict[str, Tensor] = {}
    qkv_parts: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("vit.")
        match = _LAYER.match(key)
        if match:
            stack, index, sub, kind = match.groups()
            prefix = f"encoder.blocks.{index}" if stack in _ENCODER_STACKS else f"decoder_blocks.{index}"
            qkv = _QKV.match(sub)
            if qkv:
                part = qkv.group(1) or _QKV_PART[qkv.group(2)]
                qkv_parts.setdefault(f"{prefix}.attn.qkv.{kind}", {})[part] = value
                continue
            sub = _BLOCK_NAMES.get(sub) or _BLOCK_NAMES_V5.get(sub, sub)
            out[f"{prefix}.{sub}.{kind}"] = value
            continue
        stem, _, kind = key.rpartition(".")
        if key in _TOP_NAMES:
            out[_TOP_NAMES[key]] = value
        elif stem in _TOP_NAMES:
            out[f"{_TOP_NAMES[stem]}.{kind}"] = value
        else:
            out[key] = value  # unknown: left as is so that a strict load names it
    for name, parts in qkv_parts.items():
        if set(parts) != {"query", "key", "value"}:
            missing = sorted({"query", "key", "value"} - set(parts))
            raise ValueError(f"{name}: the checkpoint lacks the {missing} part(s) of attention")
        out[name] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def lit_to_hf(state_dict: Mapping[str, Tensor], prefix: str = "vit.") -> dict[str, Tensor]:
    """Rename a lit-mae state dict to transformers 4.x names, splitting qkv into query/key/value
    (the inverse of `hf_to_lit`). `prefix` goes before the encoder names: "vit." for
    `ViTMAEForPreTraining` files, "" for `ViTMAEModel` ones; decoder names never take it.
    Keys that are not lit-mae names raise a ValueError naming them."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        match = _LIT_LAYER.match(key)
        stem, _, kind = key.rpartition(".")
        if match:
            stack, index, sub, kind = match.groups()
            if stack == "encoder.blocks":
                block = f"{prefix}encoder.layer.{index}"
            else:
                block = f"decoder.decoder_layers.{index}"
            if sub == "attn.qkv":
                # (3D, D) weight / (3D,) bias, q rows first; clone so that no output aliases another
                for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    out[f"{block}.attention.attention.{part}.{kind}"] = chunk.clone()
            elif sub in _LIT_BLOCK:
                out[f"{block}.{_LIT_BLOCK[sub]}.{kind}"] = value
            else:
                unknown.append(key)
            continue
        if key in _LIT_TOP:
            name = _LIT_TOP[key]
        elif stem in _LIT_TOP:
            name = f"{_LIT_TOP[stem]}.{kind}"
        else:
            unknown.append(key)
            continue
        out[name if name.startswith("decoder.") else prefix + name] = value
    if unknown:
        raise ValueError(f"not lit-mae MaskedAutoencoderViT names, cannot rename to transformers': {unknown}")
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


def config_to_hf(config: MAEConfig) -> dict[str, Any]:
    """A transformers `ViTMAEConfig` dict (`config.json`) for a lit-mae config.

    `config_from_hf` reads it back to the same config, except for fields transformers has no
    place for, which come back at their defaults: `drop_path_rate` (transformers' ViTMAE has no
    stochastic depth; it does not change inference), `attn_implementation` (a runtime choice) and
    `decoder_pos_interpolation` (transformers always resizes the decoder table 1-D over the
    flattened sequence, lit-mae's "hf-1d"; it matters only with `interpolate_pos_encoding`).
    MLP widths are written as `round(width * ratio)`, the width lit-mae builds, so a ratio
    whose product is not a whole number comes back as `intermediate_size / width`.
    """
    if not isinstance(config, MAEConfig):
        raise TypeError(f"config_to_hf expects a MAEConfig, got {type(config).__name__}")
    intermediate = round(config.embed_dim * config.mlp_ratio)
    decoder_intermediate = round(config.decoder_embed_dim * config.decoder_mlp_ratio)
    return {
        "architectures": ["ViTMAEForPreTraining"],
        "model_type": "vit_mae",
        "hidden_size": config.embed_dim,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "intermediate_size": intermediate,
        "hidden_act": "gelu",  # exact (erf) GELU, as lit-mae's Mlp
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": config.layer_norm_eps,
        "image_size": config.img_size,
        "patch_size": config.patch_size,
        "num_channels": config.in_chans,
        "qkv_bias": config.qkv_bias,
        "decoder_hidden_size": config.decoder_embed_dim,
        "decoder_num_hidden_layers": config.decoder_depth,
        "decoder_num_attention_heads": config.decoder_num_heads,
        "decoder_intermediate_size": decoder_intermediate,
        "mask_ratio": config.mask_ratio,
        "norm_pix_loss": config.norm_pix_loss,
    }
