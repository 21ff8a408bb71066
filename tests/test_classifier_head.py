"""The annotation head is named `classifier`, so peft's `task_type="SEQ_CLS"` trains and saves it under every
method; adapters saved with the old head name `cls_decoder` still load; a frozen head is reported."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from scpeft_hf import (
    EncoderAdapterConfig,
    PrefixAdapterConfig,
    TokenAdapterConfig,
    paper_config,
    scpeft_lora_config,
)
from scpeft_hf.tasks.methods import load_peft_adapter, warn_if_head_untrained
from scpeft_hf.tuners import PAPER_METHODS

from .tuner_helpers import NUM_LAYERS, cell_batch, tiny_scgpt

LEGACY = Path(__file__).parent / "fixtures" / "legacy_cls_decoder_adapters"
HEAD_PREFIX = "base_model.model.classifier."


def base_with_another_head():
    """The same backbone as `tiny_scgpt()` with a different random head: loading must restore the saved one."""
    model = tiny_scgpt()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.classifier.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def seq_cls_config(method: str):
    """Each config as a peft user writes it with the standard task type."""
    if method.startswith("paper_"):
        init = {"init_lora_weights": False} if method == "paper_lora" else {"init_weights": False}
        return paper_config(method.removeprefix("paper_"), num_layers=NUM_LAYERS, task_type="SEQ_CLS", **init)
    if method == "scpeft_lora":
        return scpeft_lora_config(num_layers=NUM_LAYERS, task_type="SEQ_CLS", init_lora_weights=False)
    if method == "encoder":
        return EncoderAdapterConfig(task_type="SEQ_CLS", init_weights=False)
    if method == "token":
        return TokenAdapterConfig(task_type="SEQ_CLS", init_weights=False)
    if method == "prefix":
        return PrefixAdapterConfig(task_type="SEQ_CLS", init_weights=False)
    return LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], init_lora_weights=False)


@pytest.mark.parametrize(
    "method",
    ["encoder", "token", "prefix", "scpeft_lora", "plain_lora", *(f"paper_{name}" for name in PAPER_METHODS)],
)
def test_seq_cls_task_type_trains_saves_and_restores_the_head(method, tmp_path):
    batch = cell_batch()
    model = get_peft_model(tiny_scgpt(), seq_cls_config(method))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any(".classifier.modules_to_save.default.out_layer.weight" in name for name in trainable)
    with torch.no_grad():
        model.base_model.model.classifier.modules_to_save["default"].out_layer.bias.add_(1.0)
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert f"{HEAD_PREFIX}out_layer.weight" in saved and f"{HEAD_PREFIX}out_layer.bias" in saved
    loaded = PeftModel.from_pretrained(base_with_another_head(), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)


@pytest.mark.parametrize("method", ["encoder", "prefix", "lora"])
def test_adapter_saved_with_cls_decoder_keys_loads_with_its_head(method, tmp_path):
    folder = shutil.copytree(LEGACY / method, tmp_path / method)
    assert any(
        key.startswith("base_model.model.cls_decoder.")
        for key in load_file(folder / "adapter_model.safetensors")
    )
    expected = load_file(folder / "expected_logits.safetensors")["logits"]
    model = load_peft_adapter(base_with_another_head(), folder)
    assert model.peft_config["default"].modules_to_save == ["classifier"]
    with torch.no_grad():
        torch.testing.assert_close(model(**cell_batch()).logits, expected, rtol=0, atol=1e-6)
        with model.disable_adapter():  # the head reverts with the adapter: it was restored as a trained copy
            assert not torch.allclose(model(**cell_batch()).logits, expected)
    # re-saving writes the current name
    model.save_pretrained(tmp_path / "resaved")
    assert f"{HEAD_PREFIX}out_layer.bias" in load_file(tmp_path / "resaved" / "adapter_model.safetensors")


@pytest.mark.parametrize("method", ["encoder", "prefix", "lora"])
def test_plain_peft_from_pretrained_reads_cls_decoder_adapters(method):
    expected = load_file(LEGACY / method / "expected_logits.safetensors")["logits"]
    model = PeftModel.from_pretrained(base_with_another_head(), LEGACY / method)
    with torch.no_grad():
        torch.testing.assert_close(model(**cell_batch()).logits, expected, rtol=0, atol=1e-6)


def test_training_with_a_frozen_head_warns():
    model = get_peft_model(tiny_scgpt(), LoraConfig(target_modules=["query", "value"]))  # no task type
    assert not any("classifier" in name for name, p in model.named_parameters() if p.requires_grad)
    batch = cell_batch() | {"labels": torch.tensor([0, 1, 2])}
    with pytest.warns(UserWarning, match=r"classification head `classifier` frozen.*task_type='SEQ_CLS'"):
        model.train()(**batch).loss.backward()


def test_training_with_a_trainable_head_does_not_warn(recwarn):
    model = get_peft_model(tiny_scgpt(), LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"]))
    model.train()(**cell_batch(), labels=torch.tensor([0, 1, 2])).loss.backward()
    assert not [w for w in recwarn if "frozen" in str(w.message)]


def test_train_path_reports_a_head_without_trainable_parameters(caplog):
    with_head = get_peft_model(tiny_scgpt(), EncoderAdapterConfig())
    without_head = get_peft_model(tiny_scgpt(), EncoderAdapterConfig(modules_to_save=[]))
    with caplog.at_level(logging.WARNING, logger="scpeft_hf.tasks.methods"):
        assert warn_if_head_untrained(with_head) is False
        assert not caplog.records
        assert warn_if_head_untrained(without_head) is True
    assert "modules_to_save=['classifier']" in caplog.text


def test_full_model_folder_saved_with_cls_decoder_keys_loads_its_head(tmp_path):
    """`full`/`probe` folders of older releases hold the whole model with `cls_decoder.*` weights."""
    from safetensors.torch import save_file

    from scpeft_hf.tasks.backbones import DEMO_BACKBONE, load_classifier, load_processor

    processor = load_processor(DEMO_BACKBONE)
    torch.manual_seed(3)
    model = load_classifier(DEMO_BACKBONE, processor, num_labels=4).eval()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    old = {key.replace("classifier.", "cls_decoder.", 1) if key.startswith("classifier.") else key: value
           for key, value in weights.items()}  # fmt: skip
    assert any(key.startswith("cls_decoder.") for key in old)
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})

    loaded = load_classifier(tmp_path, processor).eval()
    for name, parameter in model.classifier.state_dict().items():
        assert torch.equal(loaded.classifier.state_dict()[name], parameter), name
    loaded.save_pretrained(tmp_path / "resaved")
    assert any(key.startswith("classifier.") for key in load_file(tmp_path / "resaved" / "model.safetensors"))
