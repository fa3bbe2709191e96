"""LightningDataModules and transforms (installed as `lit_mae.datamodules`)."""

from lit_mae.datamodules.digits import DigitsDataModule

__all__ = ["DigitsDataModule"]
