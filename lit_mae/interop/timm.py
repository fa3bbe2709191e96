"""lit-mae -> timm's `VisionTransformer`: a state dict it loads with `strict=True`, and its arguments.

timm's ViT names are the official encoder names (`vit_*_patch16_224.mae` weights are the official
pretrain files), so reading timm files back is `official.official_to_lit`.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from torch import Tensor, nn

from lit_mae.interop.official import ExportableModel, model_config, official_state_dict
from lit_mae.models import MaskedAutoencoderViT, ViTClassifier

TimmPool = Literal["token", "avg"]


def _pool_of(model: ExportableModel, pool: TimmPool | None) -> TimmPool:
    if pool not in (None, "token", "avg"):
        raise ValueError(f"pool must be 'token' or 'avg', got {pool!r}")
    if isinstance(model, ViTClassifier):
        own = "token" if model.global_pool == "cls" else "avg"
        if pool not in (None, own):
            raise ValueError(f"the classifier pools {model.global_pool!r}: export it with pool={own!r}")
        return own
    return pool or "token"


def export_timm(model: ExportableModel, pool: TimmPool | None = None) -> dict[str, Tensor]:
    """State dict for `VisionTransformer(**timm_kwargs(model, pool))`, loadable with `strict=True`.

    Same features as lit-mae: `forward_features` is `encoder.forward_features` (token pooling), and
    `forward_head(pre_logits=True)` is the pooled feature: the cls token ("token"), the mean of the
    normed patch tokens for an encoder ("avg", timm's `fc_norm=False`), or `ViTClassifier.
    forward_features` for an "avg" classifier (`fc_norm=True`, no final norm). A classifier's head
    comes along; the linear probe's BatchNorm is folded into it with its running statistics (its
    eval-mode function). `pool` defaults to the classifier's own, else "token".
    """
    pool = _pool_of(model, pool)
    state = official_state_dict(model.encoder if isinstance(model, MaskedAutoencoderViT) else model)
    if not isinstance(model, ViTClassifier):
        return state  # models_vit names are timm's
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # the head comes back folded
    weight, bias = model.head.weight.detach(), model.head.bias.detach()
    norm = model.head_norm
    if isinstance(norm, nn.BatchNorm1d):  # W (x - mean) / std + b == (W / std) x + (b - (W / std) mean)
        scale = (norm.running_var + norm.eps).rsqrt()  # (D,)
        weight, bias = weight * scale, bias - weight @ (norm.running_mean * scale)
    state.update({"head.weight": weight.clone(), "head.bias": bias.clone()})
    return state


def timm_kwargs(model: ExportableModel, pool: TimmPool | None = None) -> dict[str, Any]:
    """Arguments of timm's `VisionTransformer` that `export_timm(model, pool)` fits."""
    pool = _pool_of(model, pool)
    config = model_config(model)
    kwargs: dict[str, Any] = dict(
        img_size=config.img_size, patch_size=config.patch_size, in_chans=config.in_chans,
        embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
        qkv_bias=config.qkv_bias, class_token=True, global_pool=pool,
        fc_norm=isinstance(model, ViTClassifier) and pool == "avg",
        num_classes=model.head.out_features if isinstance(model, ViTClassifier) else 0,
    )
    if config.layer_norm_eps != 1e-6:  # timm's default
        kwargs["norm_layer"] = functools.partial(nn.LayerNorm, eps=config.layer_norm_eps)
    return kwargs
