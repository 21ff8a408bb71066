"""Shared inputs for the data-room tests: scanpy's PBMC counts and a vocabulary built from their genes."""

from __future__ import annotations

import functools
import types

import numpy as np
import pytest
from anndata import AnnData

from scpeft_hf.data import GeneVocab
from scpeft_hf.datasets import pbmc68k_reduced
from tests.official_scgpt import load_official_module, stub_official_imports


@functools.cache
def _pbmc() -> AnnData:
    return pbmc68k_reduced()


def pbmc() -> AnnData:
    """A fresh copy of the 700-cell PBMC counts (tests may modify it)."""
    return _pbmc().copy()


def pbmc_vocab(adata: AnnData) -> GeneVocab:
    """Every gene but each tenth, with shuffled ids, then `<pad>`, `<cls>`, `<eoc>` as in official vocabs."""
    genes = [gene for index, gene in enumerate(adata.var_names) if index % 10]
    ids = np.random.default_rng(0).permutation(len(genes))
    token_to_id = {gene: int(token_id) for gene, token_id in zip(genes, ids, strict=True)}
    token_to_id.update({"<pad>": len(genes), "<cls>": len(genes) + 1, "<eoc>": len(genes) + 2})
    return GeneVocab(token_to_id)


def official_scgpt(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """The official `preprocess` and `tokenizer/gene_tokenizer` modules of scgpt 0.2.4 (skips if absent)."""
    stub_official_imports(monkeypatch)
    return types.SimpleNamespace(
        preprocess=load_official_module("preprocess.py"),
        tokenizer=load_official_module("tokenizer/gene_tokenizer.py"),
    )
