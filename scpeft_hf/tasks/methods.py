"""The fine-tuning methods a task can use: scPEFT's four adapters, full fine-tuning, and a linear probe."""

from __future__ import annotations

from peft import PeftConfig, get_peft_model
from transformers import PreTrainedModel

from ..tuners import EncoderAdapterConfig, PrefixAdapterConfig, TokenAdapterConfig, scpeft_lora_config

PEFT_METHODS = ("encoder", "token", "prefix", "lora")
METHODS = (*PEFT_METHODS, "full", "probe")

# Adapters and heads start from scratch and tolerate larger steps than pretrained weights do.
DEFAULT_LEARNING_RATES = {
    "encoder": 1e-3,
    "token": 1e-3,
    "prefix": 1e-3,
    "lora": 1e-3,
    "probe": 1e-3,
    "full": 1e-4,
}
# Task heads by model type, trained by `probe` (and saved next to adapters by the tuners' own defaults).
TASK_HEADS = {"scgpt": "cls_decoder", "bert": "classifier"}


def peft_config(method: str, model: PreTrainedModel, modules_to_save: list[str] | None = None) -> PeftConfig:
    """The adapter config of `method` with our documented defaults, for this model. `modules_to_save` replaces
    the default (the model type's task head) with the modules a task trains next to the adapter."""
    if method == "encoder":
        return EncoderAdapterConfig(modules_to_save=modules_to_save)
    if method == "token":
        return TokenAdapterConfig(modules_to_save=modules_to_save)
    if method == "prefix":
        return PrefixAdapterConfig(modules_to_save=modules_to_save)
    if method == "lora":
        head = TASK_HEADS.get(model.config.model_type)
        return scpeft_lora_config(
            num_layers=model.config.num_hidden_layers, modules_to_save=modules_to_save or [head]
        )
    raise ValueError(f"{method!r} is not an adapter method; adapters are {', '.join(PEFT_METHODS)}")


def prepare_model(
    model: PreTrainedModel,
    method: str,
    learning_rate: float | None = None,
    modules_to_save: list[str] | None = None,
):
    """Make exactly the parameters of `method` trainable. Returns (model, learning rate)."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}")
    learning_rate = learning_rate if learning_rate is not None else DEFAULT_LEARNING_RATES[method]
    if method in PEFT_METHODS:
        return get_peft_model(model, peft_config(method, model, modules_to_save)), learning_rate
    if method == "probe":
        head = TASK_HEADS[model.config.model_type]
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith(head + ".")
    else:
        model.requires_grad_(True)
    return model, learning_rate
