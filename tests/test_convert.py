"""`lit-mae convert` between formats (lit_mae/cli/convert.py on lit_mae/interop/convert.py), run as
users run it. `LitMAE(pretrained=...)` from those formats: test_systems_pretraining.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import assert_same_state, perturbed, tiny_config_values
from lit_mae import LitMAE
from lit_mae.interop import export_timm, load_pretrained
from lit_mae.interop.checkpoint import lightning_checkpoint
from lit_mae.models import MAEConfig, MaskedAutoencoderViT

LIT_MAE = str(Path(sys.executable).parent / "lit-mae")


def convert(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LIT_MAE, "convert", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_convert_a_lightning_checkpoint_to_every_format_and_back(tmp_path):
    model = perturbed(MaskedAutoencoderViT(MAEConfig(**tiny_config_values())))
    torch.save(lightning_checkpoint(model), tmp_path / "src.ckpt")
    targets = {"hf": "hf_dir", "official": "official.pth", "timm": "timm.safetensors", "lightning": "again.ckpt"}
    for to, destination in targets.items():
        result = convert("src.ckpt", destination, "--to", to, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert destination in result.stderr
    umask = os.umask(0)
    os.umask(umask)
    written = [tmp_path / "hf_dir" / "model.safetensors", tmp_path / "hf_dir" / "config.json",
               *(tmp_path / name for name in targets.values() if name != "hf_dir")]
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in written}
    assert modes == {path.name: oct(0o666 & ~umask) for path in written}  # safetensors alone made 0600 files
    assert_same_state(load_pretrained(tmp_path / "hf_dir"), model)
    assert_same_state(load_pretrained(tmp_path / "official.pth"), model)
    assert_same_state(LitMAE.load_from_checkpoint(tmp_path / "again.ckpt").model, model)
    timm_state = load_pretrained(tmp_path / "timm.safetensors", decoder="init", num_heads=model.config.num_heads)
    assert_same_state(timm_state.encoder, model.encoder)  # timm holds the encoder only


def test_convert_reports_user_errors_without_a_traceback(tmp_path):
    missing = convert("nope.pth", "out", "--to", "hf", cwd=tmp_path)
    assert missing.returncode == 2 and "nope.pth" in missing.stderr and "Traceback" not in missing.stderr
    model = perturbed(MaskedAutoencoderViT(MAEConfig(**tiny_config_values())))
    torch.save(export_timm(model), tmp_path / "encoder.pth")  # a config-less encoder of width 32
    no_heads = convert("encoder.pth", "out.pth", "--to", "official", "--decoder", "init", cwd=tmp_path)
    assert no_heads.returncode == 2 and "num_heads" in no_heads.stderr and "Traceback" not in no_heads.stderr
    bad_target = convert("encoder.pth", "out.pth", "--to", "onnx", cwd=tmp_path)
    assert bad_target.returncode == 2 and "onnx" in bad_target.stderr
    fixed = convert("encoder.pth", "out.pth", "--to", "official", "--decoder", "init",
                    "--num-heads", str(model.config.num_heads), cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert_same_state(load_pretrained(tmp_path / "out.pth").encoder, model.encoder)


def test_convert_errors_name_its_flags_not_python_keywords(tmp_path):
    model = perturbed(MaskedAutoencoderViT(MAEConfig(**tiny_config_values())))
    torch.save(export_timm(model), tmp_path / "encoder.pth")  # config-less, encoder only, width 32
    no_decoder = convert("encoder.pth", "out.pth", "--to", "official", "--num-heads", "2", cwd=tmp_path)
    assert no_decoder.returncode == 2 and "--decoder init" in no_decoder.stderr
    no_heads = convert("encoder.pth", "out.pth", "--to", "official", "--decoder", "init", cwd=tmp_path)
    assert no_heads.returncode == 2 and "--num-heads N" in no_heads.stderr
    for result in (no_decoder, no_heads):
        assert "='" not in result.stderr and "=..." not in result.stderr, result.stderr  # no Python keywords


def test_every_python_keyword_the_loaders_name_has_a_flag():
    """The loaders' messages say `pass decoder='init'` and the like; `as_flags` must know each one."""
    import re

    from lit_mae.cli.convert import as_flags

    sources = (Path(__file__).resolve().parent.parent / "lit_mae" / "interop").glob("*.py")
    keywords = {match for path in sources for match in re.findall(r"pass (\w+=\S+?)(?: |\"|$)", path.read_text())}
    assert keywords, "the pattern found no keyword: the test no longer looks at the messages"
    for keyword in keywords:
        assert as_flags(f"pass {keyword}") != f"pass {keyword}", keyword
