"""`read_batch`: every accepted batch shape read into the one `Batch`; what a batch carries to Lightning."""

from __future__ import annotations

import warnings

import pytest
import torch
from lightning.pytorch.utilities.data import extract_batch_size

from lit_mae.datamodules.batch import Batch, LoadedBatch, read_batch

IMAGES = torch.randn(4, 3, 8, 8)
LABELS = torch.tensor([0, 1, -1, 2])


@pytest.mark.parametrize("batch, has_labels", [
    (IMAGES, False),
    ((IMAGES, LABELS), True),
    ([IMAGES, LABELS, "extra"], True),
    ((IMAGES, "not labels"), False),
    ({"images": IMAGES, "labels": LABELS}, True),
    ({"pixel_values": IMAGES}, False),
    ({"image": IMAGES, "label": LABELS}, True),
    (Batch(IMAGES, LABELS), True),
    (LoadedBatch(IMAGES, LABELS, 2), True),
], ids=["tensor", "tuple", "list", "tuple-no-labels", "dict", "hf-dict", "singular-dict", "batch", "loaded"])
def test_every_accepted_shape_reads_into_one_batch(batch, has_labels):
    read = read_batch(batch)
    assert isinstance(read, Batch) and read.images is IMAGES
    assert (read.labels is LABELS) if has_labels else read.labels is None


def test_a_batch_unpacks_as_images_and_labels():
    images, labels = read_batch((IMAGES, LABELS))
    assert images is IMAGES and labels is LABELS


@pytest.mark.parametrize("batch", [None, "images", [], {"x": IMAGES}, (LABELS.tolist(),)])
def test_anything_else_is_named(batch):
    with pytest.raises(TypeError, match=f"a batch must be an image tensor .* got {type(batch).__name__}"):
        read_batch(batch)


def test_classification_without_labels_says_who_needs_them():
    with pytest.raises(TypeError, match="LitLinearProbe needs labelled batches"):
        read_batch(IMAGES).require_labels("LitLinearProbe")


def test_lightning_reads_the_batch_size_of_a_batch_without_doubt():
    """Lightning infers the logged batch size from every item of a batch: an int (the loader's
    skipped count) would make it ambiguous, which is why the model's Batch holds tensors only."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extract_batch_size(Batch(IMAGES, LABELS)) == 4
