"""Lightning callbacks (installed as `lit_mae.callbacks`): reconstruction grids and monitors."""

from lit_mae.callbacks.monitors import KNNMonitor, OnlineLinearProbe, knn_predict
from lit_mae.callbacks.predictions import EmbeddingWriter
from lit_mae.callbacks.reconstruction import ReconstructionGridLogger

__all__: list[str] = ["ReconstructionGridLogger"]

__all__ += ["EmbeddingWriter", "KNNMonitor", "OnlineLinearProbe", "knn_predict"]
