"""Reading images at their own bit depth and band count: multi-band TIFF / GeoTIFF (tifffile),
`.npy` arrays, 16-bit PNG. The 8-bit RGB / grey reader is `images.read_image`; this one is used for
any other channel count and for `depth: full` (see `BaseImageDataModule`).

Values: `read_array` gives the file's own dtype, bands first (C, H, W). `to_unit` makes floats in
the image's own unit: unsigned 8- and 16-bit integers as fractions of full scale (uint8 / 255,
uint16 / 65535, so mean/std read like ImageNet's 0.485, ...), everything else (signed integers,
floats, uint32) as it is (raw units: reflectance, Hounsfield units). No 8-bit step anywhere.

Band axis: TIFF files say which axes are Y and X (tifffile's series axes); the other one holds the
bands. `.npy` files do not: `layout` "CHW" or "HWC" fixes it, "auto" takes the axis (first or
last) whose length is `channels`, the first when both are, else the shorter of the two (which
the band count check then names).

Sources: a path, or an in-memory file that carries its format's `suffix` as a path would (a shard
record, `lit_mae.datamodules.shards.NamedBytes`): the same reader, the same values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from lit_mae.datamodules.images import CropPlan, UnreadableImageError, to_channels

ArrayLayout = Literal["auto", "CHW", "HWC"]
ARRAY_SUFFIXES = (".npy",)
TIFF_SUFFIXES = (".tif", ".tiff")
UNIT_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}  # full scale -> 1.0
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class BandCountError(UnreadableImageError):
    """A file whose band count is not the DataModule's `channels` (skipped and counted, or raised
    with `strict`, like any unreadable file)."""

    def __init__(self, path: str | Path, bands: int, channels: int) -> None:
        super().__init__(path, f"it has {bands} band(s) but the DataModule's channels is {channels}")


def read_array(path: Any, channels: int, layout: ArrayLayout = "auto") -> np.ndarray:
    """The file's pixels as (C, H, W) in its own dtype, C == `channels` (a one-band file is repeated
    for `channels: 3`, as the 8-bit reader does); `BandCountError` for another band count,
    `UnreadableImageError` for anything unreadable. `.npy` files are memory-mapped: a crop of the
    result reads only its rows."""
    suffix = suffix_of(path)
    try:
        if suffix in ARRAY_SUFFIXES:
            array = _bands_first(_load_npy(path), channels, layout, path)
        elif suffix in TIFF_SUFFIXES:
            array = _read_tiff(path, channels, layout)
        else:
            array = _read_pil(path, channels)
    except UnreadableImageError:
        raise
    except (OSError, ValueError, SyntaxError, KeyError, IndexError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, f"{type(error).__name__}: {error}") from error
    if array.shape[0] == channels:
        return array
    if array.shape[0] == 1 and channels == 3:
        return np.repeat(array, 3, axis=0)
    raise BandCountError(path, array.shape[0], channels)


def is_eight_bit(path: Any, layout: ArrayLayout = "auto") -> bool:
    """Whether a file holds 8-bit pixels (read from its header, not its pixels where the format
    allows): decides `depth: auto`."""
    suffix = suffix_of(path)
    try:
        if suffix in ARRAY_SUFFIXES:
            return _load_npy(path).dtype == np.uint8
        if suffix in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return tif.series[0].dtype == np.uint8
        with Image.open(path) as image:
            return image.mode not in _SIXTEEN_BIT_MODES + ("I", "F")
    except Exception as error:  # any reading problem: the caller tries the next file
        raise UnreadableImageError(path, f"{type(error).__name__}: {error}") from error


def suffix_of(source: Any) -> str:
    """The lower-case suffix the readers dispatch on: a path's, or an in-memory file's `suffix`."""
    return (source.suffix if hasattr(source, "suffix") else Path(source).suffix).lower()


def _load_npy(source: Any) -> np.ndarray:
    """A .npy array: memory-mapped from a path, read whole from an in-memory file (no file to map)."""
    return np.load(source, mmap_mode="r" if isinstance(source, (str, os.PathLike)) else None, allow_pickle=False)


def to_unit(array: np.ndarray) -> Tensor:
    """float32 (C, H, W) in the image's own unit (module docstring): exact for 16-bit values."""
    values = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
    scale = UNIT_SCALE.get(array.dtype)
    return values.div_(scale) if scale is not None else values


def read_full(path: Any, channels: int, plan: CropPlan | None = None, size: tuple[int, int] | None = None,
              interpolation: InterpolationMode = InterpolationMode.BICUBIC, layout: ArrayLayout = "auto") -> Tensor:
    """float32 (C, H, W) in the image's own unit (`to_unit`); with `plan` and `size`, the planned
    box (of the (H, W) image) resized to `size` (antialiased; bicubic may overshoot the range a
    little, as it does on floats everywhere)."""
    array = read_array(path, channels, layout)  # (C, H, W)
    if plan is None or size is None:
        return to_unit(array)
    top, left, height, width = plan(array.shape[1], array.shape[2])
    pixels = to_unit(array[:, top:top + height, left:left + width])  # only the box is read and copied
    return TF.resize(pixels, list(size), interpolation=interpolation, antialias=True)


def _bands_first(array: np.ndarray, channels: int, layout: ArrayLayout, path: str | Path) -> np.ndarray:
    """(H, W) -> (1, H, W); (C, H, W) or (H, W, C) -> (C, H, W) by `layout` (module docstring)."""
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise UnreadableImageError(path, f"an array of shape {array.shape}: expected (H, W), (C, H, W) or (H, W, C)")
    if layout not in ("auto", "CHW", "HWC"):
        raise ValueError(f"array_layout must be 'auto', 'CHW' or 'HWC', got {layout!r}")
    if layout == "auto":
        first, last = array.shape[0] == channels, array.shape[-1] == channels
        layout = "CHW" if first or (not last and array.shape[0] <= array.shape[-1]) else "HWC"
    return array if layout == "CHW" else np.moveaxis(array, -1, 0)


def _read_tiff(path: Any, channels: int, layout: ArrayLayout) -> np.ndarray:
    try:
        import tifffile
    except ImportError as error:
        raise ImportError("reading multi-band or 16-bit TIFF needs tifffile: pip install 'lit-mae[multiband]'") from error
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array, axes = series.asarray(), series.axes
    keep = [i for i, n in enumerate(array.shape) if n > 1 or axes[i] in "YX"]  # drop singleton extra axes
    array, axes = array.reshape([array.shape[i] for i in keep]), "".join(axes[i] for i in keep)
    if array.ndim == 3 and "Y" in axes and "X" in axes:
        band = next(i for i, a in enumerate(axes) if a not in "YX")  # e.g. SYX, QYX, CYX, YXS
        return np.moveaxis(array, band, 0)
    return _bands_first(array, channels, layout, path)


def _read_pil(path: Any, channels: int) -> np.ndarray:
    """PNG, JPEG, ... : 16-bit grey as uint16, 32-bit float as float32, else 8-bit via `to_channels`."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and opened.format == "PNG"):
            return np.asarray(image).astype(np.uint16)[None]  # a PNG holds at most 16 bits
        if image.mode in ("I", "F"):
            return np.asarray(image).astype(np.int32 if image.mode == "I" else np.float32)[None]
        if channels not in (1, 3):
            raise BandCountError(path, len([b for b in image.getbands() if b != "A"]), channels)
        array = np.asarray(to_channels(image, channels, orient=False))  # uint8 (H, W) or (H, W, 3)
        return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
