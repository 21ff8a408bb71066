"""The scPEFT tuners on transformers' BERT, the architecture of Geneformer (model_type 'bert')."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

from scpeft_hf import EncoderAdapterConfig, PrefixAdapterConfig, TokenAdapterConfig


def tiny_bert(attn_implementation: str = "sdpa") -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=32,
        num_labels=3,
        attn_implementation=attn_implementation,
    )
    return BertForSequenceClassification(config).eval()


def gene_batch(length: int = 9) -> dict:
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(5, 50, (2, length), generator=generator)
    input_ids[:, 0] = 2  # <cls>
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, 6:] = 0
    attention_mask[1, 6:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


CONFIGS = {
    "encoder": lambda **kw: EncoderAdapterConfig(**kw),
    "token": lambda **kw: TokenAdapterConfig(**kw),
    "prefix": lambda **kw: PrefixAdapterConfig(**kw),
}


def test_defaults_target_geneformer_modules_and_train_the_classifier():
    encoder = get_peft_model(tiny_bert(), EncoderAdapterConfig())
    assert encoder.peft_config["default"].layers_to_transform == [0, 1]
    assert encoder.peft_config["default"].modules_to_save == ["classifier"]
    wrapped = {
        name for name, module in encoder.named_modules() if type(module).__name__ == "EncoderAdapterLayer"
    }
    assert wrapped == {f"base_model.model.bert.encoder.layer.{i}.attention.output" for i in (0, 1)}

    token = get_peft_model(tiny_bert(), TokenAdapterConfig())
    assert type(token.base_model.model.bert.embeddings.LayerNorm).__name__ == "TokenAdapterLayer"
    assert (
        type(token.base_model.model.bert.encoder.layer[0].attention.output.LayerNorm).__name__ == "LayerNorm"
    )

    prefix = get_peft_model(tiny_bert(), PrefixAdapterConfig())
    assert type(prefix.base_model.model.bert.encoder).__name__ == "PrefixAdapterLayer"
    trainable = sorted(name for name, p in prefix.named_parameters() if p.requires_grad)
    assert trainable == [
        "base_model.model.bert.encoder.scpeft_prefix_adapter_tokens.default",
        "base_model.model.classifier.modules_to_save.default.bias",
        "base_model.model.classifier.modules_to_save.default.weight",
    ]


@pytest.mark.parametrize("method", ["encoder", "token"])
def test_zero_init_bottleneck_adapters_are_an_identity_on_bert(method):
    batch = gene_batch()
    base = tiny_bert()
    with torch.no_grad():
        expected = base(**batch).logits
        model = get_peft_model(base, CONFIGS[method](modules_to_save=[]))
        assert torch.equal(model(**batch).logits, expected)


@pytest.mark.parametrize("method", ["encoder", "token", "prefix"])
def test_bert_round_trip_and_disable_adapter(method, tmp_path):
    batch = gene_batch()
    base_output = tiny_bert()(**batch).logits.detach()
    model = get_peft_model(tiny_bert(), CONFIGS[method](init_weights=False))
    with torch.no_grad():
        adapted = model(**batch).logits
        with model.disable_adapter():
            assert torch.equal(model(**batch).logits, base_output)
    assert (adapted - base_output).abs().max() > 1e-4
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, adapted)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_prefix_widens_berts_square_masks(attn_implementation):
    # BERT hands its layers a [B, 1, L, L] mask, boolean (sdpa) or additive (eager): a padded cell must give the
    # same logits as the cell alone
    padded = gene_batch()
    alone = {key: value[1:2, :6] for key, value in padded.items()}
    model = get_peft_model(
        tiny_bert(attn_implementation), PrefixAdapterConfig(num_tokens=3, init_weights=False)
    )
    with torch.no_grad():
        logits_padded = model(**padded).logits
        torch.testing.assert_close(logits_padded[1:2], model(**alone).logits, rtol=0, atol=1e-5)
        with model.disable_adapter():
            assert (model(**padded).logits - logits_padded).abs().max() > 1e-4


def test_prefix_slots_are_stripped_from_berts_recorded_hidden_states_and_attentions():
    # BERT records hidden states and attention maps with hooks on its layers, outside the wrapped encoder
    batch = gene_batch()
    model = get_peft_model(tiny_bert("eager"), PrefixAdapterConfig(num_tokens=3, init_weights=False))
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True, output_attentions=True)
        with model.disable_adapter():
            base = model(**batch, output_hidden_states=True, output_attentions=True)
    assert [h.shape[1] for h in output.hidden_states] == [9] * 5
    assert [a.shape[-2:] for a in output.attentions] == [(9, 9)] * 4
    assert torch.equal(output.hidden_states[0], base.hidden_states[0])  # the embeddings
    assert not torch.allclose(output.hidden_states[1], base.hidden_states[1])
