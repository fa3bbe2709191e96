"""Weights in every format: read (`load_pretrained`, `load_encoder_weights`, `load_classifier`) from
lit-mae, Hugging Face, official MAE and timm files, and written back (`export_hf`, `export_official`,
`export_timm`, `lightning_checkpoint`)."""

from lit_mae.interop.checkpoint import lightning_checkpoint
from lit_mae.interop.export import export_hf
from lit_mae.interop.hf import config_from_hf, config_to_hf, hf_to_lit, lit_to_hf
from lit_mae.interop.loading import load_pretrained, load_strict, read_state_dict
from lit_mae.interop.loading import (
    FORMATS, EncoderWeights, LoadReport, detect_format, load_classifier, load_encoder_weights, to_lit_names,
)
from lit_mae.interop.official import export_official, official_state_dict
from lit_mae.interop.shapes import infer_config
from lit_mae.interop.timm import export_timm, timm_kwargs

__all__ = ["load_pretrained", "load_strict", "read_state_dict", "config_from_hf", "hf_to_lit",
           "export_hf", "lit_to_hf", "config_to_hf"]
__all__ += ["FORMATS", "EncoderWeights", "LoadReport", "detect_format", "load_classifier", "load_encoder_weights",
            "to_lit_names", "export_official", "official_state_dict", "infer_config", "export_timm", "timm_kwargs",
            "lightning_checkpoint"]
