"""What `--ckpt_path FILE` does to the model's settings: lit-mae's rule, in place of LightningCLI's.

LightningCLI 2.6 writes the checkpoint's hyper-parameters over the model's settings, so that a
`--config` or command-line value for the model (lr, mask ratio, even the architecture) is dropped
without a word. The rule here, the same for `fit`, `validate`, `test` and `predict`:

- The architecture of the weights (`MAEConfig.weight_fields`) is the checkpoint's. A config that
  names an architecture (`config`, or `preset` with `overrides`) must name the same one, else the
  run stops with the differing fields. A config that names none, or only `pretrained` (the
  weights a new run starts from, not read when resuming), gets the checkpoint's.
- Every other setting is the config's and the command line's, as in any run: lr, schedule, mask
  ratio, norm-pix loss, epochs, callbacks. They are what `config.yaml` records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from lit_mae.callbacks.checkpoint_io import is_local
from lit_mae.interop.checkpoint import (
    config_from_hparams, describe_conflicts, read_lightning_checkpoint, weight_conflicts,
)
from lit_mae.models import resolve_config

NAMED_CHECKPOINTS = ("last", "best", "hpc", "registry")  # resolved by the Trainer, after the model is built


def _plain(value: Any) -> Any:
    """A jsonargparse Namespace (or anything else) as plain data."""
    return value.as_dict() if hasattr(value, "as_dict") else value


def model_settings(init_args: Mapping[str, Any], ckpt_path: str) -> dict[str, Any]:
    """The model settings that `ckpt_path` changes under the rule ({} for none).

    `init_args`: the settings of a LitMAE, LitLinearProbe or LitFineTune, as parsed. Named
    checkpoints (`last`, `best`), remote paths and folders (FSDP's sharded checkpoints) are left
    to the Trainer. Raises ValueError naming the file and the differing fields."""
    if not ckpt_path or str(ckpt_path).split(":")[0] in NAMED_CHECKPOINTS or not is_local(ckpt_path) or Path(ckpt_path).is_dir():
        return {}
    init_args = dict(_plain(init_args))
    checkpoint = read_lightning_checkpoint(ckpt_path)
    written = config_from_hparams(checkpoint.get("hyper_parameters") or {}, str(ckpt_path))
    if written is None:
        return {}
    config, preset = _plain(init_args.get("config")), init_args.get("preset")
    overrides = dict(init_args.get("overrides") or {})
    if config is not None or preset is not None:
        given = resolve_config(config, preset, overrides or None)
        if init_args.get("img_size"):  # the classifiers' resolution
            given = given.replace(img_size=init_args["img_size"])
    else:  # only `pretrained` (or nothing): the checkpoint's weights, its settings changed by `overrides`
        given = written.replace(**overrides)
    fields = weight_conflicts(written, given)
    if fields:
        raise ValueError(
            f"--ckpt_path {ckpt_path}: the checkpoint is of another architecture "
            f"({describe_conflicts(fields, written, given)}); the weights' architecture comes from the "
            "checkpoint: give the config.yaml of the run that wrote it, or leave the architecture out of the config")
    if config is not None or preset is not None:
        return {}  # the config's own architecture: the same weights, its other settings as given
    changes: dict[str, Any] = {"config": given.to_dict(), "pretrained": None}
    changes.update({key: None for key in ("preset", "overrides", "img_size") if key in init_args})
    return changes

