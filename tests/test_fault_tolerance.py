"""FAULT TEST: pretraining killed with SIGKILL over and over, also while checkpoints are written.

`test_fault_sigkill_pretraining_again_and_again` runs the digits pretraining config (a tiny
model, a checkpoint every 2 steps through `AtomicModelCheckpoint` with `save_last: link`) in a
forked process, kills it at a random moment (seeded: while starting, while training, or while a
checkpoint is being written, which the child slows down), and resumes it with `--ckpt_path last`,
KILLS times in a row. After every kill `last.ckpt` loads (`torch.load` and Lightning's resume),
its step never goes backwards and is at most the interval behind the steps trained. The run then
finishes, and its weights are bitwise those of an uninterrupted run. Processes are forked from
this one (already importing torch and Lightning) so that the test takes seconds, not minutes.

The other tests: a full disk (ENOSPC) and an unwritable checkpoint folder raise a clear error
naming the file and folder, leave no partial file, and leave the previous `last.ckpt` intact.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import multiprocessing
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, tiny_config_values
from lit_mae import LitMAE
from lit_mae.callbacks import AtomicModelCheckpoint
from lit_mae import checkpointing
from lit_mae.checkpointing import CheckpointWriteError
from lit_mae.cli import run_cli
from lit_mae.datamodules import SyntheticDataModule

# resuming into the folder of the interrupted run, as intended
pytestmark = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
KILLS = 20
INTERVAL = 2  # optimizer steps between checkpoints
MAX_STEPS = 150  # digits at batch 64: 23 batches an epoch; the 20 kills leave it unfinished
TINY = [f"--model.init_args.config.{key}={value}" for key, value in dict(
    embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2).items()]
CHECKPOINTS = {"class_path": "lit_mae.callbacks.AtomicModelCheckpoint", "init_args": {
    "dirpath": "checkpoints", "filename": "step{step:03d}", "auto_insert_metric_name": False, "every_n_train_steps": INTERVAL, "save_top_k": 1,
    "save_last": "link"}}
ARGS = ["fit", "--config", str(REPO_ROOT / "configs/pretrain.yaml"), *TINY, "--trainer.accelerator=cpu",
        f"--trainer.max_steps={MAX_STEPS}", "--trainer.logger=false", "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.callbacks=" + json.dumps([CHECKPOINTS]), "--ckpt_path=last"]


def _pretrain(where: Path, log_name: str, progress, saving, slow_saves: bool) -> None:
    """A child process: `lightning fit` of the pretraining config in `where`, reporting each
    finished step in `progress` and raising `saving` while a checkpoint file or link is written."""
    log = os.open(where / log_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1), os.dup2(log, 2)
    try:
        import lit_mae.callbacks.checkpoint as callback_module
        import lit_mae.checkpointing as checkpointing
        import lit_mae.pretrain

        write_atomically, relink = checkpointing.atomic_write, callback_module.replace_with_symlink

        def slow_write(path, write):  # the bytes in four pieces, a pause after each
            def in_pieces(file):
                buffer = io.BytesIO()
                write(buffer)
                data = buffer.getvalue()
                for k in range(4):
                    file.write(data[k * len(data) // 4:(k + 1) * len(data) // 4])
                    file.flush()
                    time.sleep(0.004)

            saving.value = 1
            try:
                write_atomically(path, in_pieces)
            finally:
                saving.value = 0

        def slow_relink(target, link):
            saving.value = 1
            time.sleep(0.004)
            try:
                relink(target, link)
            finally:
                saving.value = 0

        if slow_saves:
            checkpointing.atomic_write, callback_module.replace_with_symlink = slow_write, slow_relink
        lit_mae.pretrain.LitMAE.on_train_batch_end = lambda self, *args: setattr(progress, "value", self.global_step)
        torch.set_num_threads(1)
        os.chdir(where)
        sys.argv = ["lightning"]
        run_cli(ARGS)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


def _wait_for(condition, process, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if not process.is_alive():
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the pretraining child made no progress")
        time.sleep(0.001)


def _saved_step(last: Path) -> int:
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)  # raises if the file is cut
    assert checkpoint["state_dict"] and checkpoint["optimizer_states"], f"{last} lacks weights or optimizer state"
    return checkpoint["global_step"]


def test_fault_sigkill_pretraining_again_and_again(tmp_path):
    fork = multiprocessing.get_context("fork")
    progress, saving = fork.Value("i", -1, lock=False), fork.Value("i", 0, lock=False)
    rng = random.Random(0)
    last = tmp_path / "checkpoints/last.ckpt"
    saved, trained, kills_while_saving = -1, 0, 0
    for run in range(KILLS):
        progress.value, start = -1, saved
        child = fork.Process(target=_pretrain, args=(tmp_path, f"run{run:02d}.log", progress, saving, True))
        child.start()
        moment = rng.choice(["starting", "training", "training", "saving", "saving"])
        if moment == "starting":
            time.sleep(rng.uniform(0.0, 0.5))  # while importing, parsing, restoring or in the first steps
        elif moment == "training":
            _wait_for(lambda: progress.value > max(start, 0), child)
            time.sleep(rng.uniform(0.0, 0.06))
        else:
            _wait_for(lambda: saving.value == 1 and progress.value > max(start, 0), child)
            time.sleep(rng.uniform(0.0, 0.02))
        kills_while_saving += saving.value
        assert child.is_alive(), f"run {run} ended by itself (exit {child.exitcode}): " + \
            (tmp_path / f"run{run:02d}.log").read_text()[-3000:]
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        trained = max(trained, progress.value)
        if saved >= 0 or last.exists():
            step = _saved_step(last)
            assert step >= saved, f"run {run}: last.ckpt went back from step {saved} to {step}"
            assert step >= trained - INTERVAL, f"run {run}: trained to step {trained}, last.ckpt has {step}"
            saved = step
    assert kills_while_saving >= 3, f"only {kills_while_saving} of {KILLS} kills hit a checkpoint being written"

    finished = fork.Process(target=_pretrain, args=(tmp_path, "final.log", progress, saving, False))
    finished.start()
    finished.join()
    assert finished.exitcode == 0, (tmp_path / "final.log").read_text()[-3000:]
    assert _saved_step(last) == MAX_STEPS
    # one last.ckpt (Lightning alone would start last-v1.ckpt after some resumes); partial files cleared
    assert [path.name for path in last.parent.glob("last*")] == ["last.ckpt"]
    assert not list(last.parent.glob(f".*{checkpointing.PARTIAL_SUFFIX}"))

    reference = tmp_path / "uninterrupted"
    reference.mkdir()
    once = fork.Process(target=_pretrain, args=(reference, "run.log", progress, saving, False))
    once.start()
    once.join()
    assert once.exitcode == 0, (reference / "run.log").read_text()[-3000:]
    resumed = torch.load(last, weights_only=False)["state_dict"]
    for key, value in torch.load(reference / "checkpoints/last.ckpt", weights_only=False)["state_dict"].items():
        assert torch.equal(resumed[key], value), f"{key} differs after {KILLS} kills and resumes"


# ---- a full disk, an unwritable folder ----


@pytest.fixture
def pretrain_twice(make_trainer, tmp_path):
    """Fit 2 steps (last.ckpt at step 2), then `fit(ckpt_path=last)` to step 4 in `dirpath`."""

    def fit(dirpath: Path, steps: int) -> None:
        data = SyntheticDataModule(num_samples=16, val_samples=0, test_samples=0, image_size=16, batch_size=4)
        model = LitMAE(config=tiny_config_values(), lr=1e-3, warmup_epochs=0)
        saver = AtomicModelCheckpoint(dirpath=dirpath, every_n_train_steps=1, save_top_k=1, save_last="link")
        make_trainer(max_steps=steps, callbacks=[saver], enable_checkpointing=True).fit(
            model, datamodule=data, ckpt_path="last" if steps > 2 else None)

    return fit


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(pretrain_twice, tmp_path, monkeypatch):
    dirpath = tmp_path / "checkpoints"
    pretrain_twice(dirpath, 2)
    before = (dirpath / "last.ckpt").resolve().read_bytes()

    def disk_full(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 the first bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match="No space left on device") as caught:
        pretrain_twice(dirpath, 4)
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC and str(dirpath) in str(caught.value)
    assert (dirpath / "last.ckpt").resolve().read_bytes() == before and _saved_step(dirpath / "last.ckpt") == 2
    assert not list(dirpath.glob(".*"))  # no partial file left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into folders without write permission")
def test_an_unwritable_folder_names_it_and_keeps_the_previous_checkpoint(pretrain_twice, tmp_path):
    dirpath = tmp_path / "checkpoints"
    pretrain_twice(dirpath, 2)
    dirpath.chmod(0o555)
    try:
        with pytest.raises(OSError, match="Permission denied") as caught:
            pretrain_twice(dirpath, 4)
    finally:
        dirpath.chmod(0o755)
    assert str(dirpath) in str(caught.value)
    assert _saved_step(dirpath / "last.ckpt") == 2


def test_a_refused_write_names_the_file_and_keeps_the_previous_checkpoint(pretrain_twice, tmp_path, monkeypatch):
    """What an unwritable folder does for a user who is not root, simulated (this also runs as root)."""
    dirpath = tmp_path / "checkpoints"
    pretrain_twice(dirpath, 2)

    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(checkpointing, "open", refused, raising=False)
    with pytest.raises(CheckpointWriteError, match="Permission denied") as caught:
        pretrain_twice(dirpath, 4)
    monkeypatch.undo()
    assert caught.value.errno == errno.EACCES and str(dirpath) in str(caught.value)
    assert _saved_step(dirpath / "last.ckpt") == 2


def test_a_checkpoint_folder_that_cannot_be_made_is_a_clear_error(pretrain_twice, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError) as caught:
        pretrain_twice(blocker / "checkpoints", 2)
    assert str(blocker) in str(caught.value)
