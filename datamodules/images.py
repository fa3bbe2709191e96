"""Reading image files: any mode as upright RGB (or L), corrupt files reported, crops decoded cheaply.

Everything returns uint8 tensors (C, H, W); normalisation happens later on the whole batch, on the
device (`ImageDataModule.on_after_batch_transfer`), so workers never touch floats.
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


def to_channels(image: Image.Image, channels: int) -> Image.Image:
    """Upright RGB (channels 3) or L (channels 1) from any mode: EXIF orientation applied, palette
    and alpha flattened (alpha dropped, as torchvision's and timm's loaders do), CMYK converted,
    16-bit grayscale reduced to its top 8 bits (Pillow's own conversion would clip at 255)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        high = np.asarray(image).astype(np.int64) >> 8  # (H, W), 0..255 for 16-bit data
        image = Image.fromarray(high.clip(0, 255).astype(np.uint8))
    elif image.mode == "P":
        image = image.convert("RGBA")  # palette transparency becomes an alpha channel first
    return image.convert("RGB" if channels == 3 else "L")


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
            return to_channels(image, channels)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, f"{type(error).__name__}: {error}") from error


def read_image(path: str | Path, channels: int = 3, plan: CropPlan | None = None,
               size: tuple[int, int] | None = None,
               interpolation: InterpolationMode = InterpolationMode.BICUBIC) -> Tensor:
    """uint8 (C, H, W) of a file; with `plan` and `size`, the planned box resized to `size`.

    When the box is at least twice `size`, a plain JPEG is decoded at 1/2, 1/4 or 1/8 scale by the
    decoder itself (the same crop of the scene, far fewer pixels to decode and resample).
    Raises `UnreadableImageError` naming the file for anything that is not a readable image.
    """
    try:
        with Image.open(path) as image:
            upright = image.getexif().get(_EXIF_ORIENTATION, 1) == 1
            if plan is not None and size is not None and image.format == "JPEG" and upright:
                box = plan(image.height, image.width)
                scale = _draft_scale(box, size)
                if scale > 1:
                    full_height, full_width = image.height, image.width
                    # Pillow picks the reduction as size // requested: ask for exactly 1/scale
                    image.draft(image.mode, (full_width // scale, full_height // scale))
                    ratio_y, ratio_x = image.height / full_height, image.width / full_width
                    top, left, height, width = box
                    box = (round(top * ratio_y), round(left * ratio_x),
                           max(1, round(height * ratio_y)), max(1, round(width * ratio_x)))
                pixels = to_tensor(to_channels(image, channels))
                return TF.resized_crop(pixels, *box, list(size), interpolation=interpolation, antialias=True)
            pixels = to_tensor(to_channels(image, channels))
    except UnreadableImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, f"{type(error).__name__}: {error}") from error
    if plan is None or size is None:
        return pixels
    box = plan(pixels.shape[1], pixels.shape[2])
    return TF.resized_crop(pixels, *box, list(size), interpolation=interpolation, antialias=True)
