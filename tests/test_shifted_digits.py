"""The translated-digits story (configs/shifted/, benchmarks/shifted_digits.py): the configs fit
together and the script runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIFTED = REPO_ROOT / "configs" / "shifted"


def test_the_shifted_configs_chain_and_match_their_data():
    pretrain, finetune, scratch = (yaml.safe_load((SHIFTED / name).read_text())
                                   for name in ("pretrain.yaml", "finetune.yaml", "finetune_scratch.yaml"))
    architecture = pretrain["model"]["init_args"]["config"]
    data = pretrain["data"]["init_args"]
    assert (architecture["img_size"], architecture["in_chans"]) == (data["image_size"], data["channels"])
    assert data["digit_size"] < data["image_size"] and data["placement"] == "random"
    run = pretrain["trainer"]["logger"]["init_args"]
    assert finetune["model"]["init_args"]["pretrained"] == f"{run['save_dir']}/{run['name']}/checkpoints/last.ckpt"
    assert scratch["model"]["init_args"]["pretrained"] is None
    encoder = {k: v for k, v in architecture.items() if not k.startswith("decoder") and k not in ("mask_ratio", "norm_pix_loss")}
    assert scratch["model"]["init_args"]["config"] == encoder  # the baseline has the pretrained encoder's shape
    # one recipe for both fine-tunes: only the start and the run's name differ
    for config in (finetune, scratch):
        del config["model"]["init_args"]["pretrained"], config["trainer"]["logger"], config["trainer"]["default_root_dir"]
    del scratch["model"]["init_args"]["config"]
    assert finetune == scratch and finetune["data"] == pretrain["data"]


def test_the_script_runs_pretraining_fine_tunes_probes_and_knn(tmp_path):
    markdown = tmp_path / "table.md"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "shifted_digits.py"), "--smoke",
                             "--out", str(tmp_path / "out"), "--markdown", str(markdown)],
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [line for line in markdown.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split("|")[1].strip().split(" ")[0] for row in rows] == ["fine-tune", "linear", "kNN,"]
    for row in rows:
        for cell in row.split("|")[2:4]:
            assert 0 <= float(cell.split()[0]) <= 100
    for run in ("pretrain_s0", "finetune_s0", "scratch_s0", "probe_s0", "probe_random_s0"):
        assert (tmp_path / "out" / "runs" / run / "checkpoints" / "last.ckpt").exists(), run
