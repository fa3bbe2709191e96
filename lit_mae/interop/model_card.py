"""The model card (`README.md`) that `export_hf` writes beside the weights, ready for the Hugging
Face Hub: architecture, the training recipe and data a lit-mae checkpoint records, the probe and
kNN numbers it logged, and how to load the directory with transformers and with lit-mae.

What a lit-mae checkpoint records: the system's hyper-parameters (lr, weight decay, warmup,
mask ratio, architecture), the DataModule's (`datamodule_hyper_parameters`), the peak lr in the
optimizer state, epoch and step, and (checkpoints of lit-mae 0.1 from December 2026 on) the
normalisation mean/std and the metrics last logged (`logged_metrics`: losses, `online_probe/val_acc`,
`knn/val_acc`). Sections whose facts the file lacks say so or are left out; nothing is guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from lit_mae.interop.checkpoint import data_statistics, is_lightning_checkpoint, logged_metrics
from lit_mae.interop.files import read_state_dict
from lit_mae.models import MAEConfig

EVALUATION_WORDS = ("probe", "knn", "acc")  # logged metrics that are evaluations, not losses


def training_record(source: str | Path) -> dict[str, Any] | None:
    """The Lightning checkpoint at `source` (for its recipe), or None for other weights."""
    path = Path(source)
    if not path.is_file():
        return None
    content = read_state_dict(path)
    return content if is_lightning_checkpoint(content) else None


def model_card(config: MAEConfig, checkpoint: Mapping[str, Any] | None = None, encoder_only: bool = False) -> str:
    """The card's Markdown, with Hub metadata (YAML front matter) first."""
    import lit_mae

    head = "ViTMAEModel" if encoder_only else "ViTMAEForPreTraining"
    sections = [
        "---\nlibrary_name: transformers\npipeline_tag: image-feature-extraction\n"
        "tags:\n- vision\n- vit-mae\n- masked-autoencoder\n- lit-mae\n---\n",
        f"# MAE ViT encoder ({config.embed_dim} wide, {config.depth} blocks, patch {config.patch_size}, "
        f"{config.img_size}x{config.img_size})\n\nA Vision Transformer pretrained as a masked autoencoder "
        f"(He et al., *Masked Autoencoders Are Scalable Vision Learners*, 2021) with lit-mae "
        f"{lit_mae.__version__}, written as a transformers `{head}` directory.\n",
        _architecture(config, encoder_only),
        _recipe(config, checkpoint),
        _data(checkpoint),
        _evaluation(checkpoint),
        _usage(config, checkpoint),
    ]
    return "\n".join(section for section in sections if section)


def _table(rows: list[tuple[str, Any]]) -> str:
    return "| | |\n|---|---|\n" + "".join(f"| {name} | {value} |\n" for name, value in rows)


def _architecture(config: MAEConfig, encoder_only: bool) -> str:
    rows = [("input", f"{config.in_chans} x {config.img_size} x {config.img_size}"),
            ("patches", f"{config.num_patches} of {config.patch_size} x {config.patch_size} pixels"),
            ("encoder", f"width {config.embed_dim}, {config.depth} blocks, {config.num_heads} heads, MLP ratio "
                        f"{config.mlp_ratio:g}, LayerNorm eps {config.layer_norm_eps:g}, qkv bias {config.qkv_bias}")]
    if not encoder_only:
        rows.append(("decoder", f"width {config.decoder_embed_dim}, {config.decoder_depth} blocks, "
                                f"{config.decoder_num_heads} heads"))
    return "## Architecture\n\n" + _table(rows)


def _recipe(config: MAEConfig, checkpoint: Mapping[str, Any] | None) -> str:
    if checkpoint is None:
        return ("## Training recipe\n\nNot recorded: these weights came without a lit-mae training checkpoint. "
                f"Mask ratio {config.mask_ratio:g}, norm-pix loss {'on' if config.norm_pix_loss else 'off'} "
                "(the architecture's settings).\n")
    hparams = checkpoint.get("hyper_parameters") or {}
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    rows: list[tuple[str, Any]] = []
    epochs = _epochs(checkpoint)
    if epochs is not None:
        rows.append(("epochs", f"{epochs} ({int(checkpoint.get('global_step', 0))} optimizer steps)"))
    if data.get("batch_size") is not None:
        rows.append(("batch", f"{data['batch_size']} per device"))
    peak = _peak_lr(checkpoint)
    if hparams.get("lr") is not None:
        rows.append(("learning rate", f"{hparams['lr']:g} (absolute)"))
    elif hparams.get("base_lr") is not None:
        scaled = f"; peak {peak:.3g} = base x effective batch {round(peak * 256 / hparams['base_lr'])} / 256" \
            if peak else ""
        rows.append(("learning rate", f"base {hparams['base_lr']:g} per 256 images{scaled}"))
    for name, label in (("weight_decay", "weight decay"), ("betas", "AdamW betas"),
                        ("warmup_epochs", "warmup epochs"), ("min_lr", "final lr")):
        if hparams.get(name) is not None:
            rows.append((label, hparams[name]))
    ratio = hparams.get("mask_ratio") if hparams.get("mask_ratio") is not None else config.mask_ratio
    rows += [("mask ratio", f"{ratio:g}"), ("norm-pix loss", "on" if config.norm_pix_loss else "off")]
    system = f" (`{hparams['_class_path']}`)" if hparams.get("_class_path") else ""
    return f"## Training recipe\n\nFrom the checkpoint's hyper-parameters{system}:\n\n" + _table(rows)


def _epochs(checkpoint: Mapping[str, Any]) -> int | None:
    """Epochs trained: the fit loop's processed epochs (a checkpoint saved at an epoch's end has
    `epoch` = that epoch's 0-based index, one saved after `fit` the epoch count), else epoch + 1."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"])
    except (KeyError, TypeError, ValueError):
        return int(checkpoint["epoch"]) + 1 if "epoch" in checkpoint else None


def _peak_lr(checkpoint: Mapping[str, Any]) -> float | None:
    """The warmup-cosine schedule's peak, as the optimizer state records it (`initial_lr`)."""
    try:
        return float(checkpoint["optimizer_states"][0]["param_groups"][0]["initial_lr"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _data(checkpoint: Mapping[str, Any] | None) -> str:
    data = dict((checkpoint or {}).get("datamodule_hyper_parameters") or {})
    stats = data_statistics(checkpoint) if checkpoint is not None else None
    if not data and stats is None:
        return "## Data\n\nNot recorded in the weights.\n"
    name = data.pop("_class_path", None)
    loading = ("num_workers", "pin_memory", "persistent_workers")  # how it was read, not what
    settings = ", ".join(f"{key}={value!r}" for key, value in data.items()
                         if not key.startswith("_") and key not in loading)
    text = "## Data\n\n" + (f"`{name}` ({settings}).\n" if name else f"The DataModule's settings: {settings}.\n"
                             if settings else "")
    if stats is not None:
        mean, std = ([float(f"{v:.6g}") for v in values] for values in stats)
        text += f"\nImages were normalised with mean {mean} and std {std} (per channel, pixels in [0, 1]).\n"
    return text


def _evaluation(checkpoint: Mapping[str, Any] | None) -> str:
    metrics = logged_metrics(checkpoint) if checkpoint is not None else {}
    shown = {name: value for name, value in sorted(metrics.items())
             if any(word in name.lower() for word in EVALUATION_WORDS)}
    if not shown:
        return ""  # the checkpoint carries no probe or kNN numbers
    return (f"## Evaluation\n\nAs logged during training, after epoch {_epochs(checkpoint)} (the monitors' "
            "splits of the data above):\n\n"
            + _table([(f"`{name}`", f"{value:.4g}") for name, value in shown.items()]))


def _usage(config: MAEConfig, checkpoint: Mapping[str, Any] | None) -> str:
    stats = data_statistics(checkpoint) if checkpoint is not None else None
    note = "normalised as in training (see Data)" if stats else \
        "normalised as in training (ImageNet's mean/std if unsure)"
    shape = f"(B, {config.in_chans}, {config.img_size}, {config.img_size})"
    return f"""## How to use

Images: float tensors {shape}, {note}.

With transformers (`ViTMAEModel` masks 75% of the patches at random unless `mask_ratio=0.0`):

```python
import torch
from transformers import ViTMAEModel

model = ViTMAEModel.from_pretrained("path/to/this/directory", mask_ratio=0.0).eval()
with torch.no_grad():
    features = model(pixel_values=images).last_hidden_state[:, 0]   # (B, {config.embed_dim}) cls token
```

(With `mask_ratio=0.0` the patch tokens come back in a random order; the cls token does not depend on it.)

With lit-mae (all patches in order, never masked):

```python
from lit_mae.interop.features import load_feature_extractor

encoder = load_feature_extractor("path/to/this/directory", pool="cls")        # or "avg"
tokens, features = encoder(images)   # (B, 1+{config.num_patches}, {config.embed_dim}), (B, {config.embed_dim})
```

or from the command line: `lit-mae embed --ckpt path/to/this/directory --data my_images/ --output features.npy`.
"""
