"""ImageFolderDataModule and what it shares with other image DataModules (datamodules/base.py):
finding and labelling files, splits, pipelines, device-side normalising, skipping corrupt files."""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch.utils.data import SequentialSampler

from conftest import UNREADABLE_KINDS, tiny_config_values, write_unreadable
from lit_mae import LitMAE, MAEConfig
from lit_mae.datamodules import ImageFolderDataModule
from lit_mae.datamodules.base import IMAGENET_MEAN, IMAGENET_STD, collate_skipping
from lit_mae.datamodules.images import UnreadableImageError
from lit_mae.datamodules.sampling import EpochSampler

SIZE = 16  # the tiny model's img_size


def write_image(path: Path, seed: int = 0) -> Path:
    """A 40x30 RGB image of seeded noise (PNG or JPEG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_dm(root: Path, **kwargs) -> ImageFolderDataModule:
    settings = dict(image_size=SIZE, batch_size=4, num_workers=0, persistent_workers=False)
    settings.update(kwargs)
    dm = ImageFolderDataModule(str(root), **settings)
    dm.setup("fit")
    return dm


def sources(dm: ImageFolderDataModule, split: str) -> list[Path]:
    return list(dm.splits[split].sources)


def labelled_tree(root: Path) -> dict[Path, str]:
    """Three classes at several depths, plus files that are not images; file -> class name."""
    files = {
        root / "cat" / "1.png": "cat",
        root / "cat" / "a" / "2.png": "cat",
        root / "cat" / "a" / "b" / "3.jpg": "cat",
        root / "apple" / "x" / "y" / "z" / "4.png": "apple",
        root / "apple" / "5.JPEG": "apple",
        root / "dog" / "6.png": "dog",
        root / "dog" / "deep" / "7.bmp": "dog",
    }
    for seed, path in enumerate(files):
        write_image(path, seed)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "deep" / "labels.csv").write_text("a,b")
    (root / "README.txt").write_text("top-level file, not a class")
    return files


# --- errors that name the folder -------------------------------------------------------------------

@pytest.mark.parametrize("field", ["root", "val_root", "test_root"])
def test_a_missing_folder_names_the_field_and_path(tmp_path: Path, field: str):
    labelled_tree(tmp_path / "train")
    missing = tmp_path / "nowhere"
    roots = {"root": tmp_path / "train", field: missing}
    root = roots.pop("root")
    with pytest.raises(FileNotFoundError, match=rf"ImageFolderDataModule\.{field}: .*{missing}"):
        make_dm(root, **{k: str(v) for k, v in roots.items()})


@pytest.mark.parametrize("labels", ["folders", "none"])
def test_a_root_without_images_names_the_path(tmp_path: Path, labels: str):
    (tmp_path / "cat" / "nested").mkdir(parents=True)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=rf"ImageFolderDataModule\.root: no .*{tmp_path}"):
        make_dm(tmp_path, labels=labels)


def test_a_labelled_root_whose_class_folders_are_empty_says_so(tmp_path: Path):
    for name in ("cat", "dog"):
        (tmp_path / name / "sub").mkdir(parents=True)
    write_image(tmp_path / "loose.png")  # an image, but in no class folder
    with pytest.raises(ValueError, match=rf"root: no class folders with images under {tmp_path}") as caught:
        make_dm(tmp_path)
    assert "labels: none" in str(caught.value)  # and points at the unlabelled option
    assert make_dm(tmp_path, labels="none").splits["train"].labels == [-1]


def test_a_val_root_class_unknown_to_training_names_it(tmp_path: Path):
    labelled_tree(tmp_path / "train")
    write_image(tmp_path / "val" / "cat" / "1.png")
    write_image(tmp_path / "val" / "zebra" / "1.png")
    with pytest.raises(ValueError, match=rf"val_root: class folders \['zebra'\] under {tmp_path / 'val'}"):
        make_dm(tmp_path / "train", val_root=str(tmp_path / "val"))


# --- finding and labelling -------------------------------------------------------------------------

def test_a_nested_labelled_tree_finds_every_image_with_its_class_index(tmp_path: Path):
    files = labelled_tree(tmp_path)
    dm = make_dm(tmp_path)
    assert dm.class_names == ["apple", "cat", "dog"]
    assert dm.num_classes == 3
    assert set(dm.splits) == {"train"}
    found = dict(zip(sources(dm, "train"), dm.splits["train"].labels))
    assert set(found) == set(files)  # every image, no .txt or .csv
    for path, label in found.items():
        assert dm.class_names[label] == files[path]
    assert Counter(found.values()) == {0: 2, 1: 3, 2: 2}


def test_batches_carry_the_labels_of_their_files(tmp_path: Path):
    files = labelled_tree(tmp_path)
    dm = make_dm(tmp_path, augment=None, batch_size=len(files))
    (_, labels, skipped), = list(dm.train_dataloader())
    assert Counter(labels.tolist()) == Counter(dm.class_names.index(c) for c in files.values())
    assert skipped == 0


def test_hidden_class_folders_are_not_classes(tmp_path: Path):
    files = labelled_tree(tmp_path)
    write_image(tmp_path / ".cache" / "1.png")
    dm = make_dm(tmp_path)
    assert dm.class_names == ["apple", "cat", "dog"]
    assert set(sources(dm, "train")) == set(files)


@pytest.mark.parametrize("labels", ["folders", "none"])
def test_hidden_folders_inside_the_tree_are_ignored(tmp_path: Path, labels: str):
    files = labelled_tree(tmp_path)
    write_image(tmp_path / "cat" / ".thumbnails" / "1.png")
    write_image(tmp_path / "dog" / ".ipynb_checkpoints" / "6.png")
    write_image(tmp_path / ".trash" / "old.png")
    dm = make_dm(tmp_path, labels=labels)
    assert set(sources(dm, "train")) == set(files)


@pytest.mark.parametrize("layout", ["flat", "nested", "class folders"])
def test_unlabelled_folders_of_any_nesting_give_label_minus_1(tmp_path: Path, layout: str):
    if layout == "class folders":
        files = set(labelled_tree(tmp_path))
    else:
        depth = {"flat": [""] * 4, "nested": ["", "a", "a/b", "c/d/e"]}[layout]
        files = {write_image(tmp_path / folder / f"{i}.png", i) for i, folder in enumerate(depth)}
        (tmp_path / "notes.txt").write_text("not an image")
    dm = make_dm(tmp_path, labels="none")
    assert set(sources(dm, "train")) == files
    assert dm.splits["train"].labels == [-1] * len(files)
    assert dm.num_classes is None and dm.class_names == []
    _, labels, _ = next(iter(dm.train_dataloader()))
    assert (labels == -1).all()


def test_a_seeded_split_is_reproducible_disjoint_and_covering(tmp_path: Path):
    files = set(labelled_tree(tmp_path))
    for i in range(13):
        write_image(tmp_path / "dog" / f"more{i}.png", 100 + i)
        files.add(tmp_path / "dog" / f"more{i}.png")

    def split(seed: int) -> dict[str, list[Path]]:
        dm = make_dm(tmp_path, val_fraction=0.25, test_fraction=0.15, seed=seed)
        return {name: sources(dm, name) for name in ("train", "val", "test")}

    first, again, other = split(0), split(0), split(1)
    assert first == again
    assert first["val"] != other["val"]
    parts = [set(first[name]) for name in ("train", "val", "test")]
    assert sum(map(len, parts)) == len(files) == 20
    assert set.union(*parts) == files  # covering, and with the sizes adding up, disjoint
    assert (len(parts[1]), len(parts[2])) == (5, 3)  # round(20 * 0.25), round(20 * 0.15)


@pytest.mark.parametrize("images, fractions, empty", [
    (1, dict(val_fraction=0.9), "training"),  # 1 image: round(0.9) = 1 goes to val
    (3, dict(val_fraction=0.1), "val"),  # round(0.3) = 0 images for the val split asked for
    (4, dict(val_fraction=0.5, test_fraction=0.4), "training"),
])
def test_fractions_that_leave_a_split_empty_say_which(tmp_path: Path, images: int, fractions: dict, empty: str):
    for index in range(images):
        write_image(tmp_path / f"{index}.png", index)
    with pytest.raises(ValueError) as error:
        make_dm(tmp_path, labels="none", **fractions)
    message = str(error.value)
    assert f"of the {images} images under {tmp_path} leave the {empty} split empty" in message, message
    assert f"val_fraction={fractions['val_fraction']}" in message


def test_folder_link_loops_list_each_real_file_once_and_are_named(tmp_path: Path):
    """`loop -> .` and `sub/up -> ..` made the walk list the files again and again (exponentially
    with two loops) and put the same images in train and val."""
    root = tmp_path / "images"
    files = {write_image(root / f"{index}.png", index) for index in range(5)}
    files |= {write_image(root / "sub" / f"{index}.png", 10 + index) for index in range(2)}
    (root / "loop").symlink_to(".")
    (root / "sub" / "up").symlink_to("..")
    with pytest.warns(UserWarning, match=r"2 linked folder\(s\) lead back to folders already listed") as record:
        dm = make_dm(root, labels="none", val_fraction=0.3)
    assert any(str(root / "loop") in str(w.message) for w in record)
    train, val = sources(dm, "train"), sources(dm, "val")
    assert len(train) + len(val) == 7 and {path.resolve() for path in train + val} == files
    assert not {path.resolve() for path in train} & {path.resolve() for path in val}  # no leakage


def test_a_linked_folder_outside_the_root_is_followed(tmp_path: Path):
    outside = {write_image(tmp_path / "elsewhere" / f"{index}.png", index) for index in range(3)}
    write_image(tmp_path / "root" / "own.png", 9)
    (tmp_path / "root" / "more").symlink_to(tmp_path / "elsewhere")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one link to a folder is no loop
        dm = make_dm(tmp_path / "root", labels="none")
    assert {path.resolve() for path in sources(dm, "train")} == outside | {(tmp_path / "root" / "own.png")}


def test_val_and_test_roots_are_used_and_labelled_by_class_name(tmp_path: Path):
    train_files = labelled_tree(tmp_path / "train")
    val = {write_image(tmp_path / "val" / "dog" / "v1.png"): "dog",
           write_image(tmp_path / "val" / "dog" / "sub" / "v2.png"): "dog",
           write_image(tmp_path / "val" / "cat" / "v3.png"): "cat"}  # no apple: dog stays index 2
    test = {write_image(tmp_path / "test" / "apple" / "t1.png"): "apple"}
    dm = make_dm(tmp_path / "train", val_root=str(tmp_path / "val"), test_root=str(tmp_path / "test"))
    assert dm.class_names == ["apple", "cat", "dog"]
    assert set(sources(dm, "train")) == set(train_files)
    for split, files in (("val", val), ("test", test)):
        found = dict(zip(sources(dm, split), dm.splits[split].labels))
        assert found == {path: dm.class_names.index(name) for path, name in files.items()}
    assert dict(zip(sources(dm, "val"), dm.splits["val"].labels))[tmp_path / "val" / "dog" / "v1.png"] == 2


# --- pipelines and normalising on the device --------------------------------------------------------

def manual_normalise(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return (pixels.double() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


@pytest.mark.parametrize("recipe", [None, "pretrain", "linprobe", "finetune"])
@pytest.mark.parametrize("channels", [3, 1])
def test_each_recipe_batches_at_the_size_and_normalises_after_transfer(tmp_path: Path, recipe: str | None,
                                                                       channels: int):
    labelled_tree(tmp_path)
    dm = make_dm(tmp_path, augment=recipe, channels=channels, val_fraction=0.3, image_size=24)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((sum(IMAGENET_MEAN) / 3,),
                                                                      (sum(IMAGENET_STD) / 3,))
    assert (dm.mean, dm.std) == (mean, std)
    torch.manual_seed(0)
    for loader, dtype in ((dm.train_dataloader(), torch.float32 if recipe == "finetune" else torch.uint8),
                          (dm.val_dataloader(), torch.uint8)):  # evaluation is uint8 whatever the recipe
        batch = next(iter(loader))
        pixels, labels, skipped = batch
        assert pixels.dtype == dtype and pixels.shape[1:] == (channels, 24, 24)
        images, same_labels = dm.on_after_batch_transfer(batch, 0)
        assert images.dtype == torch.float32 and images.shape == pixels.shape
        assert same_labels is labels
        if dtype == torch.uint8:
            torch.testing.assert_close(images.double(), manual_normalise(pixels, mean, std), atol=1e-5, rtol=0)
        else:  # the PIL recipe normalised already (ToTensor + Normalize): left as it is
            assert torch.equal(images, pixels)
            assert images.min() < 0 and images.abs().max() < 8  # not 0-255 or 0-1


def test_the_train_loader_uses_the_sampler_lightning_replaces_for_ddp(tmp_path: Path):
    for i in range(10):
        write_image(tmp_path / f"{i}.png", i)
    dm = make_dm(tmp_path, labels="none", val_fraction=0.2)
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, EpochSampler)  # Lightning wraps it in a DistributedSamplerWrapper
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)
    train = dm.splits["train"]
    assert len(train) == 8
    shards = []
    for rank in (0, 1):
        wrapper = DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=True, seed=0)
        wrapper.set_epoch(1)
        shards.append({index for index, _ in wrapper})  # (index, augmentation seed) keys
    assert len(shards[0]) == len(shards[1]) == 4
    assert shards[0].isdisjoint(shards[1])
    assert shards[0] | shards[1] == set(range(len(train)))


def test_worker_processes_yield_what_the_main_process_does(tmp_path: Path):
    labelled_tree(tmp_path)
    in_main = make_dm(tmp_path, augment=None, val_fraction=0.5, batch_size=2)
    in_workers = make_dm(tmp_path, augment=None, val_fraction=0.5, batch_size=2, num_workers=2,
                         persistent_workers=True)
    loader = in_workers.val_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    want = list(in_main.val_dataloader())
    for _ in range(2):  # the second pass reuses the persistent workers
        got = list(loader)
        labels = [torch.cat([labels for _, labels, _ in batches]).tolist() for batches in (got, want)]
        assert Counter(labels[0]) == Counter(labels[1])
        assert all(torch.equal(g[0], w[0]) for g, w in zip(got, want))  # evaluation is deterministic, in order
    del loader  # shut the persistent workers down here: left to the cyclic GC, it took 10 s in a later test


# --- unreadable files ------------------------------------------------------------------------------

def tree_with_bad_files(root: Path, good: int = 3) -> tuple[list[Path], list[Path]]:
    """(good files, bad files) of an unlabelled folder; every bad file has an image suffix."""
    goods = [write_image(root / f"good{i}.png", i) for i in range(good)]
    bads = [write_unreadable(root / f"bad-{kind}.jpg", kind) for kind in UNREADABLE_KINDS]
    return goods, bads


def test_unreadable_files_are_dropped_warned_once_and_counted(tmp_path: Path):
    goods, bads = tree_with_bad_files(tmp_path)
    dm = make_dm(tmp_path, labels="none", batch_size=8)
    loader = dm.train_dataloader()
    with pytest.warns(UserWarning, match="skipping") as caught:
        batch = next(iter(loader))
    messages = [str(w.message) for w in caught if "skipping" in str(w.message)]
    assert len(messages) == len(bads)
    for bad in bads:
        assert sum(str(bad) in message for message in messages) == 1
    pixels, labels, skipped = batch
    assert pixels.shape == (len(goods), 3, SIZE, SIZE) and skipped == len(bads)
    images, _ = dm.on_after_batch_transfer(batch, 0)
    assert images.shape[0] == len(goods) and dm.skipped_files == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second epoch warns no more, but still counts
        batch = next(iter(loader))
    dm.on_after_batch_transfer(batch, 0)
    assert dm.skipped_files == 6


def test_collate_skipping_counts_the_dropped_samples():
    sample = (torch.zeros(3, 2, 2, dtype=torch.uint8), 4)
    pixels, labels, skipped = collate_skipping([sample, None, sample, None, None])
    assert pixels.shape == (2, 3, 2, 2) and labels.tolist() == [4, 4] and skipped == 3
    with pytest.raises(UnreadableImageError, match="all 2 images of the batch are unreadable"):
        collate_skipping([None, None])


@pytest.mark.parametrize("kind", UNREADABLE_KINDS)
def test_strict_stops_at_the_unreadable_file_naming_it(tmp_path: Path, kind: str):
    for i in range(3):
        write_image(tmp_path / f"good{i}.png", i)
    bad = write_unreadable(tmp_path / f"bad-{kind}.jpg", kind)
    dm = make_dm(tmp_path, labels="none", strict=True, batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # raising, not warning
        with pytest.raises(UnreadableImageError, match=str(bad)):
            next(iter(dm.train_dataloader()))


def test_a_batch_of_only_unreadable_files_is_a_clear_error(tmp_path: Path):
    write_unreadable(tmp_path / "a.jpg", "empty")
    write_unreadable(tmp_path / "b.png", "not-an-image")
    dm = make_dm(tmp_path, labels="none", augment=None)
    with pytest.warns(UserWarning, match="skipping"):
        with pytest.raises(UnreadableImageError, match="all 2 images of the batch are unreadable"):
            next(iter(dm.train_dataloader()))


def test_fit_logs_the_skipped_files(tmp_path: Path, make_trainer):
    _, bads = tree_with_bad_files(tmp_path / "data", good=5)
    dm = ImageFolderDataModule(str(tmp_path / "data"), labels="none", image_size=SIZE, batch_size=4,
                               num_workers=0, persistent_workers=False, seed=0)
    model = LitMAE(config=MAEConfig(**tiny_config_values(img_size=SIZE)), warmup_epochs=0)
    logger = CSVLogger(tmp_path / "logs", name="run")
    trainer = make_trainer(max_steps=2, logger=logger, log_every_n_steps=1)
    with pytest.warns(UserWarning, match="skipping") as caught:
        trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2  # 8 files, batches of 4: one epoch sees every file
    messages = " ".join(str(w.message) for w in caught)
    assert all(str(bad) in messages for bad in bads)
    assert dm.skipped_files == len(bads)
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    logged = [float(row["data/skipped_files"]) for row in rows if row.get("data/skipped_files")]
    assert logged and logged[-1] == len(bads)
    assert logged == sorted(logged)  # a running total


def test_num_workers_none_follows_the_cpus(tmp_path, monkeypatch):
    import lit_mae.datamodules.base as base

    labelled_tree(tmp_path)
    monkeypatch.setattr(base, "suggested_max_num_workers", lambda devices: 15 // devices)  # 16 CPUs
    data = ImageFolderDataModule(str(tmp_path), image_size=SIZE, augment=None, val_fraction=0.5, batch_size=2)
    data.setup("fit")
    assert data.num_workers is None and data.workers() == base.MAX_AUTO_WORKERS
    monkeypatch.setattr(base, "suggested_max_num_workers", lambda devices: 1)  # 2 CPUs: no oversubscription
    loader = data.train_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers
    assert make_dm(tmp_path, augment=None, num_workers=0).train_dataloader().num_workers == 0
