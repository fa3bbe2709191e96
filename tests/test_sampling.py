"""lit_mae/datamodules/sampling.py, the pieces that make a resumed run exact (test_resume.py): the
epoch order as a function of (seed, epoch), also sharded under DDP; the resumable loader's state,
the position a checkpoint saves for it and what a resumed fit makes of it; augmentation seeded by (seed, epoch, index) in any process; and `SeededSamples.__getitems__` (the
DataLoader's batched read) against one `__getitem__` per key."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import Dataset, Subset, TensorDataset

from lit_mae.datamodules import DigitsDataModule, SyntheticDataModule
from lit_mae.datamodules.sampling import (
    EpochSampler, ResumableDataLoader, ResumableTrainData, SeededSamples, fit_position, resumed_position, train_loader,
)


# --- the epoch order, the loader's state, seeded augmentation ----------------------------------------

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


def numbers_loader(resume_from=None) -> ResumableDataLoader:
    """20 numbers in batches of 2: 10 batches an epoch."""
    return train_loader(TensorDataset(torch.arange(20)), batch_size=2, seed=5, random_samples=False,
                        resume_from=resume_from)


def epoch_batches(epoch: int) -> list[list[int]]:
    loader = numbers_loader()
    loader.sampler.set_epoch(epoch)
    return [batch[0].tolist() for batch in loader]


def test_a_position_shorter_than_the_loader_ends_the_resumed_pass_there():
    """With `limit_train_batches` the fit loop's epoch is "length" batches: the resumed pass ends
    there (also where Lightning counts it as a new epoch), and the next pass is whole again."""
    loader = numbers_loader({"epoch": 3, "batches": 2, "length": 6})
    assert loader.state_dict() == {"epoch": 3, "batches": 2, "length": 6}  # before the pass, as loaded
    loader.sampler.set_epoch(3)
    assert [batch[0].tolist() for batch in loader] == epoch_batches(3)[2:6]
    assert loader.state_dict() == {"epoch": 3, "batches": 6, "length": 10}
    loader.sampler.set_epoch(4)
    assert [batch[0].tolist() for batch in loader] == epoch_batches(4)


@pytest.mark.parametrize("state, epoch, skipped", [
    ({"epoch": 3, "batches": 6, "length": 6}, 4, 0),  # the limited epoch was whole
    ({"epoch": 3, "batches": 2, "length": 6, "finished": True}, 4, 0),  # over early (a stop, max_steps)
    ({"epoch": 3, "batches": 10, "length": 6, "finished": False}, 4, 0),  # nothing left of the epoch
    ({"epoch": 3, "batches": 2, "length": 6, "finished": False}, 3, 2),
], ids=["whole", "finished", "batches-beyond-length", "unfinished"])
def test_a_finished_position_starts_the_next_epoch(state, epoch, skipped):
    loader = numbers_loader()
    loader.load_state_dict(state)
    if skipped:
        assert [batch[0].tolist() for batch in loader] == epoch_batches(epoch)[skipped:6]
    else:
        assert loader.sampler.epoch == epoch and [batch[0].tolist() for batch in loader] == epoch_batches(epoch)


def test_a_position_given_at_construction_outranks_lightnings_later_copy():
    """Lightning loads its own copy of the loader's state (full length, no fit-loop view) after
    building the loader from the DataModule's position: the DataModule's, which knows the limits, stays."""
    loader = numbers_loader({"epoch": 3, "batches": 6, "length": 6})
    loader.load_state_dict({"epoch": 3, "batches": 6, "length": 10})  # Lightning's copy: unfinished
    assert [batch[0].tolist() for batch in loader] == epoch_batches(4)
    loader.load_state_dict({"epoch": 7, "batches": 1, "length": 10})  # after the first pass: loaded
    assert [batch[0].tolist() for batch in loader] == epoch_batches(7)[1:]


def test_a_resumed_pass_keeps_its_epoch_and_later_set_epochs_follow_it():
    """Lightning 2.6, resuming an epoch that max_steps ended, sets the sampler's epoch one ahead
    (its processed-epoch count) and stays one ahead: the loader keeps the position's epoch and
    takes the difference off the later ones."""
    loader = numbers_loader({"epoch": 1, "batches": 3, "length": 10})
    loader.sampler.set_epoch(2)  # Lightning, one ahead
    assert [batch[0].tolist() for batch in loader] == epoch_batches(1)[3:]
    assert loader.state_dict()["epoch"] == 1
    loader.sampler.set_epoch(3)
    assert [batch[0].tolist() for batch in loader] == epoch_batches(2)
    assert loader.state_dict() == {"epoch": 2, "batches": 10, "length": 10}
    # a pass without set_epoch in between repeats the epoch, as a plain DataLoader's would
    assert [batch[0].tolist() for batch in loader] == epoch_batches(2)


def fake_trainer(batches: float, ready: int, started: int, processed: int, completed: int, max_steps: int = -1):
    current = SimpleNamespace(ready=ready, started=started, processed=processed, completed=completed)
    return SimpleNamespace(num_training_batches=batches, max_steps=max_steps,
                           fit_loop=SimpleNamespace(epoch_progress=SimpleNamespace(current=current)))


def test_the_saved_position_has_the_fit_loops_epoch_length_and_whether_the_epoch_was_over():
    loader = numbers_loader()
    loader.sampler.set_epoch(1)
    for _ in itertools.islice(loader, 6):
        pass
    # in on_train_epoch_end of epoch 1 (processed counted, completed not yet), epochs limited to 6 batches
    assert fit_position(fake_trainer(6, 2, 2, 2, 1), loader) == {"epoch": 1, "batches": 6, "length": 6, "epoch_over": True}
    # a step checkpoint inside the epoch; the loader's own length where the fit loop has none
    assert fit_position(fake_trainer(float("inf"), 2, 2, 1, 1), loader) == {
        "epoch": 1, "batches": 6, "length": 10, "epoch_over": False}


@pytest.mark.parametrize("batches, over, max_steps, finished", [
    (6, False, -1, True), (6, True, 20, True),  # the epoch's batches all trained
    (3, False, -1, False), (3, False, 20, False),  # inside the epoch: continued
    (3, True, -1, True),  # ended early (a stop, max_steps): Lightning starts the next epoch
    (3, True, 20, False),  # ... but an iteration-based fit (max_steps) continues it
])
def test_a_resumed_fit_continues_the_epoch_where_lightning_does(batches, over, max_steps, finished):
    position = {"epoch": 1, "batches": batches, "length": 6, "epoch_over": over}
    assert resumed_position(position, max_steps)["finished"] is finished
    data = ResumableTrainData()
    data.trainer = fake_trainer(6, 2, 2, 2, 1, max_steps)
    data.load_state_dict({"train_loader": position})
    assert data.resume_position()["finished"] is finished and data.resume_position() is None  # once


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


# --- SeededSamples' batched read ----------------------------------------------------------------------

class Draws(Dataset):
    """Sample i: i and one draw from each of torch's, Python's and NumPy's global RNGs."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> tuple[int, float, float, float]:
        return index, torch.rand(()).item(), random.random(), float(np.random.rand())


def global_draws() -> tuple[float, float, float]:
    return torch.rand(()).item(), random.random(), float(np.random.rand())


def test_a_batched_read_equals_per_key_reads_and_leaves_the_global_rngs_as_they_were():
    samples = SeededSamples(Draws())
    keys = [(3, 11), (0, 2**63 - 1), (3, 12), (7, 0)]
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    per_key = [samples[key] for key in keys]
    expected_after = global_draws()
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    assert samples.__getitems__(keys) == per_key
    assert global_draws() == expected_after
    # a wrapping Subset hands its batch of (plain) indices on to `__getitems__`
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    per_index = [samples[index] for index in [4, 1]]
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    assert Subset(samples, [9, 4, 1]).__getitems__([1, 2]) == per_index
