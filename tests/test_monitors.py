"""The representation monitors of lit_mae/callbacks/monitors.py (online linear probe, kNN), on tiny
CPU runs. The prediction writer (callbacks/predictions.py): test_predictions.py."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import seed_everything
from torch.utils.data import TensorDataset

from conftest import ImageDataModule, tiny_lit_mae
from lit_mae.callbacks import KNNMonitor, OnlineLinearProbe, knn_predict
from lit_mae.datamodules.digits import DigitsDataModule
from lit_mae.systems.pretraining import LitMAE

MONITOR_LOGGER = "lit_mae.callbacks.monitors"


# ---- knn_predict ----------------------------------------------------------------------------------

def _unit(*rows: tuple[float, float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows), dim=1)


def test_knn_predict_weights_votes_by_exp_similarity_over_temperature():
    # similarities to the query (1, 0): 1.0 (class 0), 0.8 and 0.6 (class 1), 0.0 (class 0)
    train = _unit((1.0, 0.0), (0.8, 0.6), (0.6, 0.8), (0.0, 1.0))
    labels = torch.tensor([0, 1, 1, 0])
    query = _unit((1.0, 0.0))
    # k=3, T=1: class 0 gets e^1 = 2.72, class 1 gets e^0.8 + e^0.6 = 4.05 -> 1
    assert math.exp(0.8) + math.exp(0.6) > math.exp(1.0)
    assert knn_predict(train, labels, query, num_classes=2, k=3, temperature=1.0).tolist() == [1]
    # k=3, T=0.2: e^5 = 148 against e^4 + e^3 = 75 -> 0 (the nearest neighbour outweighs two)
    assert knn_predict(train, labels, query, num_classes=2, k=3, temperature=0.2).tolist() == [0]
    assert knn_predict(train, labels, query, num_classes=2, k=1, temperature=1.0).tolist() == [0]
    # k larger than the bank uses the whole bank: 3 votes of class 0's e^1 + e^0 vs class 1's 4.05
    assert knn_predict(train, labels, query, num_classes=2, k=50, temperature=1.0).tolist() == [1]


def test_knn_predict_recovers_well_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(5, 16) * 10  # 5 classes, far apart in 16 dimensions
    labels = torch.arange(5).repeat_interleave(40)  # (200,)
    train = F.normalize(centres[labels] + torch.randn(200, 16, generator=generator), dim=1)
    query_labels = torch.arange(5).repeat(7)  # (35,)
    queries = F.normalize(centres[query_labels] + torch.randn(35, 16, generator=generator), dim=1)
    predicted = knn_predict(train, labels, queries, num_classes=5, k=20, temperature=0.07, chunk_size=8)
    assert torch.equal(predicted, query_labels)


# ---- the monitors in a fit --------------------------------------------------------------------------

@pytest.mark.parametrize(("features", "train_above"), [("step", 0.13), ("unmasked", 0.2)])
def test_online_probe_and_knn_learn_digits_and_log(make_trainer, features, train_above):
    """Training accuracy on the step's features (a quarter of the patches) starts lower than on the
    full images; both heads are judged on the full validation images."""
    seed_everything(0)
    datamodule = DigitsDataModule(image_size=16, batch_size=64)
    probe, knn = OnlineLinearProbe(lr=1e-2, features=features), KNNMonitor(every_n_epochs=1, k=10)
    trainer = make_trainer(max_epochs=2, limit_val_batches=1.0, callbacks=[probe, knn])
    trainer.fit(tiny_lit_mae(), datamodule=datamodule)
    metrics = trainer.callback_metrics
    names = {"online_probe/train_acc", "online_probe/train_loss", "online_probe/val_acc", "knn/val_acc"}
    assert names <= set(metrics)
    assert metrics["online_probe/val_acc"] > 0.3  # chance is 0.1
    assert metrics["online_probe/train_acc"] > train_above  # the mean over the epoch, from a random head
    assert metrics["knn/val_acc"] > 0.3


def test_online_probe_sends_no_gradient_to_the_encoder(make_trainer):
    """The same run with and without the probe ends with the same weights."""

    def fit(callbacks: list) -> LitMAE:
        seed_everything(0)
        model = tiny_lit_mae()
        make_trainer(max_steps=3, callbacks=callbacks).fit(model, datamodule=ImageDataModule(kind="tuple"))
        return model

    probe = OnlineLinearProbe(num_classes=10)
    with_probe, without = fit([probe]), fit([])
    assert probe.active  # it did train
    for (name, a), b in zip(with_probe.model.named_parameters(), without.model.parameters()):
        assert torch.equal(a, b), name


def test_online_probe_step_leaves_encoder_grads_untouched(make_trainer):
    model = tiny_lit_mae()
    probe = OnlineLinearProbe(num_classes=10)
    trainer = make_trainer(max_steps=1, callbacks=[probe])
    trainer.fit(model, datamodule=ImageDataModule(kind="tuple"))
    model.zero_grad(set_to_none=True)
    model.log = lambda *args, **kwargs: None  # called outside the loop, which collects the logs
    head_before = [p.clone() for p in probe.head.parameters()]
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    model.step_latent = None  # as a module that keeps none: the probe encodes the images itself
    probe.on_train_batch_end(trainer, model, torch.tensor(0.0), (images, labels), 0)
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(head_before, probe.head.parameters()))


@pytest.mark.parametrize("case", ["no labels", "labels -1"])
def test_monitors_switch_off_without_labels(make_trainer, caplog, case):
    caplog.set_level(logging.INFO, logger=MONITOR_LOGGER)
    if case == "no labels":
        datamodule = ImageDataModule(kind="tensor")  # plain image tensors, no num_classes
    else:
        images = torch.randn(16, 3, 16, 16)
        datamodule = ImageDataModule(dataset=TensorDataset(images, torch.full((16,), -1)))
    probe, knn = OnlineLinearProbe(num_classes=10), KNNMonitor(every_n_epochs=1)
    trainer = make_trainer(max_epochs=2, limit_val_batches=1.0, callbacks=[probe, knn])
    trainer.fit(tiny_lit_mae(), datamodule=datamodule)
    assert not probe.active and not knn.enabled
    assert not any(name.startswith(("online_probe/", "knn/")) for name in trainer.callback_metrics)
    messages = [record.getMessage() for record in caplog.records if record.name == MONITOR_LOGGER]
    assert sum("OnlineLinearProbe is off" in m for m in messages) == 1
    assert sum("KNNMonitor is off" in m for m in messages) == 1


def test_online_probe_off_without_num_classes(make_trainer, caplog):
    caplog.set_level(logging.INFO, logger=MONITOR_LOGGER)
    probe = OnlineLinearProbe()
    make_trainer(max_steps=2, callbacks=[probe]).fit(tiny_lit_mae(), datamodule=ImageDataModule(kind="tuple"))
    assert not probe.active
    assert any("num_classes" in r.getMessage() for r in caplog.records if r.name == MONITOR_LOGGER)
