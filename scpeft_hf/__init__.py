"""scpeft-hf: parameter-efficient fine-tuning of single-cell foundation models on the Hugging Face stack.

Importing the package registers its models with transformers' Auto classes and its tuners with peft.
"""

from .data import (
    GeneformerDataCollator,
    GeneformerProcessor,
    GeneMatch,
    GeneVocab,
    ScGPTDataCollator,
    ScGPTProcessor,
)
from .models.geneformer import (
    GeneformerForCellClassification,
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

__version__ = "0.1.0"

__all__ = [
    "EncoderAdapterConfig",
    "GeneformerDataCollator",
    "GeneformerForCellClassification",
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
