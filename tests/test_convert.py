"""`lit-mae convert` between formats, and `LitMAE(pretrained=...)` from any of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from conftest import ImageDataModule, tiny_config_values
from lit_mae import LitMAE
from lit_mae.interop import export_official, export_timm, load_pretrained
from lit_mae.interop.checkpoint import lightning_checkpoint
from lit_mae.models import MAEConfig, MaskedAutoencoderViT

LIT_MAE = str(Path(sys.executable).parent / "lit-mae")


def perturbed_model() -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(MAEConfig(**tiny_config_values()))
    with torch.no_grad():
        for param in model.parameters():  # biases, norms and both position tables too
            param.add_(torch.randn_like(param) * 0.1)
    return model


def convert(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LIT_MAE, "convert", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def assert_same_weights(got: torch.nn.Module, want: torch.nn.Module) -> None:
    want_state = want.state_dict()
    assert set(got.state_dict()) == set(want_state)
    for name, value in got.state_dict().items():
        assert torch.equal(value, want_state[name]), name


def test_convert_a_lightning_checkpoint_to_every_format_and_back(tmp_path):
    model = perturbed_model()
    torch.save(lightning_checkpoint(model), tmp_path / "src.ckpt")
    targets = {"hf": "hf_dir", "official": "official.pth", "timm": "timm.safetensors", "lightning": "again.ckpt"}
    for to, destination in targets.items():
        result = convert("src.ckpt", destination, "--to", to, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert destination in result.stderr
    assert_same_weights(load_pretrained(tmp_path / "hf_dir"), model)
    assert_same_weights(load_pretrained(tmp_path / "official.pth"), model)
    assert_same_weights(LitMAE.load_from_checkpoint(tmp_path / "again.ckpt").model, model)
    timm_state = load_pretrained(tmp_path / "timm.safetensors", decoder="init", num_heads=model.config.num_heads)
    assert_same_weights(timm_state.encoder, model.encoder)  # timm holds the encoder only


def test_convert_reports_user_errors_without_a_traceback(tmp_path):
    missing = convert("nope.pth", "out", "--to", "hf", cwd=tmp_path)
    assert missing.returncode == 2 and "nope.pth" in missing.stderr and "Traceback" not in missing.stderr
    model = perturbed_model()
    torch.save(export_timm(model), tmp_path / "encoder.pth")  # a config-less encoder of width 32
    no_heads = convert("encoder.pth", "out.pth", "--to", "official", "--decoder", "init", cwd=tmp_path)
    assert no_heads.returncode == 2 and "num_heads" in no_heads.stderr and "Traceback" not in no_heads.stderr
    bad_target = convert("encoder.pth", "out.pth", "--to", "onnx", cwd=tmp_path)
    assert bad_target.returncode == 2 and "onnx" in bad_target.stderr
    fixed = convert("encoder.pth", "out.pth", "--to", "official", "--decoder", "init",
                    "--num-heads", str(model.config.num_heads), cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert_same_weights(load_pretrained(tmp_path / "out.pth").encoder, model.encoder)


def test_lit_mae_starts_from_pretrained_weights_and_its_checkpoint_stands_alone(tmp_path, make_trainer):
    model = perturbed_model()
    export_official(model, tmp_path / "release.pth")
    system = LitMAE(pretrained=str(tmp_path / "release.pth"), overrides={"norm_pix_loss": True}, lr=1e-3)
    assert_same_weights(system.model, model)
    assert system.config.norm_pix_loss and system.config.embed_dim == model.config.embed_dim
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "run", save_last=True)
    make_trainer(max_steps=1, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        system, ImageDataModule(n=8, size=model.config.img_size, batch_size=4))
    (tmp_path / "release.pth").unlink()
    reloaded = LitMAE.load_from_checkpoint(tmp_path / "run" / "last.ckpt")
    assert_same_weights(reloaded.model, system.model)
    assert reloaded.config == system.config


def test_lit_mae_from_an_encoder_only_file_initialises_the_decoder_and_says_so(tmp_path):
    model = perturbed_model()
    torch.save(export_timm(model), tmp_path / "timm.pth")
    with pytest.warns(UserWarning, match="decoder"):
        system = LitMAE(pretrained=str(tmp_path / "timm.pth"), overrides={"num_heads": model.config.num_heads})
    assert_same_weights(system.model.encoder, model.encoder)
    with pytest.raises(ValueError, match="pretrained.*architecture"):
        LitMAE(pretrained=str(tmp_path / "timm.pth"), preset="tiny")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        LitMAE(pretrained=str(tmp_path / "absent.pth"))
