"""Parity with transformers' ViTMAEForPreTraining, the outside implementation, through load_pretrained.

Same weights (HF `save_pretrained` -> `lit_mae.interop.load_pretrained`), same pixels, same noise:
equal mask and ids_restore, predictions within 1e-5 and loss within 1e-6 in float32. Every
parameter, including biases, LayerNorm weights and both frozen position tables, is perturbed
first, so that a mapping mistake cannot hide behind zeros, ones or the sin-cos init.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

from conftest import assert_same_state, perturbed
from lit_mae.interop import config_from_hf, hf_to_lit, load_pretrained, load_strict
from lit_mae.models import MaskedAutoencoderViT

PATCH, NATIVE = 8, 32
ATOL_PRED, ATOL_LOSS = 1e-5, 1e-6


def hf_config(norm_pix_loss: bool = False, mask_ratio: float = 0.75, attn: str = "eager",
              layer_norm_eps: float = 1e-12) -> ViTMAEConfig:
    # attn_implementation goes into the constructor: HF's set_attn_implementation() after the fact
    # does not reach the decoder (a known transformers quirk).
    return ViTMAEConfig(
        image_size=NATIVE, patch_size=PATCH, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2, decoder_intermediate_size=48, norm_pix_loss=norm_pix_loss,
        mask_ratio=mask_ratio, layer_norm_eps=layer_norm_eps, attn_implementation=attn,
    )


def perturbed_hf(config: ViTMAEConfig, model_class=ViTMAEForPreTraining, seed: int = 0):
    torch.manual_seed(seed)
    return perturbed(model_class(config), seed)  # the requires_grad=False position tables too


def save_hf(hf, directory: Path, safe_serialization: bool = True) -> Path:
    hf.save_pretrained(directory, safe_serialization=safe_serialization)
    weights = "model.safetensors" if safe_serialization else "pytorch_model.bin"
    if not (directory / weights).is_file():  # transformers 5 writes safetensors only: the older .bin by hand
        torch.save(load_file(directory / "model.safetensors"), directory / weights)
        (directory / "model.safetensors").unlink()
    assert (directory / weights).is_file() and (directory / "config.json").is_file()
    return directory


@functools.lru_cache(maxsize=None)
def hf_and_lit(norm_pix_loss: bool, mask_ratio: float, attn: str, safe_serialization: bool,
               decoder_pos_interpolation: str) -> tuple[ViTMAEForPreTraining, MaskedAutoencoderViT]:
    hf = perturbed_hf(hf_config(norm_pix_loss, mask_ratio, attn))
    with tempfile.TemporaryDirectory() as directory:
        save_hf(hf, Path(directory), safe_serialization)
        lit = load_pretrained(directory, attn_implementation=attn,
                              decoder_pos_interpolation=decoder_pos_interpolation).eval()
    return hf, lit


def test_perturbation_reaches_every_parameter():
    hf = perturbed_hf(hf_config())
    fresh = ViTMAEForPreTraining(hf_config())
    for (name, a), (_, b) in zip(hf.named_parameters(), fresh.named_parameters()):
        assert (a != b).all(), name
    names = {name for name, _ in hf.named_parameters()}
    assert {"vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"} <= names


# (H, W) and whether interpolate_pos_encoding is needed: native, larger square, non-square
SIZES = [((32, 32), False), ((48, 48), True), ((32, 48), True), ((24, 40), True)]


@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("size, interpolate", SIZES, ids=["32x32", "48x48", "32x48", "24x40"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("mask_ratio", [0.75, 0.0])
@pytest.mark.parametrize("norm_pix_loss", [False, True], ids=["pix", "normpix"])
def test_forward_matches_transformers(norm_pix_loss, mask_ratio, attn, size, interpolate, safe_serialization):
    # lit-mae resizes the decoder table in 2-D by default (like the encoder's); transformers resizes
    # the flattened table 1-D, a quirk that "hf-1d" reproduces. At the native size both are the table.
    mode = "hf-1d" if interpolate else "2d"
    hf, lit = hf_and_lit(norm_pix_loss, mask_ratio, attn, safe_serialization, mode)
    assert lit.config.mask_ratio == hf.config.mask_ratio == mask_ratio  # HF takes it from its config
    assert lit.config.norm_pix_loss is norm_pix_loss
    assert lit.config.attn_implementation == attn

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, *size, generator=generator)
    noise = torch.rand(3, (size[0] // PATCH) * (size[1] // PATCH), generator=generator)
    want_maps = attn == "eager"  # HF returns attention maps only in eager mode
    kwargs = dict(noise=noise, interpolate_pos_encoding=interpolate, output_hidden_states=True,
                  output_attentions=want_maps)
    with torch.no_grad():
        expected = hf(images, **kwargs)
        got = lit(images, **kwargs)
        expected_latent = hf.vit(images, noise=noise, interpolate_pos_encoding=interpolate).last_hidden_state

    assert torch.equal(got.mask, expected.mask)
    assert torch.equal(got.ids_restore, expected.ids_restore)
    assert got.pred.shape == expected.logits.shape
    assert (got.pred - expected.logits).abs().max().item() <= ATOL_PRED
    assert (got.latent - expected_latent).abs().max().item() <= ATOL_PRED
    # with mask_ratio 0 nothing is removed and both losses are 0/0 = nan
    torch.testing.assert_close(got.loss, expected.loss, atol=ATOL_LOSS, rtol=0, equal_nan=True)

    assert len(got.hidden_states) == len(expected.hidden_states) == 1 + hf.config.num_hidden_layers
    for ours, theirs in zip(got.hidden_states, expected.hidden_states):
        assert (ours - theirs).abs().max().item() <= ATOL_PRED
    if want_maps:
        assert len(got.attentions) == len(expected.attentions) == hf.config.num_hidden_layers
        for ours, theirs in zip(got.attentions, expected.attentions):
            assert ours.shape == theirs.shape
            assert (ours - theirs).abs().max().item() <= ATOL_PRED


@pytest.mark.parametrize(
    "changes",
    [dict(qkv_bias=False), dict(hidden_size=24, intermediate_size=37, decoder_intermediate_size=30),
     dict(num_channels=1), dict(decoder_num_hidden_layers=0)],
    ids=["no-qkv-bias", "odd-mlp-widths", "one-channel", "no-decoder-blocks"],
)
def test_architecture_variants_match_transformers(tmp_path, changes):
    """config.json fields other than the sizes reach the lit-mae config (bias, MLP widths, channels)."""
    config = hf_config()
    for name, value in changes.items():
        setattr(config, name, value)
    hf = perturbed_hf(config)
    lit = load_pretrained(save_hf(hf, tmp_path)).eval()
    images, noise = torch.randn(2, config.num_channels, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        expected, got = hf(images, noise=noise), lit(images, noise=noise)
    assert torch.equal(got.mask, expected.mask)
    assert (got.pred - expected.logits).abs().max().item() <= ATOL_PRED
    assert (got.loss - expected.loss).abs().item() <= ATOL_LOSS


def test_default_2d_decoder_resize_differs_from_transformers_off_native():
    """The "hf-1d" switch above is needed: lit-mae's default 2-D decoder resize is another function."""
    hf, _ = hf_and_lit(False, 0.75, "eager", True, "hf-1d")
    _, lit = hf_and_lit(False, 0.75, "eager", True, "2d")
    images, noise = torch.randn(2, 3, 48, 48), torch.rand(2, 36)
    with torch.no_grad():
        expected = hf(images, noise=noise, interpolate_pos_encoding=True)
        got = lit(images, noise=noise, interpolate_pos_encoding=True)
    assert torch.equal(got.mask, expected.mask)
    assert (got.pred - expected.logits).abs().max().item() > 1e-3


@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_layer_norm_eps_comes_from_config_json(tmp_path, eps):
    hf = perturbed_hf(hf_config(layer_norm_eps=eps))
    lit = load_pretrained(save_hf(hf, tmp_path)).eval()
    norms = [m for m in lit.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * (2 + 2) + 2  # two per block (2 encoder + 2 decoder), encoder and decoder norms
    assert all(m.eps == eps for m in norms)
    assert lit.config.layer_norm_eps == eps


def test_load_from_weights_file_reads_config_beside_it(tmp_path):
    hf = perturbed_hf(hf_config())
    save_hf(hf, tmp_path)
    lit = load_pretrained(tmp_path / "model.safetensors").eval()
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        assert (lit(images, noise=noise).pred - hf(images, noise=noise).logits).abs().max() <= ATOL_PRED


def test_vitmae_model_state_dict_without_vit_prefix_maps_to_the_encoder():
    hf = perturbed_hf(hf_config(), model_class=ViTMAEModel)
    state_dict = hf.state_dict()
    assert not any(k.startswith("vit.") for k in state_dict)
    renamed = hf_to_lit(state_dict)
    lit = MaskedAutoencoderViT(config_from_hf(hf.config.to_dict()))
    encoder_keys = {k for k in lit.state_dict() if k.startswith("encoder.")}
    assert set(renamed) == encoder_keys
    load_strict(lit.encoder, {k.removeprefix("encoder."): v for k, v in renamed.items()}, "ViTMAEModel")
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        expected = hf(images, noise=noise)
        got = lit.eval().forward_encoder(images, noise=noise)
    assert torch.equal(got.mask, expected.mask)
    assert (got.latent - expected.last_hidden_state).abs().max().item() <= ATOL_PRED


def test_transformers5_decoder_encoder_alias_loads_like_decoder_layers():
    # transformers 5.x save_pretrained writes `decoder.decoder_encoder.layer.N` (seen in 5.18 and 5.24)
    hf = perturbed_hf(hf_config())
    state_dict = hf.state_dict()
    aliased = {k.replace("decoder.decoder_layers.", "decoder.decoder_encoder.layer."): v
               for k, v in state_dict.items()}
    assert aliased.keys() != state_dict.keys()
    config = config_from_hf(hf.config.to_dict())
    lit, direct = load_pretrained(aliased, config=config), load_pretrained(state_dict, config=config)
    assert_same_state(lit, direct, ordered=True)


# --- strict loading errors ----------------------------------------------------------------------


def _key_weight_of_block_1(state_dict: dict) -> str:
    """The key projection's weight of encoder block 1, under transformers 4.x or 5.x names."""
    names = ("vit.encoder.layer.1.attention.attention.key.weight", "vit.layers.1.attention.k_proj.weight")
    return next(name for name in names if name in state_dict)


def _write_broken_checkpoint(directory: Path, edit) -> Path:
    hf = perturbed_hf(hf_config())
    hf.config.to_json_file(directory / "config.json")
    state_dict = {k: v.contiguous() for k, v in hf.state_dict().items()}
    edit(state_dict)
    save_file(state_dict, str(directory / "model.safetensors"))
    return directory


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda sd: sd.pop("vit.layernorm.weight"), ["missing", "encoder.norm.weight"]),
        (lambda sd: sd.pop("decoder.mask_token"), ["missing", "mask_token"]),
        (lambda sd: sd.__setitem__("vit.layernorm.wieght", sd.pop("vit.layernorm.weight")),
         ["unexpected", "wieght", "missing", "encoder.norm.weight"]),
        (lambda sd: sd.__setitem__("vit.extra_head.weight", torch.zeros(2)), ["unexpected", "extra_head.weight"]),
        (lambda sd: sd.__setitem__("decoder.decoder_pred.bias", torch.zeros(5)),
         ["shape-mismatched", "decoder_pred.bias", "(5,)"]),
        (lambda sd: sd.pop(_key_weight_of_block_1(sd)),
         ["encoder.blocks.1.attn.qkv.weight", "key"]),
    ],
    ids=["missing-encoder", "missing-decoder", "renamed", "extra", "shape", "missing-key-part"],
)
def test_load_pretrained_names_bad_keys(tmp_path, edit, words):
    directory = _write_broken_checkpoint(tmp_path, edit)
    with pytest.raises(ValueError) as error:
        load_pretrained(directory)
    for word in words:
        assert word in str(error.value), str(error.value)


def test_load_pretrained_names_keys_that_do_not_fit_an_override(tmp_path):
    save_hf(perturbed_hf(hf_config()), tmp_path)
    with pytest.raises(ValueError) as error:
        load_pretrained(tmp_path, decoder_depth=1)
    assert "unexpected" in str(error.value) and "decoder_blocks.1." in str(error.value)
