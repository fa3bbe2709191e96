"""Object storage for real: a local S3-compatible server (moto's standalone server on a free
127.0.0.1 port, started here and stopped after) serves shards written by `lit-mae prepare`, and
pretraining streams two steps from `s3://` through it with loader workers. Skipped, with the
reason, only where the server cannot start."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from unittest import mock

import pytest

from lit_mae.datamodules import StreamingDataModule

from conftest import REPO_ROOT, run_cli_in, tiny_cli_args

pytest.importorskip("litdata")
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from local_s3 import ServerUnavailable, local_s3_server, upload  # noqa: E402

QUIET = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def bucket(tmp_path_factory) -> tuple[str, Path]:
    """(the server's endpoint, a folder holding the digits' train and val shards, also uploaded
    to s3://shards/digits/{train,val}); AWS_ENDPOINT_URL and test credentials set meanwhile."""
    from lit_mae.cli import main

    where = tmp_path_factory.mktemp("s3")
    for split in ("train", "val"):
        main(["prepare", str(where / split), "--digits", "--split", split, "--quiet", "--num-workers", "0"])
    try:
        with local_s3_server() as server:
            for split in ("train", "val"):
                upload(where / split, f"s3://shards/digits/{split}")
            yield server.endpoint, where
    except ServerUnavailable as error:
        pytest.skip(f"no local S3 server: {error}")


def test_pretraining_streams_two_steps_from_s3(bucket, tmp_path):
    data = {"class_path": "lit_mae.datamodules.StreamingDataModule", "init_args": {
        "input_dir": "s3://shards/digits/train", "val_dir": "s3://shards/digits/val", "cache_dir": str(tmp_path / "cache"),
        "image_size": 16, "batch_size": 32, "num_workers": 2, "augment": "pretrain"}}
    cli = run_cli_in(tmp_path, ["fit", "--config", str(REPO_ROOT / "configs/pretrain.yaml"), *QUIET,
                                *tiny_cli_args(), f"--data={json.dumps(data)}", "--trainer.max_steps=2",
                                "--trainer.limit_val_batches=1"])
    assert cli.trainer.global_step == 2
    assert cli.datamodule.num_classes == 10 and len(cli.datamodule.splits["train"]) == 1437  # lit-mae.json read
    assert not list((tmp_path / "cache").rglob("chunk-*.bin"))  # ranged reads: no chunk was downloaded whole


def test_records_from_s3_equal_the_local_ones_with_the_endpoint_in_storage_options(bucket):
    endpoint, local = bucket
    with mock.patch.dict(os.environ):
        del os.environ["AWS_ENDPOINT_URL"]
        remote = StreamingDataModule(input_dir="s3://shards/digits/val", storage_options={"endpoint_url": endpoint},
                                     image_size=16, num_workers=0, augment=None)
        remote.setup("fit")
    here = StreamingDataModule(input_dir=str(local / "val"), image_size=16, num_workers=0, augment=None)
    here.setup("fit")
    for index in (0, 179):
        assert remote.splits["train"].sources[index] == here.splits["train"].sources[index]


def test_a_missing_bucket_is_named(bucket, tmp_path):
    dm = StreamingDataModule(input_dir="s3://no-such-bucket/train", cache_dir=str(tmp_path), num_workers=0)
    with pytest.raises(FileNotFoundError, match="StreamingDataModule.input_dir: cannot open LitData shards at "
                                                "s3://no-such-bucket/train"):
        dm.setup("fit")
