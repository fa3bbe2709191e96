"""Export to Hugging Face (`export_hf`, `lit_to_hf`, `config_to_hf`) and transformers 5.x names.

lit-mae model -> `export_hf` directory -> transformers 4.57 (`ViTMAEForPreTraining`, `ViTMAEModel`,
`ViTForImageClassification`) gives the same outputs for the same pixels and noise (1e-5, float32),
with every parameter perturbed first (biases, LayerNorms and both frozen position tables included),
so that a mapping mistake cannot hide behind zeros, ones or the sin-cos init. The 5.x in-memory
names come from a real transformers 5.24 model (tests/fixtures/hf5_vit_mae, made by the script
there), checked against that model's own outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ViTForImageClassification, ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

from lit_mae.interop import (config_from_hf, config_to_hf, export_hf, hf_to_lit, lit_to_hf, load_pretrained,
                             load_strict)
from lit_mae.interop.hf import is_hf_state_dict
from conftest import assert_same_state, perturbed
from lit_mae.models import MAEConfig, MaskedAutoencoderViT

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5
FIXTURE_5X = Path(__file__).parent / "fixtures" / "hf5_vit_mae"
SMALL = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0,
             decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2, decoder_mlp_ratio=3.0)
# fields transformers has no place for: config_from_hf gives them back at their defaults
DROPPED = ("drop_path_rate", "attn_implementation", "decoder_pos_interpolation")


def perturbed_lit(seed: int = 0, **changes) -> MaskedAutoencoderViT:
    torch.manual_seed(seed)
    return perturbed(MaskedAutoencoderViT(MAEConfig(**{**SMALL, **changes})), seed)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def lit_names(hf_keys) -> set[str]:
    """lit-mae's names for a set of transformers keys (4.x or 5.x; q/k/v become one qkv)."""
    return set(hf_to_lit({key: torch.zeros(1) for key in hf_keys}))


def test_perturbation_reaches_every_parameter():
    model, fresh = perturbed_lit(), MaskedAutoencoderViT(MAEConfig(**SMALL))
    assert set(dict(model.named_parameters())) == set(model.state_dict())  # no buffers left unperturbed
    for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters()):
        assert (a != b).all(), name


# --- lit -> HF directory -> transformers ---------------------------------------------------------


VARIANTS = {
    "default": {},
    "normpix-eps1e-12": dict(norm_pix_loss=True, layer_norm_eps=1e-12),
    "no-qkv-bias-1ch": dict(qkv_bias=False, in_chans=1),
    "odd-mlp-no-decoder-blocks": dict(embed_dim=24, mlp_ratio=37 / 24, decoder_mlp_ratio=1.875, decoder_depth=0),
}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("changes", VARIANTS.values(), ids=VARIANTS.keys())
def test_pretraining_model_matches_transformers(tmp_path, changes, attn):
    lit = perturbed_lit(**changes)
    directory = export_hf(lit, tmp_path / "export")
    assert directory == tmp_path / "export"
    assert {p.name for p in directory.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    hf, info = ViTMAEForPreTraining.from_pretrained(directory, output_loading_info=True,
                                                    attn_implementation=attn)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    cfg = lit.config
    assert hf.config.norm_pix_loss is cfg.norm_pix_loss and hf.config.layer_norm_eps == cfg.layer_norm_eps
    assert hf.config.mask_ratio == cfg.mask_ratio and hf.config.qkv_bias is cfg.qkv_bias

    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, cfg.in_chans, 32, 32, generator=generator)
    noise = torch.rand(3, 16, generator=generator)
    with torch.no_grad():
        expected = hf.eval()(images, noise=noise, output_hidden_states=True)
        got = lit(images, noise=noise, output_hidden_states=True)
    assert torch.equal(got.mask, expected.mask) and torch.equal(got.ids_restore, expected.ids_restore)
    assert max_diff(got.pred, expected.logits) <= ATOL
    assert abs(got.loss.item() - expected.loss.item()) <= ATOL
    for ours, theirs in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert max_diff(ours, theirs) <= ATOL


def test_encoder_loads_into_vitmae_model(tmp_path):
    lit = perturbed_lit()
    full, encoder_only = export_hf(lit, tmp_path / "full"), export_hf(lit, tmp_path / "encoder", encoder_only=True)
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        want = lit.forward_encoder(images, noise=noise)
    decoder_keys = {k for k in load_file(full / "model.safetensors") if k.startswith("decoder.")}
    # a ViTMAEForPreTraining file (as the hub's): only the decoder is left over, nothing missing
    for directory, unused in ((full, decoder_keys), (encoder_only, set())):
        hf, info = ViTMAEModel.from_pretrained(directory, output_loading_info=True)
        assert lit_names(info["unexpected_keys"]) == lit_names(unused)  # 5.x reports its own names
        assert not info["missing_keys"] and not info["mismatched_keys"]
        with torch.no_grad():
            got = hf.eval()(images, noise=noise)
        assert torch.equal(got.mask, want.mask)
        assert max_diff(got.last_hidden_state, want.latent) <= ATOL


@pytest.mark.parametrize("encoder_only", [False, True], ids=["full", "encoder-only"])
def test_encoder_loads_into_vit_for_image_classification(tmp_path, encoder_only):
    lit = perturbed_lit(layer_norm_eps=1e-12)
    directory = export_hf(lit, tmp_path, encoder_only=encoder_only)
    hf, info = ViTForImageClassification.from_pretrained(directory, num_labels=5, output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}  # only the new head
    assert all(k.startswith("decoder.") for k in info["unexpected_keys"]) and not info["mismatched_keys"]
    assert bool(info["unexpected_keys"]) is not encoder_only
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = hf.eval().vit(images, output_hidden_states=True)
        logits = hf(images).logits
        after_norm = lit.encoder.forward_features(images)  # (B, 1+L, D)
        before_norm = lit.encoder.forward_features(images, final_norm=False)
    # transformers' last_hidden_state is after the final LayerNorm, its last hidden state before it
    assert max_diff(out.last_hidden_state, after_norm) <= ATOL
    assert max_diff(out.hidden_states[-1], before_norm) <= ATOL
    assert max_diff(logits, hf.classifier(lit.encoder.pool(after_norm, "cls"))) <= ATOL


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=VARIANTS.keys())
def test_export_then_load_pretrained_is_exact(tmp_path, changes):
    lit = perturbed_lit(**changes)
    back = load_pretrained(export_hf(lit, tmp_path))
    assert_same_state(back.state_dict(), lit.state_dict(), ordered=True)
    assert back.config == lit.config


def test_export_drops_what_transformers_cannot_hold_and_overwrites(tmp_path):
    lit = perturbed_lit(drop_path_rate=0.1, attn_implementation="eager", decoder_pos_interpolation="hf-1d")
    export_hf(perturbed_lit(seed=1), tmp_path)  # an older export in the same directory
    back = load_pretrained(export_hf(lit, tmp_path))
    assert_same_state(back.state_dict(), lit.state_dict(), ordered=True)
    assert back.config == lit.config.replace(drop_path_rate=0.0, attn_implementation="sdpa",
                                             decoder_pos_interpolation="2d")


def test_export_hf_refuses_other_modules(tmp_path):
    with pytest.raises(TypeError, match="MaskedAutoencoderViT"):
        export_hf(perturbed_lit().encoder, tmp_path)


# --- state-dict renaming ----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["vit.", ""])
def test_lit_to_hf_then_hf_to_lit_is_exact(prefix):
    state_dict = perturbed_lit(qkv_bias=False).state_dict()
    hf = lit_to_hf(state_dict, prefix=prefix)
    assert is_hf_state_dict(hf)
    encoder_keys = [k for k in hf if not k.startswith("decoder.")]
    assert all(k.startswith(prefix) for k in encoder_keys) and not any(k.startswith("vit.vit") for k in hf)
    assert_same_state(dict(sorted(hf_to_lit(hf).items())), dict(sorted(state_dict.items())), ordered=True)


def test_hf_to_lit_then_lit_to_hf_gives_the_transformers_model_back(tmp_path):
    config = ViTMAEConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=2,
                          decoder_num_attention_heads=2, decoder_intermediate_size=48)
    for model_class, prefix in ((ViTMAEForPreTraining, "vit."), (ViTMAEModel, "")):
        torch.manual_seed(0)
        model = perturbed(model_class(config), scale=1.0)  # zero biases or unit norms could hide a swapped name
        state_dict = dict(sorted(model.state_dict().items()))
        back = dict(sorted(lit_to_hf(hf_to_lit(state_dict), prefix).items()))
        if "vit.encoder.layer.0.attention.attention.query.weight" in state_dict or \
                "encoder.layer.0.attention.attention.query.weight" in state_dict:
            assert_same_state(back, state_dict, ordered=True)  # transformers 4.x: its in-memory names are the file's
        # any version: the 4.x-named file (the hub's format) loads as the very same model
        directory = tmp_path / model_class.__name__
        config.save_pretrained(directory)
        save_file({k: v.contiguous() for k, v in back.items()}, str(directory / "model.safetensors"))
        loaded, info = model_class.from_pretrained(directory, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        assert_same_state(dict(sorted(loaded.state_dict().items())), state_dict, ordered=True)


def test_lit_to_hf_names_keys_it_does_not_know():
    state_dict = perturbed_lit().state_dict()
    state_dict["encoder.fc_norm.weight"] = torch.ones(32)
    state_dict["encoder.blocks.0.ls1.gamma"] = torch.ones(32)
    with pytest.raises(ValueError, match=r"encoder\.fc_norm\.weight.*encoder\.blocks\.0\.ls1\.gamma"):
        lit_to_hf(state_dict)


# --- configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=VARIANTS.keys())
def test_config_round_trip_is_exact(changes):
    config = MAEConfig(**{**SMALL, **changes})
    as_hf = config_to_hf(config)
    assert config_from_hf(as_hf) == config
    assert json.loads(json.dumps(as_hf)) == as_hf  # plain JSON
    # every field is one transformers knows (a misspelt one would be kept silently as an extra)
    known = set(ViTMAEConfig().to_dict()) | {"architectures"}
    assert set(as_hf) <= known, set(as_hf) - known
    hf = ViTMAEConfig(**as_hf)
    assert (hf.hidden_size, hf.intermediate_size, hf.decoder_intermediate_size) == (
        config.embed_dim, round(config.embed_dim * config.mlp_ratio),
        round(config.decoder_embed_dim * config.decoder_mlp_ratio))


def test_config_to_hf_writes_the_built_mlp_width():
    # 24 * 1.55 = 37.2: lit-mae builds a 37-wide MLP, which is what config.json must say
    config = MAEConfig(**{**SMALL, "embed_dim": 24, "mlp_ratio": 1.55})
    back = config_from_hf(config_to_hf(config))
    assert config_to_hf(config)["intermediate_size"] == 37 and back.mlp_ratio == 37 / 24
    shapes = {k: v.shape for k, v in MaskedAutoencoderViT(config).state_dict().items()}
    assert shapes == {k: v.shape for k, v in MaskedAutoencoderViT(back).state_dict().items()}


def test_unrepresentable_configs_are_refused():
    with pytest.raises(TypeError, match="MAEConfig"):
        config_to_hf(ViTMAEConfig())
    # the other way: a transformers config lit-mae cannot hold
    with pytest.raises(ValueError, match="square"):
        config_from_hf({**config_to_hf(MAEConfig(**SMALL)), "image_size": [32, 48]})
    with pytest.raises(ValueError, match="hidden_act"):
        config_from_hf({**config_to_hf(MAEConfig(**SMALL)), "hidden_act": "gelu_new"})


# --- transformers 5.x in-memory names ----------------------------------------------------------


def fixture_5x() -> tuple[dict, dict, MAEConfig]:
    state_dict = load_file(str(FIXTURE_5X / "state_dict.safetensors"))
    outputs = load_file(str(FIXTURE_5X / "outputs.safetensors"))
    config = config_from_hf(json.loads((FIXTURE_5X / "config.json").read_text()), attn_implementation="eager")
    return state_dict, outputs, config


def test_5x_fixture_holds_the_5x_names():
    state_dict, _, _ = fixture_5x()
    for name in ("vit.layers.1.attention.q_proj.weight", "vit.layers.0.attention.o_proj.bias",
                 "vit.layers.0.mlp.fc1.weight", "vit.layers.0.layernorm_before.weight",
                 "decoder.decoder_layers.1.attention.v_proj.bias", "decoder.decoder_layers.0.mlp.fc2.weight",
                 "vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"):
        assert name in state_dict, name
    assert not any(".encoder.layer." in k or "attention.attention." in k for k in state_dict)


def test_5x_names_load_and_match_the_5x_outputs():
    state_dict, outputs, config = fixture_5x()
    assert is_hf_state_dict(state_dict)
    lit = load_pretrained(state_dict, config=config).eval()
    with torch.no_grad():
        got = lit(outputs["pixel_values"], noise=outputs["noise"])
    assert torch.equal(got.mask, outputs["mask"])
    assert max_diff(got.pred, outputs["logits"]) <= ATOL
    assert max_diff(got.latent, outputs["last_hidden_state"]) <= ATOL
    assert abs(got.loss.item() - outputs["loss"].item()) <= ATOL
    # and the same weights under 4.x names (what lit_to_hf writes) give the same lit-mae weights
    assert_same_state(load_pretrained(lit_to_hf(lit.state_dict()), config=config).state_dict(),
                      lit.state_dict(), ordered=True)


def test_5x_vitmae_model_names_load_into_the_encoder():
    # ViTMAEModel in 5.x: the same names without `vit.` (`layers.{i}...`, `embeddings.*`, `layernorm.*`)
    state_dict, outputs, config = fixture_5x()
    encoder_5x = {k.removeprefix("vit."): v for k, v in state_dict.items() if k.startswith("vit.")}
    assert "layers.0.attention.k_proj.weight" in encoder_5x and is_hf_state_dict(encoder_5x)
    lit = MaskedAutoencoderViT(config).eval()
    load_strict(lit.encoder, {k.removeprefix("encoder."): v for k, v in hf_to_lit(encoder_5x).items()}, "5.x")
    with torch.no_grad():
        got = lit.forward_encoder(outputs["pixel_values"], noise=outputs["noise"])
    assert max_diff(got.latent, outputs["last_hidden_state"]) <= ATOL
