"""`lit-mae embed` (lit_mae/cli/embed.py, on trainer.predict and EmbeddingWriter): one row per image,
the same at any batch size, unreadable files skipped and named without shifting the other rows,
folders, DataModule configs and class paths, classifiers' logits, one ordered file under DDP."""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO_ROOT, tiny_config_values, write_unreadable
from lit_mae import MAEConfig, MaskedAutoencoderViT
from lit_mae.cli import embed
from lit_mae.datamodules import DigitsDataModule
from lit_mae.interop import lightning_checkpoint
from lit_mae.interop.features import load_feature_extractor
from lit_mae.models import ViTClassifier

QUIET = ["--no-progress-bar", "--num-workers", "0"]


@pytest.fixture(scope="module")
def mae_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "mae.ckpt"
    torch.save(lightning_checkpoint(MaskedAutoencoderViT(MAEConfig(**tiny_config_values()))), path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """9 readable images of odd sizes in two class folders, and one unreadable file among them."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(9):
        (root / "ab"[i % 2]).mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(root / "ab"[i % 2] / f"{i}.png")
    write_unreadable(root / "a" / "4_broken.png", "truncated")
    return root


def run(*argv: str) -> None:
    embed.main([*argv, *QUIET])


def rows_by_path(path: Path) -> dict[str, np.ndarray]:
    rows = np.load(path)
    return {str(p): e for p, e in zip(rows["path"], rows["embedding"])}


def test_rows_do_not_depend_on_batch_size_and_skip_the_unreadable_file(mae_ckpt, folder, tmp_path, one_thread):
    with pytest.warns(UserWarning, match="4_broken.png"):
        run("--ckpt", str(mae_ckpt), "--data", str(folder), "--output", str(tmp_path / "one.npy"), "--batch-size", "1")
    run("--ckpt", str(mae_ckpt), "--data", str(folder), "--output", str(tmp_path / "all.npy"), "--batch-size", "32")
    one, whole = np.load(tmp_path / "one.npy"), np.load(tmp_path / "all.npy")
    readable = sorted(str(p) for p in folder.rglob("*.png") if "broken" not in p.name)
    assert sorted(one["path"]) == sorted(whole["path"]) == readable  # the broken file has no row
    assert one.dtype.names == ("index", "path", "embedding") and one["embedding"].shape == (9, 32)
    np.testing.assert_array_equal(one["index"], whole["index"])
    np.testing.assert_allclose(one["embedding"], whole["embedding"], rtol=0, atol=1e-5)

    # the rows of the others are where they would be without the broken file: same path, same features
    clean = tmp_path / "clean"
    for path in readable:
        target = clean / Path(path).relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(path).read_bytes())
    run("--ckpt", str(mae_ckpt), "--data", str(clean), "--output", str(tmp_path / "clean.npy"), "--batch-size", "4")
    without = {str(Path(k).relative_to(clean)): v for k, v in rows_by_path(tmp_path / "clean.npy").items()}
    with_broken = {str(Path(k).relative_to(folder)): v for k, v in rows_by_path(tmp_path / "all.npy").items()}
    assert without.keys() == with_broken.keys()
    for name in without:
        np.testing.assert_allclose(with_broken[name], without[name], rtol=0, atol=1e-5)


def test_pt_output_names_the_skipped_file_and_folder_labels(mae_ckpt, folder, tmp_path, one_thread):
    out = tmp_path / "features.pt"
    with pytest.warns(UserWarning, match="4_broken.png"):
        run("--ckpt", str(mae_ckpt), "--data", str(folder), "--output", str(out), "--labels", "folders",
            "--pool", "avg", "--batch-size", "3")
    written = torch.load(out, weights_only=True)
    assert written["skipped_paths"] == [str(folder / "a" / "4_broken.png")]
    assert len(written["paths"]) == len(written["labels"]) == len(written["embeddings"]) == 9
    assert [Path(p).parent.name for p in written["paths"]] == ["ab"[label] for label in written["labels"].tolist()]
    assert written["skipped_indices"].tolist() == [3]  # a/0, a/2, a/4.png, a/4_broken.png, ...
    assert sorted(written["indices"].tolist() + [3]) == list(range(10))


def test_a_datamodule_class_path_embeds_its_predict_split(mae_ckpt, tmp_path, one_thread):
    out = tmp_path / "digits.npy"
    run("--ckpt", str(mae_ckpt), "--data", "lit_mae.datamodules.DigitsDataModule", "--output", str(out),
        "--batch-size", "50")
    rows = np.load(out)
    digits = DigitsDataModule(image_size=16, channels=3, batch_size=200)
    batch = digits.on_after_batch_transfer(next(iter((digits.setup("predict"), digits.predict_dataloader())[1])), 0)
    extractor = load_feature_extractor(mae_ckpt)
    with torch.no_grad():
        _, expected = extractor(batch.images)
    assert rows.dtype.names == ("index", "label", "embedding")  # no file paths: the digits are arrays
    np.testing.assert_array_equal(rows["label"], batch.labels.numpy())
    np.testing.assert_array_equal(rows["index"], np.arange(len(batch.labels)))
    np.testing.assert_allclose(rows["embedding"], expected.numpy(), rtol=0, atol=1e-5)


def test_a_run_config_and_a_classifier_give_logits(tmp_path, one_thread):
    torch.manual_seed(1)
    config = MAEConfig(**tiny_config_values())
    classifier = ViTClassifier(config, num_classes=10, pool="avg").eval()
    ckpt = tmp_path / "finetuned.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in classifier.state_dict().items()},
                "hyper_parameters": {"config": config.to_dict()},
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {
        "class_path": "lit_mae.datamodules.DigitsDataModule", "init_args": {"image_size": 16, "batch_size": 64}}}))
    out = tmp_path / "rows.npy"
    run("--ckpt", str(ckpt), "--data", str(tmp_path / "config.yaml"), "--output", str(out))
    rows = np.load(out)
    assert rows["logits"].shape == (180, 10)
    with torch.no_grad():
        logits = classifier.classify(torch.from_numpy(rows["embedding"]))
    np.testing.assert_allclose(rows["logits"], logits.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["--data", "{folder}", "--output", "x.npy", "--ckpt", "missing.ckpt"], "missing.ckpt: no such file"),
    (["--data", "nowhere/", "--output", "x.npy"], "nowhere/ is neither a folder nor a config file"),
    (["--data", "lit_mae.datamodules.NoSuchModule", "--output", "x.npy"], "--data:"),
    (["--data", "{folder}", "--output", "x.npy", "--image-size", "18"], "multiple of the patch size 4"),
])
def test_user_mistakes_are_one_line_with_status_2(mae_ckpt, folder, tmp_path, capsys, argv, message):
    argv = [a.replace("{folder}", str(folder)) for a in argv]
    argv = argv if "--ckpt" in argv else ["--ckpt", str(mae_ckpt), *argv]
    with pytest.raises(SystemExit) as exit_info:
        run(*[str(tmp_path / a) if a == "x.npy" else a for a in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err, err
    assert err.startswith("lit-mae embed: error:") and err.count("\n") == 1


def test_parquet_without_pyarrow_says_what_to_install(mae_ckpt, folder, tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.split(".")[0] == "pyarrow":
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(SystemExit) as exit_info:
        run("--ckpt", str(mae_ckpt), "--data", str(folder), "--output", str(tmp_path / "f.parquet"))
    assert exit_info.value.code == 2
    assert "needs pyarrow (pip install pyarrow)" in capsys.readouterr().err
    assert not (tmp_path / "f.parquet").exists()


def test_parquet_rows_when_pyarrow_is_installed(mae_ckpt, folder, tmp_path, one_thread):
    pq = pytest.importorskip("pyarrow.parquet")
    with pytest.warns(UserWarning, match="4_broken.png"):
        run("--ckpt", str(mae_ckpt), "--data", str(folder), "--output", str(tmp_path / "f.parquet"))
    run("--ckpt", str(mae_ckpt), "--data", str(folder), "--output", str(tmp_path / "f.npy"))
    table, rows = pq.read_table(tmp_path / "f.parquet"), np.load(tmp_path / "f.npy")
    assert table.column("path").to_pylist() == rows["path"].tolist()
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), rows["embedding"], atol=0)
    assert table.schema.metadata[b"lit_mae.skipped"].decode().endswith("4_broken.png")


def test_two_ddp_processes_write_one_ordered_file(mae_ckpt, folder, tmp_path):
    env = {**os.environ, "MASTER_PORT": str(_free_port()), "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "lit_mae", "embed", "--ckpt", str(mae_ckpt), "--data", str(folder),
               "--batch-size", "2", "--accelerator", "cpu", "--devices", "2", *QUIET]
    result = subprocess.run([*command, "--output", str(tmp_path / "two.npy")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("wrote ") == 1 and "4_broken.png" in result.stderr  # rank 0 reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.npy"]  # one file, no per-rank files
    run("--ckpt", str(mae_ckpt), "--data", str(folder), "--output", str(tmp_path / "one.npy"))
    two, one = np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy")
    np.testing.assert_array_equal(two["index"], one["index"])  # dataset order, every image once
    np.testing.assert_array_equal(two["path"], one["path"])
    np.testing.assert_allclose(two["embedding"], one["embedding"], rtol=0, atol=1e-5)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_datamodule_at_another_size_is_named(mae_ckpt, tmp_path, capsys):
    (tmp_path / "digits.yaml").write_text(yaml.safe_dump({
        "class_path": "lit_mae.datamodules.DigitsDataModule", "init_args": {"image_size": 32}}))
    with pytest.raises(SystemExit) as exit_info:
        run("--ckpt", str(mae_ckpt), "--data", str(tmp_path / "digits.yaml"), "--output", str(tmp_path / "x.npy"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "gives 32x32 images and the model takes 16x16" in err and "--image-size 32" in err


@pytest.mark.parametrize("bands", [1, 4])  # a 16-bit grey PNG, a 16-bit 4-band TIFF
def test_sixteen_bit_folders_are_embedded_at_full_depth(bands, tmp_path, one_thread):
    import tifffile

    torch.manual_seed(0)
    model = MaskedAutoencoderViT(MAEConfig(**tiny_config_values(in_chans=bands)))
    torch.save(lightning_checkpoint(model), tmp_path / "weights.ckpt")
    values = np.array([1000, 20000, 40000, 65535][:bands], dtype=np.uint16)  # one value a band: resizing keeps it
    tiles = {"a": values, "b": values ^ np.uint16(0x007F)}  # same top 8 bits, other low bits
    (tmp_path / "tiles").mkdir()
    files = {}
    for name, band_values in tiles.items():
        planes = np.broadcast_to(band_values[:, None, None], (bands, 20, 20)).copy()
        if bands == 1:
            files[name] = tmp_path / "tiles" / f"{name}.png"
            Image.fromarray(planes[0]).save(files[name])  # mode I;16
        else:
            files[name] = tmp_path / "tiles" / f"{name}.tif"
            tifffile.imwrite(files[name], planes, photometric="minisblack", planarconfig="separate")
    run("--ckpt", str(tmp_path / "weights.ckpt"), "--data", str(tmp_path / "tiles"), "--output",
        str(tmp_path / "rows.npy"), "--mean", *["0.5"] * bands, "--std", *["0.25"] * bands)
    rows = rows_by_path(tmp_path / "rows.npy")
    extractor = load_feature_extractor(tmp_path / "weights.ckpt")
    for name, band_values in tiles.items():  # the features of the exact 16-bit values (fractions of 65535)
        image = torch.from_numpy(band_values.astype(np.float32) / 65535).view(1, bands, 1, 1).expand(1, bands, 16, 16)
        expected = extractor((image - 0.5) / 0.25)[1][0].detach().numpy()
        np.testing.assert_allclose(rows[str(files[name])], expected, rtol=0, atol=1e-4)
