"""The installed layout: `datamodules/` and `callbacks/` live inside the `lit_mae` namespace only.

Runs in a fresh interpreter outside the repository, so the repository root is not on sys.path and
only what the installation provides can be imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PROBE = r"""
import importlib, json, sys

report = {"path": sys.path}
import lit_mae
report["lazy_before"] = sorted(m for m in ("lit_mae.systems.pretraining", "lightning") if m in sys.modules)
LitMAE = lit_mae.LitMAE
report["lit_mae_class"] = f"{LitMAE.__module__}.{LitMAE.__qualname__}"
report["same_class"] = LitMAE is importlib.import_module("lit_mae.systems.pretraining").LitMAE
try:
    lit_mae.NoSuchThing
except AttributeError as error:
    report["missing"] = str(error)

import lit_mae.datamodules, lit_mae.callbacks
report["datamodules_file"] = lit_mae.datamodules.__file__
report["callbacks_file"] = lit_mae.callbacks.__file__
report["digits"] = lit_mae.datamodules.DigitsDataModule.__module__

for bare in ("datamodules", "callbacks"):
    try:
        importlib.import_module(bare)
        report[bare] = "imported"
    except ModuleNotFoundError as error:
        report[bare] = f"ModuleNotFoundError: {error.name}"
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path_factory.mktemp("outside"), env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_installed_namespace_and_no_bare_top_level_names(report):
    assert str(REPO_ROOT) not in report["path"]  # the test is meaningful only outside the repo

    # lit_mae.datamodules / lit_mae.callbacks come from the repository's top-level folders
    assert Path(report["datamodules_file"]) == REPO_ROOT / "datamodules" / "__init__.py"
    assert Path(report["callbacks_file"]) == REPO_ROOT / "callbacks" / "__init__.py"
    assert report["digits"] == "lit_mae.datamodules.digits"
    # ... and never as generic top-level modules on a user's path
    assert report["datamodules"] == "ModuleNotFoundError: datamodules"
    assert report["callbacks"] == "ModuleNotFoundError: callbacks"


def test_litmae_resolves_lazily(report):
    assert report["lazy_before"] == []  # `import lit_mae` pulls in neither Lightning nor LitMAE
    assert report["lit_mae_class"] == "lit_mae.systems.pretraining.LitMAE"
    assert report["same_class"] is True
    assert "NoSuchThing" in report["missing"]
