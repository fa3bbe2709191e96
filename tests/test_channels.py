"""Weights across channel counts (lit_mae/interop/channels.py): an RGB checkpoint starts a 13-band
and a 1-band model; timm's `adapt_input_conv` is the outside reference for the patch embedding."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from timm.models import adapt_input_conv as timm_adapt_input_conv

from conftest import tiny_config_values
from lit_mae import LitFineTune, LitMAE, MAEConfig, MaskedAutoencoderViT
from lit_mae.interop import export_official, load_pretrained
from lit_mae.interop.channels import adapt_input_conv
from lit_mae.interop.loading import load_encoder_weights

pytestmark = pytest.mark.filterwarnings("ignore:.*in_chans 3 -> .*:UserWarning")


@pytest.fixture()
def rgb_file(tmp_path: Path) -> tuple[Path, MaskedAutoencoderViT]:
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(MAEConfig(**tiny_config_values()))
    with torch.no_grad():
        model.decoder_pred.bias.normal_()  # a non-zero bias, so that keeping it is visible
    return export_official(model, tmp_path / "rgb.pth"), model


@pytest.mark.parametrize("in_chans", [1, 2, 3, 4, 13])
def test_patch_embedding_adapts_as_timm_adapt_input_conv(in_chans: int):
    weight = torch.randn(32, 3, 4, 4)
    assert torch.equal(adapt_input_conv(weight, in_chans), timm_adapt_input_conv(in_chans, weight.clone()))


@pytest.mark.parametrize("in_chans", [13, 1])
def test_an_rgb_checkpoint_starts_an_n_band_litmae(rgb_file, in_chans: int):
    path, rgb = rgb_file
    with pytest.warns(UserWarning, match=rf"in_chans 3 -> {in_chans}: patch_embed.proj.weight"):
        system = LitMAE(pretrained=str(path), overrides={"in_chans": in_chans}, warmup_epochs=0)
    model, source = system.model, rgb.state_dict()
    assert model.config.in_chans == in_chans
    report = model.load_report
    assert any("timm's adapt_input_conv" in line for line in report.adapted)
    assert torch.equal(model.encoder.patch_embed.proj.weight,
                       timm_adapt_input_conv(in_chans, source["encoder.patch_embed.proj.weight"].clone()))
    assert torch.equal(model.encoder.patch_embed.proj.bias, source["encoder.patch_embed.proj.bias"])
    for key in ("encoder.blocks.0.attn.qkv.weight", "decoder_embed.weight"):  # everything else as in the file
        assert torch.equal(model.state_dict()[key], source[key])
    rows = model.decoder_pred.weight.reshape(16, in_chans, -1)  # (p*p, N, Dd), channel fastest
    old_rows = source["decoder_pred.weight"].reshape(16, 3, -1)
    bias, old_bias = model.decoder_pred.bias.reshape(16, in_chans), source["decoder_pred.bias"].reshape(16, 3)
    if in_chans == 13:
        assert "decoder_pred: channels 3-12 freshly initialised, 0-2 kept" in report.adapted
        assert torch.equal(rows[:, :3], old_rows) and torch.equal(bias[:, :3], old_bias)
        assert not torch.equal(rows[:, 3:6], old_rows)  # fresh, not copies
        assert torch.equal(bias[:, 3:], torch.zeros(16, 10))  # the model's own init: bias 0
    else:
        assert "decoder_pred predicts the mean of its 3 channels' outputs" in report.adapted
        torch.testing.assert_close(rows[:, 0], old_rows.mean(1))
        torch.testing.assert_close(bias[:, 0], old_bias.mean(1))
    images = torch.randn(2, in_chans, 16, 16)
    out = model(images)
    assert out.pred.shape == (2, 16, 16 * in_chans) and torch.isfinite(out.loss)


def test_a_one_band_model_from_rgb_weights_sees_grey_as_the_rgb_model_sees_it_repeated(rgb_file):
    path, rgb = rgb_file
    grey = load_pretrained(path, in_chans=1)
    x = torch.randn(3, 1, 16, 16)
    noise = torch.rand(3, 16)
    rgb.eval(), grey.eval()
    with torch.no_grad():
        tokens_grey, tokens_rgb = grey.encoder.forward_features(x), rgb.encoder.forward_features(x.expand(-1, 3, -1, -1))
        pred_grey, pred_rgb = grey(x, noise=noise).pred, rgb(x.expand(-1, 3, -1, -1), noise=noise).pred
    torch.testing.assert_close(tokens_grey, tokens_rgb, atol=1e-5, rtol=1e-5)
    # the grey prediction is the mean of the three colour predictions, pixel by pixel
    torch.testing.assert_close(pred_grey, pred_rgb.reshape(3, 16, 16, 3).mean(-1), atol=1e-5, rtol=1e-5)


def test_fine_tuning_adapts_the_encoder_and_reports_it(rgb_file):
    path, rgb = rgb_file
    with pytest.warns(UserWarning, match=r"in_chans 3 -> 13"):
        system = LitFineTune(pretrained=str(path), num_classes=4, in_chans=13)
    assert system.arch.in_chans == 13
    assert torch.equal(system.model.encoder.patch_embed.proj.weight,
                       timm_adapt_input_conv(13, rgb.state_dict()["encoder.patch_embed.proj.weight"].clone()))
    assert system(torch.randn(2, 13, 16, 16)).shape == (2, 4)
    checkpoint = {"hyper_parameters": dict(system.hparams)}
    system.on_save_checkpoint(checkpoint)  # rebuilt from the architecture, which holds the 13 channels
    assert checkpoint["hyper_parameters"]["config"]["in_chans"] == 13 and checkpoint["hyper_parameters"]["in_chans"] is None


def test_the_same_channel_count_adapts_nothing(rgb_file):
    path, _ = rgb_file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no report warning: nothing adapted, nothing fresh
        weights = load_encoder_weights(path, in_chans=3)
    assert weights.report.adapted == () and weights.config.in_chans == 3
