"""The console script: every command has --help; `python -m movielens_sids` works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from movielens_sids.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"movielens-sids {command}" in out and "--run-dir" in out


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "movielens_sids", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("movielens-sids ")
