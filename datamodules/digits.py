"""The embedded default: the 1,797 real 8x8 handwritten digits bundled with scikit-learn."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_mae.datamodules.base import BaseImageDataModule, ImageSamples, check_fractions, plain_augment, split_indices
from lit_mae.datamodules.transforms import AugmentOption


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
    ) -> None:
        if image_size < 8:
            raise ValueError(f"DigitsDataModule.image_size must be at least 8, got {image_size}")
        if channels not in (1, 3):
            raise ValueError(f"DigitsDataModule.channels must be 1 or 3, got {channels}")
        check_fractions("DigitsDataModule", val_fraction, test_fraction)
        unknown = (0.0,) * channels, (1.0,) * channels  # the training split's, once `setup` has read it
        super().__init__(image_size, channels, batch_size, num_workers, pin_memory=True,
                         persistent_workers=num_workers > 0, augment=augment, mean=unknown[0], std=unknown[1],
                         crop_pct=1.0, strict=False)
        self.fractions, self.seed = (val_fraction, test_fraction), seed
        augment = plain_augment(self.augment)  # saved as plain data
        self.save_hyperparameters()  # reads the arguments from this frame's locals

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        pixels, labels = digits_pixels(self.image_size, self.channels)  # (N, C, S, S) uint8, (N,)
        train, val, test = split_indices(len(labels), self.fractions, self.seed, "DigitsDataModule", "digits")
        values = pixels[train].float() / 255
        self.mean, self.std = (values.mean().item(),) * self.channels, (values.std().item(),) * self.channels
        train_load, eval_load = self.train_pipeline(), self.eval_pipeline()  # PIL recipes normalise with them
        for split, indices in (("train", train), ("val", val), ("test", test)):
            load = train_load if split == "train" else eval_load
            self.splits[split] = ImageSamples(pixels[indices], labels[indices], load, self.strict)
