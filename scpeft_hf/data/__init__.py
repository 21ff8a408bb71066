"""From AnnData to model inputs: gene vocabularies, scGPT tokenization (binning), Geneformer rank-value encoding,
the saved processors, collators.

This room does not import the models: it reads a model folder's `config.json` and `vocab.json` as files.
"""

from .binning import bin_csr_counts, bin_csr_values
from .collator import ScGPTDataCollator
from .geneformer_dictionaries import convert_dictionary_to_json, load_dictionary, safe_load_pickle
from .geneformer_processor import GeneformerDataCollator, GeneformerProcessor, rank_value_order
from .processor import ScGPTProcessor
from .samplers import BatchGroupedSampler
from .vocab import GeneMatch, GeneVocab, strip_ensembl_version

__all__ = [
    "BatchGroupedSampler",
    "GeneformerDataCollator",
    "GeneformerProcessor",
    "convert_dictionary_to_json",
    "load_dictionary",
    "rank_value_order",
    "safe_load_pickle",
    "GeneMatch",
    "GeneVocab",
    "ScGPTDataCollator",
    "ScGPTProcessor",
    "bin_csr_counts",
    "bin_csr_values",
    "strip_ensembl_version",
]
