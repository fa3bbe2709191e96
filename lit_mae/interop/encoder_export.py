"""The encoder as a deployable file: ONNX (for onnxruntime and the like) or a `torch.export` program
(`.pt2`). What is written is a `FeatureExtractor`: all patches, no masking (no random op is in the
graph), the batch dimension dynamic, the image size fixed at export (the native one unless asked).

ONNX files use opset `ONNX_OPSET` (onnxruntime 1.14 and newer run it) and carry what a user needs
in their metadata (`lit_mae.input`, `lit_mae.outputs`, ...); `read_onnx_metadata` reads it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from lit_mae.interop.features import FeatureExtractor, example_input

ExportFormat = Literal["onnx", "pt2"]
EXPORT_FORMATS: tuple[str, ...] = ("onnx", "pt2")
ONNX_OPSET = 18
EXPORT_EXTRA = 'pip install "lit-mae[export]"'


class MissingExportDependency(ImportError):
    """The optional packages of an export format are not installed (the message says which extra)."""


def require_onnx() -> None:
    """Import what torch's ONNX exporter needs, or raise `MissingExportDependency` naming the extra."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) builds the graph with it)
    except ImportError as error:
        raise MissingExportDependency(f"ONNX export needs the onnx and onnxscript packages ({error.name} is not "
                                      f"installed): {EXPORT_EXTRA}") from None


def export_encoder(extractor: FeatureExtractor, path: str | Path, format: ExportFormat) -> Path:
    """Write `extractor` (in eval mode) to `path` as `format` ("onnx" or "pt2"); returns the path.

    Inputs: "images" (batch, C, H, W) float32 at `extractor.image_size`, the batch dynamic.
    Outputs in `extractor.output_names` order: tokens (batch, 1+L, D), features (batch, D) and,
    with a head, logits (batch, K).
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {list(EXPORT_FORMATS)}, got {format!r}")
    if format == "onnx":
        require_onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extractor = extractor.eval()
    example = (example_input(extractor, batch=2),)  # batch 2: an example of 1 would fix the batch at 1
    dynamic = {"images": {0: torch.export.Dim("batch", min=1)}}
    if format == "pt2":
        program = torch.export.export(extractor, example, dynamic_shapes=dynamic)
        torch.export.save(program, path, extra_files={"lit_mae.json": _json(extractor.describe())})
        return path
    _export_onnx(extractor, example, dynamic, path)
    return path


def _export_onnx(extractor: FeatureExtractor, example: tuple[torch.Tensor], dynamic: dict, path: Path) -> None:
    import onnx

    program = torch.onnx.export(extractor, example, dynamo=True, input_names=["images"],
                                output_names=list(extractor.output_names), dynamic_shapes=dynamic,
                                opset_version=ONNX_OPSET, verbose=False)
    model = program.model_proto
    for key, value in extractor.describe().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata an exported ONNX file carries (`lit_mae.input`, `lit_mae.outputs`, ...)."""
    require_onnx()
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in model.metadata_props}


def _json(values: dict[str, str]) -> str:
    import json

    return json.dumps(values, indent=2, sort_keys=True)
