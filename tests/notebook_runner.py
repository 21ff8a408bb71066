"""Run a notebook's code cells in order, in one namespace, and collect what Jupyter would show: printed text, the
value of a cell's last expression (tables as HTML too) and the figures the cell drew.

`tests/test_notebooks.py` runs the notebooks with it in CI, and `scripts/execute_notebooks.py` writes the
collected outputs back into the committed notebooks, so that a reader sees results without running them. It needs no
Jupyter kernel: nbclient and ipykernel are not dependencies of this project.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("MPLBACKEND", "Agg")

FIGURE_DPI = 60  # small PNGs keep the committed notebooks small enough to diff
MAX_TEXT = 4_000
MAX_TABLE_ROWS = 20


def _figure_output(figure) -> dict:
    from PIL import Image

    rendered, buffer = io.BytesIO(), io.BytesIO()
    figure.savefig(rendered, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    # a 64-colour palette PNG is a third of the size of matplotlib's RGBA one, and reads the same
    Image.open(rendered).convert("RGB").quantize(colors=64).save(buffer, format="png", optimize=True)
    return {
        "output_type": "display_data",
        "data": {
            "image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
            "text/plain": [repr(figure)],
        },
        "metadata": {},
    }


def _value_output(value: Any, execution_count: int) -> dict | None:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    if (
        value is None
        or isinstance(value, (Axes, Figure))
        or (isinstance(value, list) and value and all(isinstance(item, Axes) for item in value))
    ):
        return None  # figures are collected separately; axes from scanpy's show=False are not worth a repr
    data = {"text/plain": _lines(repr(value)[:MAX_TEXT])}
    if isinstance(value, (pd.DataFrame, pd.Series)):
        frame = value.to_frame() if isinstance(value, pd.Series) else value
        data["text/html"] = _lines(frame.to_html(max_rows=MAX_TABLE_ROWS, float_format=lambda x: f"{x:.3f}"))
    return {"output_type": "execute_result", "execution_count": execution_count, "data": data, "metadata": {}}


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def run_cell(source: str, namespace: dict, name: str, execution_count: int) -> list[dict]:
    """Execute one code cell; return its outputs in nbformat 4 shape."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    plt.close("all")
    tree = ast.parse(source, filename=name)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(tree, name, "exec"), namespace)
        value = eval(compile(ast.Expression(last.value), name, "eval"), namespace) if last else None
    outputs = []
    if stdout.getvalue():
        outputs.append(
            {"output_type": "stream", "name": "stdout", "text": _lines(stdout.getvalue()[-MAX_TEXT:])}
        )
    figures = [plt.figure(number) for number in plt.get_fignums()]
    if isinstance(value, Figure) and value not in figures:
        figures.append(value)
    outputs.extend(_figure_output(figure) for figure in figures)
    plt.close("all")
    result = _value_output(value, execution_count)
    if result is not None:
        outputs.append(result)
    return outputs


def run_notebook(path: Path, workdir: Path) -> tuple[dict, dict]:
    """Run `path` inside `workdir`; return the namespace and the notebook with fresh outputs."""
    notebook = json.loads(Path(path).read_text())
    namespace: dict = {"__name__": "__main__"}
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        count = 0
        for index, cell in enumerate(notebook["cells"]):
            if cell["cell_type"] != "code":
                continue
            count += 1
            source = "".join(cell["source"])
            cell["outputs"] = run_cell(source, namespace, f"{Path(path).name}[{index}]", count)
            cell["execution_count"] = count
    finally:
        os.chdir(previous)
    return namespace, notebook
