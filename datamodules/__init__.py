"""LightningDataModules and transforms (installed as `lit_mae.datamodules`)."""

from lit_mae.datamodules.base import BaseImageDataModule
from lit_mae.datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule
from lit_mae.datamodules.digits import DigitsDataModule
from lit_mae.datamodules.image_folder import ImageFolderDataModule
from lit_mae.datamodules.streaming import StreamingDataModule
from lit_mae.datamodules.synthetic import SyntheticDataModule
from lit_mae.datamodules.transforms import RECIPES, Augment

__all__ = ["Augment", "BaseImageDataModule", "DigitsDataModule", "ImageFolderDataModule", "RECIPES"]
__all__ += ["CIFAR10DataModule", "CIFAR100DataModule", "StreamingDataModule", "SyntheticDataModule"]
