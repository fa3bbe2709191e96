"""Exact resume: stopping and resuming with `--ckpt_path last` ends on the uninterrupted run's weights.

Masks come from (mask_seed, step, rank) and the training order and augmentation from (data seed,
epoch, index), so on CPU in fp32 the weights after an interrupted run are bitwise the weights of
an uninterrupted one: at an epoch end, and mid-epoch from a step-interval checkpoint (the
resumable training loader skips the batches trained before the interruption). The runs go
through `run_cli` with the digits configs, shrunk on the command line.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch import Callback
from torch.utils.data import TensorDataset

from conftest import REPO_ROOT
from lit_mae.cli.lightning_cli import run_cli
from lit_mae.datamodules import DigitsDataModule, SyntheticDataModule
from lit_mae.datamodules.sampling import EpochSampler, ResumableDataLoader, train_loader

CONFIGS = REPO_ROOT / "configs"
TINY = [f"--model.init_args.config.{key}={value}" for key, value in dict(
    embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2).items()]
QUIET = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
EPOCHS = 4
BATCHES = 1437 // 64  # an epoch of the 1,437 training digits at batch 64 (the last partial batch dropped)
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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core machine: threads only spin
    try:
        with contextlib.chdir(where), mock.patch.object(sys, "argv", ["lightning"]):
            return run_cli(["fit", "--config", str(CONFIGS / config), *QUIET, *args])
    finally:
        torch.set_num_threads(threads)


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs by {(a[key] - b[key]).abs().max().item()}"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """An uninterrupted pretraining run of EPOCHS epochs; its folder (runs/pretrain/...)."""
    where = tmp_path_factory.mktemp("uninterrupted")
    fit("pretrain.yaml", where, *TINY, f"--trainer.max_epochs={EPOCHS}")
    return where


def test_pretraining_stopped_between_epochs_resumes_bitwise(pretrained, tmp_path):
    fit("pretrain.yaml", tmp_path, *TINY, f"--trainer.max_epochs={EPOCHS}", callback(StopAfterEpochs, epochs=EPOCHS // 2))
    last = tmp_path / "runs/pretrain/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == EPOCHS // 2 - 1
    cli = fit("pretrain.yaml", tmp_path, *TINY, f"--trainer.max_epochs={EPOCHS}", "--ckpt_path=last")
    assert cli.trainer.global_step == BATCHES * EPOCHS
    assert_same_weights(weights(last), weights(pretrained / "runs/pretrain/checkpoints/last.ckpt"))


def test_pretraining_crashed_mid_epoch_resumes_bitwise_from_a_step_checkpoint(pretrained, tmp_path):
    every = ["--trainer.callbacks+=lit_mae.callbacks.AtomicModelCheckpoint",
             "--trainer.callbacks.dirpath=steps", "--trainer.callbacks.every_n_train_steps=10",
             "--trainer.callbacks.save_last=true", "--trainer.callbacks.save_top_k=0"]
    with pytest.raises(Crash):  # step 34: in epoch 1; the step checkpoint is from step 30
        fit("pretrain.yaml", tmp_path, *TINY, f"--trainer.max_epochs={EPOCHS}", *every, callback(CrashAtStep, step=34))
    saved = torch.load(tmp_path / "steps/last.ckpt", weights_only=False)
    assert saved["global_step"] == 30
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 30 - BATCHES, "length": BATCHES}]
    with pytest.warns() as caught:
        fit("pretrain.yaml", tmp_path, *TINY, f"--trainer.max_epochs={EPOCHS}", *every,
            "--ckpt_path=steps/last.ckpt")
    assert not [w for w in caught if "dataloader is not resumable" in str(w.message)]
    assert_same_weights(weights(tmp_path / "runs/pretrain/checkpoints/last.ckpt"),  # the config's, at epoch ends
                        weights(pretrained / "runs/pretrain/checkpoints/last.ckpt"))


def test_linear_probe_with_cached_features_resumes_bitwise(pretrained):
    probe = ["--trainer.max_epochs=4", "--test_after_fit=false"]
    fit("linprobe.yaml", pretrained, *probe)
    checkpoints = pretrained / "runs/linprobe/checkpoints"
    reference = weights(checkpoints / "last.ckpt")
    for path in checkpoints.iterdir():
        path.unlink()
    fit("linprobe.yaml", pretrained, *probe, callback(StopAfterEpochs, epochs=2))
    cli = fit("linprobe.yaml", pretrained, *probe, "--ckpt_path=last")
    assert cli.trainer.global_step == BATCHES * 4
    assert_same_weights(weights(checkpoints / "last.ckpt"), reference)


# ---- the pieces: sampler, loader state, augmentation seeds ----


def test_epoch_sampler_order_is_a_function_of_seed_and_epoch():
    def order(seed: int, epoch: int) -> list[int]:
        sampler = EpochSampler(50, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 3) == order(0, 3) and sorted(order(0, 3)) == list(range(50))
    assert order(0, 3) != order(0, 4) and order(0, 3) != order(1, 3)


def test_under_ddp_lightnings_wrapper_shards_the_epoch_order_disjointly():
    """Lightning puts a custom sampler in a DistributedSamplerWrapper (with the global seed, shuffle
    on); `set_epoch` reaches ours and each rank gets its own part of the (seed, epoch) order."""
    def shards(epoch: int) -> list[list[int]]:
        found = []
        for rank in range(2):
            wrapper = DistributedSamplerWrapper(EpochSampler(50, seed=7), num_replicas=2, rank=rank, shuffle=True, seed=0)
            wrapper.set_epoch(epoch)
            found.append(list(wrapper))
        return found

    first, second = shards(3)
    assert len(first) == len(second) == 25 and sorted(first + second) == list(range(50))
    assert shards(3) == [first, second] and shards(4) != [first, second]


def test_a_loaded_state_continues_the_epoch_without_reading_the_skipped_samples():
    reads = []

    class Recorded(TensorDataset):
        def __getitem__(self, index):
            reads.append(index)
            return super().__getitem__(index)

    def loader() -> ResumableDataLoader:
        return train_loader(Recorded(torch.arange(20)), batch_size=3, seed=5, random_samples=False)

    whole = loader()
    whole.sampler.set_epoch(2)
    epoch = [batch[0].tolist() for batch in whole]
    first = loader()
    first.sampler.set_epoch(2)
    iterator = iter(first)
    next(iterator), next(iterator)
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": 2, "length": 7}
    resumed = loader()
    resumed.load_state_dict(state)
    reads.clear()
    assert [batch[0].tolist() for batch in resumed] == epoch[2:]
    assert sorted(reads) == sorted(i for batch in epoch[2:] for i in batch)
    assert resumed.state_dict() == {"epoch": 2, "batches": 7, "length": 7}
    following = loader()
    following.load_state_dict(resumed.state_dict())  # a finished epoch: the next one, from its start
    assert following.sampler.epoch == 3 and len(list(following)) == 7


def first_batches(data, epoch: int) -> list[torch.Tensor]:
    data.setup()
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [batch[0] for batch in itertools.islice(loader, 3)]


@pytest.mark.parametrize("make", [
    lambda workers: DigitsDataModule(image_size=16, batch_size=32, augment="pretrain", num_workers=workers),
    lambda workers: SyntheticDataModule(num_samples=40, image_size=16, batch_size=16, augment="finetune",
                                        num_workers=workers),
], ids=["digits", "synthetic-randaugment-erasing"])
def test_augmentation_follows_seed_epoch_and_index_in_any_process(make):
    torch.manual_seed(123)
    reference = first_batches(make(0), epoch=1)
    torch.manual_seed(456)  # the global RNGs play no part
    assert all(torch.equal(a, b) for a, b in zip(first_batches(make(0), epoch=1), reference))
    assert not torch.equal(first_batches(make(0), epoch=2)[0], reference[0])
    if isinstance(make(0), SyntheticDataModule):  # a worker process draws the same (a whole epoch: it ends cleanly)
        assert all(torch.equal(a, b) for a, b in zip(first_batches(make(1), epoch=1), reference))


def test_base_image_datamodules_train_in_a_seeded_order():
    def first_labels(seed: int) -> list[int]:
        data = SyntheticDataModule(num_samples=40, image_size=8, batch_size=8, seed=seed, augment="pretrain")
        data.setup()
        loader = data.train_dataloader()
        assert isinstance(loader, ResumableDataLoader)
        return next(iter(loader))[1].tolist()

    torch.manual_seed(1)
    reference = first_labels(0)
    torch.manual_seed(2)
    assert first_labels(0) == reference
