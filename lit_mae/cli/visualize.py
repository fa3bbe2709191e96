"""`lit-mae visualize --ckpt CKPT --images a.jpg b.png --out grid.png`: a reconstruction grid
(original | masked | reconstruction | pasted) of image files, from weights in any format."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from lit_mae.datamodules.base import IMAGENET_MEAN, IMAGENET_STD
from lit_mae.datamodules.images import read_image
from lit_mae.interop import load_pretrained
from lit_mae.visualize import reconstruction_grid, save_png

def read_images(paths: Sequence[str | Path], size: int, channels: int) -> Tensor:
    """uint8 (B, C, size, size): the centre square of each file, resized (bicubic)."""
    def centre_square(height: int, width: int) -> tuple[int, int, int, int]:
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side, side

    return torch.stack([read_image(p, channels, centre_square, (size, size)) for p in paths])


def visualize_files(ckpt: str | Path, image_paths: Sequence[str | Path], out: str | Path,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    mask_ratio: float | None = None, seed: int = 0, scale: int = 1) -> Path:
    """Load weights in any format (`load_pretrained`), draw the grid of the image files, write a PNG.

    `mean`/`std` default to ImageNet's (for 3-channel models)."""
    model = load_pretrained(ckpt)
    C = model.config.in_chans
    mean = tuple(mean) if mean is not None else IMAGENET_MEAN
    std = tuple(std) if std is not None else IMAGENET_STD
    if len(mean) != C or len(std) != C:
        raise ValueError(f"the model has {C} channels: --mean {mean} and --std {std} need {C} values each")
    pixels = read_images(image_paths, model.config.img_size, C).float() / 255  # (B, C, S, S)
    images = (pixels - torch.tensor(mean).view(1, C, 1, 1)) / torch.tensor(std).view(1, C, 1, 1)
    return save_png(reconstruction_grid(model, images, mean, std, mask_ratio, seed), out, scale)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-mae visualize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="weights in any format load_pretrained reads")
    parser.add_argument("--images", required=True, nargs="+", help="image files, one grid row each")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--mask-ratio", type=float, default=None, help="default: the model's")
    parser.add_argument("--seed", type=int, default=0, help="seeds the mask")
    parser.add_argument("--mean", type=float, nargs="+", default=None, help="default: ImageNet's")
    parser.add_argument("--std", type=float, nargs="+", default=None, help="default: ImageNet's")
    parser.add_argument("--scale", type=int, default=1, help="upscale the PNG (nearest) this many times")
    args = parser.parse_args(argv)
    try:
        written = visualize_files(args.ckpt, args.images, args.out, args.mean, args.std, args.mask_ratio,
                                  args.seed, args.scale)
    except (OSError, ValueError) as error:
        parser.exit(2, f"lit-mae visualize: error: {error}\n")
    print(f"wrote {written}", file=sys.stderr)
