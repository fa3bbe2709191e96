"""Shards beyond 8-bit RGB: `lit-mae prepare` keeps multi-band TIFF, .npy and 16-bit PNG/TIFF bytes
as they are (checked with the multi-band readers; `--max-side` refuses them), and StreamingDataModule
reads them at full depth, bitwise as ImageFolderDataModule reads their files (depth, statistics,
train and eval pipelines)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_mae.datamodules import ImageFolderDataModule, StreamingDataModule
from lit_mae.datamodules.shards import DepthLossError, Encoder, Item, folder_items, write_shards

from conftest import write_unreadable
from test_multiband import H, W, bands, folder
from test_prepare import records
from test_streaming import seed_all

pytest.importorskip("litdata")

GREY16 = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 131  # levels that differ in their low bits
SETTINGS = dict(image_size=16, batch_size=2, num_workers=0, persistent_workers=False)


def shards_of(images: Path, output: Path) -> Path:
    items, _ = folder_items(images, "none")
    write_shards(items, output, str(images), [], progress=False)
    return output


def deep_files(root: Path) -> Path:
    """A 13-band 16-bit TIFF, a 16-bit grey PNG and TIFF, a 5-band float .npy and a 5-band 8-bit TIFF."""
    return folder(root, {"scene.tif": bands(0), "grey.png": GREY16, "grey16.tif": GREY16,
                         "bands.npy": bands(1, 5, dtype=np.float32), "rgbn.tif": bands(2, 5, 256, np.uint8)})


def test_prepare_keeps_deep_and_multi_band_files_byte_for_byte(tmp_path: Path):
    images = deep_files(tmp_path / "images")
    write_unreadable(images / "broken.tif", "truncated")
    items, _ = folder_items(images, "none")
    info = write_shards(items, tmp_path / "shards", str(images), [], progress=False)
    kept = {r["name"]: r["image"] for r in records(tmp_path / "shards")}
    assert sorted(kept) == ["bands.npy", "grey.png", "grey16.tif", "rgbn.tif", "scene.tif"]
    assert all(data == (images / name).read_bytes() for name, data in kept.items())
    assert info.encoding == "original" and len(info.skipped) == 1 and info.skipped[0].startswith("broken.tif: ")


@pytest.mark.parametrize("name, what", [("scene.tif", "other than 1 or 3 bands"), ("grey.png", "I;16"),
                                        ("grey16.tif", "uint16"), ("bands.npy", "is an array"),
                                        ("rgbn.tif", "other than 1 or 3 bands")])
def test_max_side_refuses_files_a_jpeg_would_cut_down(tmp_path: Path, name: str, what: str):
    images = deep_files(tmp_path)
    with pytest.raises(DepthLossError, match=f"--max-side re-encodes .* {name} .*{what}"):
        Encoder(max_side=8)(Item(str(images / name), -1, name))


def test_max_side_refusal_ends_prepare_with_one_line_and_no_folder(tmp_path: Path, lit_mae_main):
    folder(tmp_path / "images" / "a", {"rgb.png": np.zeros((H, W, 3), np.uint8), "grey.png": GREY16})
    code, _, err = lit_mae_main(tmp_path, ["prepare", "shards", "--folder", "images", "--max-side", "8",
                                           "--num-workers", "2", "--quiet"])  # raised in a worker process
    assert code == 2 and "lit-mae prepare: error: --max-side re-encodes images as 8-bit JPEGs, but a/grey.png" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # nothing half-written left behind
    rgb = Encoder(max_side=8)(Item(str(tmp_path / "images/a/rgb.png"), 0, "a/rgb.png"))
    assert Image.open(io.BytesIO(rgb.image)).format == "JPEG"  # 8-bit RGB: re-encoded as before


CASES = {  # files, channels, array_layout
    "13-band 16-bit TIFF": ({f"s{i}.tif": bands(i) for i in range(4)}, 13, "auto"),
    "16-bit grey PNG": ({f"g{i}.png": GREY16 // (i + 1) for i in range(4)}, 1, "auto"),
    "5-band float .npy (H, W, C)": ({f"a{i}.npy": np.moveaxis(bands(i, 5, dtype=np.float32), 0, -1)
                                    for i in range(4)}, 5, "HWC"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_records_are_bitwise_the_folder_pixels_at_full_depth(tmp_path: Path, case: str):
    files, channels, layout = CASES[case]
    images = folder(tmp_path / "images", files)
    shards = shards_of(images, tmp_path / "shards")
    recipe = dict(SETTINGS, channels=channels, array_layout=layout, augment="pretrain", normalize="auto")
    dm = StreamingDataModule(input_dir=str(shards), val_dir=str(shards), **recipe)
    dm.setup("fit")
    auto = ImageFolderDataModule(str(images), labels="none", **recipe)
    auto.setup("fit")
    assert dm.depth == auto.depth == "full" and dm.full_depth
    assert dm.mean == pytest.approx(auto.mean, rel=1e-6) and dm.std == pytest.approx(auto.std, rel=1e-6)
    assert dm.hparams["mean"] == list(dm.mean) and dm.hparams["std"] == list(dm.std)  # checkpoints carry them
    same = ImageFolderDataModule(str(images), labels="none", mean=dm.mean, std=dm.std, **recipe)  # the same recipe
    same.setup("fit")
    for split, load in (("train", same.train_pipeline()), ("val", same.eval_pipeline())):
        samples = dm.splits[split]
        for index in (0, 3):
            seed_all(index)
            pixels, label = samples[index]
            seed_all(index)
            want = load(images / samples.sources[index]["name"])
            assert pixels.dtype == torch.float32 and pixels.shape == (channels, 16, 16) and label == -1
            assert torch.equal(pixels, want), (split, index)
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch.images.shape == (2, channels, 16, 16) and batch.images.dtype == torch.float32


def test_wrong_band_counts_are_skipped_and_8bit_depth_is_refused_for_n_bands(tmp_path: Path):
    images = folder(tmp_path / "images", {"a.tif": bands(0), "b.tif": bands(1, 4)})
    shards = shards_of(images, tmp_path / "shards")
    dm = StreamingDataModule(input_dir=str(shards), channels=13, mean=[0.0] * 13, std=[1.0] * 13,
                             augment=None, **SETTINGS)
    dm.setup("fit")
    assert dm.depth == "full" and dm.mean == (0.0,) * 13  # given statistics are kept
    skipped = r"skipping .*\[1\] \(b.tif\).* 4 band\(s\) but the DataModule's channels is 13"
    with pytest.warns(UserWarning, match=skipped):
        assert dm.splits["train"][1] is None
    with pytest.raises(ValueError, match="StreamingDataModule.depth: '8bit' reads 1- or 3-channel images"):
        StreamingDataModule(input_dir=str(shards), channels=13, depth="8bit", **SETTINGS)
    with pytest.raises(ValueError, match="StreamingDataModule.normalize: 'imagenet' has statistics for 1 or 3"):
        StreamingDataModule(input_dir=str(shards), channels=13, normalize="imagenet", **SETTINGS)
