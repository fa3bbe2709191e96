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
    (dict(image_size=16, digit_size=20), ["digit_size", "20", "16"]),
    (dict(placement="left"), ["placement", "left"]),
])
def test_bad_arguments_name_the_field_and_value(kwargs, words):
    with pytest.raises(ValueError) as info:
        DigitsDataModule(**kwargs)
    for word in words:
        assert word in str(info.value)


# --- translated digits: digit_size < image_size ---------------------------------------------------

def _where(canvas: torch.Tensor, digit: torch.Tensor) -> list[tuple[int, int]]:
    """Every (top, left) at which uint8 `digit` (C, d, d) sits in `canvas` (C, S, S), black elsewhere."""
    d, S = digit.shape[-1], canvas.shape[-1]
    found = []
    for top in range(S - d + 1):
        for left in range(S - d + 1):
            rest = canvas.clone()
            rest[:, top:top + d, left:left + d] = 0
            if torch.equal(canvas[:, top:top + d, left:left + d], digit) and not rest.any():
                found.append((top, left))
    return found


def _epoch(dm: DigitsDataModule, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, labels) of one training epoch, in loader order."""
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    batches = list(loader)
    return torch.cat([b.pixels for b in batches]), torch.cat([b.labels for b in batches])


def test_random_placement_moves_each_training_digit_every_epoch_reproducibly():
    settings = dict(image_size=24, digit_size=12, placement="random", channels=1, batch_size=64, seed=3)
    dm = _setup(**settings)
    first, first_labels = _epoch(dm, 0)
    second, _ = _epoch(dm, 1)
    assert first.shape[1:] == (1, 24, 24)
    order = dm.train_dataloader().sampler
    order.set_epoch(0)
    unplaced = dm.splits["train"].sources  # the training digits (N, 1, 12, 12)
    places = set()
    for row, key in enumerate(list(order)[:40]):
        index = key[0] if isinstance(key, tuple) else key
        spots = _where(first[row], unplaced[index])
        assert spots, f"training digit {index} is not on its canvas"  # the digit, whole, on black
        places.add(spots[0])
    assert len(places) > 10  # spread over the canvas
    assert not torch.equal(first, second)  # a new place each epoch
    again, again_labels = _epoch(_setup(**settings), 0)
    assert torch.equal(first, again) and torch.equal(first_labels, again_labels)  # the same in a rerun
    in_workers, _ = _epoch(_setup(**settings, num_workers=2), 0)
    assert torch.equal(first, in_workers)  # worker processes draw the same places
    other, _ = _epoch(_setup(**{**settings, "seed": 4}), 0)
    assert not torch.equal(first, other)


def test_val_and_test_digits_keep_one_place_and_the_default_is_unchanged():
    from lit_mae.datamodules.digits import digits_pixels

    settings = dict(image_size=24, digit_size=12, placement="random", channels=1, seed=3)
    val, _ = _stored(_setup(**settings), "val")
    assert torch.equal(val, _stored(_setup(**settings), "val")[0])  # fixed by the seed
    corners = {tuple(canvas[0].nonzero().min(0).values.tolist()) for canvas in val}
    assert len(corners) > 5  # not all at one place
    digits, _ = digits_pixels(12, 1)
    _, val_indices, test_indices = split_indices(len(digits), (0.1, 0.1), 3, "DigitsDataModule", "digits")
    for canvas, index in zip(val[:20], val_indices[:20]):
        assert _where(canvas, digits[index])
    centred, _ = _stored(_setup(image_size=24, digit_size=12, channels=1, seed=3), "test")
    for canvas, index in zip(centred[:10], test_indices[:10]):
        assert _where(canvas, digits[index]) == [(6, 6)]
    # without digit_size nothing changes: the digits fill the frame, as before
    plain = _setup(image_size=16, seed=3)
    pixels, _ = digits_pixels(16, 3)
    train, _, _ = split_indices(len(digits), (0.1, 0.1), 3, "DigitsDataModule", "digits")
    assert torch.equal(_stored(plain, "train")[0], pixels[train]) and not plain.draws_per_sample()
