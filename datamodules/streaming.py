"""LitData shards (written by `lit-mae prepare`) from a local folder or object storage (`s3://`, `gs://`, ...).

The shards are read by index (LitData's `StreamingDataset.__getitem__`), so the training order,
the augmentation and the mid-epoch resume are lit-mae's own, as for every other DataModule: the
order is `EpochSampler`'s permutation seeded by (seed, epoch), each sample's augmentation is
seeded by (seed, epoch, index), and the checkpoint keeps the loader's position
(`lit_mae.datamodules.sampling`). LitData's own shuffle and `StreamingDataLoader` state are not
used: the order they give depends on the number of workers and processes, and a Trainer resume
does not restore their position. Under DDP Lightning deals each rank a disjoint share of every
epoch's order. From object storage each image is one ranged read of its chunk (no chunk is
downloaded whole and nothing fills the disk cache); see docs/streaming.md.

Each record's bytes reach the pipeline as a `NamedBytes` carrying its file's suffix, so any
channel count and depth is read as its file would be (multi-band TIFF, `.npy`, 16-bit PNG: the
same pixels as `ImageFolderDataModule`'s, docs/multiband.md).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from lit_mae.datamodules.arrays import ArrayLayout
from lit_mae.datamodules.base import (
    BaseImageDataModule,
    Depth,
    ImageSamples,
    Normalize,
    initial_statistics,
    plain_augment,
)
from lit_mae.datamodules.shards import INFO_FILE, NamedBytes, ShardInfo, read_info
from lit_mae.datamodules.transforms import AugmentOption, Pipeline

INSTALL_HINT = 'pip install "lit-mae[streaming]"'


def require_litdata(who: str = "StreamingDataModule") -> Any:
    """The `litdata` module, or an ImportError saying which extra installs it."""
    try:
        import litdata
    except ImportError as error:
        raise ImportError(f"{who} reads LitData shards and needs the `litdata` package: {INSTALL_HINT}") from error
    return litdata


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


class ShardRecords:
    """The records of one shard folder by index (`{"image", "label", "name"}` dicts).

    LitData's `StreamingDataset` is opened on first use in each process (a DataLoader worker
    opens its own, never a copy of its parent's open files or connections)."""

    def __init__(self, location: str, cache_dir: str | None = None, storage_options: dict | None = None,
                 field: str = "input_dir") -> None:
        self.location, self.cache_dir, self.storage_options, self.field = location, cache_dir, storage_options, field
        self._open: tuple[int, Any] | None = None  # (pid, StreamingDataset)
        roi = self.dataset().region_of_interest  # (start, end) of each chunk's records
        self.length = sum(end - start for start, end in roi)

    def dataset(self) -> Any:
        if self._open is None or self._open[0] != os.getpid():
            self._open = (os.getpid(), self._make())
        return self._open[1]

    def _make(self) -> Any:
        litdata = require_litdata()
        where = f"StreamingDataModule.{self.field}"
        if not is_remote(self.location):
            folder = Path(self.location.removeprefix("file://")).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(f"{where}: folder {folder} does not exist")
            if not (folder / "index.json").is_file():
                raise FileNotFoundError(f"{where}: {folder} holds no LitData shards (no index.json); "
                                        "write them with `lit-mae prepare`")
        try:
            return litdata.StreamingDataset(self.location, cache_dir=self.cache_dir,
                                            storage_options=self.storage_options)
        except Exception as error:  # an unreachable bucket, missing credentials, no index.json ...
            raise FileNotFoundError(f"{where}: cannot open LitData shards at {self.location}: "
                                    f"{type(error).__name__}: {error}") from error

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset()[int(index)]

    def file(self, index: int) -> tuple[NamedBytes, int]:
        """Record `index` as (its image, read like its file, named by folder, index and name; its label)."""
        item = self[index]
        name = item.get("name", "?")
        return NamedBytes(item["image"], f"{self.location}[{index}] ({name})", Path(name).suffix), int(item["label"])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": None}  # a worker opens its own

    def info(self) -> ShardInfo | None:
        """The folder's `lit-mae.json`, or None where there is none (shards written otherwise)."""
        where = f"StreamingDataModule.{self.field}: {self.location}/{INFO_FILE}"
        if not is_remote(self.location):
            path = Path(self.location.removeprefix("file://")).expanduser() / INFO_FILE
            return read_info(path.read_text(), where) if path.is_file() else None
        from litdata.streaming.downloader import get_downloader

        data = io.BytesIO()
        try:  # through the storage's own client (never obstore's, whose runtime would not survive a fork)
            get_downloader(self.location, tempfile.gettempdir(), [], self.storage_options).download_fileobj(
                f"{self.location.rstrip('/')}/{INFO_FILE}", data)
        except Exception:  # no such object: shards written by other tools
            return None
        return read_info(data.getvalue().decode(), where) if data.getvalue() else None


class ShardSamples(ImageSamples):
    """`ImageSamples` over shard records: the bytes go through `load` as a file would."""

    def __init__(self, records: ShardRecords, load: Pipeline, strict: bool = False) -> None:
        super().__init__(records, records, load, strict)

    def record(self, index: int) -> tuple[NamedBytes, int]:
        return self.sources.file(index)


class RecordKeys(Sequence[str]):
    """"0", "1", ...: keys of the records for `channel_statistics`, which reads `Path(key)`."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> str:  # (no slices: channel_statistics indexes one at a time)
        if not 0 <= index < self.count:
            raise IndexError(index)
        return str(index)


class StreamingDataModule(BaseImageDataModule):
    """Images from LitData shards written by `lit-mae prepare`, as `(images, labels)` batches.

    `input_dir` (training), `val_dir` and `test_dir` are shard folders: local paths or cloud
    URIs (`s3://bucket/prefix`; credentials and endpoint from the usual environment variables,
    e.g. `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, or `storage_options`,
    passed to LitData, e.g. `{"endpoint_url": ...}`). `cache_dir` is where LitData keeps the
    index of a remote folder (its default cache folder when null). Labels and class names come
    from the shards (-1 and no classes when they were written without labels).

    Everything else is `ImageFolderDataModule`'s: the images are decoded by the same pipeline
    (`augment`: `pretrain`, `linprobe`, `finetune`, an Augment or null; evaluation resizes to
    image_size / crop_pct and center-crops), kept as uint8 in the workers and normalised on the
    device; an unreadable record is skipped with a warning and counted (`strict: true` stops).
    The training order and augmentation follow (seed, epoch) and resume mid-epoch.

    Beyond 8-bit RGB, as `ImageFolderDataModule` (docs/multiband.md): `channels` is any band count;
    multi-band TIFF, `.npy` (band axis: `array_layout`) and 16-bit PNG/TIFF records keep their
    depth; `depth: auto` decides from the first readable training record; `normalize: auto` (or
    unset, for data read at full depth) computes mean/std from a seeded sample of the training
    shards in `setup` and stores them in the hyper-parameters.
    """

    channel_counts = None  # any band count

    def __init__(self, input_dir: str, val_dir: str | None = None, test_dir: str | None = None,
                 cache_dir: str | None = None, storage_options: dict | None = None, seed: int = 0,
                 image_size: int = 224, channels: int = 3, augment: AugmentOption = "pretrain",
                 batch_size: int = 64, num_workers: int = 8, pin_memory: bool = True,
                 persistent_workers: bool = True, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, crop_pct: float = 0.875, strict: bool = False,
                 normalize: Normalize | None = None, depth: Depth = "auto", array_layout: ArrayLayout = "auto") -> None:
        require_litdata()
        self.statistics_given = mean is not None
        mean, std = initial_statistics("StreamingDataModule", channels, mean, std, normalize)
        super().__init__(image_size, channels, batch_size, num_workers, pin_memory, persistent_workers,
                         augment, mean, std, crop_pct, strict, depth, array_layout)
        self.normalize_by = normalize
        for field, value in (("input_dir", input_dir), ("val_dir", val_dir), ("test_dir", test_dir)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"StreamingDataModule.{field} must be a folder path or URI, got {value!r}")
        self.input_dir, self.val_dir, self.test_dir = input_dir, val_dir, test_dir
        self.cache_dir, self.storage_options, self.seed = cache_dir, storage_options, seed
        augment = plain_augment(self.augment)  # saved as plain data
        self.save_hyperparameters()  # reads the arguments from this frame's locals

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        folders = {"train": ("input_dir", self.input_dir), "val": ("val_dir", self.val_dir),
                   "test": ("test_dir", self.test_dir)}
        classes: list[str] | None = None
        records: dict[str, ShardRecords] = {}
        for split, (field, location) in folders.items():
            if location is None:
                continue
            records[split] = ShardRecords(location, self.cache_dir, self.storage_options, field)
            info = records[split].info()
            found = info.classes if info is not None else []
            if classes is None:
                classes = found
            elif found and classes and found != classes:
                raise ValueError(f"StreamingDataModule.{field}: the shards at {location} have {len(found)} classes "
                                 f"{found[:3]}..., those at input_dir {self.input_dir} {len(classes)} "
                                 f"{classes[:3]}...; prepare both from folders with the same classes")
        train = records["train"]
        self._resolve_depth(train.file(index)[0] for index in range(len(train)))
        self._resolve_statistics(RecordKeys(len(train)), self.statistics_given, self.normalize_by, self.input_dir,
                                 lambda key: train.file(int(key.name))[0])
        for split, shards in records.items():
            load = self.train_pipeline() if split == "train" else self.eval_pipeline()
            self.splits[split] = ShardSamples(shards, load, self.strict)
        self.class_names = classes or []
        self.num_classes = len(self.class_names) or None
