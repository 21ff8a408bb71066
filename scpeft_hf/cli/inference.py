"""`predict`, `embed` and `markers`: use a trained adapter or a base on cells."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidInputError
from .common import (
    add_backed_options,
    add_base_option,
    add_device_options,
    add_input_options,
    add_key_added_option,
    add_species_option,
    check_device_options,
    check_out_file,
    read_h5ad,
    streams,
    write_h5ad,
)


def _predict(args: argparse.Namespace) -> int:
    from ..tasks.annotation import load_annotator

    check_out_file(args.out, args.overwrite)
    check_device_options(args)
    if (args.label_map or args.shared_labels_only) and not args.label_key:
        raise InvalidInputError("--label-map and --shared-labels-only score predictions: add --label-key KEY")
    if streams(args):
        return _predict_backed(args)
    adata = read_h5ad(args.data)
    annotator = load_annotator(
        args.adapter,
        base=args.base,
        species=args.species,
        device=args.device,
        layer=args.layer,
        use_raw=args.use_raw,
        gene_column=args.gene_column,
    )
    annotator.predict(
        adata, key_added=args.key_added, batch_size=args.batch_size, precision=args.precision, progress=True
    )
    metrics = _score_predictions(args, adata, annotator) if args.label_key else None
    write_h5ad(adata, args.out)
    counts = adata.obs[f"{args.key_added}_pred"].value_counts()
    counts = counts[counts > 0]  # every known label is a category, predicted or not
    print(
        f"Annotated {adata.n_obs} cells into {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    if metrics is not None:
        _write_prediction_metrics(args, metrics)
    return 0


def _check_streamable_input(args: argparse.Namespace) -> None:
    if args.use_raw:
        raise InvalidInputError(
            f"--data {args.data} is streamed from disk (--backed, or too large for memory), which reads X or a "
            "--layer: copy .raw.X into a layer and pass --layer NAME instead of --use-raw"
        )


def _predict_backed(args: argparse.Namespace) -> int:
    """`predict` streaming --data from disk (see `tasks/large_files.py`)."""
    _check_streamable_input(args)
    from ..errors import MissingKeyError
    from ..tasks.annotation import load_annotator
    from ..tasks.large_files import predict_file

    key_added = args.key_added
    if args.label_key:
        from ..data.streaming import open_h5ad, read_frame

        with open_h5ad(args.data) as file:
            columns = list(read_frame(file, "obs").columns)
        if args.label_key not in columns:
            raise MissingKeyError(
                f"--label-key {args.label_key} is not an obs column of {args.data}: {columns}"
            )
    annotator = load_annotator(args.adapter, base=args.base, species=args.species, device=args.device)
    result = predict_file(
        annotator,
        args.data,
        args.out,
        key_added=key_added,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        precision=args.precision,
        layer=args.layer,
    )
    counts = result.obs[f"{key_added}_pred"].value_counts()
    counts = counts[counts > 0]
    print(
        f"Annotated {result.n_obs} cells into {args.out} ({result.n_obs / result.seconds:.1f} cells/s, streamed): "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    if args.label_key:
        _write_prediction_metrics(args, _score_predictions(args, result, annotator))
    return 0


def _score_predictions(args: argparse.Namespace, adata, annotator) -> dict:
    """Metrics of `predict --label-key` (with the ortholog coverage under --species); checked before any write."""
    from ..errors import MissingKeyError
    from ..tasks.metrics import label_transfer_metrics, read_label_map

    if args.label_key not in adata.obs:
        raise MissingKeyError(
            f"--label-key {args.label_key} is not an obs column of {args.data}: {list(adata.obs)}"
        )
    label_map = read_label_map(args.label_map) if args.label_map else None
    metrics = label_transfer_metrics(
        adata.obs[args.label_key],
        adata.obs[f"{args.key_added}_pred"],
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
    from ..tasks.embedding import embed_cells

    check_out_file(args.out, args.overwrite)
    check_device_options(args)
    if streams(args):
        return _embed_backed(args)
    adata = read_h5ad(args.data)
    embed_cells(
        adata,
        base=args.base,
        adapter=args.adapter,
        batch_size=args.batch_size,
        species=args.species,
        batch_key=args.batch_key,
        layer=args.layer,
        use_raw=args.use_raw,
        gene_column=args.gene_column,
        key_added=args.key_added,
        precision=args.precision,
        device=args.device,
        progress=True,
    )
    write_h5ad(adata, args.out)
    dimensions = adata.obsm[f"X_{args.key_added}"].shape[1]
    print(f"Wrote {dimensions}-dimensional embeddings of {adata.n_obs} cells to {args.out}")
    return 0


def _embed_backed(args: argparse.Namespace) -> int:
    """`embed` streaming --data from disk (see `tasks/large_files.py`)."""
    _check_streamable_input(args)
    from ..tasks.large_files import embed_file
    from ..tasks.trained import load_embedding_model

    model, processor = load_embedding_model(args.adapter, args.base, args.species, device=args.device)
    result = embed_file(
        model, processor, args.data, args.out, key_added=args.key_added, chunk_size=args.chunk_size,
        batch_size=args.batch_size, precision=args.precision, layer=args.layer,
    )  # fmt: skip
    print(
        f"Wrote embeddings of {result.n_obs} cells to {args.out} ({result.n_obs / result.seconds:.1f} cells/s, "
        "streamed)"
    )
    return 0


def _markers(args: argparse.Namespace) -> int:
    from ..tasks.attention import find_markers, marker_paths

    check_device_options(args)
    summary = find_markers(
        read_h5ad(args.data),
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
        precision=args.precision,
        device=args.device,
        progress=True,
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


def add_predict_command(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="annotate cells with a trained adapter",
        description="Annotate cells: writes obs['scpeft_pred'], obs['scpeft_confidence'], obsm['X_scpeft'], "
        "obsm['scpeft_probabilities'] (columns in the order of uns['scpeft']['labels']) and the record uns['scpeft'] "
        "(settings, base, adapter, versions); --key-added renames them.",
    )
    predict.add_argument(
        "--adapter",
        required=True,
        help="folder written by `scpeft-hf train`, or a Hub repo USER/NAME shared with `scpeft-hf push`",
    )
    predict.add_argument("--data", required=True, help=".h5ad file to annotate")
    predict.add_argument("--out", required=True, help=".h5ad file to write")
    add_base_option(predict, "the one the adapter names, at its recorded commit")
    predict.add_argument("--batch-size", type=int, default=64, help="cells per forward pass")
    predict.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_input_options(predict)
    add_species_option(predict)
    add_backed_options(predict)
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
    add_key_added_option(predict, "obs[KEY_pred], obs[KEY_confidence], obsm[X_KEY], obsm[KEY_probabilities]")
    add_device_options(predict)
    predict.set_defaults(handler=_predict)


def add_embed_command(commands) -> None:
    embed = commands.add_parser(
        "embed",
        help="compute cell embeddings",
        description="Write cell embeddings to obsm['X_scpeft'] and the record uns['scpeft'] from a base model, "
        "optionally with an adapter; --key-added renames them.",
    )
    add_base_option(embed, "the embedded demo backbone")
    embed.add_argument(
        "--adapter",
        default=None,
        help="optional adapter: a folder written by `scpeft-hf train` or a Hub repo USER/NAME",
    )
    embed.add_argument("--data", required=True, help=".h5ad file")
    embed.add_argument("--out", required=True, help=".h5ad file to write")
    embed.add_argument("--batch-size", type=int, default=64, help="cells per forward pass")
    embed.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_input_options(embed)
    add_species_option(embed)
    add_backed_options(embed)
    embed.add_argument(
        "--batch-key",
        default=None,
        help="obs column with batches, for an `integrate` adapter (default: its own)",
    )
    add_key_added_option(embed, "obsm[X_KEY]")
    add_device_options(embed)
    embed.set_defaults(handler=_embed)


def add_markers_command(commands) -> None:
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
    add_base_option(markers, "the one the adapter names, at its recorded commit")
    markers.add_argument("--batch-size", type=int, default=16, help="cells per forward pass")
    markers.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_device_options(markers)
    markers.set_defaults(handler=_markers)
