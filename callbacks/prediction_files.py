"""The files `EmbeddingWriter` writes, chosen by the path's suffix:

- `.npy`: one NumPy structured array, one row per image, read with `np.load(path)` (no pickle):
  fields "index" (int64), "path" (str, when the dataset has file paths), "label" (int64, when
  labelled), "embedding" (float32, (D,)) and "logits" (float32, (K,), classifiers); so
  `rows["embedding"]` is the (N, D) matrix and `rows["path"]` its N sources;
- `.parquet`: the same columns in a table (embedding and logits as fixed-size lists); needs pyarrow;
- anything else (`.pt`, the default): `torch.save` of a dict of tensors and lists (see EmbeddingWriter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

ROW_FORMATS = (".npy", ".parquet")  # every other suffix is a torch file


def check_writable_format(path: Path) -> None:
    """Fail before any work when the suffix needs a package that is not installed."""
    if path.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ImportError(f"{path.name}: writing .parquet needs pyarrow (pip install pyarrow); or name the "
                              "output .npy or .pt") from None


def write_predictions(result: dict[str, Any], path: Path) -> None:
    """`result` (EmbeddingWriter's dict: "embeddings" (N, D), optional "logits", "labels", "indices",
    "paths") to `path` in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix not in ROW_FORMATS:
        torch.save(result, path)
        return
    columns = _columns(result)
    if path.suffix == ".npy":
        with path.open("wb") as file:  # np.save(path) would append .npy to other names
            np.save(file, _structured(columns), allow_pickle=False)
    else:
        _write_parquet(columns, path, skipped=result.get("skipped_paths") or [])


def _columns(result: dict[str, Any]) -> dict[str, np.ndarray]:
    """The row fields in order: index, path, label, embedding, logits (those present)."""
    rows = len(result["embeddings"])
    columns: dict[str, np.ndarray] = {"index": result["indices"].numpy() if "indices" in result
                                      else np.arange(rows, dtype=np.int64)}
    if "paths" in result:
        columns["path"] = np.asarray(result["paths"], dtype=str)
    if "labels" in result:
        columns["label"] = result["labels"].numpy().astype(np.int64)
    columns["embedding"] = result["embeddings"].numpy().astype(np.float32)  # (N, D)
    if "logits" in result:
        columns["logits"] = result["logits"].numpy().astype(np.float32)  # (N, K)
    return columns


def _structured(columns: dict[str, np.ndarray]) -> np.ndarray:
    dtype = [(name, values.dtype, values.shape[1:]) for name, values in columns.items()]
    rows = np.empty(len(columns["index"]), dtype=dtype)
    for name, values in columns.items():
        rows[name] = values
    return rows


def _write_parquet(columns: dict[str, np.ndarray], path: Path, skipped: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name, values in columns.items():
        if values.ndim == 2:  # (N, D) -> a fixed-size list per row
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
        else:
            arrays[name] = pa.array(values)
    table = pa.table(arrays)
    if skipped:  # the unreadable files, named in the file's metadata (no row of their own)
        table = table.replace_schema_metadata({"lit_mae.skipped": "\n".join(skipped)})
    pq.write_table(table, path)
