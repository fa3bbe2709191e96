"""Training data order and augmentation as pure functions of (seed, epoch), and resumable mid-epoch.

`EpochSampler` shuffles range(N) with a generator seeded from (seed, epoch) only; Lightning calls
its `set_epoch` at each epoch start (and forwards it through the `DistributedSamplerWrapper` that
replaces it under DDP, which then hands each rank a disjoint shard of that order). With
`seeded=True` it yields `(index, sample_seed)` keys, and `SeededSamples` reads sample `index`
with torch's, Python's and NumPy's global RNGs seeded by `sample_seed` (restored afterwards), so
that random crops, flips, RandAugment and random erasing depend on (seed, epoch, index) alone, in
the main process or in any worker.

`ResumableDataLoader` is a DataLoader that Lightning checkpoints (`state_dict` /
`load_state_dict`): a run resumed from a mid-epoch checkpoint continues that epoch at the next
unseen batch (the skipped batches' indices are drawn, their samples are not read), and one
resumed from an end-of-epoch checkpoint starts the next epoch.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

SampleKey = tuple[int, int]  # (dataset index, seed of its augmentation)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, e.g. (seed, "order", epoch); unrelated parts give unrelated seeds.
    Every seeded stream of lit-mae comes from it: data order, augmentation, workers, and masks."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class EpochSampler(Sampler):
    """range(num_samples) shuffled by (seed, epoch); in order when `shuffle` is false.

    `seeded`: yield `(index, sample_seed)` keys for `SeededSamples`, sample_seed a function of
    (seed, epoch, index)."""

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True, seeded: bool = False) -> None:
        if num_samples < 0:
            raise ValueError(f"EpochSampler: num_samples must not be negative, got {num_samples}")
        self.num_samples, self.seed, self.shuffle, self.seeded = num_samples, seed, shuffle, seeded
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def order(self) -> list[int]:
        """This epoch's indices, in the order they are drawn."""
        if not self.shuffle:
            return list(range(self.num_samples))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.epoch))
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator[int | SampleKey]:
        if not self.seeded:
            return iter(self.order())
        base = derive_seed(self.seed, "augment", self.epoch)
        return iter([(index, (base + index) % 2**63) for index in self.order()])


def _seed_global_rngs(seed: int) -> None:
    torch.default_generator.manual_seed(seed)  # the CPU generator only: torch.manual_seed costs 30x more
    random.seed(seed)
    np.random.seed(seed % 2**32)


class SeededSamples(Dataset):
    """`dataset` read with reproducible randomness: key `(index, seed)` seeds torch's (CPU),
    Python's and NumPy's RNGs for that one sample; a plain index reads the sample as `dataset`
    would (monitors and feature encoders iterate it that way). In the main process the RNGs are
    put back as they were afterwards; a worker process's RNGs serve only its dataset.
    `__getitems__` (which the DataLoader calls with a batch's keys) reads them as `__getitem__`
    would, saving and restoring the RNGs once per batch rather than once per sample."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def _read_seeded(self, key: SampleKey) -> Any:
        index, seed = key
        _seed_global_rngs(seed)
        return self.dataset[index]

    def __getitem__(self, key: int | SampleKey) -> Any:
        return self.dataset[key] if not isinstance(key, tuple) else self.__getitems__([key])[0]

    def __getitems__(self, keys: list[int | SampleKey]) -> list[Any]:
        if not all(isinstance(key, tuple) for key in keys):
            return [self[key] for key in keys]  # plain indices read the live RNGs, one at a time
        if get_worker_info() is not None:
            return [self._read_seeded(key) for key in keys]
        # each seeded read reseeds all three RNGs: only the state before the batch needs keeping
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            try:
                return [self._read_seeded(key) for key in keys]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


class _SkipFirst:
    """Batches of `batches` (the DataLoader's index sampler) after the first `skip`, skipped once:
    by the first iterator that is advanced (torch makes one and discards it before the one its
    worker iterator uses). The length stays the whole epoch's, which Lightning counts in."""

    def __init__(self, batches: Sized, skip: int) -> None:
        self.batches, self.skip = batches, skip

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        iterator = iter(self.batches)
        for _ in range(self.skip):
            next(iterator, None)
        self.skip = 0
        yield from iterator


def _samplers(loader: DataLoader) -> list[Any]:
    """The loader's sampler and its batch sampler's sampler (where Lightning calls `set_epoch`)."""
    found = {id(loader.sampler): loader.sampler}
    inner = getattr(loader.batch_sampler, "sampler", None)
    if inner is not None:
        found[id(inner)] = inner
    return list(found.values())


def _epoch_of(loader: DataLoader) -> int | None:
    epochs = [sampler.epoch for sampler in _samplers(loader) if isinstance(getattr(sampler, "epoch", None), int)]
    return epochs[0] if epochs else None


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in Lightning checkpoints.

    `state_dict()` is {"epoch": the sampler's epoch (None without `set_epoch`), "batches": batches
    handed out in the current pass, "length": batches per pass}. `load_state_dict` (or the
    `resume_from` argument) sets the sampler to that epoch and makes the next pass skip the
    batches already trained on; a state with the whole pass done moves to the next epoch
    instead. The iterator (and with it the sampler's order and any worker) starts at the first
    `next`, after Lightning's `set_epoch`.
    """

    def __init__(self, *args: Any, resume_from: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = 0  # batches handed out in the current pass
        self._resume_at = 0  # batches the next pass skips (set by `load_state_dict`)
        self._skipping = 0  # the skip, while the next pass's iterator is being made
        self._pass_epoch: int | None = None  # the sampler's epoch when the current pass began
        # an argument, so that it survives Lightning re-creating the loader with a distributed sampler
        self.resume_from = resume_from
        if resume_from is not None:
            self.load_state_dict(resume_from)

    @property
    def _index_sampler(self) -> Any:
        # torch's DataLoader draws its (batches of) indices from this property when it makes an
        # iterator: skipping there drops the consumed batches without reading their samples
        batches = super()._index_sampler
        return _SkipFirst(batches, self._skipping) if self._skipping else batches

    def __iter__(self) -> Iterator:
        skip, self._resume_at = self._resume_at, 0
        self._skipping = skip
        try:
            iterator = super().__iter__()
        finally:
            self._skipping = 0
        self._batches_done, self._pass_epoch = skip, _epoch_of(self)
        for batch in iterator:
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        epoch = self._pass_epoch if self._pass_epoch is not None else _epoch_of(self)
        return {"epoch": epoch, "batches": self._batches_done, "length": len(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, batches = state.get("epoch"), int(state.get("batches", 0))
        finished = batches >= state.get("length", len(self))
        if epoch is not None:
            for sampler in _samplers(self):
                if callable(getattr(sampler, "set_epoch", None)):
                    sampler.set_epoch(epoch + 1 if finished else epoch)
        self._resume_at = self._batches_done = 0 if finished else batches
        self._pass_epoch = None


class ResumableTrainData:
    """A LightningDataModule mixin (put it before LightningDataModule): the checkpoint's DataModule
    state keeps the training loader's position, and `resume_position()` gives it (once) to the
    next training loader made, as `train_loader(..., resume_from=...)`.

    Lightning restores a stateful loader only if it builds the loader after restoring its loops,
    but `trainer.estimated_stepping_batches` or any schedule computed in `configure_optimizers`
    builds it before: the loader's own state would then be ignored and the epoch would restart at
    its first batch. The DataModule state is restored before `configure_optimizers`.
    """

    _train_position: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        loader = trainer.train_dataloader if trainer is not None else None
        return {"train_loader": loader.state_dict()} if isinstance(loader, ResumableDataLoader) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._train_position = state.get("train_loader")

    def resume_position(self) -> dict[str, Any] | None:
        """The training loader's position restored from a checkpoint, once (later loaders start afresh)."""
        position, self._train_position = self._train_position, None
        return position


def train_loader(dataset: Dataset, batch_size: int, seed: int, random_samples: bool,
                 resume_from: dict[str, Any] | None = None, **kwargs: Any) -> ResumableDataLoader:
    """A shuffled, resumable training DataLoader whose order is a function of (seed, epoch).

    `random_samples`: the dataset draws randomness per sample (augmentation); it is then read
    through `SeededSamples` so that each sample's draws follow from (seed, epoch, index) too.
    `resume_from`: a position from `ResumableDataLoader.state_dict`. `kwargs` go to the
    DataLoader (num_workers, collate_fn, drop_last ...)."""
    sampler = EpochSampler(len(dataset), seed, shuffle=True, seeded=random_samples)
    dataset = SeededSamples(dataset) if random_samples else dataset
    # its own generator: worker seeds come from it, not from (and not advancing) the global RNG
    generator = torch.Generator().manual_seed(derive_seed(seed, "workers"))
    return ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator,
                               resume_from=resume_from, **kwargs)
