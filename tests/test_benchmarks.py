"""The benchmark scripts run end to end (`--smoke`: a 32 px model) and print the promised tables.

No timing is asserted: only that the tables have their rows and columns, that the measured numbers
are finite and positive, and that both implementations start from the same weights.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # a busy 2-core machine: no spinning


def run_script(script: str, *args: str) -> str:
    """stdout of `python benchmarks/<script> args...` from the repository root; it must succeed."""
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], cwd=REPO_ROOT, env={**os.environ, **ONE_THREAD},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def run_smoke(script: str, tmp_path: Path, *args: str) -> str:
    """stdout of `<script> --smoke --markdown <file> args...`; the file must hold what was printed."""
    markdown = tmp_path / f"{Path(script).stem}.md"
    out = run_script(script, "--smoke", *args, "--markdown", str(markdown))
    assert markdown.read_text().strip() in out
    return out


def parse_table(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """(headers, rows as {header: cell}) of the one markdown table in `text`."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = lambda line: [cell.strip() for cell in line.strip("|").split("|")]  # noqa: E731
    headers = split(lines[0])
    assert set(lines[1].replace("|", "")) == {"-"}, lines[1]
    return headers, [dict(zip(headers, split(line), strict=True)) for line in lines[2:]]


def assert_positive(row: dict[str, str], columns: list[str]) -> None:
    for column in columns:
        value = float(row[column])
        assert math.isfinite(value) and value > 0, (column, row)


def test_train_step_smoke_prints_one_row_per_implementation(tmp_path):
    out = run_smoke("train_step.py", tmp_path)
    assert "device: CPU" in out and "torch " in out and "transformers " in out
    headers, rows = parse_table(out)
    assert headers == ["preset", "attention", "compile", "implementation", "step ms", "images/s", "lit/HF rate",
                       "lit/HF-eager rate", "peak GiB", "GFLOP/step", "TFLOP/s", "MFU %", "loss@step0"]
    assert [(r["preset"], r["attention"], r["compile"], r["implementation"]) for r in rows] == [
        ("smoke", "sdpa", "off", "lit-mae"), ("smoke", "sdpa", "off", "transformers")]
    for row in rows:
        assert_positive(row, ["step ms", "images/s", "GFLOP/step", "TFLOP/s", "MFU %", "loss@step0"])
        assert row["peak GiB"] == "n/a"  # not measured on CPU
    lit, hf = rows
    assert_positive(lit, ["lit/HF rate", "lit/HF-eager rate"])
    assert lit["lit/HF rate"] == lit["lit/HF-eager rate"]  # compile off: the same transformers row
    assert lit["GFLOP/step"] == hf["GFLOP/step"]  # counted once per preset
    assert abs(float(lit["loss@step0"]) - float(hf["loss@step0"])) <= 1e-4  # same weights, same noise


def test_inference_smoke_prints_batches_by_attention(tmp_path):
    out = run_smoke("inference.py", tmp_path)
    headers, rows = parse_table(out)
    assert headers == ["batch", "attention", "lit-mae ms", "transformers ms", "speedup (HF/lit)"]
    assert [(r["batch"], r["attention"]) for r in rows] == [("1", "eager"), ("1", "sdpa"), ("2", "eager"), ("2", "sdpa")]
    for row in rows:
        assert_positive(row, ["lit-mae ms", "transformers ms", "speedup (HF/lit)"])


def test_gpu_check_script_parses():
    script = REPO_ROOT / "benchmarks" / "gpu_check.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dataloading_smoke_times_both_pipelines(tmp_path):
    images = tmp_path / "jpegs"
    out = run_smoke("dataloading.py", tmp_path, "--dir", str(images))
    assert "torchvision " in out and "Pillow " in out and "Pillow-SIMD" in out
    assert len(list(images.glob("class_*/*.jpg"))) == 40  # 10 class folders of generated JPEGs
    throughput, per_image = [parse_table(block) for block in out.split("\n\n") if block.startswith("|")]
    headers, rows = throughput
    assert headers == ["workers", "pipeline", "images/s", "images/s per worker", "lit/official", "CPU ms per image",
                       "lit/official per CPU s", "min-max images/s"]
    assert [(r["workers"], r["pipeline"]) for r in rows] == [("0", "official"), ("0", "lit-mae")]
    for row in rows:
        assert_positive(row, ["images/s", "images/s per worker"])
        assert row["images/s"] == row["images/s per worker"]  # workers 0: the main process is the one worker
        assert float(row["CPU ms per image"]) >= 0  # 10 ms ticks: a smoke run may see none
    assert_positive(rows[1], ["lit/official"])
    assert float(rows[1]["lit/official per CPU s"]) >= 0  # "inf" when lit-mae used less than a tick
    headers, rows = per_image
    assert [r["pipeline"] for r in rows] == ["official", "lit-mae"]
    for row in rows:
        assert_positive(row, [h for h in headers if h != "pipeline"])


def test_soak_smoke_samples_memory_and_gives_a_verdict(tmp_path):
    out = run_smoke("soak.py", tmp_path)
    headers, rows = parse_table(out)
    assert headers == ["step", "seconds", "main RSS MiB", "workers", "workers RSS MiB", "total RSS MiB",
                       "total PSS MiB"]
    assert [row["step"] for row in rows] == ["10", "20", "30", "40"]
    for row in rows:
        assert row["workers"] == "2"  # the persistent loader workers are found and counted
        assert_positive(row, ["main RSS MiB", "workers RSS MiB", "total RSS MiB", "total PSS MiB"])
        assert float(row["total RSS MiB"]) == pytest.approx(
            float(row["main RSS MiB"]) + float(row["workers RSS MiB"]), abs=0.11)
    assert "growth after warm-up (step 10 -> 40): total RSS" in out
    assert re.search(r"verdict: (PASS|FAIL) \(RSS growth [+-]\d+\.\d+ % vs threshold 5\.0 %\)", out), out


def test_run_all_smoke_gathers_every_table_into_one_file(tmp_path):
    results = tmp_path / "results.md"
    out = run_script("run_all.py", "--smoke", "--out", str(results))
    text = results.read_text()
    assert f"wrote {results}" in out
    assert text.startswith("# lit-mae against transformers: every speed table")
    assert "with `python benchmarks/run_all.py --smoke --out" in text and "load average" in text
    assert "`python benchmarks/train_step.py --smoke`" in text and "`python benchmarks/inference.py --smoke" in text
    tables = [block for block in text.split("\n\n") if block.startswith("|")]
    assert len(tables) == 2  # one per script, each as the script prints it
    assert parse_table(tables[0])[0][:4] == ["preset", "attention", "compile", "implementation"]
    assert parse_table(tables[1])[0][:2] == ["batch", "attention"]
    assert "exited with status" not in text


def test_results_has_one_block_for_run_all():
    """`run_all.py --results` (old name `--readme`) replaces the block in benchmarks/RESULTS.md."""
    markers = ("<!-- benchmarks/run_all.py:begin -->", "<!-- benchmarks/run_all.py:end -->")
    text = (REPO_ROOT / "benchmarks" / "RESULTS.md").read_text()
    for marker in markers:
        assert text.count(marker) == 1, marker
    assert text.index(markers[0]) < text.index(markers[1])
    readme = (REPO_ROOT / "README.md").read_text()
    assert not any(marker in readme for marker in markers)
    usage = run_script("run_all.py", "--help")
    assert "--results" in usage and "--readme" in usage


def test_profile_forward_smoke_lists_the_ops_of_both_implementations(tmp_path):
    out = run_smoke("profile_forward.py", tmp_path)
    headers, rows = parse_table(out)
    assert headers == ["implementation", "op", "calls", "self time ms", "share %"]
    for impl in ("lit-mae", "transformers"):
        mine = [row for row in rows if row["implementation"] == impl]
        assert mine[0]["op"] == "(all)" and mine[0]["share %"] == "100"
        assert 1 < len(mine) <= 6  # the total and the top 5
        assert_positive(mine[0], ["calls", "self time ms"])
        shares = [float(row["share %"]) for row in mine[1:]]
        assert shares == sorted(shares, reverse=True) and sum(shares) <= 100.5


def test_presets_smoke_counts_what_transformers_counts(tmp_path):
    out = run_smoke("presets.py", tmp_path)
    headers, rows = parse_table(out)
    assert [row["preset"] for row in rows] == ["tiny", "small"]
    for row in rows:  # transformers' ViTMAEForPreTraining of the same config: the outside check
        assert row["total"] == row["transformers total"], row
        encoder, decoder = (float(row[f"{part} params"].removesuffix(" M")) for part in ("encoder", "decoder"))
        assert encoder > 0 and 25 < decoder < 27  # the official 512-wide, 8-block decoder


def test_digits_protocols_smoke_runs_every_protocol_in_its_own_folder(tmp_path):
    """Pretraining, then the probe and fine-tuning from it and from a random encoder: five fresh runs
    (the CLI refuses a fresh run in a folder that holds one, so each needs its own)."""
    out = run_script("digits_protocols.py", "--smoke", "--out", str(tmp_path))
    header, rows = parse_table(out)
    assert header == ["run", "test top-1 %", "val top-1 % (best epoch)", "wall time"]
    assert [row["run"].split(" (")[0] for row in rows] == [
        "MAE pretraining", "linear probe, MAE-pretrained encoder", "linear probe, random init encoder",
        "fine-tune, MAE-pretrained encoder", "fine-tune, random init encoder"]
    for row in rows[1:]:
        assert 0 <= float(row["test top-1 %"]) <= 100
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "finetune_mae", "finetune_random", "linprobe_mae", "linprobe_random", "pretrain"]
