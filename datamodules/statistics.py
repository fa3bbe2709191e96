"""Per-channel mean and std of a training split, from a seeded sample of its images (`normalize:
auto` and `lit-mae stats`), in the unit the pipelines normalise in: fractions of full scale for
8- and 16-bit files (as ImageNet's 0.485, ...), raw values for signed-integer and float files."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from lit_mae.datamodules.arrays import ArrayLayout, read_full
from lit_mae.datamodules.images import UnreadableImageError, read_image

STATISTICS_SAMPLE = 512  # images read to compute the statistics (all of them when fewer)
MIN_STD = 1e-6  # a band whose std is below this (constant) gets std 1 and a warning
Statistics = tuple[tuple[float, ...], tuple[float, ...]]


def unit_reader(channels: int, full_depth: bool, layout: ArrayLayout = "auto") -> Callable[[Path], Tensor]:
    """path -> float (C, H, W) of the whole image, in the unit its pipeline normalises in."""
    if full_depth:
        return lambda path: read_full(path, channels, layout=layout)
    return lambda path: read_image(path, channels).float().div_(255)


def channel_statistics(files: Sequence[str | Path], read: Callable[[Path], Tensor], sample: int = STATISTICS_SAMPLE,
                       seed: int = 0, owner: str = "channel_statistics") -> Statistics:
    """(mean, std) per channel over every pixel of up to `sample` of `files`, drawn by a
    permutation seeded by `seed` (the same files on every run and rank). Unreadable files are
    skipped (a warning counts them); a ValueError when none can be read."""
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:sample].tolist()
    total = squares = None
    count, skipped = 0, []
    for index in order:
        try:
            pixels = read(Path(files[index])).double()  # (C, H, W)
        except UnreadableImageError as error:
            skipped.append(error.path)
            continue
        flat = pixels.flatten(1)  # (C, H*W)
        total = flat.sum(1) if total is None else total + flat.sum(1)
        squares = (flat ** 2).sum(1) if squares is None else squares + (flat ** 2).sum(1)
        count += flat.shape[1]
    if total is None:
        raise ValueError(f"{owner}: none of the {len(order)} sampled images could be read to compute mean/std "
                         f"(first: {skipped[:1]})")
    if skipped:
        warnings.warn(f"{owner}: {len(skipped)} of {len(order)} sampled images were unreadable and left out of "
                      f"the statistics: {skipped[:3]}", stacklevel=2)
    mean = total / count
    std = (squares / count - mean ** 2).clamp_min(0).sqrt()
    flat_bands = [c for c, s in enumerate(std.tolist()) if s < MIN_STD]
    if flat_bands:
        warnings.warn(f"{owner}: channel(s) {flat_bands} are constant in the sampled images; their std is set "
                      "to 1", stacklevel=2)
    return (tuple(float(f"{m:.7g}") for m in mean.tolist()),  # 7 significant digits: float32's, readable
            tuple(1.0 if s < MIN_STD else float(f"{s:.7g}") for s in std.tolist()))


def describe(statistics: Statistics) -> str:
    """YAML lines to paste under a DataModule's init_args."""
    mean, std = statistics
    return f"mean: [{', '.join(_short(m) for m in mean)}]\nstd: [{', '.join(_short(s) for s in std)}]"


def _short(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)
