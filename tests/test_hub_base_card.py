"""A converted base carries its own model card: architecture, source checkpoint, vocabulary size, licence and the
parity figure against the official scGPT code ("not measured" without that code); publishing it checks everything
before the Hub is touched."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from scpeft_hf.cli import main as cli_main
from scpeft_hf.models.scgpt import ScGPTForMaskedExpressionModeling, convert_scgpt_checkpoint
from scpeft_hf.models.scgpt import parity as parity_module
from scpeft_hf.models.scgpt.convert_scgpt import load_official_state_dict
from scpeft_hf.models.scgpt.parity import measure_parity
from scpeft_hf.tasks.hub import push_base
from tests.hub_server import HubServer
from tests.test_scgpt_convert import SMALL_ARGS, official_model, small_vocab, write_official_folder


@pytest.fixture
def official(tmp_path):
    vocab = small_vocab()
    return write_official_folder(tmp_path / "official", official_model(SMALL_ARGS, vocab), SMALL_ARGS, vocab)


def card_metadata(card: str) -> dict:
    return yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", card, flags=re.DOTALL).group(1))


def test_card_states_architecture_source_vocabulary_licence_and_measured_parity(official, tmp_path):
    report = convert_scgpt_checkpoint(
        official, tmp_path / "hf", repo_id="alice/small", source="scGPT test release", license="apache-2.0"
    )
    card = (tmp_path / "hf" / "README.md").read_text()
    metadata = card_metadata(card)
    assert metadata["license"] == "apache-2.0" and metadata["library_name"] == "transformers"
    assert report.parity.max_abs_diff is not None and report.parity.max_abs_diff < 1e-5
    assert metadata["parity_max_abs_diff"] == report.parity.max_abs_diff
    assert "Max |Δ| of cell embeddings against the official scGPT code on random cells: **" in card
    assert f"{report.parity.max_abs_diff:.2e}" in card and "official scGPT 0.2.4 TransformerModel" in card
    assert (
        f"`ScGPTForMaskedExpressionModeling` ({report.num_parameters:,} parameters): hidden size 32" in card
    )
    assert "3 layers, 4 attention heads" in card and "scGPT test release" in card
    assert "43 tokens in `vocab.json`" in card and "`<pad>` id 40 and `<cls>` id 41" in card
    assert 'AutoModel.from_pretrained("alice/small")' in card and "--base alice/small " in card
    assert "Parity, max |Δ| of cell embeddings vs the official scGPT code: " in report.summary()


def test_card_says_not_measured_without_the_official_code(official, tmp_path, monkeypatch):
    monkeypatch.setattr(parity_module, "official_source_root", lambda: None)
    report = convert_scgpt_checkpoint(official, tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert report.parity.max_abs_diff is None and "parity_max_abs_diff" not in card_metadata(card)
    assert "**not measured (the official scGPT 0.2.4 code is not installed)**" in card
    assert f'AutoModel.from_pretrained("{tmp_path / "hf"}")' in card  # no Hub id: the folder
    # the default source: the checkpoint's folder and file with its digest, no absolute path
    assert re.search(r"`official/best_model\.pt` \(SHA-256 `[0-9a-f]{64}`\)", card)


def test_parity_exposes_a_conversion_that_differs_from_the_official_model(official, tmp_path):
    convert_scgpt_checkpoint(official, tmp_path / "hf")
    model = ScGPTForMaskedExpressionModeling.from_pretrained(tmp_path / "hf")
    state = load_official_state_dict(official / "best_model.pt")
    vocab = json.loads((official / "vocab.json").read_text())
    assert measure_parity(model, state, vocab).max_abs_diff < 1e-5
    with torch.no_grad():  # one swapped projection, as a converter bug would leave it
        attention = model.scgpt.encoder.layer[1].attention.self
        attention.query.weight.copy_(attention.key.weight)
    assert measure_parity(model, state, vocab).max_abs_diff > 1e-3


def test_publishing_refuses_bad_input_before_touching_the_hub(official, tmp_path, monkeypatch, capsys):
    with HubServer() as hub:
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        assert (
            cli_main(["convert", "scgpt", str(official), str(tmp_path / "hf"), "--push-to-hub", "small"]) == 2
        )
        assert "Repo id 'small' has no namespace: use USER/NAME" in capsys.readouterr().err
        assert not (tmp_path / "hf").exists()  # refused before converting
        (tmp_path / "not-a-base").mkdir()
        (tmp_path / "not-a-base" / "config.json").write_text("{}")
        with pytest.raises(
            FileNotFoundError, match="lacks model.safetensors, vocab.json, README.md: not a base"
        ):
            push_base(tmp_path / "not-a-base", "alice/base")
        assert hub.requests == [] and hub.repos == {}
