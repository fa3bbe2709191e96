"""`lit-mae export-encoder` and lit_mae/interop/encoder_export.py: onnxruntime and torch.export
programs give PyTorch's features and logits, masking is never in the graph, the size is fixed and
said, and a missing extra is named."""

from __future__ import annotations

import builtins
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch

from conftest import tiny_config_values
from lit_mae import MAEConfig, MaskedAutoencoderViT
from lit_mae.cli import export_encoder as cli
from lit_mae.interop import lightning_checkpoint
from lit_mae.interop.encoder_export import ONNX_OPSET, export_encoder, read_onnx_metadata
from lit_mae.interop.features import load_feature_extractor
from lit_mae.models import ViTClassifier

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

RANDOM_OPS = {"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Multinomial",
              "TopK", "ArgMax"}  # what masking (noise, argsort) would bring into a graph


def images(batch: int, height: int = 16, width: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def mae_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "mae.ckpt"
    torch.save(lightning_checkpoint(MaskedAutoencoderViT(MAEConfig(**tiny_config_values(depth=2)))), path)
    return path


@pytest.fixture(scope="module")
def finetuned_ckpt(tmp_path_factory) -> Path:
    """A LitFineTune-style checkpoint: average pooling (fc_norm), 5 classes, weights away from init."""
    torch.manual_seed(1)
    config = MAEConfig(**tiny_config_values())
    classifier = ViTClassifier(config, num_classes=5, pool="avg")
    with torch.no_grad():
        for parameter in classifier.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    path = tmp_path_factory.mktemp("weights") / "finetuned.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in classifier.state_dict().items()},
                "hyper_parameters": {"config": config.to_dict(), "num_classes": 5},
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


@pytest.fixture(scope="module")
def mae_onnx(mae_ckpt, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "encoder.onnx"
    cli.main([str(mae_ckpt), str(path)])
    return path


def run_onnx(path: Path, batch: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": batch.numpy()})


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_features_match_pytorch(mae_ckpt, mae_onnx, batch):
    extractor = load_feature_extractor(mae_ckpt)
    tokens, features = run_onnx(mae_onnx, images(batch))
    with torch.no_grad():
        expected_tokens, expected = extractor(images(batch))
        encoder = extractor.backbone
        direct = encoder.pool(encoder.forward_features(images(batch)), "cls")  # the documented API
    assert features.shape == (batch, 32) and tokens.shape == (batch, 17, 32)  # all 16 patches + cls
    torch.testing.assert_close(torch.from_numpy(features), expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(tokens), expected_tokens, rtol=0, atol=1e-4)
    torch.testing.assert_close(expected, direct, rtol=0, atol=0)


def test_onnx_graph_has_no_masking_and_says_its_size(mae_onnx):
    model = onnx.load(str(mae_onnx))
    assert {op.version for op in model.opset_import if op.domain in ("", "ai.onnx")} == {ONNX_OPSET}
    assert not RANDOM_OPS & {node.op_type for node in model.graph.node}
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # dynamic batch
    metadata = read_onnx_metadata(mae_onnx)
    assert "size fixed at 16x16" in metadata["lit_mae.input"]
    assert metadata["lit_mae.outputs"] == "tokens (batch, 17, 32), features (batch, 32)"
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # onnxruntime refuses another size
        run_onnx(mae_onnx, images(2, 24, 24))


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_classifier_logits_match_pytorch(finetuned_ckpt, tmp_path, batch):
    path = tmp_path / "classifier.onnx"
    export_encoder(load_feature_extractor(finetuned_ckpt, head=True), path, "onnx")
    classifier = load_feature_extractor(finetuned_ckpt, head=True).backbone
    tokens, features, logits = run_onnx(path, images(batch, seed=3))
    with torch.no_grad():
        expected_logits = classifier(images(batch, seed=3))
        expected_features = classifier.forward_head(classifier.forward_features(images(batch, seed=3)), True)
    assert logits.shape == (batch, 5)
    torch.testing.assert_close(torch.from_numpy(logits), expected_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(features), expected_features, rtol=0, atol=1e-4)


def test_pt2_loads_with_torch_export_and_matches(mae_ckpt, tmp_path):
    path = tmp_path / "encoder.pt2"
    cli.main([str(mae_ckpt), str(path), "--pool", "avg"])
    program = torch.export.load(path)
    assert not [n for n in program.graph.nodes if n.op == "call_function" and
                any(word in str(n.target) for word in ("rand", "argsort", "sort", "gather"))]  # no masking
    extractor = load_feature_extractor(mae_ckpt, pool="avg")
    for batch in (1, 7):
        tokens, features = program.module()(images(batch))
        with torch.no_grad():
            expected_tokens, expected = extractor(images(batch))
        torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(features, expected_tokens[:, 1:].mean(1), rtol=0, atol=1e-5)  # avg pooling


def test_pt2_at_a_non_square_size_matches_interpolated_positions(mae_ckpt, tmp_path):
    path = tmp_path / "wide.pt2"
    cli.main([str(mae_ckpt), str(path), "--img-size", "16x24"])
    module = torch.export.load(path).module()
    encoder = load_feature_extractor(mae_ckpt).backbone
    tokens, features = module(images(3, 16, 24))
    with torch.no_grad():
        expected = encoder.forward_features(images(3, 16, 24), interpolate_pos_encoding=True)  # (3, 1+4*6, D)
    assert tokens.shape == (3, 25, 32)
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="16|24"):  # the program is fixed at 16x24 and says so
        module(images(3, 16, 16))


def test_cli_errors_are_one_line_with_status_2(mae_ckpt, tmp_path, capsys):
    cases = [([str(mae_ckpt), str(tmp_path / "x.bin")], "cannot tell the format from 'x.bin'"),
             ([str(mae_ckpt), str(tmp_path / "x.onnx"), "--head"], "weights have none"),
             ([str(tmp_path / "missing.ckpt"), str(tmp_path / "x.onnx")], "missing.ckpt: no such file"),
             ([str(mae_ckpt), str(tmp_path / "x.pt2"), "--img-size", "18"], "multiple of the patch size 4")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err, err
        assert err.startswith("lit-mae export-encoder: error:") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_without_the_extra_onnx_export_names_it(mae_ckpt, tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] in ("onnx", "onnxscript"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(mae_ckpt), str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert 'pip install "lit-mae[export]"' in err and "onnx" in err
    cli.main([str(mae_ckpt), str(tmp_path / "x.pt2")])  # .pt2 needs no extra
    assert (tmp_path / "x.pt2").is_file()
