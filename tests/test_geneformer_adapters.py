"""Geneformer checkpoints load into transformers' BERT, and all four scPEFT adapters behave as on scGPT."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import BertForMaskedLM

from scpeft_hf import GeneformerForCellClassification, geneformer_config, load_geneformer
from scpeft_hf.models.geneformer import GENEFORMER_PRESETS, pool_cell_embedding
from scpeft_hf.tasks.methods import peft_config
from tests.geneformer_helpers import HIDDEN, NUM_LAYERS, write_tiny_geneformer
from tests.tuner_helpers import METHODS, adapter_parameter_count, method_config

N_GENES, NUM_LABELS = 36, 3
VOCAB = N_GENES + 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_geneformer(tmp_path_factory.mktemp("geneformer"), N_GENES)


def classifier(folder, seed: int = 0) -> GeneformerForCellClassification:
    torch.manual_seed(seed)  # the same seed gives the same fresh head: a "fresh base model" for round trips
    return load_geneformer(folder, num_labels=NUM_LABELS, dictionary_size=VOCAB, cell_emb_style="cls").eval()


def cell_batch() -> dict:
    """`<cls>` + ranked genes + `<eos>`; the second cell is shorter and padded with `<pad>` = 0."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(4, VOCAB, (2, 10), generator=generator)
    input_ids[:, 0], input_ids[0, -1], input_ids[1, 6] = 2, 3, 3
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, 7:], attention_mask[1, 7:] = 0, 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


# -- loading ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_official_folder_loads_every_backbone_weight(tmp_path, weights):
    folder = write_tiny_geneformer(tmp_path, N_GENES, weights=weights, seed=5)
    reference = BertForMaskedLM.from_pretrained(folder)
    model = load_geneformer(folder, num_labels=NUM_LABELS)
    assert model.bert.pooler is None
    assert model.bert.state_dict().keys() == {
        k.removeprefix("bert.") for k in reference.state_dict() if k.startswith("bert.")
    }
    for name, tensor in model.bert.state_dict().items():
        assert torch.equal(tensor, reference.bert.state_dict()[name]), name


def test_vocab_size_must_match_the_token_dictionary(folder):
    with pytest.raises(ValueError, match="vocab_size 40 but the token dictionary has 41 tokens"):
        load_geneformer(folder, dictionary_size=41)


def test_classifier_reads_the_first_token_and_weights_the_loss(folder):
    model = load_geneformer(folder, num_labels=NUM_LABELS, class_weights=[1.0, 0.0, 0.0])
    batch = cell_batch()
    with torch.no_grad():
        output = model(**batch, labels=torch.tensor([1, 2]), output_hidden_states=True)
        expected = model.classifier(output.hidden_states[-1][:, 0])
    torch.testing.assert_close(output.logits, expected, rtol=0, atol=0)
    assert output.loss.isnan()  # both labels have weight 0: the weights are applied
    torch.testing.assert_close(output.cell_embedding, output.hidden_states[-2][:, 0], rtol=0, atol=0)


def test_mean_cell_embedding_ignores_padding():
    hidden = torch.arange(24.0).view(2, 3, 4)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    pooled = pool_cell_embedding(hidden, mask, "mean")
    torch.testing.assert_close(pooled, torch.stack([hidden[0].mean(0), hidden[1, 0]]))
    assert torch.equal(pool_cell_embedding(hidden, mask, "cls"), hidden[:, 0])


def test_presets_have_the_published_sizes():
    assert set(GENEFORMER_PRESETS) == {"V1-10M", "V2-104M", "V2-316M"}
    v1 = geneformer_config("V1-10M")
    assert (v1.hidden_size, v1.num_hidden_layers, v1.num_attention_heads, v1.intermediate_size) == (
        256,
        6,
        4,
        512,
    )
    assert (v1.max_position_embeddings, v1.vocab_size, v1.hidden_act) == (2048, 25_426, "relu")
    v2 = geneformer_config("V2-316M")
    assert (v2.hidden_size, v2.num_hidden_layers, v2.num_attention_heads, v2.intermediate_size) == (
        1152,
        18,
        18,
        4608,
    )
    assert (v2.max_position_embeddings, v2.vocab_size, v2.layer_norm_eps) == (4096, 20_275, 1e-12)


# -- the four adapters, as in tests/test_tuners_scgpt.py ----------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_default_configs_attach_without_target_names_and_train_only_adapter_and_head(folder, method):
    model = get_peft_model(classifier(folder), method_config(method, modules_to_save=["classifier"]))
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    head = {name: n for name, n in trainable.items() if ".classifier." in name}
    assert sum(head.values()) == HIDDEN * NUM_LABELS + NUM_LABELS
    assert all("modules_to_save" in name for name in head)
    adapter = sum(trainable.values()) - sum(head.values())
    assert adapter == adapter_parameter_count(method, HIDDEN, NUM_LAYERS)


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_on_a_fresh_base_is_bit_exact(folder, method, tmp_path):
    batch = cell_batch()
    model = get_peft_model(
        classifier(folder), method_config(method, identity=False, modules_to_save=["classifier"])
    )
    with torch.no_grad():
        adapted = model(**batch)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(classifier(folder, seed=7), tmp_path)  # another fresh head: restored
    with torch.no_grad():
        again = loaded(**batch)
    assert torch.equal(again.logits, adapted.logits)
    assert torch.equal(again.cell_embedding, adapted.cell_embedding)


@pytest.mark.parametrize("method", METHODS)
def test_adapter_is_active_in_eval_no_grad_and_inference_mode(folder, method):
    batch = cell_batch()
    model = get_peft_model(
        classifier(folder), method_config(method, identity=False, modules_to_save=["classifier"])
    )
    model.train()  # dropout is 0 in the tiny model, so train and eval compute the same thing
    training = model(**batch).logits.detach()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, training)
        with model.disable_adapter():
            base = model(**batch).logits
    with torch.inference_mode():
        assert torch.equal(model(**batch).logits, training)
    assert (training - base).abs().max() > 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_disable_adapter_gives_exactly_the_base_output(folder, method):
    batch = cell_batch()
    with torch.no_grad():
        base = classifier(folder)(**batch)
        model = get_peft_model(classifier(folder), method_config(method, identity=False, modules_to_save=[]))
        with model.disable_adapter():
            disabled = model(**batch)
    assert torch.equal(disabled.logits, base.logits)
    assert torch.equal(disabled.cell_embedding, base.cell_embedding)


@pytest.mark.parametrize("method", METHODS)
def test_zero_init_adapter_gives_exactly_the_base_output(folder, method):
    batch = cell_batch()
    with torch.no_grad():
        base = classifier(folder)(**batch).logits
        model = get_peft_model(classifier(folder), method_config(method, modules_to_save=[]))
        output = model(**batch).logits
    if method == "prefix":  # zero tokens still take part in attention (as in scPEFT): not an identity
        assert (output - base).abs().max() > 0
    else:
        assert torch.equal(output, base)


@pytest.mark.parametrize("method", METHODS)
def test_one_training_step_moves_the_adapter_and_the_head(folder, method):
    batch = cell_batch()
    model = get_peft_model(classifier(folder), peft_config(method, classifier(folder)))
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(**batch, labels=torch.tensor([0, 2])).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert any(".classifier." in n for n in changed) and any(".classifier." not in n for n in changed)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


@pytest.mark.slow
def test_trainable_parameters_at_v2_104m_size(capsys):
    """The numbers quoted in the Geneformer issue's closing note (10 cell types, random init)."""
    counts = {}
    for method in (*METHODS, "full"):
        torch.manual_seed(0)
        model = GeneformerForCellClassification(geneformer_config("V2-104M", num_labels=10))
        total = sum(p.numel() for p in model.parameters())
        if method != "full":
            model = get_peft_model(model, peft_config(method, model))
        counts[method] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = 768 * 10 + 10
    assert counts["full"] == total
    for method in METHODS:
        assert counts[method] == adapter_parameter_count(method, 768, 12) + head
    with capsys.disabled():
        print("\nV2-104M trainable parameters (10 classes):")
        for method, n in counts.items():
            print(f"  {method:8s} {n:>12,} ({100 * n / total:.3f}% of {total:,})")


def test_prefix_adapter_with_mean_pooling_pools_only_the_cells_tokens(folder):
    """The mean cell embedding is taken inside the model, from BERT's hidden states: the prefix slots must be
    gone by then, or the mask (length L) and the states (length L + n) do not line up."""
    torch.manual_seed(0)
    base = load_geneformer(folder, num_labels=NUM_LABELS, dictionary_size=VOCAB, cell_emb_style="mean").eval()
    model = get_peft_model(base, method_config("prefix", identity=False)).eval()
    batch = cell_batch()
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True)
    layer = output.hidden_states[-2]
    assert layer.shape[1] == batch["input_ids"].shape[1]
    assert torch.allclose(output.cell_embedding, pool_cell_embedding(layer, batch["attention_mask"], "mean"))
    # the prefix tokens act on the cell (layers 0-1 of 4 are prefixed, the embedding is read after layer 3)
    with torch.no_grad(), model.disable_adapter():
        assert not torch.allclose(model(**batch).cell_embedding, output.cell_embedding)
