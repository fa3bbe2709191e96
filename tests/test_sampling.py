"""lit_mae/datamodules/sampling.py, the pieces that make a resumed run exact (test_resume.py): the
epoch order as a function of (seed, epoch), also sharded under DDP; the resumable loader's state;
augmentation seeded by (seed, epoch, index) in any process; and `SeededSamples.__getitems__` (the
DataLoader's batched read) against one `__getitem__` per key."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import Dataset, Subset, TensorDataset

from lit_mae.datamodules import DigitsDataModule, SyntheticDataModule
from lit_mae.datamodules.sampling import EpochSampler, ResumableDataLoader, SeededSamples, train_loader


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
