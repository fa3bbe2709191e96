"""CIFAR10/100DataModule on a fake folder in torchvision's pickle format, and SyntheticDataModule."""

from __future__ import annotations

import inspect
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
from PIL import Image
from torch.utils.data import DataLoader

from lit_mae.datamodules import CIFAR10DataModule, CIFAR100DataModule, SyntheticDataModule
from lit_mae.datamodules.base import collate_skipping, split_indices
from lit_mae.datamodules.cifar import CIFAR10_MEAN, CIFAR10_STD

PER_BATCH, N_TEST = 20, 20  # images per fake training batch file, fake test images
CIFAR_CLASSES = {CIFAR10DataModule: 10, CIFAR100DataModule: 100}


# ---------------------------------------------------------------- a fake CIFAR folder

def fake_images(n: int, first_id: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (n, 3, 32, 32) noise whose first two red pixels spell the image's id."""
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    ids = np.arange(first_id, first_id + n)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = ids % 256, ids // 256
    return images


def image_ids(pixels: torch.Tensor) -> list[int]:
    """The ids `fake_images` wrote into uint8 (N, 3, 32, 32) pixels."""
    return (pixels[:, 0, 0, 0].long() + 256 * pixels[:, 0, 0, 1].long()).tolist()


def _dump(path: Path, entry: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(entry, f)


def write_fake_cifar(root: Path, module: type) -> dict[str, np.ndarray]:
    """The python-version layout torchvision reads (rows of 1024 R, 1024 G, 1024 B bytes), small."""
    rng = np.random.default_rng(0)
    num_classes = CIFAR_CLASSES[module]
    folder = root / module.dataset_class.base_folder
    folder.mkdir(parents=True)
    names = [f"class_{c}" for c in range(num_classes)]
    train_files = [name for name, _ in module.dataset_class.train_list]
    per_file = 5 * PER_BATCH // len(train_files)  # CIFAR-10: 5 files, CIFAR-100: one
    train = fake_images(5 * PER_BATCH, 0, rng)
    test = fake_images(N_TEST, 5 * PER_BATCH, rng)
    train_labels, test_labels = rng.integers(0, num_classes, len(train)), rng.integers(0, num_classes, N_TEST)
    label_key = "labels" if module is CIFAR10DataModule else "fine_labels"
    parts = [(name, slice(k * per_file, (k + 1) * per_file), train, train_labels)
             for k, name in enumerate(train_files)]
    parts.append((module.dataset_class.test_list[0][0], slice(None), test, test_labels))
    for name, rows, images, labels in parts:
        _dump(folder / name, {"batch_label": name, label_key: labels[rows].tolist(),
                              "data": images[rows].reshape(-1, 3072), "filenames": []})
    _dump(folder / module.dataset_class.meta["filename"], {module.dataset_class.meta["key"]: names})
    return dict(train=train, train_labels=train_labels, test=test, test_labels=test_labels, names=names)


@pytest.fixture
def no_md5(monkeypatch):
    """The fake files are not the real ones: torchvision's md5 checks become "the file exists"
    (cifar.check_integrity is what both `_check_integrity` and `_load_meta` call)."""
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


@pytest.fixture
def cifar10(tmp_path, no_md5) -> tuple[Path, dict[str, np.ndarray]]:
    return tmp_path, write_fake_cifar(tmp_path, CIFAR10DataModule)


def _cifar(root: Path, module: type = CIFAR10DataModule, **kwargs) -> CIFAR10DataModule:
    settings = {"batch_size": 8, "num_workers": 0, "augment": None, **kwargs}
    dm = module(str(root), **settings)
    dm.prepare_data()
    dm.setup("fit")
    return dm


# ---------------------------------------------------------------- CIFAR

def test_signature_is_the_one_configs_are_written_against():
    expected = dict(root=inspect.Parameter.empty, download=False, val_fraction=0.1, seed=0, image_size=32,
                    channels=3, augment="pretrain", batch_size=256, num_workers=None, pin_memory=True,
                    persistent_workers=True, mean=None, std=None, crop_pct=1.0, strict=False)
    for module, (mean, std) in ((CIFAR10DataModule, (CIFAR10_MEAN, CIFAR10_STD)),
                                (CIFAR100DataModule, ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)))):
        parameters = inspect.signature(module).parameters
        assert list(parameters) == list(expected)
        assert {k: p.default for k, p in parameters.items()} == expected
        dm = module("unused")  # mean/std null: the dataset's own statistics
        assert (dm.mean, dm.std) == (mean, std)


@pytest.mark.parametrize("augment", [None, "pretrain", "finetune"])
def test_batches_after_transfer_are_normalised_floats_and_labels(cifar10, augment):
    root, data = cifar10
    dm = _cifar(root, augment=augment)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        images, labels = dm.on_after_batch_transfer(next(iter(loader)), 0)
        assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
        assert labels.shape == (8,) and labels.dtype == torch.long
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close((images * std + mean) * 255, torch.from_numpy(data["test"][:8]).float(),
                               atol=1e-3, rtol=0)  # the last loader is the test set, in order
    assert labels.tolist() == data["test_labels"][:8].tolist()


def test_evaluation_pixels_are_the_pickled_pixels(cifar10):
    root, data = cifar10
    dm = _cifar(root, seed=3)
    test = dm.splits["test"]
    assert len(test) == N_TEST
    for i in range(N_TEST):
        pixels, label = test[i]
        assert pixels.dtype == torch.uint8 and torch.equal(pixels, torch.from_numpy(data["test"][i]))
        assert label == data["test_labels"][i]
    _, val_idx, _ = split_indices(5 * PER_BATCH, (0.1, 0.0), seed=3)
    for position, index in enumerate(val_idx.tolist()):
        pixels, label = dm.splits["val"][position]
        assert torch.equal(pixels, torch.from_numpy(data["train"][index]))
        assert label == data["train_labels"][index]


def test_split_is_seeded_disjoint_and_complete(cifar10):
    root, _ = cifar10

    def ids(dm: CIFAR10DataModule, split: str) -> list[int]:
        return image_ids(dm.splits[split].sources)

    a, b, other = (_cifar(root, seed=s, val_fraction=0.2) for s in (0, 0, 1))
    assert len(ids(a, "val")) == 20 and len(ids(a, "train")) == 80
    assert sorted(ids(a, "train") + ids(a, "val")) == list(range(5 * PER_BATCH))
    assert ids(a, "val") == ids(b, "val") and ids(a, "train") == ids(b, "train")
    assert set(ids(a, "val")) != set(ids(other, "val"))
    assert sorted(ids(a, "test")) == list(range(5 * PER_BATCH, 5 * PER_BATCH + N_TEST))  # never split
    no_val = _cifar(root, val_fraction=0.0)
    assert len(no_val.splits["train"]) == 5 * PER_BATCH and no_val.val_dataloader() == []


@pytest.mark.parametrize("module", [CIFAR10DataModule, CIFAR100DataModule])
def test_classes_come_from_the_dataset(tmp_path, no_md5, module):
    data = write_fake_cifar(tmp_path, module)
    dm = module(str(tmp_path), num_workers=0)
    assert dm.num_classes == CIFAR_CLASSES[module]
    dm.setup("fit")
    assert dm.class_names == data["names"] and len(dm.class_names) == dm.num_classes
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 5 * PER_BATCH


@pytest.mark.parametrize("module", [CIFAR10DataModule, CIFAR100DataModule])
def test_missing_data_names_the_folder_and_how_to_fetch_it(tmp_path, module):
    dm = module(str(tmp_path), num_workers=0)
    dm.prepare_data()  # download is false: nothing happens
    with pytest.raises(FileNotFoundError) as raised:
        dm.setup("fit")
    message = str(raised.value)
    folder = module.dataset_class.base_folder  # cifar-10-batches-py / cifar-100-python
    for part in (str(tmp_path), folder, "does not exist", "--data.init_args.download true",
                 module.dataset_class.filename):
        assert part in message


def test_files_that_fail_the_md5_check_are_reported_as_corrupted(tmp_path):
    write_fake_cifar(tmp_path, CIFAR10DataModule)  # without no_md5: torchvision's real checksums
    with pytest.raises(FileNotFoundError, match="incomplete or corrupted.*--data.init_args.download true"):
        _cifar(tmp_path)


class NetworkTouched(Exception):
    pass


def test_download_false_never_fetches(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise NetworkTouched(args)

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", refuse)
    with pytest.raises(FileNotFoundError):
        _cifar(tmp_path, download=False)  # prepare_data and setup: never reaches the download
    dm = CIFAR10DataModule(str(tmp_path), download=True)
    with pytest.raises(NetworkTouched):  # and that is where a download would go
        dm.prepare_data()


def test_channels_1_is_pillows_grey_with_a_one_value_mean(cifar10):
    root, data = cifar10
    dm = _cifar(root, channels=1)
    assert len(dm.mean) == len(dm.std) == 1
    assert dm.mean[0] == pytest.approx(0.299 * 0.4914 + 0.587 * 0.4822 + 0.114 * 0.4465)
    for i in range(N_TEST):
        expected = np.array(Image.fromarray(data["test"][i].transpose(1, 2, 0)).convert("L"))  # (32, 32)
        assert torch.equal(dm.splits["test"][i][0], torch.from_numpy(expected).unsqueeze(0))
    images, _ = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert images.shape == (8, 1, 32, 32) and images.dtype == torch.float32


def test_hyperparameters_are_plain_and_rebuild_the_module(tmp_path):
    dm = CIFAR100DataModule(str(tmp_path), augment="linprobe", seed=4)
    assert dm.hparams["augment"]["crop_scale"] == (0.08, 1.0) and dm.hparams["seed"] == 4
    again = CIFAR100DataModule(**dm.hparams)
    assert again.augment == dm.augment and again.mean == dm.mean == (0.5071, 0.4865, 0.4409)


# ---------------------------------------------------------------- SyntheticDataModule

def _synthetic(**kwargs) -> SyntheticDataModule:
    dm = SyntheticDataModule(**kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("kind", ["random", "shapes"])
def test_synthetic_images_are_a_function_of_seed_split_and_index(kind):
    a, b = _synthetic(kind=kind), _synthetic(kind=kind)
    for split in ("train", "val", "test"):
        for i in (0, 5, 63):
            first = a.splits[split][i]
            assert torch.equal(first[0], a.splits[split][i][0]) and first[1] == a.splits[split][i][1]
            assert torch.equal(first[0], b.splits[split][i][0]) and first[1] == b.splits[split][i][1]
    images = [a.splits[split][0][0] for split in ("train", "val", "test")]
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])
    assert not torch.equal(a.splits["train"][1][0], a.splits["train"][0][0])
    assert not torch.equal(_synthetic(kind=kind, seed=1).splits["train"][0][0], images[0])


def test_synthetic_images_are_the_same_in_dataloader_workers():
    dm = _synthetic(val_samples=24)
    dataset = dm.splits["val"]
    direct_images, direct_labels, _ = collate_skipping([dataset[i] for i in range(len(dataset))])
    loader = DataLoader(dataset, batch_size=5, num_workers=2, collate_fn=collate_skipping)
    batches = list(loader)
    assert torch.equal(torch.cat([b[0] for b in batches]), direct_images)
    assert torch.equal(torch.cat([b[1] for b in batches]), direct_labels)


@pytest.mark.parametrize("kind", ["random", "shapes"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("image_size", [8, 32, 48])
def test_synthetic_batches_have_the_asked_shape(kind, channels, image_size):
    dm = _synthetic(kind=kind, channels=channels, image_size=image_size, batch_size=4, num_samples=8,
                    val_samples=4, test_samples=4)
    assert dm.splits["train"][0][0].dtype == torch.uint8
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        images, labels = dm.on_after_batch_transfer(next(iter(loader)), 0)
        assert images.shape == (4, channels, image_size, image_size) and images.dtype == torch.float32
        assert labels.shape == (4,) and labels.dtype == torch.long
    assert len(dm.mean) == channels


@pytest.mark.parametrize("augment", ["pretrain", "finetune"])
def test_synthetic_training_images_go_through_the_augment_pipeline(augment):
    dm = _synthetic(augment=augment, image_size=16, batch_size=4)
    pixels, _ = dm.splits["train"][0]
    assert pixels.shape == (3, 16, 16)
    assert pixels.dtype == (torch.uint8 if augment == "pretrain" else torch.float32)  # RandAugment: PIL
    assert torch.equal(dm.splits["val"][0][0], _synthetic(image_size=16).splits["val"][0][0])  # eval: as made


def test_synthetic_labels_are_in_range_and_balanced():
    dm = SyntheticDataModule(num_samples=2000, num_classes=10)
    dm.setup()
    labels = torch.tensor([label for _, label in (dm.splits["train"][i] for i in range(0, 2000, 4))]
                          + [dm.splits["train"].labels[i] for i in range(2000)])
    assert labels.min() >= 0 and labels.max() < 10
    counts = torch.bincount(labels[500:], minlength=10)
    assert counts.min() > 140 and counts.max() < 260  # 200 expected each
    assert torch.equal(labels[:500], labels[500::4])  # the labels sequence is the samples' labels
    assert dm.num_classes == 10 and len(dm.class_names) == 10


def _nearest_class_mean_accuracy(dm: SyntheticDataModule) -> float:
    def pixels_and_labels(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, _ = collate_skipping([dm.splits[split][i] for i in range(len(dm.splits[split]))])
        return images.flatten(1).float(), labels

    train, train_labels = pixels_and_labels("train")
    test, test_labels = pixels_and_labels("test")
    means = torch.stack([train[train_labels == c].mean(0) for c in range(dm.num_classes)])  # (classes, C*S*S)
    return (torch.cdist(test, means).argmin(1) == test_labels).float().mean().item()


@pytest.mark.parametrize("channels, better_than", [(3, 0.7), (1, 0.25)])
def test_shapes_are_learnable_and_noise_is_not(channels, better_than):
    settings = dict(num_samples=400, val_samples=0, test_samples=200, image_size=16, channels=channels)
    assert _nearest_class_mean_accuracy(_synthetic(kind="shapes", **settings)) > better_than  # chance: 0.1
    assert _nearest_class_mean_accuracy(_synthetic(kind="random", **settings)) < 0.2


def test_synthetic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        SyntheticDataModule(kind="circles")
    with pytest.raises(ValueError, match="num_samples=0"):
        SyntheticDataModule(num_samples=0)
    with pytest.raises(IndexError):
        _synthetic(val_samples=3).splits["val"].sources[3]
