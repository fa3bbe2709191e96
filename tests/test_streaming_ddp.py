"""StreamingDataModule under DDP (2 processes, gloo, on CPU; `python -m lit_mae fit` as users run
it): in every epoch the ranks read disjoint samples that together cover the epoch, and a run that
`max_steps` stopped inside an epoch, resumed with `--ckpt_path last`, reads on each rank the
samples the uninterrupted run reads there.

The shards hold 64 records whose label is their index, so the labels of a batch name its samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch import Callback

from lit_mae.datamodules.shards import Item, write_shards

from conftest import assert_ok, tiny_cli_args
from test_ddp import CPU_DDP, REPO_ROOT, lit_mae, run_all

pytest.importorskip("litdata")

RECORDS, BATCH, STEPS_PER_EPOCH = 64, 8, 4  # 64 records / 2 ranks / batches of 8


class RecordLabels(Callback):
    """Appends `{"step", "epoch", "labels"}` of every training batch to <folder>/labels.rank<R>.jsonl."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(Path(self.folder, f"labels.rank{trainer.global_rank}.jsonl"), "a") as log:
            log.write(json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch,
                                  "labels": batch.labels.tolist()}) + "\n")


def read_log(where: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (where / f"labels.rank{rank}.jsonl").read_text().splitlines()]


def args(shards: Path, run: Path, max_steps: int) -> list[str]:
    """A 2-process DDP pretraining of the tiny model on `shards` in the folder `run`, to `max_steps`."""
    data = {"class_path": "lit_mae.datamodules.StreamingDataModule", "init_args": {
        "input_dir": str(shards), "image_size": 16, "batch_size": BATCH, "num_workers": 0, "augment": "pretrain"}}
    callbacks = [{"class_path": "lit_mae.callbacks.AtomicModelCheckpoint",
                  "init_args": {"dirpath": str(run / "checkpoints"), "save_last": "link"}},
                 {"class_path": f"{__name__}.RecordLabels", "init_args": {"folder": str(run)}}]
    return ["fit", "--config", str(REPO_ROOT / "configs/pretrain.yaml"), *CPU_DDP, *tiny_cli_args(),
            f"--data={json.dumps(data)}", f"--trainer.max_steps={max_steps}", "--trainer.max_epochs=-1",
            "--trainer.limit_val_batches=0", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={run}", f"--trainer.callbacks={json.dumps(callbacks)}"]


def test_ranks_read_disjoint_samples_covering_each_epoch_and_resume_their_own_position(tmp_path):
    rng = np.random.default_rng(0)
    items = [Item(rng.integers(0, 256, (3, 20, 20), dtype=np.uint8), i, str(i)) for i in range(RECORDS)]
    shards = write_shards(items, tmp_path / "shards", "noise", [], progress=False) and tmp_path / "shards"
    whole, part = tmp_path / "whole", tmp_path / "part"
    whole.mkdir(), part.mkdir()
    # side by side: the whole run (2 epochs), and a part that max_steps stops after 2 of epoch 1's 4 steps
    for result in run_all([lit_mae(*args(shards, whole, 2 * STEPS_PER_EPOCH)),
                           lit_mae(*args(shards, part, STEPS_PER_EPOCH + 2))], tmp_path):
        assert_ok(result)
    assert_ok(run_all([lit_mae(*args(shards, part, 2 * STEPS_PER_EPOCH), "--ckpt_path=last")], tmp_path)[0])
    logs = {rank: read_log(whole, rank) for rank in (0, 1)}
    for epoch in (0, 1):
        seen = {rank: [label for entry in logs[rank] if entry["epoch"] == epoch for label in entry["labels"]]
                for rank in (0, 1)}
        assert len(seen[0]) == len(seen[1]) == RECORDS // 2
        assert not set(seen[0]) & set(seen[1]), f"epoch {epoch}: a sample read by both ranks"
        assert sorted(seen[0] + seen[1]) == list(range(RECORDS)), f"epoch {epoch} does not cover the records"
    assert logs[0][0]["labels"] != logs[0][STEPS_PER_EPOCH]["labels"]  # a new order in the next epoch
    for rank in (0, 1):  # the resumed part continued epoch 1 where it stopped, on each rank
        assert [e["labels"] for e in read_log(part, rank)] == [e["labels"] for e in logs[rank]], f"rank {rank}"
