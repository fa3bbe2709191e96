"""Export to official MAE files and timm state dicts, and back: round trips and parity with timm.

timm's `VisionTransformer` is the outside implementation: what the official fine-tuning script
builds (`models_vit` subclasses it) and what `vit_*_patch16_224.mae` weights load into. Every
parameter is perturbed first (`conftest.perturbed`), including biases, LayerNorms, the position
tables and the probe's BatchNorm statistics.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from lit_mae.interop import (
    detect_format, export_official, export_timm, load_classifier, load_encoder_weights, load_pretrained, timm_kwargs,
)
from conftest import assert_same_state, perturbed
from lit_mae.models import MAEConfig, MaskedAutoencoderViT, ViTClassifier, ViTEncoder

CONFIG = MAEConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=3.0,
                   decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2)
ATOL = 1e-5


def classifier(pool: str, probe: bool = False, config: MAEConfig = CONFIG) -> ViTClassifier:
    return perturbed(ViTClassifier(config, num_classes=5, pool=pool, head_batchnorm=probe))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= ATOL


IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# --- official files -------------------------------------------------------------------------------


def test_official_round_trip_of_the_full_model(tmp_path):
    mae = perturbed(MaskedAutoencoderViT(CONFIG.replace(norm_pix_loss=True, layer_norm_eps=1e-5)))
    with pytest.warns(UserWarning, match="layer_norm_eps is 1e-05, the official code's is fixed at 1e-06"):
        path = export_official(mae, tmp_path / "mae_full.pth")
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint["model"]) == {k.removeprefix("encoder.") for k in mae.state_dict()}  # official names
    assert detect_format(path) == "official-full"
    loaded = load_pretrained(path)
    assert loaded.config == mae.config and loaded.load_report.config_from == "file"
    assert_same_state(loaded, mae)
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(IMAGES, noise=noise).pred, mae(IMAGES, noise=noise).pred)
    # as the official code writes it, without lit-mae's config: architecture from the shapes
    bare = tmp_path / "official_full.pth"
    torch.save({"model": checkpoint["model"]}, bare)
    loaded = load_pretrained(bare, num_heads=4, decoder_num_heads=2, layer_norm_eps=1e-5, norm_pix_loss=True)
    assert loaded.config == mae.config and loaded.load_report.config_from == "shapes"
    assert_same_state(loaded, mae)


def test_exporting_an_hf_eps_model_warns_how_far_the_official_model_drifts(tmp_path):
    """Hugging Face files use eps 1e-12; the official models hard-code 1e-6. The warning is no
    formality: the official model built from the exported weights computes other features."""
    mae = perturbed(MaskedAutoencoderViT(CONFIG.replace(layer_norm_eps=1e-12)))
    with pytest.warns(UserWarning, match="layer_norm_eps is 1e-12") as record:
        path = export_official(mae.encoder, tmp_path / "encoder.pth")
    assert len(record) == 1
    official = ViTEncoder(CONFIG)  # eps 1e-6, as the official code builds it
    official.load_state_dict(torch.load(path, weights_only=True)["model"])
    with torch.no_grad():
        drift = (official.forward_features(IMAGES) - mae.encoder.forward_features(IMAGES)).abs().max().item()
    assert drift > 1e-5


def test_exporting_an_official_eps_model_does_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_official(MaskedAutoencoderViT(CONFIG), tmp_path / "full.pth")


def test_official_round_trip_of_an_encoder(tmp_path):
    encoder = perturbed(ViTEncoder(CONFIG))
    path = export_official(encoder, tmp_path / "mae_pretrain.pth")
    assert detect_format(path) == "official-encoder"
    weights = load_encoder_weights(path)
    assert weights.config == CONFIG and weights.report.dropped == ()
    assert weights.state_dict.keys() == encoder.state_dict().keys()
    assert all(torch.equal(weights.state_dict[k], v) for k, v in encoder.state_dict().items())
    with pytest.warns(UserWarning, match="freshly initialised"):
        assert_same_state(load_pretrained(path, decoder="init").encoder, encoder)


@pytest.mark.parametrize("pool, probe", [("cls", False), ("avg", False), ("cls", True)], ids=["cls", "avg", "probe"])
def test_official_round_trip_of_a_classifier(tmp_path, pool, probe):
    model = classifier(pool, probe)
    path = export_official(model, tmp_path / "finetuned.pth")
    keys = set(torch.load(path, weights_only=True)["model"])
    assert detect_format(path) == "official-finetuned"
    assert ("fc_norm.weight" in keys) == (pool == "avg") and ("norm.weight" in keys) == (pool == "cls")
    assert ({"head.0.running_var", "head.1.weight"} <= keys) == probe  # the official probe's Sequential
    loaded = load_classifier(path).eval()  # a new module, in training mode like any
    assert (loaded.global_pool, loaded.head.out_features) == (pool, 5)
    assert_same_state(loaded, model, skip=("encoder.norm.",) if pool == "avg" else ())
    with torch.no_grad():
        assert torch.equal(loaded(IMAGES), model(IMAGES))


def _official_finetune_load(checkpoint_model: dict, num_classes: int) -> tuple[VisionTransformer, set[str]]:
    """The official main_finetune.py steps, on timm's VisionTransformer with global pooling."""
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=3.0,
                              qkv_bias=True, num_classes=num_classes, global_pool="avg", fc_norm=True).eval()
    state_dict = model.state_dict()
    for k in ["head.weight", "head.bias"]:
        if k in checkpoint_model and checkpoint_model[k].shape != state_dict[k].shape:
            del checkpoint_model[k]
    # interpolate_pos_embed is a no-op at the same size
    assert checkpoint_model["pos_embed"].shape == state_dict["pos_embed"].shape
    message = model.load_state_dict(checkpoint_model, strict=False)
    return model, set(message.missing_keys)


@pytest.mark.parametrize("kind", ["full", "encoder"])
def test_official_fine_tuning_script_accepts_the_export(tmp_path, kind):
    mae = perturbed(MaskedAutoencoderViT(CONFIG))
    path = export_official(mae if kind == "full" else mae.encoder, tmp_path / "pretrained.pth")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model, missing = _official_finetune_load(checkpoint["model"], num_classes=7)
    assert missing == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}  # the script's assert
    with torch.no_grad():  # the encoder really arrived: timm's unnormed tokens are lit-mae's
        got = model.forward_features(IMAGES)  # global pool: timm's final norm is an Identity
        assert close(got, mae.encoder.forward_features(IMAGES, final_norm=False))


def test_an_exported_fine_tuned_model_evaluates_the_same_in_timm(tmp_path):
    model = classifier("avg")
    path = export_official(model, tmp_path / "finetuned.pth")
    reference, missing = _official_finetune_load(torch.load(path, weights_only=True)["model"], num_classes=5)
    assert not missing
    with torch.no_grad():
        assert close(reference(IMAGES), model(IMAGES))


# --- timm -------------------------------------------------------------------------------------------


def _timm(model: torch.nn.Module, pool: str | None = None) -> VisionTransformer:
    reference = VisionTransformer(**timm_kwargs(model, pool)).eval()
    reference.load_state_dict(export_timm(model, pool), strict=True)
    return reference


@pytest.mark.parametrize("pool", ["token", "avg"])
@pytest.mark.parametrize("eps", [1e-6, 1e-12])
def test_encoder_features_match_timm(pool, eps):
    mae = perturbed(MaskedAutoencoderViT(CONFIG.replace(layer_norm_eps=eps)))
    kwargs = timm_kwargs(mae, pool)
    assert kwargs["class_token"] and kwargs["global_pool"] == pool and not kwargs["fc_norm"]
    reference = _timm(mae, pool)
    with torch.no_grad():
        tokens = mae.encoder.forward_features(IMAGES)
        assert close(reference.forward_features(IMAGES), tokens)
        pooled = reference.forward_head(reference.forward_features(IMAGES), pre_logits=True)
        assert close(pooled, mae.encoder.pool(tokens, "cls" if pool == "token" else "avg"))


@pytest.mark.parametrize("pool, probe", [("cls", False), ("avg", False), ("cls", True)], ids=["cls", "avg", "probe"])
def test_classifier_features_and_logits_match_timm(pool, probe):
    model = classifier(pool, probe)
    kwargs = timm_kwargs(model)
    assert kwargs["global_pool"] == ("token" if pool == "cls" else "avg") and kwargs["fc_norm"] == (pool == "avg")
    reference = _timm(model)
    with torch.no_grad():
        tokens = reference.forward_features(IMAGES)
        assert close(tokens, model.forward_features(IMAGES))
        assert close(reference.forward_head(tokens, pre_logits=True), model.forward_head(tokens, pre_logits=True))
        assert close(reference(IMAGES), model(IMAGES))  # the probe's BatchNorm folded into the head


def test_export_timm_refuses_another_pooling_than_the_classifiers():
    with pytest.raises(ValueError, match="pools 'cls'.*pool='token'"):
        export_timm(classifier("cls"), pool="avg")


TIMM_ARCHS = [  # (timm VisionTransformer arguments, heads to pass or None for the standard width)
    (dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4), 4),
    (dict(img_size=48, patch_size=16, embed_dim=192, depth=3, num_heads=3), None),
    (dict(img_size=28, patch_size=4, embed_dim=24, depth=1, num_heads=2, mlp_ratio=2.0, in_chans=1), 2),
    (dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=6, qkv_bias=False), 6),
    (dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, no_embed_class=True), 4),
    (dict(img_size=24, patch_size=8, embed_dim=32, depth=1, num_heads=4, no_embed_class=True), 4),
]


@pytest.mark.parametrize("arch, heads", TIMM_ARCHS, ids=["32", "vit-ti-48", "1ch-28", "no-qkv-bias", "no-embed-class",
                                                          "no-embed-class-24"])
def test_timm_state_dicts_load_back_with_inferred_architecture(arch, heads):
    reference = perturbed(VisionTransformer(num_classes=0, **arch))
    state = reference.state_dict()
    assert detect_format(state) == "timm"
    weights = load_encoder_weights(state, **({"num_heads": heads} if heads else {}))
    config = weights.config
    assert (config.img_size, config.patch_size, config.embed_dim, config.depth, config.num_heads) == (
        arch["img_size"], arch["patch_size"], arch["embed_dim"], arch["depth"], arch["num_heads"])
    assert (config.in_chans, config.mlp_ratio, config.qkv_bias) == (
        arch.get("in_chans", 3), arch.get("mlp_ratio", 4.0), arch.get("qkv_bias", True))
    assert weights.report.config_from == "shapes"
    encoder = ViTEncoder(config).eval()
    encoder.load_state_dict(weights.state_dict, strict=True)
    images = torch.randn(2, config.in_chans, config.img_size, config.img_size)
    with torch.no_grad():
        assert close(encoder.forward_features(images), reference.forward_features(images))
    if "no_embed_class" not in arch:  # and out again: the same state dict
        out = export_timm(encoder)
        assert out.keys() == state.keys() and all(torch.equal(out[k], state[k]) for k in state)


def test_timm_mae_weights_become_a_masked_autoencoder_with_a_fresh_decoder():
    reference = perturbed(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                                            mlp_ratio=3.0, num_classes=0))  # like vit_base_patch16_224.mae
    with pytest.warns(UserWarning, match="freshly initialised.*decoder"):
        mae = load_pretrained(reference.state_dict(), decoder="init", num_heads=4).eval()
    assert mae.load_report.format == "timm"
    with torch.no_grad():
        assert close(mae.encoder.forward_features(IMAGES), reference.forward_features(IMAGES))
        assert torch.isfinite(mae(IMAGES).loss)


def test_timm_classifier_loads_as_a_classifier():
    reference = perturbed(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                                            mlp_ratio=3.0, num_classes=5, global_pool="avg", fc_norm=True))
    model = load_classifier(reference.state_dict(), num_heads=4).eval()
    assert model.global_pool == "avg" and set(model.load_report.initialised) == {"encoder.norm.weight", "encoder.norm.bias"}
    with torch.no_grad():
        assert close(model(IMAGES), reference(IMAGES))
