"""Execute the notebooks in notebooks/ and write their outputs back, so that they are committed executed.

    .venv/bin/python scripts/execute_notebooks.py [NAME ...]     # default: every notebook

Each notebook runs in a fresh temporary folder (what it writes there is discarded); CI runs them again with
tests/test_notebooks.py.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.notebook_runner import run_notebook  # noqa: E402


def main(names: list[str]) -> int:
    paths = [ROOT / "notebooks" / f"{name}.ipynb" for name in names] or sorted(
        (ROOT / "notebooks").glob("*.ipynb")
    )
    for path in paths:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as workdir:
            _, notebook = run_notebook(path, Path(workdir))
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
        print(f"{path.name}: {time.perf_counter() - started:.0f} s, {path.stat().st_size / 1024:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
