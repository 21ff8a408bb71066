"""`train` and `integrate`: fine-tune an adapter on an .h5ad file."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    INPUT_KINDS,
    add_base_option,
    add_device_options,
    add_input_options,
    add_key_added_option,
    add_species_option,
    add_speed_options,
    add_train_options,
    check_device_options,
    read_h5ad,
)


def training_settings(args: argparse.Namespace):
    from ..tasks.annotation import TrainingSettings

    return TrainingSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        seed=args.seed,
        early_stopping_patience=args.patience,
        class_weights=not args.no_class_weights,
        gradient_checkpointing=args.gradient_checkpointing,
        min_cells_per_class=args.min_cells_per_class,
        baseline=not args.no_baseline,
        adapter_layers=args.adapter_layers,
        precision=args.precision,
        device=args.device,
        torch_compile=args.torch_compile,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
    )


def _train(args: argparse.Namespace) -> int:
    from ..output_folders import check_out_dir
    from ..tasks.annotation import train_annotation
    from ..tasks.backbones import SpeciesSettings

    check_out_dir(Path(args.out), args.overwrite, inputs=[args.data])

    settings = training_settings(args)
    result = train_annotation(
        read_h5ad(args.data),
        label_key=args.label_key,
        method=args.method,
        out_dir=args.out,
        base=args.base,
        split_key=args.split_key,
        input_kind=args.input,
        settings=settings,
        overwrite=args.overwrite,
        species=SpeciesSettings(args.species, args.ortholog_table, args.ortholog_policy, args.strict),
        test_groups=args.test_groups,
        resume=args.resume,
        layer=args.layer,
        use_raw=bool(args.use_raw),
        gene_column=args.gene_column,
    )
    if result.metrics:
        print(
            f"{args.method}: test accuracy {result.metrics['test_accuracy']:.4f}, macro-F1 "
            f"{result.metrics['test_macro_f1']:.4f}, balanced accuracy {result.metrics['test_balanced_accuracy']:.4f}"
        )
        baseline = result.metrics.get("baseline")
        if baseline and "test_macro_f1" in baseline:
            print(
                f"logistic regression (same split): test accuracy {baseline['test_accuracy']:.4f}, macro-F1 "
                f"{baseline['test_macro_f1']:.4f}, balanced accuracy {baseline['test_balanced_accuracy']:.4f}"
            )
        elif baseline:
            print(f"logistic regression (same split): {baseline['status']}")
        print(f"Wrote {result.out_dir}")
    return 0


def _integrate(args: argparse.Namespace) -> int:
    from ..tasks.integration import IntegrationSettings, integrate

    check_device_options(args)
    settings = IntegrationSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        n_top_genes=args.n_top_genes,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
        precision=args.precision,
        device=args.device,
    )
    result = integrate(
        read_h5ad(args.data),
        batch_key=args.batch_key,
        label_key=args.label_key,
        method=args.method,
        out_dir=args.out,
        base=args.base,
        settings=settings,
        overwrite=args.overwrite,
        key_added=args.key_added,
    )
    for name in ("scpeft", "zero_shot", "pca", "harmony"):
        if name in result.metrics:
            scores = result.metrics[name]
            print(
                f"{name:<10} "
                + "  ".join(
                    f"{k} {scores[k]:.3f}" for k in ("avg_bio", "avg_batch", "overall") if k in scores
                )
            )
    print(f"Wrote {result.out_dir}")
    return 0


def add_train_command(commands) -> None:
    train = commands.add_parser(
        "train",
        help="fine-tune an adapter for cell-type annotation",
        description="Fine-tune a cell-type annotation model on an .h5ad file with transformers.Trainer. Writes the "
        "adapter, processor_config.json (with the label names), metrics.json, a model card README.md, "
        "confusion_matrix.png and umap.png into --out; nothing is written if training fails.",
    )
    train.add_argument("--data", required=True, help=".h5ad file with cells x genes")
    train.add_argument("--label-key", required=True, help="obs column with the cell types to learn")
    train.add_argument(
        "--method",
        default="encoder",
        choices=["encoder", "token", "prefix", "lora", "full", "probe"],
        help="encoder/token/prefix adapter, LoRA, full fine-tuning, or probe (one Linear layer on the frozen backbone)",
    )
    train.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed or interrupted run from the last checkpoint kept in .<out>.partial beside --out",
    )
    add_base_option(train, "the embedded demo backbone")
    train.add_argument(
        "--split-key",
        default=None,
        help="obs column with train/validation/test; without it a seeded stratified 72/8/20 split is made",
    )
    train.add_argument(
        "--test-groups",
        default=None,
        metavar="KEY=VALUE[,VALUE...]",
        help="hold out every cell of these groups as the test split, e.g. donor=human1; validation is carved "
        "from the other cells, stratified (not with --split-key)",
    )
    train.add_argument(
        "--min-cells-per-class",
        type=int,
        default=None,
        metavar="N",
        help="drop classes with fewer than N cells before splitting, and report them (default: keep all)",
    )
    train.add_argument(
        "--input",
        choices=INPUT_KINDS,
        default=None,
        help="what .X holds: raw counts, log1p-normalised values, or auto-detect (default: the processor's)",
    )
    add_input_options(train)
    add_train_options(train)
    train.add_argument(
        "--no-class-weights", action="store_true", help="do not weight the loss by class frequency"
    )
    train.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the logistic-regression baseline fitted on the same split (reported in metrics.json)",
    )
    add_speed_options(train)
    add_species_option(train)
    train.add_argument(
        "--ortholog-table",
        default=None,
        help="CSV with columns source_gene,human_gene[,confidence] (default: the shipped table of --species)",
    )
    train.add_argument(
        "--ortholog-policy",
        choices=["one2one", "sum"],
        default=None,
        help="one2one: only one-to-one orthologs; sum (default): counts of genes with the same human ortholog "
        "are summed, a gene with several goes to the most confident (ties: alphabetical)",
    )
    train.add_argument(
        "--strict", action="store_true", help="fail instead of warning when under 20%% of expressed genes map"
    )
    train.add_argument(
        "--overwrite", action="store_true", help="replace --out if it is a folder scpeft-hf wrote"
    )
    train.set_defaults(handler=_train)


def add_integrate_command(commands) -> None:
    integrate = commands.add_parser(
        "integrate",
        help="integrate batches with an adapter and scGPT's integration objective",
        description="Fine-tune an adapter with scGPT's integration objective (masked-value MSE, GEPC, ECS, DAB, "
        "DSBN) on mini-batches of one batch each, embed every cell, and score the embedding with scIB metrics "
        "beside the zero-shot model and PCA (needs the extra: pip install 'scpeft-hf[integration]'). Writes the "
        "adapter, integrated.h5ad, metrics.json, umap.png and a model card into --out, or nothing on failure.",
    )
    integrate.add_argument("--data", required=True, help=".h5ad file with raw counts in X")
    integrate.add_argument(
        "--batch-key", required=True, help="obs column naming each cell's batch (donor, run)"
    )
    integrate.add_argument(
        "--label-key", default=None, help="obs column with cell types, for the bio metrics"
    )
    integrate.add_argument(
        "--method", default="encoder", choices=["encoder", "token", "prefix", "lora", "full"]
    )
    integrate.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    add_base_option(integrate, "the embedded demo backbone (an scGPT base)")
    integrate.add_argument(
        "--epochs", type=int, default=15, help="training epochs (default 15, as scGPT's tutorial)"
    )
    integrate.add_argument("--batch-size", type=int, default=32, help="cells per training step (default 32)")
    integrate.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's)")
    integrate.add_argument("--max-length", type=int, default=None, help="genes per cell incl. <cls>")
    integrate.add_argument(
        "--n-top-genes", type=int, default=1200, help="highly variable genes (default 1200)"
    )
    integrate.add_argument("--seed", type=int, default=0)
    integrate.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    integrate.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_key_added_option(integrate, "integrated.h5ad's obsm[X_KEY], obsm[X_KEY_zero_shot]")
    add_device_options(integrate)
    integrate.set_defaults(handler=_integrate)
