"""The embedded default: the 1,797 real 8x8 handwritten digits bundled with scikit-learn."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """(1797, 1, 8, 8) float images in [0, 1] and (1797,) labels, from scikit-learn's bundled copy."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # values are 0..16
    return images, torch.from_numpy(digits.target).long()


def split_indices(n: int, fractions: tuple[float, float], seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded permutation of range(n) cut into (train, val, test) by the val and test fractions."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val, n_test = round(n * fractions[0]), round(n * fractions[1])
    return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


class DigitsDataModule(LightningDataModule):
    """scikit-learn's handwritten digits, upsampled, as `(images, labels)` batches; 10 classes.

    Images are bicubically upsampled from 8x8 to `image_size`, repeated to `channels` and
    normalised with the training split's mean and std (`self.mean`, `self.std`). The split is
    fixed by `seed`: 80% train, 10% val, 10% test by default. Nothing is downloaded.
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
    ) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"DigitsDataModule.image_size must be at least 8, got {image_size}")
        if channels not in (1, 3):
            raise ValueError(f"DigitsDataModule.channels must be 1 or 3, got {channels}")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"DigitsDataModule: val_fraction={val_fraction} and test_fraction={test_fraction} "
                "must be in [0, 1) and leave some training data"
            )
        self.save_hyperparameters()
        self.image_size, self.channels, self.batch_size = image_size, channels, batch_size
        self.num_workers, self.seed = num_workers, seed
        self.fractions = (val_fraction, test_fraction)
        self.mean: tuple[float, ...] = ()
        self.std: tuple[float, ...] = ()
        self.splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, labels = load_digits_tensors()
        images = F.interpolate(images, size=self.image_size, mode="bicubic", align_corners=False)
        images = images.clamp(0, 1).expand(-1, self.channels, -1, -1)  # (N, C, S, S)
        train, val, test = split_indices(len(images), self.fractions, self.seed)
        mean, std = images[train].mean(), images[train].std()
        self.mean, self.std = (mean.item(),) * self.channels, (std.item(),) * self.channels
        images = ((images - mean) / std).contiguous()
        self.splits = {name: TensorDataset(images[idx], labels[idx])
                       for name, idx in (("train", train), ("val", val), ("test", test))}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
