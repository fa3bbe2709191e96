"""`lit-mae visualize --ckpt CKPT --images a.jpg b.png --out grid.png`: a reconstruction grid
(original | masked | reconstruction | visible pasted back) of image files, from weights in any
format. The images are normalised as the weights' training data was: with the mean/std the
checkpoint records (lit-mae checkpoints, Hugging Face directories with a preprocessor config),
else ImageNet's (a note says so); --mean/--std override.

Multi-band, 16-bit and float images (TIFF, .npy, 16-bit PNG) are read at their own depth, in
the unit their DataModule normalises in (fractions of full scale for 8/16-bit files); the grid
shows --display-bands (3 as RGB or 1 as grey; default the first three) with a per-band contrast
stretch (on by default for such images; --stretch / --no-stretch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from lit_mae.datamodules.arrays import is_eight_bit, read_full
from lit_mae.datamodules.base import imagenet_statistics
from lit_mae.datamodules.images import read_image
from lit_mae.interop import load_pretrained
from lit_mae.interop.normalisation import Statistics, recorded_statistics
from lit_mae.visualize import legible_scale, reconstruction_grid, save_png, titled


def centre_square(height: int, width: int) -> tuple[int, int, int, int]:
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def read_images(paths: Sequence[str | Path], size: int, channels: int) -> Tensor:
    """uint8 (B, C, size, size): the centre square of each file, resized (bicubic)."""
    return torch.stack([read_image(p, channels, centre_square, (size, size)) for p in paths])


def read_unit_images(paths: Sequence[str | Path], size: int, channels: int) -> tuple[Tensor, bool]:
    """(float (B, C, size, size) in the images' own unit, whether any is not 8-bit RGB / grey): 8-bit
    1- or 3-channel files as `read_images` / 255, others at their own depth (`read_full`)."""
    deep = channels not in (1, 3) or not all(is_eight_bit(p) for p in paths)
    if not deep:
        return read_images(paths, size, channels).float() / 255, False
    return torch.stack([read_full(p, channels, centre_square, (size, size)) for p in paths]), True


def display_statistics(ckpt: str | Path, channels: int, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None) -> Statistics:
    """The mean/std to normalise the images with: `mean`/`std` when given, else what the weights
    record, else ImageNet's (averaged over channels for grey models); a ValueError when none fit
    `channels`."""
    if mean is not None and std is not None:
        found = Statistics(tuple(mean), tuple(std), "--mean/--std")
    elif mean is not None or std is not None:
        raise ValueError("give both --mean and --std, or neither")
    else:
        found = recorded_statistics(ckpt) or _imagenet(channels)
    if found is None:
        raise ValueError(f"the model has {channels} channels and {ckpt} does not record its data's mean/std: give "
                         "--mean and --std (lit-mae stats prints them for a folder)")
    if len(found.mean) != channels or len(found.std) != channels:
        raise ValueError(f"the model has {channels} channels: mean {found.mean} and std {found.std} "
                         f"({found.source}) need {channels} values each; give --mean and --std")
    return found


def _imagenet(channels: int) -> Statistics | None:
    if channels not in (1, 3):
        return None
    note = "ImageNet's: the checkpoint does not record how its images were normalised; set --mean/--std if not"
    return Statistics(*imagenet_statistics(channels), note)


def visualize_files(ckpt: str | Path, image_paths: Sequence[str | Path], out: str | Path,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    mask_ratio: float | None = None, seed: int = 0, scale: int | None = None,
                    display_bands: Sequence[int] | None = None, stretch: bool | None = None) -> tuple[Path, Statistics]:
    """Load weights in any format (`load_pretrained`), draw the titled grid of the image files
    (enlarged `scale` times; default: each image to at least 96 px), write a PNG. `display_bands`
    and `stretch` as in `reconstruction_grid` (`stretch` None: on for images that are not 8-bit
    RGB / grey). Returns the PNG's path and the statistics used."""
    model = load_pretrained(ckpt)
    C, size = model.config.in_chans, model.config.img_size
    statistics = display_statistics(ckpt, C, mean, std)
    pixels, deep = read_unit_images(image_paths, size, C)  # (B, C, S, S)
    shape = (1, C, 1, 1)
    images = (pixels - torch.tensor(statistics.mean).view(shape)) / torch.tensor(statistics.std).view(shape)
    grid = reconstruction_grid(model, images, statistics.mean, statistics.std, mask_ratio, seed,
                               display_bands=display_bands, stretch=deep if stretch is None else stretch)
    return save_png(titled(grid, legible_scale(size) if scale is None else scale), out), statistics


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-mae visualize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="weights in any format load_pretrained reads")
    parser.add_argument("--images", required=True, nargs="+", help="image files, one grid row each")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--mask-ratio", type=float, default=None, help="default: the model's")
    parser.add_argument("--seed", type=int, default=0, help="seeds the mask")
    parser.add_argument("--mean", type=float, nargs="+", default=None,
                        help="per channel; default: the checkpoint's, else ImageNet's")
    parser.add_argument("--std", type=float, nargs="+", default=None,
                        help="per channel; default: the checkpoint's, else ImageNet's")
    parser.add_argument("--scale", type=int, default=None,
                        help="enlarge the PNG (nearest) this many times; default: images to at least 96 px")
    parser.add_argument("--display-bands", type=int, nargs="+", default=None,
                        help="bands shown: 3 as red green blue (e.g. 3 2 1) or 1 as grey; default the first three")
    parser.add_argument("--stretch", action=argparse.BooleanOptionalAction, default=None,
                        help="per-band 2-98%% contrast stretch; default: on for images that are not 8-bit RGB/grey")
    args = parser.parse_args(argv)
    try:
        written, statistics = visualize_files(args.ckpt, args.images, args.out, args.mean, args.std,
                                              args.mask_ratio, args.seed, args.scale, args.display_bands, args.stretch)
    except (OSError, ValueError) as error:
        parser.exit(2, f"lit-mae visualize: error: {error}\n")
    print(f"normalised with mean {statistics.mean}, std {statistics.std} ({statistics.source})", file=sys.stderr)
    print(f"wrote {written}", file=sys.stderr)
