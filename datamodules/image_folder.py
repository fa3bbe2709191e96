"""Your own images: a class-per-folder tree (ImageNet layout) or an unlabelled folder, any nesting."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal, Sequence

from lit_mae.datamodules.arrays import ArrayLayout
from lit_mae.datamodules.base import (
    BaseImageDataModule,
    Depth,
    ImageSamples,
    Normalize,
    check_fractions,
    imagenet_statistics,  # noqa: F401 (moved to base; importable from here as before)
    initial_statistics,
    plain_augment,
    split_indices,
)
from lit_mae.datamodules.images import IMAGE_SUFFIXES
from lit_mae.datamodules.transforms import AugmentOption

LabelSource = Literal["folders", "none"]
SUFFIXES = IMAGE_SUFFIXES + (".npy",)  # .npy: arrays (C, H, W) or (H, W, C), see `array_layout`


def find_images(root: Path) -> list[Path]:
    """Every image file under `root`, recursively, in a stable sorted order, skipping hidden files
    and folders. Links to folders are followed, but each real folder is walked once (a link loop
    such as `loop -> .`, or a second link to a folder, is named in a warning and not walked
    again), so the walk takes time linear in the real files and lists each of their files once."""
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    loops: list[str] = []
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        here = os.stat(directory)
        if (here.st_dev, here.st_ino) in seen_dirs:  # reached again through a link: walked already
            loops.append(directory)
            subdirectories[:] = []
            continue
        seen_dirs.add((here.st_dev, here.st_ino))
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))  # no .thumbnails etc.
        found += [Path(directory, name) for name in sorted(files)
                  if name.lower().endswith(SUFFIXES) and not name.startswith(".")]  # nor macOS ._ files
    if loops:
        warnings.warn(f"{root}: {len(loops)} linked folder(s) lead back to folders already listed (a link loop or "
                      f"a second link to one folder), each listed once: {loops[:3]}", stacklevel=2)
    return found


def _existing_folder(root: str | Path, field: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"ImageFolderDataModule.{field}: folder {path} does not exist")
    return path


def class_folders(root: Path) -> list[str]:
    """The class names of a class-per-folder tree: its sub-folders that hold images, sorted."""
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    empty = [name for name in names if not find_images(root / name)]
    if empty:
        warnings.warn(f"{root}: class folders without images are not classes: {empty}", stacklevel=2)
    return [name for name in names if name not in empty]


def list_samples(root: Path, labels: LabelSource, classes: list[str] | None, field: str
                 ) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of a folder; `classes` fixes the names' order (val/test roots)."""
    if labels == "none":
        files = find_images(root)
        if not files:
            raise ValueError(f"ImageFolderDataModule.{field}: no images ({', '.join(SUFFIXES)}) under {root}")
        return files, [-1] * len(files), []
    names = class_folders(root)
    if not names:
        raise ValueError(f"ImageFolderDataModule.{field}: no class folders with images under {root} "
                         "(expected root/<class>/<image>; for an unlabelled folder set labels: none)")
    classes = classes or names
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ValueError(f"ImageFolderDataModule.{field}: class folders {unknown} under {root} are not "
                         f"classes of the training folder ({len(classes)} classes)")
    files, targets = [], []
    for name in names:
        found = find_images(root / name)
        files += found
        targets += [classes.index(name)] * len(found)
    return files, targets, classes


class ImageFolderDataModule(BaseImageDataModule):
    """Images from folders, as `(images, labels)` batches (labels -1 when unlabelled).

    `root` holds the training images: with `labels: folders` one sub-folder per class
    (root/<class>/**/<image>), with `labels: none` any tree of images (for pretraining). Val and
    test come from `val_root` / `test_root` when given, else from a split of `root` seeded by
    `seed` (`val_fraction`, `test_fraction`). Any image mode (grayscale, palette, RGBA, CMYK,
    16-bit, EXIF-rotated) is read as upright RGB, or L with `channels: 1`. Unreadable files, and
    files whose band count is not `channels`, are skipped with a warning and counted (`strict:
    true` stops instead).

    Beyond 8-bit RGB (docs/multiband.md): `channels` is any band count; multi-band TIFF, `.npy`
    arrays (band axis: `array_layout`) and 16-bit PNG/TIFF keep their depth. `depth: auto` reads
    8-bit 1- or 3-channel data as uint8 (unchanged) and anything else at full depth (decided from
    the first readable training file); "8bit" / "full" force it. `mean`/`std` per channel in the
    image's own unit (fractions of full scale for 8/16-bit files); when not given, `normalize:
    auto` computes them from a seeded sample of the training split in `setup` and stores them in
    the hyper-parameters (so checkpoints carry them); "imagenet" takes ImageNet's (their grey
    average for 1 channel); unset: ImageNet's for 8-bit 1- or 3-channel data, computed otherwise.

    `augment` is the training recipe (`pretrain`, `linprobe`, `finetune`, an Augment, or null);
    evaluation resizes to image_size / crop_pct and center-crops.
    """

    channel_counts = None  # any band count

    def __init__(self, root: str, labels: LabelSource = "folders", val_root: str | None = None,
                 test_root: str | None = None, val_fraction: float = 0.0, test_fraction: float = 0.0,
                 seed: int = 0, image_size: int = 224, channels: int = 3, augment: AugmentOption = "pretrain",
                 batch_size: int = 64, num_workers: int | None = None, pin_memory: bool = True,
                 persistent_workers: bool = True, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, crop_pct: float = 0.875, strict: bool = False,
                 normalize: Normalize | None = None, depth: Depth = "auto", array_layout: ArrayLayout = "auto") -> None:
        self.statistics_given = mean is not None
        mean, std = initial_statistics("ImageFolderDataModule", channels, mean, std, normalize)
        super().__init__(image_size, channels, batch_size, num_workers, pin_memory, persistent_workers,
                         augment, mean, std, crop_pct, strict, depth, array_layout)
        self.normalize_by = normalize  # (not `normalise`, the method that normalises a batch)
        if labels not in ("folders", "none"):
            raise ValueError(f"ImageFolderDataModule.labels must be 'folders' or 'none', got {labels!r}")
        check_fractions("ImageFolderDataModule", val_fraction, test_fraction)
        for folder, fraction, split in ((val_root, val_fraction, "val"), (test_root, test_fraction, "test")):
            if folder is not None and fraction > 0:
                raise ValueError(f"ImageFolderDataModule: give {split}_root ({folder}) or {split}_fraction "
                                 f"({fraction}), not both (the fraction would be taken from training unused)")
        self.root, self.labels, self.val_root, self.test_root = root, labels, val_root, test_root
        self.fractions, self.seed = (val_fraction, test_fraction), seed
        augment = plain_augment(self.augment)  # saved as plain data
        self.save_hyperparameters()  # reads the arguments from this frame's locals

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        files, targets, classes = list_samples(_existing_folder(self.root, "root"), self.labels, None, "root")
        self.class_names = classes
        self.num_classes = len(classes) if classes else None
        train, val, test = split_indices(len(files), self.fractions, self.seed, "ImageFolderDataModule",
                                           f"images under {self.root}")
        parts = {"train": train.tolist(), "val": val.tolist(), "test": test.tolist()}
        samples = {name: ([files[i] for i in idx], [targets[i] for i in idx]) for name, idx in parts.items()}
        for split, root in (("val", self.val_root), ("test", self.test_root)):
            if root is not None:
                folder = _existing_folder(root, f"{split}_root")
                found, found_targets, _ = list_samples(folder, self.labels, classes, f"{split}_root")
                samples[split] = (found, found_targets)
        self._resolve_depth(samples["train"][0])
        self._resolve_statistics(samples["train"][0], self.statistics_given, self.normalize_by, self.root)
        train_load, eval_load = self.train_pipeline(), self.eval_pipeline()
        for split, (split_files, split_targets) in samples.items():
            if split_files:
                load = train_load if split == "train" else eval_load
                self.splits[split] = ImageSamples(split_files, split_targets, load, self.strict)
