"""The linear probe's speed path: encode a dataset once, then train the head on the stored features.

With a frozen encoder and no augmentation every epoch sees the same features, so computing them
once gives the same numbers as encoding every batch of every epoch. `CachedFeatures` wraps an
image DataModule: its training and validation loaders serve `FeatureBatch`es, made once per fit
by the module's `encode` (`LitLinearProbe.encode`). The cached loaders keep the originals' class,
sampler, batch size, generator and drop_last, so they draw the same batch order (and resume
mid-epoch where the originals would). Test and predict loaders are the wrapped DataModule's own.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, NamedTuple

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from lit_mae.datamodules.batch import read_batch


class FeatureBatch(NamedTuple):
    features: Tensor  # (B, D) float32: the frozen encoder's pre-logit features
    labels: Tensor  # (B,)


def collate_features(samples: list[tuple[Tensor, Tensor]]) -> FeatureBatch:
    return FeatureBatch(*default_collate(samples))


@torch.no_grad()
def encode_dataset(loader: DataLoader, encode: Callable[[Tensor], Tensor],
                   to_device: Callable[[Any], Any] = lambda batch: batch,
                   context: Callable[[], ContextManager] = contextlib.nullcontext, *,
                   dataset: Dataset | None = None, to_cpu: bool = True) -> tuple[Tensor, Tensor | None] | None:
    """(N, D) float32 features and (N,) labels of `dataset` (default `loader.dataset`), in dataset
    order; the labels are None when the batches carry none, and the whole is None without batches.

    Iterates a copy of `loader` without shuffling and with its own generator, so the global RNG
    (which draws the training order) is left as it was. `to_device` moves a batch as the Trainer
    does (with the DataModule's transfer hooks, e.g. normalising uint8 images). Both are on the CPU,
    or with `to_cpu=False` where `to_device` put the batches.
    """
    ordered = DataLoader(loader.dataset if dataset is None else dataset, batch_size=loader.batch_size or 1,
                         shuffle=False, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                         pin_memory=loader.pin_memory, generator=torch.Generator())
    features: list[Tensor] = []
    labels: list[Tensor] | None = []
    for batch in ordered:
        batch = read_batch(to_device(batch))
        with context():
            batch_features = encode(batch.images).float()  # (B, D)
        features.append(batch_features.cpu() if to_cpu else batch_features)
        if batch.labels is None:
            labels = None
        elif labels is not None:
            labels.append(batch.labels.cpu() if to_cpu else batch.labels)
    if not features:
        return None
    return torch.cat(features), None if labels is None else torch.cat(labels)


def loader_like(loader: DataLoader, features: Tensor, labels: Tensor) -> DataLoader:
    """A DataLoader of `loader`'s class over `FeatureBatch`es that batches and shuffles like it.

    The features are in dataset order, so `loader`'s own sampler (and batch sampler) draws the
    same indices: the same order every epoch, and a resumable loader stays resumable."""
    dataset = TensorDataset(features, labels)
    # a loader that resumes mid-epoch (lit_mae.datamodules.sampling.ResumableDataLoader) takes its position
    # as an argument, so that Lightning keeps it when it re-creates the loader for DDP
    position = {"resume_from": loader.state_dict()} if hasattr(loader, "resume_from") else {}
    if loader.batch_size is None:  # a custom batch sampler
        return type(loader)(dataset, batch_sampler=loader.batch_sampler, generator=loader.generator,
                            collate_fn=collate_features, **position)
    return type(loader)(dataset, batch_size=loader.batch_size, sampler=loader.sampler, drop_last=loader.drop_last,
                        generator=loader.generator, collate_fn=collate_features, **position)


class CachedFeatures(LightningDataModule):
    """`images`, a DataModule without training augmentation, whose training and validation sets
    the module (`LitLinearProbe`) encodes once per fit; the head then trains on the stored
    `FeatureBatch`es. In a config:

        data:
          class_path: lit_mae.CachedFeatures
          init_args:
            images:
              class_path: lit_mae.datamodules.DigitsDataModule

    Features live in host memory (N x D float32: about 3.9 GB for ImageNet-1k at ViT-B); under
    DDP every rank encodes the whole set. `num_classes`, `class_names`, `mean` and `std` are the
    wrapped DataModule's, and so is the training position a checkpoint saves.
    """

    def __init__(self, images: LightningDataModule) -> None:
        super().__init__()
        if getattr(images, "augment", None) is not None:
            raise ValueError(f"CachedFeatures: {type(images).__name__} augments its training images "
                             f"(augment={images.augment}), so no two epochs see the same features; set its "
                             "augment to null, or train without CachedFeatures")
        draws = getattr(images, "draws_per_sample", None)
        if callable(draws) and draws():
            raise ValueError(f"CachedFeatures: {type(images).__name__} draws each training image anew every epoch "
                             "(e.g. placement: random), so features encoded once would freeze one draw; "
                             "train without CachedFeatures (data: the DataModule itself)")
        self.images = images
        self._features: dict[str, tuple[Tensor, Tensor]] = {}

    num_classes = property(lambda self: getattr(self.images, "num_classes", None))
    class_names = property(lambda self: getattr(self.images, "class_names", []))
    mean = property(lambda self: getattr(self.images, "mean", None))
    std = property(lambda self: getattr(self.images, "std", None))

    def prepare_data(self) -> None:
        self.images.prepare_data()

    def setup(self, stage: str) -> None:
        self.images.trainer = self.trainer
        self.images.setup(stage)

    def teardown(self, stage: str) -> None:
        self.images.teardown(stage)
        self._features.clear()

    def state_dict(self) -> dict[str, Any]:
        return self.images.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images.load_state_dict(state)

    def train_dataloader(self) -> Any:
        return self._cached("train", self.images.train_dataloader())

    def val_dataloader(self) -> Any:
        return self._cached("val", self.images.val_dataloader())

    def test_dataloader(self) -> Any:
        return self.images.test_dataloader()

    def predict_dataloader(self) -> Any:
        return self.images.predict_dataloader()

    # image batches (test, predict, and the encoding itself) go through the wrapped DataModule's hooks
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch if isinstance(batch, FeatureBatch) else self.images.on_before_batch_transfer(batch, dataloader_idx)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, FeatureBatch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return self.images.transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch if isinstance(batch, FeatureBatch) else self.images.on_after_batch_transfer(batch, dataloader_idx)

    def _cached(self, split: str, loader: Any) -> Any:
        if not isinstance(loader, DataLoader):
            return loader  # no loader ([]) or several: served as they are
        if split not in self._features:
            module = self.trainer.lightning_module
            if not callable(getattr(module, "encode", None)):
                raise TypeError(f"CachedFeatures serves stored features to LitLinearProbe; {type(module).__name__} "
                                "has no `encode(images)` to make them")
            encoded = encode_dataset(loader, module.encode, self.trainer.strategy.batch_to_device,
                                     self.trainer.precision_plugin.forward_context)
            if encoded is None:
                raise ValueError(f"CachedFeatures: the {split} loader of {type(self.images).__name__} has no batches "
                                 "to encode")
            if encoded[1] is None:
                raise TypeError(f"CachedFeatures: the {split} batches of {type(self.images).__name__} carry no "
                                "labels; the linear probe needs (images, labels)")
            self._features[split] = encoded
        return loader_like(loader, *self._features[split])
