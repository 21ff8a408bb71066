"""What a fine-tuned model attends to: per-cell gene scores from one layer's attention, and marker genes per group.

The scores come from the query and key projections of ONE layer, caught with forward hooks while the model runs
as usual (SDPA everywhere; no `output_attentions`, which would switch every layer to eager attention and return
L x L probabilities per layer). Hooks see the projections' outputs, so a LoRA on them is included, and a pre-norm
model's normalised input is what they project. Two methods:

- `qk-rank` (scPEFT's): raw q.k^T per head (no scaling, no softmax) over the real tokens (`<cls>` and the genes;
  padding, prefix-adapter slots and Geneformer's `<eos>` left out); every row rank-normalised (rank / M, average
  ranks for ties, M real tokens), then every column; mean over heads; the `<cls>` row.
- `cls-softmax`: the attention probabilities of `<cls>` that the model used (softmax over every key it attends,
  prefix slots included), mean over heads, at the gene columns.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader

from ..data import GeneformerProcessor
from ..errors import InvalidInputError, OutputExistsError
from .backbones import Processor, make_collator
from .gene_ranking import group_labels, marker_genes_df, rank_genes_by_score, split_groups, wilcoxon_top_genes
from .inference import progress_bar
from .outputs import DEFAULT_KEY, base_record, markers_key, run_record, scores_layer
from .plots import markers_figure, plot_markers  # noqa: F401  (markers_figure: re-exported, notebooks use it)
from .trained import load_trained_model
from .training_knobs import autocast, resolve_precision

METHODS = ("qk-rank", "cls-softmax")


SCORES_KEY = scores_layer()
_PROJECTION = re.compile(r"(?:^|\.)layer\.(\d+)\.attention\.self\.(query|key)$")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..M along the last axis, ties sharing their average rank (scipy's `rankdata(method="average")`)."""
    order = np.argsort(values, axis=-1)
    ordered = np.take_along_axis(values, order, axis=-1)
    size = values.shape[-1]
    positions = np.broadcast_to(np.arange(size), ordered.shape)
    new_run = np.ones(ordered.shape, dtype=bool)
    new_run[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    run_ends = np.ones_like(new_run)
    run_ends[..., :-1] = new_run[..., 1:]
    # first and last sorted position of each element's run of equal values
    first = np.maximum.accumulate(np.where(new_run, positions, 0), axis=-1)
    last = np.minimum.accumulate(np.where(run_ends, positions, size)[..., ::-1], axis=-1)[..., ::-1]
    ranks = np.empty(ordered.shape)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=-1)
    return ranks


def qk_rank_cls_scores(query: torch.Tensor, key: torch.Tensor, num_heads: int) -> np.ndarray:
    """scPEFT's score of every token from `<cls>` (token 0): `query`, `key` `[M, hidden]` of the M real tokens.

    Per head, S = q.k^T (float64); R = row ranks of S / M; the `<cls>` score of token j is the rank of R[0, j] in
    column j of R, / M. Returns the mean over heads, `[M]` float64 (entry 0 is `<cls>` itself).
    """
    tokens = query.shape[0]
    heads_query = query.double().view(tokens, num_heads, -1).transpose(0, 1)
    heads_key = key.double().view(tokens, num_heads, -1).transpose(0, 1)
    row_ranks = average_ranks((heads_query @ heads_key.transpose(1, 2)).numpy()) / tokens  # [H, M, M]
    cls_row = row_ranks[:, :1, :]
    # the column rank of row 0 only: (number below) + (number equal + 1) / 2, as average ranks give
    below = (row_ranks < cls_row).sum(1)
    equal = (row_ranks == cls_row).sum(1)
    return ((below + (equal + 1) / 2) / tokens).mean(0)


def cls_softmax_scores(query: torch.Tensor, key: torch.Tensor, num_heads: int) -> np.ndarray:
    """Softmax attention of `<cls>` (query row 0) over `key` `[K, hidden]` (every key it attends), mean over heads."""
    head_dim = query.shape[-1] // num_heads
    cls_query = query[0].view(num_heads, 1, head_dim)
    heads_key = key.view(key.shape[0], num_heads, head_dim).transpose(0, 1)
    logits = (cls_query @ heads_key.transpose(1, 2)).squeeze(1) * head_dim**-0.5
    return torch.softmax(logits.float(), dim=-1).mean(0).double().numpy()


def attention_projections(model: torch.nn.Module, layer: int) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """The query and key projection modules of encoder layer `layer` (negative counts from the end)."""
    found: dict[tuple[int, str], torch.nn.Module] = {}
    for name, module in model.named_modules():
        match = _PROJECTION.search(name)
        if match:
            found[(int(match[1]), match[2])] = module
    if not found:
        raise InvalidInputError(
            f"{type(model).__name__} has no modules named '*.layer.N.attention.self.query/key'; attention scores "
            "need an scGPT or Geneformer (BERT) model"
        )
    num_layers = 1 + max(index for index, _ in found)
    if not -num_layers <= layer < num_layers:
        raise InvalidInputError(
            f"--attention-layer {layer} is out of range: the model has {num_layers} layers; use 0..{num_layers - 1} "
            f"or -{num_layers}..-1 (-1 = the last)"
        )
    index = layer % num_layers
    return found[(index, "query")], found[(index, "key")], num_layers


def check_has_cls(processor: Processor) -> None:
    if isinstance(processor, GeneformerProcessor) and not processor.special_tokens:
        raise InvalidInputError(
            "Attention scores are read from the <cls> token, and this Geneformer model has none (V1 tokenization: "
            "genes only); use a Geneformer V2 model or scGPT"
        )


def _special_token_ids(processor: Processor) -> list[int]:
    if isinstance(processor, GeneformerProcessor):
        return [processor.token_dictionary[name] for name in ("<pad>", "<mask>", "<cls>", "<eos>")
                if name in processor.token_dictionary]  # fmt: skip
    return [processor.pad_token_id, processor.cls_token_id]


def _token_of_column(processor: Processor, adata: ad.AnnData) -> np.ndarray:
    """The token id of each `var` gene, -1 for genes outside the model's vocabulary."""
    match = processor.match_genes(adata)
    return np.asarray(getattr(match, "token_ids", match))


def vocabulary_genes(processor: Processor, adata: ad.AnnData) -> np.ndarray:
    """Boolean mask over `var`: the genes the model can score (those in its vocabulary)."""
    return _token_of_column(processor, adata) >= 0


def _column_of_token(processor: Processor, adata: ad.AnnData) -> np.ndarray:
    """An array over token ids: the `var` column each gene token came from (-1 for other tokens)."""
    token_ids = _token_of_column(processor, adata)
    table = np.full(max(int(token_ids.max()) + 1, 1), -1, dtype=np.int64)
    matched = np.flatnonzero(token_ids >= 0)
    table[token_ids[matched]] = matched
    return table


@torch.inference_mode()
def attention_gene_scores(
    model: torch.nn.Module,
    processor: Processor,
    adata: ad.AnnData,
    *,
    method: str = "qk-rank",
    layer: int = -1,
    batch_size: int = 16,
    precision: str = "auto",
    progress: bool = True,
) -> tuple[sp.csr_matrix, dict]:
    """Score every expressed gene of every cell (see the module docstring) with `model` as it is (adapter active).

    Cells are tokenized by `processor`; a cell with more genes than `processor.max_length` allows is scored on the
    eval collator's deterministic per-cell subset (scGPT), or on its top-ranked genes (Geneformer). Returns a CSR
    `[n_obs, n_vars]` matrix (0 = not expressed or not in the subset) and the settings used. `precision` runs the
    model under autocast as every command does (bf16 query/key values tie more often than fp32 ones).
    """
    if method not in METHODS:
        raise InvalidInputError(f"--method {method!r} is unknown; use one of {', '.join(METHODS)}")
    check_has_cls(processor)
    query_module, key_module, num_layers = attention_projections(model, layer)
    num_heads = model.config.num_attention_heads
    column_of_token = _column_of_token(processor, adata)
    special = torch.tensor(_special_token_ids(processor))
    started, cpu_started = time.perf_counter(), time.process_time()
    dataset = processor(adata)
    collator = make_collator(processor, train=False)
    columns = [name for name in dataset.column_names if name in ("input_ids", "values")]
    loader = DataLoader(dataset.select_columns(columns), batch_size=batch_size, collate_fn=collator)

    captured: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _a, output, name=name: captured.__setitem__(name, output))
        for name, module in (("query", query_module), ("key", key_module))
    ]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows, cols, values = [], [], []
    resolved_precision = resolve_precision(precision, device)
    try:
        with progress_bar(None, len(dataset), progress, "markers") as bar:
            for batch in loader:
                with autocast(precision, device):  # the forward pass only: scores are computed in float64
                    model(**{name: tensor.to(device) for name, tensor in batch.items()})
                query, key = captured["query"].float().cpu(), captured["key"].float().cpu()
                input_ids, attended = batch["input_ids"], batch["attention_mask"].bool()
                # a prefix adapter's slots sit right after <cls> in the layers it reaches
                num_prefix = query.shape[1] - input_ids.shape[1]
                for cell in range(input_ids.shape[0]):
                    genes = attended[cell] & ~torch.isin(input_ids[cell], special)
                    gene_positions = torch.nonzero(genes).flatten()
                    if method == "qk-rank":
                        real = torch.cat([torch.zeros(1, dtype=torch.long), gene_positions + num_prefix])
                        scores = qk_rank_cls_scores(query[cell, real], key[cell, real], num_heads)[1:]
                    else:
                        keys = torch.nonzero(attended[cell]).flatten()
                        keys = torch.cat([keys[:1], torch.arange(1, 1 + num_prefix), keys[1:] + num_prefix])
                        probabilities = cls_softmax_scores(query[cell], key[cell, keys], num_heads)
                        # gene positions among the attended keys (attended tokens come first, prefix after <cls>)
                        scores = probabilities[(gene_positions + num_prefix).numpy()]
                    rows.append(np.full(len(gene_positions), len(rows)))
                    cols.append(column_of_token[input_ids[cell, gene_positions].numpy()])
                    values.append(scores)
                bar.update(input_ids.shape[0])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    matrix = sp.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=adata.shape
    )
    if isinstance(processor, GeneformerProcessor):
        # the processor itself cut over-long cells to their top-ranked genes
        vocabulary_columns = column_of_token[column_of_token >= 0]
        expressed = np.asarray((adata.X[:, vocabulary_columns] > 0).sum(1)).ravel()
        n_subset = int((expressed > processor.max_genes).sum())
        rule = "top-ranked genes (Geneformer truncation)"
    else:
        n_subset = int((np.asarray(dataset["length"]) > processor.max_length).sum())
        rule = "the eval collator's seeded per-cell subset"
    settings = {
        "method": method,
        "layer": int(layer % num_layers),
        "num_layers": int(num_layers),
        "max_length": int(processor.max_length),
        "precision": resolved_precision,
        "device": str(device),
        "batch_size": batch_size,
        "n_cells_subset": n_subset,
        "subset_rule": rule,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }
    return matrix, settings


def score_genes(
    adata: ad.AnnData,
    adapter: str | Path,
    *,
    base: str | Path | None = None,
    method: str = "qk-rank",
    layer: int = -1,
    batch_size: int = 16,
    key_added: str = DEFAULT_KEY,
    precision: str = "auto",
    device: str = "auto",
    progress: bool = True,
    revision: str | None = None,
) -> np.ndarray:
    """Write attention gene scores of the trained model in `adapter` to `adata.layers[f"{key_added}_attention"]`
    (sparse, cells x genes) and the record (settings, base, adapter, versions) to `adata.uns[key_added]`; see
    :func:`attention_gene_scores`. Returns the boolean mask of the `var` genes in the model's vocabulary (the genes
    that can be scored). `base` overrides the recorded base (a folder, or a Hub id at `revision`)."""
    layer_key = scores_layer(key_added)
    model, processor, run_info = load_trained_model(adapter, base, revision=revision, device=device)
    matrix, settings = attention_gene_scores(
        model, processor, adata, method=method, layer=layer, batch_size=batch_size, precision=precision,
        progress=progress,
    )  # fmt: skip
    vocabulary = vocabulary_genes(processor, adata)
    adata.layers[layer_key] = matrix
    adata.uns[key_added] = run_record(
        "markers", settings, base=base_record(run_info), adapter=str(adapter), method=run_info["method"],
        scores_layer=layer_key, vocabulary_genes=int(vocabulary.sum()),
    )  # fmt: skip
    return vocabulary


def marker_paths(out: str | Path) -> dict[str, Path]:
    """The three files `find_markers` writes: the table at `out`, the figure and the summary beside it."""
    out = Path(out)
    return {"csv": out, "png": out.with_suffix(".png"), "summary": out.with_name(f"{out.stem}_summary.json")}


def find_markers(
    adata: ad.AnnData,
    adapter: str | Path,
    label_key: str,
    out: str | Path,
    *,
    top: int = 20,
    layer: int = -1,
    reference: str = "rest",
    method: str = "qk-rank",
    base: str | Path | None = None,
    batch_size: int = 16,
    overwrite: bool = False,
    revision: str | None = None,
    key_added: str = DEFAULT_KEY,
    precision: str = "auto",
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Attention marker genes per group of `adata.obs[label_key]`: scores (:func:`score_genes`, into
    `adata.layers[f"{key_added}_attention"]` with the record in `adata.uns[key_added]`), ranking
    (:func:`rank_genes_by_score`, into `adata.uns[f"{key_added}_markers"]`), and the agreement of each group's top
    `top` with scanpy's Wilcoxon top `top` on the same cells and vocabulary genes (counts -> normalize_total 1e4 ->
    log1p, `use_raw=False`). Writes `out` (csv), a dotplot (.png) and `<stem>_summary.json`, all three or none.
    Returns the summary."""
    paths = marker_paths(out)
    existing = [str(path) for path in paths.values() if path.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{', '.join(existing)} exist; choose another --out or pass --overwrite")
    if top < 1:
        raise InvalidInputError(f"--top {top} must be at least 1")
    ranking = markers_key(key_added)
    labels = group_labels(adata, label_key)
    groups, skipped = split_groups(labels, reference)
    vocabulary = score_genes(
        adata, adapter, base=base, method=method, layer=layer, batch_size=batch_size, key_added=key_added,
        precision=precision, device=device, progress=progress, revision=revision,
    )  # fmt: skip
    rank_genes_by_score(
        adata, label_key, scores_layer(key_added), reference=reference, genes=vocabulary, key_added=ranking
    )
    adata.uns[key_added]["markers"] = {
        "label_key": label_key,
        "reference": reference,
        "top": top,
        "key": ranking,
    }
    table = marker_genes_df(adata, key=ranking, top=top)
    expression, preprocessing = log_normalised_genes(adata, vocabulary)
    expression.obs[label_key] = labels.to_numpy()
    wilcoxon = wilcoxon_top_genes(expression, label_key, groups, reference, top)
    settings = adata.uns[key_added]["settings"]
    summary = {
        "label_key": label_key,
        "reference": reference,
        "top": top,
        "n_cells": int(adata.n_obs),
        "scores": {key: value for key, value in settings.items() if "seconds" not in key},
        "seconds_per_1000_cells": 1000 * settings["seconds"] / max(adata.n_obs, 1),
        "cpu_seconds_per_1000_cells": 1000 * settings["cpu_seconds"] / max(adata.n_obs, 1),
        "wilcoxon_input": preprocessing,
        "groups": {},
        "skipped_groups": {name: f"{count} cells (< 3): not ranked" for name, count in skipped.items()},
    }
    for group in groups:
        ours = table.loc[table["group"] == group, "gene"].tolist()
        overlap = len(set(ours) & set(wilcoxon[group]))
        summary["groups"][group] = {
            "n_cells": int((labels == group).sum()),
            "top_genes": ours,
            "wilcoxon_top_genes": wilcoxon[group],
            "overlap_with_wilcoxon": overlap,
            "overlap_fraction": overlap / top,
        }
    _write_all(paths, table, summary, lambda path: plot_markers(adata, label_key, path, key_added=key_added))
    return summary


def log_normalised_genes(adata: ad.AnnData, genes: np.ndarray) -> tuple[ad.AnnData, str]:
    """`adata.X` restricted to `genes`, log-normalised for differential expression, and how that was done."""
    import scanpy as sc

    values = sp.csr_matrix(adata.X[:, np.flatnonzero(genes)], dtype=np.float32)
    cells = ad.AnnData(X=values, var=adata.var.iloc[np.flatnonzero(genes)][[]])
    cells.obs_names = adata.obs_names
    if np.array_equal(values.data, np.rint(values.data)):
        sc.pp.normalize_total(cells, target_sum=1e4)
        sc.pp.log1p(cells)
        return cells, "counts in .X -> normalize_total 1e4 over the vocabulary genes -> log1p"
    return cells, ".X taken as log-normalised (non-integer values), restricted to the vocabulary genes"


def _write_all(paths: dict[str, Path], table: pd.DataFrame, summary: dict, plot) -> None:
    """Write the table, summary and figure beside their targets, then move all three into place."""
    staged = {name: path.with_name(f".{path.name}.partial") for name, path in paths.items()}
    try:
        paths["csv"].parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(staged["csv"], index=False)
        staged["summary"].write_text(json.dumps(summary, indent=2))
        with open(staged["png"], "wb") as handle:
            plot(handle)
        for name, path in paths.items():
            staged[name].replace(path)
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)
