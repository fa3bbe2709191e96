"""CIFAR-10 and CIFAR-100 from a local folder (torchvision's python-version archives), kept in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torchvision.datasets import CIFAR10, CIFAR100

from lit_mae.datamodules.base import (
    BaseImageDataModule,
    ImageSamples,
    check_fractions,
    plain_augment,
    split_indices,
)
from lit_mae.datamodules.transforms import AugmentOption

# per-channel statistics of the 50,000 training images (all pixels), as usually quoted
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's convert("L")


def luma(pixels: Tensor) -> Tensor:
    """uint8 RGB (N, 3, H, W) -> uint8 grey (N, 1, H, W), bit for bit Pillow's `convert("L")`
    (ITU-R 601 weights in 16-bit fixed point), the conversion ImageFolderDataModule's files get."""
    red, green, blue = pixels.int().unbind(1)  # (N, H, W) each
    grey = (red * 19595 + green * 38470 + blue * 7471 + 0x8000) >> 16
    return grey.to(torch.uint8).unsqueeze(1)


def channels_first(images: Tensor, channels: int) -> Tensor:
    """uint8 (N, H, W, 3) as torchvision stores CIFAR -> contiguous uint8 (N, C, H, W)."""
    rgb = images.permute(0, 3, 1, 2)  # (N, 3, H, W), a view
    if channels == 3:
        return rgb.contiguous()
    return torch.cat([luma(part) for part in rgb.split(4096)])  # in parts: int32 copies stay small


class CIFAR10DataModule(BaseImageDataModule):
    """CIFAR-10 as `(images, labels)` batches: 10 classes of 32x32 colour images.

    `root` is the folder that holds (or, with `download: true`, will hold) torchvision's
    `cifar-10-batches-py` / `cifar-100-python` folder. Nothing is fetched unless `download` is
    true, and then only in `prepare_data` (rank 0). Train and val are a split of the 50,000
    training images seeded by `seed` (`val_fraction` of them for val; 0 gives no val loader);
    test is the official 10,000-image test set. All images stay in memory as uint8 (N, C, 32, 32).

    `augment` is the training recipe (`pretrain`, `linprobe`, `finetune`, an Augment, or null);
    evaluation resizes to image_size / crop_pct and center-crops (the images as they are with
    the defaults). `mean`/`std` default (null) to the dataset's own. `channels: 1` converts to
    grey with the ITU-R 601 luma weights (as Pillow's `convert("L")`); the default mean/std then
    become the luma-weighted sums of the RGB ones (the mean exactly; for the std an upper bound,
    close because the channels are strongly correlated).
    """

    dataset_class: type[CIFAR10] = CIFAR10
    num_classes = 10
    rgb_mean, rgb_std = CIFAR10_MEAN, CIFAR10_STD

    def __init__(self, root: str, download: bool = False, val_fraction: float = 0.1, seed: int = 0,
                 image_size: int = 32, channels: int = 3, augment: AugmentOption = "pretrain",
                 batch_size: int = 256, num_workers: int | None = None, pin_memory: bool = True,
                 persistent_workers: bool = True, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, crop_pct: float = 1.0, strict: bool = False) -> None:
        if mean is None or std is None:
            weights = LUMA_WEIGHTS if channels == 1 else None
            mean = mean or self._statistic(self.rgb_mean, weights)
            std = std or self._statistic(self.rgb_std, weights)
        super().__init__(image_size, channels, batch_size, num_workers, pin_memory, persistent_workers,
                         augment, mean, std, crop_pct, strict)
        check_fractions(type(self).__name__, val_fraction, 0.0)
        self.root, self.download, self.val_fraction, self.seed = root, download, val_fraction, seed
        augment = plain_augment(self.augment)  # saved as plain data
        self.save_hyperparameters()  # reads the arguments from this frame's locals

    @staticmethod
    def _statistic(rgb: tuple[float, ...], luma_weights: tuple[float, ...] | None) -> tuple[float, ...]:
        return rgb if luma_weights is None else (sum(w * v for w, v in zip(luma_weights, rgb)),)

    def prepare_data(self) -> None:
        if self.download:  # fetches and unpacks the whole archive (train and test); a no-op when present
            self.dataset_class(str(Path(self.root).expanduser()), train=False, download=True)

    def _read(self, train: bool) -> CIFAR10:
        root = Path(self.root).expanduser()
        try:
            return self.dataset_class(str(root), train=train, download=False)
        except RuntimeError as error:  # torchvision: "Dataset not found or corrupted ..."
            name, folder = type(self).__name__, root / self.dataset_class.base_folder
            found = "is incomplete or corrupted" if folder.is_dir() else "does not exist"
            raise FileNotFoundError(
                f"{name}: no {self.dataset_class.__name__} data under root {root}: the folder {folder} {found} "
                f"(torchvision: {error}). Fetch it with `--data.init_args.download true` (download=True "
                f"in Python), or place the python-version archive {self.dataset_class.filename} "
                f"({self.dataset_class.url}) in {root} and extract it there.") from error

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train_set, test_set = self._read(train=True), self._read(train=False)
        self.class_names = list(train_set.classes)
        pixels = channels_first(torch.from_numpy(train_set.data), self.channels)  # (50000, C, 32, 32)
        labels = torch.tensor(train_set.targets)
        train, val, _ = split_indices(len(labels), (self.val_fraction, 0.0), self.seed, type(self).__name__,
                                      "training images")
        train_load, eval_load = self.train_pipeline(), self.eval_pipeline()
        self.splits["train"] = ImageSamples(pixels[train], labels[train], train_load, self.strict)
        if len(val):
            self.splits["val"] = ImageSamples(pixels[val], labels[val], eval_load, self.strict)
        test_pixels = channels_first(torch.from_numpy(test_set.data), self.channels)  # (10000, C, 32, 32)
        self.splits["test"] = ImageSamples(test_pixels, torch.tensor(test_set.targets), eval_load, self.strict)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 as `(images, labels)` batches: 100 (fine) classes of 32x32 colour images.

    The arguments are CIFAR10DataModule's; the mean and std default to CIFAR-100's.
    """

    dataset_class, num_classes = CIFAR100, 100
    rgb_mean, rgb_std = CIFAR100_MEAN, CIFAR100_STD
