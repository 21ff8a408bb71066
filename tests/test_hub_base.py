"""How a trained folder records its base: a Hub base by id and revision, a local base by path with a warning.

The Hub base is a snapshot in a Hugging Face cache built here, offline, in the layout `huggingface_hub` keeps
(`models--owner--name/snapshots/<commit>`, `refs/main`).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from huggingface_hub import constants

from scpeft_hf.cli import main as cli_main
from scpeft_hf.datasets import pbmc68k_reduced
from scpeft_hf.errors import HubConnectionError
from scpeft_hf.tasks.annotation import TrainingSettings, load_annotator, train_annotation
from scpeft_hf.tasks.backbones import (
    base_reference,
    base_revision,
    hub_snapshot,
    resolve_base,
    split_revision,
)
from scpeft_hf.tasks.hub import _portable_adapter_config
from tests.geneformer_helpers import ensembl_id, write_tiny_geneformer

REPO_ID, COMMIT = "alice/tiny-geneformer", "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def cells():
    adata = pbmc68k_reduced()
    keep = np.concatenate(
        [np.flatnonzero(adata.obs["bulk_labels"] == name)[:12] for name in ("CD14+ Monocyte", "CD19+ B")]
    )
    return adata[keep].copy()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, cells):
    cache = tmp_path / "hf-cache"
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    snapshot = write_tiny_geneformer(repo / "snapshots" / COMMIT, cells.n_vars, max_positions=64)
    mapping = {symbol: ensembl_id(i + 1) for i, symbol in enumerate(cells.var_names)}
    (snapshot / "gene_name_id_dict_gc104M.json").write_text(json.dumps(mapping))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return snapshot


def test_a_hub_snapshot_is_recorded_by_id_and_revision(hub_cache, caplog):
    assert hub_snapshot(hub_cache) == (REPO_ID, COMMIT)
    with caplog.at_level(logging.WARNING):
        assert base_reference(hub_cache) == REPO_ID and base_revision(hub_cache) == COMMIT
    assert not caplog.records
    assert resolve_base(REPO_ID, COMMIT) == hub_cache and resolve_base(REPO_ID) == hub_cache
    with pytest.raises(HubConnectionError, match="alice/absent is neither in the Hugging Face cache"):
        resolve_base("alice/absent")


def test_a_local_base_is_recorded_by_path_with_a_warning(tmp_path, caplog):
    folder = write_tiny_geneformer(tmp_path / "models--not-a-snapshot", 12)
    assert hub_snapshot(folder) is None and base_revision(folder) is None
    with caplog.at_level(logging.WARNING):
        assert base_reference(folder) == str(folder.resolve())
    assert "loads only where it exists" in caplog.text


def test_pushed_adapter_config_names_the_hub_base_and_its_revision():
    local = json.dumps({"base_model_name_or_path": "/home/me/cache/snapshots/x", "revision": None}).encode()
    pushed = json.loads(_portable_adapter_config(local, REPO_ID, COMMIT))
    assert pushed["base_model_name_or_path"] == REPO_ID and pushed["revision"] == COMMIT


@pytest.mark.slow
def test_train_on_a_hub_base_records_it_and_predicts_from_the_cache(hub_cache, cells, tmp_path):
    settings = TrainingSettings(epochs=1, batch_size=8, test_fraction=0.25, validation_fraction=0.2)
    result = train_annotation(cells, "bulk_labels", "lora", tmp_path / "out", base=REPO_ID, settings=settings)
    run_info = json.loads((result.out_dir / "run_info.json").read_text())
    assert run_info["base_model"] == REPO_ID and run_info["base_model_revision"] == COMMIT
    adapter_config = json.loads((result.out_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == REPO_ID and adapter_config["revision"] == COMMIT
    predicted = load_annotator(result.out_dir).predict(cells, copy=True)
    assert predicted.obsm["X_scpeft"].shape == (cells.n_obs, 32)


# ------------------------------------------------------------------------------------ USER/NAME@REVISION


def test_base_revision_syntax_is_split_once_for_every_command(tmp_path, monkeypatch):
    assert split_revision("alice/scgpt@v1.0") == ("alice/scgpt", "v1.0")
    assert split_revision("alice/scgpt", "main") == ("alice/scgpt", "main")
    assert split_revision("alice/scgpt@main", "main") == ("alice/scgpt", "main")
    assert split_revision(None) == (None, None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bases" / "scgpt@v2").mkdir(parents=True)  # an existing folder is a folder, "@" or not
    assert split_revision("bases/scgpt@v2") == ("bases/scgpt@v2", None)
    with pytest.raises(ValueError, match=r"--base alice/scgpt@ is neither a folder nor a Hub model"):
        split_revision("alice/scgpt@")
    with pytest.raises(ValueError, match=r"--base no/such/folder@v1 is neither a folder nor a Hub model"):
        split_revision("no/such/folder@v1")
    with pytest.raises(ValueError, match=r"names revision v1 but revision='v2' was also given"):
        split_revision("alice/scgpt@v1", "v2")


def test_a_hub_base_at_a_revision_resolves_to_that_commit(hub_cache):
    assert resolve_base(f"{REPO_ID}@{COMMIT}") == hub_cache
    assert resolve_base(f"{REPO_ID}@main") == hub_cache  # a branch, through refs/main
    with pytest.raises(HubConnectionError, match=f"{REPO_ID} at revision v9 is neither in the Hugging Face"):
        resolve_base(f"{REPO_ID}@v9")


@pytest.mark.parametrize("command", ["train", "integrate", "predict", "embed", "markers"])
def test_every_command_refuses_a_malformed_base_revision_in_one_line(command, tmp_path, capsys):
    required = {
        "train": ["--data", "x.h5ad", "--label-key", "y", "--out", str(tmp_path / "o")],
        "integrate": ["--data", "x.h5ad", "--batch-key", "b", "--out", str(tmp_path / "o")],
        "predict": ["--adapter", "a", "--data", "x.h5ad", "--out", "o.h5ad"],
        "embed": ["--data", "x.h5ad", "--out", "o.h5ad"],
        "markers": ["--adapter", "a", "--data", "x.h5ad", "--label-key", "y", "--out", "m.csv"],
    }[command]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, *required, "--base", "alice/scgpt@"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"scpeft-hf {command}: error: argument --base")
    assert "USER/NAME@REVISION" in error and not (tmp_path / "o").exists()
