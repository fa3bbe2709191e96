"""StreamingDataModule: shards read through the same pipeline as files (uint8 in the loader, normalised
on the device, the recipes), unreadable records skipped and counted, mistakes named, and the shipped
pretrain / linprobe (CachedFeatures) / finetune configs running with only `data:` swapped."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_mae.datamodules import ImageFolderDataModule, StreamingDataModule
from lit_mae.datamodules.batch import Batch, LoadedBatch
from lit_mae.datamodules.images import UnreadableImageError
from lit_mae.datamodules.shards import digits_items, folder_items, write_shards

from conftest import REPO_ROOT, run_cli_in, tiny_cli_args, write_unreadable
from test_prepare import write_jpegs

pytest.importorskip("litdata")
# the linear probe's frozen encoder stays in eval mode on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode:UserWarning")

QUIET = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def seed_all(seed: int) -> None:
    torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)


def prepare(source: Path, output: Path, **kwargs) -> Path:
    items, classes = folder_items(source)
    write_shards(items, output, str(source), classes, progress=False, **kwargs)
    return output


def streaming(input_dir: Path, **kwargs) -> StreamingDataModule:
    settings = {"image_size": 16, "batch_size": 4, "num_workers": 0, "augment": "pretrain", **kwargs}
    dm = StreamingDataModule(input_dir=str(input_dir), **settings)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory) -> tuple[Path, Path]:
    """(an image folder of 12 JPEGs in 3 classes, its shards)."""
    where = tmp_path_factory.mktemp("jpegs")
    write_jpegs(where / "images", size=(48, 40))
    return where / "images", prepare(where / "images", where / "shards")


@pytest.mark.parametrize("augment", ["pretrain", "finetune", None])
def test_records_are_read_by_the_same_pipeline_as_their_files(jpeg_shards, augment):
    images, shards = jpeg_shards
    dm = streaming(shards, val_dir=str(shards), augment=augment)
    folder = ImageFolderDataModule(str(images), image_size=16, num_workers=0, augment=augment)
    folder.setup("fit")
    assert dm.num_classes == 3 and dm.class_names == ["cat", "dog", "owl"]
    for split, load in (("train", folder.train_pipeline()), ("val", folder.eval_pipeline())):
        samples = dm.splits[split]
        for index in (0, 7):
            name = samples.sources[index]["name"]
            seed_all(index)
            pixels, label = samples[index]
            seed_all(index)  # RandAugment draws from Python's RNG, random erasing from torch's
            assert torch.equal(pixels, load(images / name)), (split, name)
            assert label == ["cat", "dog", "owl"].index(name.split("/")[0])
            assert pixels.dtype == (torch.float32 if augment == "finetune" and split == "train" else torch.uint8)


def test_batches_are_uint8_in_the_loader_and_normalised_on_the_device(jpeg_shards):
    dm = streaming(jpeg_shards[1])
    loaded = next(iter(dm.train_dataloader()))
    assert isinstance(loaded, LoadedBatch) and loaded.pixels.dtype == torch.uint8
    assert loaded.pixels.shape == (4, 3, 16, 16)
    batch = dm.on_after_batch_transfer(loaded, 0)
    mean, std = torch.tensor(dm.mean).view(1, 3, 1, 1), torch.tensor(dm.std).view(1, 3, 1, 1)
    assert isinstance(batch, Batch)
    torch.testing.assert_close(batch.images, (loaded.pixels / 255 - mean) / std)


def test_unreadable_records_are_skipped_counted_and_named_or_stop_a_strict_run(jpeg_shards, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(jpeg_shards[0], images)
    write_unreadable(images / "dog/bad.jpg", "truncated")
    shards = prepare(images, tmp_path / "shards", verify=False)  # kept unchecked: found while training
    dm = streaming(shards)
    with pytest.warns(UserWarning, match=r"skipping cannot read image .*shards\[\d+\] \(dog/bad.jpg\)"):
        batches = list(dm.train_dataloader())
    assert sum(batch.skipped for batch in batches) == 1
    assert sum(len(batch.labels) for batch in batches) == 11  # 13 records: 3 batches of 4, less the bad one
    with pytest.raises(UnreadableImageError, match="dog/bad.jpg"):
        list(streaming(shards, strict=True).train_dataloader())


def test_the_epoch_order_is_a_function_of_seed_and_epoch(jpeg_shards):
    def epoch(seed: int, number: int) -> torch.Tensor:
        loader = streaming(jpeg_shards[1], seed=seed, augment=None).train_dataloader()
        loader.sampler.set_epoch(number)
        return torch.cat([batch.pixels for batch in loader])  # (12, 3, 16, 16) in the order read

    assert torch.equal(epoch(0, 1), epoch(0, 1))
    assert not torch.equal(epoch(0, 1), epoch(0, 2)) and not torch.equal(epoch(0, 1), epoch(1, 1))


@pytest.mark.parametrize("field, location, message", [
    ("input_dir", "nowhere", "StreamingDataModule.input_dir: folder nowhere does not exist"),
    ("val_dir", "empty", "StreamingDataModule.val_dir: empty holds no LitData shards (no index.json)"),
])
def test_a_missing_or_empty_folder_is_named(jpeg_shards, tmp_path, monkeypatch, field, location, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    folders = {"input_dir": str(jpeg_shards[1]), field: location}
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        StreamingDataModule(**folders, num_workers=0).setup("fit")


def test_validation_shards_with_other_classes_are_refused(jpeg_shards, tmp_path):
    write_jpegs(tmp_path / "other", per_class=1, classes=("ant", "bee"))
    other = prepare(tmp_path / "other", tmp_path / "other-shards")
    with pytest.raises(ValueError, match=r"StreamingDataModule.val_dir: the shards at .* have 2 classes"):
        streaming(jpeg_shards[1], val_dir=str(other))


# --- the shipped configs, `data:` swapped ----------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory) -> Path:
    """The digits' train and val splits as shards (train/, val/), at 16 pixels."""
    where = tmp_path_factory.mktemp("digits")
    for split in ("train", "val"):
        items, classes = digits_items(split, 16)
        write_shards(items, where / split, f"digits {split}", classes, progress=False)
    return where


def data_args(key: str, shards: Path) -> list[str]:
    """`--<key>=...`: StreamingDataModule on the digits shards in place of the config's DigitsDataModule."""
    init_args = {"input_dir": str(shards / "train"), "val_dir": str(shards / "val"), "image_size": 16,
                 "batch_size": 64, "num_workers": 0, "augment": None}
    return [f"--{key}=" + json.dumps({"class_path": "lit_mae.datamodules.StreamingDataModule", "init_args": init_args})]


def test_pretrain_linprobe_and_finetune_configs_run_on_shards_with_data_swapped(digits_shards, tmp_path):
    steps = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    cli = run_cli_in(tmp_path, ["fit", "--config", str(REPO_ROOT / "configs/pretrain.yaml"), *QUIET, *steps,
                                *tiny_cli_args(), *data_args("data", digits_shards)])
    assert isinstance(cli.datamodule, StreamingDataModule) and cli.trainer.global_step == 2
    assert cli.datamodule.num_classes == 10 and len(cli.datamodule.splits["train"]) == 1437
    probe = run_cli_in(tmp_path, ["fit", "--config", str(REPO_ROOT / "configs/linprobe.yaml"), *QUIET, *steps,
                                  "--test_after_fit=false", *data_args("data.init_args.images", digits_shards)])
    assert isinstance(probe.datamodule.images, StreamingDataModule) and probe.trainer.global_step == 2
    tune = run_cli_in(tmp_path, ["fit", "--config", str(REPO_ROOT / "configs/finetune.yaml"), *QUIET, *steps,
                                 "--test_after_fit=false", *data_args("data", digits_shards)])
    assert isinstance(tune.datamodule, StreamingDataModule) and tune.trainer.global_step == 2
