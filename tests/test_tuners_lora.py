"""scPEFT's LoRA is peft's own LoraConfig on the query/value projections: merging adds the update exactly once."""

from __future__ import annotations

import copy

import torch
from peft import get_peft_model

from scpeft_hf import scpeft_lora_config

from .tuner_helpers import NUM_LAYERS, cell_batch, tiny_scgpt


def trained_lora_model():
    model = get_peft_model(tiny_scgpt(), scpeft_lora_config(num_layers=NUM_LAYERS, init_lora_weights=False))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    return model


def test_merge_and_unload_matches_the_unmerged_model():
    batch = cell_batch()
    model = trained_lora_model()
    with torch.no_grad():
        unmerged = model(**batch).logits
        base = model.get_base_model()
        with model.disable_adapter():
            base_output = model(**batch).logits
        merged_model = model.merge_and_unload()
        merged = merged_model(**batch).logits
    assert (unmerged - base_output).abs().max() > 1e-3
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    assert base is merged_model
    assert type(merged_model.scgpt.encoder.layer[0].attention.self.query).__name__ == "Linear"


def test_merged_update_is_counted_once_even_after_eval():
    # the official code adds LoRA's update a second time after .eval() merges it; peft must not
    batch = cell_batch()
    model = trained_lora_model()
    query = model.base_model.model.scgpt.encoder.layer[0].attention.self.query
    weight_before = query.base_layer.weight.detach().clone()
    delta = (query.lora_B["default"].weight @ query.lora_A["default"].weight) * query.scaling["default"]
    with torch.no_grad():
        unmerged = model(**batch).logits
        model.merge_adapter()
        model.eval()
        merged_eval = model(**batch).logits
        model.train()
        merged_train = model(**batch).logits
    torch.testing.assert_close(
        query.base_layer.weight.detach(), weight_before + delta.detach(), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(merged_eval, unmerged, rtol=0, atol=1e-5)
    torch.testing.assert_close(merged_train, unmerged, rtol=0, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(query.base_layer.weight.detach(), weight_before, rtol=0, atol=1e-6)


def test_lora_preset_targets_query_and_value_of_the_first_half():
    config = scpeft_lora_config(num_layers=NUM_LAYERS)
    assert (config.r, config.lora_alpha, config.bias, config.modules_to_save) == (
        8,
        1,
        "none",
        ["classifier"],
    )
    model = get_peft_model(tiny_scgpt(), copy.deepcopy(config))
    adapted = sorted(name for name, module in model.named_modules() if hasattr(module, "lora_A") and name)
    assert adapted == [
        f"base_model.model.scgpt.encoder.layer.{i}.attention.self.{projection}"
        for i in (0, 1)
        for projection in ("query", "value")
    ]
    assert scpeft_lora_config(layers="all", num_layers=3).layers_to_transform == [0, 1, 2]
    assert scpeft_lora_config(layers=[5], r=4).layers_to_transform == [5]
