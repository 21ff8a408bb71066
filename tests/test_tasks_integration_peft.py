"""Integration under PEFT: adapters, decoders, discriminator, batch embedding and DSBN statistics train and are
saved; the backbone stays frozen; a reload embeds identically."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from scpeft_hf.data import BatchGroupedSampler, ScGPTDataCollator
from scpeft_hf.models.scgpt import ScGPTConfig, ScGPTForBatchIntegration, ScGPTForMaskedExpressionModeling
from scpeft_hf.tasks.integration import INTEGRATION_MODULES, IntegrationSettings, integration_model
from scpeft_hf.tasks.methods import prepare_model

PAD, CLS = 0, 1
HEADS = list(INTEGRATION_MODULES)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    config = ScGPTConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD,
        cls_token_id=CLS,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base")
    ScGPTForMaskedExpressionModeling(config).save_pretrained(folder)
    return folder


def load(base_dir, seed: int) -> ScGPTForBatchIntegration:
    torch.manual_seed(seed)  # fresh heads differ between seeds: a reload must not rely on them
    return integration_model(base_dir, IntegrationSettings(), num_batches=2)


def cells(n: int = 12, length: int = 10):
    generator = torch.Generator().manual_seed(1)
    rows = []
    for index in range(n):
        genes = (torch.randperm(38, generator=generator)[: length - 1] + 2).tolist()
        values = torch.randint(1, 51, (length - 1,), generator=generator).tolist()
        rows.append({"input_ids": [CLS, *genes], "values": [0, *values], "batch_labels": index % 2})
    return rows


def test_dsbn_statistics_missing_from_a_base_checkpoint_are_initialised(base_dir):
    """from_pretrained materialises modules absent from the checkpoint with torch.empty and then calls
    `_init_weights`: DSBN's buffers must be set there, or they hold whatever memory held (NaN seen in practice)."""
    model = load(base_dir, seed=0)
    for bn in model.scgpt.dsbn.bns:
        assert torch.equal(bn.running_mean, torch.zeros(16)) and torch.equal(bn.running_var, torch.ones(16))
        bn.running_mean.fill_(float("nan"))
        bn.running_var.fill_(float("nan"))
        bn.num_batches_tracked.fill_(12345)
        model._init_weights(bn)
        assert torch.equal(bn.running_mean, torch.zeros(16)) and torch.equal(bn.running_var, torch.ones(16))
        assert int(bn.num_batches_tracked) == 0


@pytest.mark.parametrize("method", ["encoder", "lora", "prefix"])
def test_peft_trains_heads_and_dsbn_keeps_backbone_frozen_and_reloads_identically(base_dir, tmp_path, method):
    model, _ = prepare_model(load(base_dir, seed=0), method, modules_to_save=HEADS)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    for head in ("decoder", "mvc_decoder", "batch_encoder", "batch_discriminator"):
        assert any(f"{head}.modules_to_save" in name for name in trainable), head
    assert not any(".dsbn." in name for name in trainable)  # affine=False: statistics only

    rows = cells()
    collator = ScGPTDataCollator(pad_token_id=PAD, mlm_probability=0.4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for chunk in BatchGroupedSampler([row["batch_labels"] for row in rows], batch_size=3, seed=0):
        loss = model(**collator([rows[i] for i in chunk])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    after = model.state_dict()
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    backbone = {name for name in after if ".scgpt." in name and "modules_to_save" not in name}
    backbone -= {name for name in backbone if any(tag in name for tag in ("adapter", "lora_", "prefix"))}
    assert backbone and not (changed & backbone), sorted(changed & backbone)[:5]
    for tag in ("decoder.modules_to_save", "batch_discriminator.modules_to_save", "dsbn.modules_to_save"):
        assert any(tag in name for name in changed), tag
    for bn_index in (0, 1):  # each batch's running statistics moved
        assert any(f"dsbn.modules_to_save.default.bns.{bn_index}.running_mean" in name for name in changed)

    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load(base_dir, seed=123), tmp_path / "adapter").eval()
    model.eval()
    batch = ScGPTDataCollator(pad_token_id=PAD, training=False)(rows)
    with torch.no_grad():
        expected, got = model(**batch), reloaded(**batch)
    assert torch.equal(got.cell_embedding, expected.cell_embedding)
    assert torch.equal(got.expression, expected.expression)
    assert torch.equal(got.batch_logits, expected.batch_logits)
    with torch.no_grad(), model.disable_adapter():  # the adapter and DSBN statistics matter
        plain = model(**batch)
    assert not torch.allclose(plain.cell_embedding, expected.cell_embedding)


def test_full_fine_tuned_model_saves_dsbn_statistics_and_reloads_identically(base_dir, tmp_path):
    model, _ = prepare_model(load(base_dir, seed=0), "full")
    rows = cells()
    collator = ScGPTDataCollator(pad_token_id=PAD, mlm_probability=0.4)
    model.train()
    for chunk in BatchGroupedSampler([row["batch_labels"] for row in rows], batch_size=3, seed=0):
        model(**collator([rows[i] for i in chunk])).loss.backward()
    assert int(model.scgpt.dsbn.bns[1].num_batches_tracked) == 2
    model.save_pretrained(tmp_path / "full")
    reloaded = ScGPTForBatchIntegration.from_pretrained(tmp_path / "full").eval()
    assert torch.equal(reloaded.scgpt.dsbn.bns[1].running_var, model.scgpt.dsbn.bns[1].running_var)
    batch = ScGPTDataCollator(pad_token_id=PAD, training=False)(rows)
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).cell_embedding, model.eval()(**batch).cell_embedding)
