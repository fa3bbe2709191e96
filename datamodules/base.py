"""What image DataModules share: loaders, skipping unreadable files, normalising on the device.

Datasets yield `(pixels, label)` with uint8 pixels (C, S, S) (or already normalised floats from
PIL-based recipes) and label -1 when there are none. A corrupt file yields None instead: the
collate function drops it and counts it in the `LoadedBatch`, and `on_after_batch_transfer` hands
the model a `Batch` with float images normalised by `mean`/`std`, on the device the model is on.

Images other than 8-bit with 1 or 3 channels (`full_depth`) come out of the workers as normalised
float32 instead (`transforms.Normalised`); `mean`/`std` are then in the image's own unit
(`lit_mae.datamodules.arrays.to_unit`: fractions of full scale for uint8 / uint16 files).
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from lightning.fabric.utilities.data import suggested_max_num_workers
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from lit_mae.datamodules.arrays import ArrayLayout, is_eight_bit
from lit_mae.datamodules.batch import Batch, LoadedBatch, read_batch
from lit_mae.datamodules.images import UnreadableImageError
from lit_mae.datamodules.sampling import ResumableTrainData, train_loader
from lit_mae.datamodules.statistics import channel_statistics, unit_reader
from lit_mae.datamodules.transforms import Augment, AugmentOption, Pipeline, pipeline, resolve_augment

MAX_AUTO_WORKERS = 8  # `num_workers: null` takes at most this many loader processes per device
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Depth = Literal["auto", "8bit", "full"]  # how deep pixels stay on the way in (`BaseImageDataModule`)
Normalize = Literal["auto", "imagenet"]  # where mean/std come from when not given (`initial_statistics`)
DEPTH_PROBES = 8  # `depth: auto` looks at up to this many training sources for a readable one


def declared_statistics(datamodule: object) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The per-channel (mean, std) a DataModule normalises its images with: its `mean`/`std`
    attributes, else those of its `hparams`; None when it declares neither (or they are unset)."""
    for owner in (datamodule, getattr(datamodule, "hparams", None) or {}):
        get = owner.get if isinstance(owner, dict) else lambda name, owner=owner: getattr(owner, name, None)
        mean, std = get("mean"), get("std")
        if mean and std and len(mean) == len(std):
            return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    return None


def imagenet_statistics(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet's mean/std for 3 channels; their average for 1 (grey never gets the RGB triple)."""
    if channels == 1:
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    return IMAGENET_MEAN, IMAGENET_STD


def initial_statistics(name: str, channels: int, mean: Sequence[float] | None, std: Sequence[float] | None,
                       normalize: Normalize | None) -> tuple[Sequence[float] | None, Sequence[float] | None]:
    """The mean/std a DataModule starts from (`normalize`: see `ImageFolderDataModule`): those given;
    ImageNet's for 1 or 3 channels unless `normalize: auto` (provisional: `_resolve_statistics` computes
    them for deeper data); None (computed in `setup`) otherwise. ImageNet's RGB triple asked for grey
    becomes its average."""
    if normalize not in (None, "auto", "imagenet"):
        raise ValueError(f"{name}.normalize must be 'auto', 'imagenet' or null, got {normalize!r}")
    if mean is None and std is None and normalize != "auto" and channels in (1, 3):
        return imagenet_statistics(channels)
    if mean is None and normalize == "imagenet":
        raise ValueError(f"{name}.normalize: 'imagenet' has statistics for 1 or 3 channels, "
                         f"not {channels}; use normalize: auto or give mean/std")
    if channels == 1 and tuple(mean or ()) == IMAGENET_MEAN and tuple(std or ()) == IMAGENET_STD:
        return imagenet_statistics(1)
    return mean, std


class ImageSamples(Dataset):
    """`(source, label)` pairs (a file path or uint8 pixels) read through `load`.

    An unreadable file gives None (dropped and counted by `collate_skipping`) with one warning
    naming it, or raises `UnreadableImageError` when `strict`.
    """

    def __init__(self, sources: Sequence[Any], labels: Sequence[int], load: Pipeline, strict: bool = False) -> None:
        if len(sources) != len(labels):
            raise ValueError(f"{len(sources)} images but {len(labels)} labels")
        self.sources, self.labels, self.load, self.strict = sources, labels, load, strict
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.sources)

    def record(self, index: int) -> tuple[Any, int]:
        """Sample `index`'s source and label (datasets whose records hold both read them at once)."""
        return self.sources[index], int(self.labels[index])

    def __getitem__(self, index: int) -> tuple[Tensor, int] | None:
        source, label = self.record(index)
        try:
            return self.load(source), label
        except UnreadableImageError as error:
            if self.strict:
                raise
            if error.path not in self._warned:
                self._warned.add(error.path)
                warnings.warn(f"skipping {error} (set strict: true to stop instead)", stacklevel=2)
            return None


def collate_skipping(samples: list[tuple[Tensor, int] | None]) -> LoadedBatch:
    """`LoadedBatch(pixels (B, C, S, S), labels (B,), number of unreadable samples dropped)`."""
    kept = [sample for sample in samples if sample is not None]
    if not kept:
        raise UnreadableImageError("(a whole batch)", f"all {len(samples)} images of the batch are unreadable")
    pixels, labels = default_collate(kept)
    return LoadedBatch(pixels, labels, len(samples) - len(kept))


class BaseImageDataModule(ResumableTrainData, LightningDataModule):
    """Loaders and the device-side normalisation for DataModules built on `ImageSamples`.

    Subclasses fill `self.splits` ("train", "val", "test", optionally "predict") in `setup`.
    `channels`: 1 or 3, any count where a subclass allows it (`channel_counts` None). `depth`:
    "8bit" reads 1- or 3-channel images as 8-bit (uint8 through the loader, 16-bit files keep
    their top 8 bits), "full" keeps every file's own depth (the float form), "auto" lets a
    subclass choose from the data; channels other than 1 and 3 always take the float form
    (`full_depth`). `array_layout`: the band axis of `.npy` files
    (`lit_mae.datamodules.arrays`). `mean`/`std` may stay None until a subclass's `setup`.
    `skipped_files` counts the unreadable files dropped so far in this process; each change is
    logged as `data/skipped_files` to the Trainer's logger. `num_workers=None` chooses the loader
    processes from the CPU count (`workers`).
    """

    num_classes: int | None = None
    class_names: list[str] = []
    seed: int = 0  # subclasses take it as an argument: the split, the training order and augmentation
    channel_counts: tuple[int, ...] | None = (1, 3)  # the `channels` a subclass reads; None: any band count

    def __init__(self, image_size: int, channels: int, batch_size: int, num_workers: int | None, pin_memory: bool,
                 persistent_workers: bool, augment: AugmentOption | dict, mean: Sequence[float],
                 std: Sequence[float] | None, crop_pct: float, strict: bool, depth: Depth = "8bit",
                 array_layout: ArrayLayout = "auto") -> None:
        super().__init__()
        name = type(self).__name__
        for field, value, least in (("image_size", image_size, 1), ("batch_size", batch_size, 1),
                                    ("num_workers", 0 if num_workers is None else num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}.{field} must be an integer >= {least}, got {value!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"{name}.channels must be an integer >= 1, got {channels!r}")
        if self.channel_counts is not None and channels not in self.channel_counts:
            raise ValueError(f"{name}.channels must be one of {self.channel_counts}, got {channels!r} (other band "
                             "counts: ImageFolderDataModule)")
        for field, value, allowed in (("depth", depth, ("auto", "8bit", "full")),
                                      ("array_layout", array_layout, ("auto", "CHW", "HWC"))):
            if value not in allowed:
                raise ValueError(f"{name}.{field} must be one of {allowed}, got {value!r}")
        if depth == "8bit" and channels not in (1, 3):
            raise ValueError(f"{name}.depth: '8bit' reads 1- or 3-channel images; {channels} channels are read "
                             "at their own depth (use depth: full or auto)")
        if (mean is None) != (std is None):
            raise ValueError(f"{name}: give both mean and std, or neither (got mean={mean}, std={std})")
        if mean is not None and (len(mean) != channels or len(std) != channels):
            raise ValueError(f"{name}: mean {tuple(mean)} and std {tuple(std)} need {channels} values (channels)")
        self.augment = resolve_augment(augment)
        self.image_size, self.channels, self.batch_size = image_size, channels, batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory  # num_workers None: `workers()` decides
        self.persistent_workers = persistent_workers
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.crop_pct, self.strict = crop_pct, strict
        self.depth, self.array_layout = depth, array_layout
        self.splits: dict[str, Dataset] = {}
        self.skipped_files = 0
        self._on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}

    @property
    def full_depth(self) -> bool:
        """Whether images take the float form (their own depth, normalised in the workers)."""
        return self.channels not in (1, 3) or self.depth == "full"

    def _resolve_depth(self, sources: Iterable[Any]) -> None:
        """`depth: auto` -> "8bit" when the first readable of the first `DEPTH_PROBES` training
        sources (files, or shard records) is 8-bit, else "full"."""
        if self.depth != "auto":
            return
        self.depth = "8bit"
        for source in itertools.islice(sources, DEPTH_PROBES):
            try:
                self.depth = "8bit" if is_eight_bit(source) else "full"
                return
            except UnreadableImageError:
                continue

    def _resolve_statistics(self, keys: Sequence[Any], given: bool, normalize: Normalize | None, where: str,
                            open_key: Callable[[Path], Any] = lambda path: path) -> None:
        """Compute mean/std from a sample of the training split (seeded by `seed`) unless `given` (or
        ImageNet's fit 8-bit data), and store them in the hyper-parameters (checkpoints then rebuild
        the same normalisation). `keys` name the training sources for `channel_statistics`, which
        reads `open_key(Path(key))` (the path itself for files)."""
        if given or not (normalize == "auto" or (normalize is None and self.full_depth)):
            return
        read = unit_reader(self.channels, self.full_depth, self.array_layout)
        self.mean, self.std = channel_statistics(keys, lambda key: read(open_key(key)), seed=self.seed,
                                                 owner=f"{type(self).__name__} (normalize: auto, {where})")
        self.hparams["mean"], self.hparams["std"] = list(self.mean), list(self.std)

    def train_pipeline(self) -> Pipeline:
        return pipeline(self.augment, self.image_size, self.channels, self.mean, self.std, self.crop_pct,
                        self.full_depth, self.array_layout)

    def eval_pipeline(self) -> Pipeline:
        return pipeline(None, self.image_size, self.channels, self.mean, self.std, self.crop_pct,
                        self.full_depth, self.array_layout)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """The split's loader; shuffled (training) ones draw their order and augmentation from
        (`seed`, epoch, index) and resume mid-epoch (`lit_mae.datamodules.sampling`)."""
        if split not in self.splits:
            raise ValueError(f"{type(self).__name__} has no {split!r} split (has {sorted(self.splits)})")
        dataset = self.splits[split]
        workers = self.workers()
        settings = dict(num_workers=workers, pin_memory=self.pin_memory and torch.cuda.is_available(),
                        persistent_workers=self.persistent_workers and workers > 0, collate_fn=collate_skipping)
        if shuffle:
            return train_loader(dataset, self.batch_size, self.seed, random_samples=self.draws_per_sample(),
                                resume_from=self.resume_position(), drop_last=len(dataset) > self.batch_size,
                                **settings)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, **settings)

    def draws_per_sample(self) -> bool:
        """Whether reading a training sample draws random numbers (augmentation): its draws are then
        seeded by (seed, epoch, index), so runs and resumes repeat them."""
        return self.augment is not None

    def workers(self) -> int:
        """Loader worker processes: `num_workers`, or when it is None as many as the CPUs this
        process may use allow per device (Lightning's rule: CPUs / devices - 1), at most 8."""
        if self.num_workers is not None:
            return self.num_workers
        trainer = getattr(self, "_trainer", None)
        return min(MAX_AUTO_WORKERS, suggested_max_num_workers(trainer.num_devices if trainer is not None else 1))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if "val" in self.splits else []  # [] : no validation

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict" if "predict" in self.splits else "test", shuffle=False)

    def normalise(self, pixels: Tensor) -> Tensor:
        """uint8 (B, C, H, W) -> float normalised; float input is already normalised."""
        if pixels.dtype != torch.uint8:
            return pixels
        mean, std = self._statistics(pixels.device)
        return pixels.float().sub_(mean).div_(std)  # one float copy of the batch

    def _statistics(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """mean and std x 255 as (1, C, 1, 1) tensors on `device`, made once per device."""
        if device not in self._on_device:
            scale = torch.tensor(255.0)
            self._on_device[device] = tuple(
                (torch.tensor(values) * scale).view(1, -1, 1, 1).to(device) for values in (self.mean, self.std))
        return self._on_device[device]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Batch:
        if isinstance(batch, LoadedBatch) and batch.skipped:
            self._count_skipped(batch.skipped)
        images, labels = read_batch(batch)
        return Batch(self.normalise(images), labels)

    def _count_skipped(self, count: int) -> None:
        self.skipped_files += count
        trainer = self.trainer
        if trainer is not None and trainer.logger is not None:
            trainer.logger.log_metrics({"data/skipped_files": float(self.skipped_files)}, step=trainer.global_step)


def plain_augment(augment: Augment | None) -> dict | None:
    """An Augment as plain data, for hyper-parameters that checkpoints store and loggers write."""
    return dataclasses.asdict(augment) if augment is not None else None


def split_indices(n: int, fractions: tuple[float, float], seed: int, owner: str = "split_indices",
                  what: str = "samples") -> tuple[Tensor, Tensor, Tensor]:
    """A seeded permutation of range(n) cut into (train, val, test) by the val and test fractions.

    A ValueError (naming `owner`, the fractions and `what` was split) when the fractions leave
    the training split empty, or give a split asked for (fraction > 0) no sample at all."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val, n_test = round(n * fractions[0]), round(n * fractions[1])
    sizes = {"training": n - n_val - n_test, "val": n_val, "test": n_test}
    asked = {"training": True, "val": fractions[0] > 0, "test": fractions[1] > 0}
    empty = [split for split, size in sizes.items() if asked[split] and size <= 0]
    if empty:
        raise ValueError(f"{owner}: val_fraction={fractions[0]} and test_fraction={fractions[1]} of the {n} {what} "
                         f"leave the {' and '.join(empty)} split empty (sizes: {sizes}); change the fractions "
                         "or give more data")
    return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


def check_fractions(name: str, val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"{name}: val_fraction={val_fraction} and test_fraction={test_fraction} "
                         "must be in [0, 1) and leave some training data")

