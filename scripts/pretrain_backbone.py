"""Pretrain the embedded backbone `scpeft-hf/scgpt-offline-v1` step by step (see `scpeft_hf.tasks.pretrain`), so the
training step can run on a GPU machine that has torch and transformers but not anndata or datasets:

    python scripts/pretrain_backbone.py prepare --out pool.npz          # here: pool -> vocab + tokenized arrays
    python scripts/pretrain_backbone.py train --pool pool.npz --out run  # GPU (or CPU): weights + metrics
    python scripts/pretrain_backbone.py package --pool pool.npz --run run --out scpeft_hf/assets/scgpt-offline-v1

`scpeft-hf pretrain --out DIR` runs the three steps in one process.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from scpeft_hf.tasks.pretrain import package_backbone, prepare_pool, train_backbone


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    steps = parser.add_subparsers(dest="step", required=True)
    prepare = steps.add_parser("prepare")
    prepare.add_argument("--out", type=Path, required=True)
    prepare.add_argument("--max-length", type=int, default=1024)
    prepare.add_argument("--seed", type=int, default=0)
    train = steps.add_parser("train")
    train.add_argument("--pool", type=Path, required=True)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--epochs", type=int, default=40)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--time-budget-s", type=float, default=None, help="fewer epochs if they would not fit")
    train.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    train.add_argument("--shard", default="1GB", help="max_shard_size of the saved weights")
    train.add_argument(
        "--tiny", action="store_true", help="a tiny model on 64 cells: checks the steps end to end"
    )
    package = steps.add_parser("package")
    package.add_argument("--pool", type=Path, required=True)
    package.add_argument("--run", type=Path, required=True)
    package.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.step == "prepare":
        prepare_pool(args.out, args.max_length, args.seed)
    elif args.step == "train":
        train_backbone(
            args.pool, args.out, args.epochs, args.batch_size, args.lr, args.seed, args.tiny,
            workers=args.workers, shard=args.shard, time_budget_s=args.time_budget_s,
        )  # fmt: skip
    else:
        package_backbone(args.pool, args.run, args.out)


if __name__ == "__main__":
    main()
