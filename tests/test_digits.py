"""DigitsDataModule: scikit-learn's bundled handwritten digits, split, upsampled, normalised on the device."""

from __future__ import annotations

import pytest
import torch

from lit_mae.datamodules import DigitsDataModule
from lit_mae.datamodules.batch import Batch, LoadedBatch
from lit_mae.datamodules.digits import load_digits_tensors, split_indices

N_DIGITS = 1797  # the size of scikit-learn's bundled copy


def _setup(**kwargs) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)
    dm.setup("fit")
    return dm


def _split_sizes(dm: DigitsDataModule) -> dict[str, int]:
    return {name: len(dataset) for name, dataset in dm.splits.items()}


def _stored(dm: DigitsDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, C, S, S) pixels and (N,) labels of a split, as stored."""
    return dm.splits[split].sources, dm.splits[split].labels


def test_splits_add_up_to_the_whole_dataset():
    dm = _setup(image_size=8, channels=1, val_fraction=0.1, test_fraction=0.2)
    sizes = _split_sizes(dm)
    assert set(sizes) == {"train", "val", "test"}
    assert sum(sizes.values()) == N_DIGITS
    assert sizes["val"] == pytest.approx(0.1 * N_DIGITS, abs=1)
    assert sizes["test"] == pytest.approx(0.2 * N_DIGITS, abs=1)


@pytest.mark.parametrize("fractions", [(0.1, 0.1), (0.0, 0.3), (0.25, 0.0), (0.5, 0.49)])
def test_split_indices_partition_the_range(fractions):
    train, val, test = split_indices(N_DIGITS, fractions, seed=3)
    together = torch.cat([train, val, test])
    assert len(together) == N_DIGITS
    assert torch.equal(together.sort().values, torch.arange(N_DIGITS))  # disjoint and complete


def test_split_depends_on_the_seed_only():
    first = split_indices(N_DIGITS, (0.1, 0.1), seed=0)
    again = split_indices(N_DIGITS, (0.1, 0.1), seed=0)
    other = split_indices(N_DIGITS, (0.1, 0.1), seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_same_seed_gives_the_same_data_and_another_seed_does_not():
    a, b, c = (_setup(image_size=8, channels=1, seed=s) for s in (0, 0, 1))
    for split in ("train", "val", "test"):
        assert all(torch.equal(x, y) for x, y in zip(_stored(a, split), _stored(b, split)))
    assert not torch.equal(_stored(a, "val")[1], _stored(c, "val")[1])


def test_splits_are_the_disjoint_index_sets_of_split_indices():
    dm = _setup(image_size=8, channels=1, seed=5)
    raw, labels = load_digits_tensors()  # (N, 1, 8, 8) in [0, 1]
    parts = dict(zip(("train", "val", "test"), split_indices(N_DIGITS, dm.fractions, seed=5)))
    for name, idx in parts.items():
        pixels, split_labels = _stored(dm, name)
        assert torch.equal(split_labels, labels[idx])
        torch.testing.assert_close(pixels.float() / 255, raw[idx], atol=0.5 / 255 + 1e-6, rtol=0)  # 8 bits of [0, 1]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("image_size", [16, 32])
def test_batches_have_the_asked_shape(channels, image_size):
    dm = _setup(image_size=image_size, channels=channels, batch_size=7)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(),
                   dm.predict_dataloader()):
        batch = next(iter(loader))
        assert isinstance(batch, LoadedBatch) and batch.pixels.dtype == torch.uint8  # uint8 through the loader
        assert batch.skipped == 0
        after = dm.on_after_batch_transfer(batch, 0)
        assert isinstance(after, Batch)
        images, labels = after
        assert images.shape == (7, channels, image_size, image_size)
        assert images.dtype == torch.float32
        assert labels.shape == (7,) and labels.dtype == torch.long
    if channels == 3:  # grey digits: the channels are copies
        assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])


def test_labels_are_the_ten_digits():
    dm = _setup(image_size=8, channels=1)
    labels = torch.cat([_stored(dm, split)[1] for split in dm.splits])
    assert labels.min() >= 0 and labels.max() <= 9
    assert set(labels.tolist()) == set(range(DigitsDataModule.num_classes))
    assert DigitsDataModule.num_classes == 10 and len(DigitsDataModule.class_names) == 10


def test_train_split_is_normalised_on_the_device_with_its_own_stats():
    dm = _setup(image_size=16, channels=3, batch_size=2000)
    batch = next(iter(dm.train_dataloader()))  # the whole training split, as uint8
    assert len(batch.pixels) == 1437 and batch.pixels.dtype == torch.uint8
    train = dm.on_after_batch_transfer(batch, 0).images
    assert train.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert train.std().item() == pytest.approx(1.0, abs=1e-4)
    assert len(dm.mean) == len(dm.std) == 3
    assert 0 < dm.mean[0] < 1 and dm.std[0] > 0  # stats of [0, 1] pixels before normalising
    # undoing the normalisation gives the stored pixels back
    torch.testing.assert_close(train * dm.std[0] + dm.mean[0], batch.pixels.float() / 255, atol=1e-5, rtol=0)


def test_train_loader_shuffles_by_seed_and_epoch_and_eval_loaders_do_not():
    dm = _setup(image_size=8, channels=1, batch_size=1797)
    loader = dm.train_dataloader()
    first = next(iter(loader))[1]
    assert not torch.equal(first, _stored(dm, "train")[1])  # shuffled
    torch.manual_seed(1)  # the global RNG plays no part: the same (seed, epoch), the same order
    assert torch.equal(next(iter(dm.train_dataloader()))[1], first)
    loader.sampler.set_epoch(1)  # as Lightning does at each epoch start
    assert not torch.equal(next(iter(loader))[1], first)
    assert torch.equal(next(iter(dm.val_dataloader()))[1], _stored(dm, "val")[1])


def test_setup_is_idempotent():
    dm = _setup(image_size=8, channels=1)
    splits = dm.splits
    dm.setup("test")
    assert dm.splits is splits


@pytest.mark.parametrize("kwargs, words", [
    (dict(channels=2), ["channels", "2"]),
    (dict(channels=4), ["channels", "4"]),
    (dict(image_size=4), ["image_size", "4"]),
    (dict(val_fraction=1.5), ["val_fraction", "1.5"]),
    (dict(test_fraction=-0.1), ["test_fraction", "-0.1"]),
    (dict(val_fraction=0.6, test_fraction=0.5), ["val_fraction", "0.6", "test_fraction", "0.5"]),
])
def test_bad_arguments_name_the_field_and_value(kwargs, words):
    with pytest.raises(ValueError) as info:
        DigitsDataModule(**kwargs)
    for word in words:
        assert word in str(info.value)
