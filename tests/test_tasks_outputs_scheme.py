"""The scverse conventions every inference task follows: `key_added` slots, scanpy's `copy` semantics, the
`uns[key_added]` record, one `--precision`/`--device` resolver for training and inference, and the progress bar.

The annotation model is the embedded backbone with a fresh 3-class head, saved as a `full` folder (no training: the
numbers here are about where results go, not how good they are); cells are real PBMCs (pbmc68k_reduced).
"""

from __future__ import annotations

import io
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scpeft_hf.cli import main as cli_main
from scpeft_hf.datasets import pbmc68k_reduced
from scpeft_hf.errors import InvalidInputError
from scpeft_hf.models.fingerprint import backbone_fingerprint
from scpeft_hf.tasks.annotation import load_annotator
from scpeft_hf.tasks.attention import find_markers
from scpeft_hf.tasks.backbones import (
    DEMO_BACKBONE,
    load_backbone,
    load_classifier,
    load_processor,
    make_collator,
)
from scpeft_hf.tasks.embedding import embed_cells
from scpeft_hf.tasks.inference import progress_bar, run_model
from scpeft_hf.tasks.training_knobs import resolve_device, resolve_precision, trainer_arguments

LABEL_KEY = "bulk_labels"
CELL_TYPES = ["CD14+ Monocyte", "CD19+ B", "CD56+ NK"]


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    adata = pbmc68k_reduced()
    keep = np.concatenate([np.flatnonzero(adata.obs[LABEL_KEY] == name)[:12] for name in CELL_TYPES])
    adata = adata[keep].copy()
    adata.obs[LABEL_KEY] = adata.obs[LABEL_KEY].astype(str)
    return adata


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A `full` annotation folder as `train` writes it: model, processor with labels, run_info.json."""
    folder = tmp_path_factory.mktemp("scheme") / "full"
    processor = load_processor(DEMO_BACKBONE, max_length=64)
    processor.label_names = CELL_TYPES
    torch.manual_seed(0)
    model = load_classifier(
        DEMO_BACKBONE, processor, num_labels=3, id2label=dict(enumerate(CELL_TYPES)),
        label2id={name: i for i, name in enumerate(CELL_TYPES)},
    )  # fmt: skip
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    run_info = {"method": "full", "model_type": model.config.model_type, "base_model": "scgpt-offline-v1",
                "base_model_fingerprint": backbone_fingerprint(model), "label_key": LABEL_KEY,
                "label_names": CELL_TYPES}  # fmt: skip
    (folder / "run_info.json").write_text(json.dumps(run_info))
    return folder


# ------------------------------------------------------------------------------------------- predict


def test_predict_in_place_writes_every_slot_and_returns_none(adapter, cells):
    annotator = load_annotator(adapter)
    adata = cells.copy()
    assert annotator.predict(adata, batch_size=16) is None
    probabilities = adata.obsm["scpeft_probabilities"]
    assert probabilities.shape == (adata.n_obs, 3)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    record = adata.uns["scpeft"]
    assert list(record["labels"]) == CELL_TYPES
    predicted = adata.obs["scpeft_pred"]
    # categories are every label the model knows, in its order, so plots colour labels alike across runs
    assert list(predicted.cat.categories) == CELL_TYPES
    assert (predicted.astype(str).to_numpy() == np.asarray(CELL_TYPES)[probabilities.argmax(1)]).all()
    np.testing.assert_allclose(adata.obs["scpeft_confidence"], probabilities.max(1), rtol=1e-6)
    # the probabilities are the model's softmax, in the order of uns["scpeft"]["labels"]
    dataset = annotator.processor(cells)
    logits = run_model(annotator.model, dataset, make_collator(annotator.processor, False), 16).logits
    np.testing.assert_allclose(probabilities, torch.softmax(torch.from_numpy(logits), -1).numpy(), atol=1e-6)
    assert adata.obsm["X_scpeft"].shape == (adata.n_obs, 128)
    assert record["task"] == "predict" and record["adapter"] == str(adapter) and record["method"] == "full"
    assert record["settings"]["batch_size"] == 16
    assert record["settings"]["precision"] == resolve_precision("auto")
    run_info = json.loads((adapter / "run_info.json").read_text())
    assert record["base"] == {"name": "scgpt-offline-v1", "fingerprint": run_info["base_model_fingerprint"]}
    assert {"scpeft-hf", "torch", "transformers", "peft", "anndata"} <= set(record["versions"])


def test_predict_copy_returns_a_new_anndata_and_leaves_the_input_alone(adapter, cells):
    adata = cells.copy()
    result = load_annotator(adapter).predict(adata, key_added="celltypist_like", copy=True)
    assert isinstance(result, ad.AnnData) and result is not adata
    assert {"celltypist_like_pred", "celltypist_like_confidence"} <= set(result.obs)
    assert {"X_celltypist_like", "celltypist_like_probabilities"} <= set(result.obsm)
    assert "scpeft_pred" not in result.obs and "scpeft" not in result.uns
    assert (
        list(adata.obs) == list(cells.obs)
        and not adata.obsm.keys() - cells.obsm.keys()
        and not adata.uns.keys() - cells.uns.keys()
    )


def test_predict_results_survive_an_h5ad_round_trip(adapter, cells, tmp_path):
    adata = cells.copy()
    load_annotator(adapter).predict(adata, key_added="run1")
    adata.write_h5ad(tmp_path / "a.h5ad")
    again = ad.read_h5ad(tmp_path / "a.h5ad")
    assert list(again.uns["run1"]["labels"]) == CELL_TYPES
    assert again.uns["run1"]["base"]["name"] == "scgpt-offline-v1"
    np.testing.assert_array_equal(again.obsm["run1_probabilities"], adata.obsm["run1_probabilities"])
    assert list(again.obs["run1_pred"].cat.categories) == CELL_TYPES


@pytest.mark.parametrize("key", ["", "a/b"])
def test_bad_key_added_fails_before_the_model_runs(adapter, cells, key):
    adata = cells.copy()
    with pytest.raises(InvalidInputError, match="key_added"):
        load_annotator(adapter).predict(adata, key_added=key)
    assert list(adata.obs) == list(cells.obs) and not adata.obsm


def test_bf16_inference_is_autocast_and_close_to_fp32(adapter, cells):
    annotator = load_annotator(adapter)
    fp32 = annotator.predict(cells, copy=True, precision="fp32")
    bf16 = annotator.predict(cells, copy=True, precision="bf16")
    assert bf16.uns["scpeft"]["settings"]["precision"] == "bf16"
    difference = np.abs(fp32.obsm["X_scpeft"] - bf16.obsm["X_scpeft"])
    assert 0 < difference.max() < 0.25  # bf16 rounding, not a different model
    assert bf16.obsm["X_scpeft"].dtype == np.float32


# ------------------------------------------------------------------------------------------- embed


def test_embed_with_the_base_follows_the_scheme(cells):
    adata = cells.copy()
    assert embed_cells(adata, batch_size=16, key_added="zs", device="cpu") is None
    processor = load_processor(DEMO_BACKBONE)
    backbone = load_backbone(DEMO_BACKBONE, processor)
    expected = run_model(backbone, processor(cells), make_collator(processor, False), 16).cell_embeddings
    np.testing.assert_allclose(adata.obsm["X_zs"], expected, atol=1e-6)
    record = adata.uns["zs"]
    assert record["task"] == "embed" and record["method"] == "zero-shot" and "adapter" not in record
    assert record["base"]["fingerprint"] == backbone_fingerprint(backbone)
    copied = embed_cells(cells, batch_size=16, copy=True)
    assert "X_scpeft" in copied.obsm and "X_scpeft" not in cells.obsm and "scpeft" not in cells.uns


def test_embed_with_an_adapter_records_it(adapter, cells):
    adata = embed_cells(cells, adapter=adapter, copy=True)
    assert adata.uns["scpeft"]["adapter"] == str(adapter) and adata.uns["scpeft"]["method"] == "full"
    predicted = load_annotator(adapter).predict(cells, copy=True)
    np.testing.assert_allclose(adata.obsm["X_scpeft"], predicted.obsm["X_scpeft"], atol=1e-6)


# ------------------------------------------------------------------------------------------- markers


def test_markers_write_scores_ranking_and_record_under_key_added(adapter, cells, tmp_path):
    adata = cells.copy()
    summary = find_markers(adata, adapter, LABEL_KEY, tmp_path / "m.csv", top=5, key_added="att")
    assert "att_attention" in adata.layers and "scpeft_attention" not in adata.layers
    assert adata.layers["att_attention"].shape == adata.shape and adata.layers["att_attention"].nnz > 0
    assert set(adata.uns["att_markers"]["names"].dtype.names) == set(CELL_TYPES)
    record = adata.uns["att"]
    assert record["task"] == "markers" and record["markers"]["label_key"] == LABEL_KEY
    assert record["settings"]["method"] == summary["scores"]["method"] == "qk-rank"
    table = pd.read_csv(tmp_path / "m.csv")  # the csv outputs stay
    assert len(table) == 3 * 5 and (tmp_path / "m.png").is_file() and (tmp_path / "m_summary.json").is_file()


# ------------------------------------------------------------------------------------------- one resolver


def test_device_and_precision_resolve_the_same_way_for_training_and_inference(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_precision("auto", "cpu") == "fp32"
    for bad, message in (
        ("cuda", "no CUDA GPU is visible"),
        ("gpu", "is not one of"),
        ("cuda:x", "is not one of"),
    ):
        with pytest.raises(InvalidInputError, match=message):
            resolve_device(bad)
    assert trainer_arguments("auto", False, 1, "cpu") | {} == {
        "bf16": False, "fp16": False, "torch_compile": False, "gradient_accumulation_steps": 1, "use_cpu": True,
    }  # fmt: skip
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    assert resolve_precision("auto", "cuda") == "bf16" and resolve_precision("auto") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"  # --device cpu on a GPU machine: fp32, as on any CPU
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(InvalidInputError, match="only 2 CUDA GPU"):
        resolve_device("cuda:2")
    # training on cuda:N makes GPU N the current device, which the Trainer then uses; not under torchrun
    chosen = []
    monkeypatch.setattr("torch.cuda.set_device", chosen.append)
    assert trainer_arguments("auto", False, 1, "cuda:1")["use_cpu"] is False and chosen == [
        torch.device("cuda", 1)
    ]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InvalidInputError, match="one of several processes"):
        trainer_arguments("auto", False, 1, "cuda:1")


def test_progress_bar_only_on_a_terminal_and_only_when_asked(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with progress_bar(None, 36, True, "predict") as bar:
        bar.update(36)
    assert "predict" in terminal.getvalue() and "36/36" in terminal.getvalue()
    with progress_bar(None, 36, False, "quiet") as bar:
        assert bar.disable
    assert "quiet" not in terminal.getvalue()
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal: no bar even when asked
    with progress_bar(None, 36, True, "piped") as bar:
        assert bar.disable


# ------------------------------------------------------------------------------------------- command line


def test_predict_cli_key_added_precision_and_device(adapter, cells, tmp_path, capsys):
    data, out = tmp_path / "cells.h5ad", tmp_path / "out.h5ad"
    cells.write_h5ad(data)
    code = cli_main(["predict", "--adapter", str(adapter), "--data", str(data), "--out", str(out), "--key-added",
                     "mine", "--precision", "fp32", "--device", "cpu", "--label-key", LABEL_KEY])  # fmt: skip
    assert code == 0
    written = ad.read_h5ad(out)
    assert written.obsm["mine_probabilities"].shape == (36, 3) and "scpeft_pred" not in written.obs
    assert (
        written.uns["mine"]["settings"]["device"] == "cpu"
        and list(written.uns["mine"]["labels"]) == CELL_TYPES
    )
    expected = load_annotator(adapter, device="cpu").predict(cells, copy=True, precision="fp32")
    np.testing.assert_array_equal(written.obsm["mine_probabilities"], expected.obsm["scpeft_probabilities"])
    capsys.readouterr()
    embedded = tmp_path / "embedded.h5ad"
    assert cli_main(["embed", "--data", str(data), "--out", str(embedded), "--key-added", "zs"]) == 0
    assert ad.read_h5ad(embedded).uns["zs"]["method"] == "zero-shot"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "cuda"], "--device cuda: no CUDA GPU is visible"),
        (["--device", "tpu"], "--device 'tpu' is not one of"),
        (["--precision", "fp16", "--device", "cpu"], "--precision fp16 needs a CUDA GPU"),
        (["--key-added", "a/b"], "key_added 'a/b' is not a usable key"),
    ],
)
def test_predict_cli_refuses_bad_flags_in_one_line_and_writes_nothing(
    adapter, cells, tmp_path, capsys, monkeypatch, flags, message
):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    data, out = tmp_path / "cells.h5ad", tmp_path / "out.h5ad"
    cells.write_h5ad(data)
    code = cli_main(["predict", "--adapter", str(adapter), "--data", str(data), "--out", str(out), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not out.exists() and sorted(path.name for path in tmp_path.iterdir()) == ["cells.h5ad"]
