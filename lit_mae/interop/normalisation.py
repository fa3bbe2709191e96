"""How the images a set of weights was trained on were normalised, as far as its files say.

A lit-mae checkpoint records its DataModule's mean/std (`DATA_STATE`, and the DataModule's own
hyper-parameters when it has them as arguments); a Hugging Face directory may carry a
`preprocessor_config.json` with `image_mean`/`image_std`. Official and timm files say nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from lit_mae.interop.checkpoint import data_statistics, is_lightning_checkpoint
from lit_mae.interop.files import read_state_dict


class Statistics(NamedTuple):
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # where they were found, for messages


def recorded_statistics(path: str | Path) -> Statistics | None:
    """The per-channel mean/std recorded with the weights at `path` (a file or a Hugging Face
    directory), or None when its files do not say."""
    path = Path(path)
    if path.is_dir():
        return _preprocessor_statistics(path / "preprocessor_config.json")
    content = read_state_dict(path)
    if not is_lightning_checkpoint(content):
        return None
    recorded = data_statistics(content)
    if recorded is not None:
        return Statistics(*recorded, f"{path.name}: the training data's")
    hparams = content.get("datamodule_hyper_parameters")
    return _pair(hparams, f"{path.name}: the DataModule's") if isinstance(hparams, Mapping) else None


def _preprocessor_statistics(path: Path) -> Statistics | None:
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None
    return _pair({"mean": settings.get("image_mean"), "std": settings.get("image_std")}, path.name)


def _pair(values: Mapping[str, Any], source: str) -> Statistics | None:
    mean, std = values.get("mean"), values.get("std")
    if not isinstance(mean, (list, tuple)) or not isinstance(std, (list, tuple)) or not mean or len(mean) != len(std):
        return None
    return Statistics(tuple(map(float, mean)), tuple(map(float, std)), source)
