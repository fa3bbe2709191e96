"""The architecture of a checkpoint that carries no config, read off its tensor shapes.

Shapes give the widths, depths, patch size, channels, native image size, MLP ratios and whether
qkv has a bias. They do not give the number of attention heads, the LayerNorm eps or the loss
settings: those come from arguments, else from the standard values documented on `infer_config`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from torch import Tensor

from lit_mae.models.config import MAEConfig

# ViT-Ti/S/B/L/H: the heads every released ViT of that width uses
STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# every official MAE decoder (mae_vit_base/large/huge) uses 16 heads
STANDARD_DECODER_HEADS = 16


def _shape(state_dict: Mapping[str, Tensor], key: str, what: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(
            f"cannot infer {what} from the weights: they have no `{key.removeprefix('encoder.')}`; "
            "pass config=MAEConfig(...)"
        )
    return tuple(state_dict[key].shape)


def _depth(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    """1 + the highest block index (a gap then shows up as missing keys in the strict load)."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    indices = [int(m.group(1)) for m in map(pattern.match, state_dict) if m]
    return 1 + max(indices) if indices else 0


def infer_config(
    state_dict: Mapping[str, Tensor], decoder: bool = True, **known: Any
) -> tuple[MAEConfig, list[str]]:
    """(MAEConfig, notes on what was assumed) from a lit-mae-named state dict (see `to_lit_names`).

    Fields in `known` are taken as given. Inferred: embed_dim (cls_token), depth (block indices),
    patch_size and in_chans (patch_embed weight), img_size (pos_embed length minus the cls row),
    mlp_ratio (fc1), qkv_bias; with `decoder` and decoder tensors present, the decoder's width,
    depth and MLP ratio. Heads leave no trace in the weights: without `num_heads=`, the standard
    ViT value for the width is assumed (192->3, 384->6, 768->12, 1024->16, 1280->16) and noted,
    and any other width is an error naming `num_heads`; without `decoder_num_heads=`, the official
    decoders' 16 is assumed. Other fields keep MAEConfig's defaults (layer_norm_eps 1e-6, the
    official one; the paper's decoder when there is none).
    """
    D = _shape(state_dict, "encoder.cls_token", "embed_dim")[-1]
    _, C, p, p_w = _shape(state_dict, "encoder.patch_embed.proj.weight", "patch_size and in_chans")
    if p != p_w:
        raise ValueError(f"cannot load non-square {p}x{p_w} patches: lit-mae patches are square")
    L = _shape(state_dict, "encoder.pos_embed", "img_size")[1] - 1
    side = math.isqrt(L)
    if side * side != L:
        raise ValueError(f"cannot infer img_size: pos_embed holds {L} patch positions, not a square grid")
    hidden = _shape(state_dict, "encoder.blocks.0.mlp.fc1.weight", "mlp_ratio")[0]
    values: dict[str, Any] = dict(
        img_size=side * p, patch_size=p, in_chans=C, embed_dim=D, depth=_depth(state_dict, "encoder.blocks."),
        mlp_ratio=hidden / D, qkv_bias="encoder.blocks.0.attn.qkv.bias" in state_dict,
    )
    notes: list[str] = []
    if "num_heads" not in known:
        if D not in STANDARD_HEADS:
            raise ValueError(
                f"cannot infer num_heads: attention heads leave no trace in the weights and "
                f"embed_dim={D} is not a standard ViT width {sorted(STANDARD_HEADS)}; pass num_heads=..."
            )
        values["num_heads"] = STANDARD_HEADS[D]
        notes.append(f"num_heads={STANDARD_HEADS[D]} assumed (the standard ViT value for embed_dim={D})")
    if decoder and "decoder_embed.weight" in state_dict:
        Dd = state_dict["decoder_embed.weight"].shape[0]
        depth = _depth(state_dict, "decoder_blocks.")
        values.update(decoder_embed_dim=Dd, decoder_depth=depth)
        if depth:
            values["decoder_mlp_ratio"] = _shape(state_dict, "decoder_blocks.0.mlp.fc1.weight", "decoder_mlp_ratio")[0] / Dd
        if "decoder_num_heads" not in known:
            heads = STANDARD_DECODER_HEADS if depth else 1  # without blocks the count is unused
            if Dd % heads:
                raise ValueError(
                    f"cannot infer decoder_num_heads: decoder_embed_dim={Dd} is not divisible by the "
                    f"official decoders' {heads} heads; pass decoder_num_heads=..."
                )
            values["decoder_num_heads"] = heads
            if depth:
                notes.append(f"decoder_num_heads={heads} assumed (the official MAE decoders' value)")
        if "norm_pix_loss" not in known:
            notes.append("norm_pix_loss=False assumed (official *_full files were trained with True, "
                         "the 'visualize' files with False)")
    return MAEConfig.from_dict({**values, **known}), notes
