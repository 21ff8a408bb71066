"""scGPT ported to transformers: configuration, model classes, and conversion of official checkpoints."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

from .configuration_scgpt import ScGPTConfig
from .convert_scgpt import ConversionReport, convert_scgpt_checkpoint
from .modeling_scgpt import (
    ScGPTCellClassifierOutput,
    ScGPTForCellClassification,
    ScGPTModel,
    ScGPTModelOutput,
    ScGPTPreTrainedModel,
)
from .modeling_scgpt_integration import ScGPTBatchIntegrationOutput, ScGPTForBatchIntegration
from .modeling_scgpt_pretraining import ScGPTForMaskedExpressionModeling, ScGPTMaskedExpressionOutput

AutoConfig.register("scgpt", ScGPTConfig, exist_ok=True)
AutoModel.register(ScGPTConfig, ScGPTModel, exist_ok=True)
AutoModelForSequenceClassification.register(ScGPTConfig, ScGPTForCellClassification, exist_ok=True)
AutoModelForMaskedLM.register(ScGPTConfig, ScGPTForMaskedExpressionModeling, exist_ok=True)

__all__ = [
    "ConversionReport",
    "convert_scgpt_checkpoint",
    "ScGPTBatchIntegrationOutput",
    "ScGPTCellClassifierOutput",
    "ScGPTConfig",
    "ScGPTForBatchIntegration",
    "ScGPTForCellClassification",
    "ScGPTForMaskedExpressionModeling",
    "ScGPTMaskedExpressionOutput",
    "ScGPTModel",
    "ScGPTModelOutput",
    "ScGPTPreTrainedModel",
]
