"""Writing LitData shards (`lit-mae prepare`): any collection lit-mae reads, as encoded image bytes.

A shard folder holds LitData's `index.json` and `chunk-*.bin` files, one record per image:
`{"image": encoded bytes, "label": int (-1: none), "name": where the image came from}`, plus
`lit-mae.json` (`ShardInfo`: the class names and how the images were encoded). The records are
written in the order of the collection (sorted files, dataset order), whatever `num_workers`:
workers check and encode, one writer appends. Files are kept byte for byte by default (checked
by decoding them with the reader training uses: JPEGs at 1/8 scale, `.npy` arrays and TIFF
(multi-band, 16-bit) with `lit_mae.datamodules.arrays`'s readers, so every band and bit stays);
`max_side` re-encodes each image as an 8-bit JPEG no larger than `max_side` on its longer side
(ImageNet's "resize once") and refuses files that a JPEG would cut down (`DepthLossError`: 16-bit
or float pixels, band counts other than 1 and 3, `.npy` arrays). Pixels without a file (CIFAR,
the digits) are stored as PNG, losslessly. The folder appears whole or not at all: it is
written beside its final name and renamed into place.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
from PIL import Image

from lit_mae.datamodules.arrays import ARRAY_SUFFIXES, TIFF_SUFFIXES, BandCountError, read_array
from lit_mae.datamodules.images import to_channels

INFO_FILE = "lit-mae.json"  # ShardInfo, beside LitData's index.json
INFO_FORMAT = "lit-mae shards 1"
SHARD_FILES = ("index.json", INFO_FILE)  # with chunk-*.bin: all that a shard folder holds


class Item(NamedTuple):
    """One image to write: a file path or uint8 pixels (C, H, W), its label (-1: none), its name."""

    source: Any  # str path, or np.ndarray uint8 (C, H, W)
    label: int
    name: str


@dataclasses.dataclass
class ShardInfo:
    """What `lit-mae.json` records about a shard folder."""

    source: str  # the collection it was made from
    classes: list[str]  # class names by label; [] when unlabelled
    images: int  # records written
    bytes: int  # encoded image bytes written (the chunk files add a small index)
    encoding: str  # "original", "png", or "jpeg max_side=N quality=Q"
    skipped: list[str] = dataclasses.field(default_factory=list)  # unreadable inputs: "name: reason"
    format: str = INFO_FORMAT

    def summary(self) -> str:
        lines = [f"{self.images} images, {self.bytes / 1e6:.1f} MB of image bytes ({self.encoding}), "
                 f"{len(self.classes) or 'no'} classes, from {self.source}"]
        if self.skipped:
            lines.append(f"{len(self.skipped)} unreadable file(s) skipped:")
            lines += [f"  {entry}" for entry in self.skipped]
        return "\n".join(lines)


def read_info(text: str, where: str) -> ShardInfo:
    """`lit-mae.json`'s text as a ShardInfo; a ValueError naming `where` if it is not one."""
    try:
        values = json.loads(text)
        if values.get("format") != INFO_FORMAT:
            raise ValueError(f"format {values.get('format')!r}, expected {INFO_FORMAT!r}")
        return ShardInfo(**values)
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{where}: not a lit-mae shard description ({error})") from error


class NamedBytes(io.BytesIO):
    """An encoded image in memory that reads like a file: `name` names it in messages, `suffix`
    (`.tif`, `.npy`, `.jpg`, ...) says its format to the readers as a path's suffix would."""

    def __init__(self, data: bytes, name: str, suffix: str = "") -> None:
        super().__init__(data)
        self.name, self.suffix = name, suffix.lower()

    def __str__(self) -> str:
        return self.name


class DepthLossError(ValueError):
    """`max_side` asked to re-encode, as an 8-bit JPEG, a file that would lose bits or bands."""

    def __init__(self, name: str, what: str) -> None:
        super().__init__(f"--max-side re-encodes images as 8-bit JPEGs, but {name} {what}: a JPEG would lose "
                         "its depth or bands; prepare without --max-side (its bytes are then kept as they are)")
        self.name, self.what = name, what

    def __reduce__(self) -> tuple:  # raised in a worker process, re-raised in the writer's
        return type(self), (self.name, self.what)


class Encoded(NamedTuple):
    image: bytes | None  # None: unreadable
    label: int
    name: str
    error: str = ""


def _jpeg(image: Image.Image, max_side: int, quality: int) -> bytes:
    """An upright RGB JPEG of `image`, its longer side at most `max_side` (never enlarged)."""
    image = to_channels(image, 3)
    scale = max_side / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    """uint8 (C, H, W) pixels, C 1 or 3, as PNG bytes."""
    array = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)  # (H, W) or (H, W, 3)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(out, format="PNG")
    return out.getvalue()


def _has_tifffile() -> bool:
    return importlib.util.find_spec("tifffile") is not None


def _array_reader(suffix: str) -> bool:
    """Whether files of `suffix` are checked with `read_array` (arrays, and TIFF when tifffile is
    installed: Pillow reads only the first band of a multi-band TIFF); else with Pillow."""
    return suffix in ARRAY_SUFFIXES or (suffix in TIFF_SUFFIXES and _has_tifffile())


def _read_any_bands(file: NamedBytes) -> np.ndarray | None:
    """The file's pixels (C, H, W) when it has 1 or 3 bands, None for any other band count (read
    whole either way); `UnreadableImageError` when unreadable."""
    try:
        return read_array(file, channels=3)
    except BandCountError:
        return None


def _check_jpeg_safe(name: str, suffix: str, pixels: np.ndarray | None) -> None:
    """`DepthLossError` unless a file read by `_read_any_bands` holds 8-bit pixels of 1 or 3 bands."""
    if suffix in ARRAY_SUFFIXES:
        raise DepthLossError(name, "is an array")
    if pixels is None:
        raise DepthLossError(name, "has other than 1 or 3 bands")
    if pixels.dtype != np.uint8:
        raise DepthLossError(name, f"holds {pixels.dtype} pixels")


class Encoder:
    """`Item` -> `Encoded` (picklable, for worker processes): files checked (decoded) unless
    `verify` is false, and re-encoded when `max_side` is set (`DepthLossError` for files that an
    8-bit JPEG would cut down); pixels as PNG (JPEG with `max_side`)."""

    def __init__(self, max_side: int | None = None, quality: int = 90, verify: bool = True) -> None:
        self.max_side, self.quality, self.verify = max_side, quality, verify

    def __call__(self, item: Item) -> Encoded:
        if isinstance(item.source, np.ndarray):
            if self.max_side is None:
                return Encoded(_png(item.source), item.label, item.name)
            return Encoded(_jpeg(Image.open(io.BytesIO(_png(item.source))), self.max_side, self.quality),
                           item.label, item.name)
        suffix = Path(item.source).suffix.lower()
        try:
            data = Path(item.source).read_bytes()
            if self.max_side is None and not self.verify:
                return Encoded(data, item.label, item.name)
            if _array_reader(suffix):
                pixels = _read_any_bands(NamedBytes(data, item.name, suffix))  # the check: read whole
                if self.max_side is None:
                    return Encoded(data, item.label, item.name)
                _check_jpeg_safe(item.name, suffix, pixels)
            with Image.open(io.BytesIO(data)) as image:
                if self.max_side is not None:
                    if image.mode.startswith(("I", "F")):  # 16- or 32-bit integers, floats
                        raise DepthLossError(item.name, f"holds {image.mode} pixels")
                    return Encoded(_jpeg(image, self.max_side, self.quality), item.label, item.name)
                if image.format == "JPEG":
                    image.draft("RGB", (1, 1))  # decode at 1/8 scale: still reads every byte
                image.load()
            return Encoded(data, item.label, item.name)
        except DepthLossError:
            raise  # the whole collection needs another choice, not this file skipped
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            return Encoded(None, item.label, item.name, f"{type(error).__name__}: {error}")


def _clear_for(output: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty `output` without `overwrite`, and anything but a shard folder."""
    if not output.exists():
        return
    if not output.is_dir():
        raise FileExistsError(f"output {output} is a file, not a folder")
    present = sorted(p.name for p in output.iterdir())
    if not present:
        return
    foreign = [name for name in present if name not in SHARD_FILES and not
               (name.startswith("chunk-") and name.endswith(".bin"))]
    if foreign:
        raise FileExistsError(f"output {output} holds files that are not shards ({', '.join(foreign[:5])}); "
                              "choose an empty or new folder")
    if not overwrite:
        raise FileExistsError(f"output {output} already holds shards ({len(present)} files); "
                              "give --overwrite to replace them")


def write_shards(items: Sequence[Item], output: str | Path, source: str, classes: list[str],
                 max_side: int | None = None, quality: int = 90, verify: bool = True, num_workers: int = 0,
                 chunk_bytes: str | int = "64MB", overwrite: bool = False, progress: bool = True) -> ShardInfo:
    """Write `items` as LitData shards into the folder `output`; what was written (`ShardInfo`).

    `num_workers` processes check and encode (0: this process); the records keep the order of
    `items`. An existing shard folder is replaced only with `overwrite`; a folder holding other
    files never. Unreadable files are left out and listed in the returned `skipped`."""
    from litdata.streaming.writer import BinaryWriter  # the `streaming` extra
    from tqdm.auto import tqdm

    output = Path(output).expanduser()
    _clear_for(output, overwrite)
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # a killed earlier attempt
    staging.mkdir(parents=True)
    pixels = bool(items) and isinstance(items[0].source, np.ndarray)  # no files: PNG, not "original"
    encoding = ("png" if pixels else "original") if max_side is None else f"jpeg max_side={max_side} quality={quality}"
    writer = BinaryWriter(str(staging), chunk_bytes=chunk_bytes)
    written, size, skipped = 0, 0, []
    encode = Encoder(max_side, quality, verify)
    with _mapper(num_workers) as map_items, tqdm(total=len(items), unit="img", desc="prepare", disable=not progress,
                                                  dynamic_ncols=True) as bar:
        try:
            for encoded in map_items(encode, items):
                bar.update(1)
                if encoded.image is None:
                    skipped.append(f"{encoded.name}: {encoded.error}")
                    continue
                writer.add_item(written, {"image": encoded.image, "label": encoded.label, "name": encoded.name})
                written, size = written + 1, size + len(encoded.image)
        except DepthLossError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    if not written:
        shutil.rmtree(staging)
        raise ValueError(f"no readable images in {source} ({len(skipped)} unreadable); nothing written")
    writer.done()
    writer.merge()
    info = ShardInfo(source, classes, written, size, encoding, skipped)
    (staging / INFO_FILE).write_text(json.dumps(dataclasses.asdict(info), indent=1))
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)
    return info


class _mapper:
    """`map(fn, items)` in order: in this process (0 workers) or a pool of `num_workers` processes."""

    def __init__(self, num_workers: int) -> None:
        self.num_workers, self.pool = num_workers, None

    def __enter__(self):
        if self.num_workers <= 0:
            return map
        self.pool = multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(self.num_workers)
        return lambda fn, items: self.pool.imap(fn, items, chunksize=8)

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


# --- what lit-mae can read, as Items --------------------------------------------------------------

def folder_items(root: str | Path, labels: str = "folders") -> tuple[list[Item], list[str]]:
    """(items, class names) of an image folder: class sub-folders (`labels: folders`, the
    ImageNet layout) or any tree of images (`labels: none`, labels -1); names relative to `root`."""
    from lit_mae.datamodules.image_folder import class_folders, find_images

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} does not exist")
    classes = class_folders(root) if labels == "folders" else []
    groups = [(find_images(root / name), label) for label, name in enumerate(classes)] or [(find_images(root), -1)]
    items = [Item(str(path), label, path.relative_to(root).as_posix()) for files, label in groups for path in files]
    if not items:
        raise ValueError(f"no images under {root}" + (" (for a folder without class folders give --labels none)"
                                                       if labels == "folders" else ""))
    return items, classes


def cifar_items(root: str | Path, which: str = "cifar10", split: str = "train") -> tuple[list[Item], list[str]]:
    """(items, class names) of torchvision's CIFAR-10 or CIFAR-100 archives under `root`:
    `split` "train" (50,000 images) or "test" (10,000)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    dataset_class = {"cifar10": CIFAR10, "cifar100": CIFAR100}[which]
    if split not in ("train", "test"):
        raise ValueError(f"{which} has the splits train and test, got {split!r}")
    root = Path(root).expanduser()
    try:
        dataset = dataset_class(str(root), train=split == "train", download=False)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted ..."
        raise FileNotFoundError(f"no {dataset_class.__name__} archive under {root} (torchvision: {error}); "
                                f"extract {dataset_class.filename} there") from error
    pixels = dataset.data.transpose(0, 3, 1, 2)  # (N, 3, 32, 32)
    items = [Item(pixels[i], int(label), f"{which}/{split}/{i}") for i, label in enumerate(dataset.targets)]
    return items, list(dataset.classes)


def digits_items(split: str = "train", image_size: int = 16, seed: int = 0) -> tuple[list[Item], list[str]]:
    """(items, class names) of scikit-learn's digits at `image_size`, grey: `split` "train", "val"
    or "test" of DigitsDataModule's seeded 80/10/10 split (the same images for the same `seed`)."""
    from lit_mae.datamodules.base import split_indices
    from lit_mae.datamodules.digits import digits_pixels

    splits = ("train", "val", "test")
    if split not in splits:
        raise ValueError(f"the digits have the splits {', '.join(splits)}, got {split!r}")
    pixels, labels = digits_pixels(image_size, 1)  # (1797, 1, S, S) uint8
    indices = split_indices(len(labels), (0.1, 0.1), seed, "digits", "digits")[splits.index(split)]
    items = [Item(pixels[i].numpy(), int(labels[i]), f"digits/{split}/{i}") for i in indices.tolist()]
    return items, [str(d) for d in range(10)]

