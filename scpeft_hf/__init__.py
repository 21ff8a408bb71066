"""scpeft-hf: parameter-efficient fine-tuning of single-cell foundation models on the Hugging Face stack.

Importing the package registers its models with transformers' Auto classes (`AutoProcessor` included: see
`scpeft_hf/data/auto.py`) and its tuners with peft. Those need only torch, transformers and peft; the data room (processors, collators: anndata, datasets, pyarrow) is imported
on first use of one of its names, so `import scpeft_hf` also works where only the model stack is installed.
"""

import importlib
from typing import Any

from .data.auto import register_processors
from .models.geneformer import (
    GeneformerConfig,
    GeneformerForCellClassification,
    GeneformerForMaskedLM,
    GeneformerModel,
    geneformer_config,
    load_geneformer,
)
from .models.scgpt import (
    ScGPTConfig,
    ScGPTForCellClassification,
    ScGPTForMaskedExpressionModeling,
    ScGPTModel,
    ScGPTPreTrainedModel,
)
from .tuners import (
    EncoderAdapterConfig,
    PrefixAdapterConfig,
    ScPeftType,
    TokenAdapterConfig,
    paper_config,
    scpeft_lora_config,
)

__version__ = "0.2.0"

# `AutoProcessor.from_pretrained(folder or Hub id)` returns the processor saved there: one (config class, processor
# name) pair per backbone whose config class is ours (transformers refuses to file processors under BertConfig).
PROCESSOR_REGISTRATIONS = [(ScGPTConfig, "ScGPTProcessor"), (GeneformerConfig, "GeneformerProcessor")]
register_processors(PROCESSOR_REGISTRATIONS)

# names served from the data room on first access (PEP 562), with the submodule that defines them
_LAZY = {
    name: ".data"
    for name in (
        "GeneformerDataCollator",
        "GeneformerProcessor",
        "GeneMatch",
        "GeneVocab",
        "ScGPTDataCollator",
        "ScGPTProcessor",
    )
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "EncoderAdapterConfig",
    "GeneformerConfig",
    "GeneformerDataCollator",
    "GeneformerForCellClassification",
    "GeneformerForMaskedLM",
    "GeneformerModel",
    "GeneformerProcessor",
    "PrefixAdapterConfig",
    "GeneMatch",
    "GeneVocab",
    "ScGPTDataCollator",
    "ScGPTProcessor",
    "ScGPTConfig",
    "ScGPTForCellClassification",
    "ScGPTForMaskedExpressionModeling",
    "ScGPTModel",
    "ScGPTPreTrainedModel",
    "ScPeftType",
    "TokenAdapterConfig",
    "geneformer_config",
    "load_geneformer",
    "paper_config",
    "scpeft_lora_config",
]
