"""Cross-species annotation on Baron pancreas through a human backbone -> `benchmarks/results/cross_species.md`.

Scenario (a): train on mouse donor mouse1, test on mouse2, and the reverse (cell types with at least
`--min-cells` cells in the training donor; test cells of other types are left out and counted).
Scenario (b): train on all human cells, predict all mouse cells, scored on the shared cell types
(`T_cell` = `t_cell`).

Rows: each gene-matching policy (`one2one`, `sum`, and today's case-insensitive matching without `--species`)
x each method (encoder adapter, LoRA, full, probe), plus two baselines on the same split: zero-shot nearest
centroid of the base model's cell embedding (cosine), and logistic regression on normalised, log1p'd mapped
genes (for (b), on human<->mouse one-to-one genes). Mean and standard deviation over seeds.

    python benchmarks/cross_species.py                                   # the issue's grid (use a GPU)
    python benchmarks/cross_species.py --seeds 0 1 --seeds-b 0 --epochs 4 --max-length 256   # a CPU budget

The results file (and its .json) is rewritten after every row, marked partial until the grid finishes, so a run
that is stopped still leaves the rows it finished.

Our recipe (transformers.Trainer, weighted cross-entropy, early stopping on validation macro-F1), not the
paper's: do not compare these numbers with the scPEFT paper's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the repository's scpeft_hf, also when another copy is installed

POLICIES = ("one2one", "sum", "case-insensitive")
METHODS = ("encoder", "lora", "full", "probe")
# The issue's grid: every reduction a run makes from it is listed in the results file's header.
DEFAULT_EPOCHS = 10
ISSUE_SPEC = {"seeds": [0, 1], "max_length": 1024, "methods": list(METHODS), "policies": list(POLICIES)}
LABEL_MAP = {"T_cell": "t_cell", "t_cell": "T_cell"}


def species_settings(policy: str, species: str = "mouse"):
    from scpeft_hf.tasks.backbones import SpeciesSettings

    if policy == "case-insensitive":
        return SpeciesSettings()
    return SpeciesSettings(species=species, ortholog_policy=policy)


def subsample(adata, max_cells: int | None, seed: int = 0):
    if max_cells is None or adata.n_obs <= max_cells:
        return adata
    keep = np.sort(np.random.default_rng(seed).choice(adata.n_obs, max_cells, replace=False))
    return adata[keep].copy()


def scenario_a(mouse, train_donor: str, min_cells: int):
    """Training donor's cells of its types with >= min_cells cells, and the other donor's cells of those types."""
    donor = mouse.obs["donor"].astype(str)
    labels = mouse.obs["cell_type"].astype(str)
    counts = labels[donor == train_donor].value_counts()
    types = set(counts[counts >= min_cells].index)
    keep = labels.isin(types).to_numpy()
    adata = mouse[keep].copy()
    adata.obs["cell_type"] = labels[keep].to_numpy()
    adata.obs["split"] = np.where(donor[keep] == train_donor, "train", "test")
    return adata, int((~keep & (donor != train_donor)).sum())


def log_normalised(adata):
    import scanpy as sc

    adata = adata.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def mapped_genes(mouse, policy: str):
    """Mouse cells on human genes (every mapped gene, not only the backbone's) for logistic regression."""
    import anndata as ad
    import pandas as pd

    from scpeft_hf.data.orthologs import GeneMap

    if policy == "case-insensitive":
        upper = pd.Index(mouse.var_names.str.upper())
        keep = ~upper.duplicated(keep=False)
        return ad.AnnData(mouse.X[:, keep], obs=mouse.obs, var=pd.DataFrame(index=upper[keep]))
    gene_map = GeneMap.from_table("mouse", policy=policy)
    human, _ = gene_map.apply(mouse, set(gene_map.mapping.values()))
    return human


def logistic_regression(train, test, label_key: str, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    genes = train.var_names.intersection(test.var_names)
    train, test = log_normalised(train[:, genes]), log_normalised(test[:, genes])
    model = LogisticRegression(max_iter=1000, class_weight="balanced", random_state=seed)
    model.fit(train.X, train.obs[label_key].astype(str))
    return model.predict(test.X)


def embeddings(base_dir, adata, settings, max_length: int) -> np.ndarray:
    import torch

    from scpeft_hf.tasks.backbones import load_backbone, load_processor, make_collator
    from scpeft_hf.tasks.inference import run_model

    processor = load_processor(base_dir, max_length=max_length, **asdict(settings))
    model = load_backbone(base_dir, processor).to("cuda" if torch.cuda.is_available() else "cpu")
    result = run_model(model, processor(adata), make_collator(processor, train=False), batch_size=64)
    cells = result.cell_embeddings
    return cells / np.maximum(np.linalg.norm(cells, axis=1, keepdims=True), 1e-12)


def nearest_centroid(train_cells, train_labels, test_cells) -> np.ndarray:
    names = np.unique(train_labels)
    centroids = np.stack([train_cells[train_labels == name].mean(0) for name in names])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return names[(test_cells @ centroids.T).argmax(1)]


def score(truth, predictions, model_labels) -> dict:
    from scpeft_hf.tasks.metrics import label_transfer_metrics

    return label_transfer_metrics(truth, predictions, list(model_labels), LABEL_MAP, True)


def train(adata, method, settings, args, seed, split_key=None):
    from scpeft_hf.tasks.annotation import TrainingSettings, train_annotation

    # baseline=False: the benchmark fits its own logistic regression on the mapped genes, one per split.
    training = TrainingSettings(
        epochs=args.epochs, max_length=args.max_length, seed=seed, batch_size=args.batch_size, baseline=False
    )
    out = Path(tempfile.mkdtemp(prefix="cross_species_")) / "run"
    started = time.perf_counter()
    result = train_annotation(
        adata,
        "cell_type",
        method,
        out,
        base=args.base,
        split_key=split_key,
        settings=training,
        species=settings,
    )
    return result, time.perf_counter() - started


def run_scenario_a(mouse, args, rows, report, seed: int, baselines: bool):
    """One seed of scenario (a), both directions and every policy; the deterministic baselines when asked."""
    import shutil

    from scpeft_hf.tasks.backbones import resolve_base

    base_dir = resolve_base(args.base)
    for train_donor, test_donor in (("mouse1", "mouse2"), ("mouse2", "mouse1")):
        adata, left_out = scenario_a(mouse, train_donor, args.min_cells)
        test = adata[adata.obs["split"] == "test"]
        train_cells = adata[adata.obs["split"] == "train"]
        scenario = f"a: {train_donor} -> {test_donor}"
        print(
            f"{scenario}: {train_cells.n_obs} train cells, {test.n_obs} test cells ({left_out} of other types left out)"
        )
        for policy in args.policies:
            if baselines:
                rows.extend(baselines_a(base_dir, scenario, train_cells, test, left_out, policy, args))
                report()
            for method in args.methods:
                result, seconds = train(
                    adata, method, species_settings(policy), args, seed, split_key="split"
                )
                metrics = {k.removeprefix("test_"): v for k, v in result.metrics.items()}
                rows.append(dict(scenario=scenario, policy=policy, method=method, seed=seed, seconds=seconds,
                                 left_out=left_out, n_scored=test.n_obs, **metrics))  # fmt: skip
                print(
                    f"  {policy:<16} {method:<8} seed {seed}: balanced accuracy {metrics['balanced_accuracy']:.3f}"
                )
                report()
                shutil.rmtree(result.out_dir.parent, ignore_errors=True)


def baselines_a(base_dir, scenario: str, train_cells, test, left_out: int, policy: str, args) -> list[dict]:
    """Logistic regression and zero-shot centroid rows for one (a) split and policy; both are deterministic."""
    known = train_cells.obs["cell_type"].unique()
    settings = species_settings(policy)
    lr = logistic_regression(mapped_genes(train_cells, policy), mapped_genes(test, policy), "cell_type", 0)
    zero_shot = nearest_centroid(
        embeddings(base_dir, train_cells, settings, args.max_length),
        train_cells.obs["cell_type"].astype(str).to_numpy(),
        embeddings(base_dir, test, settings, args.max_length),
    )
    return [
        dict(scenario=scenario, policy=policy, method=method, seed=0, left_out=left_out,
             **score(test.obs["cell_type"], predicted, known))
        for method, predicted in (("logistic regression", lr), ("zero-shot centroid", zero_shot))
    ]  # fmt: skip


def run_scenario_b(human, mouse, args, rows, report, seed: int, baselines: bool):
    """One seed of scenario (b): train on human cells, predict mouse cells under every policy."""
    import shutil

    from scpeft_hf.data.orthologs import GeneMap
    from scpeft_hf.tasks.annotation import load_annotator
    from scpeft_hf.tasks.backbones import resolve_base

    base_dir = resolve_base(args.base)
    scenario = "b: human -> mouse"
    human_labels = human.obs["cell_type"].astype(str).unique()
    if baselines:
        lr = logistic_regression(human, mapped_genes(mouse, "one2one"), "cell_type", 0)
        rows.append(dict(scenario=scenario, policy="one2one genes", method="logistic regression", seed=0,
                         **score(mouse.obs["cell_type"], lr, human_labels)))  # fmt: skip
        report()
        human_cells = embeddings(base_dir, human, species_settings("case-insensitive"), args.max_length)
        for policy in args.policies:
            mouse_cells = embeddings(base_dir, mouse, species_settings(policy), args.max_length)
            zero_shot = nearest_centroid(
                human_cells, human.obs["cell_type"].astype(str).to_numpy(), mouse_cells
            )
            rows.append(dict(scenario=scenario, policy=policy, method="zero-shot centroid", seed=0,
                             **score(mouse.obs["cell_type"], zero_shot, human_labels)))  # fmt: skip
            report()
    for method in args.methods:
        result, seconds = train(human, method, species_settings("case-insensitive"), args, seed)
        annotator = load_annotator(result.out_dir, base=args.base)
        for policy in args.policies:
            processor = annotator.processor
            processor.species = None if policy == "case-insensitive" else "mouse"
            processor.gene_map = (
                None if policy == "case-insensitive" else GeneMap.from_table("mouse", policy=policy)
            )
            predicted = annotator.predict(mouse, copy=True).obs["scpeft_pred"]
            metrics = score(mouse.obs["cell_type"], predicted.astype(str), annotator.label_names)
            rows.append(
                dict(scenario=scenario, policy=policy, method=method, seed=seed, seconds=seconds, **metrics)
            )
            print(
                f"  {policy:<16} {method:<8} seed {seed}: balanced accuracy {metrics['balanced_accuracy']:.3f}"
            )
        report()
        shutil.rmtree(result.out_dir.parent, ignore_errors=True)


def gene_coverage(mouse, base) -> dict[str, dict]:
    """Coverage of all mouse cells under each ortholog policy, through the base's vocabulary."""
    from scpeft_hf.data import GeneVocab
    from scpeft_hf.data.orthologs import GeneMap, read_pretrained_genes
    from scpeft_hf.tasks.backbones import resolve_base

    base_dir = resolve_base(base)
    vocab = GeneVocab.from_file(base_dir / "vocab.json")
    pretrained = read_pretrained_genes(base_dir)
    coverage = {}
    for policy in ("one2one", "sum"):
        _, found = GeneMap.from_table("mouse", policy=policy).apply(
            mouse, vocab.token_to_id, None, pretrained
        )
        coverage[policy] = found.as_dict()
    # Without --species each mouse symbol meets the vocabulary on its own (`Cd4` -> `CD4`): nothing is summed.
    matched = vocab.match(mouse).token_ids >= 0
    symbols = {token_id: symbol for symbol, token_id in vocab.token_to_id.items()}
    human = [symbols[token_id] for token_id in vocab.match(mouse).token_ids[matched]]
    totals = np.asarray(mouse.X.sum(0)).ravel()
    coverage["case-insensitive"] = dict(
        source_genes=mouse.n_vars, mapped=int(matched.sum()), in_vocabulary=int(matched.sum()),
        human_genes=len(set(human)), pretrained=None if pretrained is None else len(set(human) & pretrained),
        counts_kept=float(totals[matched].sum() / max(totals.sum(), 1e-12)),
    )  # fmt: skip
    return coverage


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["policy"], row["method"]), []).append(row)
    summary = []
    for (scenario, policy, method), members in groups.items():
        entry = {"scenario": scenario, "policy": policy, "method": method, "seeds": len(members)}
        for metric in ("balanced_accuracy", "macro_f1", "accuracy"):
            values = [m[metric] for m in members]
            entry[metric] = statistics.mean(values)
            entry[f"{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        entry["n_scored"] = members[0].get("n_scored")
        entry["n_excluded"] = members[0].get("n_excluded", 0) + members[0].get("left_out", 0)
        summary.append(entry)
    return summary


def reductions(args) -> list[str]:
    """How this run's grid is smaller than the issue's (ISSUE_SPEC), one phrase each."""
    found = []
    if args.max_length < ISSUE_SPEC["max_length"]:
        found.append(f"max_length {args.max_length} instead of {ISSUE_SPEC['max_length']}")
    for scenario, seeds in (("a", args.seeds), ("b", args.seeds_b)):
        if scenario in args.scenarios and seeds != ISSUE_SPEC["seeds"]:
            found.append(f"({scenario}) seeds {', '.join(map(str, seeds))} instead of 0, 1")
    for name in ("methods", "policies"):
        missing = [value for value in ISSUE_SPEC[name] if value not in getattr(args, name)]
        if missing:
            found.append(f"{name} without {', '.join(missing)}")
    if args.epochs < DEFAULT_EPOCHS:
        found.append(f"at most {args.epochs} epochs instead of {DEFAULT_EPOCHS} (the issue names none)")
    if args.max_cells is not None:
        found.append(f"at most {args.max_cells} cells per species instead of all")
    if set(args.scenarios) != {"a", "b"}:
        found.append(f"scenario {', '.join(args.scenarios)} only")
    return found


def write_markdown(summary, coverage, args, seconds, path: Path, complete: bool = True) -> None:
    from scpeft_hf.tasks.backbones import DEMO_BACKBONE_NAME

    def cell(entry, metric):
        sd = entry[f"{metric}_sd"]
        return f"{entry[metric]:.3f}" + (f" ± {sd:.3f}" if entry["seeds"] > 1 else "")

    cut = reductions(args)
    lines = [
        "# Cross-species annotation on Baron pancreas (human backbone)",
        "",
        "Produced by `benchmarks/cross_species.py`. **Our recipe** (transformers.Trainer, class-weighted "
        "cross-entropy, early stopping on validation macro-F1), not the scPEFT paper's: do not compare these "
        "numbers with the paper's.",
        "",
        *(
            []
            if complete
            else [f"**Partial: the run was stopped or is still running; {len(summary)} rows so far.**", ""]
        ),
        f"- base: `{args.base or DEMO_BACKBONE_NAME + ' (the embedded backbone)'}`",
        *(
            [
                "- The embedded backbone is small (7.28M parameters, 4 layers of width 128) and was pretrained on "
                "6,245 human cells (blood, lung) that never include pancreas: these rows measure transfer through "
                "this backbone, not scGPT-human's."
            ]
            if args.base in (None, DEMO_BACKBONE_NAME)
            else []
        ),
        f"- budget: methods {', '.join(args.methods)}; seeds (a) {', '.join(map(str, args.seeds))}, (b) "
        f"{', '.join(map(str, args.seeds_b))}; epochs {args.epochs} (early stopping, patience 3); max_length "
        f"{args.max_length}; batch {args.batch_size}; cells per species {args.max_cells or 'all'}; min cells per "
        f"training type (a) {args.min_cells}",
        "- reductions from the issue's grid (seeds 0 and 1, max_length 1,024, all methods and policies, all "
        f"cells): {'; '.join(cut) if cut else 'none'}",
        f"- machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{'CUDA' if _cuda() else f'CPU only, {torch_threads()} threads'}; wall time {seconds / 60:.1f} min",
        "- (a) train on one mouse donor, test on the other (types with too few training cells are left out; "
        "`excluded` counts those test cells); (b) train on human cells (the adapter's own 20% human test split is "
        "not shown), predict all mouse cells, scored on shared types (`T_cell` = `t_cell`; `excluded` = mouse "
        "cells of types the human data lacks).",
        "- Policies: `one2one` and `sum` map mouse genes through the shipped Ensembl ortholog table "
        "(`--species mouse`); `case-insensitive` is today's matching without `--species` (`Cd4` -> `CD4`).",
        "- Baselines on the same split: zero-shot nearest centroid of the base model's cell embedding (cosine); "
        "logistic regression (balanced class weights) on normalised log1p genes mapped with the row's policy "
        "(for (b) on one-to-one genes).",
        "",
        "| scenario | policy | method | seeds | balanced accuracy | macro-F1 | accuracy | scored | excluded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in summary:
        lines.append(
            f"| {entry['scenario']} | {entry['policy']} | {entry['method']} | {entry['seeds']} | "
            f"{cell(entry, 'balanced_accuracy')} | "
            f"{cell(entry, 'macro_f1')} | {cell(entry, 'accuracy')} | {entry['n_scored'] or ''} | "
            f"{entry['n_excluded']} |"
        )
    lines += [
        "",
        "## Gene coverage (mouse cells, through the backbone's vocabulary)",
        "",
        "`mapped`: mouse genes with a human ortholog under the policy (`case-insensitive`: whose symbol matches a "
        "vocabulary symbol); `pretrained`: genes whose human gene is in the base's `pretrained_genes.txt`; "
        "`counts kept`: share of all mouse counts on genes that reach the vocabulary.",
        "",
        "| policy | source genes | mapped | in vocabulary | human genes | pretrained | counts kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in coverage.items():
        pretrained = "unknown" if c["pretrained"] is None else f"{c['pretrained']:,}"
        lines.append(
            f"| {name} | {c['source_genes']:,} | {c['mapped']:,} | {c['in_vocabulary']:,} | {c['human_genes']:,} | "
            f"{pretrained} | {100 * c['counts_kept']:.1f}% |"
        )
    path.write_text("\n".join(lines) + "\n")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base", default=None, help="base model folder (default: the embedded demo backbone)"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument(
        "--seeds-b", nargs="+", type=int, default=None, help="seeds for scenario (b) (default: --seeds)"
    )
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--max-cells", type=int, default=None, help="subsample each species to this many cells"
    )
    parser.add_argument("--min-cells", type=int, default=10, help="(a): training types need this many cells")
    parser.add_argument("--scenarios", nargs="+", default=["a", "b"], choices=["a", "b"])
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "cross_species.md"))
    args = parser.parse_args(argv)
    args.seeds_b = args.seeds if args.seeds_b is None else args.seeds_b

    from scpeft_hf.datasets import baron_pancreas

    started = time.perf_counter()
    human = subsample(baron_pancreas("human"), args.max_cells)
    mouse = subsample(baron_pancreas("mouse"), args.max_cells)
    for adata in (human, mouse):
        adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    rows: list[dict] = []
    coverage = gene_coverage(mouse, args.base)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def report(complete: bool = False) -> None:
        summary = summarise(rows)
        # Written beside and renamed over, so that a stopped run never leaves a half-written file.
        staged = out.with_name(f".{out.name}.partial")
        write_markdown(summary, coverage, args, time.perf_counter() - started, staged, complete)
        staged.replace(out)
        record = {"complete": complete, "rows": rows, "summary": summary, "coverage": coverage}
        staged.write_text(json.dumps(record, indent=2))
        staged.replace(out.with_suffix(".json"))

    # Seed by seed, (a) then (b), so that a run stopped early has both scenarios at the first seed.
    for seed in dict.fromkeys(args.seeds + args.seeds_b):
        if "a" in args.scenarios and seed in args.seeds:
            run_scenario_a(mouse, args, rows, report, seed, baselines=seed == args.seeds[0])
        if "b" in args.scenarios and seed in args.seeds_b:
            run_scenario_b(human, mouse, args, rows, report, seed, baselines=seed == args.seeds_b[0])
    report(complete=True)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
