"""The `scpeft-hf` command line: convert, pretrain, train, integrate, predict, embed, markers, push, datasets and
demo."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

from .errors import InvalidInputError, MissingFileError, OutputExistsError, ScpeftUserError
from .tasks.training_knobs import PRECISIONS

INPUT_KINDS = ("auto", "counts", "log1p")
VERBOSE_HELP = "log progress details, and show the traceback of any error"


def _read_h5ad(path: str):
    import anndata as ad

    if not Path(path).is_file():
        raise MissingFileError(f"--data {path} does not exist; pass the path of an .h5ad file")
    try:
        adata = ad.read_h5ad(path)
    except OSError as err:  # h5py: truncated, not HDF5, or unreadable
        raise InvalidInputError(
            f"--data {path} cannot be read as .h5ad ({str(err).splitlines()[0]}); the file is damaged or not an "
            "AnnData file: write it again with adata.write_h5ad()"
        ) from err
    if adata.n_obs == 0:
        raise InvalidInputError(f"--data {path} has 0 cells; pass a file with at least one cell")
    return adata


def _check_out_file(path: str, overwrite: bool) -> None:
    """Refuse to replace an existing --out file unless --overwrite; called before any work starts."""
    target = Path(path)
    if target.is_dir():
        raise OutputExistsError(f"--out {path} is a folder; pass the path of the .h5ad file to write")
    if target.exists() and not overwrite:
        raise OutputExistsError(f"--out {path} exists; choose another file or pass --overwrite to replace it")


def _write_h5ad(adata, path: str) -> None:
    """Write through a temporary file so a failure never leaves a half-written .h5ad."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        adata.write_h5ad(partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _convert(args: argparse.Namespace) -> int:
    from .models.scgpt.convert_scgpt import convert_scgpt_checkpoint

    report = convert_scgpt_checkpoint(args.src_dir, args.out_dir, overwrite=args.overwrite)
    print(report.summary())
    return 0


def _training_settings(args: argparse.Namespace):
    from .tasks.annotation import TrainingSettings

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
        torch_compile=args.torch_compile,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
    )


def _train(args: argparse.Namespace) -> int:
    from .output_folders import check_out_dir
    from .tasks.annotation import train_annotation
    from .tasks.backbones import SpeciesSettings

    check_out_dir(Path(args.out), args.overwrite, inputs=[args.data])

    settings = _training_settings(args)
    result = train_annotation(
        _read_h5ad(args.data),
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
    from .tasks.integration import IntegrationSettings, integrate

    settings = IntegrationSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        n_top_genes=args.n_top_genes,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    result = integrate(
        _read_h5ad(args.data),
        batch_key=args.batch_key,
        label_key=args.label_key,
        method=args.method,
        out_dir=args.out,
        base=args.base,
        settings=settings,
        overwrite=args.overwrite,
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


def _add_integrate_command(commands) -> None:
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
    integrate.add_argument(
        "--base", default=None, help="base scGPT folder (default: the embedded demo backbone)"
    )
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
    integrate.set_defaults(handler=_integrate)


def _predict(args: argparse.Namespace) -> int:
    from .tasks.annotation import load_annotator

    _check_out_file(args.out, args.overwrite)
    if (args.label_map or args.shared_labels_only) and not args.label_key:
        raise InvalidInputError("--label-map and --shared-labels-only score predictions: add --label-key KEY")
    cells = _read_h5ad(args.data)
    annotator = load_annotator(args.adapter, base=args.base, species=args.species)
    adata = annotator.predict(cells, batch_size=args.batch_size)
    metrics = _score_predictions(args, adata, annotator) if args.label_key else None
    _write_h5ad(adata, args.out)
    counts = adata.obs["scpeft_pred"].value_counts()
    print(
        f"Annotated {adata.n_obs} cells into {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    if metrics is not None:
        _write_prediction_metrics(args, metrics)
    return 0


def _score_predictions(args: argparse.Namespace, adata, annotator) -> dict:
    """Metrics of `predict --label-key` (with the ortholog coverage under --species); checked before any write."""
    from .errors import MissingKeyError
    from .tasks.metrics import label_transfer_metrics, read_label_map

    if args.label_key not in adata.obs:
        raise MissingKeyError(
            f"--label-key {args.label_key} is not an obs column of {args.data}: {list(adata.obs)}"
        )
    label_map = read_label_map(args.label_map) if args.label_map else None
    metrics = label_transfer_metrics(
        adata.obs[args.label_key],
        adata.obs["scpeft_pred"],
        annotator.label_names,
        label_map,
        args.shared_labels_only,
    )
    coverage = getattr(annotator.processor, "ortholog_coverage", None)
    if coverage is not None:
        print(f"Orthologs ({annotator.processor.species}): {coverage.report()}")
    return {**metrics, "orthologs": coverage.as_dict() if coverage is not None else None}


def _write_prediction_metrics(args: argparse.Namespace, metrics: dict) -> None:
    import json

    metrics_path = Path(args.out).parent / "metrics.json"
    partial = metrics_path.with_name(".metrics.json.partial")
    partial.write_text(json.dumps(metrics, indent=2) + "\n")
    partial.replace(metrics_path)
    if args.shared_labels_only:
        print(
            f"Scored {metrics['n_scored']} cells with labels the adapter knows; excluded {metrics['n_excluded']}"
        )
    elif metrics["unseen_labels"]:
        print(
            f"{metrics['n_unseen_label_cells']} cells have labels the adapter never saw "
            f"({', '.join(metrics['unseen_labels'])}): counted as errors (--shared-labels-only leaves them out)"
        )
    print(
        f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, balanced accuracy "
        f"{metrics['balanced_accuracy']:.4f} -> {metrics_path}"
    )


def _embed(args: argparse.Namespace) -> int:
    from .tasks.embedding import embed_cells

    _check_out_file(args.out, args.overwrite)
    adata = embed_cells(
        _read_h5ad(args.data),
        base=args.base,
        adapter=args.adapter,
        batch_size=args.batch_size,
        species=args.species,
        batch_key=args.batch_key,
    )
    _write_h5ad(adata, args.out)
    print(
        f"Wrote {adata.obsm['X_scpeft'].shape[1]}-dimensional embeddings of {adata.n_obs} cells to {args.out}"
    )
    return 0


def _markers(args: argparse.Namespace) -> int:
    from .tasks.attention import find_markers, marker_paths

    summary = find_markers(
        _read_h5ad(args.data),
        args.adapter,
        args.label_key,
        args.out,
        top=args.top,
        layer=args.attention_layer,
        reference=args.reference,
        method=args.method,
        base=args.base,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
    )
    for group, result in summary["groups"].items():
        print(
            f"{group}: {', '.join(result['top_genes'][:5])} ... ({result['overlap_with_wilcoxon']}/{args.top} "
            "shared with Wilcoxon)"
        )
    for group, reason in summary["skipped_groups"].items():
        print(f"{group}: skipped, {reason}")
    print(f"Wrote {', '.join(str(path) for path in marker_paths(args.out).values())}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from .tasks.hub import push_adapter

    result = push_adapter(args.adapter, args.repo_id, private=args.private, token=args.token)
    print(f"Pushed {args.adapter} to {result.repo_url} (commit {result.commit.oid[:8]}):")
    for name, size in result.files.items():
        print(f"  {name:<32} {size:>12,} bytes")
    print(f"Load it with: scpeft-hf predict --adapter {args.repo_id} --data cells.h5ad --out annotated.h5ad")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from .tasks.pretrain import pretrain_backbone

    out = pretrain_backbone(
        args.out,
        epochs=args.epochs,
        seed=args.seed,
        time_budget_s=args.time_budget_s,
        overwrite=args.overwrite,
    )
    print(f"Wrote the pretrained backbone to {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .tasks.demo import run_demo

    run_demo(args.out, epochs=args.epochs, seed=args.seed, overwrite=args.overwrite)
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from .datasets import DATASETS, data_home, load_dataset

    if args.action == "list":
        print(f"{'name':<18} {'cells':>6} {'genes':>6}  {'labels':<15} {'licence':<13} {'source':<23} cached")
        for info in DATASETS.values():
            print(
                f"{info.name:<18} {info.cells:>6} {info.genes:>6}  {info.labels:<15} {info.licence:<13} "
                f"{info.source:<23} {'yes' if info.cached else 'no'}"
            )
        print(f"cache: {data_home()}")
        return 0
    if not args.out:
        raise InvalidInputError("datasets get needs --out FILE.h5ad")
    _check_out_file(args.out, args.overwrite)
    adata = load_dataset(args.name)
    _write_h5ad(adata, args.out)
    print(f"Wrote {args.name}: {adata.n_obs} cells x {adata.n_vars} genes to {args.out}")
    return 0


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=10, help="maximum training epochs (default 10)")
    parser.add_argument("--batch-size", type=int, default=32, help="cells per training step (default 32)")
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: 1e-3 for adapters and probe, 1e-4 for full)",
    )
    parser.add_argument(
        "--max-length", type=int, default=None, help="genes per cell incl. <cls> (default: the processor's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for splits, initialisation and sampling")
    parser.add_argument(
        "--patience", type=int, default=3, help="early-stopping patience in epochs (default 3)"
    )


def _add_speed_options(parser: argparse.ArgumentParser) -> None:
    """Memory and speed knobs of the training commands, each recorded in run_info.json."""
    parser.add_argument(
        "--adapter-layers",
        default=None,
        help="encoder layers that get the encoder adapter, prefix or LoRA: 'paper' (the first half, the default), "
        "'all', or indices and ranges such as '6-11' or '0,2,4-5'. Adapters on upper layers only stop "
        "backpropagation below them. Not for token (it sits on the input), full or probe",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute each layer's activations in the backward pass: less memory, slower steps",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="mixed precision: auto = bf16 on a CUDA GPU that supports it, else fp32; fp16 needs a CUDA GPU",
    )
    parser.add_argument(
        "--torch-compile", action="store_true", help="compile the model with torch.compile (inductor)"
    )
    parser.add_argument(
        "--gradient-accumulation-steps",
        type=int,
        default=1,
        help="sum gradients over this many batches per optimizer step (effective batch = batch size x this)",
    )


def _add_species_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--species",
        default=None,
        help="species of the cells (e.g. mouse): genes are mapped to human symbols through an ortholog table and "
        "matched case-exactly (default: matched as given, with a case-insensitive fallback)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scpeft-hf",
        description="Parameter-efficient fine-tuning of single-cell foundation models on the Hugging Face stack. "
        "Run `scpeft-hf COMMAND --help` for each command's options.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="convert an official checkpoint to a Hugging Face folder",
        description="Convert an official checkpoint folder into a Hugging Face folder (config.json, "
        "model.safetensors, vocab.json) that AutoModel.from_pretrained and every scpeft-hf command load.",
    )
    convert.add_argument("model", choices=["scgpt"], help="which model family the checkpoint belongs to")
    convert.add_argument("src_dir", help="official checkpoint folder: best_model.pt, args.json, vocab.json")
    convert.add_argument("out_dir", help="folder to write; left untouched if conversion fails")
    convert.add_argument(
        "--overwrite", action="store_true", help="replace OUT_DIR if it is a folder scpeft-hf wrote"
    )
    convert.set_defaults(handler=_convert)

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
    train.add_argument("--base", default=None, help="base model folder (default: the embedded demo backbone)")
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
    _add_train_options(train)
    train.add_argument(
        "--no-class-weights", action="store_true", help="do not weight the loss by class frequency"
    )
    train.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the logistic-regression baseline fitted on the same split (reported in metrics.json)",
    )
    _add_speed_options(train)
    _add_species_option(train)
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
    _add_integrate_command(commands)

    predict = commands.add_parser(
        "predict",
        help="annotate cells with a trained adapter",
        description="Annotate cells: writes obs['scpeft_pred'], obs['scpeft_confidence'] and obsm['X_scpeft'].",
    )
    predict.add_argument(
        "--adapter",
        required=True,
        help="folder written by `scpeft-hf train`, or a Hub repo USER/NAME shared with `scpeft-hf push`",
    )
    predict.add_argument("--data", required=True, help=".h5ad file to annotate")
    predict.add_argument("--out", required=True, help=".h5ad file to write")
    predict.add_argument(
        "--base", default=None, help="base model folder (default: the one the adapter names)"
    )
    predict.add_argument("--batch-size", type=int, default=64, help="cells per forward pass")
    predict.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _add_species_option(predict)
    predict.add_argument(
        "--label-key",
        default=None,
        help="obs column with true labels: writes metrics.json next to --out (labels the adapter never saw are errors)",
    )
    predict.add_argument(
        "--label-map", default=None, help="two-column file of label spellings that match (e.g. T_cell,t_cell)"
    )
    predict.add_argument(
        "--shared-labels-only",
        action="store_true",
        help="score only cells whose label the adapter knows (says how many were excluded)",
    )
    predict.set_defaults(handler=_predict)

    embed = commands.add_parser(
        "embed",
        help="compute cell embeddings",
        description="Write cell embeddings to obsm['X_scpeft'] from a base model, optionally with an adapter.",
    )
    embed.add_argument("--base", default=None, help="base model folder (default: the embedded demo backbone)")
    embed.add_argument(
        "--adapter",
        default=None,
        help="optional adapter: a folder written by `scpeft-hf train` or a Hub repo USER/NAME",
    )
    embed.add_argument("--data", required=True, help=".h5ad file")
    embed.add_argument("--out", required=True, help=".h5ad file to write")
    embed.add_argument("--batch-size", type=int, default=64, help="cells per forward pass")
    embed.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _add_species_option(embed)
    embed.add_argument(
        "--batch-key",
        default=None,
        help="obs column with batches, for an `integrate` adapter (default: its own)",
    )
    embed.set_defaults(handler=_embed)

    markers = commands.add_parser(
        "markers",
        help="marker genes per cell type from a trained model's attention",
        description="Score each cell's genes by the attention of one layer of a trained model (adapter active), "
        "rank genes per group (mean score in the group minus the reference's, Mann-Whitney U p-values with "
        "Benjamini-Hochberg correction) and compare each group's top genes with scanpy's Wilcoxon ranking. Writes "
        "--out (csv: group, rank, gene, score, pvalue, pvalue_adj), a dotplot (.png) and <stem>_summary.json beside "
        "it: all three or none.",
    )
    markers.add_argument(
        "--adapter", required=True, help="folder written by `scpeft-hf train`, or a Hub repo"
    )
    markers.add_argument("--data", required=True, help=".h5ad file with cells x genes (raw counts in .X)")
    markers.add_argument(
        "--label-key", required=True, help="obs column with the groups (e.g. cell_type, or scpeft_pred)"
    )
    markers.add_argument("--out", required=True, help="csv file to write (markers.csv)")
    markers.add_argument("--top", type=int, default=20, help="genes per group in the table (default 20)")
    markers.add_argument(
        "--attention-layer", type=int, default=-1, help="encoder layer to read (default -1, the last)"
    )
    markers.add_argument(
        "--reference", default="rest", help="'rest' (all other cells, default) or the name of one group"
    )
    markers.add_argument(
        "--method",
        choices=["qk-rank", "cls-softmax"],
        default="qk-rank",
        help="qk-rank (scPEFT's rank-normalised q.k) or cls-softmax (the <cls> attention probabilities)",
    )
    markers.add_argument(
        "--base", default=None, help="base model folder (default: the one the adapter names)"
    )
    markers.add_argument("--batch-size", type=int, default=16, help="cells per forward pass")
    markers.add_argument("--overwrite", action="store_true", help="replace existing output files")
    markers.set_defaults(handler=_markers)

    push = commands.add_parser(
        "push",
        help="share a trained adapter on the Hugging Face Hub",
        description="Upload an adapter folder written by `scpeft-hf train` to a Hub model repo in one commit: the "
        "adapter, its processor files (with the label names), run_info.json, metrics.json and a model card that "
        "says how to load it from the Hub. The base model is never uploaded; `full` and `probe` folders (whole "
        "models) are refused. Set HF_ENDPOINT to push to a Hub mirror.",
    )
    push.add_argument("--adapter", required=True, help="folder written by `scpeft-hf train`")
    push.add_argument(
        "--repo-id", required=True, help="Hub model repo USER/NAME or ORG/NAME (created if missing)"
    )
    push.add_argument(
        "--private",
        action="store_true",
        help="create the repo private (an existing repo keeps its visibility)",
    )
    push.add_argument(
        "--token",
        default=None,
        help="Hub token with write access (default: HF_TOKEN or the `hf auth login` token)",
    )
    push.set_defaults(handler=_push)

    pretrain = commands.add_parser(
        "pretrain",
        help="pretrain the embedded backbone on the offline human cell pool",
        description="Pretrain an scGPT-architecture backbone with scGPT's masked-value objective (GEP + GEPC) on "
        "every offline human raw-count cell that no benchmark evaluates on (reproduces "
        "scpeft_hf/assets/scgpt-offline-v1; about a minute on one GPU, hours on a 2-core CPU).",
    )
    pretrain.add_argument("--out", required=True, help="folder to write the backbone to")
    pretrain.add_argument("--epochs", type=int, default=40, help="pretraining epochs (default 40)")
    pretrain.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="train fewer epochs if they would not fit this budget",
    )
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument(
        "--overwrite", action="store_true", help="replace --out if it is a folder scpeft-hf wrote"
    )
    pretrain.set_defaults(handler=_pretrain)

    datasets = commands.add_parser(
        "datasets",
        help="list or save the offline real datasets",
        description="Real single-cell datasets shipped inside registry packages (pinned, sha256-checked, fetched "
        "once with `pip download` into $SCPEFT_DATA_HOME, then offline): raw counts, gene symbols, obs "
        "'cell_type' where labelled and 'donor'.",
    )
    datasets.add_argument("action", choices=["list", "get"], help="list the datasets, or save one as .h5ad")
    datasets.add_argument(
        "name", nargs="?", default=None, help="dataset name for `get` (see `datasets list`)"
    )
    datasets.add_argument("--out", default=None, help=".h5ad file to write (get)")
    datasets.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    datasets.set_defaults(handler=_datasets)

    demo = commands.add_parser(
        "demo",
        help="offline end-to-end demo on bundled PBMCs",
        description="Fine-tune an encoder adapter of the embedded backbone on scanpy's bundled pbmc68k_reduced "
        "cells and compare test macro-F1 with a linear probe, full fine-tuning and logistic regression.",
    )
    demo.add_argument("--out", default="scpeft-demo", help="output folder (default ./scpeft-demo)")
    demo.add_argument("--epochs", type=int, default=None, help="override every method's epoch budget")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--overwrite", action="store_true", help="replace --out if it is a folder an earlier demo wrote"
    )
    demo.set_defaults(handler=_demo)

    # `-v` is accepted after the command too; SUPPRESS keeps a command's default from undoing a leading `-v`.
    for command in commands.choices.values():
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (`ScpeftUserError`) prints one line and returns 2; any other exception is a
    bug and propagates with its traceback. `-v` logs progress and shows tracebacks for bad input too."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.handler(args)
    except ScpeftUserError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"scpeft-hf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
