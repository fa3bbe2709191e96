"""Exact resume from shards: pretraining on StreamingDataModule (the digits as LitData shards, the
`pretrain` augmentation, two loader workers) stopped between epochs, or killed with SIGKILL inside
an epoch and resumed from a mid-epoch step checkpoint with `--ckpt_path last`, ends on the
uninterrupted run's weights, bitwise on CPU in fp32. LitData's own loader state plays no part: the
order is `EpochSampler`'s (seed, epoch) and the position is the DataModule's checkpoint state, as
for the other DataModules (test_resume.py holds the full set of Trainer knobs on the digits)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from lit_mae.datamodules.shards import digits_items, write_shards

from conftest import assert_same_state, tiny_cli_args
from test_resume import StopAfterEpochs, _fit_child, callback, fit, weights

pytest.importorskip("litdata")

EPOCHS, BATCHES = 3, 6  # epochs of 6 batches of 64 (limit_train_batches)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("shards")
    items, classes = digits_items("train", 16)
    write_shards(items, where / "train", "digits train", classes, progress=False)
    return where / "train"


def run_args(shards: Path) -> list[str]:
    data = {"class_path": "lit_mae.datamodules.StreamingDataModule", "init_args": {
        "input_dir": str(shards), "image_size": 16, "batch_size": 64, "num_workers": 2, "augment": "pretrain",
        "seed": 3}}
    checkpoints = [{"class_path": "lit_mae.callbacks.AtomicModelCheckpoint", "init_args": {
        "dirpath": "checkpoints", "filename": "step{step:03d}", "every_n_train_steps": 4, "save_top_k": 1,
        "save_last": "link"}}]
    return [f"--data={json.dumps(data)}", *tiny_cli_args(),
            "--model.init_args.warmup_epochs=1", f"--trainer.max_epochs={EPOCHS}",
            f"--trainer.limit_train_batches={BATCHES}", "--trainer.logger=false", "--trainer.limit_val_batches=0",
            "--trainer.callbacks=" + json.dumps(checkpoints)]


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory) -> dict[str, torch.Tensor]:
    where = tmp_path_factory.mktemp("uninterrupted")
    cli = fit("pretrain.yaml", where, *run_args(shards))
    assert cli.trainer.global_step == EPOCHS * BATCHES
    return weights(where / "checkpoints/last.ckpt")


def test_stopped_between_epochs_resumes_bitwise(shards, uninterrupted, tmp_path):
    fit("pretrain.yaml", tmp_path, *run_args(shards), callback(StopAfterEpochs, epochs=1))
    # another global seed: the order and augmentation follow the DataModule's seed and the epoch
    cli = fit("pretrain.yaml", tmp_path, *run_args(shards), "--ckpt_path=last", "--seed_everything=123")
    assert cli.trainer.global_step == EPOCHS * BATCHES
    assert_same_state(weights(tmp_path / "checkpoints/last.ckpt"), uninterrupted)


def test_sigkill_inside_an_epoch_resumes_bitwise(shards, uninterrupted, tmp_path):
    """Killed after step 11 (epoch 1, batch 5 of 6): resumed from step 8's checkpoint, saved after
    batch 2 of epoch 1, which the resumed run continues at batch 3."""
    fork = multiprocessing.get_context("fork")
    reached = fork.Value("i", -1, lock=False)
    child = fork.Process(target=_fit_child, args=(tmp_path, run_args(shards), 11, reached))
    child.start()
    deadline = time.monotonic() + 120
    while reached.value != 11 and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert reached.value == 11, f"exit {child.exitcode}: " + (tmp_path / "child-11.log").read_text()[-3000:]
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    saved = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)
    assert saved["global_step"] == 8
    assert saved["StreamingDataModule"]["train_loader"] == {"epoch": 1, "batches": 2, "length": 6, "epoch_over": False}
    cli = fit("pretrain.yaml", tmp_path, *run_args(shards), "--ckpt_path=last")
    assert cli.trainer.global_step == EPOCHS * BATCHES
    assert_same_state(weights(tmp_path / "checkpoints/last.ckpt"), uninterrupted)
