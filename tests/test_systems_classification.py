"""LitLinearProbe and LitFineTune (lit_mae/systems/classification.py): loading a pretrained encoder,
what trains, schedules, reloads; and `LitFineTune.mix`, which gives timm's mixup and label-smoothed
targets, with timm's loss. The classifier network itself, ViTClassifier: test_models_classifier.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from timm.loss import SoftTargetCrossEntropy

from conftest import ImageDataModule, assert_same_state, tiny_config_values
from lit_mae import LitFineTune, LitLinearProbe, LitMAE, MAEConfig
from lit_mae.datamodules import DigitsDataModule
from lit_mae.models.pos_embed import resize_pos_embed

pytestmark = pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*")  # the probe's frozen encoder

K = 10  # classes of LitFineTune.mix's tests


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
    assert_same_state(probe.model.encoder, pretrained.model.encoder)
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
    assert_same_state(reloaded.model, probe.model)


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
    path, pretrained = pretrained_ckpt
    tune = LitFineTune(pretrained=str(path), num_classes=3, img_size=24)
    assert tune.model.encoder.pos_embed.shape[1] == 1 + (24 // 4) ** 2
    # the pretrained 4x4 table resized to 6x6 (not a fresh 6x6 sin-cos table), the other weights as trained
    assert torch.equal(tune.model.encoder.pos_embed, resize_pos_embed(pretrained.model.encoder.pos_embed, (6, 6)))
    assert_same_state(tune.model.encoder, pretrained.model.encoder, skip=("pos_embed",))
    assert tune(torch.randn(2, 3, 24, 24)).shape == (2, 3)


def test_random_init_baseline_from_config(make_trainer):
    config = MAEConfig(**tiny_config_values())
    tune = LitFineTune(pretrained=None, config=config, num_classes=10, lr=1e-3)
    assert tune.arch.replace(drop_path_rate=0.0) == config.replace(drop_path_rate=0.0)  # the config's encoder
    start = {k: v.clone() for k, v in tune.model.state_dict().items()}
    make_trainer(max_steps=2).fit(tune, digits())
    moved = [k for k, v in tune.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert "head.weight" in moved and any(k.startswith("encoder.blocks.") for k in moved)  # all of it trains


# --- LitFineTune.mix ------------------------------------------------------------------------------

def finetune(**kwargs: Any) -> LitFineTune:
    return LitFineTune(None, num_classes=K, config=tiny_config_values(), **kwargs)


def smoothed_one_hot(labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Label smoothing by its definition: (1 - eps) on the true class plus eps spread over all K."""
    targets = torch.full((len(labels), K), eps / K)
    targets[torch.arange(len(labels)), labels] += 1 - eps
    return targets


def batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=generator)  # (B, C, H, W)
    return images, torch.arange(n) % K  # labels differ from those of the flipped batch


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_without_mixing_targets_are_smoothed_one_hot(eps):
    images, labels = batch(8)
    mixed, targets = finetune(mixup=0.0, cutmix=0.0, label_smoothing=eps).mix(images.clone(), labels)
    assert torch.equal(mixed, images)
    torch.testing.assert_close(targets.sum(-1), torch.ones(8))
    on, off = targets[torch.arange(8), labels], targets.masked_fill(F.one_hot(labels, K).bool(), 0)
    torch.testing.assert_close(on, torch.full((8,), 1 - eps + eps / K))
    assert torch.allclose(off.sum(-1), torch.full((8,), (K - 1) * eps / K))
    torch.testing.assert_close(targets, smoothed_one_hot(labels, eps))


@pytest.mark.parametrize("seed", range(4))
def test_mixup_mixes_with_the_flipped_batch_by_the_targets_lambda(seed):
    eps = 0.1
    np.random.seed(seed)  # timm draws lambda with numpy
    images, labels = batch(8, seed)
    mixed, targets = finetune(mixup=0.8, cutmix=0.0, label_smoothing=eps).mix(images.clone(), labels)
    torch.testing.assert_close(targets.sum(-1), torch.ones(8))
    on, off = 1 - eps + eps / K, eps / K
    lam = ((targets[0, labels[0]] - off) / (on - off)).item()  # the true class's share
    assert 0 <= lam <= 1
    soft = smoothed_one_hot(labels, eps)
    torch.testing.assert_close(targets, lam * soft + (1 - lam) * soft.flip(0))
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))


def test_an_odd_batch_passes_through_with_smoothed_one_hot_targets():
    images, labels = batch(7)
    for mixup, cutmix in ((0.8, 0.0), (0.8, 1.0), (0.0, 1.0)):
        mixed, targets = finetune(mixup=mixup, cutmix=cutmix, label_smoothing=0.1).mix(images.clone(), labels)
        assert torch.equal(mixed, images)
        torch.testing.assert_close(targets, smoothed_one_hot(labels, 0.1))


def test_training_loss_is_timms_soft_target_cross_entropy(make_trainer):
    module = finetune(mixup=0.8, cutmix=1.0, label_smoothing=0.1, lr=1e-3, warmup_epochs=0)
    seen: dict[str, torch.Tensor] = {}
    mix, model_forward = module.mix, module.model.forward

    def spy_mix(images, labels):
        seen["images"], seen["targets"] = mix(images, labels)
        return seen["images"], seen["targets"]

    def spy_forward(images, *args, **kwargs):
        seen["logits"] = model_forward(images, *args, **kwargs)
        return seen["logits"]

    module.mix, module.model.forward = spy_mix, spy_forward
    losses = []

    class RecordLoss(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append((outputs["loss"].detach(), seen["logits"].detach(), seen["targets"]))

    make_trainer(max_steps=2, callbacks=[RecordLoss()]).fit(module, ImageDataModule(n=8, batch_size=4, kind="tuple"))
    assert len(losses) == 2
    for loss, logits, targets in losses:
        assert targets.shape == logits.shape == (4, K)
        assert not torch.allclose(targets, smoothed_one_hot(targets.argmax(-1), 0.1))  # really mixed
        torch.testing.assert_close(loss, SoftTargetCrossEntropy()(logits, targets))


def test_fine_tuning_with_a_datamodule_seed_other_than_its_mix_seed(make_trainer):
    """Lightning merges the module's and the DataModule's hyper-parameters and refuses one name
    with two values: the fine-tune's seed is `mix_seed`, beside every DataModule's `seed`."""
    tune = LitFineTune(pretrained=None, config=MAEConfig(**tiny_config_values()), num_classes=10, lr=1e-3,
                       mix_seed=3)
    make_trainer(max_steps=1, logger=True).fit(tune, DigitsDataModule(image_size=16, batch_size=8, seed=1))
    assert tune.trainer.global_step == 1 and tune.hparams["mix_seed"] == 3
