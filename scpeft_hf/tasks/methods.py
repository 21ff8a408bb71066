"""The fine-tuning methods a task can use: scPEFT's four adapters, full fine-tuning, and a linear probe.

`probe` is a linear probe: one Linear layer (scGPT's head shrinks from its 3-layer MLP to its output layer,
`num_cls_layers=1`; Geneformer's head is linear already) trained on the frozen backbone's eval-mode features.
The backbone's dropout stays off in every training step, although `Trainer` switches the model to train mode
before each one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from peft import PeftConfig, PeftModel, get_peft_model
from safetensors import SafetensorError
from transformers import PreTrainedModel

from ..errors import InvalidInputError
from ..tuners import EncoderAdapterConfig, PrefixAdapterConfig, TokenAdapterConfig, scpeft_lora_config
from ..tuners.targets import first_half_of_layers, upgrade_legacy_modules_to_save

logger = logging.getLogger(__name__)

PEFT_METHODS = ("encoder", "token", "prefix", "lora")
# Methods whose adapters sit in encoder layers, so that `--adapter-layers` can place them.
LAYERED_METHODS = ("encoder", "prefix", "lora")
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
TASK_HEADS = {"scgpt": "classifier", "bert": "classifier", "geneformer": "classifier"}
# Config fields that make each model type's head a single Linear layer, for `probe`.
LINEAR_HEADS = {"scgpt": {"num_cls_layers": 1}, "bert": {}, "geneformer": {}}


def head_overrides(method: str, base_dir: str | Path) -> dict:
    """Config fields the head of `method` needs on the base model in `base_dir`: a linear head for `probe`."""
    if method != "probe":
        return {}
    return dict(LINEAR_HEADS[json.loads((Path(base_dir) / "config.json").read_text())["model_type"]])


def keep_backbone_in_eval(model: PreTrainedModel, head: str):
    """Put every child of `model` but `head` in eval mode before each forward, so dropout in the frozen backbone
    stays off even after `model.train()` (which `Trainer` calls every step). Returns the hook's handle."""

    def _backbone_to_eval(module, args):
        if module.training:
            for name, child in module.named_children():
                if name != head:
                    child.eval()

    return model.register_forward_pre_hook(_backbone_to_eval)


def parse_adapter_layers(spec: str | None, num_layers: int, method: str) -> list[int] | None:
    """The encoder layers named by `spec` ("paper": the first half, as scPEFT; "all"; or indices and ranges such
    as "6-11" or "0,2,4-5"), for a model with `num_layers` layers. None keeps the method's default."""
    if spec is None:
        return None
    if method not in LAYERED_METHODS:
        reason = "the token adapter sits on the input embedding, before any layer"
        raise InvalidInputError(
            f"--adapter-layers does not apply to --method {method}: "
            + (reason if method == "token" else f"{method} has no adapter")
        )
    if spec == "paper":
        return first_half_of_layers(num_layers)
    if spec == "all":
        return list(range(num_layers))
    layers: set[int] = set()
    try:
        for part in spec.split(","):
            start, _, end = part.strip().partition("-")
            layers.update(range(int(start), int(end or start) + 1))
    except ValueError:
        layers = set()
    outside = sorted(index for index in layers if not 0 <= index < num_layers)
    if not layers or outside:
        problem = f"layers {outside} are outside" if outside else "names no layer of"
        raise InvalidInputError(
            f"--adapter-layers {spec!r} {problem} the model's {num_layers} layers (0-{num_layers - 1}); use e.g. "
            f"'{num_layers // 2}-{num_layers - 1}', 'all' or 'paper' (the first half)"
        )
    return sorted(layers)


def peft_config(
    method: str,
    model: PreTrainedModel,
    modules_to_save: list[str] | None = None,
    layers: list[int] | None = None,
) -> PeftConfig:
    """The adapter config of `method` with our documented defaults, for this model. `modules_to_save` replaces
    the default (the model type's task head) with the modules a task trains next to the adapter; `layers` places
    the encoder adapter, prefix or LoRA (None: the first half)."""
    if method == "encoder":
        return EncoderAdapterConfig(modules_to_save=modules_to_save, layers_to_transform=layers)
    if method == "token":
        return TokenAdapterConfig(modules_to_save=modules_to_save)
    if method == "prefix":
        return PrefixAdapterConfig(modules_to_save=modules_to_save, layers_to_transform=layers)
    if method == "lora":
        head = TASK_HEADS.get(model.config.model_type)
        return scpeft_lora_config(
            layers=layers,
            num_layers=model.config.num_hidden_layers,
            modules_to_save=modules_to_save or [head],
        )
    raise InvalidInputError(f"{method!r} is not an adapter method; adapters are {', '.join(PEFT_METHODS)}")


def prepare_model(
    model: PreTrainedModel,
    method: str,
    learning_rate: float | None = None,
    modules_to_save: list[str] | None = None,
    layers: list[int] | None = None,
):
    """Make exactly the parameters of `method` trainable (its adapters on `layers`, default: the method's own).
    Returns (model, learning rate)."""
    if method not in METHODS:
        raise InvalidInputError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}")
    learning_rate = learning_rate if learning_rate is not None else DEFAULT_LEARNING_RATES[method]
    if method in PEFT_METHODS:
        model = get_peft_model(model, peft_config(method, model, modules_to_save, layers))
    elif method == "probe":
        head = TASK_HEADS[model.config.model_type]
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith(head + ".")
        keep_backbone_in_eval(model, head)
    else:
        model.requires_grad_(True)
    if modules_to_save is None:  # a task that names its own modules (integration) trains no classifier
        warn_if_head_untrained(model)
    return model, learning_rate


def warn_if_head_untrained(model: PreTrainedModel | PeftModel) -> bool:
    """Log a warning and return True when no parameter of the model's task head is trainable."""
    head = TASK_HEADS.get(model.config.model_type)
    if head is None or any(
        parameter.requires_grad and f"{head}." in f".{name}" for name, parameter in model.named_parameters()
    ):
        return False
    logger.warning(
        "No parameter of the task head `%s` is trainable: it would stay at its random initialisation. Add "
        "modules_to_save=['%s'] (or task_type='SEQ_CLS') to the adapter config.",
        head,
        head,
    )
    return True


def load_peft_adapter(model: PreTrainedModel, adapter_dir: str | Path) -> PeftModel:
    """`PeftModel.from_pretrained` that also loads adapters saved by older releases, whose scGPT head was named
    `cls_decoder` (the weights are renamed by the model's `_checkpoint_conversion_mapping`, the config here)."""
    adapter_dir = Path(adapter_dir)
    config = PeftConfig.from_pretrained(adapter_dir)
    config.modules_to_save = upgrade_legacy_modules_to_save(config.modules_to_save, model.config.to_dict())
    try:
        return PeftModel.from_pretrained(model, adapter_dir, config=config)
    except SafetensorError as err:
        raise InvalidInputError(
            f"{adapter_dir / 'adapter_model.safetensors'} cannot be read ({err}); the file is damaged or "
            "incomplete: copy or download the adapter folder again"
        ) from err
