"""A base and its adapter both from the Hub, end to end over real HTTP (tests/hub_server.py on 127.0.0.1), each step
in a fresh process as a user would run it: `convert --push-to-hub` a tiny official-format scGPT checkpoint; `train
--base USER/base` and `push` the adapter; then `predict` from the two Hub ids and load the adapter with the
three lines its model card shows. Nothing names a path of the training machine."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import yaml

from scpeft_hf.datasets import pbmc68k_reduced
from tests.hub_server import HubServer
from tests.test_hub import hub_environment
from tests.test_scgpt_convert import official_model, write_official_folder

BASE_ID, ADAPTER_ID = "alice/tiny-scgpt", "alice/tiny-scgpt-encoder"
TINY_ARGS = {
    "embsize": 32,
    "nheads": 4,
    "d_hid": 48,
    "nlayers": 2,
    "n_layers_cls": 3,
    "dropout": 0.1,
    "pad_token": "<pad>",
    "pad_value": -2,
    "mask_value": -1,
    "n_bins": 51,
    "input_emb_style": "continuous",
    "max_seq_len": 1200,
}
CLASSES = ("CD14+ Monocyte", "CD19+ B", "Dendritic")


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def cli_calls(*commands: list[str]) -> str:
    """Python that runs several `scpeft-hf` commands in one process and fails on the first that fails."""
    return "from scpeft_hf.cli import main\n" + "".join(
        f"assert main({command!r}) == 0, {command[0]!r}\n" for command in commands
    )


def strings_in(value) -> list[str]:
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings_in(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return [value] if isinstance(value, str) else []


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory) -> dict:
    """Run the three processes once; what they left behind, for the tests below."""
    work = tmp_path_factory.mktemp("roundtrip")
    cells = pbmc68k_reduced()
    keep = np.concatenate([np.flatnonzero(cells.obs["bulk_labels"] == name)[:24] for name in CLASSES])
    cells[keep].copy().write_h5ad(work / "cells.h5ad")
    # The official release's layout (best_model.pt, args.json, vocab.json) with the data's genes as vocabulary.
    vocab = {gene: i for i, gene in enumerate(cells.var_names)}
    vocab |= {"<pad>": len(vocab), "<cls>": len(vocab) + 1, "<eoc>": len(vocab) + 2}
    source = write_official_folder(work / "official", official_model(TINY_ARGS, vocab), TINY_ARGS, vocab)

    with HubServer() as hub:
        env = hub_environment(hub.url, work / "hf_home")
        convert = subprocess.run(
            [sys.executable, "-m", "scpeft_hf.cli", "convert", "scgpt", str(source), str(work / "base"),
             "--push-to-hub", BASE_ID],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert convert.returncode == 0, convert.stderr[-3000:]
        base_sha = hub.repos[BASE_ID].commits[-1][0]
        adapter = work / "adapter"
        run_python(
            cli_calls(
                ["train", "--data", str(work / "cells.h5ad"), "--label-key", "bulk_labels", "--method", "encoder",
                 "--epochs", "1", "--batch-size", "16", "--max-length", "64", "--base", BASE_ID,
                 "--out", str(adapter)],
                ["push", "--adapter", str(adapter), "--repo-id", ADAPTER_ID],
            ),
            env,
        )  # fmt: skip
        card = hub.files(ADAPTER_ID)["README.md"].decode()
        three_lines = re.search(r"```python\n(processor = .*?)```", card, flags=re.DOTALL).group(1)
        requests_before_predict = len(hub.requests)
        predict = cli_calls(
            ["predict", "--adapter", ADAPTER_ID, "--data", str(work / "cells.h5ad"), "--out", str(work / "a.h5ad")],
            ["predict", "--adapter", ADAPTER_ID, "--base", f"{BASE_ID}@{base_sha}", "--data",
             str(work / "cells.h5ad"), "--out", str(work / "b.h5ad")],
        )  # fmt: skip
        three_line_check = f"""
import json, anndata, numpy, scpeft_hf
from transformers import AutoProcessor
from peft import PeftModel
from transformers import AutoModelForSequenceClassification
from scpeft_hf.tasks.annotation import load_annotator
from scpeft_hf.tasks.backbones import make_collator
from scpeft_hf.tasks.inference import run_model
{three_lines}
annotator = load_annotator({ADAPTER_ID!r})
tokens = annotator.processor(anndata.read_h5ad({str(work / "cells.h5ad")!r}))
collator = make_collator(annotator.processor, train=False)
ours, theirs = (run_model(m, tokens, collator).logits for m in (annotator.model, model.eval()))
json.dump({{"max_abs_diff": float(numpy.abs(ours - theirs).max()), "labels": processor.label_names, "processor": type(processor).__name__}}, open({str(work / "three.json")!r}, "w"))
"""  # noqa: E501
        # a machine of its own: an empty Hugging Face cache, so the base is downloaded at the recorded commit
        run_python(predict + three_line_check, hub_environment(hub.url, work / "hf_home_elsewhere"))
        downloads = [path for method, path in hub.requests[requests_before_predict:] if method == "GET"]
        yield {
            "work": work,
            "adapter": adapter,
            "base_sha": base_sha,
            "base_files": hub.files(BASE_ID),
            "adapter_files": hub.files(ADAPTER_ID),
            "downloads": downloads,
            "convert_stdout": convert.stdout,
        }


def test_convert_pushes_the_base_with_a_card_that_gives_the_parity_figure(roundtrip):
    files = roundtrip["base_files"]
    assert set(files) == {"config.json", "model.safetensors", "vocab.json", "README.md"}
    card = files["README.md"].decode()
    metadata = yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", card, flags=re.DOTALL).group(1))
    assert metadata["license"] == "mit" and metadata["library_name"] == "transformers"
    # the official scGPT 0.2.4 code is installed here, so the figure is measured, and float32-small
    parity = metadata["parity_max_abs_diff"]
    assert 0 <= parity < 1e-5
    assert f"**{parity:.2e} (cell embeddings of 16 random cells" in card
    assert "hidden size 32, 2 layers, 4 attention heads, feed-forward 48" in card
    assert "768 tokens in `vocab.json`" in card  # 765 genes + <pad>, <cls>, <eoc>
    assert "`official/best_model.pt` (SHA-256 `" in card and str(roundtrip["work"]) not in card
    assert f'AutoModel.from_pretrained("{BASE_ID}")' in card
    assert f"Pushed {roundtrip['work'] / 'base'} to " in roundtrip["convert_stdout"]


def test_the_run_records_the_hub_id_and_commit_never_a_path(roundtrip):
    adapter, sha = roundtrip["adapter"], roundtrip["base_sha"]
    run_info = json.loads((adapter / "run_info.json").read_text())
    assert run_info["base_model"] == BASE_ID and run_info["base_model_revision"] == sha
    assert not [s for s in strings_in(run_info) if s.startswith("/") or str(roundtrip["work"]) in s]
    for config in (
        json.loads((adapter / "adapter_config.json").read_text()),
        json.loads(roundtrip["adapter_files"]["adapter_config.json"]),
    ):
        assert config["base_model_name_or_path"] == BASE_ID and config["revision"] == sha
    card = roundtrip["adapter_files"]["README.md"].decode()
    metadata = yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", card, flags=re.DOTALL).group(1))
    assert metadata["base_model"] == BASE_ID and f"`{BASE_ID}` at commit `{sha}`" in card


def test_predictions_from_both_hub_ids_are_identical(roundtrip):
    work, sha = roundtrip["work"], roundtrip["base_sha"]
    by_record, by_base = ad.read_h5ad(work / "a.h5ad"), ad.read_h5ad(work / "b.h5ad")
    assert (by_record.obs["scpeft_pred"].astype(str) == by_base.obs["scpeft_pred"].astype(str)).all()
    np.testing.assert_array_equal(by_record.obs["scpeft_confidence"], by_base.obs["scpeft_confidence"])
    np.testing.assert_array_equal(by_record.obsm["X_scpeft"], by_base.obsm["X_scpeft"])
    assert by_record.obsm["X_scpeft"].shape == (72, 32)
    assert by_record.obsm["X_scpeft"].std(axis=0).min() > 0  # real embeddings, different per cell
    # the base came from the Hub at the recorded commit
    assert f"/{BASE_ID}/resolve/{sha}/model.safetensors" in roundtrip["downloads"]


def test_the_three_line_load_of_the_card_equals_load_annotator(roundtrip):
    result = json.loads((roundtrip["work"] / "three.json").read_text())
    assert result["labels"] == sorted(CLASSES)
    assert result["processor"] == "ScGPTProcessor"  # AutoProcessor found the saved processor from the Hub id
    assert result["max_abs_diff"] == 0.0
