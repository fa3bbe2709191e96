"""`EmbeddingWriter`: the outputs of `lightning predict` (or `trainer.predict`) as one `.pt` file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from lit_mae.callbacks.monitors import labels_of


class EmbeddingWriter(BasePredictionWriter):
    """Writes the predictions of one predict dataloader to `path` with `torch.save`, as a dict of
    tensors, lists and strings (read it back with `torch.load(path, weights_only=True)`):

    - "embeddings": (N, D) float32, the `"embedding"` of each `predict_step` output
      (LitMAE: the cls token; classifiers: the pooled features before the head);
    - "logits": (N, K) float32, when the module returns `"logits"`;
    - "labels": (N,) when the batches carry labels (left out when they are all -1, unlabelled);
    - "indices": (N,) the dataset index of each row (map-style datasets; Lightning tracks them);
    - "paths": N strings, when the dataset has `sources` that are file paths (`ImageSamples`).

    Rows are in prediction order; everything is on the CPU. Under DDP each rank writes its own
    shard to `<stem>.rank<r><suffix>` (join them on "indices").
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
        labels = labels_of(batch)
        self._labels.append(None if labels is None else labels.detach().cpu())

    def output_path(self, trainer: Trainer) -> Path:
        if trainer.world_size == 1:
            return self.path
        return self.path.with_name(f"{self.path.stem}.rank{trainer.global_rank}{self.path.suffix}")

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        outputs = [_as_dict(output) for output in predictions]
        if not outputs:
            return  # an empty predict set: nothing to write
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
            labels = torch.cat(self._labels)
            if bool((labels >= 0).any()):
                result["labels"] = labels
        if indices:
            flat = [int(i) for batch in indices for i in batch]
            result["indices"] = torch.tensor(flat, dtype=torch.long)
            sources = getattr(_dataset(trainer), "sources", None)
            if sources is not None and all(isinstance(sources[i], (str, os.PathLike)) for i in flat):
                result["paths"] = [str(sources[i]) for i in flat]
        path = self.output_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(result, path)
        self._labels = []


def _as_dict(output: Any) -> dict[str, Tensor]:
    """A `predict_step` output as {"embedding", ["logits"]}: a dict, or a bare (B, D) tensor."""
    if isinstance(output, Tensor):
        return {"embedding": output}
    if isinstance(output, dict) and isinstance(output.get("embedding"), Tensor):
        return output
    raise TypeError("EmbeddingWriter needs predict_step to return an (B, D) tensor or a dict with an "
                    f"'embedding' tensor, got {type(output).__name__}")


def _dataset(trainer: Trainer) -> Any:
    loaders = trainer.predict_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    return getattr(loader, "dataset", None)
