"""Seeing N-band and 16-bit images: display bands and the per-band contrast stretch of the
reconstruction grid (lit_mae/visualize.py), the callback's choice, and `lit-mae visualize`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from conftest import tiny_config_values
from lit_mae import MAEConfig, MaskedAutoencoderViT
from lit_mae.cli.visualize import main as visualize_main
from lit_mae.interop import export_official
from lit_mae.visualize import reconstruction_grid, shown_bands

MEAN, STD = (0.03,) * 13, (0.02,) * 13


def model_of(channels: int) -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return MaskedAutoencoderViT(MAEConfig(**tiny_config_values(in_chans=channels))).eval()


def test_shown_bands_defaults_and_errors():
    assert shown_bands(3) == [0, 1, 2] and shown_bands(1) == [0]
    assert shown_bands(13) == [0, 1, 2] and shown_bands(2) == [0]
    assert shown_bands(13, [3, 2, 1]) == [3, 2, 1] and shown_bands(13, [7]) == [7]
    for bad in ([3, 2], [13, 2, 1], [-1]):
        with pytest.raises(ValueError, match=r"display_bands .*: give 1 band \(grey\) or 3 \(red, green, blue\), "
                                             r"each in 0\.\.12 \(the images have 13 bands\)"):
            shown_bands(13, bad)


def test_the_original_column_is_the_chosen_bands_stretched_by_numpys_percentiles():
    """12-bit data in a 16-bit unit fills 6% of [0, 1]: unstretched it is near black; stretched,
    each shown band's 2nd..98th percentile spans black..white."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4096, (2, 13, 16, 16)) / 65535  # (B, C, H, W) in the image's unit
    images = (torch.from_numpy(raw).float() - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1)
    grid = reconstruction_grid(model_of(13), images, MEAN, STD, display_bands=[3, 2, 1], stretch=True, pad=1)
    assert grid.shape == (3, 2 * 16 + 1, 4 * 16 + 3)
    shown = raw[:, [3, 2, 1]]  # (B, 3, H, W)
    low, high = np.quantile(shown.transpose(1, 0, 2, 3).reshape(3, -1), [0.02, 0.98], axis=1)  # (3,) each
    want = np.clip((shown - low[:, None, None]) / (high - low)[:, None, None], 0, 1)
    for row in range(2):
        got = grid[:, row * 17:row * 17 + 16, :16].numpy()
        assert np.abs(got.astype(float) - want[row] * 255).max() <= 1.0  # rounding only
    dark = reconstruction_grid(model_of(13), images, MEAN, STD, display_bands=[3, 2, 1], stretch=False)
    assert dark[:, :16, :16].float().mean() < 0.1 * 255 < grid[:, :16, :16].float().mean()


def test_one_band_shows_grey():
    images = torch.randn(2, 1, 16, 16)
    grid = reconstruction_grid(model_of(1), images, (0.5,), (0.2,), stretch=True)
    assert grid.shape[0] == 1
    thirteen = reconstruction_grid(model_of(13), torch.randn(2, 13, 16, 16), MEAN, STD, display_bands=[7])
    assert thirteen.shape[0] == 1


def test_rgb_grids_are_unchanged_by_the_new_options():
    images = torch.randn(2, 3, 16, 16)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model = model_of(3)
    assert torch.equal(reconstruction_grid(model, images, mean, std),
                       reconstruction_grid(model, images, mean, std, display_bands=[0, 1, 2], stretch=False))


def test_visualize_draws_13_band_16_bit_tiffs(tmp_path: Path, capsys):
    weights = export_official(model_of(13), tmp_path / "m13.pth")
    files = []
    for i in range(2):
        files.append(tmp_path / f"{i}.tif")
        tifffile.imwrite(files[-1], np.random.default_rng(i).integers(0, 4096, (13, 20, 20)).astype(np.uint16),
                         photometric="minisblack")
    out = tmp_path / "grid.png"
    with pytest.raises(SystemExit):  # a file recording no statistics: they must be given for 13 bands
        visualize_main(["--ckpt", str(weights), "--images", *map(str, files), "--out", str(out)])
    assert "does not record its data's mean/std: give --mean and --std" in capsys.readouterr().err
    visualize_main(["--ckpt", str(weights), "--images", *map(str, files), "--out", str(out), "--display-bands",
                    "3", "2", "1", "--mean", *map(str, MEAN), "--std", *map(str, STD)])
    with Image.open(out) as grid:
        assert grid.mode == "RGB"
        pixels = np.asarray(grid)
    assert pixels.std() > 40  # stretched (on by default for 16-bit files): not a near-black picture
