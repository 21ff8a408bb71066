"""scGPT's integration objective term by term against hand-computed values; gradient reversal; DSBN statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scpeft_hf.data import BatchGroupedSampler, ScGPTDataCollator
from scpeft_hf.models.scgpt import ScGPTConfig, ScGPTForBatchIntegration, ScGPTModel
from scpeft_hf.models.scgpt.batch_modules import (
    DSBN_EPS,
    ScGPTBatchDiscriminator,
    ScGPTDomainSpecificBatchNorm,
    elastic_cell_similarity_loss,
    reverse_gradient,
)
from scpeft_hf.models.scgpt.modeling_scgpt_pretraining import masked_mse

PAD, CLS = 0, 1


def tiny_config(**overrides) -> ScGPTConfig:
    settings = dict(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD,
        cls_token_id=CLS,
        num_batch_labels=2,
        use_batch_labels=True,
        domain_spec_batchnorm=True,
        use_batch_discriminator=True,
    )
    settings.update(overrides)
    return ScGPTConfig(**settings)


def test_masked_value_mse_counts_only_masked_positions():
    prediction = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    target = torch.tensor([[1.0, 0.0, 5.0, 9.0]])
    masked = torch.tensor([[False, True, True, False]])
    # ((2 - 0)^2 + (3 - 5)^2) / 2 masked positions
    assert masked_mse(prediction, target, masked).item() == pytest.approx(4.0)


def test_ecs_matches_hand_computed_value():
    cells = torch.tensor([[1.0, 0.0], [3.0, 3.0]])  # cosine 1/sqrt(2), scale does not matter
    cosine = 1 / math.sqrt(2)
    diagonal, off_diagonal = 1 - 0.8**2, 1 - (cosine - 0.8) ** 2
    expected = (2 * diagonal + 2 * off_diagonal) / 4
    assert elastic_cell_similarity_loss(cells, 0.8).item() == pytest.approx(expected, abs=1e-6)
    # Negative similarities are not optimised: they count as 0, like the masked diagonal.
    opposite = torch.tensor([[1.0, 0.0], [-2.0, 0.0]])
    assert elastic_cell_similarity_loss(opposite, 0.8).item() == pytest.approx(1 - 0.64, abs=1e-6)


def test_dab_cross_entropy_matches_hand_computed_value():
    discriminator = ScGPTBatchDiscriminator(tiny_config(num_batch_labels=3))
    with torch.no_grad():
        discriminator.out_layer.weight.zero_()
        discriminator.out_layer.bias.copy_(torch.tensor([0.0, math.log(3.0), 0.0]))  # p = 1/5, 3/5, 1/5
    logits = discriminator(torch.randn(2, 8))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0]))
    assert loss.item() == pytest.approx((-math.log(0.6) + math.log(5.0)) / 2, abs=1e-6)


def test_gradient_reversal_flips_the_sign_of_the_gradient():
    inputs = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    weights = torch.tensor([0.5, 2.0, -1.0])
    (reverse_gradient(inputs) * weights).sum().backward()
    assert torch.equal(inputs.grad, -weights)
    assert torch.equal(reverse_gradient(inputs), inputs)

    # In the discriminator: the encoder side gets minus the gradient the discriminator's own layers see.
    torch.manual_seed(0)
    discriminator = ScGPTBatchDiscriminator(tiny_config())
    cells = torch.randn(4, 8, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0])
    torch.nn.functional.cross_entropy(discriminator(cells), labels).backward()
    reversed_grad = cells.grad.clone()
    cells.grad = None
    hidden = cells
    for layer in discriminator.layers:
        hidden = layer(hidden)
    torch.nn.functional.cross_entropy(discriminator.out_layer(hidden), labels).backward()
    assert reversed_grad.abs().sum() > 0
    assert torch.allclose(reversed_grad, -cells.grad)


def dsbn_with_known_statistics() -> ScGPTDomainSpecificBatchNorm:
    dsbn = ScGPTDomainSpecificBatchNorm(tiny_config())
    dsbn.bns[0].running_mean.fill_(0.0)
    dsbn.bns[0].running_var.fill_(1.0)
    dsbn.bns[1].running_mean.fill_(5.0)
    dsbn.bns[1].running_var.fill_(4.0)
    return dsbn


def test_dsbn_in_eval_normalises_each_cell_with_its_own_batch_statistics():
    dsbn = dsbn_with_known_statistics().eval()
    embeddings = torch.full((2, 3, 8), 7.0)
    keep = torch.ones(2, 3, dtype=torch.bool)
    out = dsbn(embeddings, torch.tensor([0, 1]), keep)
    assert torch.allclose(out[0], torch.full((3, 8), 7.0 / math.sqrt(1 + DSBN_EPS)))
    assert torch.allclose(out[1], torch.full((3, 8), 2.0 / math.sqrt(4 + DSBN_EPS)))


def test_dsbn_in_training_uses_and_updates_only_the_cells_own_batch_statistics():
    dsbn = dsbn_with_known_statistics().train()
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(4, 5, 8, generator=generator)
    embeddings[2:] += 10.0  # batch 1's cells sit elsewhere
    keep = torch.ones(4, 5, dtype=torch.bool)
    keep[1, 3:] = False  # padding: neither normalised nor counted
    labels = torch.tensor([0, 0, 1, 1])
    out = dsbn(embeddings, labels, keep)
    for label, rows in ((0, [0, 1]), (1, [2, 3])):
        tokens = embeddings[rows][keep[rows]]
        mean, var = tokens.mean(0), tokens.var(0, unbiased=False)
        expected = (tokens - mean) / torch.sqrt(var + DSBN_EPS)
        assert torch.allclose(out[rows][keep[rows]], expected, atol=1e-5)
        start_mean = 0.0 if label == 0 else 5.0
        assert torch.allclose(dsbn.bns[label].running_mean, 0.9 * start_mean + 0.1 * mean, atol=1e-5)
    assert torch.equal(out[1, 3:], embeddings[1, 3:])


def test_dsbn_unseen_batch_uses_the_mean_statistics_in_eval_and_is_refused_in_training():
    dsbn = dsbn_with_known_statistics().eval()
    embeddings = torch.full((1, 2, 8), 7.0)
    keep = torch.ones(1, 2, dtype=torch.bool)
    out = dsbn(embeddings, torch.tensor([-1]), keep)
    assert torch.allclose(out, torch.full((1, 2, 8), (7.0 - 2.5) / math.sqrt(2.5 + DSBN_EPS)))
    with pytest.raises(ValueError, match="out of range"):
        dsbn(embeddings, torch.tensor([2]), keep)
    with pytest.raises(ValueError, match="only allowed in eval mode"):
        dsbn.train()(embeddings, torch.tensor([-1]), keep)


def integration_inputs():
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(2, 30, (4, 7), generator=generator)
    ids[:, 0] = CLS
    target = torch.randint(0, 51, (4, 7), generator=generator).float()
    target[:, 0] = 0
    values = target.clone()
    values[:, 2:5] = -1.0
    return ids, values, target, torch.tensor([0, 0, 1, 1])


def test_integration_loss_is_the_weighted_sum_of_the_switchable_terms():
    torch.manual_seed(0)
    model = ScGPTForBatchIntegration(tiny_config()).eval()
    ids, values, target, batch_labels = integration_inputs()
    out = model(input_ids=ids, values=values, labels=target, batch_labels=batch_labels)
    gep, gepc, ecs, dab = out.loss_terms.tolist()
    assert min(gep, gepc, ecs, dab) > 0
    assert out.loss.item() == pytest.approx(gep + gepc + 10 * ecs + dab, rel=1e-5)
    masked = values == -1
    assert gep == pytest.approx(masked_mse(out.expression, target, masked).item(), rel=1e-5)
    for term, index in (("gep", 0), ("gepc", 1), ("ecs", 2), ("dab", 3)):
        model.config.update({f"{term}_weight": 0.0})
        without = model(input_ids=ids, values=values, labels=target, batch_labels=batch_labels)
        model.config.update({f"{term}_weight": 10.0 if term == "ecs" else 1.0})
        assert without.loss_terms[index].item() == 0.0
        weight = 10.0 if term == "ecs" else 1.0
        assert without.loss.item() == pytest.approx(
            out.loss.item() - weight * out.loss_terms[index].item(), rel=1e-5
        )


def test_batch_embedding_feeds_the_decoders_but_not_the_cell_embedding():
    config = tiny_config(domain_spec_batchnorm=False)
    torch.manual_seed(0)
    model = ScGPTForBatchIntegration(config).eval()
    assert model.decoder.fc[0].in_features == 16 and model.mvc_decoder.W.out_features == 16
    ids, values, target, _ = integration_inputs()
    first = model(input_ids=ids, values=values, batch_labels=torch.zeros(4, dtype=torch.long))
    second = model(input_ids=ids, values=values, batch_labels=torch.ones(4, dtype=torch.long))
    assert torch.equal(first.cell_embedding, second.cell_embedding)
    assert (first.expression - second.expression).abs().max() > 0.1 * first.expression.abs().max()


def test_batch_modules_need_a_batch_count_and_batch_labels():
    with pytest.raises(ValueError, match="num_batch_labels"):
        tiny_config(num_batch_labels=None)
    model = ScGPTModel(tiny_config())
    ids, values, _, _ = integration_inputs()
    with pytest.raises(ValueError, match="batch_labels"):
        model(input_ids=ids, values=values)


def test_collator_passes_batch_labels_and_sampler_keeps_batches_apart():
    collator = ScGPTDataCollator(pad_token_id=PAD, mlm_probability=0.4)
    rows = [
        {"input_ids": [CLS, 5, 6, 7, 8, 9], "values": [0, 1, 2, 3, 4, 5], "batch_labels": b} for b in (1, 0)
    ]
    batch = collator(rows)
    assert batch["batch_labels"].tolist() == [1, 0]
    assert (batch["values"] == -1).sum(1).tolist() == [2, 2]  # floor(0.4 * 5 genes)

    labels = np.array([0, 1, 2, 0, 1, 2, 0, 0, 0, 1])
    sampler = BatchGroupedSampler(labels, batch_size=2, seed=0)
    first = list(sampler)
    assert len(first) == len(sampler) == 6  # batch 0: 5 cells -> 3, batch 1: 3 -> 2, batch 2: 2 -> 1
    assert all(len(set(labels[chunk])) == 1 for chunk in first)
    assert sorted(i for chunk in first for i in chunk) == list(range(10))
    assert list(sampler) != first  # a new order every epoch
    sampler.set_epoch(0)
    assert list(sampler) == first
