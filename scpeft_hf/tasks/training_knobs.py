"""Speed and memory knobs shared by the training tasks, turned into `transformers.TrainingArguments` fields:
numeric precision, torch.compile and gradient accumulation (adapter placement lives in `methods`)."""

from __future__ import annotations

import torch

from ..errors import InvalidInputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str) -> str:
    """ "auto" is bf16 on a CUDA GPU that supports it and fp32 otherwise; fp16 needs a CUDA GPU."""
    if precision not in PRECISIONS:
        raise InvalidInputError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        raise InvalidInputError("--precision fp16 needs a CUDA GPU; on CPU use --precision bf16 or fp32")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise InvalidInputError(
            f"--precision bf16: {torch.cuda.get_device_name()} has no bf16 support; use --precision fp16 or fp32"
        )
    return precision


def trainer_arguments(precision: str, torch_compile: bool, gradient_accumulation_steps: int) -> dict:
    """`TrainingArguments` fields for these knobs (mixed precision is autocast with fp32 master weights)."""
    if gradient_accumulation_steps < 1:
        raise InvalidInputError(
            f"--gradient-accumulation-steps must be >= 1, got {gradient_accumulation_steps}"
        )
    resolved = resolve_precision(precision)
    return {
        "bf16": resolved == "bf16",
        "fp16": resolved == "fp16",
        "torch_compile": torch_compile,
        "gradient_accumulation_steps": gradient_accumulation_steps,
    }
