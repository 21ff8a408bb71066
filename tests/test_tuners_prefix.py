"""scPEFT's prefix mechanics: insertion after `<cls>`, per-layer overwrite, widened masks, stripping."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from scpeft_hf import PrefixAdapterConfig
from scpeft_hf.tuners.prefix_adapter.layer import strip_prefix, widen_mask

from .tuner_helpers import HIDDEN, cell_batch, tiny_scgpt


def reference_prefix_logits(base, tokens: torch.Tensor, layers: list[int], batch: dict) -> torch.Tensor:
    """scPEFT's prefix written out as a plain loop over an unwrapped copy of the model."""
    scgpt = base.scgpt
    hidden, _ = scgpt.embeddings(batch["input_ids"], batch["values"])
    keep = batch["attention_mask"].bool()
    num_tokens = tokens.shape[1]
    widened_keep = torch.cat(
        [keep[:, :1], torch.ones(keep.shape[0], num_tokens, dtype=torch.bool), keep[:, 1:]], 1
    )
    for index, layer in enumerate(scgpt.encoder.layer):
        if index in layers:
            layer_tokens = tokens[layers.index(index)].expand(hidden.shape[0], -1, -1)
            rest = hidden[:, 1:] if index == layers[0] else hidden[:, 1 + num_tokens :]
            hidden = torch.cat([hidden[:, :1], layer_tokens, rest], dim=1)
        layer_keep = widened_keep if index >= layers[0] else keep
        mask = None if bool(layer_keep.all()) else layer_keep[:, None, None, :]
        hidden, _ = layer(hidden, attention_mask=mask)
    hidden = torch.cat([hidden[:, :1], hidden[:, 1 + num_tokens :]], dim=1)
    return base.classifier(hidden[:, 0])


@pytest.mark.parametrize("layers", [[0, 1], [1, 3], [0, 1, 2, 3]])
@pytest.mark.parametrize("padded", [False, True])
def test_prefix_matches_a_plain_reference_loop(layers, padded):
    batch = cell_batch(pad_from={1: 6, 2: 9} if padded else {})
    model = get_peft_model(
        tiny_scgpt(), PrefixAdapterConfig(num_tokens=3, layers_to_transform=layers, init_weights=False)
    )
    tokens = model.base_model.model.scgpt.encoder.scpeft_prefix_adapter_tokens["default"]
    assert tokens.shape == (len(layers), 3, HIDDEN)
    head = model.base_model.model.classifier.modules_to_save["default"]
    reference_model = tiny_scgpt()
    reference_model.classifier.load_state_dict(head.state_dict())
    with torch.no_grad():
        expected = reference_prefix_logits(reference_model, tokens, layers, batch)
        torch.testing.assert_close(model(**batch).logits, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_padding_does_not_change_a_cells_output(attn_implementation):
    padded = cell_batch(pad_from={1: 6})
    alone = {key: value[1:2, :6] for key, value in padded.items()}
    model = get_peft_model(
        tiny_scgpt(attn_implementation=attn_implementation),
        PrefixAdapterConfig(num_tokens=4, init_weights=False),
    )
    with torch.no_grad():
        torch.testing.assert_close(model(**padded).logits[1:2], model(**alone).logits, rtol=0, atol=1e-5)


def test_outputs_keep_the_input_length_with_hidden_states_and_attentions():
    batch = cell_batch()
    model = get_peft_model(tiny_scgpt(), PrefixAdapterConfig(num_tokens=5, init_weights=False))
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True, output_attentions=True)
        with model.disable_adapter():
            base = model(**batch, output_hidden_states=True, output_attentions=True)
    length = batch["input_ids"].shape[1]
    assert [h.shape[1] for h in output.hidden_states] == [length] * 5
    assert all(a.shape[-2:] == (length, length) for a in output.attentions)
    # the embeddings and layers before the first prefix layer are untouched; the first layer's output is not
    assert torch.equal(output.hidden_states[0], base.hidden_states[0])
    assert not torch.allclose(output.hidden_states[1], base.hidden_states[1])
    # with the prefix columns removed, the real tokens' attention rows sum to less than one: the rest went to the
    # prefix tokens
    assert (output.attentions[0].sum(-1) < 1 - 1e-4).any()


def test_gradients_reach_only_the_targeted_layers_tokens_and_match_with_checkpointing():
    batch = cell_batch()
    labels = torch.tensor([0, 1, 2])
    grads = {}
    for checkpointing in (False, True):
        base = tiny_scgpt()
        if checkpointing:
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert base.scgpt.encoder.layer[1].gradient_checkpointing
        model = get_peft_model(base, PrefixAdapterConfig(num_tokens=2, layers_to_transform=[1, 2]))
        model.train()
        model(**batch, labels=labels).loss.backward()
        grads[checkpointing] = model.base_model.model.scgpt.encoder.scpeft_prefix_adapter_tokens[
            "default"
        ].grad
    assert grads[False].abs().sum(dim=(1, 2)).min() > 0  # both layers' tokens get a gradient
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-5, atol=1e-7)


def test_two_active_prefix_adapters_are_refused_with_a_fix():
    model = get_peft_model(tiny_scgpt(), PrefixAdapterConfig(modules_to_save=[]))
    model.add_adapter("other", PrefixAdapterConfig(modules_to_save=[]))
    model.base_model.set_adapter(["default", "other"])
    with pytest.raises(ValueError, match=r"one adapter at a time.*set_adapter\(name\)"):
        model(**cell_batch())


def test_unload_detaches_the_prefix_completely():
    batch = cell_batch()
    base_output = tiny_scgpt()(**batch).logits
    model = get_peft_model(tiny_scgpt(), PrefixAdapterConfig(init_weights=False))
    unloaded = model.unload()
    assert type(unloaded.scgpt.encoder).__name__ == "ScGPTEncoder"
    assert all(not layer._forward_pre_hooks for layer in unloaded.scgpt.encoder.layer)
    assert not unloaded._forward_hooks
    with torch.no_grad():
        assert torch.equal(unloaded(**batch).logits, base_output)


# ------------------------------------------------------------------------------------------- mask layouts


def test_widen_mask_boolean_key_padding_mask():
    keep = torch.tensor([[True, True, False]])[:, None, None, :]
    assert widen_mask(keep, 2).tolist() == [[[[True, True, True, True, False]]]]


def test_widen_mask_square_masks_widen_both_axes():
    # BERT-style [B, 1, L, L]: key columns for the prefix are attendable, prefix query rows copy <cls>'s row
    keep = torch.tensor([[True, True, False], [True, True, False], [False, False, False]])[None, None]
    widened = widen_mask(keep, 1)
    assert widened.shape == (1, 1, 4, 4)
    assert widened[0, 0].tolist() == [
        [True, True, True, False],
        [True, True, True, False],
        [True, True, True, False],
        [False, True, False, False],
    ]
    additive = torch.where(keep, 0.0, torch.finfo(torch.float32).min)
    widened_additive = widen_mask(additive, 1)
    assert torch.equal(widened_additive == 0, widened)


def test_widen_mask_two_dimensional_keep_mask_and_none():
    assert widen_mask(torch.tensor([[1, 1, 0]]), 2).tolist() == [[1, 1, 1, 1, 0]]
    assert widen_mask(None, 3) is None


def test_strip_prefix_removes_slots_from_hidden_states_and_attention_maps():
    hidden = torch.arange(6.0).view(1, 6, 1)  # <cls>, 2 prefix slots, 3 genes
    assert strip_prefix(hidden, 6, 2)[0, :, 0].tolist() == [0.0, 3.0, 4.0, 5.0]
    attention = torch.ones(1, 2, 6, 6)
    assert strip_prefix(attention, 6, 2, "attentions").shape == (1, 2, 4, 4)
    embeddings = torch.zeros(1, 4, 8)  # already the input length: untouched
    assert strip_prefix(embeddings, 6, 2) is embeddings
