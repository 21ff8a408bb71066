"""A tiny random Geneformer written in the official folder layout, with small dictionaries (pickle and JSON)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch
from transformers import BertForMaskedLM

from scpeft_hf import geneformer_config

SPECIALS_V2 = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
SPECIALS_V1 = {"<pad>": 0, "<mask>": 1}
HIDDEN, NUM_LAYERS = 32, 4


def ensembl_id(index: int) -> str:
    return f"ENSG{index:011d}"


def toy_dictionaries(n_genes: int, v2: bool = True, seed: int = 0) -> tuple[dict, dict]:
    """Token dictionary (specials, then genes ENSG…1..n) and positive gene medians, as the official files hold."""
    specials = SPECIALS_V2 if v2 else SPECIALS_V1
    genes = [ensembl_id(i + 1) for i in range(n_genes)]
    tokens = {**specials, **{gene: len(specials) + i for i, gene in enumerate(genes)}}
    medians = np.random.default_rng(seed).uniform(0.5, 4.0, n_genes).round(3)
    # official medians are numpy floats: keep one as np.float32 so the safe unpickler has to decode it
    return tokens, {
        gene: (np.float32(m) if i == 0 else float(m))
        for i, (gene, m) in enumerate(zip(genes, medians, strict=True))
    }


def write_pickle(path: Path, data: object) -> Path:
    path.write_bytes(pickle.dumps(data))
    return path


def write_tiny_geneformer(
    folder: Path,
    n_genes: int,
    *,
    v2: bool = True,
    max_positions: int = 64,
    weights: str = "safetensors",
    dictionaries: str | None = "pkl",
    seed: int = 0,
) -> Path:
    """A random `BertForMaskedLM` saved as Geneformer ships it; dictionaries copied in as `.pkl` or `.json`."""
    tokens, medians = toy_dictionaries(n_genes, v2)
    config = geneformer_config(
        "V2-104M" if v2 else "V1-10M",
        vocab_size=len(tokens),
        hidden_size=HIDDEN,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    ).to_bert_config()  # official config.json files say model_type "bert" and carry no cell fields
    torch.manual_seed(seed)
    model = BertForMaskedLM(config)
    if weights == "safetensors":
        model.save_pretrained(folder)
    else:  # older Geneformer releases ship a pickled state dict
        config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    if dictionaries == "pkl":
        write_pickle(folder / "token_dictionary_gc104M.pkl", tokens)
        write_pickle(folder / "gene_median_dictionary_gc104M.pkl", medians)
    elif dictionaries == "json":
        (folder / "token_dictionary.json").write_text(json.dumps(tokens))
        (folder / "gene_median_dictionary.json").write_text(
            json.dumps({k: float(v) for k, v in medians.items()})
        )
    return folder
