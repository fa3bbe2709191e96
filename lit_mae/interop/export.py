"""Write a lit-mae model in another project's checkpoint format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from lit_mae.interop.files import save_safetensors
from lit_mae.interop.hf import config_to_hf, lit_to_hf
from lit_mae.interop.model_card import model_card
from lit_mae.models import MaskedAutoencoderViT


def export_hf(model: MaskedAutoencoderViT, directory: str | Path, encoder_only: bool = False,
              checkpoint: Mapping[str, Any] | None = None) -> Path:
    """Write a Hugging Face ViTMAE directory: `config.json` + `model.safetensors` (4.x names) and a
    model card, `README.md`, to push to the Hub as it is (`lit_mae.interop.model_card`): with
    `checkpoint`, the lit-mae Lightning checkpoint the weights came from, it gives the training
    recipe, data and logged probe/kNN numbers too.

    By default a `ViTMAEForPreTraining` file (`vit.` prefix, with the decoder), which
    `ViTMAEForPreTraining.from_pretrained(directory)` and `lit_mae.interop.load_pretrained(directory)`
    load whole; `ViTMAEModel` and `ViTForImageClassification` (new head) load its encoder and
    report the `decoder.*` keys as unused, as with the hub's `facebook/vit-mae-*` files.
    `encoder_only=True` writes a `ViTMAEModel` file instead (no prefix, no decoder), which those
    two load with nothing unused. Fields transformers has no place for are dropped (see
    `config_to_hf`). Existing files of these names are overwritten. Returns the directory.
    """
    if not isinstance(model, MaskedAutoencoderViT):
        raise TypeError(f"export_hf expects a MaskedAutoencoderViT, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = config_to_hf(model.config)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if encoder_only:
        config["architectures"] = ["ViTMAEModel"]
        state_dict = lit_to_hf({k: v for k, v in state_dict.items() if k.startswith("encoder.")}, prefix="")
    else:
        state_dict = lit_to_hf(state_dict, prefix="vit.")
    # the metadata transformers' own save_pretrained writes (4.57 also loads files without it)
    save_safetensors(state_dict, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (directory / "README.md").write_text(model_card(model.config, checkpoint, encoder_only))
    return directory
