"""Reading image files: any mode as upright RGB (or L), corrupt files reported, crops decoded cheaply.

Everything returns uint8 tensors (C, H, W); normalisation happens later on the whole batch, on the
device (`BaseImageDataModule.on_after_batch_transfer`), so workers never touch floats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

Box = tuple[int, int, int, int]  # top, left, height, width, in pixels of the upright image
CropPlan = Callable[[int, int], Box]  # (H, W) of the upright image -> the box to keep
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_EXIF_ORIENTATION = 0x0112


class UnreadableImageError(OSError):
    """A file that is not a readable image (corrupt, truncated, unknown format)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = str(path)


def to_channels(image: Image.Image, channels: int, orient: bool = True) -> Image.Image:
    """Upright RGB (channels 3) or L (channels 1) from any mode: EXIF orientation applied (unless
    `orient` is false: the caller knows it is upright), palette and alpha flattened (alpha dropped,
    as torchvision's and timm's loaders do), CMYK converted, 16-bit grayscale reduced to its top 8
    bits (Pillow's own conversion would clip at 255). May return `image` itself when nothing changes."""
    if orient:
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        high = np.asarray(image).astype(np.int64) >> 8  # (H, W), 0..255 for 16-bit data
        image = Image.fromarray(high.clip(0, 255).astype(np.uint8))
    elif image.mode == "P":
        image = image.convert("RGBA")  # palette transparency becomes an alpha channel first
    mode = "RGB" if channels == 3 else "L"
    return image if image.mode == mode else image.convert(mode)


def to_tensor(image: Image.Image) -> Tensor:
    """uint8 (C, H, W) from an RGB or L image, without going through floats."""
    array = np.array(image, dtype=np.uint8, copy=True)  # (H, W) or (H, W, C), writable for torch
    tensor = torch.from_numpy(array)
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def _draft_scale(box: Box, size: tuple[int, int]) -> int:
    """Largest JPEG decoder reduction (1, 2, 4 or 8) that keeps the box at least `size` large."""
    scale = 1
    while scale < 8 and box[2] >= 2 * scale * size[0] and box[3] >= 2 * scale * size[1]:
        scale *= 2
    return scale


def load_pil(path: str | Path, channels: int = 3) -> Image.Image:
    """The whole file as an upright RGB or L PIL image (for PIL-based transforms such as RandAugment)."""
    try:
        with Image.open(path) as image:
            converted = to_channels(image, channels)
            return converted.copy() if converted is image else converted  # outlive the closed file
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, f"{type(error).__name__}: {error}") from error


def _draft(image: Image.Image, box: Box, size: tuple[int, int]) -> Box:
    """Let the JPEG decoder shrink `image` by 1/2, 1/4 or 1/8 if the box stays at least `size`;
    the box in the pixels that will be decoded."""
    scale = _draft_scale(box, size)
    if scale == 1:
        return box
    full_height, full_width = image.height, image.width
    image.draft(image.mode, (full_width // scale, full_height // scale))  # Pillow divides: exact 1/scale
    ratio_y, ratio_x = image.height / full_height, image.width / full_width
    top, left, height, width = box
    return (round(top * ratio_y), round(left * ratio_x),
            max(1, round(height * ratio_y)), max(1, round(width * ratio_x)))


def read_image(path: str | Path, channels: int = 3, plan: CropPlan | None = None,
               size: tuple[int, int] | None = None,
               interpolation: InterpolationMode = InterpolationMode.BICUBIC) -> Tensor:
    """uint8 (C, H, W) of a file; with `plan` and `size`, the planned box resized to `size`.

    Only the box is converted and copied into a tensor. When it is at least twice `size`, a JPEG
    is decoded at 1/2, 1/4 or 1/8 scale by the decoder itself (the same crop of the scene, far
    fewer pixels to decode and resample). EXIF-rotated files are turned upright first.
    Raises `UnreadableImageError` naming the file for anything that is not a readable image.
    """
    box = None
    try:
        with Image.open(path) as image:
            if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                image = to_channels(image, channels)  # upright (decoded) before the plan sees its size
            if plan is not None and size is not None:
                box = plan(image.height, image.width)
                if image.format == "JPEG":  # a file not yet decoded
                    box = _draft(image, box, size)
                top, left, height, width = box
                image = image.crop((left, top, left + width, top + height))  # decodes; copies the box
            pixels = to_tensor(to_channels(image, channels, orient=False))
    except UnreadableImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, f"{type(error).__name__}: {error}") from error
    if box is None:
        return pixels
    return TF.resize(pixels, list(size), interpolation=interpolation, antialias=True)
