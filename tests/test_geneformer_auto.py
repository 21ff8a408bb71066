"""GeneformerConfig and the Auto classes: folders we write resolve to the Geneformer models, official "bert" folders
convert on load through `load_geneformer`, plain BERT stays BERT, and peft's SEQ_CLS flow trains the head."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from peft import AutoPeftModelForSequenceClassification, LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
)

from scpeft_hf import (
    GeneformerConfig,
    GeneformerForCellClassification,
    GeneformerForMaskedLM,
    GeneformerModel,
    geneformer_config,
    load_geneformer,
)
from scpeft_hf.errors import InvalidInputError
from scpeft_hf.models.geneformer import geneformer_config_from_bert
from tests.geneformer_helpers import HIDDEN, NUM_LAYERS, write_tiny_geneformer

N_GENES, NUM_LABELS = 36, 3
VOCAB = N_GENES + 4
TINY = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "num_hidden_layers": NUM_LAYERS,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def cell_batch(n_cells: int = 6, seed: int = 1) -> dict:
    """`<cls>` + ranked genes; the last cell is shorter and padded with `<pad>` = 0."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, VOCAB, (n_cells, 10), generator=generator)
    input_ids[:, 0] = 2
    attention_mask = torch.ones_like(input_ids)
    input_ids[-1, 7:], attention_mask[-1, 7:] = 0, 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return write_tiny_geneformer(tmp_path_factory.mktemp("official"), N_GENES, seed=3)


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    """A Geneformer classifier written by us (`model_type` "geneformer"), with mean pooling."""
    torch.manual_seed(4)
    model = GeneformerForCellClassification(
        geneformer_config("V2-104M", **TINY, num_labels=NUM_LABELS, cell_emb_style="mean")
    )
    folder = tmp_path_factory.mktemp("ours")
    model.save_pretrained(folder)
    return folder


# -- the config -------------------------------------------------------------------------------------------------


def test_config_has_its_own_model_type_and_geneformer_defaults():
    config = GeneformerConfig()
    assert isinstance(config, BertConfig) and config.model_type == "geneformer"
    # the defaults are V2-104M, not BERT-base
    assert (config.hidden_size, config.vocab_size, config.max_position_embeddings) == (768, 20_275, 4096)
    assert (config.hidden_act, config.cell_emb_style, config.cell_emb_layer) == ("relu", "cls", -2)
    assert type(geneformer_config("V1-10M")) is GeneformerConfig
    assert geneformer_config("V1-10M").cell_emb_style == "mean"
    with pytest.raises(StrictDataclassError, match="cell_emb_style='max'"):
        GeneformerConfig(cell_emb_style="max")
    with pytest.raises(InvalidInputError, match="^Bad Geneformer config field: cell_emb_style='max'; use"):
        geneformer_config("V2-104M", cell_emb_style="max")
    with pytest.raises(InvalidInputError, match="^Bad Geneformer config field: cell_emb_style='avg'"):
        geneformer_config_from_bert({"model_type": "bert"}, cell_emb_style="avg")
    with pytest.raises(InvalidInputError, match="Unknown Geneformer preset 'V3'"):
        geneformer_config("V3")


def test_bert_config_round_trip_keeps_every_field():
    config = geneformer_config("V1-10M", **TINY, num_labels=NUM_LABELS, class_weights=[1.0, 2.0, 0.5])
    bert = config.to_bert_config()
    assert type(bert) is BertConfig and not hasattr(bert, "cell_emb_style")
    back = geneformer_config_from_bert(bert, cell_emb_style="mean", class_weights=[1.0, 2.0, 0.5])
    assert back.to_dict() == config.to_dict()
    with pytest.raises(InvalidInputError, match="^The config holds a 'roberta' model; Geneformer"):
        geneformer_config_from_bert({"model_type": "roberta"})


# -- Auto classes -----------------------------------------------------------------------------------------------


def test_auto_classes_resolve_folders_we_write(classifier_folder):
    saved = json.loads((classifier_folder / "config.json").read_text())
    assert saved["model_type"] == "geneformer" and saved["cell_emb_style"] == "mean"
    config = AutoConfig.from_pretrained(classifier_folder)
    assert type(config) is GeneformerConfig and config.num_labels == NUM_LABELS

    classifier = AutoModelForSequenceClassification.from_pretrained(classifier_folder).eval()
    assert type(classifier) is GeneformerForCellClassification
    reference = GeneformerForCellClassification.from_pretrained(classifier_folder).eval()
    assert torch.equal(classifier.classifier.weight, reference.classifier.weight)
    encoder = AutoModel.from_pretrained(classifier_folder).eval()
    assert type(encoder) is GeneformerModel

    batch = cell_batch()
    with torch.no_grad():
        logits = classifier(**batch).logits
        output = encoder(**batch, output_hidden_states=True)
    torch.testing.assert_close(logits, reference(**batch).logits, rtol=0, atol=0)
    # the saved pooling (mean over real tokens of the second-to-last layer) is what AutoModel returns
    states, mask = output.hidden_states[-2], batch["attention_mask"]
    expected = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(output.cell_embedding, expected)
    assert not torch.allclose(output.cell_embedding, states[:, 0])


def test_auto_num_labels_builds_a_new_head_of_that_size(official, tmp_path):
    load_geneformer(official, "masked_lm").save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=7)
    assert type(model) is GeneformerForCellClassification
    assert model.classifier.out_features == 7 and model.config.num_labels == 7


def test_plain_bert_folders_are_not_hijacked(tmp_path):
    config = BertConfig(**TINY)
    BertModel(config).save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is BertConfig
    assert type(AutoModel.from_pretrained(tmp_path)) is BertModel
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path)) is BertForSequenceClassification
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path)) is BertForMaskedLM


# -- official folders -------------------------------------------------------------------------------------------


def test_official_folder_converts_on_load_and_resaves_as_geneformer(official, tmp_path):
    assert json.loads((official / "config.json").read_text())["model_type"] == "bert"
    assert type(AutoModel.from_pretrained(official)) is BertModel  # official folders are BERT to the Auto API

    model = load_geneformer(official, "masked_lm", dictionary_size=VOCAB, cell_emb_style="mean")
    assert type(model) is GeneformerForMaskedLM and type(model.config) is GeneformerConfig
    model.save_pretrained(tmp_path)  # the documented one-liner's second half
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["model_type"], saved["cell_emb_style"]) == ("geneformer", "mean")

    resaved = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(resaved) is GeneformerForMaskedLM
    reference = BertForMaskedLM.from_pretrained(official).eval()
    batch = cell_batch()
    with torch.no_grad():  # the pretraining head came along: masked-LM logits are the official model's
        torch.testing.assert_close(resaved(**batch).logits, reference(**batch).logits, rtol=0, atol=0)
    embedding = AutoModel.from_pretrained(tmp_path)
    assert type(embedding) is GeneformerModel and embedding.config.cell_emb_style == "mean"


def test_earlier_full_finetuned_bert_folder_keeps_its_head_and_pooling(classifier_folder, tmp_path):
    """Folders a full fine-tune wrote before GeneformerConfig: model_type "bert" with the cell fields in it."""
    fields = json.loads((classifier_folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**fields, "model_type": "bert"}))
    (tmp_path / "model.safetensors").write_bytes((classifier_folder / "model.safetensors").read_bytes())
    model = load_geneformer(tmp_path)
    reference = GeneformerForCellClassification.from_pretrained(classifier_folder)
    assert model.config.cell_emb_style == "mean" and model.config.num_labels == NUM_LABELS
    assert torch.equal(model.classifier.weight, reference.classifier.weight)


def test_models_built_from_a_plain_bert_config_get_a_geneformer_config():
    model = GeneformerForCellClassification(BertConfig(**TINY, num_labels=NUM_LABELS))
    assert type(model.config) is GeneformerConfig and model.config.cell_emb_style == "cls"
    assert model(**cell_batch()).logits.shape == (6, NUM_LABELS)


def test_load_geneformer_refuses_other_architectures_and_tasks(official, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "scgpt"}))
    with pytest.raises(InvalidInputError, match="holds a 'scgpt' model; Geneformer folders hold 'bert'"):
        load_geneformer(tmp_path)
    with pytest.raises(InvalidInputError, match="task='regression'; choose one of classification"):
        load_geneformer(official, "regression")


# -- peft's own SEQ_CLS flow ------------------------------------------------------------------------------------


def test_peft_seq_cls_on_the_auto_loaded_classifier_trains_and_saves_the_head(classifier_folder, tmp_path):
    base = AutoModelForSequenceClassification.from_pretrained(classifier_folder)
    frozen = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    # no target_modules: peft's defaults for "geneformer" are BERT's (query, value)
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, init_lora_weights=False))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(".query.lora_A." in name for name in trainable)
    assert any(".value.lora_B." in name for name in trainable)
    head = {name for name in trainable if ".classifier." in name}
    assert head and all("modules_to_save" in name for name in head)
    assert not any(".key." in name or "dense" in name or "embeddings" in name for name in trainable)

    batch, labels = cell_batch(), torch.tensor([0, 1, 2, 0, 1, 2])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(15):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    trained_head = model.base_model.model.classifier.modules_to_save["default"].weight
    assert not torch.equal(trained_head, frozen["classifier.weight"])
    for name, tensor in model.base_model.model.state_dict().items():  # the backbone itself never moved
        if "lora_" not in name and "modules_to_save" not in name:
            original = name.replace(".base_layer", "").replace("classifier.original_module", "classifier")
            assert torch.equal(tensor, frozen[original]), name

    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert "classifier" in saved["modules_to_save"]
    fresh_base = AutoModelForSequenceClassification.from_pretrained(classifier_folder)
    for reloaded in (
        PeftModel.from_pretrained(fresh_base, tmp_path),
        AutoPeftModelForSequenceClassification.from_pretrained(tmp_path),
    ):
        with torch.no_grad():
            torch.testing.assert_close(reloaded.eval()(**batch).logits, expected, rtol=0, atol=0)
