"""The CLI prints bad input (ScpeftUserError) as one line, and every other exception with its traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import scpeft_hf.tasks.embedding
from scpeft_hf.cli import main as cli_main


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    data = tmp_path / "cells.h5ad"
    data.write_text("")

    def buggy(*args, **kwargs):
        raise KeyError("internal_state")  # a plain KeyError is a bug, not bad input

    monkeypatch.setattr("scpeft_hf.cli.inference.read_h5ad", lambda path: None)
    monkeypatch.setattr(scpeft_hf.tasks.embedding, "embed_cells", buggy)
    with pytest.raises(KeyError, match="internal_state"):
        cli_main(["embed", "--data", str(data), "--out", str(tmp_path / "out.h5ad")])


@pytest.mark.parametrize("position", ["before", "after"])
def test_verbose_is_accepted_after_the_command_and_shows_the_traceback(tmp_path, capsys, position):
    command = ["embed", "--data", str(tmp_path / "absent.h5ad"), "--out", str(tmp_path / "out.h5ad")]
    argv = ["-v", *command] if position == "before" else [*command, "-v"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "MissingFileError" in err
    assert err.strip().splitlines()[-1] == f"scpeft-hf embed: error: --data {tmp_path / 'absent.h5ad'} does not " \
        "exist; pass the path of an .h5ad file"  # fmt: skip


def test_console_command_prints_one_line_for_bad_input(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "scpeft_hf.cli", "embed", "--data", str(tmp_path / "absent.h5ad"), "--out",
         str(tmp_path / "out.h5ad")],
        capture_output=True, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"scpeft-hf embed: error: --data {tmp_path / 'absent.h5ad'} does not exist; pass the path of an .h5ad file"
    ]
