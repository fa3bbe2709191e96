"""`SeededSamples.__getitems__` (the DataLoader's batched read) against one `__getitem__` per key."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from lit_mae.datamodules.sampling import SeededSamples


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
