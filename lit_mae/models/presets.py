"""The paper's model sizes (encoder from ViT; decoder 512 wide, 8 blocks, 16 heads in all).

Each preset is a plain function taking field overrides, e.g. `mae_vit_base(norm_pix_loss=True)`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from lit_mae.models.config import MAEConfig


def _preset(arch: tuple[int, int, int, int], overrides: dict[str, Any]) -> MAEConfig:
    patch_size, embed_dim, depth, num_heads = arch
    base = dict(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                mlp_ratio=4.0, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                decoder_mlp_ratio=4.0)
    return MAEConfig.from_dict({**base, **overrides})


def mae_vit_tiny(**overrides: Any) -> MAEConfig:
    """ViT-Ti/16: D 192, 12 blocks, 3 heads."""
    return _preset((16, 192, 12, 3), overrides)


def mae_vit_small(**overrides: Any) -> MAEConfig:
    """ViT-S/16: D 384, 12 blocks, 6 heads."""
    return _preset((16, 384, 12, 6), overrides)


def mae_vit_base(**overrides: Any) -> MAEConfig:
    """ViT-B/16: D 768, 12 blocks, 12 heads."""
    return _preset((16, 768, 12, 12), overrides)


def mae_vit_large(**overrides: Any) -> MAEConfig:
    """ViT-L/16: D 1024, 24 blocks, 16 heads."""
    return _preset((16, 1024, 24, 16), overrides)


def mae_vit_huge(**overrides: Any) -> MAEConfig:
    """ViT-H/14: D 1280, 32 blocks, 16 heads."""
    return _preset((14, 1280, 32, 16), overrides)


PRESETS: dict[str, Callable[..., MAEConfig]] = {
    "tiny": mae_vit_tiny,
    "small": mae_vit_small,
    "base": mae_vit_base,
    "large": mae_vit_large,
    "huge": mae_vit_huge,
}


def preset_config(name: str, **overrides: Any) -> MAEConfig:
    """Look a preset up by its short name ("tiny" ... "huge")."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**overrides)


def resolve_config(
    config: MAEConfig | Mapping[str, Any] | None, preset: str | None, overrides: Mapping[str, Any] | None
) -> MAEConfig:
    """Exactly one of `config` or `preset`; `overrides` change fields of a preset."""
    if (config is None) == (preset is None):
        raise ValueError("give exactly one of `config` (a full MAEConfig) or `preset` (with `overrides`)")
    if config is not None:
        if overrides:
            raise ValueError("`overrides` apply to a `preset`; put the fields in `config` instead")
        return config if isinstance(config, MAEConfig) else MAEConfig.from_dict(config)
    return preset_config(preset, **(overrides or {}))
