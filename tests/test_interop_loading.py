"""lit_mae.interop loading: formats told apart by content, strict errors, safe reading, reports.

Every model is perturbed first (`conftest.perturbed`: biases, LayerNorms, both position tables), so
that a key mapped to the wrong place cannot hide behind an init value. Export and timm parity:
test_interop_official_timm.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from conftest import ImageDataModule, assert_same_state, perturbed, tiny_config_values
from lit_mae import LitFineTune, LitLinearProbe, LitMAE
from lit_mae.interop import (
    FORMATS, detect_format, load_classifier, load_encoder_weights, load_pretrained,
    official_state_dict, read_state_dict,
)
from lit_mae.models import MAEConfig, MaskedAutoencoderViT, ViTClassifier, ViTEncoder, preset_config
from lit_mae.systems.encoders import load_encoder

CONFIG = MAEConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=3.0,
                   decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2)
HEADS = dict(num_heads=4, decoder_num_heads=2)  # what shapes cannot tell for CONFIG


@pytest.fixture(scope="module")
def mae() -> MaskedAutoencoderViT:
    return perturbed(MaskedAutoencoderViT(CONFIG))


def official(model: torch.nn.Module) -> dict:
    """A file as the official code writes it: `{"model": ...}`, no config."""
    return {"model": official_state_dict(model)}


# --- formats --------------------------------------------------------------------------------------


def _hf_directory(tmp_path: Path) -> Path:
    config = ViTMAEConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                          decoder_num_attention_heads=2, decoder_intermediate_size=32)
    perturbed(ViTMAEForPreTraining(config)).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _timm_state(mae: MaskedAutoencoderViT) -> dict:
    return dict(mae.encoder.state_dict())


def _finetuned(mae: MaskedAutoencoderViT) -> dict:
    classifier = perturbed(ViTClassifier(mae.config, num_classes=5, pool="avg"))
    classifier.encoder.load_state_dict(mae.encoder.state_dict())
    return official(classifier)


SOURCES = {
    "official-full": lambda mae, tmp: official(mae),
    "official-encoder": lambda mae, tmp: official(mae.encoder),
    "official-finetuned": lambda mae, tmp: _finetuned(mae),
    "official-full-bare": lambda mae, tmp: official(mae)["model"],
    "timm": lambda mae, tmp: _timm_state(mae),
    "lit-mae": lambda mae, tmp: mae.state_dict(),
    "hf": lambda mae, tmp: _hf_directory(tmp),
}


@pytest.mark.parametrize("name", list(SOURCES))
@pytest.mark.parametrize("as_file", [False, True], ids=["dict", "file"])
def test_detect_format_from_content(mae, tmp_path, name, as_file):
    source = SOURCES[name](mae, tmp_path)
    if as_file and isinstance(source, dict):
        torch.save(source, tmp_path / "weights.whatever")  # the suffix says nothing
        source = tmp_path / "weights.whatever"
    assert detect_format(source) == name.removesuffix("-bare")
    assert detect_format(source) in FORMATS


def test_safetensors_detected_by_content_whatever_the_suffix(mae, tmp_path):
    save_file({k: v.contiguous() for k, v in _timm_state(mae).items()}, str(tmp_path / "vit.bin"))
    assert detect_format(tmp_path / "vit.bin") == "timm"
    assert_same_state(load_encoder_weights(tmp_path / "vit.bin", num_heads=4).state_dict, mae.encoder)


@pytest.mark.filterwarnings(r"ignore:Found \d+ module\(s\) in eval mode")  # the probe's frozen encoder
def test_lightning_checkpoints_of_pretraining_and_probing(tmp_path, make_trainer):
    # LitMAE stores preset + overrides (not a config); the probe's checkpoint stores its config
    system = LitMAE(preset="tiny", overrides=dict(tiny_config_values(), num_heads=4), lr=1e-3, mask_ratio=0.5)
    trainer = make_trainer(max_steps=1)
    trainer.fit(system, ImageDataModule(n=4, size=16, batch_size=4))
    trainer.save_checkpoint(tmp_path / "mae.ckpt")
    assert detect_format(tmp_path / "mae.ckpt") == "lightning"
    loaded = load_pretrained(tmp_path / "mae.ckpt")
    assert loaded.config == system.config and loaded.config.mask_ratio == 0.5
    assert loaded.load_report.config_from == "file"
    assert_same_state(loaded, system.model)

    probe = LitLinearProbe(pretrained=str(tmp_path / "mae.ckpt"), num_classes=10, lr=1.0, warmup_epochs=0)
    trainer = make_trainer(max_steps=1)
    trainer.fit(probe, ImageDataModule(n=4, size=16, batch_size=4, kind="tuple"))
    trainer.save_checkpoint(tmp_path / "probe.ckpt")
    classifier = load_classifier(tmp_path / "probe.ckpt")
    assert_same_state(classifier, probe.model)
    assert classifier.load_report.format == "lightning"
    with pytest.raises(ValueError, match="head='drop'"):
        load_pretrained(tmp_path / "probe.ckpt", decoder="init")
    # a probe checkpoint as the `pretrained` of another probe: its encoder, the head left out, said so
    with pytest.warns(UserWarning, match="left out.*head"):
        config, state = load_encoder(tmp_path / "probe.ckpt")
    assert config == probe.arch
    assert_same_state(state, probe.model.encoder)


# --- which parts load, and what is reported -------------------------------------------------------


def test_encoder_only_needs_decoder_init_and_reports_the_fresh_decoder(mae):
    source = official(mae.encoder)
    with pytest.raises(ValueError, match=r"has no decoder.*decoder='init'"):
        load_pretrained(source, **HEADS)
    with pytest.warns(UserWarning, match="freshly initialised.*decoder_blocks"):
        model = load_pretrained(source, decoder="init", **HEADS)
    assert_same_state(model.encoder, mae.encoder)
    decoder_keys = {k for k in model.state_dict() if not k.startswith("encoder.")}
    assert set(model.load_report.initialised) == decoder_keys and "decoder_pos_embed" in decoder_keys
    assert model.load_report.format == "official-encoder" and model.load_report.config_from == "shapes"


def test_partial_decoder_is_an_error_even_with_decoder_init(mae):
    source = official(mae)
    del source["model"]["decoder_norm.weight"]
    with pytest.raises(ValueError, match=r"missing keys: \['decoder_norm.weight'\]"):
        load_pretrained(source, decoder="init", **HEADS)


def test_finetuned_head_is_left_out_only_when_asked(mae):
    source = _finetuned(mae)
    assert "norm.weight" not in source["model"]  # global pool: no final norm, as in the official files
    with pytest.raises(ValueError, match=r"fine-tuned classifier.*fc_norm.*head.*head='drop'"):
        load_pretrained(source, decoder="init", **HEADS)
    with pytest.warns(UserWarning, match="left out"):
        model = load_pretrained(source, decoder="init", head="drop", **HEADS)
    report = model.load_report
    assert set(report.dropped) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert {"encoder.norm.weight", "encoder.norm.bias"} <= set(report.initialised)
    with pytest.warns(UserWarning, match="left out"):
        weights = load_encoder_weights(source, num_heads=4)
    assert torch.equal(weights.state_dict["norm.weight"], torch.ones(32))
    assert_same_state(weights.state_dict, mae.encoder, skip=("norm.",))


def test_encoder_weights_leave_the_decoder_out_quietly(mae, recwarn):
    weights = load_encoder_weights(official(mae), num_heads=4)
    assert_same_state(weights.state_dict, mae.encoder)
    assert all(k.startswith(("decoder_", "mask_token")) for k in weights.report.dropped)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_one_error_names_missing_unexpected_and_mismatched_keys(mae):
    source = official(mae)
    weights = source["model"]
    del weights["blocks.1.norm1.weight"]
    weights["blocks.0.attn.extra"] = torch.zeros(3)
    weights["decoder_pred.bias"] = torch.zeros(5)
    with pytest.raises(ValueError) as error:
        load_pretrained(source, **HEADS)
    message = str(error.value)
    for words in ("state dict does not fit", "missing keys: ['encoder.blocks.1.norm1.weight']",
                  "unexpected keys: ['encoder.blocks.0.attn.extra']",
                  "shape-mismatched keys: ['decoder_pred.bias: checkpoint (5,) vs model (192,)']"):
        assert words in message, message


def test_heads_of_a_non_standard_width_must_be_given(mae):
    with pytest.raises(ValueError, match=r"cannot infer num_heads.*embed_dim=32.*num_heads=\.\.\."):
        load_encoder_weights(official(mae.encoder))
    with pytest.raises(ValueError, match="cannot infer num_heads"):
        load_pretrained(official(mae))


def test_standard_width_assumes_standard_heads_and_says_so():
    vit_tiny = ViTEncoder(MAEConfig(img_size=32, patch_size=16, embed_dim=192, depth=1, num_heads=3))
    weights = load_encoder_weights(official(vit_tiny))
    assert weights.config.num_heads == 3
    assert any("num_heads=3 assumed" in note for note in weights.report.notes)


def test_config_argument_and_overrides_take_precedence(mae):
    model = load_pretrained(official(mae), config=CONFIG.replace(norm_pix_loss=True))
    assert model.config.norm_pix_loss and model.load_report.config_from == "argument"
    with pytest.raises(ValueError, match="unexpected keys.*decoder_blocks.1"):
        load_pretrained(official(mae), decoder_depth=1, **HEADS)


def test_official_training_checkpoint_with_args_and_numpy_scalars_loads(mae, tmp_path):
    optimizer = torch.optim.AdamW(mae.parameters())
    args = argparse.Namespace(model="mae_vit_tiny", norm_pix_loss=True, mask_ratio=0.6, input_size=32,
                              lr=np.float64(1.5e-4), output_dir="./out")
    torch.save({"model": official_state_dict(mae), "optimizer": optimizer.state_dict(), "epoch": np.int64(399),
                "scaler": {"scale": 65536.0}, "args": args}, tmp_path / "checkpoint-399.pth")
    assert read_state_dict(tmp_path / "checkpoint-399.pth")["epoch"] == 399
    model = load_pretrained(tmp_path / "checkpoint-399.pth", **HEADS)
    assert model.config.norm_pix_loss and model.config.mask_ratio == 0.6  # from args
    assert_same_state(model, mae)


def test_settings_a_bare_official_file_cannot_tell_are_warned_not_just_noted():
    """A decoder trained with 4 heads, in a file without config or args: the standard 16 heads are
    assumed, which builds another model; that must reach the user as a warning."""
    mae = perturbed(MaskedAutoencoderViT(MAEConfig(**tiny_config_values(embed_dim=192, num_heads=3,
                                                                        decoder_embed_dim=32, decoder_num_heads=4))))
    with pytest.warns(UserWarning) as record:
        model = load_pretrained({"model": official_state_dict(mae)})
    message = " ".join(str(w.message) for w in record)
    assert "decoder_num_heads=16 assumed" in message and "norm_pix_loss=False assumed" in message
    assert "num_heads=3 assumed" in message and "give the true values" in message
    assert model.config.decoder_num_heads == 16 != mae.config.decoder_num_heads  # what the warning is about


@pytest.mark.parametrize("name, heads", [("mae_vit_large_patch16", (16, 16)), ("mae_vit_base_patch16", (12, 16))])
def test_an_official_training_checkpoint_names_its_model_and_so_its_heads(name, heads):
    """Official training checkpoints keep `args.model`; its preset gives the heads the shapes cannot."""
    config = preset_config(name.split("_")[2], img_size=32, patch_size=16, depth=1, decoder_depth=1)
    state = official_state_dict(MaskedAutoencoderViT(config))
    args = argparse.Namespace(model=name, norm_pix_loss=True, mask_ratio=0.75)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is assumed: no warning
        model = load_pretrained({"model": state, "args": args})
    assert (model.config.num_heads, model.config.decoder_num_heads) == heads
    assert model.config.norm_pix_loss


def test_hf_file_without_config_json_is_inferred_with_transformers_eps(tmp_path):
    directory = _hf_directory(tmp_path)
    reference = load_pretrained(directory)
    alone = tmp_path / "alone"
    alone.mkdir()
    (directory / "model.safetensors").rename(alone / "model.safetensors")
    model = load_pretrained(alone / "model.safetensors", **HEADS)
    assert model.config == reference.config and model.config.layer_norm_eps == 1e-12
    assert_same_state(model, reference)


@pytest.fixture(scope="module")
def vit_tiny_mae() -> MaskedAutoencoderViT:
    """A standard width (ViT-Ti's 192): heads are inferred, so files without a config work as `pretrained:`."""
    return perturbed(MaskedAutoencoderViT(MAEConfig(img_size=32, patch_size=16, embed_dim=192, depth=1, num_heads=3,
                                                    decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=16)))


@pytest.mark.parametrize("name", list(SOURCES))
def test_fine_tune_takes_pretrained_weights_of_every_format(vit_tiny_mae, tmp_path, name):
    source, expected = SOURCES[name](vit_tiny_mae, tmp_path), vit_tiny_mae.encoder
    if name == "hf":
        expected = load_pretrained(source).encoder
    else:
        torch.save(source, tmp_path / "weights.pth")
        source = tmp_path / "weights.pth"
    finetuned = name == "official-finetuned"
    with pytest.warns(UserWarning, match="left out") if finetuned else contextlib.nullcontext():
        tune = LitFineTune(pretrained=str(source), num_classes=3, img_size=expected.config.img_size + 16)
    grid = expected.config.grid_size + 16 // expected.config.patch_size
    assert tune.model.encoder.pos_embed.shape == (1, 1 + grid**2, expected.config.embed_dim)
    assert_same_state(tune.model.encoder, expected, skip=("pos_embed", "norm.") if finetuned else ("pos_embed",))


# --- safety and damaged files ---------------------------------------------------------------------


class _Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_runs_no_code_and_says_why(tmp_path, mae):
    marker, path = tmp_path / "code-ran", tmp_path / "mae_pretrain.pth"
    torch.save({"model": official_state_dict(mae), "args": _Payload(marker)}, path)
    for load in (read_state_dict, detect_format, load_pretrained, load_encoder_weights, load_encoder):
        with pytest.raises(ValueError) as error:
            load(path)
        message = str(error.value)
        assert str(path) in message and "not a weights-only checkpoint" in message, message
        assert "system" in message and "can run code" in message, message
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: unpickled unsafely, the payload does run
    assert marker.exists()


def _valid_file(mae: MaskedAutoencoderViT, path: Path) -> Path:
    state = {k: v.contiguous() for k, v in mae.encoder.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state} if path.suffix == ".pth" else state, path)
    return path


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
@pytest.mark.parametrize("damage, reason", [
    (lambda data: data[: len(data) // 2], "truncated or corrupt"),
    (lambda data: os.urandom(len(data)), "truncated or corrupt"),
    (lambda data: b"", "empty"),
], ids=["truncated", "random", "empty"])
def test_damaged_files_fail_naming_the_file(mae, tmp_path, suffix, damage, reason):
    path = _valid_file(mae, tmp_path / f"weights{suffix}")
    assert detect_format(path) in ("official-encoder", "timm")
    path.write_bytes(damage(path.read_bytes()))
    for load in (read_state_dict, load_pretrained, load_encoder_weights):
        with pytest.raises(ValueError) as error:
            load(path)
        assert str(path) in str(error.value) and reason in str(error.value), str(error.value)


def test_damaged_weights_in_a_hf_directory_name_the_file(tmp_path):
    directory = _hf_directory(tmp_path)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"{weights}.*truncated or corrupt"):
        load_pretrained(directory)


def test_files_that_hold_no_state_dict(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="tensor.pth: holds a Tensor"):
        load_pretrained(tmp_path / "tensor.pth")
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="resnet.pth: not a recognised MAE / ViT checkpoint"):
        detect_format(tmp_path / "resnet.pth")
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_pretrained(tmp_path / "nothing.pth")
