"""Exact resume: stopping and resuming with `--ckpt_path last` ends on the uninterrupted run's weights.

Masks come from (mask_seed, step, rank) and the training order and augmentation from (data seed,
epoch, index), so on CPU in fp32 the weights after an interrupted run are bitwise the weights of
an uninterrupted one, whatever the global seed of the resumed run: at an epoch end, and mid-epoch
from a step-interval checkpoint (the resumable training loader skips the batches trained before
the interruption). The runs go through `run_cli` with the digits configs, shrunk on the command
line. The pieces (the seeded epoch order, the loader's state, seeded augmentation) are tested on
their own in test_sampling.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

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


def callback(cls: type, **init_args) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"{__name__}.{cls.__name__}", "init_args": init_args})


def fit(config: str, where: Path, *args: str):
    """`lightning fit --config configs/<config> ...` in this process, from `where`; returns the CLI."""
    return run_cli_in(where, ["fit", "--config", str(CONFIGS / config), *QUIET, *args])


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


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
