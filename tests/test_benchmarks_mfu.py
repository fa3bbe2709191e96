"""benchmarks/mfu.py, lightning_overhead.py and checkpointing_memory.py: the FLOP count of a real
Lightning step against a count by hand, and the `--smoke` tables (structure and finite numbers;
no timing is asserted)."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import checkpointing_memory  # noqa: E402
import mfu  # noqa: E402
from lit_mae.models import MAEConfig, MaskedAutoencoderViT  # noqa: E402

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def smoke(script: str, tmp_path: Path, *args: str) -> str:
    """stdout of `python benchmarks/<script> --smoke --markdown FILE [args]`; the file holds the report."""
    markdown = tmp_path / "out.md"
    result = subprocess.run([sys.executable, f"benchmarks/{script}", "--smoke", "--markdown", str(markdown), *args],
                            cwd=REPO_ROOT, env={**os.environ, **ONE_THREAD}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = markdown.read_text()
    assert report.strip() in result.stdout
    return report


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table of `text` as rows of {header: cell}."""
    found, lines = [], text.splitlines() + [""]
    block: list[str] = []
    for line in lines:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            split = [[cell.strip() for cell in row.strip("|").split("|")] for row in block]
            assert set(block[1].replace("|", "")) == {"-"}
            found.append([dict(zip(split[0], row, strict=True)) for row in split[2:]])
            block = []
    return found


def positive(cell: str) -> float:
    value = float(cell)
    assert math.isfinite(value) and value > 0, cell
    return value


@pytest.mark.parametrize("overrides", [{}, {"mlp_ratio": 2.0, "mask_ratio": 0.5, "decoder_depth": 2}])
def test_analytic_flops_match_the_counter_on_a_training_step(overrides):
    values = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, decoder_embed_dim=32,
                  decoder_depth=1, decoder_num_heads=2)
    config = MAEConfig(**{**values, **overrides})
    model = MaskedAutoencoderViT(config).train()
    images = torch.randn(3, 3, 32, 32)
    with mfu.eager_attention(model), FlopCounterMode(display=False) as counter:
        model(images, noise=torch.rand(3, config.num_patches)).loss.backward()
    assert counter.get_total_flops() == 3 * mfu.analytic_step_flops(config)
    assert all(m.implementation == "sdpa" for m in model.modules() if isinstance(m, mfu.Attention))  # restored


def test_the_counter_misses_cpu_sdpa_so_the_count_runs_eager():
    """Why `eager_attention` exists: if this starts failing, torch counts CPU SDPA and it can go."""
    q = torch.randn(1, 2, 5, 4)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 0


@pytest.mark.parametrize(("features", "probe_share"), [("step", (0.0, 0.01)), ("unmasked", (0.2, 1.0))])
def test_mfu_smoke_reports_rows_per_precision_and_probe(tmp_path, features, probe_share):
    """The probe's FLOPs: its head alone on the step's features; an encoder forward on all patches
    (against forward + backward on a quarter of them) on the full images."""
    report = smoke("mfu.py", tmp_path, "--probe-features", features)
    assert "load average" in report and "device: CPU" in report
    [rows] = tables(report)
    assert list(rows[0]) == mfu.HEADERS
    precisions = [row["precision"] for row in rows]
    assert precisions[:2] == ["32-true", "32-true"] and set(precisions) <= {"32-true", "bf16-mixed"}
    assert [row["probe"] for row in rows] == ["off", "on"] * (len(rows) // 2)
    for row in rows:
        for column in ["step ms", "images/s", "model GFLOP/image", "model TFLOP/s", "MFU %"]:
            positive(row[column])
        assert (row["probe GFLOP/image"] == "—") == (row["probe"] == "off")
    assert len({row["model GFLOP/image"] for row in rows}) == 1  # one count per preset
    share = positive(rows[1]["probe GFLOP/image"]) / positive(rows[1]["model GFLOP/image"])
    assert probe_share[0] < share < probe_share[1]
    assert "counted / analytic model FLOPs (analytic_step_flops): smoke 1.0000." in report


def test_lightning_overhead_smoke_names_every_variant_and_the_per_epoch_work(tmp_path):
    report = smoke("lightning_overhead.py", tmp_path)
    steps, per_epoch = tables(report)
    assert [row["variant"] for row in steps] == ["bare", "lightning", "+ logging", "defaults",
                                                  "defaults, unmasked probe", "defaults, unmasked probe every 16"]
    assert steps[0]["vs bare"] == "1.000"
    for row in steps:
        positive(row["step ms"])
        positive(row["vs bare"])
    assert [row["per-epoch work"].split(" (")[0] for row in per_epoch] == [
        "kNN bank", "reconstruction grid", "checkpoint with AdamW state"]


def test_checkpointing_memory_child_keeps_less_for_backward_with_the_same_loss():
    measured = {}
    for variant in ("off", "on"):
        args = argparse.Namespace(device="cpu", preset="smoke", img_size=32, batch=2, dtype="fp32", steps=2,
                                  checkpointing=variant)
        measured[variant] = checkpointing_memory.child(args)
    off, on = measured["off"], measured["on"]
    assert on["loss"] == off["loss"]
    assert 0 < on["saved"] < 0.6 * off["saved"]
    assert off["peak"] > 0 and on["step"] > 0
