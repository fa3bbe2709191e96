"""The embedded default: the 1,797 real 8x8 handwritten digits bundled with scikit-learn."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lit_mae.datamodules.base import check_fractions, plain_augment, split_indices
from lit_mae.datamodules.sampling import ResumableTrainData, train_loader
from lit_mae.datamodules.transforms import AugmentOption, ImageTransform, resolve_augment, train_transform


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """(1797, 1, 8, 8) float images in [0, 1] and (1797,) labels, from scikit-learn's bundled copy."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # values are 0..16
    return images, torch.from_numpy(digits.target).long()


class AugmentedImages(Dataset):
    """uint8 (N, H, W) grayscale images and labels, each sample augmented on the fly as a PIL image."""

    def __init__(self, images: Tensor, labels: Tensor, transform: ImageTransform, channels: int) -> None:
        self.images, self.labels = images.numpy(), labels
        self.transform, self.pil_mode = transform, "RGB" if channels == 3 else "L"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = Image.fromarray(self.images[index]).convert(self.pil_mode)  # from (S, S) uint8, mode "L"
        return self.transform(image), self.labels[index]


class DigitsDataModule(ResumableTrainData, LightningDataModule):
    """scikit-learn's handwritten digits, upsampled, as `(images, labels)` batches; 10 classes.

    Images are bicubically upsampled from 8x8 to `image_size`, repeated to `channels` and
    normalised with the training split's mean and std (`self.mean`, `self.std`). The split is
    fixed by `seed`: 80% train, 10% val, 10% test by default; `seed` and the epoch also fix the
    training order (and augmentation). Nothing is downloaded.

    `augment` (a recipe name of `lit_mae.datamodules.transforms`, an `Augment`, or null) turns on
    training augmentation: the training images are then kept as uint8 and transformed one by one
    (as PIL images). Val and test images are never augmented (and not cropped: the digit fills
    the frame).
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
        super().__init__()
        if image_size < 8:
            raise ValueError(f"DigitsDataModule.image_size must be at least 8, got {image_size}")
        if channels not in (1, 3):
            raise ValueError(f"DigitsDataModule.channels must be 1 or 3, got {channels}")
        check_fractions("DigitsDataModule", val_fraction, test_fraction)
        self.augment = resolve_augment(augment)
        augment = plain_augment(self.augment)  # saved as plain data
        self.save_hyperparameters()  # reads the arguments from this frame's locals
        self.image_size, self.channels, self.batch_size = image_size, channels, batch_size
        self.num_workers, self.seed = num_workers, seed
        self.fractions = (val_fraction, test_fraction)
        self.mean: tuple[float, ...] = ()
        self.std: tuple[float, ...] = ()
        self.splits: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, labels = load_digits_tensors()
        images = F.interpolate(images, size=self.image_size, mode="bicubic", align_corners=False)
        images = images.clamp(0, 1).expand(-1, self.channels, -1, -1)  # (N, C, S, S)
        train, val, test = split_indices(len(images), self.fractions, self.seed)
        mean, std = images[train].mean(), images[train].std()
        self.mean, self.std = (mean.item(),) * self.channels, (std.item(),) * self.channels
        normalised = ((images - mean) / std).contiguous()
        self.splits = {name: TensorDataset(normalised[idx], labels[idx])
                       for name, idx in (("train", train), ("val", val), ("test", test))}
        if self.augment is not None:
            pixels = (images[train, 0] * 255).round().to(torch.uint8)  # (N, S, S)
            transform = train_transform(self.augment, self.image_size, self.mean, self.std)
            self.splits["train"] = AugmentedImages(pixels, labels[train], transform, self.channels)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        settings = dict(num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
        if shuffle:  # order and augmentation from (seed, epoch, index); resumes mid-epoch
            return train_loader(self.splits[split], self.batch_size, self.seed, random_samples=self.augment is not None,
                                resume_from=self.resume_position(), **settings)
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=False, **settings)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
