"""FAULT TEST: pretraining killed with SIGKILL over and over, also while checkpoints are written.

`test_fault_sigkill_pretraining_again_and_again` runs the digits pretraining config (a tiny
model, a checkpoint every 2 steps through `AtomicModelCheckpoint` with `save_last: link`) in a
forked process, kills it and resumes it with `--ckpt_path last`, KILLS times in a row. Most kills
come at a seeded random moment (while starting or while training); SAVING_KILLS planned ones land
inside a checkpoint write on any machine: the child stops in the writer (`checkpoint_io.on_stage`)
at a seeded n-th staged file or link, reports it and waits for the SIGKILL. After every kill
`last.ckpt` loads (`torch.load` and Lightning's resume), its step never goes backwards and is at
most the interval behind the steps trained. The run then finishes, and its weights are bitwise
those of an uninterrupted run. Processes are forked from this one (already importing torch and
Lightning) so that the test takes seconds, not minutes.

The other tests: a full disk (ENOSPC) and an unwritable checkpoint folder raise a clear error
naming the file and folder, leave no partial file, and leave the previous `last.ckpt` intact.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

from conftest import REPO_ROOT, tiny_cli_args, tiny_config_values
from lit_mae import LitMAE
from lit_mae.callbacks import AtomicModelCheckpoint
from lit_mae.callbacks import checkpoint_io as checkpointing
from lit_mae.callbacks.checkpoint_io import CheckpointWriteError, atomic_torch_save
from lit_mae.cli.lightning_cli import run_cli
from lit_mae.datamodules import SyntheticDataModule

# resuming into the folder of the interrupted run, as intended
pytestmark = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
KILLS = 20
INTERVAL = 2  # optimizer steps between checkpoints
MAX_STEPS = 150  # digits at batch 64: 23 batches an epoch; the 20 kills leave it unfinished
SAVING_KILLS = 6  # of the KILLS, planned inside a write: half at each of `on_stage`'s STAGES
STAGES = ("written", "linking")  # reported to the parent as 1 and 2 in the shared `saving` value
TINY = tiny_cli_args()
CHECKPOINTS = {"class_path": "lit_mae.callbacks.AtomicModelCheckpoint", "init_args": {
    "dirpath": "checkpoints", "filename": "step{step:03d}", "auto_insert_metric_name": False, "every_n_train_steps": INTERVAL, "save_top_k": 1,
    "save_last": "link"}}
ARGS = ["fit", "--config", str(REPO_ROOT / "configs/pretrain.yaml"), *TINY, "--trainer.accelerator=cpu",
        f"--trainer.max_steps={MAX_STEPS}", "--trainer.logger=false", "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.callbacks=" + json.dumps([CHECKPOINTS]), "--ckpt_path=last"]


@dataclass(frozen=True)
class Kill:
    """When a run is killed: `moment` "starting" or "training", then after `delay` seconds; or a
    stage of STAGES, at the run's `nth` file or link staged there."""

    moment: str
    delay: float = 0.0
    nth: int = 0


def _plan(rng: random.Random) -> list[Kill]:
    """KILLS kills: SAVING_KILLS of them inside a write (alternating stages), the others random as before."""
    saving_runs = rng.sample(range(KILLS), SAVING_KILLS)
    plan = []
    for run in range(KILLS):
        if run in saving_runs:
            plan.append(Kill(STAGES[saving_runs.index(run) % len(STAGES)], nth=rng.randint(1, 3)))
        elif rng.random() < 1 / 3:  # as before, twice as many kills while training as while starting
            plan.append(Kill("starting", rng.uniform(0.0, 0.5)))  # importing, parsing, restoring or the first steps
        else:
            plan.append(Kill("training", rng.uniform(0.0, 0.06)))
    return plan


def _stop_at(kill: Kill, saving) -> Callable[[str, Path], None]:
    """An `on_stage` hook: at the `kill.nth` time the writer reaches `kill.moment`, report the stage
    in `saving` and wait there, inside the write, for the parent's SIGKILL."""
    reached = dict.fromkeys(STAGES, 0)

    def hook(stage: str, path: Path) -> None:
        reached[stage] += 1
        if stage == kill.moment and reached[stage] == kill.nth:
            saving.value = STAGES.index(stage) + 1
            time.sleep(60)  # the kill comes within milliseconds; an orphan does not linger
            print(f"never killed while writing {path}", file=sys.stderr, flush=True)
            os._exit(3)

    return hook


def _pretrain(where: Path, log_name: str, progress, saving, kill: Kill | None) -> None:
    """A child process: `lightning fit` of the pretraining config in `where`, reporting each
    finished step in `progress`, and stopping inside a checkpoint write where `kill` plans it."""
    log = os.open(where / log_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1), os.dup2(log, 2)
    try:
        import lit_mae.callbacks.checkpoint_io as checkpointing
        import lit_mae.systems.pretraining

        if kill is not None and kill.moment in STAGES:
            checkpointing.on_stage = _stop_at(kill, saving)
        lit_mae.systems.pretraining.LitMAE.on_train_batch_end = lambda self, *args: setattr(progress, "value", self.global_step)
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


def _await(kill: Kill, child, progress, saving, start: int) -> None:
    """Return at `kill`'s moment in the running `child` (the SIGKILL follows at once)."""
    if kill.moment == "training":
        _wait_for(lambda: progress.value > max(start, 0), child)
    elif kill.moment in STAGES:  # the child stops inside the write and says so
        _wait_for(lambda: saving.value != 0, child)
    time.sleep(kill.delay)


def _assert_staged(kill: Kill, folder: Path, run: int) -> None:
    """The kill left the half-written file or link of `kill.moment`, beside its target (as planned)."""
    target = "last.ckpt" if kill.moment == "linking" else "step*.ckpt"
    staged = [path.name for path in folder.glob(f".*{checkpointing.PARTIAL_SUFFIX}")]
    pattern = checkpointing.partial_path(folder / target).name
    assert len(staged) == 1 and fnmatch.fnmatch(staged[0], pattern), f"run {run}: {kill} left {staged}"


def test_fault_sigkill_pretraining_again_and_again(tmp_path):
    fork = multiprocessing.get_context("fork")
    progress, saving = fork.Value("i", -1, lock=False), fork.Value("i", 0, lock=False)
    plan = _plan(random.Random(0))
    last = tmp_path / "checkpoints/last.ckpt"
    saved, trained, kills_while_saving = -1, 0, 0
    for run, kill in enumerate(plan):
        progress.value, saving.value, start = -1, 0, saved
        child = fork.Process(target=_pretrain, args=(tmp_path, f"run{run:02d}.log", progress, saving, kill))
        child.start()
        _await(kill, child, progress, saving, start)
        assert child.is_alive(), f"run {run} ended by itself (exit {child.exitcode}): " + \
            (tmp_path / f"run{run:02d}.log").read_text()[-3000:]
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        if kill.moment in STAGES:  # the child reported the planned stage and was killed inside it
            assert saving.value == STAGES.index(kill.moment) + 1, f"run {run}: {kill}, reported {saving.value}"
            _assert_staged(kill, last.parent, run)
        kills_while_saving += saving.value != 0  # only the hook raises it: random kills count nothing
        trained = max(trained, progress.value)
        if saved >= 0 or last.exists():
            step = _saved_step(last)
            assert step >= saved, f"run {run}: last.ckpt went back from step {saved} to {step}"
            assert step >= trained - INTERVAL, f"run {run}: trained to step {trained}, last.ckpt has {step}"
            saved = step
    assert kills_while_saving == SAVING_KILLS, f"{kills_while_saving} of {KILLS} kills hit a checkpoint being written"

    finished = fork.Process(target=_pretrain, args=(tmp_path, "final.log", progress, saving, None))
    finished.start()
    finished.join()
    assert finished.exitcode == 0, (tmp_path / "final.log").read_text()[-3000:]
    assert _saved_step(last) == MAX_STEPS
    # one last.ckpt (Lightning alone would start last-v1.ckpt after some resumes); partial files cleared
    assert [path.name for path in last.parent.glob("last*")] == ["last.ckpt"]
    assert not list(last.parent.glob(f".*{checkpointing.PARTIAL_SUFFIX}"))

    reference = tmp_path / "uninterrupted"
    reference.mkdir()
    once = fork.Process(target=_pretrain, args=(reference, "run.log", progress, saving, None))
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


def _small_filesystem(where: Path, size: str) -> bool:
    """Mount a tmpfs of `size` at `where`; False where mounting is not allowed (not root, a sandbox)."""
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def _fill(disk: Path, leave: int = 0) -> None:
    """Write a file that takes every free byte of `disk` but `leave`."""
    with open(disk / "filler", "wb") as filler:
        with contextlib.suppress(OSError):
            while shutil.disk_usage(disk).free > leave:
                filler.write(b"\0" * 4096)
                filler.flush()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB file system of its own (a tmpfs), unmounted afterwards."""
    disk = tmp_path / "disk"
    if not _small_filesystem(disk, "16m"):
        pytest.skip("cannot mount a small tmpfs here (needs root in a mount-capable sandbox)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_inside_torchs_zip_writer_is_named_and_leaves_no_partial_file(small_disk):
    """torch's zip writer turns the ENOSPC of a large write into `RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos ...`, the OSError only in its context."""
    target = small_disk / "last.ckpt"
    atomic_torch_save({"weights": torch.zeros(1000)}, target)
    before = target.read_bytes()
    _fill(small_disk, leave=256 * 1024)  # room for the archive's start, not for the 4 MB record
    with pytest.raises(CheckpointWriteError, match="ENOSPC, No space left on device") as caught:
        atomic_torch_save({"weights": torch.zeros(1_000_000)}, target)  # 4 MB in one record
    assert isinstance(caught.value.__cause__, RuntimeError)  # the path that used to escape unnamed
    assert str(target) in str(caught.value) and target.read_bytes() == before
    assert not list(small_disk.glob(".*"))  # the partial file is gone: it would keep the disk full


def test_a_really_full_file_system_names_enospc_and_keeps_the_previous_checkpoint(pretrain_twice, small_disk):
    """A whole training run against a real full disk (not a simulated error)."""
    dirpath = small_disk / "checkpoints"
    pretrain_twice(dirpath, 2)
    before = (dirpath / "last.ckpt").resolve().read_bytes()
    _fill(small_disk)
    with pytest.raises(CheckpointWriteError, match="ENOSPC, No space left on device") as caught:
        pretrain_twice(dirpath, 4)
    assert caught.value.errno == errno.ENOSPC and str(dirpath) in str(caught.value)
    assert (dirpath / "last.ckpt").resolve().read_bytes() == before  # the previous checkpoint is whole
    assert not list(dirpath.glob(".*"))  # the partial file is gone: it would keep the disk full


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
