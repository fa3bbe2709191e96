"""Every speed table against transformers on this machine, in one markdown file (and benchmarks/RESULTS.md).

    python benchmarks/run_all.py              # -> benchmarks/RESULTS_cpu.md (RESULTS_cuda.md on a GPU)
    python benchmarks/run_all.py --results    # also replaces the block between the markers in RESULTS.md
    python benchmarks/run_all.py --smoke      # the same scripts on a 32 px model: proves it runs

Each table comes from one run of `train_step.py` or `inference.py` in its own process (a fresh
compile cache and allocator per table). The file starts with the machine, the command, the load
average before and after, and the wall time; a failed script leaves its exit status in the file.
`--readme` is the old name of `--results` (the tables used to live in the README).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import cpu_model

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- benchmarks/run_all.py:begin -->", "<!-- benchmarks/run_all.py:end -->"

# (script, arguments): ViT-S and ViT-B at 224 px as the targets name them; 2-core CPUs
# get batch 16 and few repeats (a ViT-B step takes about 10 s there)
PLANS: dict[str, list[tuple[str, list[str]]]] = {
    "cpu": [
        ("train_step.py", ["--presets", "tiny,small,base", "--batch", "16", "--attn", "sdpa", "--compile", "both",
                           "--repeats", "5", "--warmup", "2"]),
        ("train_step.py", ["--presets", "small", "--batch", "16", "--attn", "eager", "--compile", "off",
                           "--repeats", "5", "--warmup", "1"]),
        ("inference.py", ["--preset", "base", "--batches", "1,2,4,8", "--attn", "both", "--dtype", "fp32",
                          "--repeats", "7", "--warmup", "1"]),
        ("inference.py", ["--preset", "base", "--batches", "1,2,4,8", "--attn", "sdpa", "--dtype", "bf16",
                          "--repeats", "3", "--warmup", "1"]),
    ],
    "cuda": [
        ("train_step.py", ["--presets", "base", "--batch", "64", "--dtype", "bf16", "--attn", "sdpa",
                           "--compile", "both", "--repeats", "20"]),
        ("inference.py", ["--preset", "base", "--batches", "1,2,4,8", "--attn", "both", "--dtype", "fp32",
                          "--repeats", "30"]),
        ("inference.py", ["--preset", "base", "--batches", "1,2,4,8", "--attn", "both", "--dtype", "bf16",
                          "--repeats", "30"]),
    ],
}
SMOKE = [("train_step.py", ["--smoke"]), ("inference.py", ["--smoke", "--attn", "sdpa"])]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="the markdown file (default benchmarks/RESULTS_<device>.md)")
    parser.add_argument("--results", "--readme", dest="results", action="store_true",
                        help=f"also put the tables into benchmarks/RESULTS.md between {BEGIN} and {END} "
                             "(--readme: the old name)")
    parser.add_argument("--smoke", action="store_true", help="a 32 px model through every script")
    args = parser.parse_args(argv)
    args.out = args.out or HERE / f"RESULTS_{args.device}.md"
    return args


def machine() -> str:
    """The GPU's name, or the CPU's model and core count; with torch's version."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else (
        f"CPU {platform.machine()} ({cpu_model()}), {os.cpu_count()} cores")
    return f"{name}; torch {torch.__version__}"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"


def run_table(script: str, arguments: list[str], device: str) -> str:
    """The markdown a script writes, or a line with its exit status and the tail of its output."""
    with tempfile.TemporaryDirectory() as directory:
        table = Path(directory) / "table.md"
        command = [sys.executable, str(HERE / script), *arguments, "--device", device, "--markdown", str(table)]
        print("$", shlex.join(["python", f"benchmarks/{script}", *arguments]), flush=True)
        result = subprocess.run(command, cwd=HERE.parent, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        print(result.stdout, flush=True)
        text = table.read_text().strip() if table.exists() else ""
    if result.returncode != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-5:])
        text += f"\n\n`{script}` exited with status {result.returncode}:\n\n```\n{tail}\n```"
    command_line = shlex.join(["python", f"benchmarks/{script}", *arguments])
    return f"`{command_line}`\n\n{text.replace('## ', '#### ', 1)}"


def replace_block(path: Path, block: str) -> None:
    """Put `block` between the BEGIN and END markers of `path` (which must have them)."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} block to replace")
    head, rest = text.split(BEGIN, 1)
    path.write_text(f"{head}{BEGIN}\n{block}\n{END}{rest.split(END, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = SMOKE if args.smoke else PLANS[args.device]
    start, load_before = time.perf_counter(), load_average()
    tables = [run_table(script, arguments, args.device) for script, arguments in plan]
    minutes = (time.perf_counter() - start) / 60
    command = shlex.join(["python", "benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    header = (f"Measured on {machine()} with `{command}` "
              f"({minutes:.1f} min; load average {load_before} before, {load_average()} after).")
    body = "\n\n".join([header, *tables])
    args.out.write_text(f"# lit-mae against transformers: every speed table\n\n{body}\n")
    print(f"wrote {args.out}")
    if args.results:
        replace_block(RESULTS, body)
        print(f"updated {RESULTS}")
    return 0 if all("exited with status" not in table for table in tables) else 1


if __name__ == "__main__":
    raise SystemExit(main())
