"""Shared parts of the benchmark scripts: same-weights lit-mae / transformers pairs, timing, tables,
a fresh folder per CLI run.

Not a script; `train_step.py` and `inference.py` import it (run them from the repository root or
with the root on PYTHONPATH). Only `lit_mae.models` and `lit_mae.interop` are needed (no Lightning).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import torch
from torch import Tensor, nn

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the root, first
    sys.path.insert(0, str(REPO_ROOT))

import transformers  # noqa: E402
from transformers import ViTMAEConfig, ViTMAEForPreTraining  # noqa: E402

from lit_mae.interop import load_pretrained  # noqa: E402
from lit_mae.models import MAEConfig, preset_config  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("lit-mae", "transformers")


# --- configs and same-weights models ------------------------------------------------------------
def smoke_config() -> MAEConfig:
    """A model that runs a step in milliseconds: 32 px, 8 px patches, 2+1 blocks."""
    return MAEConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                     decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def lit_config(preset: str, img_size: int) -> MAEConfig:
    """A lit-mae preset at `img_size` ("smoke" is `smoke_config`, whose size is fixed)."""
    return smoke_config() if preset == "smoke" else preset_config(preset, img_size=img_size)


def hf_config(config: MAEConfig, attn: str) -> ViTMAEConfig:
    """The transformers config of the same architecture (exact GELU, as lit-mae)."""
    # attn_implementation goes into the constructor: set_attn_implementation() afterwards does not
    # reach transformers' decoder (see tests/test_parity_hf.py).
    return ViTMAEConfig(
        image_size=config.img_size, patch_size=config.patch_size, num_channels=config.in_chans,
        hidden_size=config.embed_dim, num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads, intermediate_size=round(config.embed_dim * config.mlp_ratio),
        decoder_hidden_size=config.decoder_embed_dim, decoder_num_hidden_layers=config.decoder_depth,
        decoder_num_attention_heads=config.decoder_num_heads,
        decoder_intermediate_size=round(config.decoder_embed_dim * config.decoder_mlp_ratio),
        mask_ratio=config.mask_ratio, norm_pix_loss=config.norm_pix_loss, qkv_bias=config.qkv_bias,
        layer_norm_eps=config.layer_norm_eps, hidden_act="gelu", attn_implementation=attn,
    )


class Reference:
    """transformers' random init of a config, saved with `save_pretrained` into `directory`.

    lit-mae models are read back from that directory with `load_pretrained`; transformers models
    get the same tensors through `load_state_dict`. Each `build` is a fresh copy, so that training
    runs of either implementation start from equal weights.
    """

    def __init__(self, config: MAEConfig, directory: Path, seed: int = 0) -> None:
        torch.manual_seed(seed)
        model = ViTMAEForPreTraining(hf_config(config, "eager"))
        model.save_pretrained(directory)
        self.config, self.directory, self.state = config, directory, model.state_dict()

    def build(self, impl: str, attn: str) -> nn.Module:
        """A fresh CPU model of `impl` ("lit-mae" or "transformers") with `attn` attention."""
        if impl == "lit-mae":
            return load_pretrained(self.directory, attn_implementation=attn)
        model = ViTMAEForPreTraining(hf_config(self.config, attn))
        model.load_state_dict(self.state, strict=True)
        return model


def fixed_inputs(config: MAEConfig, batch: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Images (B, C, H, W) and masking noise (B, L), the same for both implementations."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, config.in_chans, config.img_size, config.img_size, generator=generator)
    noise = torch.rand(batch, config.num_patches, generator=generator)
    return images.to(device), noise.to(device)


def loss_of(model: nn.Module, images: Tensor, noise: Tensor) -> Tensor:
    """Pretraining loss; both output types carry `.loss`."""
    return model(images, noise=noise).loss


# --- device, precision, timing ------------------------------------------------------------------
def autocast(device: torch.device, dtype: str) -> ContextManager[object]:
    """bf16 = torch.autocast on the device; fp32 = no autocast."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Seconds per call of `fn`, each timed alone between device synchronisations."""
    for _ in range(warmup):
        fn()
    return [time_call(fn, device) for _ in range(repeats)]


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of `fn` between device synchronisations."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each of `fns`, timed in turns (a, b, a, b, ...), so that a busy or
    throttling machine slows all of them alike instead of whichever happened to run last."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_call(fn, device))
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def matmul_peak(device: torch.device, dtype: str, sizes: Sequence[int], repeats: int = 5) -> tuple[float, int]:
    """(FLOP/s, size) of the fastest square matmul among `sizes` in `dtype` on `device`, each the
    median of `repeats`: the machine's attainable matmul rate, the denominator of MFU."""
    generator = torch.Generator().manual_seed(0)
    best = (0.0, 0)
    for size in sizes:
        a, b = (torch.randn(size, size, generator=generator).to(device, DTYPES[dtype]) for _ in range(2))
        rate = 2 * size**3 / median(time_calls(lambda: a @ b, device, repeats, warmup=2))
        best = max(best, (rate, size))
    return best


def peak_sizes(device: torch.device, smoke: bool) -> tuple[int, ...]:
    """Matmul sizes to find the peak: large enough to be compute-bound, small enough to be quick."""
    if smoke:
        return (256,)
    return (4096, 8192) if device.type == "cuda" else (1024, 2048)


def device_line(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3' or 'CPU x86_64 (<model>), 2 threads', plus library versions."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        name = f"{name}, fp32 matmul precision {torch.get_float32_matmul_precision()!r} ('highest': no TF32)"
    else:
        name = f"CPU {platform.machine()} ({cpu_model()}), torch threads: {torch.get_num_threads()}"
    return f"device: {name}; torch {torch.__version__}; transformers {transformers.__version__}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown model"


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False here")
    return torch.device(name)


# --- arguments and output -----------------------------------------------------------------------
def csv(text: str) -> list[str]:
    """'a,b' -> ['a', 'b'] (for comma-separated options)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def both(choice: str, values: tuple[str, str]) -> list[str]:
    """'both' -> both values, else the one named."""
    return list(values) if choice == "both" else [choice]


def number(value: float) -> str:
    """Three significant digits, without exponents for values from 1e-4 up."""
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def emit(text: str, markdown: str | None) -> None:
    """Print `text`, and write it to the `markdown` path when one is given."""
    print(text, flush=True)
    if markdown:
        path = Path(markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def describe_error(error: BaseException) -> str:
    """A table cell for a failed measurement: the type and the first line of the message."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"failed: {type(error).__name__} {first[:80]}".replace("|", "/")


# --- run folders ----------------------------------------------------------------------------------
@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Work in `folder` (made now; it must not exist), then come back."""
    if folder.exists():
        raise SystemExit(f"{folder} exists: give a new --out (each run needs a fresh folder)")
    folder.mkdir(parents=True)
    here = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)
