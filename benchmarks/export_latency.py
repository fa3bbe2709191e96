"""Encoder latency on CPU: PyTorch eager against onnxruntime on the ONNX file `lit-mae export-encoder`
writes (the same `FeatureExtractor`, random init), at batch 1 and 32.

    python benchmarks/export_latency.py            # digits model and ViT-B/16 at 224, a few minutes
    python benchmarks/export_latency.py --smoke    # a tiny model, seconds (what the test runs)

Prints a Markdown table: median milliseconds per call (after warm-up), PyTorch / onnxruntime, and the
largest difference between the two outputs. Needs the export extra (pip install "lit-mae[export]").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the root, first
    sys.path.insert(0, str(REPO_ROOT))

from lit_mae.interop.encoder_export import export_encoder  # noqa: E402
from lit_mae.interop.features import FeatureExtractor  # noqa: E402
from lit_mae.models import MAEConfig, ViTEncoder, preset_config  # noqa: E402

MODELS: dict[str, Callable[[], MAEConfig]] = {
    "digits (16 px, patch 4, D192, depth 6)": lambda: MAEConfig(
        img_size=16, patch_size=4, embed_dim=192, depth=6, num_heads=3, decoder_embed_dim=128,
        decoder_depth=2, decoder_num_heads=4),
    "ViT-B/16 (224 px)": lambda: preset_config("base", img_size=224),
}
SMOKE = {"smoke (16 px, patch 4, D32, depth 1)": lambda: MAEConfig(
    img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
    decoder_depth=1, decoder_num_heads=2)}


def median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(name: str, config: MAEConfig, batches: tuple[int, ...], repeats: int, folder: Path) -> list[list[str]]:
    """Rows [model, batch, PyTorch ms, onnxruntime ms, ratio, max |difference|] for one model."""
    import onnxruntime as ort

    torch.manual_seed(0)
    extractor = FeatureExtractor(ViTEncoder(config)).eval()
    path = export_encoder(extractor, folder / "encoder.onnx", "onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as PyTorch
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rows = []
    for batch in batches:
        images = torch.randn(batch, config.in_chans, config.img_size, config.img_size,
                             generator=torch.Generator().manual_seed(batch))
        feed = {"images": images.numpy()}
        with torch.inference_mode():
            expected = extractor(images)[1]
            torch_ms = median_ms(lambda: extractor(images), repeats, warmup=2)
        onnx_ms = median_ms(lambda: session.run(["features"], feed), repeats, warmup=2)
        difference = (torch.from_numpy(session.run(["features"], feed)[0]) - expected).abs().max().item()
        rows.append([name, str(batch), f"{torch_ms:.2f}", f"{onnx_ms:.2f}", f"{torch_ms / onnx_ms:.2f}",
                     f"{difference:.1e}"])
    return rows


def table(rows: list[list[str]]) -> str:
    header = ["model", "batch", "PyTorch ms", "onnxruntime ms", "PyTorch / onnxruntime", "max abs difference"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny model, few repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default 20; smoke 3)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.smoke else 20)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, config in (SMOKE if args.smoke else MODELS).items():
            rows += measure(name, config(), (1, 32), repeats, Path(folder))
    text = table(rows)
    threads = torch.get_num_threads()
    print(f"CPU, {threads} threads (PyTorch and onnxruntime), torch {torch.__version__}; median of {repeats} calls\n\n{text}")
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
