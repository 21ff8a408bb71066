"""Behaviour of the scGPT port as a transformers model: attention paths, pre-norm, padding, losses, saving."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

import scpeft_hf  # noqa: F401  (registers the Auto classes)
from scpeft_hf.models.scgpt import (
    ScGPTConfig,
    ScGPTForCellClassification,
    ScGPTForMaskedExpressionModeling,
    ScGPTModel,
)

PAD, CLS = 0, 1


def tiny_config(**overrides) -> ScGPTConfig:
    settings = dict(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD,
        cls_token_id=CLS,
        num_labels=3,
    )
    settings.update(overrides)
    return ScGPTConfig(**settings)


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def padded_batch(lengths=(9, 6, 4), seed=0):
    generator = torch.Generator().manual_seed(seed)
    length = max(lengths)
    ids = torch.full((len(lengths), length), PAD)
    values = torch.full((len(lengths), length), -2.0)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randperm(58, generator=generator)[:n] + 2
        ids[row, 0] = CLS
        values[row, :n] = torch.randint(0, 51, (n,), generator=generator).float()
        values[row, 0] = 0
    return ids, values, (ids != PAD).long()


def test_sdpa_and_eager_attention_agree_with_padding():
    model = randomize(ScGPTModel(tiny_config())).eval()
    ids, values, mask = padded_batch()
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa = model(ids, values, mask)
        eager = model(ids, values, mask, output_attentions=True)
    real = mask.bool()
    assert (sdpa.last_hidden_state - eager.last_hidden_state)[real].abs().max() <= 1e-5
    probs = eager.attentions[0]
    assert probs.shape == (3, 4, 9, 9)
    assert torch.allclose(probs.sum(-1), torch.ones(3, 4, 9))
    assert probs[2, :, :, 4:].abs().max() == 0  # padded keys receive no attention


def test_a_cell_embeds_the_same_alone_and_in_a_padded_batch():
    model = randomize(ScGPTModel(tiny_config())).eval()
    ids, values, mask = padded_batch()
    with torch.no_grad():
        batched = model(ids, values, mask).cell_embedding[2]
        alone = model(ids[2:, :4], values[2:, :4]).cell_embedding[0]
    assert (batched - alone).abs().max() <= 1e-5


@pytest.mark.parametrize("style", ["avg-pool", "w-pool"])
def test_pooled_embeddings_ignore_padding(style):
    model = randomize(ScGPTModel(tiny_config(cell_emb_style=style))).eval()
    ids, values, mask = padded_batch()
    with torch.no_grad():
        batched = model(ids, values, mask).cell_embedding[2]
        alone = model(ids[2:, :4], values[2:, :4]).cell_embedding[0]
    assert (batched - alone).abs().max() <= 1e-5


def test_pre_norm_layer_follows_scgpt_formula():
    """scGPT's pre-norm layer: h = norm1(x); x = h + SA(h); h = norm2(x); out = h + FFN(h)."""
    model = randomize(ScGPTModel(tiny_config(pre_norm=True, num_hidden_layers=1))).eval()
    layer = model.encoder.layer[0]
    attention = layer.attention.self
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        h = layer.attention.output.LayerNorm(x)
        q, k, v = (
            proj(h).view(2, 5, 4, 8).transpose(1, 2)
            for proj in (attention.query, attention.key, attention.value)
        )
        attended = F.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1) @ v
        mid = h + layer.attention.output.dense(attended.transpose(1, 2).reshape(2, 5, 32))
        h = layer.output.LayerNorm(mid)
        expected = h + layer.output.dense(torch.relu(layer.intermediate.dense(h)))
        got, _ = layer(x)
    assert (got - expected).abs().max() <= 1e-5


def test_gradient_checkpointing_gives_the_same_gradients():
    ids, values, mask = padded_batch()
    labels = torch.tensor([0, 2, 1])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = randomize(ScGPTForCellClassification(tiny_config())).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert all(layer.gradient_checkpointing for layer in model.scgpt.encoder.layer)
        model(ids, values, mask, labels=labels).loss.backward()
        grads.append(model.scgpt.encoder.layer[0].attention.self.query.weight.grad.clone())
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() <= 1e-6


def test_save_and_load_round_trip_is_bit_exact(tmp_path):
    model = randomize(ScGPTForCellClassification(tiny_config(class_weights=[1.0, 2.0, 0.5]))).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is ScGPTForCellClassification
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ids, values, mask = padded_batch()
    with torch.no_grad():
        assert torch.equal(model(ids, values, mask).logits, loaded(ids, values, mask).logits)
    assert loaded.config.class_weights == [1.0, 2.0, 0.5]


def test_auto_classes_resolve_scgpt(tmp_path):
    config = tiny_config()
    assert type(AutoConfig.for_model("scgpt")) is ScGPTConfig
    ScGPTForMaskedExpressionModeling(config).save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is ScGPTModel
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path)) is ScGPTForMaskedExpressionModeling


def test_classification_loss_uses_class_weights():
    model = randomize(ScGPTForCellClassification(tiny_config(class_weights=[1.0, 5.0, 0.2]))).eval()
    ids, values, mask = padded_batch()
    labels = torch.tensor([1, 2, 1])
    out = model(ids, values, mask, labels=labels)
    expected = F.cross_entropy(out.logits, labels, weight=torch.tensor([1.0, 5.0, 0.2]))
    assert torch.allclose(out.loss, expected)
    assert not torch.allclose(out.loss, F.cross_entropy(out.logits, labels))


def test_masked_expression_loss_covers_only_masked_positions():
    model = randomize(ScGPTForMaskedExpressionModeling(tiny_config())).eval()
    ids, values, mask = padded_batch()
    targets = values.clone()
    masked_values = values.clone()
    masked_values[:, 2] = -1.0  # mask_value at position 2 of every cell
    out = model(ids, masked_values, mask, labels=targets)
    expected = F.mse_loss(out.expression[:, 2], targets[:, 2]) + F.mse_loss(
        out.mvc_expression[:, 2], targets[:, 2]
    )
    assert torch.allclose(out.loss, expected, atol=1e-6)
    changed = targets.clone()
    changed[:, 3] += 10  # an unmasked position: the loss must not move
    assert torch.equal(model(ids, masked_values, mask, labels=changed).loss, out.loss)


def test_inputs_embeds_replace_the_gene_lookup():
    model = randomize(ScGPTModel(tiny_config())).eval()
    ids, values, mask = padded_batch()
    embeds = model.get_input_embeddings()(ids)
    with torch.no_grad():
        from_ids = model(ids, values, mask).last_hidden_state
        from_embeds = model(values=values, attention_mask=mask, inputs_embeds=embeds).last_hidden_state
    assert torch.equal(from_ids, from_embeds)


def test_missing_values_is_a_clear_error():
    model = ScGPTModel(tiny_config())
    with pytest.raises(ValueError, match="expression `values`"):
        model(torch.tensor([[CLS, 5]]))


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        ScGPTConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="cell_emb_style"):
        ScGPTConfig(cell_emb_style="max")
