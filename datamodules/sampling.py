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
resumed from an end-of-epoch checkpoint starts the next epoch. `ResumableTrainData` (a
DataModule mixin) saves its position as the fit loop sees it (`fit_position`: the epoch's length
after `limit_train_batches`, whether the epoch was over), so that the resumed loader continues
the epoch exactly where Lightning does (`resumed_position`).
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any, Iterator, NamedTuple, Sized

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


class _Pass(NamedTuple):
    """Where the next pass of a `ResumableDataLoader` starts: a loaded position."""

    epoch: int | None  # its epoch (None: the sampler's)
    skip: int  # batches of that epoch already trained on
    stop: int | None  # batches after which it ends (the epoch's length as the fit loop ran it)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in Lightning checkpoints.

    `state_dict()` is {"epoch": the epoch of the current pass (the sampler's, None without
    `set_epoch`), "batches": batches handed out in it, "length": batches per pass}.
    `load_state_dict` (or the `resume_from` argument) makes the next pass continue that epoch
    after the batches already trained on, and end after "length" batches (a `fit_position` gives
    the epoch's length after `limit_train_batches`); a finished position starts the next epoch
    instead: one whose state says "finished", or with `batches >= length`. The iterator (and
    with it the sampler's order and any worker) starts at the first `next`, after Lightning's
    `set_epoch`.

    A loader built with `resume_from` keeps that position until its first pass: Lightning's own
    copy of the loader's state, which it loads after building the loader when it restarts an
    epoch, is from the same checkpoint but knows neither the epoch's length after the limits nor
    whether the epoch was over (`ResumableTrainData` saves both).

    The resumed pass ends after "length" batches even where Lightning counts it as a whole new
    epoch: resumed from a step checkpoint saved at an epoch's last batch, Lightning 2.6 does not
    count the next epoch as started, so that a checkpoint saved inside it looks like one saved
    between epochs, and a run resumed from there starts that epoch's batch count afresh.

    Epoch numbers: a resumed pass has its position's epoch, whatever `set_epoch` said. Lightning
    2.6 sets the sampler's epoch from its count of processed epochs, which runs one ahead of
    `current_epoch` after it resumes an epoch that `max_steps` ended; the difference found at the
    resumed pass is taken off the epochs `set_epoch` gives later, so that every pass has the
    epoch an uninterrupted run gives it.
    """

    def __init__(self, *args: Any, resume_from: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = 0  # batches handed out in the current pass
        self._pending: _Pass | None = None  # a loaded position, for the next pass
        self._skipping = 0  # the skip, while the next pass's iterator is being made
        self._pass_epoch: int | None = None  # the epoch of the current pass
        self._epoch_shift = 0  # added to the epochs `set_epoch` gives (see the class docstring)
        self._epoch_given: int | None = None  # the epoch this loader last gave its samplers
        # an argument, so that it survives Lightning re-creating the loader with a distributed sampler
        self.resume_from = resume_from
        self._keep_position = resume_from is not None
        if resume_from is not None:
            self._load(resume_from)

    @property
    def _index_sampler(self) -> Any:
        # torch's DataLoader draws its (batches of) indices from this property when it makes an
        # iterator: skipping there drops the consumed batches without reading their samples
        batches = super()._index_sampler
        return _SkipFirst(batches, self._skipping) if self._skipping else batches

    def _set_epoch(self, epoch: int) -> None:
        for sampler in _samplers(self):
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(epoch)
        self._epoch_given = epoch

    def _start_pass(self) -> _Pass:
        """The pass that starts now (the samplers set to its epoch)."""
        told = _epoch_of(self)  # Lightning's set_epoch at the epoch start, or this loader's own
        if self._pending is not None:
            start, self._pending, self._keep_position = self._pending, None, False
            epoch = told if start.epoch is None else start.epoch
            self._epoch_shift = epoch - told if epoch is not None and told is not None else 0
        else:
            start = _Pass(None, 0, None)
            # a new epoch from set_epoch, or none since this loader's last pass
            epoch = told + self._epoch_shift if told is not None and told != self._epoch_given else told
        if epoch is not None and epoch != told:
            self._set_epoch(epoch)
        self._epoch_given = epoch
        return start._replace(epoch=epoch)

    def __iter__(self) -> Iterator:
        start = self._start_pass()
        self._skipping = start.skip
        try:
            iterator = super().__iter__()
        finally:
            self._skipping = 0
        self._batches_done, self._pass_epoch = start.skip, start.epoch
        for batch in iterator:
            self._batches_done += 1
            yield batch
            if start.stop is not None and self._batches_done >= start.stop:
                return

    def state_dict(self) -> dict[str, Any]:
        if self._pending is not None:  # a loaded position whose pass has not started
            epoch, batches, stop = self._pending
            return {"epoch": epoch, "batches": batches, "length": len(self) if stop is None else stop}
        epoch = self._pass_epoch if self._pass_epoch is not None else _epoch_of(self)
        return {"epoch": epoch, "batches": self._batches_done, "length": len(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._keep_position:  # Lightning's copy of the position given as `resume_from`
            return
        self._load(state)

    def _load(self, state: dict[str, Any]) -> None:
        epoch, batches, length = state.get("epoch"), int(state.get("batches", 0)), state.get("length")
        if state.get("finished") or batches >= (len(self) if length is None else length):
            self._pending = _Pass(None if epoch is None else epoch + 1, 0, None)
        else:
            self._pending = _Pass(epoch, batches, None if length is None or length >= len(self) else int(length))
        self._batches_done, self._pass_epoch = self._pending.skip, None
        if self._pending.epoch is not None:
            self._set_epoch(self._pending.epoch)


def fit_position(trainer: Any, loader: ResumableDataLoader) -> dict[str, Any]:
    """`loader`'s position as the fit loop of `trainer` (a Lightning Trainer) sees it.

    {"epoch", "batches", "length", "epoch_over"}: "length" is the epoch as the fit loop runs it
    (`trainer.num_training_batches`, after `limit_train_batches`), and "epoch_over" says that the
    checkpoint is saved at the epoch's end (in `on_train_epoch_end`, after the epoch's batches, or
    after `max_steps` or a stop request ended it early)."""
    position = loader.state_dict()
    batches = getattr(trainer, "num_training_batches", float("inf"))
    if isinstance(batches, (int, float)) and math.isfinite(batches):
        position["length"] = min(position["length"], int(batches))
    progress = trainer.fit_loop.epoch_progress.current
    # Lightning counts an epoch processed before `on_train_epoch_end` and completed after it
    position["epoch_over"] = progress.ready == progress.started == progress.processed == progress.completed + 1
    return position


def resumed_position(position: dict[str, Any], max_steps: int = -1) -> dict[str, Any]:
    """A `fit_position` as the next training loader takes it (with "finished" set), in a fit with
    `max_steps` (-1: none).

    Lightning 2.6 continues an epoch while batches of it are left (`batches < length`), except
    from a checkpoint saved at the epoch's end ("epoch_over": `max_steps` or a stop ended the
    epoch early): it then starts the next epoch, unless the resumed fit has `max_steps` (an
    iteration-based fit continues the epoch)."""
    batches, length = int(position.get("batches", 0)), position.get("length")
    finished = length is not None and batches >= length
    if max_steps == -1:
        finished = finished or bool(position.get("epoch_over", False))
    return {**position, "finished": finished}


class ResumableTrainData:
    """A LightningDataModule mixin (put it before LightningDataModule): the checkpoint's DataModule
    state keeps the training loader's position, and `resume_position()` gives it (once) to the
    next training loader made, as `train_loader(..., resume_from=...)`.

    Lightning restores a stateful loader only if it builds the loader after restoring its loops,
    but `trainer.estimated_stepping_batches` or any schedule computed in `configure_optimizers`
    builds it before: the loader's own state would then be ignored and the epoch would restart at
    its first batch. The DataModule state is restored before `configure_optimizers`. It is also
    where the fit loop's view of the epoch is saved (`fit_position`): with `limit_train_batches`
    an epoch ends before the loader's last batch, and whether the resumed run continues the epoch
    or starts the next one follows Lightning's own rules (`resumed_position`).
    """

    _train_position: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        loader = trainer.train_dataloader if trainer is not None else None
        return {"train_loader": fit_position(trainer, loader)} if isinstance(loader, ResumableDataLoader) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        position = state.get("train_loader")
        max_steps = getattr(getattr(self, "trainer", None), "max_steps", -1)
        self._train_position = None if position is None else resumed_position(position, max_steps)

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
