"""Annotation quality that is not noise: every method over several splits, beside logistic regression.

- pbmc68k_reduced (`bulk_labels`, 700 cells): 5 stratified 72/8/20 splits, seeds 0-4;
- Baron human pancreas (`cell_type`, 2,142 cells): each of the 4 donors held out in turn (validation carved
  from the other donors, stratified), classes with fewer than 10 cells dropped first.

For each dataset: mean ± sd over the splits of test macro-F1, balanced accuracy and accuracy for each method and
for the logistic-regression baseline that `train_annotation` fits on the same training split (tasks/baseline.py).
Writes `<out>.json` (every run, the budget, the backbone fingerprint) and `<out>.md`. Rows are saved after each
run, so an interrupted benchmark resumes where it stopped (`--resume`).

    python benchmarks/annotation_quality.py                          # the embedded demo backbone
    python benchmarks/annotation_quality.py --base path/to/backbone --out benchmarks/results/annotation_quality_new
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the repository's scpeft_hf, also when another copy is installed

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "annotation_quality"
METHODS = ("encoder", "lora", "probe", "full")
METRICS = {
    "macro-F1": "test_macro_f1",
    "balanced accuracy": "test_balanced_accuracy",
    "accuracy": "test_accuracy",
}
BASELINE = "logistic regression"
# What a reader must know about each embedded backbone's pretraining, by the name run_info.json records.
CAVEATS = {
    "scpeft-hf/scgpt-demo": [
        "- The embedded demo backbone was pretrained (masked expression, no labels) on the pbmc68k_reduced cells "
        "outside the seed-0 test split. For seeds 1-4 some test cells were seen during pretraining (their "
        "expression, never their labels), which can only favour the fine-tuned methods over logistic regression.",
        "- The demo backbone is a 0.7M-parameter model pretrained on 558 cells with 765 genes; on Baron it sees "
        "only the genes in its 765-gene vocabulary, while logistic regression uses all genes of the data.",
    ],
    "scpeft-hf/scgpt-offline-v1": [
        "- scgpt-offline-v1 (7.3M parameters, 50,002 genes) was pretrained without labels on 6,245 PBMC and lung "
        "cells; no pbmc68k_reduced or Baron cell was in its pool, so pancreas is a tissue it never saw.",
        "- About a quarter of Baron's counts fall on genes the backbone never saw expressed (INS, GCG, SST, PPY, "
        "PRSS1 and CPA1 among them): their gene embeddings are random; logistic regression uses every gene.",
        "- Models see at most `max_length - 1` genes per cell (a random subset per step, a fixed one at evaluation); "
        "logistic regression sees all of them.",
    ],
}


def pbmc68k_splits():
    from scpeft_hf.datasets import pbmc68k_reduced

    adata = pbmc68k_reduced()
    for seed in range(5):
        yield f"seed {seed}", adata, {"seed": seed}


def baron_human_splits():
    from scpeft_hf.datasets import baron_pancreas

    adata = baron_pancreas("human")
    for donor in sorted(adata.obs["donor"].astype(str).unique()):
        yield f"donor {donor} held out", adata, {"test_groups": {"donor": [donor]}, "min_cells_per_class": 10}


DATASETS = {
    "pbmc68k": {
        "splits": pbmc68k_splits,
        "label_key": "bulk_labels",
        "description": "pbmc68k_reduced (scanpy), 700 PBMCs, `bulk_labels` (10 types); 5 stratified 72/8/20 "
        "splits, seeds 0-4",
    },
    "baron-human": {
        "splits": baron_human_splits,
        "label_key": "cell_type",
        "description": "Baron human pancreas (came 0.1.13), 2,142 cells, `cell_type`; each of the 4 donors held "
        "out in turn, classes with < 10 cells dropped before splitting",
    },
}


def run_one(adata, label_key: str, method: str, split: dict, args, with_baseline: bool) -> dict:
    from scpeft_hf.tasks.annotation import TrainingSettings, train_annotation

    settings = TrainingSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=split.get("seed", 0),
        early_stopping_patience=args.patience,
        min_cells_per_class=split.get("min_cells_per_class"),
        baseline=with_baseline,
    )
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / method
        result = train_annotation(
            adata, label_key, method=method, out_dir=out, base=args.base,
            settings=settings, test_groups=split.get("test_groups"),
        )  # fmt: skip
        run_info = json.loads((out / "run_info.json").read_text())
    return {
        "metrics": result.metrics,
        "n_cells": run_info["n_cells"],
        "dropped_classes": run_info.get("dropped_classes") or {},
        "base_model": run_info["base_model"],
        "base_model_fingerprint": run_info["base_model_fingerprint"],
        "preprocessing": run_info["preprocessing"],
    }


def run_baseline_only(adata, label_key: str, split: dict) -> dict:
    """The logistic-regression row of a split without training a model: the same cells and split as `train`."""
    from scpeft_hf.tasks.baseline import logistic_regression_baseline
    from scpeft_hf.tasks.splits import split_cells

    adata, splits, dropped = split_cells(
        adata, label_key, test_groups=split.get("test_groups"),
        min_cells_per_class=split.get("min_cells_per_class"), seed=split.get("seed", 0),
    )  # fmt: skip
    return {
        "metrics": logistic_regression_baseline(adata, label_key, splits["train"], splits["test"]),
        "n_cells": {name: int(len(index)) for name, index in splits.items()},
        "dropped_classes": dropped,
    }


def mean_sd(values: list[float]) -> str:
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def summarise(rows: list[dict], dataset: str) -> list[str]:
    """One line per method: mean ± sd of each metric over the splits where every method ran (a paired
    comparison), then logistic regression over all its splits when it ran on more."""
    rows = [row for row in rows if row["dataset"] == dataset and METRICS["macro-F1"] in row["metrics"]]
    methods = [m for m in (*METHODS, BASELINE) if any(row["method"] == m for row in rows)]
    splits = dict.fromkeys(row["split"] for row in rows)
    complete = [s for s in splits if {row["method"] for row in rows if row["split"] == s} >= set(methods)]
    lines = [
        "| method | " + " | ".join(METRICS) + " | splits | trainable params | train s (mean) |",
        "|---|" + "---:|" * (len(METRICS) + 3),
    ]
    lines += [summary_line(method, [r for r in rows if r["method"] == method and r["split"] in complete])
              for method in methods]  # fmt: skip
    all_baseline = [row for row in rows if row["method"] == BASELINE]
    if len(all_baseline) > len(complete):
        lines.append(summary_line(f"{BASELINE} (all {len(all_baseline)} splits)", all_baseline))
    return lines


def summary_line(name: str, chosen: list[dict]) -> str:
    if not chosen:
        return f"| {name} | " + " | ".join("n/a" for _ in METRICS) + " | 0 | | |"
    cells = [mean_sd([row["metrics"][key] for row in chosen]) for key in METRICS.values()]
    params = chosen[0]["metrics"].get("trainable_params", 0)
    seconds = statistics.mean(row["metrics"]["train_seconds"] for row in chosen)
    return f"| {name} | " + " | ".join(cells) + f" | {len(chosen)} | {params:,} | {seconds:.1f} |"


def per_split_table(rows: list[dict], dataset: str) -> list[str]:
    rows = [row for row in rows if row["dataset"] == dataset]
    splits = list(dict.fromkeys(row["split"] for row in rows))
    methods = [m for m in (*METHODS, BASELINE) if any(row["method"] == m for row in rows)]
    lines = ["| split | test cells | " + " | ".join(methods) + " |", "|---|---:|" + "---:|" * len(methods)]
    for split in splits:
        by_method = {row["method"]: row for row in rows if row["split"] == split}
        n_test = next(iter(by_method.values()))["n_cells"]["test"]
        cells = [
            f"{by_method[m]['metrics'][METRICS['macro-F1']]:.3f}" if m in by_method else "-" for m in methods
        ]
        lines.append(f"| {split} | {n_test} | " + " | ".join(cells) + " |")
    return lines


def describe_budget(budget: dict) -> str:
    return (
        f"at most {budget['epochs']} epochs (early stopping on validation macro-F1, patience {budget['patience']}), "
        f"batch size {budget['batch_size']}, at most {budget['max_length']} genes per cell incl. `<cls>`"
    )


def render_markdown(results: dict) -> str:
    lines = [
        "# Annotation quality over several splits, beside logistic regression",
        "",
        f"Backbone: `{results.get('base_model')}` (fingerprint `{results.get('base_model_fingerprint', '')[:16]}…`). "
        f"Machine: {results['machine']}. Written by `benchmarks/annotation_quality.py` on {results['date']}.",
        "",
        "Budget: the same for every method and split of a dataset (given under each dataset), default learning "
        "rates (1e-3 adapters and probe, 1e-4 full), chosen after timing one configuration (the demo trains 4-5 "
        "epochs). " + results.get("note", ""),
        "",
        "Logistic regression: `LogisticRegression(C=1.0, max_iter=1000, class_weight='balanced')` on "
        "log1p(normalize_total 1e4) of all genes, standardised with `with_mean=False`, fitted on the same "
        "training cells and scored on the same test cells as the models (it does not use the validation cells).",
        "",
    ]
    for dataset, spec in DATASETS.items():
        if not any(row["dataset"] == dataset for row in results["runs"]):
            continue
        lines += [
            f"## {dataset}",
            "",
            spec["description"] + ".",
            "",
            f"Budget: {describe_budget(results['budgets'][dataset])}."
            if dataset in results["budgets"]
            else "",
            "",
            "Mean ± sd over the splits where every method ran (test set):",
            "",
        ]
        lines += summarise(results["runs"], dataset)
        lines += ["", "Test macro-F1 per split:", ""] + per_split_table(results["runs"], dataset) + [""]
        dropped = {
            k: v
            for row in results["runs"]
            if row["dataset"] == dataset
            for k, v in row["dropped_classes"].items()
        }
        if dropped:
            lines += [
                "Classes dropped (cells): " + ", ".join(f"{k} ({v})" for k, v in sorted(dropped.items())),
                "",
            ]
    lines += [
        "## Caveats",
        "",
        *CAVEATS.get(
            str(results.get("base_model")), ["- A backbone this script knows nothing about: see its card."]
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--base", default=None, help="backbone folder (default: the embedded demo backbone)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128, help="genes per cell incl. <cls>")
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--max-splits", type=int, default=None, help="only the first N splits (for timing)")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=[],
        help="only add the runs of these result .json files (other datasets run in parallel) to OUT",
    )
    parser.add_argument(
        "--baseline-only", action="store_true", help="only the logistic-regression rows (seconds per split)"
    )
    parser.add_argument("--note", default=None, help="how the budget was chosen (shown in OUT.md)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes OUT.json and OUT.md")
    parser.add_argument(
        "--resume", action="store_true", help="keep the rows already in OUT.json (same budget)"
    )
    args = parser.parse_args(argv)

    budget = {"epochs": args.epochs, "batch_size": args.batch_size, "max_length": args.max_length,
              "patience": args.patience}  # fmt: skip
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    results = {"budgets": {}, "runs": []}
    if (args.resume or args.merge) and json_path.is_file():
        results = json.loads(json_path.read_text())
    if args.note:
        results["note"] = args.note
    if args.merge:
        return merge_results(results, args.merge, json_path, md_path)
    for dataset in [] if args.baseline_only else args.datasets:  # a baseline-only run trains no model
        if results["budgets"].setdefault(dataset, budget) != budget:
            parser.error(
                f"{json_path} has {dataset} runs with budget {results['budgets'][dataset]}; resume with it"
            )
    results.update(machine=f"{platform.machine()}, {platform.processor() or platform.system()}, CPU"
                   if not _cuda() else _cuda(), date=datetime.now(UTC).strftime("%Y-%m-%d"))  # fmt: skip
    done = {(row["dataset"], row["split"], row["method"]) for row in results["runs"]}

    for dataset in args.datasets:
        spec = DATASETS[dataset]
        for index, (split_name, adata, split) in enumerate(spec["splits"]()):
            if args.max_splits is not None and index >= args.max_splits:
                break
            baseline_done = (dataset, split_name, BASELINE) in done
            if args.baseline_only and not baseline_done:
                run = run_baseline_only(adata, spec["label_key"], split)
                results["runs"].append({"dataset": dataset, "split": split_name, "method": BASELINE} | run)
                done.add((dataset, split_name, BASELINE))
                save(results, json_path, md_path)
                continue
            for method in args.methods:
                if (dataset, split_name, method) in done:
                    continue
                started = time.perf_counter()
                run = run_one(adata, spec["label_key"], method, split, args, with_baseline=not baseline_done)
                print(f"{dataset} | {split_name} | {method}: macro-F1 {run['metrics']['test_macro_f1']:.3f} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
                if (existing := results.get("base_model_fingerprint")) and existing != run[
                    "base_model_fingerprint"
                ]:
                    parser.error(f"{json_path} holds runs of another backbone; pass another --out")
                results.update(
                    base_model=run["base_model"], base_model_fingerprint=run["base_model_fingerprint"]
                )
                baseline = run["metrics"].pop("baseline", None)
                common = {"dataset": dataset, "split": split_name, "n_cells": run["n_cells"],
                          "dropped_classes": run["dropped_classes"]}  # fmt: skip
                results["runs"].append(common | {"method": method, "metrics": run["metrics"]})
                if baseline is not None:
                    results["runs"].append(common | {"method": BASELINE, "metrics": baseline})
                    baseline_done = True
                done.add((dataset, split_name, method))
                save(results, json_path, md_path)
    print(md_path.read_text() if md_path.is_file() else "nothing run")
    return 0


def merge_results(results: dict, others: list[Path], json_path: Path, md_path: Path) -> int:
    """Add the runs and budgets of other result files of the same backbone (e.g. datasets run in parallel)."""
    for path in others:
        other = json.loads(path.read_text())
        if "base_model_fingerprint" in other:  # absent where only baselines ran
            fingerprint = results.setdefault("base_model_fingerprint", other["base_model_fingerprint"])
            if other["base_model_fingerprint"] != fingerprint:
                raise SystemExit(f"{path} holds runs of another backbone than {json_path}")
            results.setdefault("base_model", other["base_model"])
        results["budgets"].update(other["budgets"])
        keys = {(row["dataset"], row["split"], row["method"]) for row in other["runs"]}
        results["runs"] = [r for r in results["runs"] if (r["dataset"], r["split"], r["method"]) not in keys]
        results["runs"] += other["runs"]
    save(results, json_path, md_path)
    print(md_path.read_text())
    return 0


def save(results: dict, json_path: Path, md_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1))
    md_path.write_text(render_markdown(results))


def _cuda() -> str | None:
    import torch

    return f"{torch.cuda.get_device_name()} (CUDA)" if torch.cuda.is_available() else None


if __name__ == "__main__":
    sys.exit(main())
