"""Where should the adapters go? Encoder adapter and LoRA on the bottom half (the paper), the top half, or all layers.

Accuracy: cell-type annotation of pbmc68k_reduced (bulk_labels, 10 types) with the embedded backbone, the
fixed demo test split and 3 seeds, each drawing its own stratified
validation split from the remaining cells and its own initialisation; a logistic-regression row on the same
test cells. Cost: peak memory and step time at scGPT-human size, read from a `peft_vs_full.py` results file run
with `--placements paper,top,all`. Writes benchmarks/results/placement.{md,json}.

    python benchmarks/placement.py --epochs 10 --seeds 0,1,2
    python benchmarks/placement.py --from-json benchmarks/results/placement.json   # only rewrite the report
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.peft_vs_full import method_label  # noqa: E402

METHODS = ("encoder", "lora")
PLACEMENTS = ("paper", "top", "all")
COST_METHODS = {"encoder": "encoder_adapter", "lora": "lora"}  # names in peft_vs_full.json
RESULTS = REPO_ROOT / "benchmarks" / "results"


def layer_spec(placement: str, num_layers: int) -> str:
    """`--adapter-layers` value of a placement for a backbone with `num_layers` layers."""
    return {"paper": "paper", "all": "all", "top": f"{num_layers // 2}-{num_layers - 1}"}[placement]


def run_accuracy(args: argparse.Namespace, results: dict, save) -> None:
    from transformers import AutoConfig

    from scpeft_hf.demo import DEMO_LABEL_KEY, DEMO_SPLIT_KEY, demo_data
    from scpeft_hf.tasks.annotation import TrainingSettings, train_annotation
    from scpeft_hf.tasks.backbones import DEMO_BACKBONE, DEMO_BACKBONE_NAME
    from scpeft_hf.tasks.baseline import logistic_regression_baseline

    adata = demo_data()
    # train + validation cells of the demo split become "train": each seed carves its own validation split
    adata.obs["placement_split"] = adata.obs[DEMO_SPLIT_KEY].replace({"validation": "train"})
    num_layers = AutoConfig.from_pretrained(DEMO_BACKBONE).num_hidden_layers
    results["backbone"] = f"{DEMO_BACKBONE_NAME} (the embedded backbone)"
    results["backbone_layers"] = num_layers
    split = adata.obs[DEMO_SPLIT_KEY].to_numpy()
    results["baseline"] = logistic_regression_baseline(
        adata, DEMO_LABEL_KEY, np.flatnonzero(split != "test"), np.flatnonzero(split == "test")
    )
    done = {(row["method"], row["placement"], row["seed"]) for row in results["accuracy"]}
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            for method in METHODS:
                for placement in PLACEMENTS:
                    if (method, placement, seed) in done:
                        continue
                    started = time.perf_counter()
                    result = train_annotation(
                        adata,
                        DEMO_LABEL_KEY,
                        method=method,
                        out_dir=Path(folder) / f"{method}-{placement}-{seed}",
                        split_key="placement_split",
                        settings=TrainingSettings(
                            epochs=args.epochs,
                            seed=seed,
                            early_stopping_patience=args.patience,
                            adapter_layers=layer_spec(placement, num_layers),
                            max_length=args.max_length,
                        ),
                    )
                    row = {"method": method, "placement": placement, "seed": seed, **result.metrics}
                    row["wall_seconds"] = time.perf_counter() - started
                    results["accuracy"].append(row)
                    print(
                        f"{method} {placement} seed {seed}: macro-F1 {row['test_macro_f1']:.4f}, "
                        f"accuracy {row['test_accuracy']:.4f} ({row['wall_seconds']:.0f} s)",
                        flush=True,
                    )
                    save()


def mean_sd(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def write_report(results: dict, cost_path: Path) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "placement.json").write_text(json.dumps(results, indent=1) + "\n")
    settings = results["settings"]
    num_layers = results.get("backbone_layers", 4)
    layers = {
        "paper": f"0-{num_layers // 2 - 1}",
        "top": layer_spec("top", num_layers),
        "all": f"0-{num_layers - 1}",
    }
    lines = [
        "# Adapter placement: bottom half (the paper), top half, all layers",
        "",
        f"Command: `{results['command']}`",
        "",
        f"## Accuracy (pbmc68k_reduced, {results.get('backbone', 'the embedded backbone')})",
        "",
        f"{num_layers}-layer backbone: paper = layers 0-{num_layers // 2 - 1}, top = layers {layers['top']}, "
        f"all = 0-{num_layers - 1}. Test: the fixed demo test split (142 cells); seeds {settings['seeds']} each "
        "draw a stratified validation split from the other cells and "
        f"initialise the adapter and head; at most {settings['epochs']} epochs, early stopping on validation "
        f"macro-F1 (patience {settings['patience']}), max length "
        f"{settings['max_length'] or 'the processor default'}. Mean ± SD over seeds. Run on "
        f"{results.get('environment', 'CPU')}.",
        "",
        "| method | placement | seeds | test macro-F1 | test accuracy | test balanced acc. | trainable params | "
        "train time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method in METHODS:
        for placement in PLACEMENTS:
            rows = [r for r in results["accuracy"] if r["method"] == method and r["placement"] == placement]
            if not rows:
                continue
            lines.append(
                f"| {method} | {placement} ({layers[placement]}) | {len(rows)} | "
                f"{mean_sd([r['test_macro_f1'] for r in rows])} | {mean_sd([r['test_accuracy'] for r in rows])} | "
                f"{mean_sd([r['test_balanced_accuracy'] for r in rows])} | {rows[0]['trainable_params']:,} | "
                f"{statistics.mean(r['train_seconds'] for r in rows):.0f} |"
            )
    baseline = results.get("baseline")
    if baseline:
        lines.append(
            f"| logistic regression (log1p expression) | - | 1 | {baseline['test_macro_f1']:.3f} | "
            f"{baseline['test_accuracy']:.3f} | {baseline['test_balanced_accuracy']:.3f} | "
            f"{baseline['trainable_params']:,} | {baseline['train_seconds']:.0f} |"
        )
    lines += ["", "## Cost at scGPT-human size (12 layers)", ""]
    if cost_path.is_file():
        cost = json.loads(cost_path.read_text())
        rows = [r for r in cost["results"] if not r["checkpointing"]]
        full = next(r for r in rows if r["method"] == "full")
        cost_settings = cost["settings"]
        lines += [
            f"From `{cost_path.relative_to(REPO_ROOT)}` ({cost['environment']['device']}, "
            f"{cost['environment']['threads']} thread(s), batch {cost_settings['batch_size']} x "
            f"{cost_settings['seq_len']}, {cost_settings['warmup']} warm-up + {cost_settings['steps']} timed steps, "
            "no checkpointing). paper = layers 0-5, top = 6-11.",
            "",
            "| method | step (s) median [IQR] | step CPU time (s) median [IQR] | CPU time / full | peak RSS above "
            "baseline (MiB) | / full | backward reaches |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        full_extra = full["peak_rss_mb"] - full["baseline_rss_mb"]
        for row in rows:
            if row["method"] not in (*COST_METHODS.values(), "full"):
                continue
            extra = row["peak_rss_mb"] - row["baseline_rss_mb"]
            lines.append(
                f"| {method_label(row)} | {row['median_step_s']:.2f} [{row.get('iqr_step_s', 0):.2f}] | "
                f"{row['median_step_cpu_s']:.2f} [{row.get('iqr_step_cpu_s', 0):.2f}] | "
                f"{row['median_step_cpu_s'] / full['median_step_cpu_s']:.2f} | {extra:,.0f} | "
                f"{extra / full_extra:.2f} | {row['backward_reaches']} |"
            )
    else:
        lines.append(
            f"No cost results yet: run `python benchmarks/peft_vs_full.py --placements paper,top,all` ({cost_path})."
        )
    lines += ["", "## Reading", "", *results.get("reading", ["(to be written from the numbers above)"])]
    (RESULTS / "placement.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument(
        "--max-length", type=int, default=None, help="genes per cell (default: the processor's)"
    )
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1, 2])
    parser.add_argument("--cost-json", type=Path, default=RESULTS / "peft_vs_full.json")
    parser.add_argument("--from-json", type=Path, help="rewrite the report from results written earlier")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in placement.json")
    args = parser.parse_args()
    if args.from_json:
        write_report(json.loads(args.from_json.read_text()), args.cost_json)
        return
    from benchmarks.peft_vs_full import cpu_name

    results = {"accuracy": []}
    if args.resume and (RESULTS / "placement.json").is_file():
        results = json.loads((RESULTS / "placement.json").read_text())
    results.update(
        command="python benchmarks/placement.py " + " ".join(sys.argv[1:]),
        settings={key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        environment=cpu_name(),
    )
    run_accuracy(args, results, lambda: write_report(results, args.cost_json))
    write_report(results, args.cost_json)


if __name__ == "__main__":
    main()
