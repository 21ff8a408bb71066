"""Output folders that appear complete or not at all, and are only ever replaced when scpeft-hf wrote them.

Everything is written into a hidden staging folder beside the target, which is renamed into place only when
every step succeeded. `publish` leaves a marker file (`.scpeft-hf.json`: the command and the version) in the
folder; `--overwrite` replaces a folder only when it carries that marker, so it never deletes a user's files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import InvalidInputError, OutputExistsError

MARKER = ".scpeft-hf.json"
# the artifacts every task folder holds, read back by loading and by `push`
RUN_INFO = "run_info.json"
METRICS = "metrics.json"


def is_marked(folder: Path) -> bool:
    """True when `folder` was written by scpeft-hf (it holds the marker file)."""
    return (Path(folder) / MARKER).is_file()


def check_out_dir(out_dir: Path, overwrite: bool, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse an `out_dir` that cannot be written safely; called before any long work starts.

    A non-empty folder needs `overwrite`, and even then only a folder scpeft-hf wrote (with the marker) is
    replaced. An `out_dir` that is, or contains, the folder holding one of `inputs` is always refused.
    """
    out_dir = Path(out_dir)
    target = out_dir.resolve()
    for source in inputs:
        holder = Path(source).resolve().parent
        if target == holder or target in holder.parents:
            raise InvalidInputError(
                f"--out {out_dir} contains the input {source}; writing there could replace it: choose an output "
                "folder outside the input's folder"
            )
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"--out {out_dir} is a file, not a folder; choose a new output folder")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise OutputExistsError(
            f"--out {out_dir} exists and is not empty; choose another output folder or pass --overwrite "
            "(overwrite=True) to replace a folder scpeft-hf wrote"
        )
    if not is_marked(out_dir):
        raise OutputExistsError(
            f"--out {out_dir} is not a folder written by scpeft-hf (it has no {MARKER}), so --overwrite will not "
            "replace it; choose a new or empty output folder"
        )


def make_staging_dir(out_dir: Path) -> Path:
    """A new hidden folder beside `out_dir` (same file system, so `publish` is a rename)."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))


def partial_dir(out_dir: Path) -> Path:
    """The fixed hidden folder beside `out_dir` where a training run keeps its checkpoints until it succeeds, so
    that a killed or interrupted run can be resumed (`.<out>.partial`)."""
    out_dir = Path(out_dir).resolve()
    return out_dir.parent / f".{out_dir.name}.partial"


def make_partial_dir(out_dir: Path, resume: bool) -> Path:
    """`partial_dir(out_dir)`, created; kept as it is when `resume`, else emptied of an earlier run's files."""
    folder = partial_dir(out_dir)
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def publish(staging: Path, out_dir: Path, command: str = "scpeft-hf") -> None:
    """Write the marker into the finished `staging` folder and move it to `out_dir`.

    An existing `out_dir` is replaced only when it is empty or carries the marker; it is moved aside first and
    deleted only once the new folder is in place, so a failure leaves the old folder where it was.
    """
    from . import __version__

    staging, out_dir = Path(staging), Path(out_dir).resolve()
    (staging / MARKER).write_text(json.dumps({"command": command, "version": __version__}, indent=2) + "\n")
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    if any(out_dir.iterdir()) and not is_marked(out_dir):
        raise OutputExistsError(
            f"{out_dir} is not a folder written by scpeft-hf (it has no {MARKER}); it was left untouched"
        )
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
    out_dir.rename(retired / out_dir.name)
    try:
        staging.rename(out_dir)
    except BaseException:
        (retired / out_dir.name).rename(out_dir)
        raise
    finally:
        if out_dir.exists():
            shutil.rmtree(retired, ignore_errors=True)
