"""`OnlineLinearProbe(features=...)`: "step" trains the head on the encoder output of the training
step itself (the visible patches, no extra forward), "unmasked" on the full images encoded again."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch import Callback
from torch.utils.data import TensorDataset

from conftest import REPO_ROOT, ImageDataModule, tiny_lit_mae
from lit_mae import LitMAE
from lit_mae.callbacks import OnlineLinearProbe
from lit_mae.systems.base import step_generator

MONITOR_LOGGER = "lit_mae.callbacks.monitors"


class HeadInputs(Callback):
    """Records, per training batch: the model before the step, the global step, the batch, and what
    the probe's head received. Put it before the probe."""

    def __init__(self, probe: OnlineLinearProbe) -> None:
        self.probe, self.records = probe, []

    def on_train_start(self, trainer, pl_module) -> None:
        self.probe.head.register_forward_hook(lambda module, inputs, output: self.records[-1].update(head=inputs[0]))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.records.append({"model": copy.deepcopy(pl_module.model), "step": trainer.global_step, "batch": batch})


class CountFullForwards(Callback):
    """Counts the images through the unmasked encoder (`forward_features`) during training batches."""

    def __init__(self) -> None:
        self.images = 0

    def on_train_start(self, trainer, pl_module) -> None:
        encoder = pl_module.model.encoder
        plain = encoder.forward_features

        def counted(images, *args, **kwargs):
            self.images += len(images)
            return plain(images, *args, **kwargs)

        encoder.forward_features = counted


@pytest.mark.parametrize("accumulate", [1, 2])
def test_step_features_are_the_steps_own_masked_cls_token(make_trainer, accumulate):
    """What the head trains on equals the cls token of the model as it was before the batch, run on
    the batch with that batch's mask noise (its optimizer step, its place in the accumulation
    window): the very forward the loss came from."""
    probe = OnlineLinearProbe(num_classes=10, features="step")
    recorder, counter = HeadInputs(probe), CountFullForwards()
    model = tiny_lit_mae()
    trainer = make_trainer(max_steps=3, accumulate_grad_batches=accumulate, callbacks=[recorder, counter, probe])
    trainer.fit(model, datamodule=ImageDataModule(n=24, kind="tuple"))
    assert len(recorder.records) == 3 * accumulate and all("head" in record for record in recorder.records)
    for batch_idx, record in enumerate(recorder.records):
        images, _ = record["batch"]
        generator = step_generator(0, record["step"], 0, "train", batch_idx % accumulate)
        noise = torch.rand(len(images), model.config.num_patches, generator=generator)
        with torch.no_grad():
            expected = record["model"](images, noise=noise).latent[:, 0]  # (B, D)
        torch.testing.assert_close(record["head"], expected, rtol=0, atol=1e-6)
    assert counter.images == 0  # no extra forward


def test_unmasked_features_encode_the_full_images_again(make_trainer):
    probe = OnlineLinearProbe(num_classes=10, features="unmasked")
    recorder, counter = HeadInputs(probe), CountFullForwards()
    make_trainer(max_steps=3, callbacks=[recorder, counter, probe]).fit(
        tiny_lit_mae(), datamodule=ImageDataModule(n=12, kind="tuple"))
    assert counter.images == 12  # three batches of 4, once each
    first, second = recorder.records[:2]
    with torch.no_grad():  # encoded after the first update: by the model the second step starts from
        # (through the class: the copy's instance attribute is the counter of the running encoder)
        encoder = second["model"].encoder
        expected = type(encoder).forward_features(encoder, first["batch"][0])[:, 0]
    torch.testing.assert_close(first["head"], expected, rtol=0, atol=1e-6)


def test_avg_pool_of_step_features_averages_the_visible_patches(make_trainer):
    probe = OnlineLinearProbe(num_classes=10, pool="avg")
    recorder = HeadInputs(probe)
    model = tiny_lit_mae()
    make_trainer(max_steps=1, callbacks=[recorder, probe]).fit(model, datamodule=ImageDataModule(n=4, kind="tuple"))
    record = recorder.records[0]
    images, _ = record["batch"]
    noise = torch.rand(len(images), model.config.num_patches, generator=step_generator(0, 0, 0))
    with torch.no_grad():
        latent = record["model"](images, noise=noise).latent  # (B, 1+K, D)
    assert latent.shape[1] == 1 + 4  # 16 patches, 75% masked
    torch.testing.assert_close(record["head"], latent[:, 1:].mean(dim=1), rtol=0, atol=1e-6)


def test_a_skipped_nonfinite_step_does_not_train_the_head(make_trainer):
    """The second of three batches holds a NaN image: LitMAE skips that update, and so does the probe
    (its features may be NaN as well)."""
    images, labels = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.arange(12) % 10
    images[5, 0, 0, 0] = float("nan")
    probe = OnlineLinearProbe(num_classes=10)
    model = tiny_lit_mae(on_nonfinite="skip")
    with pytest.warns(UserWarning, match="skipping the update"):
        make_trainer(max_steps=3, callbacks=[probe]).fit(
            model, datamodule=ImageDataModule(dataset=TensorDataset(images, labels)))
    assert model.skipped_steps == 1
    assert {int(state["step"]) for state in probe.optimizer.state.values()} == {2}
    assert all(torch.isfinite(p).all() for p in probe.head.parameters())


class Bookkeeping(LitMAE):
    """A user's subclass that calls LitMAE's step and reads its loss."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.last_loss = loss.item()
        return loss


def test_a_skipped_step_under_ddp_does_not_train_the_head(make_trainer):
    """Under DDP a skipped step returns a zero loss tied to the weights (so that the gradient
    all-reduce completes) instead of None; the probe must skip it all the same, not encode the NaN
    images itself. Here the one process takes the DDP branch of the skip."""
    images, labels = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.arange(12) % 10
    images[5, 0, 0, 0] = float("nan")
    probe = OnlineLinearProbe(num_classes=10)
    model = tiny_lit_mae(on_nonfinite="skip")

    def ddp_skip():  # what LitSystem._skipped_update does with world_size > 1
        model._drop_grads = True
        return torch.stack([p.sum() for p in model.parameters() if p.requires_grad]).sum() * 0.0

    model._skipped_update = ddp_skip
    with pytest.warns(UserWarning, match="skipping the update"):
        make_trainer(max_steps=3, callbacks=[probe]).fit(
            model, datamodule=ImageDataModule(dataset=TensorDataset(images, labels)))
    assert model.skipped_steps == 1
    assert {int(state["step"]) for state in probe.optimizer.state.values()} == {2}
    assert all(torch.isfinite(t).all() for t in probe.head.state_dict().values())


class ManualStep(LitMAE):
    """Manual optimisation: the step returns None, and Lightning hands callbacks an empty dict."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        loss = self.model(batch[0]).loss
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()


def test_a_manually_optimised_module_still_trains_the_probe(make_trainer):
    probe = OnlineLinearProbe(num_classes=10)
    model = ManualStep(config=tiny_lit_mae().config, lr=1e-3, warmup_epochs=0)
    make_trainer(max_steps=3, callbacks=[probe]).fit(model, datamodule=ImageDataModule(n=12, kind="tuple"))
    assert {int(state["step"]) for state in probe.optimizer.state.values()} == {3}


class OwnForward(LitMAE):
    """A user's subclass with a training step of its own, that keeps no `step_latent`."""

    def training_step(self, batch, batch_idx):
        images, _ = batch
        return self.model(images).loss


def test_a_subclass_calling_litmaes_step_keeps_the_free_features(make_trainer):
    probe, counter = OnlineLinearProbe(num_classes=10), CountFullForwards()
    model = Bookkeeping(config=tiny_lit_mae().config, lr=1e-3, warmup_epochs=0)
    make_trainer(max_steps=3, callbacks=[counter, probe]).fit(model, datamodule=ImageDataModule(n=12, kind="tuple"))
    assert counter.images == 0 and isinstance(model.last_loss, float)
    assert {int(state["step"]) for state in probe.optimizer.state.values()} == {3}


def test_a_module_without_step_features_gets_the_unmasked_ones(make_trainer, caplog):
    caplog.set_level(logging.INFO, logger=MONITOR_LOGGER)
    probe, counter = OnlineLinearProbe(num_classes=10), CountFullForwards()
    model = OwnForward(config=tiny_lit_mae().config, lr=1e-3, warmup_epochs=0)
    make_trainer(max_steps=3, callbacks=[counter, probe]).fit(model, datamodule=ImageDataModule(n=12, kind="tuple"))
    assert counter.images == 12
    assert {int(state["step"]) for state in probe.optimizer.state.values()} == {3}
    messages = [r.getMessage() for r in caplog.records if r.name == MONITOR_LOGGER]
    assert sum("OwnForward keeps no `step_latent`" in m for m in messages) == 1


def test_features_must_be_step_or_unmasked():
    with pytest.raises(ValueError, match="features must be 'step' or 'unmasked', got 'masked'"):
        OnlineLinearProbe(features="masked")


def test_the_default_trains_on_the_steps_features():
    assert OnlineLinearProbe().features == "step"


def test_probe_digits_benchmark_runs_both_features_on_the_same_encoder(tmp_path):
    """benchmarks/probe_digits.py for one epoch of configs/pretrain.yaml: one row per kind of
    features, each with a probe accuracy, and the same losses (the probe never touches the encoder)."""
    result = subprocess.run([sys.executable, "benchmarks/probe_digits.py", "--features", "step,unmasked",
                             "--epochs", "1", "--out", str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[:3] for row in rows] == [["step", "1", "1"], ["unmasked", "1", "1"]]
    for row in rows:
        assert 0 < float(row[3]) <= 100  # online_probe/val_acc %
        assert row[4] == "n/a" and row[5] == row[3]  # no epoch 20; the mean of one epoch
    assert rows[0][7:9] == rows[1][7:9]  # train/loss, val/loss
