"""From AnnData to model inputs: gene vocabularies, scGPT tokenization (binning), Geneformer rank-value encoding,
the saved processors, collators.

This room does not import the models: it reads a model folder's `config.json` and `vocab.json` as files. Names are
imported on first use (PEP 562), so `scpeft_hf.data.collator` loads where anndata and datasets are not installed
(a GPU machine that only trains on pre-tokenized arrays).
"""

import importlib
from typing import Any

_LAZY = {
    "bin_csr_counts": ".binning",
    "bin_csr_values": ".binning",
    "ScGPTDataCollator": ".collator",
    "convert_dictionary_to_json": ".geneformer_dictionaries",
    "load_dictionary": ".geneformer_dictionaries",
    "safe_load_pickle": ".geneformer_dictionaries",
    "GeneformerDataCollator": ".collator",
    "GeneformerProcessor": ".geneformer_processor",
    "rank_value_order": ".rank_value",
    "ScGPTProcessor": ".processor",
    "BatchGroupedSampler": ".samplers",
    "GeneMatch": ".vocab",
    "GeneVocab": ".vocab",
    "strip_ensembl_version": ".vocab",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
