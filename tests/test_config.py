"""MAEConfig validation, from_dict / replace, and the paper's presets."""

from __future__ import annotations

import dataclasses

import pytest

from lit_mae.models import PRESETS, MAEConfig, preset_config
from lit_mae.models.presets import mae_vit_base, mae_vit_huge, mae_vit_large, mae_vit_small, mae_vit_tiny

TINY = dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2,
            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def tiny(**overrides) -> MAEConfig:
    return MAEConfig(**{**TINY, **overrides})


def test_tiny_config_is_valid_and_derives_grid():
    config = tiny()
    assert (config.grid_size, config.num_patches) == (4, 16)
    assert MAEConfig.from_dict(config.to_dict()) == config


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny().depth = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "overrides, field, value",
    [
        (dict(img_size=36), "img_size", "36"),  # 36 % 8 != 0
        (dict(embed_dim=20, num_heads=3), "embed_dim", "20"),  # heads do not divide the width
        (dict(decoder_embed_dim=20, decoder_num_heads=3), "decoder_embed_dim", "20"),
        (dict(embed_dim=18, num_heads=3), "embed_dim", "18"),  # divisible by heads, not by 4
        (dict(decoder_embed_dim=18, decoder_num_heads=3), "decoder_embed_dim", "18"),
        (dict(mask_ratio=1.0), "mask_ratio", "1.0"),
        (dict(mask_ratio=-0.1), "mask_ratio", "-0.1"),
        (dict(img_size=0), "img_size", "0"),
        (dict(patch_size=0), "patch_size", "0"),
        (dict(patch_size=-8), "patch_size", "-8"),
        (dict(in_chans=0), "in_chans", "0"),
        (dict(embed_dim=-16), "embed_dim", "-16"),
        (dict(depth=0), "depth", "0"),
        (dict(num_heads=0), "num_heads", "0"),
        (dict(decoder_embed_dim=0), "decoder_embed_dim", "0"),
        (dict(decoder_depth=-1), "decoder_depth", "-1"),
        (dict(decoder_num_heads=-2), "decoder_num_heads", "-2"),
        (dict(mlp_ratio=0.0), "mlp_ratio", "0.0"),
        (dict(decoder_mlp_ratio=-4.0), "decoder_mlp_ratio", "-4.0"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps", "0.0"),
        (dict(drop_path_rate=1.0), "drop_path_rate", "1.0"),
        (dict(depth=2.0), "depth", "2.0"),  # a float where an int belongs
        (dict(depth=True), "depth", "True"),  # bool is not an int here
        (dict(norm_pix_loss="yes"), "norm_pix_loss", "yes"),
        (dict(attn_implementation="flash"), "attn_implementation", "flash"),
        (dict(decoder_pos_interpolation="1d"), "decoder_pos_interpolation", "1d"),
    ],
)
def test_bad_value_names_field_and_value(overrides, field, value):
    with pytest.raises(ValueError) as error:
        tiny(**overrides)
    message = str(error.value)
    assert field in message and value in message, message


@pytest.mark.parametrize("ratio, visible", [(0.0, 16), (0.05, 15), (0.5, 8), (0.75, 4), (0.9, 1)])
def test_a_mask_ratio_that_keeps_some_patches_visible_is_accepted(ratio, visible):
    """0 too: no masking, as for features (LitMAE's pretraining refuses it: it needs masked patches)."""
    config = tiny(mask_ratio=ratio)  # 16 patches
    assert int(config.num_patches * (1 - config.mask_ratio)) == visible


@pytest.mark.parametrize("overrides, words", [
    (dict(mask_ratio=0.99), "keeps int(16 x (1 - 0.99)) = 0 of the 16 patches visible (32x32 images in 8-pixel"),
    (dict(mask_ratio=0.95, img_size=16), "= 0 of the 4 patches visible (16x16 images"),
    (dict(layer_norm_eps=float("inf")), "MAEConfig.layer_norm_eps must be a finite positive number, got inf"),
    (dict(layer_norm_eps=float("nan")), "MAEConfig.layer_norm_eps must be a finite positive number, got nan"),
    (dict(mlp_ratio=float("nan")), "MAEConfig.mlp_ratio must be a finite positive number, got nan"),
    (dict(mlp_ratio=0.01), "MAEConfig.mlp_ratio=0.01 gives an MLP hidden width of round(embed_dim x mlp_ratio) = 0"),
    (dict(decoder_mlp_ratio=0.02), "MAEConfig.decoder_mlp_ratio=0.02 gives an MLP hidden width of "
                                   "round(decoder_embed_dim x decoder_mlp_ratio) = 0"),
])
def test_settings_that_would_train_nothing_or_nan_are_refused(overrides, words):
    """0.99 of 16 patches leaves the encoder no patch; an infinite eps or a zero-width MLP give a
    model that cannot learn."""
    with pytest.raises(ValueError) as error:
        tiny(**overrides)
    assert words in str(error.value)


def test_decoder_depth_zero_is_allowed():
    assert tiny(decoder_depth=0).decoder_depth == 0


def test_from_dict_names_unknown_key_and_lists_valid_fields():
    with pytest.raises(ValueError) as error:
        MAEConfig.from_dict({**TINY, "embed_dimm": 32})
    message = str(error.value)
    assert "embed_dimm" in message
    for name in (f.name for f in dataclasses.fields(MAEConfig)):
        assert name in message


def test_replace_changes_fields_and_keeps_the_rest():
    config = tiny()
    changed = config.replace(norm_pix_loss=True, mask_ratio=0.5)
    assert (changed.norm_pix_loss, changed.mask_ratio) == (True, 0.5)
    assert dataclasses.replace(changed, norm_pix_loss=False, mask_ratio=0.75) == config
    assert config.norm_pix_loss is False  # the original is untouched


@pytest.mark.parametrize(
    "overrides, field",
    [(dict(mask_ratio=1.0), "mask_ratio"), (dict(patch_size=5), "img_size"), (dict(bogus=1), "bogus")],
)
def test_replace_validates(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny().replace(**overrides)


# the MAE paper's ViT presets: name -> (patch, D, depth, heads, MLP hidden)
PRESET_TABLE = {
    "tiny": (16, 192, 12, 3, 768),
    "small": (16, 384, 12, 6, 1536),
    "base": (16, 768, 12, 12, 3072),
    "large": (16, 1024, 24, 16, 4096),
    "huge": (14, 1280, 32, 16, 5120),
}


@pytest.mark.parametrize("name", sorted(PRESET_TABLE))
def test_preset_matches_paper_table(name):
    config = preset_config(name)
    patch, dim, depth, heads, mlp = PRESET_TABLE[name]
    assert (config.patch_size, config.embed_dim, config.depth, config.num_heads) == (patch, dim, depth, heads)
    assert round(config.embed_dim * config.mlp_ratio) == mlp
    assert (config.decoder_embed_dim, config.decoder_depth, config.decoder_num_heads) == (512, 8, 16)
    assert round(config.decoder_embed_dim * config.decoder_mlp_ratio) == 2048
    assert config.img_size % config.patch_size == 0


def test_preset_functions_are_the_registry():
    assert set(PRESETS) == set(PRESET_TABLE)
    functions = dict(tiny=mae_vit_tiny, small=mae_vit_small, base=mae_vit_base, large=mae_vit_large,
                     huge=mae_vit_huge)
    for name, function in functions.items():
        assert function() == preset_config(name)


@pytest.mark.parametrize("name", sorted(PRESET_TABLE))
def test_preset_overrides(name):
    config = preset_config(name, norm_pix_loss=True, mask_ratio=0.6, decoder_depth=1,
                           attn_implementation="eager")
    assert (config.norm_pix_loss, config.mask_ratio, config.decoder_depth) == (True, 0.6, 1)
    assert config.attn_implementation == "eager"
    assert config.embed_dim == PRESET_TABLE[name][1]  # the architecture is kept


def test_preset_override_is_validated():
    with pytest.raises(ValueError, match="mask_ratio"):
        mae_vit_base(mask_ratio=1.5)
    with pytest.raises(ValueError, match="nonsense"):
        mae_vit_base(nonsense=1)


def test_unknown_preset_lists_names():
    with pytest.raises(ValueError) as error:
        preset_config("nope")
    message = str(error.value)
    assert "nope" in message
    for name in PRESET_TABLE:
        assert name in message
