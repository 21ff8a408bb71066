"""Official scGPT checkpoints convert exactly: parity with the official TransformerModel, and clear errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from scpeft_hf.cli import main as cli_main
from scpeft_hf.models.scgpt import (
    ScGPTForCellClassification,
    ScGPTForMaskedExpressionModeling,
    convert_scgpt_checkpoint,
)
from tests.official_scgpt import load_official_module

N_GENES = 40  # gene tokens; ids 0..39, then <pad>, <cls>, <eoc>
SMALL_ARGS = {
    "embsize": 32,
    "nheads": 4,
    "d_hid": 48,
    "nlayers": 3,
    "n_layers_cls": 3,
    "dropout": 0.2,
    "pad_token": "<pad>",
    "pad_value": -2,
    "mask_value": -1,
    "n_bins": 51,
    "input_emb_style": "continuous",
    "max_seq_len": 1200,
}


def small_vocab() -> dict[str, int]:
    vocab = {f"GENE{i}": i for i in range(N_GENES)}
    vocab.update({"<pad>": N_GENES, "<cls>": N_GENES + 1, "<eoc>": N_GENES + 2})
    # The official vocab.json is not sorted by id.
    return dict(sorted(vocab.items(), key=lambda item: item[0]))


def official_model(args: dict, vocab: dict, n_cls: int = 1, cell_emb_style: str = "cls", dropout=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = load_official_module("model/model.py")
    torch.manual_seed(0)
    model = module.TransformerModel(
        ntoken=len(vocab),
        d_model=args["embsize"],
        nhead=args["nheads"],
        d_hid=args["d_hid"],
        nlayers=args["nlayers"],
        nlayers_cls=args["n_layers_cls"],
        n_cls=n_cls,
        vocab=vocab,
        dropout=args["dropout"] if dropout is None else dropout,
        pad_token=args["pad_token"],
        pad_value=args["pad_value"],
        do_mvc=True,
        input_emb_style="continuous",
        cell_emb_style=cell_emb_style,
    )
    # Random, non-trivial values everywhere (LayerNorms and biases included) so a swapped tensor shows.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def write_official_folder(
    folder: Path, model, args: dict, vocab: dict, layout: str = "Wqkv", drop_cls: bool = True, extra=None
):
    """Save a model as the official release does: a plain state dict, args.json and vocab.json."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in model.state_dict().items():
        if drop_cls and key.startswith("cls_decoder."):
            continue
        if layout == "Wqkv":
            key = key.replace("self_attn.in_proj_weight", "self_attn.Wqkv.weight")
            key = key.replace("self_attn.in_proj_bias", "self_attn.Wqkv.bias")
        state[key] = tensor.clone()
    state["flag_encoder.weight"] = torch.randn(2, args["embsize"])  # pretraining-only, as in scGPT-human
    state.update(extra or {})
    torch.save(state, folder / "best_model.pt")
    (folder / "args.json").write_text(json.dumps(args))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return folder


def cell_batch(vocab: dict, batch: int = 4, length: int = 12, padded: bool = True, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(N_GENES, generator=generator)[:length] for _ in range(batch)])
    ids[:, 0] = vocab["<cls>"]
    values = torch.randint(1, 51, (batch, length), generator=generator).float()
    values[:, 0] = 0
    padding = torch.zeros(batch, length, dtype=torch.bool)
    if padded:
        for row, real in enumerate(torch.linspace(length // 2, length, batch).long().tolist()):
            padding[row, real:] = True
    ids[padding] = vocab["<pad>"]
    values[padding] = -2
    return ids, values, padding


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("layout", ["Wqkv", "in_proj"])
def test_converted_checkpoint_matches_official_model_in_eval(tmp_path, layout):
    vocab = small_vocab()
    reference = official_model(SMALL_ARGS, vocab).eval()
    src = write_official_folder(tmp_path / "official", reference, SMALL_ARGS, vocab, layout=layout)
    report = convert_scgpt_checkpoint(src, tmp_path / "hf")
    assert report.attention_layout == layout
    assert report.model_class == "ScGPTForMaskedExpressionModeling"
    assert report.unused_keys == ["flag_encoder.weight"]
    assert report.initialized_keys == []
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        ".scpeft-hf.json",
        "README.md",  # the model card, with the parity figure
        "config.json",
        "model.safetensors",
        "vocab.json",
    ]

    ours = ScGPTForMaskedExpressionModeling.from_pretrained(tmp_path / "hf").eval()
    ids, values, padding = cell_batch(vocab)
    with torch.no_grad():
        expected = reference(ids, values, padding, MVC=True)
        expected_tokens = reference._encode(ids, values, padding)
        got = ours(input_ids=ids, values=values, attention_mask=(~padding).long())
    real = ~padding
    assert max_diff(got.last_hidden_state[real], expected_tokens[real]) <= 1e-5
    assert max_diff(got.cell_embedding, expected["cell_emb"]) <= 1e-5
    assert max_diff(got.expression[real], expected["mlm_output"][real]) <= 1e-5
    assert max_diff(got.mvc_expression, expected["mvc_output"]) <= 1e-5
    # The outputs are not trivially equal: different cells give different embeddings.
    assert max_diff(got.cell_embedding[0], got.cell_embedding[1]) > 1e-2


def test_train_mode_without_dropout_matches_official(tmp_path):
    vocab = small_vocab()
    args = dict(SMALL_ARGS, dropout=0.0)
    reference = official_model(args, vocab).train()
    src = write_official_folder(tmp_path / "official", reference, args, vocab, layout="in_proj")
    convert_scgpt_checkpoint(src, tmp_path / "hf")
    ours = ScGPTForMaskedExpressionModeling.from_pretrained(tmp_path / "hf").train()
    ids, values, padding = cell_batch(vocab)
    expected = reference(ids, values, padding, MVC=True)
    got = ours(input_ids=ids, values=values, attention_mask=(~padding).long())
    real = ~padding
    assert max_diff(got.cell_embedding, expected["cell_emb"]) <= 1e-5
    assert max_diff(got.expression[real], expected["mlm_output"][real]) <= 1e-5
    assert max_diff(got.mvc_expression, expected["mvc_output"]) <= 1e-5


@pytest.mark.parametrize("style", ["avg-pool", "w-pool"])
def test_pooled_cell_embeddings_match_official_on_unpadded_cells(tmp_path, style):
    vocab = small_vocab()
    reference = official_model(SMALL_ARGS, vocab, cell_emb_style=style).eval()
    convert_scgpt_checkpoint(
        write_official_folder(tmp_path / "o", reference, SMALL_ARGS, vocab), tmp_path / "hf"
    )
    ours = ScGPTForMaskedExpressionModeling.from_pretrained(tmp_path / "hf", cell_emb_style=style).eval()
    ids, values, padding = cell_batch(vocab, padded=False)
    with torch.no_grad():
        expected = reference(ids, values, padding)["cell_emb"]
        got = ours(input_ids=ids, values=values).cell_embedding
    assert max_diff(got, expected) <= 1e-5


def test_fine_tuned_classifier_checkpoint_converts_with_its_head(tmp_path):
    vocab = small_vocab()
    reference = official_model(SMALL_ARGS, vocab, n_cls=6).eval()
    src = write_official_folder(tmp_path / "official", reference, SMALL_ARGS, vocab, drop_cls=False)
    report = convert_scgpt_checkpoint(src, tmp_path / "hf")
    assert report.model_class == "ScGPTForCellClassification"
    assert "decoder.fc.0.weight" in report.unused_keys and "mvc_decoder.W.weight" in report.unused_keys
    ours = ScGPTForCellClassification.from_pretrained(tmp_path / "hf").eval()
    assert ours.config.num_labels == 6 and ours.config.num_cls_layers == 3
    ids, values, padding = cell_batch(vocab)
    with torch.no_grad():
        expected = reference(ids, values, padding, CLS=True)["cls_output"]
        got = ours(input_ids=ids, values=values, attention_mask=(~padding).long()).logits
    assert max_diff(got, expected) <= 1e-5


def test_classifier_from_pretrained_checkpoint_initialises_only_the_head(tmp_path):
    vocab = small_vocab()
    reference = official_model(SMALL_ARGS, vocab).eval()
    convert_scgpt_checkpoint(
        write_official_folder(tmp_path / "o", reference, SMALL_ARGS, vocab), tmp_path / "hf"
    )
    model, info = ScGPTForCellClassification.from_pretrained(
        tmp_path / "hf", num_labels=5, output_loading_info=True
    )
    assert info["missing_keys"] and all(key.startswith("classifier.") for key in info["missing_keys"])
    ids, values, padding = cell_batch(vocab)
    with torch.no_grad():
        expected = reference(ids, values, padding)["cell_emb"]
        got = model.eval()(input_ids=ids, values=values, attention_mask=(~padding).long())
    assert max_diff(got.cell_embedding, expected) <= 1e-5
    assert got.logits.shape == (4, 5)


def test_cli_convert_prints_unused_and_fresh_weights(tmp_path, capsys):
    vocab = small_vocab()
    src = write_official_folder(tmp_path / "official", official_model(SMALL_ARGS, vocab), SMALL_ARGS, vocab)
    assert cli_main(["convert", "scgpt", str(src), str(tmp_path / "hf")]) == 0
    printed = capsys.readouterr().out
    assert "flag_encoder.weight" in printed
    assert "no cls_decoder" in printed


# ------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def official_folder(tmp_path):
    vocab = small_vocab()
    return write_official_folder(tmp_path / "official", official_model(SMALL_ARGS, vocab), SMALL_ARGS, vocab)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("missing", ["args.json", "vocab.json", "best_model.pt"])
def test_missing_file_is_named(official_folder, tmp_path, missing):
    (official_folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        convert_scgpt_checkpoint(official_folder, tmp_path / "hf")
    assert_nothing_written(tmp_path / "hf")


def test_vocab_that_does_not_fit_the_embedding(official_folder, tmp_path):
    vocab = json.loads((official_folder / "vocab.json").read_text())
    vocab["EXTRA"] = len(vocab)
    (official_folder / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match=r"44 tokens but the checkpoint's gene embedding has 43 rows"):
        convert_scgpt_checkpoint(official_folder, tmp_path / "hf")
    assert_nothing_written(tmp_path / "hf")


def test_unknown_attention_keys(tmp_path):
    vocab = small_vocab()
    model = official_model(SMALL_ARGS, vocab)
    extra = {"transformer_encoder.layers.0.self_attn.q_proj.weight": torch.zeros(32, 32)}
    src = write_official_folder(tmp_path / "official", model, SMALL_ARGS, vocab, extra=extra)
    with pytest.raises(ValueError, match=r"self_attn\.q_proj\.weight.*Known attention layouts"):
        convert_scgpt_checkpoint(src, tmp_path / "hf")
    assert_nothing_written(tmp_path / "hf")


class NotATensor:
    def __init__(self):
        self.payload = "arbitrary object"


def test_pickle_refused_by_weights_only(official_folder, tmp_path):
    torch.save(
        {"encoder.embedding.weight": torch.zeros(3, 3), "obj": NotATensor()},
        official_folder / "best_model.pt",
    )
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_scgpt_checkpoint(official_folder, tmp_path / "hf")
    assert_nothing_written(tmp_path / "hf")


def test_existing_output_is_not_overwritten(official_folder, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli_main(["convert", "scgpt", str(official_folder), str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------------------------------- real size


@pytest.mark.slow
def test_scgpt_human_size_converts_and_counts_parameters(tmp_path):
    """The whole-human architecture (random weights): 60,697 tokens, d 512, 12 layers, 8 heads."""
    vocab = {f"GENE{i}": i for i in range(60694)} | {"<pad>": 60694, "<cls>": 60695, "<eoc>": 60696}
    args = dict(SMALL_ARGS, embsize=512, nheads=8, d_hid=512, nlayers=12)
    reference = official_model(args, vocab)
    src = write_official_folder(tmp_path / "official", reference, args, vocab)
    report = convert_scgpt_checkpoint(src, tmp_path / "hf")
    official_count = sum(
        p.numel() for k, p in reference.named_parameters() if not k.startswith("cls_decoder.")
    )
    assert report.num_parameters == official_count
    assert 51.0e6 < report.num_parameters < 51.6e6
    model = ScGPTForCellClassification.from_pretrained(tmp_path / "hf", num_labels=10)
    assert model.get_input_embeddings().weight.shape == (60697, 512)
    print(f"scGPT-human size: {report.num_parameters:,} parameters (masked-expression model)")
