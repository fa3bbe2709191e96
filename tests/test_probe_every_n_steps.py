"""`OnlineLinearProbe(every_n_steps=N)`: the head trains on batches 0, N, 2N, ... of an epoch only
(what makes `features="unmasked"` cheap; docs/performance.md)."""

from __future__ import annotations

import pytest

from conftest import ImageDataModule, tiny_lit_mae
from lit_mae.callbacks import OnlineLinearProbe


@pytest.mark.parametrize(("every", "updates"), [(1, 5), (2, 3), (16, 1)])
def test_the_head_steps_on_one_batch_in_n(make_trainer, every, updates):
    probe = OnlineLinearProbe(num_classes=10, every_n_steps=every)
    make_trainer(max_steps=5, callbacks=[probe]).fit(tiny_lit_mae(), datamodule=ImageDataModule(n=20, kind="tuple"))
    steps = {int(state["step"]) for state in probe.optimizer.state.values()}
    assert steps == {updates}  # batches 0..4 of one epoch


@pytest.mark.parametrize("every", [0, -1, 1.5])
def test_every_n_steps_must_be_a_positive_integer(every):
    with pytest.raises(ValueError, match="every_n_steps"):
        OnlineLinearProbe(every_n_steps=every)


def test_default_is_every_batch():
    assert OnlineLinearProbe().every_n_steps == 1
