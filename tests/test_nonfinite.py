"""NaN and inf losses (the guard in lit_mae/systems/base.py, the reports of systems/nonfinite.py): stop
naming the step and what went into the loss, or skip the update and count it (one process, gradient
accumulation, DDP); fp16 and its gradient scaler on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.plugins import MixedPrecision

from conftest import REPO_ROOT, ImageDataModule, ImageDataset, assert_same_state, state_copy
from lit_mae import LitFineTune, LitLinearProbe, LitMAE
from lit_mae.cli import leave_process_group

SKIP_WARNING = "ignore:skipping the update:UserWarning"
pytestmark = [pytest.mark.filterwarnings("ignore:`training_step` returned `None`"),  # Lightning's, once
              pytest.mark.filterwarnings(r"ignore:Found .* module\(s\) in eval mode")]  # the frozen probe


def nan_data(bad: slice, n: int = 16, batch_size: int = 4) -> ImageDataModule:
    """`n` labelled images (batches of 4, in order) with NaN images at `bad`."""
    dataset = ImageDataset(n=n, size=16, channels=3, kind="tuple")
    dataset.images[bad] = float("nan")
    return ImageDataModule(dataset=dataset, batch_size=batch_size)


class StateAround(Callback):
    """The module's weights just before and just after training batch `index`."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.index:
            self.before = state_copy(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.index:
            self.after = state_copy(pl_module)


# --- raise: the message ----------------------------------------------------------------------

def test_nan_batch_names_step_components_and_points_at_the_data(tiny_config, make_trainer):
    system = LitMAE(config=tiny_config.replace(norm_pix_loss=True), lr=1e-3, warmup_epochs=0)  # cosine: 5e-4 at step 2
    with pytest.raises(FloatingPointError) as info:
        make_trainer(max_epochs=1).fit(system, nan_data(slice(8, 12)))
    message = str(info.value)
    for words in ("non-finite training loss (nan) at global step 2",
                  "inputs: 3072 of 3072 values non-finite (3072 NaN, 0 inf)",
                  "pred: ", "masked patches: 48 of 64", "norm_pix target variance", "lr: 0.0005",
                  "weights: all finite", "previous gradients: norm", "precision: 32-true", "check the data"):
        assert words in message, (words, message)


def test_blown_up_lr_names_the_weights_and_hints_at_lr_precision_and_skipping(tiny_config, make_trainer):
    system = LitMAE(config=tiny_config, lr=1e30, warmup_epochs=0)
    with pytest.raises(FloatingPointError) as info:
        make_trainer(max_steps=4).fit(system, ImageDataModule(n=16))
    message = str(info.value)
    for words in ("at global step 1", "lr: 8.54e+29", "max |w| 1.02e+30", "lower lr", "bf16-mixed instead of 16-mixed",
                  "gradient_clip_val", "on_nonfinite='skip'"):
        assert words in message, (words, message)


def test_non_finite_model_output_is_caught(tiny_config, make_trainer):
    system = LitMAE(config=tiny_config, lr=1e-3)
    with torch.no_grad():
        system.model.decoder_pred.bias.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match=r"non-finite.*step 0") as info:
        make_trainer(max_steps=2).fit(system, ImageDataModule(n=8, batch_size=4))
    message = str(info.value)  # finite data, non-finite weights: the message says which, and hints so
    for words in ("at global step 0", "inputs: finite",
                  "weights: 1 non-finite tensors, e.g. ['model.decoder_pred.bias']",
                  "the weights are already non-finite", "on_nonfinite='skip'"):
        assert words in message, (words, message)
    assert "check the data" not in message


def test_bad_option_values_are_named(tiny_config):
    with pytest.raises(ValueError, match=r"LitMAE\.on_nonfinite must be 'raise' or 'skip', got 'ignore'"):
        LitMAE(config=tiny_config, on_nonfinite="ignore")
    with pytest.raises(ValueError, match=r"LitFineTune\.max_consecutive_skips .* got -1"):
        LitFineTune(pretrained=None, config=tiny_config, num_classes=10, max_consecutive_skips=-1)


# --- skip --------------------------------------------------------------------------------------

@pytest.mark.filterwarnings(SKIP_WARNING)
def test_skip_leaves_the_weights_and_optimizer_counts_it_and_goes_on(tiny_config, make_trainer):
    system = LitMAE(config=tiny_config, lr=1e-3, warmup_epochs=0, on_nonfinite="skip")
    around, logged = StateAround(index=2), []

    class Logged(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            logged.append(float(trainer.callback_metrics["train/skipped_steps"]))

    trainer = make_trainer(max_epochs=1, callbacks=[around, Logged()])
    with pytest.warns(UserWarning, match="skipping the update: non-finite training loss .* at global step 2"):
        trainer.fit(system, nan_data(slice(8, 12)))
    assert_same_state(around.before, around.after)
    assert system.skipped_steps == 1 and logged == [0.0, 0.0, 1.0, 1.0]
    assert trainer.global_step == 4  # the schedule moves on
    steps = {int(s["step"]) for s in trainer.optimizers[0].state.values()}
    assert steps == {3}  # AdamW took 3 real steps


@pytest.mark.filterwarnings(SKIP_WARNING)
def test_too_many_skips_in_a_row_stop(tiny_config, make_trainer):
    system = LitMAE(config=tiny_config, lr=1e-3, on_nonfinite="skip", max_consecutive_skips=2)
    with pytest.raises(FloatingPointError, match=r"3 training steps in a row .*max_consecutive_skips=2.*step 3"):
        make_trainer(max_epochs=1).fit(system, nan_data(slice(4, 16)))
    assert system.skipped_steps == 3


@pytest.mark.filterwarnings(SKIP_WARNING)
@pytest.mark.parametrize("bad_batch", [2, 3])  # the first or the second batch of a 2-batch window
def test_skip_inside_gradient_accumulation_keeps_the_windows_other_batch(tiny_config, make_trainer, bad_batch):
    system = LitMAE(config=tiny_config, lr=1e-3, warmup_epochs=0, on_nonfinite="skip")
    first_window = StateAround(index=1)
    trainer = make_trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[first_window])
    trainer.fit(system, nan_data(slice(4 * bad_batch, 4 * bad_batch + 4)))
    assert system.skipped_steps == 1 and trainer.global_step == 2
    after = state_copy(system)
    assert all(torch.isfinite(v).all() for v in after.values())
    # the second window still stepped, on its finite batch alone
    assert not torch.equal(after["model.decoder_pred.weight"], first_window.after["model.decoder_pred.weight"])


@pytest.mark.filterwarnings(SKIP_WARNING)
@pytest.mark.parametrize("system_class", [LitLinearProbe, LitFineTune])
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_classifiers_share_the_guard(tiny_config, make_trainer, system_class, policy):
    extra = dict(mixup=0.0, cutmix=0.0) if system_class is LitFineTune else {}
    system = system_class(pretrained=None, config=tiny_config, num_classes=10, lr=1e-3, warmup_epochs=0,
                          on_nonfinite=policy, **extra)
    trainer, data = make_trainer(max_epochs=1), nan_data(slice(4, 8))
    if policy == "raise":
        with pytest.raises(FloatingPointError, match=rf"global step 1 .*of {system_class.__name__}; .*logits: "):
            trainer.fit(system, data)
    else:
        trainer.fit(system, data)
        assert system.skipped_steps == 1 and trainer.global_step == 4


class PoisonedOnRankZero(LitMAE):
    """NaN images on rank 0 only: rank 1's loss is finite, yet it must skip too."""

    def _forward(self, batch, stream, step, micro=0):
        images = batch[0].clone()
        if self.global_rank == 0 and stream == "train":
            images[0] = float("nan")
        return super()._forward((images, batch[1]), stream, step, micro)


class LeaveGlooTogether(Callback):
    """The ranks leave the process group as `python -m lit_mae` does after a run (see
    `lit_mae.cli.leave_process_group`); ddp_spawn's workers would otherwise leave it at exit."""

    def teardown(self, trainer, pl_module, stage) -> None:
        leave_process_group()


@pytest.mark.filterwarnings(SKIP_WARNING)
@pytest.mark.filterwarnings("ignore:.*sync_dist=True.*")
def test_skip_under_ddp_every_rank_skips_together(tiny_config, tmp_path, one_thread):
    # returning None on one rank alone would stop Lightning (or hang DDP's gradient all-reduce)
    system = PoisonedOnRankZero(config=tiny_config, lr=1e-3, warmup_epochs=0, on_nonfinite="skip")
    start = state_copy(system)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, default_root_dir=tmp_path, callbacks=[LeaveGlooTogether()])
    trainer.fit(system, ImageDataModule(n=8, batch_size=2, kind="tuple"))  # 2 steps a rank, all skipped
    assert_same_state(start, state_copy(system))  # rank 0's weights, sent back by the spawn launcher


# --- precision ----------------------------------------------------------------------------------

def test_fp16_mixed_on_cpu_becomes_bf16_without_a_scaler(tmp_path):
    with pytest.warns(UserWarning, match="fp16 is not supported on CPU.*bf16-mixed"):
        trainer = Trainer(accelerator="cpu", precision="16-mixed", logger=False, default_root_dir=tmp_path)
    assert trainer.precision == "bf16-mixed" and trainer.precision_plugin.scaler is None


def test_fp16_gradient_scaler_skips_steps_with_inf_gradients(tiny_config, make_trainer):
    """The plugin Lightning builds for 16-mixed on a GPU, run on CPU: a finite loss with inf gradients
    (an fp16 overflow) is the scaler's to skip, not the guard's."""

    class InfGradient(Callback):
        def on_after_backward(self, trainer, pl_module) -> None:
            if trainer.global_step == 1:
                pl_module.model.decoder_pred.weight.grad[0, 0] = float("inf")

    system = LitMAE(config=tiny_config, lr=1e-3, warmup_epochs=0)
    around = StateAround(index=1)
    trainer = make_trainer(max_steps=3, plugins=[MixedPrecision("16-mixed", "cpu")],
                           callbacks=[InfGradient(), around])
    scaler = trainer.precision_plugin.scaler
    start_scale = scaler.get_scale()
    trainer.fit(system, ImageDataModule(n=16))
    assert_same_state(around.before, around.after)
    assert scaler.get_scale() == start_scale / 2 and system.skipped_steps == 0 and trainer.global_step == 3


GPU_RECIPES = sorted(path for folder in ("imagenet", "cifar10") for path in Path(REPO_ROOT, "configs", folder).glob("*.yaml"))


def test_the_gpu_recipe_folders_hold_recipes():
    assert len(GPU_RECIPES) >= 8  # configs/shifted/ and the digits configs are CPU runs (32-true)


@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_gpu_recipes_train_in_bf16_mixed(path):
    assert yaml.safe_load(path.read_text())["trainer"]["precision"] == "bf16-mixed", path
