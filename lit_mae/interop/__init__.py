"""Checkpoint import (and, later, export) between lit-mae, Hugging Face, official MAE and timm."""

from lit_mae.interop.hf import config_from_hf, hf_to_lit
from lit_mae.interop.loading import load_pretrained, load_strict, read_state_dict

__all__ = ["load_pretrained", "load_strict", "read_state_dict", "config_from_hf", "hf_to_lit"]
