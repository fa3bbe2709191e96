"""`lit-mae prepare`: image folders, CIFAR and the digits as LitData shards; the summary, unreadable
files, re-encoding, determinism across worker counts, refusing to overwrite, and life without litdata."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lit_mae.datamodules import CIFAR10DataModule, DigitsDataModule
from lit_mae.datamodules.shards import INFO_FILE

from conftest import write_unreadable
from test_cifar_synthetic import no_md5, write_fake_cifar  # noqa: F401 (a fixture)

litdata = pytest.importorskip("litdata")

CLASSES = ("cat", "dog", "owl")


def write_jpegs(root: Path, per_class: int = 4, size: tuple[int, int] = (40, 30), classes=CLASSES) -> list[Path]:
    """`per_class` seeded noise JPEGs of `size` (W, H) in each class folder; their paths, sorted."""
    rng = np.random.default_rng(0)
    paths = []
    for name in classes:
        for i in range(per_class):
            path = root / name / f"{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
            paths.append(path)
    return paths


def records(folder: Path) -> list[dict]:
    dataset = litdata.StreamingDataset(str(folder))
    return [dataset[i] for i in range(len(dataset))]


def test_an_image_folder_becomes_shards_of_its_original_bytes_and_the_summary_names_unreadable_files(
        tmp_path, lit_mae_main):
    paths = write_jpegs(tmp_path / "images")
    write_unreadable(tmp_path / "images/dog/bad.jpg", "truncated")
    code, _, err = lit_mae_main(tmp_path, ["prepare", "shards", "--folder", "images", "--num-workers", "0"])
    assert code == 0, err
    assert "12 images" in err and "3 classes" in err
    assert "1 unreadable file(s) skipped" in err and "dog/bad.jpg: " in err
    found = records(tmp_path / "shards")
    assert [r["name"] for r in found] == [p.relative_to(tmp_path / "images").as_posix() for p in paths]
    assert [r["image"] for r in found] == [p.read_bytes() for p in paths]  # byte for byte
    assert [r["label"] for r in found] == [CLASSES.index(p.parent.name) for p in paths]
    info = json.loads((tmp_path / "shards" / INFO_FILE).read_text())
    assert info["classes"] == list(CLASSES) and info["images"] == 12 and info["encoding"] == "original"
    assert info["bytes"] == sum(p.stat().st_size for p in paths)
    assert len(info["skipped"]) == 1 and info["skipped"][0].startswith("dog/bad.jpg: ")


def test_it_refuses_to_overwrite_without_the_flag_and_never_replaces_other_files(tmp_path, lit_mae_main):
    write_jpegs(tmp_path / "images", per_class=1)
    args = ["prepare", "shards", "--folder", "images", "--num-workers", "0", "--labels", "none", "--quiet"]
    assert lit_mae_main(tmp_path, args)[0] == 0
    before = (tmp_path / "shards/index.json").read_bytes()
    code, _, err = lit_mae_main(tmp_path, args)
    assert code == 2 and "already holds shards" in err and "--overwrite" in err
    write_jpegs(tmp_path / "images", per_class=2)  # one more image per class
    assert lit_mae_main(tmp_path, [*args, "--overwrite"])[0] == 0
    assert (tmp_path / "shards/index.json").read_bytes() != before
    assert [r["label"] for r in records(tmp_path / "shards")] == [-1] * 6
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    code, _, err = lit_mae_main(tmp_path, ["prepare", "mine", "--folder", "images", "--overwrite", "--quiet"])
    assert code == 2 and "not shards (notes.txt)" in err
    assert (tmp_path / "mine/notes.txt").read_text() == "keep me"


def test_workers_write_the_same_shards_as_one_process(tmp_path, lit_mae_main):
    write_jpegs(tmp_path / "images", per_class=6)
    for workers in ("0", "2"):
        args = ["prepare", f"w{workers}", "--folder", "images", "--num-workers", workers, "--quiet"]
        assert lit_mae_main(tmp_path, args)[0] == 0
    for chunk in sorted((tmp_path / "w0").glob("chunk-*.bin")):
        assert chunk.read_bytes() == (tmp_path / "w2" / chunk.name).read_bytes()


def test_max_side_re_encodes_large_images_as_jpegs_never_enlarging(tmp_path, lit_mae_main):
    write_jpegs(tmp_path / "images", per_class=1, size=(120, 80))
    write_jpegs(tmp_path / "images", per_class=1, size=(20, 10), classes=("small",))
    code, _, err = lit_mae_main(tmp_path, ["prepare", "shards", "--folder", "images", "--max-side", "60",
                                           "--quiet", "--num-workers", "0"])
    assert code == 0, err
    sizes = [Image.open(io.BytesIO(r["image"])).size for r in records(tmp_path / "shards")]
    assert sizes == [(60, 40)] * 3 + [(20, 10)]
    assert all(Image.open(io.BytesIO(r["image"])).format == "JPEG" for r in records(tmp_path / "shards"))


def test_the_digits_split_is_digits_data_modules_split(tmp_path, lit_mae_main):
    code, _, err = lit_mae_main(tmp_path, ["prepare", "val", "--digits", "--split", "val", "--image-size", "16",
                                           "--quiet", "--num-workers", "0"])
    assert code == 0, err
    digits = DigitsDataModule(image_size=16, seed=0)
    digits.setup("fit")
    expected = digits.splits["val"]
    found = records(tmp_path / "val")
    assert [r["label"] for r in found] == [int(label) for label in expected.labels]
    first = np.asarray(Image.open(io.BytesIO(found[0]["image"])))  # (16, 16) grey, lossless PNG
    assert np.array_equal(first, expected.sources[0][0].numpy())


def test_cifar_archives_become_shards(tmp_path, lit_mae_main, no_md5):  # noqa: F811
    data = write_fake_cifar(tmp_path / "cifar", CIFAR10DataModule)
    code, _, err = lit_mae_main(tmp_path, ["prepare", "test", "--cifar10", "cifar", "--split", "test", "--quiet",
                                           "--num-workers", "0"])
    assert code == 0, err
    found = records(tmp_path / "test")
    assert [r["label"] for r in found] == data["test_labels"].tolist()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(found[3]["image"]))), data["test"][3].transpose(1, 2, 0))
    assert json.loads((tmp_path / "test" / INFO_FILE).read_text())["classes"] == data["names"]


@pytest.mark.parametrize("args, message", [
    (["--folder", "nowhere"], "folder nowhere does not exist"),
    (["--digits", "--split", "holdout"], "the digits have the splits train, val, test, got 'holdout'"),
    (["--cifar10", "."], "no CIFAR10 archive under"),
    (["--folder", ".", "--max-side", "0"], "--max-side must be at least 1, got 0"),
])
def test_user_mistakes_are_one_named_line(tmp_path, lit_mae_main, args, message):
    code, _, err = lit_mae_main(tmp_path, ["prepare", "out", *args])
    assert code == 2 and message in err and "Traceback" not in err


def test_without_litdata_prepare_and_the_data_module_say_which_extra_to_install(tmp_path, lit_mae_main, monkeypatch):
    from lit_mae.datamodules import StreamingDataModule

    monkeypatch.setitem(sys.modules, "litdata", None)  # `import litdata` raises ImportError
    code, _, err = lit_mae_main(tmp_path, ["prepare", "out", "--digits"])
    assert code == 2 and 'pip install "lit-mae[streaming]"' in err
    with pytest.raises(ImportError, match=r'StreamingDataModule .* pip install "lit-mae\[streaming\]"'):
        StreamingDataModule(input_dir="shards")


def test_lit_mae_imports_without_litdata():
    code = ("import sys; sys.modules['litdata'] = None; import lit_mae, lit_mae.datamodules as d; "
            "import lit_mae.cli.prepare; print(d.StreamingDataModule.__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "StreamingDataModule", done.stderr
