"""Exact resume: stopping and resuming with `--ckpt_path last` ends on the uninterrupted run's weights.

Masks come from (mask_seed, step, rank) and the training order and augmentation from (data seed,
epoch, index), so on CPU in fp32 the weights after an interrupted run are bitwise the weights of
an uninterrupted one, whatever the global seed of the resumed run: at an epoch end, and mid-epoch
from a step-interval checkpoint (the resumable training loader skips the batches trained before
the interruption). The runs go through `run_cli` with the digits configs, shrunk on the command
line. The pieces (the seeded epoch order, the loader's state, seeded augmentation) are tested on
their own in test_sampling.py.

The knobs that change where an epoch ends or where a checkpoint lands (`limit_train_batches`, an
int or a fraction; `max_steps` inside an epoch; validation inside the epoch; gradient
accumulation; step-interval checkpoints) and a SIGKILL at a seeded step are resumed on a few
batches an epoch; fine-tuning (seeded mixup/cutmix and drop path) and the non-finite skip counter
too. Each compares with an uninterrupted run of the same settings (`uninterrupted`, made once).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import pytest
import torch
from lightning.pytorch import Callback

from lit_mae.datamodules.batch import read_batch

from conftest import REPO_ROOT, assert_same_state, run_cli_in, tiny_cli_args

CONFIGS = REPO_ROOT / "configs"
QUIET = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
EPOCHS = 4
BATCHES = 1437 // 64  # an epoch of the 1,437 training digits at batch 64 (the last partial batch dropped)
# a tiny model whose warmup ends after the first epoch: every resume lands on the cosine part
PRETRAIN = [*tiny_cli_args(), "--model.init_args.warmup_epochs=1", f"--trainer.max_epochs={EPOCHS}"]
# the linear probe's frozen encoder stays in eval mode on purpose
pytestmark = [pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode:UserWarning"),
              pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")]


class StopAfterEpochs(Callback):
    """Ends `fit` after `epochs` epochs, as a user stopping a run between epochs would."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class Crash(RuntimeError):
    pass


class CrashAtStep(Callback):
    """Raises `Crash` after optimizer step `step`: a crash between two step-interval checkpoints."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise Crash(f"crash at step {trainer.global_step}")


class NaNInputsAt(Callback):
    """Fills the images of the batches of optimizer steps `steps` (0-based) with NaN: a non-finite loss there."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.steps:
            read_batch(batch).images.fill_(math.nan)


def callback(cls: type, **init_args) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"{__name__}.{cls.__name__}", "init_args": init_args})


def fit(config: str, where: Path, *args: str):
    """`lightning fit --config configs/<config> ...` in this process, from `where`; returns the CLI."""
    return run_cli_in(where, ["fit", "--config", str(CONFIGS / config), *QUIET, *args])


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Callable[..., Path]:
    """`reference(config, *args)`: the folder of an uninterrupted `fit` with these arguments, run
    once per module (tests of the same settings share it)."""
    made: dict[tuple[str, ...], Path] = {}

    def reference(config: str, *args: str) -> Path:
        if (config, *args) not in made:
            where = tmp_path_factory.mktemp("reference")
            fit(config, where, *args)
            made[(config, *args)] = where
        return made[(config, *args)]

    return reference


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """An uninterrupted pretraining run of EPOCHS epochs; its folder (runs/pretrain/...)."""
    where = tmp_path_factory.mktemp("uninterrupted")
    fit("pretrain.yaml", where, *PRETRAIN)
    return where


def test_pretraining_stopped_between_epochs_resumes_bitwise(pretrained, tmp_path):
    fit("pretrain.yaml", tmp_path, *PRETRAIN, callback(StopAfterEpochs, epochs=EPOCHS // 2))
    last = tmp_path / "runs/pretrain/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == EPOCHS // 2 - 1
    # another global seed than the uninterrupted run's: masks, order and augmentation do not read it
    cli = fit("pretrain.yaml", tmp_path, *PRETRAIN, "--ckpt_path=last", "--seed_everything=123")
    assert cli.trainer.global_step == BATCHES * EPOCHS
    assert_same_state(weights(last), weights(pretrained / "runs/pretrain/checkpoints/last.ckpt"))


def test_pretraining_crashed_mid_epoch_resumes_bitwise_from_a_step_checkpoint(pretrained, tmp_path):
    every = ["--trainer.callbacks+=lit_mae.callbacks.AtomicModelCheckpoint",
             "--trainer.callbacks.dirpath=steps", "--trainer.callbacks.every_n_train_steps=10",
             "--trainer.callbacks.save_last=true", "--trainer.callbacks.save_top_k=0"]
    with pytest.raises(Crash):  # step 34: in epoch 1; the step checkpoint is from step 30
        fit("pretrain.yaml", tmp_path, *PRETRAIN, *every, callback(CrashAtStep, step=34))
    saved = torch.load(tmp_path / "steps/last.ckpt", weights_only=False)
    assert saved["global_step"] == 30
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 30 - BATCHES, "length": BATCHES}]
    with pytest.warns() as caught:
        fit("pretrain.yaml", tmp_path, *PRETRAIN, *every, "--ckpt_path=steps/last.ckpt")
    assert not [w for w in caught if "dataloader is not resumable" in str(w.message)]
    assert_same_state(weights(tmp_path / "runs/pretrain/checkpoints/last.ckpt"),  # the config's, at epoch ends
                      weights(pretrained / "runs/pretrain/checkpoints/last.ckpt"))


def test_linear_probe_with_cached_features_resumes_bitwise(pretrained):
    probe = ["--trainer.max_epochs=4", "--test_after_fit=false"]
    fit("linprobe.yaml", pretrained, *probe)
    checkpoints = pretrained / "runs/linprobe/checkpoints"
    reference = weights(checkpoints / "last.ckpt")
    shutil.rmtree(pretrained / "runs/linprobe")  # a fresh run refuses a folder that holds one
    fit("linprobe.yaml", pretrained, *probe, callback(StopAfterEpochs, epochs=2))
    cli = fit("linprobe.yaml", pretrained, *probe, "--ckpt_path=last")
    assert cli.trainer.global_step == BATCHES * 4
    assert_same_state(weights(checkpoints / "last.ckpt"), reference)


# --- the knobs that move an epoch's end or a checkpoint ----------------------------------------------

LIMITED = [*PRETRAIN, "--trainer.limit_train_batches=6"]  # epochs of 6 of the 22 batches
LAST = "runs/pretrain/checkpoints/last.ckpt"  # the config's checkpoint, at epoch ends (or validation ends)


def every_n_steps(n: int) -> list[str]:
    """A step-interval AtomicModelCheckpoint writing steps/last.ckpt every `n` optimizer steps."""
    return ["--trainer.callbacks+=lit_mae.callbacks.AtomicModelCheckpoint",
            "--trainer.callbacks.dirpath=steps", f"--trainer.callbacks.every_n_train_steps={n}",
            "--trainer.callbacks.save_last=true", "--trainer.callbacks.save_top_k=0"]


def saved_position(checkpoint: Path) -> dict:
    return torch.load(checkpoint, weights_only=False)["DigitsDataModule"]["train_loader"]


@pytest.mark.parametrize("limit", ["6", "0.3"], ids=["int", "fraction"])  # 0.3 of 22 batches: 6 (LIMITED's)
def test_limited_epochs_stopped_between_epochs_resume_bitwise(uninterrupted, tmp_path, limit):
    args = [*PRETRAIN, f"--trainer.limit_train_batches={limit}"]
    fit("pretrain.yaml", tmp_path, *args, callback(StopAfterEpochs, epochs=2))
    # the epoch of 6 batches was over: the resumed run starts the next one
    assert saved_position(tmp_path / LAST) == {"epoch": 1, "batches": 6, "length": 6, "epoch_over": True}
    cli = fit("pretrain.yaml", tmp_path, *args, "--ckpt_path=last")
    assert cli.trainer.global_step == 6 * EPOCHS
    assert_same_state(weights(tmp_path / LAST), weights(uninterrupted("pretrain.yaml", *LIMITED) / LAST))


def test_max_steps_ending_inside_an_epoch_resumes_bitwise(uninterrupted, tmp_path):
    """Steps 9 and 16 end inside epochs 1 and 2 (of 6 batches). Lightning 2.6 continues such an
    epoch but sets the sampler's epoch one ahead; the loader keeps the uninterrupted run's."""
    # a constant lr: the schedule's length (max_steps) is then no difference between the runs
    args = [*LIMITED, "--model.init_args.lr=1e-3", "--model.init_args.min_lr=1e-3",
            "--model.init_args.warmup_epochs=0", "--trainer.max_epochs=100"]
    fit("pretrain.yaml", tmp_path, *args, "--trainer.max_steps=9")
    assert saved_position(tmp_path / LAST) == {"epoch": 1, "batches": 3, "length": 6, "epoch_over": True}
    fit("pretrain.yaml", tmp_path, *args, "--trainer.max_steps=16", "--ckpt_path=last")
    assert saved_position(tmp_path / LAST)["epoch"] == 2
    cli = fit("pretrain.yaml", tmp_path, *args, "--trainer.max_steps=26", "--ckpt_path=last")
    assert cli.trainer.global_step == 26
    assert_same_state(weights(tmp_path / LAST),
                      weights(uninterrupted("pretrain.yaml", *args, "--trainer.max_steps=26") / LAST))


def test_validation_inside_the_epoch_resumes_bitwise(uninterrupted, tmp_path):
    """Validation after batches 3 and 6 of each epoch (the config's checkpoint is saved at the end of
    each): stopped between epochs, then crashed after step 17 and resumed from step 16's checkpoint."""
    args = [*LIMITED, "--trainer.val_check_interval=0.5", *every_n_steps(4)]
    fit("pretrain.yaml", tmp_path, *args, callback(StopAfterEpochs, epochs=2))
    position = saved_position(tmp_path / LAST)  # saved at the validation that ends epoch 1
    assert position == {"epoch": 1, "batches": 6, "length": 6, "epoch_over": False}
    with pytest.raises(Crash):
        fit("pretrain.yaml", tmp_path, *args, "--ckpt_path=last", callback(CrashAtStep, step=17))
    assert saved_position(tmp_path / "steps/last.ckpt") == {"epoch": 2, "batches": 4, "length": 6, "epoch_over": False}
    cli = fit("pretrain.yaml", tmp_path, *args, "--ckpt_path=steps/last.ckpt")
    assert cli.trainer.global_step == 6 * EPOCHS
    assert_same_state(weights(tmp_path / LAST), weights(uninterrupted("pretrain.yaml", *args) / LAST))


def test_gradient_accumulation_resumes_bitwise_from_step_checkpoints(uninterrupted, tmp_path):
    """7 batches an epoch in windows of 2: 4 optimizer steps, the last one after a window of one
    batch. Step checkpoints every 3 steps: step 9 is inside epoch 2, step 12 ends it."""
    args = [*PRETRAIN, "--trainer.limit_train_batches=7", "--trainer.accumulate_grad_batches=2", *every_n_steps(3)]
    with pytest.raises(Crash):
        fit("pretrain.yaml", tmp_path, *args, callback(CrashAtStep, step=10))
    assert saved_position(tmp_path / "steps/last.ckpt") == {"epoch": 2, "batches": 2, "length": 7, "epoch_over": False}
    with pytest.raises(Crash):
        fit("pretrain.yaml", tmp_path, *args, "--ckpt_path=steps/last.ckpt", callback(CrashAtStep, step=13))
    assert saved_position(tmp_path / "steps/last.ckpt") == {"epoch": 2, "batches": 7, "length": 7, "epoch_over": False}
    cli = fit("pretrain.yaml", tmp_path, *args, "--ckpt_path=steps/last.ckpt")
    assert cli.trainer.global_step == 4 * EPOCHS
    assert_same_state(weights(tmp_path / LAST), weights(uninterrupted("pretrain.yaml", *args) / LAST))


def test_step_checkpoints_with_limited_epochs_resume_bitwise(uninterrupted, tmp_path):
    """A step checkpoint at the last batch of a limited epoch (step 12): the next epoch follows.
    Resumed from there, Lightning 2.6 does not count epoch 2 as started, so that step 16's
    checkpoint inside it looks like one between epochs: resumed from it, Lightning counts a new
    epoch of 6 batches, and the loader ends it after epoch 2's last 2 batches."""
    args = [*LIMITED, *every_n_steps(4)]
    with pytest.raises(Crash):
        fit("pretrain.yaml", tmp_path, *args, callback(CrashAtStep, step=14))
    assert saved_position(tmp_path / "steps/last.ckpt") == {"epoch": 1, "batches": 6, "length": 6, "epoch_over": False}
    with pytest.raises(Crash):
        fit("pretrain.yaml", tmp_path, *args, "--ckpt_path=steps/last.ckpt", callback(CrashAtStep, step=17))
    saved = torch.load(tmp_path / "steps/last.ckpt", weights_only=False)
    progress = saved["loops"]["fit_loop"]["epoch_progress"]["current"]
    assert progress["ready"] == progress["started"] == progress["processed"] == progress["completed"] == 2
    assert saved["DigitsDataModule"]["train_loader"] == {"epoch": 2, "batches": 4, "length": 6, "epoch_over": False}
    cli = fit("pretrain.yaml", tmp_path, *args, "--ckpt_path=steps/last.ckpt")
    assert cli.trainer.global_step == 6 * EPOCHS
    # checkpoints change no weights: the uninterrupted run without the step checkpoints
    assert_same_state(weights(tmp_path / LAST), weights(uninterrupted("pretrain.yaml", *LIMITED) / LAST))


# --- SIGKILL ------------------------------------------------------------------------------------------

KILL_ARGS = [*LIMITED, "--trainer.logger=false", "--trainer.limit_val_batches=0", "--trainer.callbacks=" + json.dumps([
    {"class_path": "lit_mae.callbacks.AtomicModelCheckpoint", "init_args": {
        "dirpath": "checkpoints", "filename": "step{step:03d}", "auto_insert_metric_name": False,
        "every_n_train_steps": 3, "save_top_k": 1, "save_last": "link"}}])]


def _fit_child(where: Path, args: list[str], kill_step: int, reached) -> None:
    """A forked child: `fit` in `where`; after optimizer step `kill_step` (its checkpoint written, if
    one is due) it reports in `reached` and waits for the SIGKILL."""
    log = os.open(where / f"child-{kill_step}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1), os.dup2(log, 2)
    try:
        import lit_mae.systems.pretraining

        def report(module, *_):
            if module.global_step == kill_step:
                reached.value = kill_step
                time.sleep(60)  # the kill comes within milliseconds; an orphan does not linger
                os._exit(3)

        lit_mae.systems.pretraining.LitMAE.on_train_batch_end = report
        fit("pretrain.yaml", where, *args)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


def test_sigkill_at_seeded_steps_with_limited_epochs_resumes_bitwise(uninterrupted, tmp_path):
    """Killed twice at seeded steps (checkpoints every 3 steps, epochs of 6: some resumes start at an
    epoch's end, some inside one), resumed with `--ckpt_path last` each time, then run to the end.
    (Seed 0: killed after steps 19 and 22, resumed from step 18, the end of epoch 2, then from step
    21, inside an epoch that Lightning does not count as started; see the step-checkpoint test.)"""
    fork = multiprocessing.get_context("fork")
    reached = fork.Value("i", -1, lock=False)
    rng = random.Random(0)
    kill_steps = sorted(rng.sample(range(7, 23), 2))
    for kill_step in kill_steps:
        reached.value = -1
        child = fork.Process(target=_fit_child, args=(tmp_path, [*KILL_ARGS, "--ckpt_path=last"], kill_step, reached))
        child.start()
        deadline = time.monotonic() + 120
        while reached.value != kill_step and child.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert reached.value == kill_step, f"exit {child.exitcode}: " + (tmp_path / f"child-{kill_step}.log").read_text()[-3000:]
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        saved = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)
        assert saved["global_step"] == kill_step // 3 * 3
    cli = fit("pretrain.yaml", tmp_path, *KILL_ARGS, "--ckpt_path=last")
    assert cli.trainer.global_step == 6 * EPOCHS
    reference = uninterrupted("pretrain.yaml", *KILL_ARGS) / "checkpoints/last.ckpt"
    assert_same_state(weights(tmp_path / "checkpoints/last.ckpt"), weights(reference))


# --- fine-tuning, the non-finite skip counter ---------------------------------------------------------

def test_fine_tuning_stopped_between_epochs_resumes_bitwise(pretrained):
    """Mixup/cutmix and drop path are seeded per step (`LitSystem.seeded_randomness`), the order by
    (seed, epoch): a resumed fine-tune ends on the uninterrupted one's weights."""
    tune = ["--trainer.max_epochs=3", "--trainer.limit_train_batches=6", "--test_after_fit=false"]
    fit("finetune.yaml", pretrained, *tune)
    checkpoints = pretrained / "runs/finetune/checkpoints"
    reference = weights(checkpoints / "last.ckpt")
    shutil.rmtree(pretrained / "runs/finetune")  # a fresh run refuses a folder that holds one
    fit("finetune.yaml", pretrained, *tune, callback(StopAfterEpochs, epochs=1))
    cli = fit("finetune.yaml", pretrained, *tune, "--ckpt_path=last", "--seed_everything=123")
    assert cli.trainer.global_step == 6 * 3
    assert_same_state(weights(checkpoints / "last.ckpt"), reference)


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`")  # a skipped step
@pytest.mark.filterwarnings("ignore:skipping the update")  # where pytest.warns does not look (the reference)
def test_the_nonfinite_skip_counter_survives_a_resume(uninterrupted, tmp_path):
    """NaN inputs at steps 2 and 4 (epoch 0) and 9 (epoch 1), skipped: 2 skips saved at the stop,
    3 at the end, as in the uninterrupted run."""
    args = [*LIMITED, "--model.init_args.on_nonfinite=skip", callback(NaNInputsAt, steps=[2, 4, 9])]
    with pytest.warns(UserWarning, match="skipping the update"):
        fit("pretrain.yaml", tmp_path, *args, callback(StopAfterEpochs, epochs=1))
    assert torch.load(tmp_path / LAST, weights_only=False)["lit_mae_nonfinite"]["skipped_steps"] == 2
    with pytest.warns(UserWarning, match="skipping the update"):
        cli = fit("pretrain.yaml", tmp_path, *args, "--ckpt_path=last")
    assert cli.model.skipped_steps == 3
    reference = uninterrupted("pretrain.yaml", *args) / LAST
    for checkpoint in (tmp_path / LAST, reference):
        assert torch.load(checkpoint, weights_only=False)["lit_mae_nonfinite"]["skipped_steps"] == 3
    assert_same_state(weights(tmp_path / LAST), weights(reference))
