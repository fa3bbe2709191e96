"""CachedFeatures: a linear probe on stored features gives the numbers of the probe that encodes
every batch, encoding each training and validation image once per fit."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning.pytorch import seed_everything

from conftest import tiny_config_values
from lit_mae import CachedFeatures, LitLinearProbe
from lit_mae.datamodules import DigitsDataModule

pytestmark = pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*")  # the probe's frozen encoder

K = 10  # classes


class EncoderSpy:
    """Wraps `encoder.forward_features` and counts the images it encodes."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        self.original, self.images = encoder.forward_features, 0
        encoder.forward_features = self

    def __call__(self, images: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.images += images.shape[0]
        return self.original(images, *args, **kwargs)


def fit_probe(make_trainer, cached: bool, epochs: int = 2) -> tuple[LitLinearProbe, DigitsDataModule,
                                                                   EncoderSpy, float]:
    seed_everything(0, verbose=False)
    probe = LitLinearProbe(None, config=tiny_config_values(img_size=16), num_classes=K, lr=5.0, warmup_epochs=0.5)
    spy = EncoderSpy(probe.model.encoder)
    dm = DigitsDataModule(image_size=16, batch_size=32, seed=1)  # a split and order where 2 epochs beat chance
    trainer = make_trainer(max_epochs=epochs, limit_val_batches=1.0)
    trainer.fit(probe, CachedFeatures(dm) if cached else dm)
    return probe, dm, spy, trainer.callback_metrics["val/acc_top1"].item()


def test_cached_features_train_the_same_head_encoding_each_split_once(make_trainer):
    plain, _, plain_spy, plain_acc = fit_probe(make_trainer, cached=False)
    cached, dm, cached_spy, cached_acc = fit_probe(make_trainer, cached=True)
    n_train, n_val = len(dm.splits["train"]), len(dm.splits["val"])

    assert plain.model.head.bias.abs().max() > 0  # the head trained
    for name in ("weight", "bias"):
        got, want = getattr(cached.model.head, name), getattr(plain.model.head, name)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=name)
    for name in ("running_mean", "running_var"):  # the head's BatchNorm saw the same batches
        got, want = getattr(cached.model.head_norm, name), getattr(plain.model.head_norm, name)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name)
    assert plain_acc > 1.5 / K  # above chance, so that equal accuracies say something
    assert cached_acc == plain_acc

    trained = len(dm.train_dataloader()) * dm.batch_size  # full batches: the last partial one is dropped
    assert plain_spy.images == 2 * (trained + n_val)  # the spy sees every batch of both epochs
    assert cached_spy.images == n_train + n_val  # ...and with the cache each image once
    assert not vars(dm).keys() & {"train_dataloader", "val_dataloader"}  # the wrapped DataModule is untouched


def test_cache_is_rebuilt_for_a_second_fit(make_trainer):
    probe, dm, spy, _ = fit_probe(make_trainer, cached=True, epochs=1)
    n = len(dm.splits["train"]) + len(dm.splits["val"])
    assert spy.images == n
    make_trainer(max_epochs=1, limit_val_batches=1.0).fit(probe, CachedFeatures(dm))
    assert spy.images == 2 * n  # encoded again for the new fit (the encoder could have changed)


def test_cached_features_refuse_an_augmenting_datamodule():
    with pytest.raises(ValueError, match=r"DigitsDataModule augments its training images \(augment=Augment"):
        CachedFeatures(DigitsDataModule(image_size=16, batch_size=32, augment="linprobe"))
    # a random place per epoch is a draw too (before: an IndexError inside torch at the first batch)
    with pytest.raises(ValueError, match=r"DigitsDataModule draws each training image anew every epoch"):
        CachedFeatures(DigitsDataModule(image_size=32, digit_size=16, placement="random", batch_size=32))
    CachedFeatures(DigitsDataModule(image_size=32, digit_size=16, placement="centre", batch_size=32))  # fixed: fine


def test_cached_features_serve_the_wrapped_test_images_and_its_classes(make_trainer):
    probe, dm, spy, _ = fit_probe(make_trainer, cached=True, epochs=1)
    cached = CachedFeatures(dm)
    assert (cached.num_classes, cached.class_names, cached.mean, cached.std) == (
        dm.num_classes, dm.class_names, dm.mean, dm.std)
    before = spy.images
    results = make_trainer().test(probe, cached)  # test images come as images, encoded batch by batch
    assert spy.images == before + len(dm.splits["test"])
    assert 0 <= results[0]["test/acc_top1"] <= 1


def test_cached_features_need_a_module_that_encodes(make_trainer):
    from lit_mae import LitFineTune
    tune = LitFineTune(None, num_classes=K, config=tiny_config_values(img_size=16), lr=0.1)
    with pytest.raises(TypeError, match="LitFineTune has no `encode"):
        make_trainer(max_epochs=1).fit(tune, CachedFeatures(DigitsDataModule(image_size=16, batch_size=32)))
