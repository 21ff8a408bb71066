"""File-to-file inference on .h5ad files streamed from disk (`tasks/large_files.py`, `predict/embed --backed`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from scpeft_hf.cli import main as cli_main
from scpeft_hf.data.streaming import h5ad_memory_size
from scpeft_hf.demo import DEMO_LABEL_KEY, demo_data
from scpeft_hf.errors import InvalidInputError, MissingKeyError
from scpeft_hf.tasks import large_files
from scpeft_hf.tasks.annotation import Annotator
from scpeft_hf.tasks.backbones import DEMO_BACKBONE, DEMO_BACKBONE_NAME, load_classifier, load_processor
from scpeft_hf.tasks.large_files import predict_file, stream_cell_results, too_large_for_memory
from scpeft_hf.tasks.outputs import CellResults


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    """The 700 PBMC68k cells (raw counts, CSR) with their labels."""
    return demo_data()


@pytest.fixture(scope="module")
def annotator(cells) -> Annotator:
    """An annotation model with a seeded, untrained head whose last layer is widened so that predictions vary
    from cell to cell (the default init predicts one class everywhere), cheaply."""
    processor = load_processor(DEMO_BACKBONE, max_length=128)
    labels = sorted(cells.obs[DEMO_LABEL_KEY].astype(str).unique())
    torch.manual_seed(0)
    model = load_classifier(
        DEMO_BACKBONE, processor, num_labels=len(labels), id2label=dict(enumerate(labels))
    )
    with torch.no_grad():
        model.classifier.out_layer.weight.normal_(0, 1)
        model.classifier.out_layer.bias.zero_()
    run_info = {"label_names": labels, "method": "full", "base_model": DEMO_BACKBONE_NAME}
    return Annotator(model=model.eval(), processor=processor, run_info=run_info)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stored_arrays(path: Path, key: str) -> dict[str, np.ndarray]:
    """The raw HDF5 arrays (and attributes) of element `key`, exactly as stored."""
    with h5py.File(path, "r") as file:
        element = file[key]
        if isinstance(element, h5py.Dataset):
            return {"": element[()], "attrs": dict(element.attrs)}
        arrays = {name: element[name][()] for name in element}
        return {**arrays, "attrs": {k: np.asarray(v).tolist() for k, v in element.attrs.items()}}


@pytest.mark.parametrize("layout", ["csr", "dense"])
def test_streamed_predict_equals_in_memory_predict(cells, annotator, tmp_path, layout):
    adata = cells.copy()
    if layout == "dense":
        adata.X = adata.X.toarray()
    src, dst = tmp_path / "cells.h5ad", tmp_path / "out" / "predicted.h5ad"
    adata.write_h5ad(src)
    before = sha256(src)

    result = predict_file(annotator, src, dst, chunk_size=256, batch_size=48)  # 256 + 256 + 188 cells
    in_memory = annotator.predict(ad.read_h5ad(src), batch_size=64, copy=True)
    streamed = ad.read_h5ad(dst)

    assert sha256(src) == before
    assert result.n_obs == streamed.n_obs == 700
    pred = streamed.obs["scpeft_pred"]
    assert list(pred.cat.categories) == annotator.label_names and pred.nunique() >= 2
    assert (pred.astype(str) == in_memory.obs["scpeft_pred"].astype(str)).all()
    np.testing.assert_allclose(
        streamed.obs["scpeft_confidence"], in_memory.obs["scpeft_confidence"], atol=1e-6
    )
    np.testing.assert_allclose(streamed.obsm["X_scpeft"], in_memory.obsm["X_scpeft"], atol=1e-5)
    probabilities = streamed.obsm["scpeft_probabilities"]
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(1), pred.cat.codes)
    np.testing.assert_array_equal(probabilities.max(1), streamed.obs["scpeft_confidence"])
    assert streamed.uns["scpeft"]["labels"].tolist() == annotator.label_names
    # one record for both paths: the same task, base and adapter; the streamed one says it streamed
    for key in ("task", "method", "adapter"):
        assert streamed.uns["scpeft"].get(key) == in_memory.uns["scpeft"].get(key)
    assert streamed.uns["scpeft"].get("base") == in_memory.uns["scpeft"].get("base")
    assert (
        streamed.uns["scpeft"]["settings"]["backed"] and "backed" not in in_memory.uns["scpeft"]["settings"]
    )
    # the input's content is all there, X stored byte for byte as in the input
    pd.testing.assert_frame_equal(streamed.obs[list(adata.obs)], ad.read_h5ad(src).obs)
    x_in, x_out = stored_arrays(src, "X"), stored_arrays(dst, "X")
    assert x_in.keys() == x_out.keys()
    for name in x_in:
        if name == "attrs":
            assert x_in[name] == x_out[name]
        else:
            assert x_in[name].dtype == x_out[name].dtype and x_in[name].tobytes() == x_out[name].tobytes()
    # obsm is encoded as anndata encodes an in-memory array
    in_memory.write_h5ad(tmp_path / "in_memory.h5ad")
    assert (
        stored_arrays(dst, "obsm/X_scpeft")["attrs"]
        == stored_arrays(tmp_path / "in_memory.h5ad", "obsm/X_scpeft")["attrs"]
    )


def test_embed_backed_cli_equals_embed_in_memory(cells, tmp_path, capsys):
    src = tmp_path / "cells.h5ad"
    cells[:300].copy().write_h5ad(src)
    in_memory, streamed = tmp_path / "in_memory.h5ad", tmp_path / "streamed.h5ad"

    assert cli_main(["embed", "--data", str(src), "--out", str(in_memory)]) == 0
    code = cli_main(["embed", "--backed", "--chunk-size", "128", "--data", str(src), "--out", str(streamed)])

    assert code == 0 and "streamed" in capsys.readouterr().out
    expected, got = ad.read_h5ad(in_memory), ad.read_h5ad(streamed)
    assert got.obsm["X_scpeft"].shape == (300, 128)
    np.testing.assert_allclose(got.obsm["X_scpeft"], expected.obsm["X_scpeft"], atol=1e-5)
    assert got.uns["scpeft"]["task"] == "embed" and "versions" in got.uns["scpeft"]
    assert list(got.obsm) == ["X_scpeft"] and list(got.obs) == list(cells.obs)


def counts_slice(chunk: ad.AnnData) -> CellResults:
    """Exact arithmetic of each chunk's own rows: the first 3 genes as the embedding, softmax of them as labels."""
    values = chunk.X[:, :3].toarray()
    probabilities = np.exp(values - values.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    return CellResults("rows", values, probabilities, ["g0", "g1", "g2"], {"task": "test"})


@pytest.fixture
def layered(cells, tmp_path) -> tuple[Path, ad.AnnData]:
    """50 cells: raw counts in layers['counts'], log1p values in X."""
    adata = cells[:50].copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.log1p()
    path = tmp_path / "layered.h5ad"
    adata.write_h5ad(path)
    return path, adata


def test_chunks_come_in_order_from_the_named_layer(layered, tmp_path):
    src, adata = layered
    dst = tmp_path / "rows.h5ad"

    seen = []
    stream_cell_results(
        src, dst, counts_slice, chunk_size=7, layer="counts", progress=lambda *p: seen.append(p)
    )

    out = ad.read_h5ad(dst)
    expected = adata.layers["counts"][:, :3].toarray()
    np.testing.assert_array_equal(out.obsm["X_rows"], expected)
    np.testing.assert_array_equal(out.obs["rows_pred"].cat.codes, expected.argmax(1))
    assert seen == [(min(stop, 50), 50) for stop in range(7, 57, 7)]
    # X and the layer come through untouched
    np.testing.assert_array_equal(out.X.toarray(), adata.X.toarray())
    np.testing.assert_array_equal(out.layers["counts"].toarray(), adata.layers["counts"].toarray())


def test_rerun_on_its_own_output_replaces_the_elements(layered, tmp_path):
    src, adata = layered
    first, second = tmp_path / "first.h5ad", tmp_path / "second.h5ad"
    stream_cell_results(src, first, counts_slice, chunk_size=20, layer="counts")

    stream_cell_results(first, second, counts_slice, chunk_size=16)  # X (log1p) this time

    out = ad.read_h5ad(second)
    np.testing.assert_allclose(out.obsm["X_rows"], adata.X[:, :3].toarray())
    assert sorted(out.obsm) == ["X_rows", "rows_probabilities"] and out.uns["rows"]["task"] == "test"


def test_a_failed_run_leaves_no_output_and_keeps_the_old_one(layered, tmp_path):
    src, _ = layered
    dst = tmp_path / "out.h5ad"
    dst.write_bytes(b"an earlier result")
    before = sha256(src)
    calls = []

    def fails_on_second_chunk(chunk):
        calls.append(chunk.n_obs)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return counts_slice(chunk)

    with pytest.raises(RuntimeError, match="out of memory"):
        stream_cell_results(src, dst, fails_on_second_chunk, chunk_size=20)

    assert dst.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layered.h5ad", "out.h5ad"]
    assert sha256(src) == before


def test_unreadable_inputs_are_refused_in_one_line(layered, cells, tmp_path):
    src, _ = layered
    with pytest.raises(MissingKeyError, match="no layer 'spliced'.*layers are \\['counts'\\]"):
        stream_cell_results(src, tmp_path / "a.h5ad", counts_slice, layer="spliced")
    csc = cells[:20].copy()
    csc.X = sp.csc_matrix(csc.X)
    csc.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(InvalidInputError, match="CSC.*tocsr"):
        stream_cell_results(tmp_path / "csc.h5ad", tmp_path / "b.h5ad", counts_slice)
    (tmp_path / "text.h5ad").write_text("not hdf5")
    with pytest.raises(InvalidInputError, match="cannot be read as .h5ad"):
        stream_cell_results(tmp_path / "text.h5ad", tmp_path / "c.h5ad", counts_slice)
    assert not any(tmp_path.glob("[abc].h5ad")) and not any(tmp_path.glob(".*partial"))


def test_streaming_refuses_use_raw_in_one_line(layered, tmp_path, capsys):
    src, _ = layered
    out = tmp_path / "out.h5ad"
    assert cli_main(["embed", "--backed", "--use-raw", "--data", str(src), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--use-raw" in error[0] and "--layer NAME" in error[0]
    assert not out.exists() and not any(tmp_path.glob(".*partial"))


def test_files_larger_than_half_the_available_memory_stream(layered, monkeypatch):
    src, adata = layered
    size = h5ad_memory_size(src)
    x, counts = adata.X, adata.layers["counts"]
    arrays = sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in (x, counts))
    assert arrays <= size < arrays + 100_000  # plus obs and var

    monkeypatch.setattr(large_files, "available_memory", lambda: 2 * size + 2)
    assert not too_large_for_memory(src)
    monkeypatch.setattr(large_files, "available_memory", lambda: 2 * size - 2)
    assert too_large_for_memory(src)


def test_predict_backed_cli_equals_predict_and_scores_the_same(cells, annotator, tmp_path, capsys):
    folder = (
        tmp_path / "full-model"
    )  # a `train --method full` folder: the whole model, its processor, run_info
    annotator.model.save_pretrained(folder)
    annotator.processor.save_pretrained(folder)
    (folder / "run_info.json").write_text(json.dumps(annotator.run_info))
    src = tmp_path / "cells.h5ad"
    cells.write_h5ad(src)
    common = ["--adapter", str(folder), "--data", str(src), "--label-key", DEMO_LABEL_KEY]

    assert cli_main(["predict", *common, "--out", str(tmp_path / "memory" / "out.h5ad")]) == 0
    missing = cli_main(
        ["predict", "--backed", *common[:-1], "nope", "--out", str(tmp_path / "x" / "out.h5ad")]
    )
    code = cli_main(
        ["predict", "--backed", "--chunk-size", "300", *common, "--out", str(tmp_path / "disk" / "out.h5ad")]
    )

    assert missing == 2 and "--label-key nope is not an obs column" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert code == 0
    expected, got = (ad.read_h5ad(tmp_path / name / "out.h5ad") for name in ("memory", "disk"))
    assert (got.obs["scpeft_pred"].astype(str) == expected.obs["scpeft_pred"].astype(str)).all()
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("memory", "disk")]
    assert (
        metrics[0]["accuracy"] == metrics[1]["accuracy"] and metrics[0]["macro_f1"] == metrics[1]["macro_f1"]
    )


def test_run_model_keeps_only_the_embeddings_not_the_hidden_states(cells, monkeypatch):
    from scpeft_hf.tasks.backbones import make_collator
    from scpeft_hf.tasks.inference import run_model
    from scpeft_hf.tasks.trained import load_embedding_model

    model, _ = load_embedding_model(base=DEMO_BACKBONE)
    processor = load_processor(DEMO_BACKBONE, max_length=64)
    kept, cat = [], torch.cat

    def spy(tensors, *args, **kwargs):
        kept.extend(tensors)
        return cat(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "cat", spy)
    result = run_model(model, processor(cells[:40]), make_collator(processor, train=False), batch_size=16)

    assert result.cell_embeddings.shape == (40, 128) and len(kept) == 3
    # each batch's embeddings own their memory: [16, 128] floats, not the [16, 64, 128] hidden states
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in kept)
