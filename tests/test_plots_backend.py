"""Figures never touch matplotlib's global state: importing task modules keeps the backend, plotting opens no
pyplot figure."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np


def test_importing_task_modules_keeps_the_matplotlib_backend():
    code = (
        "import matplotlib\n"
        "import scpeft_hf.tasks.annotation, scpeft_hf.tasks.embedding, scpeft_hf.demo, scpeft_hf.tasks.plots\n"
        "print(matplotlib.get_backend())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=os.environ | {"MPLBACKEND": "svg", "PYTHONWARNINGS": "ignore"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "svg"


def test_plots_are_written_without_pyplot_figures(tmp_path):
    import matplotlib.pyplot as plt

    from scpeft_hf.tasks.plots import plot_confusion_matrix, plot_umap

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    predictions = np.where(rng.random(60) < 0.8, labels, (labels + 1) % 3)
    embeddings = rng.normal(size=(60, 8)) + labels[:, None] * 3.0
    open_before = plt.get_fignums()
    plot_confusion_matrix(labels, predictions, ["a", "b", "c"], tmp_path / "cm.png")
    plot_umap(embeddings, ["a", "b", "c"], labels, predictions, tmp_path / "umap.png")
    assert plt.get_fignums() == open_before
    for name in ("cm.png", "umap.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / name).stat().st_size > 10_000
