"""Lightning callbacks (installed as `lit_mae.callbacks`): reconstruction grids, monitors,
prediction files and crash-safe checkpoints."""

from lit_mae.callbacks.checkpoint import AtomicModelCheckpoint
from lit_mae.callbacks.monitors import KNNMonitor, OnlineLinearProbe, knn_predict
from lit_mae.callbacks.predictions import EmbeddingWriter
from lit_mae.callbacks.reconstruction import ReconstructionGridLogger

__all__ = ["AtomicModelCheckpoint", "EmbeddingWriter", "KNNMonitor", "OnlineLinearProbe", "ReconstructionGridLogger",
           "knn_predict"]
