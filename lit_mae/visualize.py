"""Reconstruction grids, as in the MAE paper's figures: original | masked | reconstruction | pasted.

`reconstruction_grid` draws one row per image; `titled` makes it legible (small images enlarged,
nearest neighbour, and a title above each column); `save_png` writes it (the command is
`lit-mae visualize`, in `lit_mae.cli.visualize`). Pure torch and PIL.

Images of other than 1 or 3 channels are shown through `display_bands` (three bands as red,
green, blue, or one as grey; default the first three), and `stretch` maps each shown band's 2nd to
98th percentile over the original images to black..white in every panel (for 16-bit data, whose
values fill a small part of full scale, and for bands in raw units).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from lit_mae.models.ops import NORM_PIX_EPS, patch_mean_var, patchify, unpatchify

GREY = 0.5  # removed patches in the masked-input panel
COLUMN_TITLES = ("original", "masked input", "reconstruction", "visible pasted")
MIN_CELL = 96  # px: `titled` enlarges smaller images to at least this side
STRETCH_PERCENTILES = (0.02, 0.98)  # `stretch`: these quantiles of each band become black and white


def _as_pixels(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo the dataset normalisation: (B, C, H, W) normalised -> (B, C, H, W) in [0, 1] (not clamped)."""
    C = images.shape[1]
    if len(mean) != C or len(std) != C:
        raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} need {C} values (the images' channels)")
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, C, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, C, 1, 1)
    return images * std_t + mean_t


def predicted_images(images: Tensor, pred: Tensor, patch_size: int, norm_pix_loss: bool) -> Tensor:
    """The model's prediction as normalised images (B, C, H, W) like `images`.

    With `norm_pix_loss` each predicted patch (B, L, p*p*C) is in per-patch normalised space: it
    is mapped back with the mean and variance of the TRUE patch (display only; the model never
    sees them).
    """
    B, C, H, W = images.shape
    if norm_pix_loss:
        target = patchify(images, patch_size)  # (B, L, p*p*C)
        mean, var = patch_mean_var(target)  # as the loss
        pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mean
    return unpatchify(pred, patch_size, (H // patch_size, W // patch_size), C)


def shown_bands(channels: int, display_bands: Sequence[int] | None = None) -> list[int]:
    """The bands a grid shows: `display_bands` (1 for grey or 3 for RGB, each in [0, channels)),
    else every band of 1- or 3-channel images, else the first three (the first for 2 channels)."""
    if display_bands is None:
        return list(range(channels)) if channels in (1, 3) else list(range(3 if channels > 3 else 1))
    bands = [int(b) for b in display_bands]
    if len(bands) not in (1, 3) or any(not 0 <= b < channels for b in bands):
        raise ValueError(f"display_bands {list(display_bands)}: give 1 band (grey) or 3 (red, green, blue), each "
                         f"in 0..{channels - 1} (the images have {channels} bands)")
    return bands


def stretch_range(pixels: Tensor) -> tuple[Tensor, Tensor]:
    """(B, C, H, W) -> each band's (low, high) percentiles (`STRETCH_PERCENTILES`), (1, C, 1, 1) each."""
    values = pixels.transpose(0, 1).flatten(1).float()  # (C, B*H*W)
    low, high = torch.quantile(values, torch.tensor(STRETCH_PERCENTILES, device=values.device), dim=1)  # (C,) each
    high = torch.maximum(high, low + 1e-12)  # a constant band: no division by zero
    return low.view(1, -1, 1, 1), high.view(1, -1, 1, 1)


@torch.no_grad()
def reconstruction_panels(model: nn.Module, images: Tensor, mean: Sequence[float], std: Sequence[float],
                          mask_ratio: float | None = None, seed: int = 0, display_bands: Sequence[int] | None = None,
                          stretch: bool = False) -> Tensor:
    """(4, B, c, H, W) float pixels in [0, 1]: original, masked input, reconstruction, pasted;
    c = 1 or 3, the `display_bands` (`shown_bands`), each contrast-stretched with `stretch`
    (`stretch_range` of the original images, applied to every panel alike).

    `model` is a `MaskedAutoencoderViT`; `images` (B, C, H, W) normalised with `mean`/`std`. The
    mask comes from a CPU `torch.Generator` seeded by `seed` (the same on any device).
    """
    config = model.config
    p = config.patch_size
    weight = next(model.parameters())
    images = images.to(device=weight.device, dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:  # in the weights' dtype (a bf16 model), the pixel arithmetic below in float32
        out = model(images.to(weight.dtype), mask_ratio=mask_ratio, generator=torch.Generator().manual_seed(seed))
    finally:
        model.train(was_training)
    B, C, H, W = images.shape
    grid = (H // p, W // p)
    removed = out.mask.unsqueeze(-1).expand(-1, -1, p * p * C).to(images.dtype)  # (B, L, p*p*C)
    removed = unpatchify(removed, p, grid, C)  # (B, C, H, W), 1 = removed
    bands = shown_bands(C, display_bands)
    original = _as_pixels(images, mean, std)[:, bands]  # (B, c, H, W)
    recon = _as_pixels(predicted_images(images, out.pred.float(), p, config.norm_pix_loss), mean, std)[:, bands]
    removed = removed[:, bands]
    if stretch:
        low, high = stretch_range(original)
        original, recon = (original - low) / (high - low), (recon - low) / (high - low)
    masked = original * (1 - removed) + GREY * removed
    pasted = recon * removed + original * (1 - removed)
    return torch.stack([original, masked, recon, pasted]).clamp(0, 1).cpu()


def panels_to_grid(panels: Tensor, pad: int = 1) -> Tensor:
    """(4, B, C, H, W) in [0, 1] -> uint8 (C, B*H + (B-1)*pad, 4*W + 3*pad); white separators."""
    n_cols, B, C, H, W = panels.shape
    canvas = torch.ones(C, B * (H + pad) - pad, n_cols * (W + pad) - pad)
    for row in range(B):
        for col in range(n_cols):
            top, left = row * (H + pad), col * (W + pad)
            canvas[:, top:top + H, left:left + W] = panels[col, row]
    return (canvas * 255).round().clamp(0, 255).to(torch.uint8)


def reconstruction_grid(model: nn.Module, images: Tensor, mean: Sequence[float], std: Sequence[float],
                        mask_ratio: float | None = None, seed: int = 0, pad: int = 1,
                        display_bands: Sequence[int] | None = None, stretch: bool = False) -> Tensor:
    """uint8 (c, B*H + (B-1)*pad, 4*W + 3*pad): a row per image of `images` (B, C, H, W), normalised
    with `mean`/`std`: original | masked input (removed patches grey) | reconstruction |
    reconstruction with the visible patches pasted back. A fixed mask drawn from `seed`. c = 1 or
    3: the `display_bands`, contrast-stretched with `stretch` (`reconstruction_panels`)."""
    panels = reconstruction_panels(model, images, mean, std, mask_ratio, seed, display_bands, stretch)
    return panels_to_grid(panels, pad)


def save_png(grid: Tensor, path: str | Path, scale: int = 1) -> Path:
    """Write a uint8 (C, H, W) grid (C = 1 or 3) as a PNG, upscaled `scale` times (nearest)."""
    path = Path(path)
    array = grid.detach().cpu().permute(1, 2, 0).numpy().astype(np.uint8)  # (H, W, C)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def legible_scale(size: int, min_cell: int = MIN_CELL) -> int:
    """The whole factor that brings an image side of `size` px to at least `min_cell` px."""
    return max(1, math.ceil(min_cell / size))


def titled(grid: Tensor, scale: int = 1, titles: Sequence[str] = COLUMN_TITLES, pad: int = 1) -> Tensor:
    """A grid of `reconstruction_grid` (uint8 (C, H, W), `len(titles)` columns with `pad` between
    them) enlarged `scale` times (nearest) under a white band with each column's title: uint8
    (C, band + scale*H, scale*W). The font shrinks until every title fits its column."""
    C, H, W = grid.shape
    n = len(titles)
    cell = (W - (n - 1) * pad) / n * scale  # px, a column's width once enlarged
    big = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)  # (C, scale*H, scale*W)
    size = max(8, min(18, round(cell / 7)))
    font = _font(size)
    while size > 6 and max(_text_width(font, title) for title in titles) > cell - 2:
        size -= 1
        font = _font(size)
    band = size + 8
    header = Image.new("L", (W * scale, band), 255)
    draw = ImageDraw.Draw(header)
    for column, title in enumerate(titles):
        centre = (column * (W - (n - 1) * pad) / n + column * pad) * scale + cell / 2
        draw.text((centre - _text_width(font, title) / 2, 3), title, fill=0, font=font)
    top = torch.from_numpy(np.array(header)).unsqueeze(0).expand(C, -1, -1)  # (C, band, scale*W)
    return torch.cat([top, big], dim=1)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's embedded scalable font (needs FreeType)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()  # the fixed 11 px bitmap font


def _text_width(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str) -> float:
    return float(font.getlength(text))
