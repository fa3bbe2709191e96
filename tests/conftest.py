"""Shared fixtures: a tiny architecture, a quiet CPU Trainer and a user-style image DataModule."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset

from lit_mae import MAEConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


def tiny_config_values(**overrides: Any) -> dict[str, Any]:
    """A model small enough to train a few steps in well under a second on CPU."""
    values = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=1, num_heads=2,
                  decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    return {**values, **overrides}


@pytest.fixture
def tiny_config() -> MAEConfig:
    return MAEConfig(**tiny_config_values())


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine their
    spinning made 16-step fits take 2-11 s instead of 0.1 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_trainer(tmp_path: Path, one_thread) -> Callable[..., Trainer]:
    """A CPU Trainer with no logger, checkpoints or progress bar, rooted in `tmp_path`."""

    def make(**kwargs: Any) -> Trainer:
        settings = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path)
        settings.update(kwargs)
        return Trainer(**settings)

    return make


class ImageDataset(Dataset):
    """`n` fixed random images, yielded as a plain tensor, an (image, label) pair or a dict."""

    def __init__(self, n: int, size: int, channels: int, kind: str, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, channels, size, size, generator=generator)  # (N, C, S, S)
        self.labels = torch.arange(n) % 10
        self.kind = kind

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> object:
        if self.kind == "tensor":
            return self.images[i]
        if self.kind == "tuple":
            return self.images[i], self.labels[i]
        if self.kind == "dict":
            return {"images": self.images[i], "labels": self.labels[i]}
        raise ValueError(self.kind)


class ImageDataModule(LightningDataModule):
    """What a user might write: no shuffling (runs are comparable), no labels unless asked for."""

    def __init__(self, n: int = 32, size: int = 16, channels: int = 3, batch_size: int = 4,
                 kind: str = "tensor", dataset: Dataset | None = None) -> None:
        super().__init__()
        self.dataset = dataset if dataset is not None else ImageDataset(n, size, channels, kind)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)


QUIET = (  # Lightning's hints that are noise for these tiny runs
    "ignore:.*does not have many workers.*",
    "ignore:.*log_every_n_steps.*",
    "ignore:.*treespec, LeafSpec.*",  # Lightning 2.6 vs torch 2.14
    "ignore:.*Skipping val loop.*",
    "ignore:.*callbacks used to create the checkpoint.*",
    "ignore::DeprecationWarning:lightning.pytorch.cli",  # jsonargparse's, about Lightning's own calls
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for spec in QUIET:
            item.add_marker(pytest.mark.filterwarnings(spec))
