"""Sharing an adapter through a Hub over real HTTP (tests/hub_server.py on 127.0.0.1, nothing leaves the machine):
`scpeft-hf push`, then `scpeft-hf predict --adapter USER/NAME` in a fresh process, and the bad inputs that must
leave the Hub untouched."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import constants
from safetensors.torch import load as load_safetensors

from scpeft_hf.cli import main as cli_main
from scpeft_hf.demo import DEMO_LABEL_KEY, DEMO_SPLIT_KEY, demo_data
from scpeft_hf.models.scgpt import ScGPTForMaskedExpressionModeling
from scpeft_hf.tasks.annotation import load_annotator
from scpeft_hf.tasks.backbones import DEMO_BACKBONE, DEMO_BACKBONE_NAME
from scpeft_hf.tasks.card import hub_model_id
from scpeft_hf.tasks.hub import push_adapter
from tests.hub_server import HubServer

REPO_ID = "alice/pbmc-encoder"
SHARED = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "processor_config.json",
    "vocab.json",
    "run_info.json",
    "metrics.json",
    "README.md",
}
BACKBONE_FILES = {"model.safetensors", "pytorch_model.bin", "config.json"}


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hub")
    demo_data()[::3].copy().write_h5ad(folder / "pbmc.h5ad")  # a third of the cells: fast, all 10 types
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The demo backbone with scGPT-human's vocabulary size: 60,000 more gene tokens, never in the data.

    Real backbones are mostly gene embeddings (scGPT-human: 60,697 genes, 31M of its 51M parameters); the
    demo's 765-gene vocabulary makes its classification head alone 4.8% of the model."""
    folder = tmp_path_factory.mktemp("base")
    vocab = json.loads((DEMO_BACKBONE / "vocab.json").read_text())
    vocab |= {f"UNSEEN{i}": len(vocab) + i for i in range(60_000)}
    model = ScGPTForMaskedExpressionModeling.from_pretrained(DEMO_BACKBONE)
    torch.manual_seed(0)
    model.resize_token_embeddings(len(vocab))
    model.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    shutil.copy(DEMO_BACKBONE / "processor_config.json", folder)
    return folder


@pytest.fixture(scope="module")
def trained(workdir, base) -> Path:
    out = workdir / "encoder"
    code = cli_main(
        ["train", "--data", str(workdir / "pbmc.h5ad"), "--label-key", DEMO_LABEL_KEY, "--split-key", DEMO_SPLIT_KEY,
         "--method", "encoder", "--epochs", "1", "--max-length", "64", "--base", str(base), "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    return out


def hub_environment(endpoint: str, hf_home: Path) -> dict[str, str]:
    """A new process's environment for `endpoint`: huggingface_hub reads HF_ENDPOINT when it is imported."""
    return dict(
        os.environ,
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        HF_ENDPOINT=endpoint,
        HF_HOME=str(hf_home),
        HF_HUB_CACHE=str(hf_home / "hub"),
        HF_TOKEN="hf_test_token",
        HF_HUB_DISABLE_TELEMETRY="1",
    )


def run_scpeft(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scpeft_hf.cli", *args], env=env, capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def pushed(hub, trained, tmp_path_factory) -> dict[str, str]:
    """Push once, in a process of its own; the environment for later processes talking to the same Hub."""
    env = hub_environment(hub.url, tmp_path_factory.mktemp("hf_home"))
    result = run_scpeft(["push", "--adapter", str(trained), "--repo-id", REPO_ID], env)
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    return env


@pytest.fixture
def endpoint(monkeypatch, tmp_path):
    """Point this process's huggingface_hub at a URL, as HF_ENDPOINT does for a new process."""

    def point_at(url: str) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")

    return point_at


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------------- push, then load


def test_push_uploads_the_adapter_alone_in_one_commit(hub, pushed, trained, base):
    files = hub.files(REPO_ID)
    print("\nUploaded to the Hub:")
    for name, content in files.items():
        print(f"  {name:<28} {len(content):>9,} bytes")
    assert set(files) == SHARED
    assert not BACKBONE_FILES & set(files)
    creations = [path for method, path in hub.requests if path == "/api/repos/create"]
    commits = [path for method, path in hub.requests if path.endswith("/commit/main")]
    assert creations == ["/api/repos/create"] and commits == [f"/api/models/{REPO_ID}/commit/main"]
    assert len(hub.repos[REPO_ID].commits) == 2  # the repo's creation, then one commit with every file

    # The weights file holds exactly the trained parameters: the adapters and the head, no backbone tensor.
    metrics = json.loads((trained / "metrics.json").read_text())
    tensors = load_safetensors(files["adapter_model.safetensors"])
    assert sum(t.numel() for t in tensors.values()) == metrics["trainable_params"]
    assert all("encoder_adapter" in name or "classifier" in name for name in tensors)
    base_size = (base / "model.safetensors").stat().st_size
    assert sum(len(content) for content in files.values()) < 0.05 * base_size

    for name in SHARED - {"README.md", "adapter_config.json"}:
        assert files[name] == (trained / name).read_bytes(), name
    adapter_config = json.loads(files["adapter_config.json"])
    local_config = json.loads((trained / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(base)
    assert {k: v for k, v in adapter_config.items() if k != "base_model_name_or_path"} == {
        k: v for k, v in local_config.items() if k != "base_model_name_or_path"
    }


def test_pushed_card_says_how_to_load_the_adapter_from_the_hub(hub, pushed, trained, base):
    card = hub.files(REPO_ID)["README.md"].decode()
    metadata = yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", card, flags=re.DOTALL).group(1))
    assert metadata["library_name"] == "peft" and metadata["license"] == "mit"
    assert {"single-cell", "scpeft", "encoder"} <= set(metadata["tags"])
    # A local base is not on the Hub, so it is named in the text, not as `base_model` metadata.
    assert "base_model" not in metadata and str(base) in card
    run_info = json.loads((trained / "run_info.json").read_text())
    metrics = json.loads((trained / "metrics.json").read_text())
    assert run_info["base_model"] == str(base)
    assert metadata["base_model_fingerprint"] == run_info["base_model_fingerprint"]
    assert f'load_annotator("{REPO_ID}")' in card and f"scpeft-hf predict --adapter {REPO_ID} " in card
    assert str(trained) not in card and str(trained) in (trained / "README.md").read_text()
    assert f"{metrics['test_macro_f1']:.4f}" in card and f"{metrics['trainable_params']:,}" in card
    assert all(f"`{name}`" in card for name in run_info["label_names"])
    assert "normalize_total" in card  # the preprocessing


def test_predict_from_the_hub_in_a_fresh_process_equals_local_predict(hub, pushed, trained, workdir):
    out = workdir / "predicted_from_hub.h5ad"
    result = run_scpeft(
        ["predict", "--adapter", REPO_ID, "--data", str(workdir / "pbmc.h5ad"), "--out", str(out)], pushed
    )
    assert result.returncode == 0, result.stderr
    downloads = {
        path.rsplit("/", 1)[1] for method, path in hub.requests if method == "GET" and "/resolve/" in path
    }
    assert downloads == SHARED
    from_hub = ad.read_h5ad(out)
    local = load_annotator(trained).predict(ad.read_h5ad(workdir / "pbmc.h5ad"), copy=True)
    assert (from_hub.obs["scpeft_pred"].astype(str) == local.obs["scpeft_pred"].astype(str)).all()
    np.testing.assert_array_equal(
        from_hub.obs["scpeft_confidence"].to_numpy(), local.obs["scpeft_confidence"]
    )
    np.testing.assert_array_equal(from_hub.obsm["X_scpeft"], local.obsm["X_scpeft"])
    assert from_hub.obs["scpeft_pred"].nunique() >= 2


# ------------------------------------------------------------------------------ bad input: the Hub untouched


def hub_state(hub: HubServer) -> tuple[int, set[str]]:
    """How many requests the Hub has seen and which repos it holds."""
    return len(hub.requests), set(hub.repos)


def copy_without(trained: Path, destination: Path, name: str) -> Path:
    shutil.copytree(trained, destination)
    (destination / name).unlink()
    return destination


def test_push_refuses_folders_that_are_not_adapters(hub, trained, tmp_path, endpoint):
    endpoint(hub.url)
    before = hub_state(hub)
    with pytest.raises(FileNotFoundError, match="lacks adapter_config.json: not a complete adapter folder"):
        push_adapter(copy_without(trained, tmp_path / "no_config", "adapter_config.json"), "alice/no-config")
    with pytest.raises(FileNotFoundError, match="has no run_info.json: not a folder written by"):
        push_adapter(copy_without(trained, tmp_path / "no_run_info", "run_info.json"), "alice/no-run-info")
    full = shutil.copytree(trained, tmp_path / "full")
    run_info = json.loads((full / "run_info.json").read_text())
    (full / "run_info.json").write_text(json.dumps(run_info | {"method": "full"}))
    with pytest.raises(ValueError, match="holds a `full` model: the whole network, backbone included"):
        push_adapter(full, "alice/full")
    assert hub_state(hub) == before


def test_push_needs_a_namespace_in_the_repo_id(hub, trained, endpoint, capsys):
    endpoint(hub.url)
    before = hub_state(hub)
    assert cli_main(["push", "--adapter", str(trained), "--repo-id", "pbmc-encoder"]) == 2
    error = capsys.readouterr().err
    assert "Repo id 'pbmc-encoder' has no namespace: use USER/NAME" in error
    assert hub_state(hub) == before


def test_push_without_a_token_says_how_to_provide_one(hub, trained, endpoint, monkeypatch, tmp_path):
    endpoint(hub.url)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    before = hub_state(hub)
    with pytest.raises(PermissionError, match="No Hugging Face token: pass --token"):
        push_adapter(trained, "alice/no-token")
    assert hub_state(hub) == before


def test_push_to_an_unreachable_hub_names_the_endpoint(trained, tmp_path):
    url = closed_port_url()
    result = run_scpeft(
        ["push", "--adapter", str(trained), "--repo-id", "alice/offline"], hub_environment(url, tmp_path)
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(
        f"scpeft-hf push: error: Cannot reach the Hugging Face Hub at {url} to push to alice/offline (ConnectError"
    )
    assert "HF_ENDPOINT" in result.stderr and "no files were committed" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_loading_from_the_hub_explains_a_missing_repo_and_an_unreachable_hub(hub, endpoint):
    endpoint(hub.url)
    with pytest.raises(FileNotFoundError, match=f"the Hub at {hub.url} has no model repo alice/missing"):
        load_annotator("alice/missing")
    url = closed_port_url()
    endpoint(url)
    with pytest.raises(
        ConnectionError,
        match=f"alice/missing is not a local folder, and it can neither be downloaded from the Hub at {url}",
    ):
        load_annotator("alice/missing")


def test_card_metadata_names_only_a_hub_model_as_base_model(tmp_path, monkeypatch):
    assert hub_model_id("someone/scgpt-human") == "someone/scgpt-human"
    assert hub_model_id(DEMO_BACKBONE_NAME) is None  # embedded in the package, not published on the Hub
    assert hub_model_id(str(DEMO_BACKBONE)) is None and hub_model_id("scgpt-human") is None
    monkeypatch.chdir(tmp_path)
    Path("models/scgpt").mkdir(parents=True)
    assert hub_model_id("models/scgpt") is None  # a local folder, though shaped like a repo id
