"""Bad input through the real `scpeft-hf` command line: every case exits non-zero with one line that names the
input and the fix, prints no traceback, and leaves no output folder, file or staging folder behind.

Inputs are scanpy's bundled PBMCs (tiny subsets); the train cases fail before training starts.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from anndata import AnnData

from scpeft_hf.cli import main as cli_main
from scpeft_hf.datasets import pbmc68k_reduced
from scpeft_hf.tasks.backbones import DEMO_BACKBONE

LABEL_KEY = "bulk_labels"
CLASSES = ["CD14+ Monocyte", "CD19+ B", "CD4+/CD25 T Reg"]


@functools.cache
def _cells() -> AnnData:
    """20 cells of each of three cell types, raw counts."""
    adata = pbmc68k_reduced()
    keep = np.concatenate([np.flatnonzero(adata.obs[LABEL_KEY] == name)[:20] for name in CLASSES])
    adata = adata[keep].copy()
    adata.obs[LABEL_KEY] = adata.obs[LABEL_KEY].astype(str)
    return adata


def cells() -> AnnData:
    return _cells().copy()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A real (1-epoch) encoder adapter trained on the cells with the embedded backbone."""
    folder = tmp_path_factory.mktemp("adapter")
    cells().write_h5ad(folder / "cells.h5ad")
    argv = ["train", "--data", str(folder / "cells.h5ad"), "--label-key", LABEL_KEY, "--out", str(folder / "a"),
            "--epochs", "1", "--max-length", "64"]  # fmt: skip
    assert cli_main(argv) == 0
    return folder / "a"


# -------------------------------------------------------------------------------------- input builders
# Each builder writes its inputs under `work` and returns (argv, words the error line must contain).


def _write(adata: AnnData, path: Path) -> str:
    adata.write_h5ad(path)
    return str(path)


def _train(data: str, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", data, "--label-key", LABEL_KEY, "--out", str(out), "--epochs", "1", *extra]


def nan_counts(work: Path, _adapter: Path):
    adata = cells()
    adata.X.data[:5] = np.nan
    return _train(_write(adata, work / "nan.h5ad"), work / "out"), ["NaN", "fill or drop"]


def negative_counts(work: Path, _adapter: Path):
    adata = cells()
    adata.X.data[:5] = -1.0
    return _train(_write(adata, work / "neg.h5ad"), work / "out"), ["negative values", "raw counts"]


def log_data_as_counts(work: Path, _adapter: Path):
    adata = cells()
    adata.X.data = np.log1p(adata.X.data / 3)
    argv = _train(_write(adata, work / "log.h5ad"), work / "out", "--input", "counts")
    return argv, ["non-integer", "--input log1p"]


def no_gene_overlap(work: Path, _adapter: Path):
    adata = cells()
    adata.var_names = [f"NOT_A_GENE_{i}" for i in range(adata.n_vars)]
    return _train(_write(adata, work / "genes.h5ad"), work / "out"), ["0 of its", "genes", "gene_column"]


def missing_label_column(work: Path, _adapter: Path):
    argv = _train(_write(cells(), work / "cells.h5ad"), work / "out")
    argv[argv.index(LABEL_KEY)] = "cell_type"
    return argv, ["'cell_type'", "available columns", LABEL_KEY]


def single_class(work: Path, _adapter: Path):
    adata = cells()
    adata = adata[adata.obs[LABEL_KEY] == CLASSES[0]].copy()
    return _train(_write(adata, work / "one.h5ad"), work / "out"), ["single class", "at least two"]


def split_without_test_cells(work: Path, _adapter: Path):
    adata = cells()
    adata.obs["split"] = np.where(np.arange(adata.n_obs) % 5 == 0, "validation", "train")
    argv = _train(_write(adata, work / "split.h5ad"), work / "out", "--split-key", "split")
    return argv, ["'split'", "no 'test' cells", "mark some cells 'test'"]


def classes_without_training_cells(*extra: str) -> Callable:
    def build(work: Path, _adapter: Path):
        adata = cells()
        labels = adata.obs[LABEL_KEY].to_numpy()
        split = np.where(np.arange(adata.n_obs) % 4 == 0, "test", "train")
        split[labels == CLASSES[1]] = "test"  # B cells only in the test split
        adata.obs["split"] = split
        argv = _train(_write(adata, work / "split.h5ad"), work / "out", "--split-key", "split", *extra)
        return argv, [f"['{CLASSES[1]}'] have no training cells", "move some of them to 'train'"]

    return build


def adapter_on_another_base(work: Path, adapter: Path):
    from safetensors.torch import load_file, save_file

    base = shutil.copytree(DEMO_BACKBONE, work / "other-base")
    weights = load_file(base / "model.safetensors")
    name = "scgpt.encoder.layer.0.attention.self.query.weight"
    weights[name] = weights[name] + 0.01
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    data = _write(cells(), work / "cells.h5ad")
    argv = [
        "predict",
        "--adapter",
        str(adapter),
        "--data",
        data,
        "--out",
        str(work / "out.h5ad"),
        "--base",
        str(base),
    ]
    return argv, ["fingerprint", "Pass --base with the model the adapter was trained on"]


def truncated_adapter_weights(work: Path, adapter: Path):
    broken = shutil.copytree(adapter, work / "broken-adapter")
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    data = _write(cells(), work / "cells.h5ad")
    argv = ["predict", "--adapter", str(broken), "--data", data, "--out", str(work / "out.h5ad")]
    return argv, ["adapter_model.safetensors", "damaged or incomplete", "download the adapter folder again"]


def truncated_h5ad(work: Path, _adapter: Path):
    path = work / "cells.h5ad"
    _write(cells(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return _train(str(path), work / "out"), [str(path), "cannot be read as .h5ad", "write it again"]


def vocab_not_matching_the_model(work: Path, _adapter: Path):
    base = shutil.copytree(DEMO_BACKBONE, work / "base")
    vocab = json.loads((base / "vocab.json").read_text())
    vocab["EXTRA_GENE"] = len(vocab)
    (base / "vocab.json").write_text(json.dumps(vocab))
    argv = _train(_write(cells(), work / "cells.h5ad"), work / "out", "--base", str(base))
    return argv, ["vocabulary does not match the model", str(base), "vocab.json saved with this model"]


def zero_cells_train(work: Path, _adapter: Path):
    return _train(_write(cells()[:0].copy(), work / "empty.h5ad"), work / "out"), [
        "0 cells",
        "at least one cell",
    ]


def zero_cells_predict(work: Path, adapter: Path):
    data = _write(cells()[:0].copy(), work / "empty.h5ad")
    argv = ["predict", "--adapter", str(adapter), "--data", data, "--out", str(work / "out.h5ad")]
    return argv, ["0 cells", "at least one cell"]


CASES = {
    "nan_counts": nan_counts,
    "negative_counts": negative_counts,
    "log_data_as_counts": log_data_as_counts,
    "no_gene_overlap": no_gene_overlap,
    "missing_label_column": missing_label_column,
    "single_class": single_class,
    "split_without_test_cells": split_without_test_cells,
    "class_without_training_cells": classes_without_training_cells(),
    "class_without_training_cells_no_weights": classes_without_training_cells("--no-class-weights"),
    "adapter_on_another_base": adapter_on_another_base,
    "truncated_adapter_weights": truncated_adapter_weights,
    "truncated_h5ad": truncated_h5ad,
    "vocab_not_matching_the_model": vocab_not_matching_the_model,
    "zero_cells_train": zero_cells_train,
    "zero_cells_predict": zero_cells_predict,
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_with_one_line_and_leaves_nothing(case, tmp_path, adapter, capsys):
    work = tmp_path / "work"
    work.mkdir()
    argv, expected = CASES[case](work, adapter)
    inputs_before = sorted(p.name for p in work.iterdir())
    capsys.readouterr()

    code = cli_main(argv)

    err = capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.splitlines() if "error" in line.lower()]  # progress bars may precede it
    assert len(lines) == 1, err
    assert lines[0].startswith(f"scpeft-hf {argv[0]}: error: ")
    assert "Traceback" not in err
    for words in expected:
        assert words in lines[0], f"{words!r} not in {lines[0]!r}"
    # nothing written: no output, no hidden staging folder or partial file beside it
    assert sorted(p.name for p in work.iterdir()) == inputs_before
