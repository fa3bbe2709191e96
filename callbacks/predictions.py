"""`EmbeddingWriter`: the outputs of `lightning predict` (or `trainer.predict`) as one file (`.pt`,
`.npy` or `.parquet`; see `lit_mae.callbacks.prediction_files`)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from lit_mae.callbacks.monitors import distributed, single_loader
from lit_mae.callbacks.prediction_files import check_writable_format, write_predictions
from lit_mae.datamodules.batch import read_batch


class EmbeddingWriter(BasePredictionWriter):
    """Writes the predictions of one predict dataloader to `path`. A `.npy` or `.parquet` path gets
    one row per image (`lit_mae.callbacks.prediction_files`); any other a `torch.save` dict of
    tensors, lists and strings (read it back with `torch.load(path, weights_only=True)`):

    - "embeddings": (N, D) float32, the `"embedding"` of each `predict_step` output
      (LitMAE: the cls token; classifiers: the pooled features before the head);
    - "logits": (N, K) float32, when the module returns `"logits"`;
    - "labels": (N,) when the batches carry labels (left out when they are all -1, unlabelled);
    - "indices": (N,) the dataset index of each row (map-style datasets; Lightning tracks them);
    - "paths": N strings, when the dataset has `sources` that are file paths (`ImageSamples`);
    - "skipped_indices" (M,) and "skipped_paths" (M strings, with "paths"): the unreadable files a
      lit-mae DataModule dropped (no row of their own; a warning names them too).

    An unreadable file never shifts the other rows: when a batch comes back short, the writer finds
    which of its samples the dataset cannot read (reading that batch's samples again) and leaves
    their indices out.

    Rows are in prediction order; everything is on the CPU. Under DDP (Lightning gives each rank
    every world_size-th sample, without repeats) rank 0 gathers every rank's rows and writes the
    one file, its rows in dataset order (sorted on "indices", as one process predicts an
    unshuffled set), duplicates dropped; rank 0 then holds all of them in memory at once.
    """

    def __init__(self, path: str | os.PathLike = "predictions.pt") -> None:
        super().__init__(write_interval="epoch")
        self.path = Path(path)
        check_writable_format(self.path)
        self._labels: list[Tensor | None] = []
        self.skipped: list[str] = []  # after writing (rank 0): the unreadable samples, by path or index

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._labels = []

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx != 0:
            raise ValueError("EmbeddingWriter writes the predictions of one predict dataloader; got several")
        labels = read_batch(batch).labels
        self._labels.append(None if labels is None else labels.detach().cpu())

    def output_path(self, trainer: Trainer) -> Path:
        """Where the predictions go: `path`, written by rank 0 alone."""
        return self.path

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        dataset = getattr(single_loader(trainer.predict_dataloaders), "dataset", None)
        shard = self._collect(predictions, batch_indices, dataset)
        self._labels = []
        if distributed(trainer):  # every rank takes part, whether or not it predicted anything
            shards: list[dict[str, Tensor] | None] = [None] * trainer.world_size
            dist.gather_object(shard, shards if trainer.is_global_zero else None, dst=0)
            if not trainer.is_global_zero:
                return
            skipped = torch.cat([s.pop("skipped_indices", _NONE) for s in shards if s is not None] + [_NONE])
            result = _merge([s for s in shards if s is not None])
            if result is not None and len(skipped):
                result["skipped_indices"] = skipped.sort().values
        else:
            result = shard
        if result is None:
            return  # an empty predict set: nothing to write
        if "labels" in result and not bool((result["labels"] >= 0).any()):
            del result["labels"]  # all unlabelled
        self._name_sources(result, getattr(dataset, "sources", None))
        indices = result.get("skipped_indices", _NONE).tolist()
        self.skipped = result.get("skipped_paths") or [f"index {i}" for i in indices]
        if self.skipped:
            warnings.warn(f"{len(self.skipped)} unreadable image(s) skipped, no row in {self.path.name}: "
                          f"{', '.join(self.skipped[:10])}{' ...' if len(self.skipped) > 10 else ''}", stacklevel=2)
        write_predictions(result, self.output_path(trainer))

    @staticmethod
    def _name_sources(result: dict[str, Any], sources: Sequence[Any] | None) -> None:
        """Add "paths" (and "skipped_paths") when the dataset's sources are file paths."""
        if "indices" not in result or sources is None:
            return
        if all(isinstance(sources[i], (str, os.PathLike)) for i in result["indices"].tolist()):
            result["paths"] = [str(sources[i]) for i in result["indices"].tolist()]
            if "skipped_indices" in result:
                result["skipped_paths"] = [str(sources[i]) for i in result["skipped_indices"].tolist()]

    def _collect(self, predictions: Sequence[Any], batch_indices: Sequence[Any],
                 dataset: Any = None) -> dict[str, Tensor] | None:
        """This rank's rows as {"embeddings", ["logits"], ["labels"], ["indices"], ["skipped_indices"]};
        None when it has none."""
        outputs = [_as_dict(output) for output in predictions]
        if not outputs:
            return None
        indices = [list(batch) for batch in (batch_indices[0] if batch_indices else [])]  # one dataloader
        if len(indices) != len(outputs):
            indices = []  # not a map-style DataLoader: Lightning tracked no indices
        skipped: list[int] = []
        for position, (output, batch) in enumerate(zip(outputs, indices)):
            if len(output["embedding"]) != len(batch):
                unreadable = _unreadable(dataset, batch)
                if len(batch) - len(unreadable) != len(output["embedding"]):
                    raise ValueError(f"a batch of {len(batch)} samples gave {len(output['embedding'])} predictions "
                                     "and the dataset does not say which samples were dropped; remove unreadable "
                                     "files (or set strict: true to find them)")
                skipped += unreadable
                indices[position] = [i for i in batch if i not in unreadable]
        result: dict[str, Any] = {
            "embeddings": torch.cat([output["embedding"].detach().float().cpu() for output in outputs]),
        }
        if all("logits" in output for output in outputs):
            result["logits"] = torch.cat([output["logits"].detach().float().cpu() for output in outputs])
        if self._labels and all(labels is not None for labels in self._labels):
            result["labels"] = torch.cat(self._labels)
        if indices:
            result["indices"] = torch.tensor([int(i) for batch in indices for i in batch], dtype=torch.long)
        if skipped:
            result["skipped_indices"] = torch.tensor(skipped, dtype=torch.long)
        return result


_NONE = torch.zeros(0, dtype=torch.long)


def _unreadable(dataset: Any, batch: list[int]) -> list[int]:
    """The indices of `batch` that `dataset` cannot read (its `__getitem__` gives None, as lit-mae's
    `ImageSamples` does for an unreadable file); [] when there is no dataset to ask."""
    if dataset is None:
        return []
    with warnings.catch_warnings():  # the dataset warned about each file when it was first read
        warnings.simplefilter("ignore")
        return [int(i) for i in batch if dataset[int(i)] is None]


def _merge(shards: list[dict[str, Tensor]]) -> dict[str, Tensor] | None:
    """The rows of every rank's shard in one dict: sorted on "indices" (first of duplicates kept)
    when every shard has them, else in rank order. A key missing from one shard is left out."""
    if not shards:
        return None
    keys = [key for key in shards[0] if all(key in shard for shard in shards)]
    merged = {key: torch.cat([shard[key] for shard in shards]) for key in keys}
    if "indices" in merged:
        indices = merged["indices"]
        order = torch.argsort(indices, stable=True)
        first = torch.ones_like(order, dtype=torch.bool)
        first[1:] = indices[order][1:] != indices[order][:-1]
        merged = {key: value[order[first]] for key, value in merged.items()}
    return merged


def _as_dict(output: Any) -> dict[str, Tensor]:
    """A `predict_step` output as {"embedding", ["logits"]}: a dict, or a bare (B, D) tensor."""
    if isinstance(output, Tensor):
        return {"embedding": output}
    if isinstance(output, dict) and isinstance(output.get("embedding"), Tensor):
        return output
    raise TypeError("EmbeddingWriter needs predict_step to return an (B, D) tensor or a dict with an "
                    f"'embedding' tensor, got {type(output).__name__}")
