"""Reading weight files without running code from them.

Torch files are always read with `torch.load(weights_only=True)`. The only extra types allowed, and
only during the read, are what official MAE training checkpoints hold beside the weights: the
`argparse.Namespace` under "args" and numpy scalars (an epoch saved as `np.int64`).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """`safetensors.torch.save_file`, with the permissions any new file of the user gets (the
    library creates its files 0600, unreadable to the rest of a group sharing weights)."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)
    return path


def _allowed_globals() -> list[Any]:
    allowed: list[Any] = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:  # without numpy, files with numpy scalars fail with the not-weights-only error
        return allowed
    scalar = np.int64(0).__reduce__()[0]  # numpy's scalar rebuilder, wherever this numpy keeps it
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
             np.float16, np.float32, np.float64)
    # numpy 1.x pickles name the scalar rebuilder `numpy.core.multiarray.scalar`, numpy 2 `numpy._core...`
    allowed += [(scalar, f"{module}.multiarray.scalar") for module in ("numpy.core", "numpy._core")]
    allowed.append(np.dtype)
    allowed += [type(np.dtype(kind)) for kind in kinds]  # numpy.dtypes.Int64DType, ...
    return allowed


def _start(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(9)


def _is_torch_zip(path: Path) -> bool:
    return _start(path)[:2] == b"PK"


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte header length, then a JSON header; torch files are zips ("PK") or pickles."""
    start = _start(path)
    return start[:2] != b"PK" and (start[8:9] == b"{" or path.suffix == ".safetensors")


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """The dict in a `.safetensors` file or a torch file (a state dict or a whole checkpoint).

    Never unpickles arbitrary objects. Errors name the file: missing, empty, truncated or corrupt,
    or not weights-only (the pickle asks for a class or function outside the allow-list).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty")
    if _looks_like_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # SafetensorError, OSError
            raise ValueError(f"{path}: not a readable safetensors file: truncated or corrupt ({error})") from None
    if not (_is_torch_zip(path) or _start(path)[:1] == b"\x80"):  # a zip (torch.save) or a pickle (legacy format)
        raise ValueError(f"{path}: not a weights file: truncated or corrupt, or not a checkpoint at all (a torch "
                         "file starts as a zip or a pickle, a safetensors file with its header length; this one "
                         f"starts with {_start(path)!r}). Give a .ckpt/.pth/.bin/.safetensors file or a "
                         "Hugging Face model directory")
    if _is_torch_zip(path) and not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable torch file: truncated or corrupt (the zip archive that "
                         "torch.save writes lacks its end record, as after an interrupted download or copy)")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error)) or re.search(r"but got <class '([^']+)'>", str(error))
        if found:
            raise ValueError(
                f"{path}: not a weights-only checkpoint: its pickle asks for `{found.group(1)}`, which "
                "weights-only loading refuses (building arbitrary objects can run code from the file; "
                "allowed are tensors, plain containers, argparse.Namespace and numpy scalars). Nothing "
                "from it was run. If you trust the file, re-save just its tensors with torch.save."
            ) from None
        raise ValueError(f"{path}: not a readable torch file: truncated or corrupt ({_first_line(error)})") from None
    except Exception as error:  # zip reader RuntimeError, EOFError, ...
        raise ValueError(
            f"{path}: not a readable torch file: truncated or corrupt ({type(error).__name__}: {_first_line(error)})"
        ) from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: holds a {type(content).__name__}, not a state dict or checkpoint")
    return content


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "Unsupported" in line] or [line for line in lines if "failed" in line]
    return (useful or lines or ["no details"])[0][:200]


def find_weights(path: Path) -> tuple[Path, Path | None]:
    """(weights file, `config.json` beside it or None); a directory must be a Hugging Face one."""
    if path.is_dir():
        for name in HF_WEIGHT_FILES:
            if (path / name).is_file():
                config = path / "config.json"
                return path / name, config if config.is_file() else None
        raise FileNotFoundError(f"{path}: directory holds none of {list(HF_WEIGHT_FILES)}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    config = path.parent / "config.json"
    return path, config if config.is_file() else None
