"""Output folders that appear complete or not at all: everything is written into a hidden staging folder beside
the target, which is renamed into place only when every step succeeded."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty `out_dir` unless `overwrite`; called before any long work starts."""
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out_dir} exists and is not empty; choose another output folder or pass --overwrite (overwrite=True)"
        )


def make_staging_dir(out_dir: Path) -> Path:
    """A new hidden folder beside `out_dir` (same file system, so `publish` is a rename)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))


def publish(staging: Path, out_dir: Path) -> None:
    """Replace `out_dir` by the finished `staging` folder."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
