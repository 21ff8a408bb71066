"""Output folders: written whole or not at all, and `--overwrite` replaces only a folder scpeft-hf wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import scpeft_hf
from scpeft_hf.cli import main as cli_main
from scpeft_hf.demo import run_demo
from scpeft_hf.errors import InvalidInputError, OutputExistsError
from scpeft_hf.output_folders import MARKER, check_out_dir, make_staging_dir, publish


def user_folder(path: Path) -> Path:
    """A folder of the user's own files (no marker)."""
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "keep.txt").write_text("mine")
    (path / "data.csv").write_text("a,b\n1,2\n")
    return path


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def finished_staging(out: Path, content: str) -> Path:
    staging = make_staging_dir(out)
    (staging / "result.txt").write_text(content)
    return staging


def test_publish_writes_the_marker_with_command_and_version(tmp_path):
    out = tmp_path / "out"
    publish(finished_staging(out, "new"), out, command="train")
    assert json.loads((out / MARKER).read_text()) == {"command": "train", "version": scpeft_hf.__version__}
    assert (out / "result.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or retired folder left


def test_overwrite_replaces_a_marked_folder(tmp_path):
    out = tmp_path / "out"
    publish(finished_staging(out, "old"), out)
    (out / "stale.txt").write_text("from the first run")
    check_out_dir(out, overwrite=True)
    publish(finished_staging(out, "new"), out, command="convert")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "result.txt"]
    assert (out / "result.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_refuses_a_folder_without_the_marker(tmp_path):
    out = user_folder(tmp_path / "home")
    before = listing(out)
    with pytest.raises(OutputExistsError, match=rf"not a folder written by scpeft-hf.*{MARKER}"):
        check_out_dir(out, overwrite=True)
    staging = finished_staging(out, "new")
    with pytest.raises(OutputExistsError, match="left untouched"):
        publish(staging, out)  # even if a caller skipped the check, publish deletes nothing unmarked
    assert listing(out) == before


def test_non_empty_folder_needs_overwrite_and_empty_folder_does_not(tmp_path):
    out = tmp_path / "out"
    publish(finished_staging(out, "old"), out)
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        check_out_dir(out, overwrite=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_out_dir(empty, overwrite=False)
    publish(finished_staging(empty, "new"), empty)
    assert (empty / "result.txt").read_text() == "new"


@pytest.mark.parametrize("where", ["same", "parent"])
def test_out_holding_the_input_is_refused_even_when_marked(tmp_path, where):
    out = tmp_path / "out"
    publish(finished_staging(out, "old"), out)
    data = out / "cells.h5ad" if where == "same" else out / "inputs" / "cells.h5ad"
    data.parent.mkdir(exist_ok=True)
    data.write_text("not really h5ad")
    with pytest.raises(InvalidInputError, match="contains the input"):
        check_out_dir(out, overwrite=True, inputs=[data])


def test_train_overwrite_on_a_user_folder_deletes_nothing_and_starts_no_work(tmp_path, capsys):
    home = user_folder(tmp_path / "home")
    before = listing(home)
    argv = [
        "train",
        "--data",
        str(tmp_path / "absent.h5ad"),
        "--label-key",
        "x",
        "--out",
        str(home),
        "--overwrite",
    ]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out {home} is not a folder written by scpeft-hf" in err  # refused before --data is even read
    assert listing(home) == before


def test_train_out_equal_to_the_data_folder_is_refused(tmp_path, capsys):
    data = tmp_path / "cells.h5ad"
    data.write_text("placeholder")
    argv = ["train", "--data", str(data), "--label-key", "x", "--out", str(tmp_path), "--overwrite"]
    assert cli_main(argv) == 2
    assert "contains the input" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad"]


def test_demo_refuses_a_user_folder_before_training(tmp_path):
    home = user_folder(tmp_path / "home")
    (home / "encoder").mkdir()
    (home / "encoder" / "thesis.tex").write_text("years of work")
    before = listing(home)
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError):
            run_demo(home, epochs=1, overwrite=overwrite)
    assert listing(home) == before


@pytest.mark.parametrize("command", ["predict", "embed"])
def test_predict_and_embed_refuse_an_existing_out_file(tmp_path, capsys, command):
    out = tmp_path / "result.h5ad"
    out.write_text("an earlier result")
    argv = [command, "--data", str(tmp_path / "cells.h5ad"), "--out", str(out)]
    argv += ["--adapter", str(tmp_path / "adapter")] if command == "predict" else []
    assert cli_main(argv) == 2
    assert f"--out {out} exists" in capsys.readouterr().err
    assert out.read_text() == "an earlier result"
