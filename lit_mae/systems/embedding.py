"""`LitEmbedder`: a predict-only LightningModule around a `FeatureExtractor`, so that features come
out of `trainer.predict` (progress bar, devices, DDP) and `EmbeddingWriter` writes them."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule
from torch import Tensor

from lit_mae.datamodules.batch import read_batch
from lit_mae.interop.features import FeatureExtractor


class LitEmbedder(LightningModule):
    """`predict_step` -> {"embedding": (B, D) pooled features[, "logits": (B, K)]}: the encoder on
    all patches (no masking, no randomness), so a row does not depend on the batch it came in."""

    def __init__(self, extractor: FeatureExtractor) -> None:
        super().__init__()
        self.extractor = extractor.eval()

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        outputs = dict(zip(self.extractor.output_names, self.extractor(read_batch(batch).images)))
        result = {"embedding": outputs["features"]}
        if "logits" in outputs:
            result["logits"] = outputs["logits"]
        return result
