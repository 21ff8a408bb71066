"""Processors the Hugging Face way: `AutoProcessor` returns the saved processor, `push_to_hub` round-trips through a
Hub (tests/hub_server.py on 127.0.0.1), and the input selection (`layer` / `use_raw` / `gene_column`) is saved with
an adapter so that predict reads what train read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from transformers import AutoProcessor, PreTrainedConfig
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

import scpeft_hf
from scpeft_hf.cli import main as cli_main
from scpeft_hf.data import GeneformerProcessor, ScGPTProcessor, auto
from scpeft_hf.errors import InvalidInputError, MissingFileError, MissingKeyError
from scpeft_hf.tasks.annotation import load_annotator
from scpeft_hf.tasks.backbones import DEMO_BACKBONE
from tests.geneformer_helpers import ensembl_id, write_tiny_geneformer
from tests.hub_server import HubServer
from tests.test_package_import import run_without_data_stack

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scanpy_pbmc() -> ad.AnnData:
    """scanpy's own pbmc68k_reduced: X scaled (negative values), log1p-normalised values in .raw."""
    return sc.datasets.pbmc68k_reduced()


# ------------------------------------------------------------------------------------------- AutoProcessor


def test_auto_processor_returns_the_processor_saved_in_a_base_folder():
    processor = AutoProcessor.from_pretrained(DEMO_BACKBONE, trust_remote_code=False)
    assert type(processor) is ScGPTProcessor
    assert processor.to_dict() == ScGPTProcessor.from_pretrained(DEMO_BACKBONE).to_dict()
    assert processor.max_length == 1024 and len(processor.vocab) == len(
        json.loads((DEMO_BACKBONE / "vocab.json").read_text())
    )


def test_auto_processor_builds_one_from_a_converted_model_folder_without_processor_config(tmp_path):
    """No processor_config.json: AutoProcessor reads config.json, finds ScGPTConfig registered, and the processor
    takes n_bins / pad and mask values / max_seq_len from the model's config."""
    for name in ("config.json", "vocab.json"):
        shutil.copy(DEMO_BACKBONE / name, tmp_path / name)
    config = json.loads((tmp_path / "config.json").read_text())
    config["max_seq_len"] = 333
    (tmp_path / "config.json").write_text(json.dumps(config))
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(processor) is ScGPTProcessor and processor.max_length == 333
    assert processor.n_bins == config["n_bins"] and processor.pad_value == config["pad_value"]


def test_registration_needs_no_data_stack_and_is_replaced_by_the_real_class_on_use():
    result = run_without_data_stack(
        "import scpeft_hf\n"
        "from transformers.models.auto.processing_auto import PROCESSOR_MAPPING, processor_class_from_name\n"
        "stand_in = PROCESSOR_MAPPING[scpeft_hf.ScGPTConfig]\n"
        "print(stand_in.__name__, stand_in.__module__, processor_class_from_name('ScGPTProcessor') is stand_in)\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["ScGPTProcessor", "scpeft_hf.data.auto", "True"]
    AutoProcessor.from_pretrained(DEMO_BACKBONE)  # in this process the data stack is there
    assert PROCESSOR_MAPPING[scpeft_hf.ScGPTConfig] is ScGPTProcessor


def test_from_pretrained_refuses_another_processors_folder_and_names_what_is_missing(tmp_path):
    ScGPTProcessor.from_pretrained(DEMO_BACKBONE).save_pretrained(tmp_path / "scgpt")
    with pytest.raises(InvalidInputError, match="holds a ScGPTProcessor, not a GeneformerProcessor"):
        GeneformerProcessor.from_pretrained(tmp_path / "scgpt")
    with pytest.raises(MissingFileError, match="is not a folder; pass the folder given to save_pretrained"):
        ScGPTProcessor.from_pretrained(tmp_path / "missing" / "deeper" / "path")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="neither processor_config.json nor a model config.json"):
        ScGPTProcessor.from_pretrained(tmp_path / "empty")


class _ToyConfig(PreTrainedConfig):
    model_type = "scpeft-auto-processor-test"


@pytest.fixture
def geneformer_registered_under_a_toy_config():
    """GeneformerProcessor registered the way scpeft_hf/__init__.py registers a (config, processor) pair."""
    auto.register_processors([(_ToyConfig, "GeneformerProcessor")])
    yield
    PROCESSOR_MAPPING._extra_content.pop(_ToyConfig, None)
    auto._REGISTERED["GeneformerProcessor"].remove(_ToyConfig)


def _geneformer_folders(tmp_path: Path) -> tuple[Path, Path]:
    """(a Geneformer base folder with its processor, a folder written by `scpeft-hf train` on it)."""
    adata = sc.datasets.pbmc68k_reduced().raw.to_adata()[::4].copy()
    # integers, as rank-value encoding takes counts
    adata.X = sp.csr_matrix(np.rint(np.expm1(adata.X.toarray())))
    adata.var["ensembl_id"] = [ensembl_id(i + 1) for i in range(adata.n_vars)]
    adata.write_h5ad(tmp_path / "cells.h5ad")
    base = write_tiny_geneformer(tmp_path / "base", adata.n_vars, max_positions=64)
    GeneformerProcessor.from_pretrained(base).save_pretrained(base)
    out = tmp_path / "trained"
    code = cli_main(
        ["train", "--data", str(tmp_path / "cells.h5ad"), "--label-key", "bulk_labels", "--base", str(base),
         "--method", "lora", "--epochs", "1", "--batch-size", "64", "--min-cells-per-class", "10",
         "--gene-column", "ensembl_id", "--no-baseline", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    return base, out


def _check_geneformer_auto_processor(base: Path, trained: Path) -> None:
    from_base = AutoProcessor.from_pretrained(base)
    assert type(from_base) is GeneformerProcessor and from_base.max_length == 64
    assert from_base.label_names is None
    from_training = AutoProcessor.from_pretrained(trained)
    assert type(from_training) is GeneformerProcessor
    assert from_training.gene_column == "ensembl_id" and len(from_training.label_names) >= 2
    assert from_training.to_dict() == GeneformerProcessor.from_pretrained(trained).to_dict()


def test_geneformer_processor_loads_through_a_registered_config_pair(
    tmp_path, geneformer_registered_under_a_toy_config
):
    _check_geneformer_auto_processor(*_geneformer_folders(tmp_path))


def test_geneformer_auto_processor_through_the_package_registration(tmp_path):
    config_class = getattr(scpeft_hf.models.geneformer, "GeneformerConfig", None)
    if config_class is None:
        pytest.skip(
            "scpeft_hf.models.geneformer has no GeneformerConfig yet: add (GeneformerConfig, 'GeneformerProcessor') "
            "to PROCESSOR_REGISTRATIONS in scpeft_hf/__init__.py once it exists"
        )
    assert (config_class, "GeneformerProcessor") in scpeft_hf.PROCESSOR_REGISTRATIONS
    _check_geneformer_auto_processor(*_geneformer_folders(tmp_path))


# ------------------------------------------------------------------------------------------- push_to_hub

PUSH_AND_LOAD = textwrap.dedent(
    """
    import json, sys
    import scpeft_hf
    from transformers import AutoProcessor
    from scpeft_hf.data import ScGPTProcessor

    processor = ScGPTProcessor.from_pretrained(sys.argv[1], use_raw=True, label_names=["B", "T"])
    first = processor.push_to_hub("alice/pbmc-processor")
    processor.label_names = ["B", "NK", "T"]
    second = processor.push_to_hub("alice/pbmc-processor", commit_message="three labels")
    print(json.dumps({
        "commits": [first.oid, second.oid],
        "pushed": processor.to_dict(),
        "main": ScGPTProcessor.from_pretrained("alice/pbmc-processor").to_dict(),
        "first": ScGPTProcessor.from_pretrained("alice/pbmc-processor", revision=first.oid).label_names,
        "auto": type(AutoProcessor.from_pretrained("alice/pbmc-processor", trust_remote_code=False)).__name__,
        "auto_first": AutoProcessor.from_pretrained("alice/pbmc-processor", revision=first.oid).label_names,
    }))
    """
)


def test_push_to_hub_round_trips_through_the_hub_at_each_revision(tmp_path):
    with HubServer() as hub:
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            HF_ENDPOINT=hub.url,  # read by huggingface_hub on import: a fresh process
            HF_HOME=str(tmp_path / "hf"),
            HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
            HF_TOKEN="hf_test_token",
            HF_HUB_DISABLE_TELEMETRY="1",
        )
        result = subprocess.run(
            [sys.executable, "-c", PUSH_AND_LOAD, str(DEMO_BACKBONE)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        files = hub.files("alice/pbmc-processor")
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(files) == {"processor_config.json", "vocab.json", "README.md"}  # never the weights
    assert files["vocab.json"] == (DEMO_BACKBONE / "vocab.json").read_bytes()
    assert json.loads(files["processor_config.json"]) == loaded["pushed"] == loaded["main"]
    assert loaded["main"]["use_raw"] is True and loaded["main"]["label_names"] == ["B", "NK", "T"]
    assert loaded["first"] == loaded["auto_first"] == ["B", "T"]
    assert loaded["auto"] == "ScGPTProcessor" and loaded["commits"][0] != loaded["commits"][1]


# ------------------------------------------------------------------------------------------- input selection


def test_use_raw_and_layer_read_the_matrix_they_name_and_are_saved(tmp_path, scanpy_pbmc):
    adata = scanpy_pbmc[:120].copy()
    processor = ScGPTProcessor.from_pretrained(DEMO_BACKBONE)
    with pytest.raises(InvalidInputError, match="negative values .* pass use_raw=True"):
        processor(adata)
    expected = processor(adata.raw.to_adata())
    from_raw = ScGPTProcessor.from_pretrained(DEMO_BACKBONE, use_raw=True)(adata)
    assert from_raw["input_ids"] == expected["input_ids"] and from_raw["values"] == expected["values"]
    assert max(from_raw["length"]) > 100  # real cells, not empty ones
    adata.write_h5ad(tmp_path / "scaled.h5ad")
    streamed = ScGPTProcessor.from_pretrained(DEMO_BACKBONE, use_raw=True, chunk_size=50).tokenize_h5ad(
        tmp_path / "scaled.h5ad", cache_dir=tmp_path / "cache"
    )
    assert streamed["input_ids"] == expected["input_ids"] and streamed["values"] == expected["values"]

    adata.layers["log1p"] = adata.raw.X.copy()
    from_layer = processor(adata, layer="log1p")  # a call's choice replaces the saved one for that call
    assert from_layer["values"] == expected["values"] and processor.layer is None

    processor.with_input(use_raw=True, gene_column="symbol")
    processor.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "processor_config.json").read_text())
    assert (config["use_raw"], config["layer"], config["gene_column"]) == (True, None, "symbol")
    loaded = ScGPTProcessor.from_pretrained(tmp_path / "saved")
    assert (loaded.use_raw, loaded.gene_column) == (True, "symbol")
    with pytest.raises(MissingKeyError, match="gene_column='symbol' is not a var column"):
        loaded(adata)  # gene_column names a column of .raw.var under use_raw
    raw = adata.raw.to_adata()
    raw.var["symbol"] = raw.var_names
    adata.raw = raw
    assert loaded(adata)["input_ids"] == expected["input_ids"]
    assert loaded.with_input(layer="log1p").use_raw is False  # an explicit layer replaces a saved use_raw

    with pytest.raises(InvalidInputError, match="both name the expression matrix"):
        ScGPTProcessor.from_pretrained(DEMO_BACKBONE, layer="log1p", use_raw=True)
    without_raw = adata.copy()
    del without_raw.raw
    with pytest.raises(MissingKeyError, match="use_raw=True but the AnnData has no .raw"):
        ScGPTProcessor.from_pretrained(DEMO_BACKBONE, use_raw=True)(without_raw)


def test_geneformer_processor_reads_counts_from_raw_with_their_gene_column():
    counts = np.array([[3, 0, 1], [0, 2, 5]], dtype=np.float32)
    tokens = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, **{ensembl_id(i): 3 + i for i in (1, 2, 3)}}
    medians = {ensembl_id(i): 1.0 for i in (1, 2, 3)}
    raw = ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame({"gene_id": [ensembl_id(i) for i in (1, 2, 3)]},
                                                             index=["A", "B", "C"]))  # fmt: skip
    adata = raw.copy()
    adata.raw = raw
    adata.X = sp.csr_matrix(counts - counts.mean(0))  # scaled: not counts
    processor = GeneformerProcessor(tokens, medians, use_raw=True, gene_column="gene_id")
    assert processor(adata)["input_ids"] == [[2, 4, 6, 3], [2, 6, 5, 3]]
    with pytest.raises(InvalidInputError, match="Geneformer ranks raw counts"):
        processor(adata, use_raw=False)


def test_train_on_scanpys_own_pbmc68k_reduced_with_use_raw_and_predict_with_the_saved_setting(
    tmp_path, scanpy_pbmc
):
    cells = scanpy_pbmc[::3].copy()
    assert cells.X.min() < 0  # scaled: refused as model input without --use-raw
    cells.write_h5ad(tmp_path / "pbmc.h5ad")
    train = ["train", "--data", str(tmp_path / "pbmc.h5ad"), "--label-key", "bulk_labels", "--method", "encoder",
             "--epochs", "1", "--max-length", "64", "--min-cells-per-class", "10"]  # fmt: skip
    assert cli_main([*train, "--out", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()
    assert cli_main([*train, "--use-raw", "--out", str(tmp_path / "adapter")]) == 0

    adapter = tmp_path / "adapter"
    saved = AutoProcessor.from_pretrained(adapter)
    assert type(saved) is ScGPTProcessor and saved.use_raw is True
    metrics = json.loads((adapter / "metrics.json").read_text())
    run_info = json.loads((adapter / "run_info.json").read_text())
    assert saved.label_names == run_info["label_names"]
    assert run_info["preprocessing"].endswith("read from `.raw.X`.")
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["baseline"]["test_accuracy"] <= 1
    print(
        f"\nencoder, 1 epoch on {cells.n_obs} cells (.raw): test accuracy {metrics['test_accuracy']:.3f}, macro-F1 "
        f"{metrics['test_macro_f1']:.3f}; logistic regression on the same split and input: accuracy "
        f"{metrics['baseline']['test_accuracy']:.3f}, macro-F1 {metrics['baseline']['test_macro_f1']:.3f}"
    )

    new_cells = scanpy_pbmc[1::3].copy()  # scaled X again: predict must read .raw by itself
    predicted = load_annotator(adapter).predict(new_cells, copy=True)
    as_x = new_cells.raw.to_adata()  # the same values handed over as X, with the saved choice turned off
    reference = load_annotator(adapter, use_raw=False).predict(as_x, copy=True)
    np.testing.assert_allclose(predicted.obsm["X_scpeft"], reference.obsm["X_scpeft"], rtol=1e-5, atol=1e-6)
    assert (predicted.obs["scpeft_pred"] == reference.obs["scpeft_pred"]).all()
    assert predicted.obs["scpeft_pred"].nunique() >= 1

    assert cli_main(["predict", "--adapter", str(adapter), "--data", str(tmp_path / "pbmc.h5ad"),
                     "--out", str(tmp_path / "predicted.h5ad")]) == 0  # fmt: skip
    assert cli_main(["embed", "--adapter", str(adapter), "--data", str(tmp_path / "pbmc.h5ad"),
                     "--out", str(tmp_path / "embedded.h5ad")]) == 0  # fmt: skip
    assert ad.read_h5ad(tmp_path / "embedded.h5ad").obsm["X_scpeft"].shape[0] == cells.n_obs
