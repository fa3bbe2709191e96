"""`lit-mae --help` names every subcommand with a line that says what it does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lit_mae.cli import LIGHTNING_SUBCOMMANDS, OWN_SUBCOMMANDS


@pytest.mark.parametrize("entry", [["-m", "lit_mae"]])
def test_help_lists_every_subcommand_with_its_line(entry: list[str]) -> None:
    done = subprocess.run([sys.executable, *entry, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m lit_mae ")
    text = "".join(done.stdout.split())  # argparse wraps lines (at spaces and after hyphens)
    for name, line in [*LIGHTNING_SUBCOMMANDS.items(), *((n, s.help) for n, s in OWN_SUBCOMMANDS.items())]:
        assert name + "".join(line.split()) in text, name


@pytest.mark.parametrize("name", sorted(OWN_SUBCOMMANDS))
def test_own_subcommands_answer_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from lit_mae.cli import main

    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    assert stop.value.code == 0
    assert f"lit-mae {name}" in capsys.readouterr().out
