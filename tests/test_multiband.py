"""Images beyond 8-bit RGB (datamodules/arrays.py, statistics.py, the float form of transforms.py):
multi-band TIFF, .npy arrays and 16-bit PNG keep their depth; any channel count; wrong band counts
skipped or raised; per-channel statistics; augmentation on N channels; 8-bit RGB unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torchvision import transforms as T

from lit_mae.datamodules import ImageFolderDataModule
from lit_mae.datamodules.arrays import BandCountError, read_array, read_full, to_unit
from lit_mae.datamodules.base import IMAGENET_MEAN, IMAGENET_STD
from lit_mae.datamodules.images import read_image
from lit_mae.datamodules.transforms import RECIPES, Augment, CropAndFlip, pipeline

H, W = 20, 24


def bands(seed: int, count: int = 13, high: int = 4096, dtype=np.uint16) -> np.ndarray:
    """(count, H, W) seeded values of 12-bit data in 16-bit files, as Sentinel-2 has."""
    return np.random.default_rng(seed).integers(0, high, (count, H, W)).astype(dtype)


def folder(root: Path, files: dict[str, np.ndarray]) -> Path:
    """Write each array by suffix: .tif (tifffile, bands first), .npy, .png (PIL, one band)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, array in files.items():
        path = root / name
        if path.suffix == ".tif":
            tifffile.imwrite(path, array, photometric="minisblack")
        elif path.suffix == ".npy":
            np.save(path, array)
        else:
            Image.fromarray(array).save(path)
    return root


def make_dm(root: Path, **kwargs) -> ImageFolderDataModule:
    settings = dict(labels="none", image_size=16, batch_size=4, num_workers=0, persistent_workers=False)
    dm = ImageFolderDataModule(str(root), **{**settings, **kwargs})
    dm.setup("fit")
    return dm


# --- reading at full depth ----------------------------------------------------------------------

@pytest.mark.parametrize("how", ["pages", "separate", "contiguous"])
def test_a_13_band_16_bit_tiff_reads_back_exactly_in_any_layout(tmp_path: Path, how: str):
    want = bands(0)
    path = tmp_path / "scene.tif"
    if how == "contiguous":  # (H, W, bands) samples, as many GeoTIFF writers store them
        tifffile.imwrite(path, np.moveaxis(want, 0, -1), photometric="minisblack", planarconfig="contig")
    else:
        tifffile.imwrite(path, want, photometric="minisblack", **({"planarconfig": "separate"} if how == "separate" else {}))
    got = read_array(path, channels=13)
    assert got.dtype == np.uint16 and np.array_equal(got, want)
    unit = read_full(path, channels=13)
    assert unit.dtype == torch.float32
    np.testing.assert_array_equal(unit.numpy(), (want / 65535).astype(np.float32))  # no 8-bit step


def test_a_16_bit_grey_png_keeps_every_level(tmp_path: Path):
    want = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 131  # levels that differ in their low bits
    path = folder(tmp_path, {"g.png": want}) / "g.png"
    with Image.open(path) as stored:
        assert stored.mode == "I;16"
    assert np.array_equal(read_array(path, channels=1)[0], want)
    assert torch.equal(read_full(path, channels=1)[0], torch.from_numpy(want.astype(np.float32) / 65535))
    # the 8-bit reader keeps its documented top-8-bits rule (the `depth: 8bit` path)
    assert torch.equal(read_image(path, channels=1)[0], torch.from_numpy((want >> 8).astype(np.uint8)))


@pytest.mark.parametrize("layout, stored", [("auto", "CHW"), ("auto", "HWC"), ("CHW", "CHW"), ("HWC", "HWC")])
def test_npy_arrays_take_their_band_axis_from_the_layout(tmp_path: Path, layout: str, stored: str):
    want = bands(1, count=4, dtype=np.float32) / 7.0  # float: raw units, taken as they are
    array = want if stored == "CHW" else np.moveaxis(want, 0, -1)
    path = folder(tmp_path, {"a.npy": np.ascontiguousarray(array)}) / "a.npy"
    got = read_array(path, channels=4, layout=layout)
    assert np.array_equal(got, want)
    assert torch.equal(to_unit(got), torch.from_numpy(want))


def test_a_square_npy_array_follows_the_explicit_layout(tmp_path: Path):
    cube = np.arange(4 * 4 * 4, dtype=np.uint16).reshape(4, 4, 4)  # every axis 4 long: auto takes CHW
    path = folder(tmp_path, {"c.npy": cube}) / "c.npy"
    assert np.array_equal(read_array(path, 4), cube)
    assert np.array_equal(read_array(path, 4, layout="HWC"), np.moveaxis(cube, -1, 0))


def test_a_wrong_band_count_is_named_or_skipped_and_counted(tmp_path: Path):
    files = {f"{i}.tif": bands(i) for i in range(5)}
    files["odd.tif"] = bands(9, count=5)
    root = folder(tmp_path / "data", files)
    with pytest.raises(BandCountError, match=r"odd\.tif: it has 5 band\(s\) but the DataModule's channels is 13"):
        read_array(root / "odd.tif", channels=13)
    dm = make_dm(root, channels=13, augment=None, batch_size=6, mean=[0.03] * 13, std=[0.02] * 13)
    with pytest.warns(UserWarning, match=r"skipping cannot read image .*odd\.tif: it has 5 band"):
        batch = next(iter(dm.train_dataloader()))
    assert batch.skipped == 1 and batch.pixels.shape == (5, 13, 16, 16)
    strict = make_dm(root, channels=13, augment=None, batch_size=6, mean=[0.03] * 13, std=[0.02] * 13, strict=True)
    with pytest.raises(BandCountError):
        next(iter(strict.train_dataloader()))


# --- the DataModule: depth, statistics, batches ----------------------------------------------------

def test_normalize_auto_computes_numpys_statistics_and_stores_them(tmp_path: Path):
    files = {f"{i}.tif": bands(i) for i in range(8)}
    dm = make_dm(folder(tmp_path, files), channels=13, val_fraction=0.25)
    assert dm.depth == "full" and dm.full_depth
    train = np.stack([tifffile.imread(p) for p in dm.splits["train"].sources]).astype(np.float64) / 65535
    np.testing.assert_allclose(dm.mean, train.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(dm.std, train.std(axis=(0, 2, 3)), rtol=1e-6)
    assert list(dm.hparams["mean"]) == list(dm.mean) and list(dm.hparams["std"]) == list(dm.std)
    again = ImageFolderDataModule(**dm.hparams)  # as a checkpoint rebuilds it: given, not recomputed
    again.setup("fit")
    assert (again.mean, again.std) == (dm.mean, dm.std) and again.statistics_given
    # batches: float32 normalised in the workers, left alone on the device, at full depth
    images, _ = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert images.dtype == torch.float32 and images.shape == (2, 13, 16, 16)
    assert abs(images.mean().item()) < 0.3 and 0.5 < images.std().item() < 1.5


def test_grey_never_gets_imagenets_rgb_statistics(tmp_path: Path):
    grey8 = folder(tmp_path / "g8", {f"{i}.png": bands(i, 1, 256, np.uint8)[0] for i in range(4)})
    eight = make_dm(grey8, channels=1)
    assert (eight.depth, eight.mean, eight.std) == ("8bit", (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,))
    grey16 = folder(tmp_path / "g16", {f"{i}.png": bands(i, 1)[0] for i in range(4)})
    deep = make_dm(grey16, channels=1)
    pixels = np.stack([np.array(Image.open(p)) for p in sorted(grey16.iterdir())]) / 65535
    assert deep.depth == "full" and deep.mean == pytest.approx((pixels.mean(),), rel=1e-5)
    with pytest.raises(ValueError, match=r"normalize: 'imagenet' has statistics for 1 or 3 channels, not 13"):
        ImageFolderDataModule(str(tmp_path), channels=13, normalize="imagenet")


def test_8_bit_rgb_stays_uint8_with_imagenet_statistics(tmp_path: Path):
    rgb = {f"{i}.png": np.moveaxis(bands(i, 3, 256, np.uint8), 0, -1).copy() for i in range(4)}
    dm = make_dm(folder(tmp_path, rgb), augment="pretrain")
    assert (dm.depth, dm.full_depth, dm.mean, dm.std) == ("8bit", False, IMAGENET_MEAN, IMAGENET_STD)
    assert type(dm.train_pipeline()) is CropAndFlip
    assert next(iter(dm.train_dataloader())).pixels.dtype == torch.uint8


@pytest.mark.parametrize("field, value, message", [
    ("channels", 0, r"channels must be an integer >= 1"),
    ("depth", "16bit", r"depth must be one of \('auto', '8bit', 'full'\), got '16bit'"),
    ("array_layout", "WHC", r"array_layout must be one of"),
    ("normalize", "dataset", r"normalize must be 'auto', 'imagenet' or null, got 'dataset'"),
])
def test_bad_settings_are_named(tmp_path: Path, field: str, value, message: str):
    with pytest.raises(ValueError, match=message):
        ImageFolderDataModule(str(tmp_path), channels=13 if field != "channels" else value,
                              **({field: value} if field != "channels" else {}))


def test_8bit_depth_is_for_one_or_three_channels(tmp_path: Path):
    with pytest.raises(ValueError, match=r"depth: '8bit' reads 1- or 3-channel images; 13 channels"):
        ImageFolderDataModule(str(tmp_path), channels=13, depth="8bit")


# --- augmentation on N channels ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_crop_flip_resize_work_on_13_bands_of_any_dtype(tmp_path: Path, dtype):
    array = bands(2, high=200).astype(dtype)
    path = folder(tmp_path, {"s.npy": array}) / "s.npy"
    crop = CropAndFlip(RECIPES["pretrain"], 16, channels=13, full_depth=True)
    torch.manual_seed(0)
    got = crop(path)
    assert got.shape == (13, 16, 16) and got.dtype == torch.float32
    # torchvision's own RandomResizedCrop + flip on the array in the image's unit, same seed
    unit = torch.from_numpy(array.astype(np.float32) / {np.uint8: 255, np.uint16: 65535}.get(dtype, 1))
    reference = T.Compose([T.RandomResizedCrop(16, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC,
                                               antialias=True), T.RandomHorizontalFlip()])
    torch.manual_seed(0)
    torch.testing.assert_close(got, reference(unit), atol=1e-6, rtol=1e-5)


def test_the_float_form_draws_the_same_crops_and_flips_as_the_uint8_form(tmp_path: Path):
    """Geometry and randomness are shared: a 3-band 8-bit image through both forms agrees within
    rounding (the uint8 form rounds to levels, between its two resampling passes too)."""
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([100 + 80 * np.sin(x / 3 + c) * np.cos(y / 4) for c in range(3)], -1).round().astype(np.uint8)
    path = folder(tmp_path, {"rgb.png": rgb}) / "rgb.png"
    eight = CropAndFlip(RECIPES["pretrain"], 16, channels=3)
    full = CropAndFlip(RECIPES["pretrain"], 16, channels=3, full_depth=True)
    for seed in range(4):
        torch.manual_seed(seed)
        a = eight(path).float()
        torch.manual_seed(seed)
        b = full(path) * 255
        assert (a - b).abs().max() <= 1.0


def test_randaugment_refuses_13_bands_and_16_bit(tmp_path: Path):
    for channels in (13, 3):
        with pytest.raises(ValueError, match=r"RandAugment works on 8-bit images with 1 or 3 channels"):
            pipeline(RECIPES["finetune"], 16, channels, (0.5,) * channels, (0.2,) * channels, full_depth=True)
    root = folder(tmp_path, {f"{i}.tif": bands(i) for i in range(3)})
    with pytest.raises(ValueError, match=r"set rand_augment: null"):
        make_dm(root, channels=13, augment="finetune")


def test_random_erasing_works_on_13_bands(tmp_path: Path):
    path = folder(tmp_path, {"s.tif": bands(4)}) / "s.tif"
    mean, std = (0.03,) * 13, (0.02,) * 13
    plain = pipeline(Augment(crop_scale=None, hflip=False), 16, 13, mean, std)
    erased = pipeline(Augment(crop_scale=None, hflip=False, random_erasing=1.0), 16, 13, mean, std)
    torch.manual_seed(0)
    a, b = plain(path), erased(path)
    assert a.shape == b.shape == (13, 16, 16)
    changed = (a != b).any(0)  # (16, 16): the erased box, the same in every band
    assert 0 < changed.sum() < 16 * 16


def test_datamodules_of_rgb_sources_refuse_other_band_counts_by_name():
    from lit_mae.datamodules import SyntheticDataModule

    with pytest.raises(ValueError, match=r"SyntheticDataModule\.channels must be one of \(1, 3\), got 13 "
                                         r"\(other band counts: ImageFolderDataModule\)"):
        SyntheticDataModule(channels=13)
