"""LitFineTune.mix gives timm's mixup and label-smoothed targets, and its loss is timm's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, seed_everything
from timm.loss import SoftTargetCrossEntropy

from conftest import ImageDataModule, tiny_config_values
from lit_mae import LitFineTune, LitLinearProbe
from lit_mae.datamodules import DigitsDataModule

pytestmark = pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*")  # the probe's frozen encoder

K = 10  # classes


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
