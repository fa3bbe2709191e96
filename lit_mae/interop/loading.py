"""Load weights of any supported format into lit-mae models: recognised by content, strict, reported.

Formats (`detect_format`): "lightning" (lit-mae's LitMAE / LitLinearProbe / LitFineTune
checkpoints), "official-full" / "official-encoder" / "official-finetuned" (`{"model": ...}` files
of the official code; a bare state dict with a decoder is "official-full" too), "hf" (transformers
ViTMAE), "timm" (a bare ViT state dict: the official encoder names, unwrapped), "lit-mae" (a bare
lit-mae `state_dict()`). Anything not copied from the file, or in the file but not copied, is named
in a `LoadReport`, and a warning says so. An `in_chans=` override that differs from the file's
channel count adapts the patch embedding and the decoder's prediction layer
(`lit_mae.interop.channels`), reported the same way.
"""

from __future__ import annotations

import argparse
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Literal, Mapping, NamedTuple

from torch import Tensor, nn

from lit_mae.interop.channels import adapt_channels
from lit_mae.interop.checkpoint import config_from_hparams, is_lightning_checkpoint, model_state
from lit_mae.interop.files import find_weights, read_state_dict
from lit_mae.interop.hf import config_from_hf, hf_to_lit, is_hf_state_dict
from lit_mae.interop.official import (
    CLASSIFIER_PREFIXES, CONFIG_KEY, DECODER_PREFIXES, heads_of_official_model, official_kind, official_to_lit,
)
from lit_mae.interop.shapes import infer_config
from lit_mae.models import MAEConfig, MaskedAutoencoderViT, ViTClassifier, ViTEncoder

FORMATS = ("lightning", "official-full", "official-encoder", "official-finetuned", "hf", "timm", "lit-mae")
_FINAL_NORM = ("encoder.norm.weight", "encoder.norm.bias")


@dataclass(frozen=True)
class LoadReport:
    """What a load did besides copying tensors one to one."""

    source: str  # the file read, or "state dict"
    format: str  # one of FORMATS
    config_from: str  # "argument", "file" (its own config) or "shapes" (see `infer_config`)
    initialised: tuple[str, ...] = ()  # model keys not in the file: left freshly initialised
    dropped: tuple[str, ...] = ()  # file keys not loaded
    notes: tuple[str, ...] = ()  # assumptions, e.g. heads taken from the standard ViT width
    adapted: tuple[str, ...] = ()  # tensors changed to fit another channel count (`in_chans=`), and how

    def __str__(self) -> str:
        parts = [f"{self.source}: read as {self.format}, architecture from {self.config_from}"]
        if self.initialised:
            parts.append(f"freshly initialised (not in the file): {summarise(self.initialised)}")
        if self.dropped:
            parts.append(f"left out (in the file, not loaded): {summarise(self.dropped)}")
        return "; ".join(parts + list(self.notes) + list(self.adapted))


class EncoderWeights(NamedTuple):
    config: MAEConfig
    state_dict: dict[str, Tensor]  # `ViTEncoder` (official / timm) names
    report: LoadReport


class _Source(NamedTuple):
    state: dict[str, Tensor]  # lit-mae names
    format: str
    where: str
    config: MAEConfig | None  # the file's own architecture, when it has one
    hints: dict[str, Any]  # config fields the file states outside a full config


def detect_format(source: str | Path | Mapping[str, Any]) -> str:
    """The format of a file, Hugging Face directory or loaded dict: one of `FORMATS`."""
    return _read(source).format


def load_pretrained(
    source: str | Path | Mapping[str, Any], config: MAEConfig | None = None, *,
    decoder: Literal["require", "init"] = "require", head: Literal["error", "drop"] = "error", **overrides: Any,
) -> MaskedAutoencoderViT:
    """A `MaskedAutoencoderViT` from weights in any format (`detect_format`), loaded strictly.

    Architecture: `config`, else the file's own (Lightning hyper-parameters, HF `config.json`, the
    config `export_official` writes), else the tensor shapes (`infer_config`: pass `num_heads=` for
    non-standard widths); `overrides` change fields of it. `decoder="init"`: an encoder-only file
    gets a freshly initialised decoder. `head="drop"`: a fine-tuned file's fc_norm/head are left
    out (and a missing final norm, absent in global-pool files, is initialised). Both are reported
    in a warning and in `model.load_report`. `in_chans=N` (an override) on weights of another
    channel count adapts the patch embedding and the decoder's prediction layer
    (`lit_mae.interop.channels`: timm's `adapt_input_conv` rule; reported as `adapted`). Anything
    else missing, unexpected or of another shape raises one error naming every such key.
    """
    _check_choice("decoder", decoder, ("require", "init"))
    _check_choice("head", head, ("error", "drop"))
    src = _read(source)
    arch, config_from, notes = _architecture(src, config, overrides, decoder=True)
    state, dropped = _split_classifier(src, drop=head == "drop")
    model = MaskedAutoencoderViT(arch)
    adapted = adapt_channels(state, model.state_dict(), arch.in_chans)  # in_chans=N on C-channel weights
    fresh = _missing_final_norm(state, dropped)
    if not any(k.startswith(DECODER_PREFIXES) for k in state):
        if decoder != "init":
            raise ValueError(
                f"{src.where} has no decoder ({src.format} weights: the encoder only) and "
                "MaskedAutoencoderViT needs one: pass decoder='init' to start from a freshly initialised "
                "decoder (reported), or use load_encoder_weights(...) for the encoder alone"
            )
        fresh += [k for k in model.state_dict() if not k.startswith("encoder.")]
        notes.append(f"decoder built as decoder_embed_dim={arch.decoder_embed_dim}, decoder_depth="
                     f"{arch.decoder_depth}, decoder_num_heads={arch.decoder_num_heads}")
    load_strict(model, state, src.where, fresh)
    model.load_report = _report(src, config_from, fresh, dropped, notes, adapted)
    return model


def load_encoder_weights(
    source: str | Path | Mapping[str, Any], config: MAEConfig | None = None, **overrides: Any
) -> EncoderWeights:
    """(config, `ViTEncoder` state dict, report) from any format; decoder and classifier parts are
    left out (reported; a fine-tuned file's dropped head also warns). A global-pool fine-tuned file
    has no final norm: it is freshly initialised (LayerNorm 1/0) and reported. Strict otherwise."""
    src = _read(source)
    arch, config_from, notes = _architecture(src, config, overrides, decoder=False)
    state = {k: v for k, v in src.state.items() if not k.startswith(DECODER_PREFIXES + CLASSIFIER_PREFIXES)}
    dropped = sorted(set(src.state) - set(state))
    fresh = _missing_final_norm(state, dropped)
    template = _encoder_template(arch)
    adapted = adapt_channels(state, template, arch.in_chans)
    _check_fit(template, state, src.where, fresh)
    state.update({k: template[k] for k in fresh})  # a fresh final norm: LayerNorm's 1 / 0
    report = _report(src, config_from, fresh, dropped, notes, adapted)
    return EncoderWeights(arch, {k.removeprefix("encoder."): v for k, v in state.items()}, report)


def load_classifier(
    source: str | Path | Mapping[str, Any], config: MAEConfig | None = None, **overrides: Any
) -> ViTClassifier:
    """A `ViTClassifier` from a file with a head (official fine-tuned or linear-probe files, timm
    classifiers, LitLinearProbe / LitFineTune checkpoints). Pooling is "avg" when the file has an
    `fc_norm`, else "cls"; classes from the head; the probe's BatchNorm when the file has one."""
    src = _read(source)
    arch, config_from, notes = _architecture(src, config, overrides, decoder=False)
    if "head.weight" not in src.state:
        raise ValueError(f"{src.where} has no classification head (`head.weight`; {src.format} weights): "
                         "use load_pretrained or load_encoder_weights")
    pool = "avg" if "fc_norm.weight" in src.state else "cls"
    model = ViTClassifier(arch, src.state["head.weight"].shape[0], pool,
                          head_batchnorm="head_norm.running_mean" in src.state)
    fresh = [k for k in _FINAL_NORM if k not in src.state] if pool == "avg" else []
    state = dict(src.state)
    adapted = adapt_channels(state, model.state_dict(), arch.in_chans)
    load_strict(model, state, src.where, fresh)
    if fresh:
        notes.append("the freshly initialised encoder.norm is unused by average pooling")
    model.load_report = LoadReport(src.where, src.format, config_from, tuple(fresh), (), tuple(notes), tuple(adapted))
    return model


def to_lit_names(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename HF, official or timm keys to lit-mae's; lit-mae keys pass through."""
    if is_hf_state_dict(state_dict):
        return hf_to_lit(state_dict)
    if any(k.startswith("encoder.") for k in state_dict):
        return dict(state_dict)
    return official_to_lit(state_dict)


def load_strict(module: nn.Module, state_dict: Mapping[str, Tensor], where: str, fresh: Collection[str] = ()) -> None:
    """`load_state_dict(strict=True)` with one readable error for every problem at once.

    `fresh`: keys allowed to be absent; they keep the module's current (initialised) values.
    """
    expected = module.state_dict()
    _check_fit(expected, state_dict, where, fresh)
    module.load_state_dict({**{k: expected[k] for k in fresh}, **state_dict}, strict=True)


def summarise(keys: Collection[str]) -> str:
    """Keys grouped by module, blocks counted: "decoder_blocks.* (8 blocks), decoder_embed, mask_token"."""
    groups: dict[str, set[int]] = {}
    for key in keys:
        block = re.match(r"^(.*blocks)\.(\d+)\.", key)
        name = f"{block.group(1)}.*" if block else (key.rpartition(".")[0] if "." in key else key)
        groups.setdefault(name, set()).update([int(block.group(2))] if block else [])
    return ", ".join(f"{name} ({len(ix)} blocks)" if ix else name for name, ix in sorted(groups.items()))


# --- helpers ------------------------------------------------------------------------------------
def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_fit(expected: Mapping[str, Tensor], state_dict: Mapping[str, Tensor], where: str,
               fresh: Collection[str] = ()) -> None:
    missing = sorted(set(expected) - set(state_dict) - set(fresh))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape
    ]
    problems = [f"{label} keys: {names}" for label, names in
                (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)) if names]
    if problems:
        raise ValueError(f"{where} does not fit the model:\n  " + "\n  ".join(problems))


def _encoder_template(config: MAEConfig) -> dict[str, Tensor]:
    """`encoder.*` keys with tensors of ViTEncoder's shapes, building one block only (the blocks are
    alike; initialising a ViT-H encoder takes seconds)."""
    one = ViTEncoder(config.replace(depth=1)).state_dict()
    out: dict[str, Tensor] = {}
    for key, value in one.items():
        names = [key] if not key.startswith("blocks.0.") else [f"blocks.{i}.{key[9:]}" for i in range(config.depth)]
        out.update((f"encoder.{name}", value) for name in names)
    return out


def _read(source: str | Path | Mapping[str, Any]) -> _Source:
    where, config_file = "state dict", None
    if isinstance(source, (str, Path)):
        weights, config_file = find_weights(Path(source))
        where, content = str(weights), read_state_dict(weights)
    else:
        content = source
    fmt, state = _classify(content, where)
    config, hints = None, {}
    if fmt == "lightning":
        config = config_from_hparams(content.get("hyper_parameters") or {}, where)
    elif fmt.startswith("official") and "model" in content:
        saved, args = content.get(CONFIG_KEY), content.get("args")
        config = MAEConfig.from_dict(saved) if isinstance(saved, Mapping) else None
        if isinstance(args, argparse.Namespace):  # official training checkpoints
            hints = {k: getattr(args, k) for k in ("norm_pix_loss", "mask_ratio") if hasattr(args, k)}
            hints.update(heads_of_official_model(getattr(args, "model", None)))
    elif fmt == "hf":
        hints = {"layer_norm_eps": 1e-12}  # transformers' default, where no config.json says otherwise
        config = config_from_hf(json.loads(config_file.read_text())) if config_file is not None else None
    return _Source(to_lit_names(state), fmt, where, config, hints)


def _classify(content: Any, where: str) -> tuple[str, Mapping[str, Tensor]]:
    if not isinstance(content, Mapping):
        raise ValueError(f"{where}: holds a {type(content).__name__}, not a state dict or checkpoint")
    if is_lightning_checkpoint(content):
        return "lightning", model_state(content)
    if isinstance(content.get("model"), Mapping):
        return official_kind(content["model"]), content["model"]
    if content and all(isinstance(v, Tensor) for v in content.values()):
        if is_hf_state_dict(content):
            return "hf", content
        if any(k.startswith("encoder.") for k in content):
            return "lit-mae", content
        if any(k.startswith(DECODER_PREFIXES) for k in content):
            return "official-full", content
        if any(k in content for k in ("cls_token", "pos_embed", "patch_embed.proj.weight")):
            return "timm", content
    raise ValueError(f"{where}: not a recognised MAE / ViT checkpoint (expected a state dict of tensors, an "
                     f"official {{'model': ...}} file or a Lightning checkpoint; keys {sorted(map(str, content))[:8]})")


def _architecture(src: _Source, config: MAEConfig | None, overrides: dict[str, Any],
                  decoder: bool) -> tuple[MAEConfig, str, list[str]]:
    if config is not None:
        return config.replace(**overrides), "argument", []
    if src.config is not None:
        return src.config.replace(**overrides), "file", []
    try:
        arch, notes = infer_config(src.state, decoder, **{**src.hints, **overrides})
    except ValueError as error:
        raise ValueError(f"{src.where} ({src.format} weights, no config with them): {error}") from None
    if notes:  # settings the file does not hold: a wrong guess builds another model, so say so
        warnings.warn(f"{src.where} ({src.format} weights, no config with them): {'; '.join(notes)}; if the "
                      "weights were trained otherwise, give the true values (a config, or the fields as "
                      "overrides)", stacklevel=3)
    return arch, "shapes", notes


def _split_classifier(src: _Source, drop: bool) -> tuple[dict[str, Tensor], list[str]]:
    extras = sorted(k for k in src.state if k.startswith(CLASSIFIER_PREFIXES))
    if extras and not drop:
        raise ValueError(
            f"{src.where} is a fine-tuned classifier ({src.format}): its {summarise(extras)} have no place in "
            "MaskedAutoencoderViT; pass head='drop' to leave them out (reported), or use load_classifier(...)"
        )
    return {k: v for k, v in src.state.items() if k not in extras}, extras


def _missing_final_norm(state: Mapping[str, Tensor], dropped: Collection[str]) -> list[str]:
    """Global-pool fine-tuned files (fc_norm) have no final norm: it is initialised, not an error."""
    has_fc_norm = any(k.startswith("fc_norm.") for k in dropped)
    return [k for k in _FINAL_NORM if k not in state] if has_fc_norm else []


def _report(src: _Source, config_from: str, fresh: list[str], dropped: list[str], notes: list[str],
            adapted: list[str] = ()) -> LoadReport:
    report = LoadReport(src.where, src.format, config_from, tuple(fresh), tuple(dropped), tuple(notes), tuple(adapted))
    if fresh or adapted or any(k.startswith(CLASSIFIER_PREFIXES) for k in dropped):
        warnings.warn(str(report), stacklevel=3)
    return report
