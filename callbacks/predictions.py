"""`EmbeddingWriter`: the outputs of `lightning predict` (or `trainer.predict`) as one `.pt` file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from lit_mae.callbacks.monitors import distributed, single_loader
from lit_mae.datamodules.batch import read_batch


class EmbeddingWriter(BasePredictionWriter):
    """Writes the predictions of one predict dataloader to `path` with `torch.save`, as a dict of
    tensors, lists and strings (read it back with `torch.load(path, weights_only=True)`):

    - "embeddings": (N, D) float32, the `"embedding"` of each `predict_step` output
      (LitMAE: the cls token; classifiers: the pooled features before the head);
    - "logits": (N, K) float32, when the module returns `"logits"`;
    - "labels": (N,) when the batches carry labels (left out when they are all -1, unlabelled);
    - "indices": (N,) the dataset index of each row (map-style datasets; Lightning tracks them);
    - "paths": N strings, when the dataset has `sources` that are file paths (`ImageSamples`).

    Rows are in prediction order; everything is on the CPU. Under DDP (Lightning gives each rank
    every world_size-th sample, without repeats) rank 0 gathers every rank's rows and writes the
    one file, its rows in dataset order (sorted on "indices", as one process predicts an
    unshuffled set), duplicates dropped; rank 0 then holds all of them in memory at once.
    """

    def __init__(self, path: str | os.PathLike = "predictions.pt") -> None:
        super().__init__(write_interval="epoch")
        self.path = Path(path)
        self._labels: list[Tensor | None] = []

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
        shard = self._collect(predictions, batch_indices)
        self._labels = []
        if distributed(trainer):  # every rank takes part, whether or not it predicted anything
            shards: list[dict[str, Tensor] | None] = [None] * trainer.world_size
            dist.gather_object(shard, shards if trainer.is_global_zero else None, dst=0)
            if not trainer.is_global_zero:
                return
            result = _merge([s for s in shards if s is not None])
        else:
            result = shard
        if result is None:
            return  # an empty predict set: nothing to write
        if "labels" in result and not bool((result["labels"] >= 0).any()):
            del result["labels"]  # all unlabelled
        if "indices" in result:
            dataset = getattr(single_loader(trainer.predict_dataloaders), "dataset", None)
            sources = getattr(dataset, "sources", None)
            flat = result["indices"].tolist()
            if sources is not None and all(isinstance(sources[i], (str, os.PathLike)) for i in flat):
                result["paths"] = [str(sources[i]) for i in flat]
        path = self.output_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(result, path)

    def _collect(self, predictions: Sequence[Any], batch_indices: Sequence[Any]) -> dict[str, Tensor] | None:
        """This rank's rows as {"embeddings", ["logits"], ["labels"], ["indices"]}; None when it has none."""
        outputs = [_as_dict(output) for output in predictions]
        if not outputs:
            return None
        indices = [list(batch) for batch in (batch_indices[0] if batch_indices else [])]  # one dataloader
        if len(indices) != len(outputs):
            indices = []  # not a map-style DataLoader: Lightning tracked no indices
        for output, batch in zip(outputs, indices):
            if len(output["embedding"]) != len(batch):
                raise ValueError(f"a batch of {len(batch)} samples gave {len(output['embedding'])} predictions: "
                                 "unreadable files were skipped; remove them (or set strict: true to find them)")
        result: dict[str, Any] = {
            "embeddings": torch.cat([output["embedding"].detach().float().cpu() for output in outputs]),
        }
        if all("logits" in output for output in outputs):
            result["logits"] = torch.cat([output["logits"].detach().float().cpu() for output in outputs])
        if self._labels and all(labels is not None for labels in self._labels):
            result["labels"] = torch.cat(self._labels)
        if indices:
            result["indices"] = torch.tensor([int(i) for batch in indices for i in batch], dtype=torch.long)
        return result


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
