"""What every annotation model shares about its classification head: the name peft looks for, and a warning
when training runs with that head frozen."""

from __future__ import annotations

import warnings

from torch import nn

# peft's SEQ_CLS task type trains and saves modules named `classifier` (or `score`), so every head is named so.
CLASSIFIER_NAME = "classifier"
# Names older releases gave the head: adapters and checkpoints that use them are remapped on load.
LEGACY_CLASSIFIER_NAMES = ("cls_decoder",)


def warn_if_head_frozen(model: nn.Module, head: nn.Module) -> None:
    """Warn (once per model) when a training step runs while no parameter of the head can learn.

    This is what happens with `get_peft_model(model, LoraConfig(target_modules=[...]))` without
    `task_type="SEQ_CLS"` or `modules_to_save=["classifier"]`: peft freezes the head, which stays random.
    """
    if getattr(model, "_warned_frozen_head", False) or any(p.requires_grad for p in head.parameters()):
        return
    model._warned_frozen_head = True
    warnings.warn(
        f"{type(model).__name__} is training with its classification head `{CLASSIFIER_NAME}` frozen, so the head "
        f"stays at its random initialisation. With peft, pass task_type='SEQ_CLS' or "
        f"modules_to_save=['{CLASSIFIER_NAME}'] in the adapter config (scpeft-hf's own configs do this by default).",
        UserWarning,
        stacklevel=3,
    )
