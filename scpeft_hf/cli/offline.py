"""`pretrain`, `datasets` and `demo`: the offline backbone, the offline datasets and the end-to-end demo."""

from __future__ import annotations

import argparse

from ..errors import InvalidInputError
from .common import add_device_options, check_device_options, check_out_file, write_h5ad


def _pretrain(args: argparse.Namespace) -> int:
    from ..tasks.pretrain import pretrain_backbone

    check_device_options(args)
    out = pretrain_backbone(
        args.out,
        epochs=args.epochs,
        seed=args.seed,
        time_budget_s=args.time_budget_s,
        overwrite=args.overwrite,
        precision=args.precision,
        device=args.device,
    )
    print(f"Wrote the pretrained backbone to {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    check_device_options(args)
    run_demo(
        args.out,
        epochs=args.epochs,
        seed=args.seed,
        overwrite=args.overwrite,
        precision=args.precision,
        device=args.device,
    )
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from ..datasets import DATASETS, data_home, load_dataset

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
    check_out_file(args.out, args.overwrite)
    adata = load_dataset(args.name)
    write_h5ad(adata, args.out)
    print(f"Wrote {args.name}: {adata.n_obs} cells x {adata.n_vars} genes to {args.out}")
    return 0


def add_pretrain_command(commands) -> None:
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
    add_device_options(pretrain)
    pretrain.set_defaults(handler=_pretrain)


def add_datasets_command(commands) -> None:
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


def add_demo_command(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="offline end-to-end demo on bundled PBMCs",
        description="Fine-tune an encoder adapter of the embedded backbone on scanpy's bundled pbmc68k_reduced "
        "cells and compare test macro-F1 with a linear probe, full fine-tuning and logistic regression.",
    )
    demo.add_argument("--out", default="scpeft-demo", help="output folder (default ./scpeft-demo)")
    demo.add_argument("--epochs", type=int, default=None, help="override every method's epoch budget")
    demo.add_argument("--seed", type=int, default=0)
    add_device_options(demo)
    demo.add_argument(
        "--overwrite", action="store_true", help="replace --out if it is a folder an earlier demo wrote"
    )
    demo.set_defaults(handler=_demo)
