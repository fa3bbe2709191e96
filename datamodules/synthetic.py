"""Made-up images for tests and benchmarks: any size and count, nothing stored, nothing downloaded."""

from __future__ import annotations

import colorsys
from typing import Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from lit_mae.datamodules.base import BaseImageDataModule, ImageSamples, plain_augment
from lit_mae.datamodules.transforms import AugmentOption

SyntheticKind = Literal["random", "shapes"]
SPLITS = ("train", "val", "test")
SHAPES = ("square", "disc", "hstripes", "vstripes")  # class c draws SHAPES[c % 4] in its own colour
SYNTHETIC_MEAN, SYNTHETIC_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def class_colour(label: int, num_classes: int, channels: int) -> np.ndarray:
    """(C,) values in [0, 1]: one hue per class around the circle, or one grey level (channels 1)."""
    if channels == 1:
        return np.array([0.35 + 0.65 * (label + 1) / num_classes])
    return np.array(colorsys.hsv_to_rgb(label / num_classes, 0.8, 0.9))


def draw_shape(rng: np.random.Generator, label: int, num_classes: int, size: int, channels: int) -> np.ndarray:
    """float (C, S, S) about [0, 1]: the class's shape in its colour, at a random place and size, on a
    darker shade of that colour, plus pixel noise."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centres in (0, 1)
    y, x = centres[:, None], centres[None, :]  # (S, 1), (1, S): masks broadcast to (S, S)
    cy, cx = rng.uniform(0.35, 0.65, size=2)
    half = rng.uniform(0.15, 0.3)  # half the side (square, stripes) or the radius (disc)
    shape = SHAPES[label % len(SHAPES)]
    if shape == "disc":
        inside = (y - cy) ** 2 + (x - cx) ** 2 < half ** 2
    else:
        inside = (abs(y - cy) < half) & (abs(x - cx) < half)
    if shape.endswith("stripes"):
        across = y if shape == "hstripes" else x  # horizontal stripes alternate down the image
        inside &= ((across - cy) / rng.uniform(0.08, 0.15)) % 1 < 0.5
    colour = class_colour(label, num_classes, channels) + rng.normal(0, 0.03, channels)  # (C,)
    colour = colour.astype(np.float32)
    background = colour * np.float32(rng.uniform(0.2, 0.4))
    image = np.where(inside, colour[:, None, None], background[:, None, None])  # (C, S, S)
    return image + 0.05 * rng.standard_normal(image.shape, dtype=np.float32)


class SyntheticImages:
    """One split's images as a lazy sequence: uint8 (C, S, S) image i and its label are made on
    access from (seed, split, i) alone, so any worker, process or instance gets the same ones."""

    def __init__(self, count: int, size: int, channels: int, num_classes: int, kind: SyntheticKind,
                 seed: int, split: str) -> None:
        self.count, self.size, self.channels, self.num_classes = count, size, channels, num_classes
        self.kind, self.seed, self.split_id = kind, seed, SPLITS.index(split)

    def __len__(self) -> int:
        return self.count

    def _rng(self, index: int) -> tuple[np.random.Generator, int]:
        """The generator of image `index` and its label, the generator's first draw."""
        if not -self.count <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} images")
        rng = np.random.default_rng([self.seed, self.split_id, index % self.count])
        return rng, int(rng.integers(self.num_classes))

    def label(self, index: int) -> int:
        return self._rng(index)[1]

    def __getitem__(self, index: int) -> Tensor:
        rng, label = self._rng(index)
        if self.kind == "random":
            pixels = rng.integers(0, 256, (self.channels, self.size, self.size), dtype=np.uint8)
        else:
            image = draw_shape(rng, label, self.num_classes, self.size, self.channels)
            pixels = (image.clip(0, 1) * 255).round().astype(np.uint8)
        return torch.from_numpy(pixels)  # uint8 (C, S, S)


class SyntheticLabels:
    """The labels of `SyntheticImages`, as a sequence (what `ImageSamples` reads)."""

    def __init__(self, images: SyntheticImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> int:
        return self.images.label(index)


class SyntheticDataModule(BaseImageDataModule):
    """Generated `(images, labels)` batches of any size and count, for tests and benchmarks.

    Image i of a split is made when it is read, from (seed, split, i) only: nothing is stored
    and every reader sees the same data. `kind: random` is uniform noise (labels carry no
    signal); `kind: shapes` draws class c as a filled square, disc, or horizontal or vertical
    stripes (c % 4) in the class's own hue (a grey level with `channels: 1`) at a jittered place
    and size, on a darker shade with pixel noise, so that the labels can be learned: from the
    colour alone with few classes, from colour and shape together with many (neighbouring hues
    get close), harder in grey. Labels are balanced in
    expectation (drawn uniformly per image). `augment` (a recipe name, an Augment, or null)
    applies to training images; val and test images come as made. The default mean/std
    (0.5, 0.25 per channel) roughly centre the pixel values.
    """

    def __init__(self, num_samples: int = 256, val_samples: int = 64, test_samples: int = 64,
                 image_size: int = 32, channels: int = 3, num_classes: int = 10, kind: SyntheticKind = "shapes",
                 seed: int = 0, augment: AugmentOption = None, batch_size: int = 32, num_workers: int = 0,
                 pin_memory: bool = False, persistent_workers: bool = False,
                 mean: Sequence[float] = SYNTHETIC_MEAN, std: Sequence[float] = SYNTHETIC_STD,
                 strict: bool = False) -> None:
        if channels == 1 and tuple(mean) == SYNTHETIC_MEAN and tuple(std) == SYNTHETIC_STD:
            mean, std = mean[:1], std[:1]
        super().__init__(image_size, channels, batch_size, num_workers, pin_memory, persistent_workers,
                         augment, mean, std, 1.0, strict)
        if num_samples < 1 or val_samples < 0 or test_samples < 0 or num_classes < 1 or seed < 0:
            raise ValueError(f"SyntheticDataModule: num_samples={num_samples} (at least 1), val_samples="
                             f"{val_samples}, test_samples={test_samples}, num_classes={num_classes} (at "
                             f"least 1) and seed={seed} must not be negative")
        if kind not in ("random", "shapes"):
            raise ValueError(f"SyntheticDataModule.kind must be 'random' or 'shapes', got {kind!r}")
        self.counts = dict(zip(SPLITS, (num_samples, val_samples, test_samples)))
        self.num_classes, self.kind, self.seed = num_classes, kind, seed
        self.class_names = ([f"{SHAPES[c % len(SHAPES)]}-{c // len(SHAPES)}" for c in range(num_classes)]
                            if kind == "shapes" else [str(c) for c in range(num_classes)])
        augment = plain_augment(self.augment)  # saved as plain data
        self.save_hyperparameters()  # reads the arguments from this frame's locals

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train_load, eval_load = self.train_pipeline(), self.eval_pipeline()
        for split, count in self.counts.items():
            if count:
                images = SyntheticImages(count, self.image_size, self.channels, self.num_classes, self.kind,
                                         self.seed, split)
                load = train_load if split == "train" else eval_load
                self.splits[split] = ImageSamples(images, SyntheticLabels(images), load, self.strict)
