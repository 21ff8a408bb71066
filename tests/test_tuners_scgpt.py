"""scPEFT's four methods (encoder, token, prefix adapters and LoRA) through peft on a tiny scGPT."""

from __future__ import annotations

import json
import re

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model, inject_adapter_in_model
from safetensors.torch import load_file

from scpeft_hf import (
    EncoderAdapterConfig,
    PrefixAdapterConfig,
    ScGPTConfig,
    ScGPTForCellClassification,
    ScPeftType,
    TokenAdapterConfig,
    paper_config,
    scpeft_lora_config,
)

from .tuner_helpers import (
    HIDDEN,
    METHODS,
    NUM_LABELS,
    NUM_LAYERS,
    adapter_parameter_count,
    cell_batch,
    head_parameter_count,
    method_config,
    tiny_scgpt,
)

# The parameter names each method adds (peft's prefix of the method).
METHOD_PREFIX = {
    "encoder": ScPeftType.ENCODER_ADAPTER.prefix,
    "token": ScPeftType.TOKEN_ADAPTER.prefix,
    "prefix": ScPeftType.PREFIX_ADAPTER.prefix,
    "lora": "lora_",
}


def logits(model, batch) -> torch.Tensor:
    return model(**batch).logits


# ------------------------------------------------------------------------------------------------- basics


@pytest.mark.parametrize("method", METHODS)
def test_only_adapter_and_head_are_trainable(method):
    model = get_peft_model(tiny_scgpt(), method_config(method))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing is trainable"
    for name in trainable:
        assert METHOD_PREFIX[method] in name or ".classifier.modules_to_save.default." in name, name
    # the head is trained as a copy; the original head and the backbone stay frozen
    assert any("classifier.modules_to_save.default.out_layer.weight" in name for name in trainable)
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == adapter_parameter_count(
        method, HIDDEN, NUM_LAYERS
    ) + head_parameter_count(HIDDEN, NUM_LABELS)


@pytest.mark.parametrize("method", METHODS)
def test_print_trainable_parameters_counts_adapter_and_head(method, capsys):
    base = tiny_scgpt()
    base_total = sum(p.numel() for p in base.parameters())
    model = get_peft_model(base, method_config(method))
    capsys.readouterr()
    model.print_trainable_parameters()
    trainable = adapter_parameter_count(method, HIDDEN, NUM_LAYERS) + head_parameter_count(HIDDEN, NUM_LABELS)
    # peft counts the frozen original head next to its trainable copy
    total = base_total + trainable
    expected = f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
    assert capsys.readouterr().out.strip() == expected


@pytest.mark.parametrize("method", ["encoder", "prefix", "lora"])
def test_first_half_of_layers_is_resolved_and_saved(method, tmp_path):
    model = get_peft_model(tiny_scgpt(), method_config(method))
    assert model.peft_config["default"].layers_to_transform == [0, 1]
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["layers_to_transform"] == [0, 1]
    assert saved["modules_to_save"] == ["classifier"]
    adapted = {
        name for name, _ in model.named_modules() if name.endswith(("scpeft_encoder_adapter_down", "lora_A"))
    }
    if method == "encoder":
        assert adapted == {
            f"base_model.model.scgpt.encoder.layer.{i}.attention.output.scpeft_encoder_adapter_down"
            for i in (0, 1)
        }
    if method == "lora":
        assert len(adapted) == 4 and all(
            re.search(r"layer\.[01]\.attention\.self\.(query|value)", n) for n in adapted
        )


def test_adapters_sit_where_scpeft_puts_them():
    model = get_peft_model(tiny_scgpt(), method_config("encoder", identity=False))
    scgpt = model.base_model.model.scgpt
    wrapped = scgpt.encoder.layer[0].attention.output
    assert type(wrapped).__name__ == "EncoderAdapterLayer"
    assert type(wrapped.base_layer).__name__ == "ScGPTSelfOutput"
    assert type(scgpt.encoder.layer[2].attention.output).__name__ == "ScGPTSelfOutput"

    # the adapter transforms norm1(x + SA(x)): the output of the attention block, before the feed-forward block
    captured = {}
    wrapped.base_layer.register_forward_hook(lambda m, a, out: captured.setdefault("norm1", out))
    wrapped.register_forward_hook(lambda m, a, out: captured.setdefault("adapted", out))
    model(**cell_batch())
    down, up = wrapped.scpeft_encoder_adapter_down["default"], wrapped.scpeft_encoder_adapter_up["default"]
    h = captured["norm1"]
    torch.testing.assert_close(
        captured["adapted"], h + up(torch.nn.functional.gelu(down(h))), rtol=0, atol=1e-6
    )
    assert down.out_features == HIDDEN // 4

    token = get_peft_model(tiny_scgpt(), method_config("token")).base_model.model.scgpt.embeddings
    assert type(token.value_encoder.norm).__name__ == "TokenAdapterLayer"
    assert token.value_encoder.norm.scpeft_token_adapter_down["default"].out_features == HIDDEN
    assert isinstance(token.value_encoder.dropout, torch.nn.Dropout)  # adapter sits before dropout


@pytest.mark.parametrize("method", METHODS)
def test_trainable_share_at_scgpt_human_size_is_at_most_3_percent(method):
    # Built on the meta device: the counts need no memory. ScGPTConfig() is scGPT-human (d 512, 12 layers).
    with torch.device("meta"):
        base = ScGPTForCellClassification(ScGPTConfig(num_labels=10))
    base_total = sum(p.numel() for p in base.parameters())
    # backbone + classifier; the 51.3M of the checkpoint also counts the pretraining decoders
    assert base_total == 50_810_890
    model = get_peft_model(
        base, method_config(method) if method != "lora" else scpeft_lora_config(num_layers=12)
    )
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == adapter_parameter_count(method, 512, 12) + head_parameter_count(512, 10)
    assert trainable / base_total <= 0.03


# ---------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("method", METHODS)
def test_save_pretrained_writes_only_adapter_and_head(method, tmp_path):
    model = get_peft_model(tiny_scgpt(), method_config(method, identity=False))
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    adapter_keys = [k for k in tensors if METHOD_PREFIX[method] in k]
    head_keys = [k for k in tensors if k.startswith("base_model.model.classifier.")]
    assert sorted(adapter_keys + head_keys) == sorted(tensors), "backbone weights were saved"
    assert sum(tensors[k].numel() for k in adapter_keys) == adapter_parameter_count(
        method, HIDDEN, NUM_LAYERS
    )
    assert sum(tensors[k].numel() for k in head_keys) == head_parameter_count(HIDDEN, NUM_LABELS)
    assert not any(".default." in k for k in tensors), "adapter name leaked into the checkpoint keys"


@pytest.mark.parametrize("method", METHODS)
def test_from_pretrained_on_fresh_base_reproduces_outputs_bit_exactly(method, tmp_path):
    batch = cell_batch()
    model = get_peft_model(tiny_scgpt(), method_config(method, identity=False))
    with torch.no_grad():
        model.base_model.model.classifier.modules_to_save["default"].out_layer.bias.add_(1.0)
        expected = logits(model, batch)
    model.save_pretrained(tmp_path)

    config = PeftConfig.from_pretrained(tmp_path)
    assert type(config) is type(model.peft_config["default"])
    loaded = PeftModel.from_pretrained(tiny_scgpt(), tmp_path)
    with torch.no_grad():
        assert torch.equal(logits(loaded, batch), expected)
        with loaded.disable_adapter():
            assert not torch.equal(logits(loaded, batch), expected)


# ------------------------------------------------------------------------------------- not silently skipped


@pytest.mark.parametrize("method", METHODS)
def test_adapter_is_active_in_eval_no_grad_and_inference_mode(method):
    batch = cell_batch()
    model = get_peft_model(tiny_scgpt(), method_config(method, identity=False))
    with torch.no_grad(), model.disable_adapter():
        base_output = logits(model, batch)
    model.train()
    train_output = logits(model, batch).detach()
    model.eval()
    with torch.no_grad():
        no_grad_output = logits(model, batch)
    with torch.inference_mode():
        inference_output = logits(model, batch)
    assert torch.equal(no_grad_output, train_output)
    assert torch.equal(inference_output, train_output)
    assert (train_output - base_output).abs().max() > 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_adapters_on_a_pre_norm_scgpt(method):
    # The pre-norm attention block applies its output module's LayerNorm first; that module is what the
    # encoder adapter wraps, so the wrapper must still expose it.
    batch = cell_batch()
    base = tiny_scgpt(pre_norm=True)
    with torch.no_grad():
        base_output = logits(base, batch)
        if method != "prefix":  # a zero prefix still takes part in attention
            identity = get_peft_model(tiny_scgpt(pre_norm=True), method_config(method))
            assert torch.equal(logits(identity, batch), base_output)
        model = get_peft_model(base, method_config(method, identity=False)).eval()
        adapted = logits(model, batch)
        with model.disable_adapter():
            assert torch.equal(logits(model, batch), base_output)
    assert (adapted - base_output).abs().max() > 1e-4
    model.train()
    assert torch.equal(logits(model, batch).detach(), adapted)


@pytest.mark.parametrize("method", METHODS)
def test_one_optimizer_step_changes_the_output_through_the_adapter(method):
    batch = cell_batch()
    labels = torch.tensor([0, 1, 2])
    # no head copy: any change in the output has to come from the adapter
    model = get_peft_model(
        tiny_scgpt(), method_config(method, modules_to_save=[] if method != "lora" else None)
    )
    assert all(METHOD_PREFIX[method] in n for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        before = logits(model, batch)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(**batch, labels=labels).loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = logits(model, batch)
        with model.disable_adapter():
            base_output = logits(model, batch)
    assert (after - before).abs().max() > 1e-4
    assert (after - base_output).abs().max() > 1e-4


@pytest.mark.parametrize("method", ["encoder", "token"])
def test_every_adapter_parameter_learns_from_zero_init(method):
    # the down projection gets no gradient while the up projection is zero; it must move from step 2 on
    batch = cell_batch()
    labels = torch.tensor([0, 1, 2])
    model = get_peft_model(tiny_scgpt(), method_config(method, modules_to_save=[]))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    moved = {
        n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters() if n in before
    }
    assert len(moved) == (8 if method == "encoder" else 4)
    assert min(moved.values()) > 1e-4, moved


@pytest.mark.parametrize("method", METHODS)
def test_disable_adapter_gives_exactly_the_base_output(method):
    batch = cell_batch()
    base = tiny_scgpt()
    with torch.no_grad():
        base_output = logits(base, batch)
    model = get_peft_model(base, method_config(method, identity=False))
    with torch.no_grad():
        model.base_model.model.classifier.modules_to_save["default"].out_layer.bias.add_(1.0)
        adapted = logits(model, batch)
        with model.disable_adapter():
            disabled = logits(model, batch)
        assert torch.equal(disabled, base_output)
        assert not torch.equal(adapted, base_output)
        assert torch.equal(logits(model, batch), adapted)  # enabled again after the context


@pytest.mark.parametrize("method", ["encoder", "token", "lora"])
def test_zero_init_adapter_gives_exactly_the_base_output(method):
    batch = cell_batch()
    base = tiny_scgpt()
    with torch.no_grad():
        base_output = logits(base, batch)
    model = get_peft_model(base, method_config(method))
    with torch.no_grad():
        assert torch.equal(logits(model, batch), base_output)


def test_prefix_tokens_start_at_zero_but_still_take_part_in_attention():
    # scPEFT's prefix tokens are real sequence tokens: zero tokens still have keys (the key bias) and
    # values, so unlike the bottleneck adapters a fresh prefix is not an identity.
    batch = cell_batch()
    base = tiny_scgpt()
    with torch.no_grad():
        base_output = logits(base, batch)
    model = get_peft_model(base, method_config("prefix"))
    tokens = model.base_model.model.scgpt.encoder.scpeft_prefix_adapter_tokens["default"]
    assert tokens.shape == (2, 8, HIDDEN) and torch.count_nonzero(tokens) == 0
    with torch.no_grad():
        assert (logits(model, batch) - base_output).abs().max() > 1e-5


# -------------------------------------------------------------------------------------- multiple adapters


@pytest.mark.parametrize("method", METHODS)
def test_add_set_and_delete_adapters_of_one_method(method):
    batch = cell_batch()
    model = get_peft_model(tiny_scgpt(), method_config(method, identity=False))
    with torch.no_grad():
        first = logits(model, batch)
    torch.manual_seed(7)
    model.add_adapter("second", method_config(method, identity=False))
    with torch.no_grad():
        assert torch.equal(logits(model, batch), first)  # adding does not activate
        model.set_adapter("second")
        second = logits(model, batch)
        assert not torch.allclose(second, first)
        assert all(
            "second" in n
            for n, p in model.named_parameters()
            if p.requires_grad and METHOD_PREFIX[method] in n
        )
        model.set_adapter("default")
        assert torch.equal(logits(model, batch), first)

    model.delete_adapter("second")
    assert list(model.peft_config) == ["default"]
    assert not any(".second" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(logits(model, batch), first)


# ---------------------------------------------------------------------------------------------- presets


def test_paper_presets_match_the_official_package_defaults():
    encoder = paper_config("encoder_adapter")
    assert (encoder.bottleneck_ratio, encoder.activation, encoder.init_weights) == (0.25, "gelu", "paper")
    token = paper_config("token_adapter")
    assert (token.bottleneck_ratio, token.init_weights) == (1.0, "paper")
    prefix = paper_config("prefix_adapter")
    assert (prefix.num_tokens, prefix.init_weights) == (8, True)
    lora = paper_config("lora", num_layers=12)
    assert (lora.r, lora.lora_alpha, lora.bias) == (8, 1, "lora_only")
    assert sorted(lora.target_modules) == ["query", "value"] and lora.layers_to_transform == [
        0,
        1,
        2,
        3,
        4,
        5,
    ]
    assert paper_config("prefix_adapter", num_tokens=64, layers_to_transform="all").num_tokens == 64

    # our defaults differ only in init: identity at step 0
    assert EncoderAdapterConfig().init_weights is True and TokenAdapterConfig().bottleneck_ratio == 1.0
    with pytest.raises(ValueError, match="choose one of"):
        paper_config("adapter")


def test_paper_init_is_not_an_identity():
    batch = cell_batch()
    model = get_peft_model(tiny_scgpt(), paper_config("encoder_adapter"))
    with torch.no_grad():
        adapted = logits(model, batch)
        with model.disable_adapter():
            assert (adapted - logits(model, batch)).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    "config",
    [
        EncoderAdapterConfig(layers_to_transform=[1, NUM_LAYERS]),
        PrefixAdapterConfig(layers_to_transform=[NUM_LAYERS + 2]),
    ],
    ids=["encoder", "prefix"],
)
def test_layers_out_of_range_are_rejected_when_attached(config):
    with pytest.raises(
        ValueError, match=rf"outside .*{NUM_LAYERS} layers.*use indices 0\.\.{NUM_LAYERS - 1}"
    ):
        get_peft_model(tiny_scgpt(), config)


def test_lora_preset_rejects_layers_out_of_range_and_needs_the_layer_count():
    with pytest.raises(ValueError, match=r"outside the model's 4 layers; use 0\.\.3"):
        scpeft_lora_config(layers=[2, 4], num_layers=4)
    with pytest.raises(ValueError, match="num_layers=model.config.num_hidden_layers"):
        scpeft_lora_config()


@pytest.mark.parametrize("num_tokens", [0, -3, 2.5])
def test_prefix_needs_a_positive_number_of_tokens(num_tokens):
    with pytest.raises(ValueError, match=r"num_tokens must be an integer >= 1"):
        PrefixAdapterConfig(num_tokens=num_tokens)


@pytest.mark.parametrize("config_cls", [EncoderAdapterConfig, TokenAdapterConfig])
@pytest.mark.parametrize("ratio", [0, -0.5])
def test_bottleneck_ratio_must_be_positive(config_cls, ratio):
    with pytest.raises(ValueError, match=r"bottleneck_ratio must be a number > 0"):
        config_cls(bottleneck_ratio=ratio)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"activation": "swishy"}, "not a key of transformers' ACT2FN"),
        ({"init_weights": "xavier"}, "init_weights must be"),
        ({"bias": "lora_only"}, r"bias must be one of \('none', 'all', 'encoder_adapter_only'\)"),
        ({"layers_to_transform": [-1]}, "layer indices >= 0"),
        ({"target_parameters": ["query.weight"]}, "target_parameters"),
    ],
)
def test_encoder_adapter_config_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EncoderAdapterConfig(**kwargs)


@pytest.mark.parametrize("method", ["encoder", "token", "prefix"])
def test_adapter_on_a_base_model_of_another_hidden_size_is_rejected(method, tmp_path):
    get_peft_model(tiny_scgpt(), method_config(method)).save_pretrained(tmp_path)
    other_width = tiny_scgpt(hidden_size=16)
    with pytest.raises(
        ValueError, match=r"trained on a model with hidden_size 32, but the base model has hidden_size 16"
    ):
        PeftModel.from_pretrained(other_width, tmp_path)


def test_lora_on_a_base_model_of_another_hidden_size_fails_in_peft(tmp_path):
    # LoRA is peft's own config, which records no hidden size: peft's loader reports the shape mismatch
    get_peft_model(tiny_scgpt(), method_config("lora")).save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match=r"size mismatch for .*lora_A.*torch.Size\(\[8, 32\]\)"):
        PeftModel.from_pretrained(tiny_scgpt(hidden_size=16), tmp_path)


def test_unknown_model_type_needs_explicit_targets():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(
        ValueError, match=r"no default target_modules for model_type 'custom'.*pass target_modules"
    ):
        get_peft_model(Plain(), EncoderAdapterConfig())
    model = get_peft_model(Plain(), EncoderAdapterConfig(target_modules=["proj"]))
    assert model.peft_config["default"].layers_to_transform is None  # no layer count: every matched module


def test_merging_a_bottleneck_adapter_raises_a_clear_error():
    model = get_peft_model(tiny_scgpt(), method_config("encoder", identity=False))
    with pytest.raises(ValueError, match="encoder adapter cannot be merged.*unload"):
        model.merge_and_unload()
    base = model.unload()
    assert type(base.scgpt.encoder.layer[0].attention.output).__name__ == "ScGPTSelfOutput"


# ------------------------------------------------------------------------------------- peft entry points


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_model_runs_with_float32_adapter_weights(method):
    batch = cell_batch()
    model = get_peft_model(tiny_scgpt().to(torch.bfloat16), method_config(method, identity=False))
    adapter_dtypes = {p.dtype for n, p in model.named_parameters() if METHOD_PREFIX[method] in n}
    assert adapter_dtypes == {torch.float32}  # peft's autocast_adapter_dtype
    with torch.no_grad():
        output = logits(model, batch)
        with model.disable_adapter():
            base_output = logits(model, batch)
    assert output.dtype == torch.bfloat16 and torch.isfinite(output).all()
    assert not torch.equal(output, base_output)


@pytest.mark.parametrize("method", ["encoder", "prefix"])
def test_seq_cls_task_type_and_direct_injection_work(method):
    batch = cell_batch()
    labels = torch.tensor([0, 1, 2])
    seq_cls = get_peft_model(tiny_scgpt(), method_config(method, identity=False, task_type="SEQ_CLS"))
    assert type(seq_cls).__name__ == "PeftModelForSequenceClassification"
    output = seq_cls(**batch, labels=labels)
    assert output.loss.requires_grad and output.logits.shape == (3, NUM_LABELS)

    torch.manual_seed(0)
    injected = inject_adapter_in_model(method_config(method, identity=False), tiny_scgpt())
    torch.manual_seed(0)
    wrapped = get_peft_model(tiny_scgpt(), method_config(method, identity=False))
    with torch.no_grad():
        assert torch.equal(injected(**batch).logits, logits(wrapped, batch))


@pytest.mark.parametrize("method", METHODS)
def test_low_cpu_mem_usage_loading_reproduces_outputs(method, tmp_path):
    batch = cell_batch()
    model = get_peft_model(tiny_scgpt(), method_config(method, identity=False))
    with torch.no_grad():
        expected = logits(model, batch)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_scgpt(), tmp_path, low_cpu_mem_usage=True)
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    with torch.no_grad():
        assert torch.equal(logits(loaded, batch), expected)
