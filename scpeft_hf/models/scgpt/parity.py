"""How closely a converted scGPT checkpoint reproduces the official code: the max |Δ| of cell embeddings on random
cells, measured when the official scGPT 0.2.4 sources are installed (`pip install --no-deps scgpt==0.2.4`).

`import scgpt` fails on current torch (it imports torchtext), so the official `model/model.py` is loaded from its
file under a private package name, with its sibling modules, running no `__init__.py`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

OFFICIAL_VERSION = "0.2.4"
OFFICIAL_PACKAGE = "_official_scgpt"
# Heads the parity check leaves out on both sides: they do not shape the cell embedding.
_HEADS = ("cls_decoder.", "decoder.", "mvc_decoder.")


@dataclass
class Parity:
    """The measured max |Δ| (None when not measured) and how it was measured, or why not."""

    max_abs_diff: float | None
    note: str

    def describe(self) -> str:
        if self.max_abs_diff is None:
            return f"not measured ({self.note})"
        return f"{self.max_abs_diff:.2e} ({self.note})"


def official_source_root() -> Path | None:
    """The folder of the installed official `scgpt` 0.2.4 sources, or None when absent or another version."""
    try:
        dist = importlib.metadata.distribution("scgpt")
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != OFFICIAL_VERSION:
        return None
    return Path(dist.locate_file("scgpt"))


def ensure_package(name: str, path: Path) -> None:
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package


def load_source_module(package: str, root: Path, relative_path: str) -> types.ModuleType:
    """Import `<root>/<relative_path>` as module `<package>.<dotted relative path>`, running no `__init__.py`.

    Parent packages are empty stand-ins whose `__path__` points into `root`, so relative imports between sibling
    files (also lazy ones inside functions) find the real files. A module already loaded is returned as is.
    """
    ensure_package(package, root)
    parts = Path(relative_path).with_suffix("").parts
    for depth in range(1, len(parts)):
        ensure_package(".".join((package, *parts[:depth])), root.joinpath(*parts[:depth]))
    name = ".".join((package, *parts))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, root / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def official_transformer_model(root: Path) -> type[torch.nn.Module]:
    """scGPT's `TransformerModel` class from the official sources under `root`."""
    ensure_package(OFFICIAL_PACKAGE, root)
    sys.modules[OFFICIAL_PACKAGE].logger = logging.getLogger("official_scgpt")  # `from .. import logger`
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flash_attn is not installed": the PyTorch layers are the reference
        return load_source_module(OFFICIAL_PACKAGE, root, "model/model.py").TransformerModel


def measure_parity(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    vocab: dict[str, int],
    n_cells: int = 16,
    max_genes: int = 64,
    seed: int = 0,
) -> Parity:
    """Max |Δ| between the cell embeddings of `model` (converted, in eval mode) and of the official
    TransformerModel holding the checkpoint `state`, on `n_cells` seeded random cells (random genes and bins,
    padded to varied lengths). Not measured without the official sources, or for checkpoints whose official model
    needs more than genes and values (batch labels) or flash-attn (pre-norm)."""
    config = model.config
    root = official_source_root()
    if root is None:
        return Parity(None, f"the official scGPT {OFFICIAL_VERSION} code is not installed")
    if config.use_batch_labels or config.domain_spec_batchnorm or config.use_batch_discriminator:
        return Parity(None, "a batch-integration checkpoint: its official model also needs batch labels")
    if config.pre_norm or config.input_emb_style != "continuous":
        return Parity(None, "the official code runs this variant only with flash-attn or binned inputs")
    official = official_transformer_model(root)(
        ntoken=len(vocab),
        d_model=config.hidden_size,
        nhead=config.num_attention_heads,
        d_hid=config.intermediate_size,
        nlayers=config.num_hidden_layers,
        vocab=vocab,
        dropout=0.0,
        pad_token=next(token for token, index in vocab.items() if index == config.pad_token_id),
        pad_value=config.pad_value,
        do_mvc=True,
        explicit_zero_prob=config.explicit_zero_prob,
        cell_emb_style=config.cell_emb_style,
    )
    official_state = {
        key.replace("self_attn.Wqkv.weight", "self_attn.in_proj_weight").replace(
            "self_attn.Wqkv.bias", "self_attn.in_proj_bias"
        ): tensor
        for key, tensor in state.items()
        if not key.startswith(_HEADS)  # heads (their sizes vary) do not shape the cell embedding
    }
    loaded = official.load_state_dict(official_state, strict=False)
    missing = [key for key in loaded.missing_keys if not key.startswith(_HEADS)]
    if missing:
        return Parity(None, f"the official model has weights the checkpoint lacks: {', '.join(missing[:3])}")
    ids, values, padding = random_cells(vocab, config, n_cells, max_genes, seed)
    official.eval()
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's nested-tensor fast path announces itself as a prototype
        expected = official(ids, values, padding)["cell_emb"]
        got = model(input_ids=ids, values=values, attention_mask=(~padding).long()).cell_embedding
    difference = (got - expected).abs().max().item()
    note = (
        f"cell embeddings of {n_cells} random cells of up to {ids.shape[1]} genes vs the official scGPT "
        f"{OFFICIAL_VERSION} TransformerModel, eval mode, float32, CPU"
    )
    return Parity(difference, note)


def random_cells(
    vocab: dict[str, int], config, n_cells: int, max_genes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random cells as scGPT sees them: `<cls>` (value 0) then distinct genes with bins 1..n_bins-1, the
    rows padded (`<pad>`, pad_value) to lengths from half to all of the columns."""
    generator = torch.Generator().manual_seed(seed)
    specials = {
        config.pad_token_id,
        config.cls_token_id,
        *(vocab[t] for t in ("<eoc>", "<mask>") if t in vocab),
    }
    genes = torch.tensor(sorted(set(vocab.values()) - specials))
    length = min(max_genes, len(genes) + 1)
    ids = torch.stack(
        [genes[torch.randperm(len(genes), generator=generator)[: length - 1]] for _ in range(n_cells)]
    )
    ids = torch.cat([torch.full((n_cells, 1), config.cls_token_id), ids], dim=1)
    values = torch.randint(1, config.n_bins, (n_cells, length), generator=generator).float()
    values[:, 0] = 0
    padding = torch.zeros(n_cells, length, dtype=torch.bool)
    for row, real in enumerate(torch.linspace(max(1, length // 2), length, n_cells).long().tolist()):
        padding[row, real:] = True
    ids[padding] = config.pad_token_id
    values[padding] = config.pad_value
    return ids, values, padding
