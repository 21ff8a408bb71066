"""Attention marker genes vs canonical markers and scanpy's Wilcoxon ranking, per dataset.

For a dataset: fine-tune an encoder adapter on its labels (`train_annotation`, seeded 72/8/20 split), then score
every cell with `find_markers` (qk-rank and cls-softmax, reference "rest", top 20) and report per group:
- the overlap of the attention top-20 with scanpy's Wilcoxon top-20 (same cells, the vocabulary's genes);
- the recall of the canonical markers (those present in the data and the vocabulary) in the top-20, beside the
  same recall for the Wilcoxon top-20 (differential expression) and for the backbone's own attention with the
  adapter switched off (qk-rank, what the model attended before fine-tuning);
- scoring time per 1,000 cells (wall clock and process CPU time; the machine may be shared).

    python benchmarks/markers.py --dataset pbmc68k                   # embedded backbone
    python benchmarks/markers.py --dataset baron --base scpeft_hf/assets/scgpt-offline-v1   # Baron human pancreas

Each run writes `benchmarks/results/markers_<dataset>.json`; `benchmarks/results/markers.md` is rebuilt from every
such file present.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
TOP = 20

# dataset -> (loader in scpeft_hf.datasets, label column, {group: canonical markers})
DATASETS = {
    "pbmc68k": (
        "pbmc68k_reduced",
        "bulk_labels",
        {
            "CD19+ B": ["MS4A1", "CD79A", "CD79B"],
            "CD56+ NK": ["NKG7", "GNLY"],
            "CD14+ Monocyte": ["LYZ"],
            "CD8+ Cytotoxic T": ["CD8A", "CD8B"],
            "Dendritic": ["FCER1A"],
        },
    ),
    "baron": (
        "baron_pancreas",
        "cell_type",
        {
            "beta": ["INS"],
            "alpha": ["GCG"],
            "delta": ["SST"],
            "gamma": ["PPY"],
            "acinar": ["PRSS1", "CPA1"],
            "ductal": ["KRT19"],
        },
    ),
}


def load_dataset(name: str):
    import scpeft_hf.datasets as datasets

    loader, label_key, canonical = DATASETS[name]
    if not hasattr(datasets, loader):
        raise SystemExit(
            f"scpeft_hf.datasets has no {loader}() in this checkout; merge the branch that adds it"
        )
    return getattr(datasets, loader)(), label_key, canonical


def canonical_recall(canonical: dict, top_genes: dict[str, list[str]], present: set[str]) -> dict:
    """Per canonical group (matched case-insensitively to the data's groups): markers present, found in the top."""
    by_lower = {group.lower(): group for group in top_genes}
    rows = {}
    for group, markers in canonical.items():
        data_group = by_lower.get(group.lower())
        kept = [gene for gene in markers if gene in present]
        found = [gene for gene in kept if data_group and gene in top_genes[data_group]]
        rows[group] = {"group_in_data": data_group, "present": kept, "found": found}
    return rows


def backbone_top_genes(adata, adapter: Path, label_key: str, genes) -> dict[str, list[str]]:
    """qk-rank marker genes from the same model with its adapter switched off."""
    from scpeft_hf.tasks.attention import attention_gene_scores
    from scpeft_hf.tasks.gene_ranking import marker_genes_df, rank_genes_by_score
    from scpeft_hf.tasks.trained import load_trained_model

    model, processor, _ = load_trained_model(adapter)
    with model.disable_adapter():
        matrix, _ = attention_gene_scores(model, processor, adata)
    scored = adata.copy()
    scored.layers["backbone"] = matrix
    rank_genes_by_score(scored, label_key, "backbone", genes=genes, key_added="backbone_markers")
    table = marker_genes_df(scored, key="backbone_markers", top=TOP)
    return {group: rows["gene"].tolist() for group, rows in table.groupby("group")}


def run(dataset: str, base: str | None, epochs: int, seed: int, threads: int) -> dict:
    from scpeft_hf.tasks.annotation import TrainingSettings, train_annotation
    from scpeft_hf.tasks.attention import find_markers, vocabulary_genes
    from scpeft_hf.tasks.backbones import load_processor

    adata, label_key, canonical = load_dataset(dataset)
    result = {
        "dataset": dataset,
        "label_key": label_key,
        "n_cells": int(adata.n_obs),
        "base": base or "embedded",
    }
    with tempfile.TemporaryDirectory() as scratch:
        adapter = Path(scratch) / "adapter"
        started = time.perf_counter()
        trained = train_annotation(
            adata.copy(),
            label_key,
            "encoder",
            adapter,
            base=base,
            settings=TrainingSettings(epochs=epochs, seed=seed),
        )
        result["training"] = {
            "method": "encoder",
            "epochs": epochs,
            "seconds": time.perf_counter() - started,
            **{
                key: trained.metrics[key]
                for key in ("test_accuracy", "test_macro_f1", "test_balanced_accuracy")
            },
        }
        torch.set_num_threads(threads)  # training (accelerate) resets the thread count
        for method in ("qk-rank", "cls-softmax"):
            scored = adata.copy()
            summary = find_markers(
                scored, adapter, label_key, Path(scratch) / f"{method}.csv", top=TOP, method=method
            )
            vocabulary = vocabulary_genes(load_processor(adapter), scored)
            present = set(scored.var_names[vocabulary])
            ours = {group: row["top_genes"] for group, row in summary["groups"].items()}
            wilcoxon = {group: row["wilcoxon_top_genes"] for group, row in summary["groups"].items()}
            result[method] = {
                "seconds_per_1000_cells": summary["seconds_per_1000_cells"],
                "cpu_seconds_per_1000_cells": summary["cpu_seconds_per_1000_cells"],
                "overlap_with_wilcoxon": {
                    g: row["overlap_with_wilcoxon"] for g, row in summary["groups"].items()
                },
                "n_cells_per_group": {g: row["n_cells"] for g, row in summary["groups"].items()},
                "skipped_groups": summary["skipped_groups"],
                "canonical": canonical_recall(canonical, ours, present),
                "canonical_wilcoxon": canonical_recall(canonical, wilcoxon, present),
                "top_genes": ours,
            }
            if method == "qk-rank":
                backbone = backbone_top_genes(adata.copy(), adapter, label_key, vocabulary)
                result[method]["canonical_backbone"] = canonical_recall(canonical, backbone, present)
    result["environment"] = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, " + (
        f"{torch.get_num_threads()} threads"
    )
    return result


def recall_text(rows: dict) -> str:
    present = sum(len(row["present"]) for row in rows.values())
    found = sum(len(row["found"]) for row in rows.values())
    return f"{found}/{present}"


def render(results: list[dict]) -> str:
    lines = [
        "# Attention marker genes",
        "",
        "Command: `python benchmarks/markers.py --dataset DATASET [--base BACKBONE]` (see the script's docstring).",
        "",
        f"An encoder adapter is fine-tuned on each dataset's labels; every cell is then scored with the adapter "
        f"active and genes ranked per group against the rest. Canonical recall = canonical markers (present in the "
        f"data and the vocabulary) found in their group's top-{TOP}; baselines on the same cells and genes: scanpy's "
        f"Wilcoxon top-{TOP} (counts -> normalize_total 1e4 -> log1p) and the backbone's own qk-rank attention "
        "(adapter off). Time = scoring only (tokenize + forward + scores), per 1,000 cells.",
    ]
    for result in results:
        training = result["training"]
        lines += [
            "",
            f"## {result['dataset']} (`{result['label_key']}`, {result['n_cells']:,} cells, backbone: "
            f"{result['base']})",
            "",
            f"Adapter: encoder, {training['epochs']} epochs max, test accuracy {training['test_accuracy']:.3f}, "
            f"macro-F1 {training['test_macro_f1']:.3f}, balanced accuracy {training['test_balanced_accuracy']:.3f}. "
            f"Environment: {result['environment']}.",
            "",
            "| scoring | canonical recall in top-20 | Wilcoxon (DE) baseline | backbone attention baseline | "
            "s / 1,000 cells (wall) | CPU s / 1,000 cells |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for method in ("qk-rank", "cls-softmax"):
            row = result[method]
            backbone = recall_text(row["canonical_backbone"]) if "canonical_backbone" in row else "-"
            lines.append(
                f"| {method} | {recall_text(row['canonical'])} | {recall_text(row['canonical_wilcoxon'])} | "
                f"{backbone} | {row['seconds_per_1000_cells']:.1f} | {row['cpu_seconds_per_1000_cells']:.1f} |"
            )
        for method in ("qk-rank", "cls-softmax"):
            row = result[method]
            lines += [
                "",
                f"### {method}: per group",
                "",
                "| group | cells | overlap with Wilcoxon top-20 | canonical markers found / present | top 10 genes |",
                "|---|---:|---:|---|---|",
            ]
            canonical_by_group = {
                r["group_in_data"]: r for r in row["canonical"].values() if r["group_in_data"]
            }
            for group, overlap in row["overlap_with_wilcoxon"].items():
                marker = canonical_by_group.get(group)
                marker_text = (
                    f"{', '.join(marker['found']) or 'none'} / {', '.join(marker['present']) or 'none'}"
                    if marker
                    else ""
                )
                lines.append(
                    f"| {group} | {row['n_cells_per_group'][group]} | {overlap}/20 | {marker_text} | "
                    f"{', '.join(row['top_genes'][group][:10])} |"
                )
            if row["skipped_groups"]:
                lines.append("")
                lines.append(
                    "Skipped: "
                    + "; ".join(f"{group} ({reason})" for group, reason in row["skipped_groups"].items())
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="pbmc68k")
    parser.add_argument("--base", default=None, help="backbone folder (default: the embedded demo backbone)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: a shared CPU thrashes with more)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args.dataset, args.base, args.epochs, args.seed, args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"markers_{args.dataset}.json").write_text(json.dumps(result, indent=2))
    results = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("markers_*.json"))]
    (RESULTS / "markers.md").write_text(render(results))
    print(render([result]))


if __name__ == "__main__":
    main()
