"""From AnnData to model inputs: gene vocabularies, scGPT tokenization (binning), the saved processor, collators.

This room does not import the models: it reads a model folder's `config.json` and `vocab.json` as files.
"""

from .binning import bin_csr_counts, bin_csr_values
from .collator import ScGPTDataCollator
from .processor import ScGPTProcessor
from .vocab import GeneMatch, GeneVocab, strip_ensembl_version

__all__ = [
    "GeneMatch",
    "GeneVocab",
    "ScGPTDataCollator",
    "ScGPTProcessor",
    "bin_csr_counts",
    "bin_csr_values",
    "strip_ensembl_version",
]
