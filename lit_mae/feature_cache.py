"""The linear probe's speed path: encode a dataset once, then train the head on the stored features.

With a frozen encoder and no augmentation every epoch sees the same features, so computing them
once gives the same numbers as encoding every batch of every epoch. The cached loader keeps the
original's class, sampler, batch size, generator and drop_last, so it draws the same batch order
(and resumes mid-epoch where the original would).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lit_mae.training import images_of


def _labels_of(batch: Any) -> Tensor:
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise TypeError(f"feature caching needs (images, labels) batches, got {type(batch).__name__}")
    return batch[1]


@torch.no_grad()
def encode_dataset(loader: DataLoader, encode: Callable[[Tensor], Tensor],
                   to_device: Callable[[Any], Any] = lambda batch: batch,
                   context: Callable[[], ContextManager] = contextlib.nullcontext, *,
                   dataset: Dataset | None = None, labels_of: Callable[[Any], Tensor | None] = _labels_of,
                   to_cpu: bool = True) -> tuple[Tensor, Tensor] | None:
    """(N, D) float32 features and (N,) labels of `dataset` (default `loader.dataset`), in dataset order.

    Iterates a copy of `loader` without shuffling and with its own generator, so the global RNG
    (which draws the training order) is left as it was. `to_device` moves a batch as the Trainer
    does (with the DataModule's transfer hooks, e.g. normalising uint8 images). Both are on the CPU,
    or with `to_cpu=False` where `to_device` put the batches. None when `labels_of` finds no labels
    in a batch (the default raises instead), or when there are no batches.
    """
    ordered = DataLoader(loader.dataset if dataset is None else dataset, batch_size=loader.batch_size or 1,
                         shuffle=False, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                         pin_memory=loader.pin_memory, generator=torch.Generator())
    features, labels = [], []
    for batch in ordered:
        batch = to_device(batch)
        batch_labels = labels_of(batch)  # (B,)
        if batch_labels is None:
            return None
        with context():
            batch_features = encode(images_of(batch)).float()  # (B, D)
        features.append(batch_features.cpu() if to_cpu else batch_features)
        labels.append(batch_labels.cpu() if to_cpu else batch_labels)
    if not features:
        return None
    return torch.cat(features), torch.cat(labels)


def loader_like(loader: DataLoader, features: Tensor, labels: Tensor) -> DataLoader:
    """A DataLoader of `loader`'s class over (features, labels) that batches and shuffles like it.

    The features are in dataset order, so `loader`'s own sampler (and batch sampler) draws the
    same indices: the same order every epoch, and a resumable loader stays resumable."""
    dataset = TensorDataset(features, labels)
    # a loader that resumes mid-epoch (lit_mae.datamodules.sampling.ResumableDataLoader) takes its position
    # as an argument, so that Lightning keeps it when it re-creates the loader for DDP
    position = {"resume_from": loader.state_dict()} if hasattr(loader, "resume_from") else {}
    if loader.batch_size is None:  # a custom batch sampler
        return type(loader)(dataset, batch_sampler=loader.batch_sampler, generator=loader.generator, **position)
    return type(loader)(dataset, batch_size=loader.batch_size, sampler=loader.sampler, drop_last=loader.drop_last,
                        generator=loader.generator, **position)
