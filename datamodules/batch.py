"""What a batch is: one typed `Batch`, and `read_batch`, the one reader of every batch shape accepted.

lit-mae's DataModules load `LoadedBatch(pixels, labels, skipped)` with uint8 pixels; their
`on_after_batch_transfer` counts the skipped files and hands the model `Batch(images, labels)`
with float images, normalised, on the model's device. The systems and callbacks read any batch
through `read_batch`, so a DataModule of your own may also give an image tensor, an
`(images, labels, ...)` sequence or a dict with "images" / "image" / "pixel_values" (and
"labels" / "label").
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

IMAGE_KEYS = ("images", "image", "pixel_values")
LABEL_KEYS = ("labels", "label")


class Batch(NamedTuple):
    """A batch of images, as the model sees it. Unpacks as `images, labels = batch`."""

    images: Tensor  # (B, C, H, W) float, normalised
    labels: Tensor | None = None  # (B,) int64, -1 for an unlabelled sample; None: no labels at all

    def require_labels(self, who: str) -> Tensor:
        """The labels (B,), or a TypeError saying that `who` needs them."""
        if self.labels is None:
            raise TypeError(f"{who} needs labelled batches: (images, labels) or a dict with 'labels'; "
                            "this batch holds images only")
        return self.labels


class LoadedBatch(NamedTuple):
    """What the loaders of lit-mae's DataModules yield, before `on_after_batch_transfer`.

    The count is a Python int (reading it never waits for the device), and it stays out of the
    model's `Batch`: Lightning infers the batch size from every item of a batch, and an int
    would make that ambiguous."""

    pixels: Tensor  # (B, C, S, S) uint8 (or floats already normalised by a PIL-based recipe)
    labels: Tensor  # (B,) int64, -1 for an unlabelled sample
    skipped: int  # unreadable samples dropped from this batch


def read_batch(batch: object) -> Batch:
    """Any accepted batch as a `Batch`: a `Batch` or `LoadedBatch`; an image tensor (B, C, H, W); a sequence whose
    first item is the images and second, if a tensor, the labels; a dict with an images key
    ("images", "image", "pixel_values") and optionally a labels key ("labels", "label")."""
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, LoadedBatch):
        return Batch(batch.pixels, batch.labels)
    if isinstance(batch, Tensor):
        return Batch(batch)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return Batch(batch[0], labels)
    if isinstance(batch, dict):
        images = next((batch[key] for key in IMAGE_KEYS if isinstance(batch.get(key), Tensor)), None)
        if images is not None:
            labels = next((batch[key] for key in LABEL_KEYS if isinstance(batch.get(key), Tensor)), None)
            return Batch(images, labels)
    raise TypeError(
        "a batch must be an image tensor (B, C, H, W), a sequence whose first item is one (labels "
        f"second), or a dict with an 'images' or 'pixel_values' tensor; got {type(batch).__name__}"
    )
