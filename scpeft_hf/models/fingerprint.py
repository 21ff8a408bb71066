"""A content fingerprint of a backbone's weights, stored with every adapter so it is never applied to another."""

from __future__ import annotations

import hashlib

import torch
from transformers import PreTrainedModel


def backbone_fingerprint(model: PreTrainedModel) -> str:
    """SHA-256 over the backbone's parameter names, shapes, dtypes and bytes, in name order.

    Task heads are excluded (only `model.base_model` is hashed), so a masked-expression checkpoint and the
    classifier built from it share a fingerprint. The hash does not depend on the file format or sharding.
    """
    digest = hashlib.sha256()
    state = model.base_model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:32]
