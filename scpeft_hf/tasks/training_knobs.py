"""Speed and memory knobs shared by every task, training and inference alike: the device, numeric precision,
torch.compile and gradient accumulation (adapter placement lives in `methods`). One resolver per knob, so that
`--precision auto` means the same thing in `train`, `integrate`, `predict`, `embed` and `markers`."""

from __future__ import annotations

import contextlib
import os
import re

import torch

from ..errors import InvalidInputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" is the current CUDA GPU when one is visible, else the CPU; "cuda" and "cuda:N" need that GPU."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise InvalidInputError(f"--device {device!r} is not one of {', '.join(DEVICES)} (e.g. cuda:1)")
    cuda = torch.cuda.is_available()
    if device == "auto":
        return torch.device("cuda" if cuda else "cpu")
    if device.startswith("cuda") and not cuda:
        raise InvalidInputError(
            f"--device {device}: no CUDA GPU is visible to PyTorch; use --device cpu or auto"
        )
    resolved = torch.device(device)
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise InvalidInputError(
            f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible (cuda:0.."
            f"cuda:{torch.cuda.device_count() - 1})"
        )
    return resolved


def resolve_precision(precision: str, device: str | torch.device | None = None) -> str:
    """ "auto" is bf16 on a CUDA GPU that supports it and fp32 otherwise (the CPU included); fp16 needs a CUDA GPU.
    `device` is where the model runs (default: `resolve_device("auto")`)."""
    if precision not in PRECISIONS:
        raise InvalidInputError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    cuda = resolve_device("auto" if device is None else device).type == "cuda"
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        raise InvalidInputError("--precision fp16 needs a CUDA GPU; on CPU use --precision bf16 or fp32")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise InvalidInputError(
            f"--precision bf16: {torch.cuda.get_device_name()} has no bf16 support; use --precision fp16 or fp32"
        )
    return precision


def autocast(precision: str, device: str | torch.device):
    """The context an inference pass runs in: autocast to bf16/fp16 (weights stay fp32, as in training) or none."""
    device = resolve_device(device)
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if resolved == "bf16" else torch.float16)


def trainer_arguments(
    precision: str, torch_compile: bool, gradient_accumulation_steps: int, device: str = "auto"
) -> dict:
    """`TrainingArguments` fields for these knobs (mixed precision is autocast with fp32 master weights).

    `device` "cpu" trains on the CPU even where a GPU is visible; "cuda:N" makes GPU N the current device, which
    the Trainer then uses (one process; under `torchrun` each rank keeps its own GPU)."""
    if gradient_accumulation_steps < 1:
        raise InvalidInputError(
            f"--gradient-accumulation-steps must be >= 1, got {gradient_accumulation_steps}"
        )
    target = resolve_device(device)
    if target.type == "cuda" and target.index is not None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise InvalidInputError(
                f"--device {device} names one GPU, but this is one of several processes (torchrun / accelerate "
                "launch), each on its own GPU: use --device auto or cuda"
            )
        torch.cuda.set_device(target)
    resolved = resolve_precision(precision, target)
    return {
        "bf16": resolved == "bf16",
        "fp16": resolved == "fp16",
        "torch_compile": torch_compile,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "use_cpu": target.type == "cpu",
    }
