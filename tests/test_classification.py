"""LitLinearProbe and LitFineTune: loading a pretrained encoder, what trains, schedules, reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from conftest import ImageDataModule, tiny_config_values
from lit_mae import LitFineTune, LitLinearProbe, LitMAE, MAEConfig
from lit_mae.datamodules import DigitsDataModule


@pytest.fixture
def pretrained_ckpt(tmp_path: Path, make_trainer) -> tuple[Path, LitMAE]:
    """A LitMAE trained two steps and saved as a Lightning checkpoint."""
    system = LitMAE(config=MAEConfig(**tiny_config_values()), lr=1e-3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "pre", save_last=True)
    make_trainer(max_steps=2, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        system, ImageDataModule(n=8, size=16, batch_size=4))
    return tmp_path / "pre" / "last.ckpt", system


def digits() -> DigitsDataModule:
    return DigitsDataModule(image_size=16, batch_size=32, val_fraction=0.05, test_fraction=0.05)


def test_probe_loads_the_pretrained_encoder_and_takes_num_classes_from_the_data(pretrained_ckpt, make_trainer):
    path, pretrained = pretrained_ckpt
    probe = LitLinearProbe(pretrained=str(path), lr=1.0, warmup_epochs=0)
    assert probe.model is None  # num_classes comes from the DataModule when the Trainer sets up
    make_trainer(max_steps=1).fit(probe, digits())
    assert probe.model.head.out_features == DigitsDataModule.num_classes


def test_probe_trains_only_the_head_and_keeps_the_encoder_frozen_in_eval_mode(pretrained_ckpt, make_trainer):
    path, pretrained = pretrained_ckpt
    probe = LitLinearProbe(pretrained=str(path), num_classes=10, lr=1.0, warmup_epochs=0)
    for name, want in pretrained.model.encoder.state_dict().items():
        assert torch.equal(probe.model.encoder.state_dict()[name], want), name
    encoder_before = {k: v.clone() for k, v in probe.model.encoder.state_dict().items()}
    head_before = probe.model.head.weight.detach().clone()
    modes = []

    class WatchModes(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            modes.append((module.model.encoder.training, module.model.head.training))

    make_trainer(max_steps=3, callbacks=[WatchModes()]).fit(probe, digits())
    assert modes and all(not encoder and head for encoder, head in modes)
    assert [n for n, p in probe.model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    for name, before in encoder_before.items():
        assert torch.equal(probe.model.encoder.state_dict()[name], before), name
    assert not torch.equal(probe.model.head.weight, head_before)


def test_missing_pretrained_file_fails_at_construction_naming_the_path(tmp_path):
    missing = tmp_path / "nope" / "last.ckpt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        LitLinearProbe(pretrained=str(missing))
    with pytest.raises(ValueError, match="pretrained.*config"):
        LitFineTune(pretrained=None)


def test_checkpoint_reloads_without_the_pretrained_file(pretrained_ckpt, tmp_path, make_trainer):
    path, _ = pretrained_ckpt
    probe = LitLinearProbe(pretrained=str(path), lr=1.0, warmup_epochs=0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "probe", save_last=True)
    make_trainer(max_steps=2, enable_checkpointing=True, limit_val_batches=1, callbacks=[checkpoint]).fit(
        probe, digits())
    path.unlink()  # the probe's checkpoint must stand on its own
    reloaded = LitLinearProbe.load_from_checkpoint(tmp_path / "probe" / "last.ckpt")
    for name, want in probe.model.state_dict().items():
        assert torch.equal(reloaded.model.state_dict()[name].cpu(), want.cpu()), name


def test_validation_reports_top1_and_top5(pretrained_ckpt, make_trainer):
    path, _ = pretrained_ckpt
    probe = LitLinearProbe(pretrained=str(path), num_classes=10)
    metrics = make_trainer(limit_val_batches=2).validate(probe, digits(), verbose=False)[0]
    assert 0 <= metrics["val/acc_top1"] <= metrics["val/acc_top5"] <= 1


class LayerLrs(Callback):
    def __init__(self) -> None:
        self.steps: list[dict[int, float]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.steps.append({g["layer"]: g["lr"] for g in trainer.optimizers[0].param_groups})


def test_fine_tune_layer_decay_reaches_the_actual_lrs_at_every_step(pretrained_ckpt, make_trainer):
    path, _ = pretrained_ckpt
    decay = 0.65
    tune = LitFineTune(pretrained=str(path), num_classes=10, lr=1e-3, layer_decay=decay, warmup_epochs=1)
    recorder = LayerLrs()
    make_trainer(max_steps=6, callbacks=[recorder]).fit(tune, digits())
    depth = tune.arch.depth
    checked = 0
    for lrs in recorder.steps:
        assert sorted(lrs) == list(range(depth + 2))
        if lrs[depth + 1] > 0:
            checked += 1
            for layer in range(depth + 1):
                assert lrs[layer] / lrs[layer + 1] == pytest.approx(decay, rel=1e-12)
    assert checked >= 4
    assert tune.model.encoder.pos_embed.requires_grad  # fine-tuning trains the position table


def test_fine_tune_at_another_resolution_resizes_the_position_table(pretrained_ckpt):
    path, _ = pretrained_ckpt
    tune = LitFineTune(pretrained=str(path), num_classes=3, img_size=24)
    assert tune.model.encoder.pos_embed.shape[1] == 1 + (24 // 4) ** 2
    assert tune(torch.randn(2, 3, 24, 24)).shape == (2, 3)


def test_random_init_baseline_from_config(make_trainer):
    config = MAEConfig(**tiny_config_values())
    tune = LitFineTune(pretrained=None, config=config, num_classes=10, lr=1e-3)
    assert tune.arch.replace(drop_path_rate=0.0) == config.replace(drop_path_rate=0.0)  # the config's encoder
    start = {k: v.clone() for k, v in tune.model.state_dict().items()}
    make_trainer(max_steps=2).fit(tune, digits())
    moved = [k for k, v in tune.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert "head.weight" in moved and any(k.startswith("encoder.blocks.") for k in moved)  # all of it trains


def test_a_file_that_is_not_a_checkpoint_fails_naming_it(tmp_path):
    bogus = tmp_path / "notes.ckpt"
    bogus.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="notes.ckpt"):
        LitLinearProbe(pretrained=str(bogus))
