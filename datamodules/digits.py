"""The embedded default: the 1,797 real 8x8 handwritten digits bundled with scikit-learn; with
`digit_size` below `image_size`, the translated-digits task (each digit somewhere on a black canvas)."""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_mae.datamodules.base import BaseImageDataModule, ImageSamples, check_fractions, plain_augment, split_indices
from lit_mae.datamodules.sampling import derive_seed
from lit_mae.datamodules.transforms import AugmentOption

Placement = Literal["centre", "random"]


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """(1797, 1, 8, 8) float images in [0, 1] and (1797,) labels, from scikit-learn's bundled copy."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # values are 0..16
    return images, torch.from_numpy(digits.target).long()


def digits_pixels(image_size: int, channels: int) -> tuple[Tensor, Tensor]:
    """uint8 (1797, C, S, S) digits, bicubically upsampled from 8x8 (grey repeated to C channels),
    and their (1797,) labels."""
    images, labels = load_digits_tensors()
    images = F.interpolate(images, size=image_size, mode="bicubic", align_corners=False).clamp(0, 1)
    pixels = (images * 255).round().to(torch.uint8)  # (N, 1, S, S)
    return pixels.expand(-1, channels, -1, -1).contiguous(), labels


def place(digits: Tensor, canvas: int, offsets: Tensor) -> Tensor:
    """uint8 (N, C, d, d) digits on black (N, C, canvas, canvas) canvases, digit n's top-left
    corner at `offsets[n]` = (row, column)."""
    N, C, d, _ = digits.shape
    placed = torch.zeros(N, C, canvas, canvas, dtype=digits.dtype)
    for n, (top, left) in enumerate(offsets.tolist()):
        placed[n, :, top:top + d, left:left + d] = digits[n]
    return placed


def fixed_offsets(count: int, free: int, seed: int, split: str) -> Tensor:
    """(count, 2) offsets in [0, free], one per sample of `split`, the same in every epoch and run."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "placement", split))
    return torch.randint(0, free + 1, (count, 2), generator=generator)


class RandomPlacement:
    """Put a uint8 (C, d, d) digit at a random place of a (C, canvas, canvas) canvas, then `load`.
    The place comes from torch's global RNG, which the training loader seeds per sample from
    (seed, epoch, index) (`SeededSamples`): a new place each epoch, the same in a rerun or a resume."""

    def __init__(self, canvas: int, load: Callable[[Tensor], Tensor]) -> None:
        self.canvas, self.load = canvas, load

    def __call__(self, digit: Tensor) -> Tensor:
        free = self.canvas - digit.shape[-1]
        offset = torch.randint(0, free + 1, (1, 2))
        return self.load(place(digit.unsqueeze(0), self.canvas, offset)[0])


class DigitsDataModule(BaseImageDataModule):
    """scikit-learn's handwritten digits, upsampled, as `Batch(images, labels)`; 10 classes.

    Images are bicubically upsampled from 8x8 to `image_size`, kept as uint8 and repeated to
    `channels`; like every `BaseImageDataModule`, batches are normalised on the device, here with
    the training split's mean and std (`self.mean`, `self.std`, set by `setup`). The split is
    fixed by `seed`: 80% train, 10% val, 10% test by default; `seed` and the epoch also fix the
    training order (and augmentation). Nothing is downloaded.

    `augment` (a recipe name of `lit_mae.datamodules.transforms`, an `Augment`, or null) turns on
    training augmentation. Val and test images are never augmented (and not cropped: the digit
    fills the frame).

    Translated digits: `digit_size` smaller than `image_size` upsamples each digit to
    `digit_size` and puts it on a black `image_size` canvas. `placement: random` puts every
    training digit at a new place each epoch, drawn from (seed, epoch, index), and each val/test
    digit at a fixed place drawn from (seed, split, index); `placement: centre` centres them all.
    The mean and std are those of the training digits on their canvases.
    """

    num_classes = 10
    class_names = [str(d) for d in range(10)]

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        augment: AugmentOption = None,
        digit_size: int | None = None,
        placement: Placement = "centre",
    ) -> None:
        if image_size < 8:
            raise ValueError(f"DigitsDataModule.image_size must be at least 8, got {image_size}")
        if digit_size is not None and not (isinstance(digit_size, int) and 8 <= digit_size <= image_size):
            raise ValueError(f"DigitsDataModule.digit_size must be an integer from 8 to image_size ({image_size}), "
                             f"got {digit_size!r}")
        if placement not in ("centre", "random"):
            raise ValueError(f"DigitsDataModule.placement must be 'centre' or 'random', got {placement!r}")
        if channels not in (1, 3):
            raise ValueError(f"DigitsDataModule.channels must be 1 or 3, got {channels}")
        check_fractions("DigitsDataModule", val_fraction, test_fraction)
        unknown = (0.0,) * channels, (1.0,) * channels  # the training split's, once `setup` has read it
        super().__init__(image_size, channels, batch_size, num_workers, pin_memory=True,
                         persistent_workers=num_workers > 0, augment=augment, mean=unknown[0], std=unknown[1],
                         crop_pct=1.0, strict=False)
        self.fractions, self.seed = (val_fraction, test_fraction), seed
        self.digit_size, self.placement = digit_size or image_size, placement
        augment = plain_augment(self.augment)  # saved as plain data
        self.save_hyperparameters()  # reads the arguments from this frame's locals

    def draws_per_sample(self) -> bool:
        return super().draws_per_sample() or self._moves()

    def _moves(self) -> bool:
        return self.placement == "random" and self.digit_size < self.image_size

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        S, d = self.image_size, self.digit_size
        digits, labels = digits_pixels(d, self.channels)  # (N, C, d, d) uint8, (N,)
        train, val, test = split_indices(len(labels), self.fractions, self.seed, "DigitsDataModule", "digits")
        centred = torch.full((len(labels), 2), (S - d) // 2)
        values = place(digits[train], S, centred[train]).float() / 255  # statistics do not depend on the place
        self.mean, self.std = (values.mean().item(),) * self.channels, (values.std().item(),) * self.channels
        train_load, eval_load = self.train_pipeline(), self.eval_pipeline()  # PIL recipes normalise with them
        for split, indices in (("train", train), ("val", val), ("test", test)):
            if split == "train" and self._moves():
                sources, load = digits[indices], RandomPlacement(S, train_load)
            else:
                moved = self.placement == "random" and split != "train"
                offsets = fixed_offsets(len(indices), S - d, self.seed, split) if moved else centred[indices]
                sources, load = place(digits[indices], S, offsets), train_load if split == "train" else eval_load
            self.splits[split] = ImageSamples(sources, labels[indices], load, self.strict)
