"""Pretrain the embedded scGPT-architecture backbone `scpeft-hf/scgpt-offline-v1` (scGPT's masked-value objective,
GEP + GEPC) on every offline human raw-count cell from MIT/BSD registry packages, none used for evaluation.

Three steps, so that the GPU step needs only torch and transformers (no anndata, datasets or scanpy):

    python scripts/pretrain_backbone.py prepare --out pool.npz          # here: pool -> vocab + tokenized arrays
    python scripts/pretrain_backbone.py train --pool pool.npz --out run  # GPU (or CPU): weights + metrics.json
    python scripts/pretrain_backbone.py package --pool pool.npz --run run --out scpeft_hf/assets/scgpt-offline-v1

The pool (DESIGN.md §6): pbmc3k (desc), the HLCA lung query (scArches), CellTypist's sample and scMIDAS' PBMC
RNA. Kept out: pbmc68k_reduced (every benchmark split of it is evaluation data) and Baron pancreas (human and mouse),
so pancreas is a tissue the backbone never saw. 5% of each source's cells are held out to report the
masked-value loss against mean predictors.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

POOL = ("pbmc3k", "hlca_lung_query", "celltypist_sample", "pbmc_mosaic")
SPECIALS = ("<pad>", "<cls>", "<eoc>")
MAX_GENES_STORED = 2048  # per cell; training draws max_length - 1 of them each time
HELD_OUT_FRACTION = 0.05
PRETRAINED_MIN_CELLS = 20  # a gene counts as pretrained when expressed in at least this many pool cells
ARCHITECTURE = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=512,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.0,  # attention dropout forces the slow math path on CPU
    max_seq_len=1024,
)


def prepare(out: Path, max_length: int, seed: int) -> None:
    from scpeft_hf import datasets
    from scpeft_hf.data import GeneVocab, ScGPTProcessor

    pool = {name: getattr(datasets, name)() for name in POOL}
    symbols = sorted(set().union(*(map(str, adata.var_names) for adata in pool.values())))
    vocab = GeneVocab(
        {**{g: i for i, g in enumerate(symbols)}, **{s: len(symbols) + i for i, s in enumerate(SPECIALS)}}
    )
    processor = ScGPTProcessor(vocab, input_kind="counts", max_length=max_length, seed=seed)
    rng = np.random.default_rng(seed)
    ids, values, offsets, source, held_out, cells = [], [], [0], [], [], []
    expressed_in = np.zeros(len(vocab), dtype=np.int64)
    for index, (name, adata) in enumerate(pool.items()):
        tokenized = processor(adata)
        n = len(tokenized)
        held = np.zeros(n, dtype=bool)
        held[rng.choice(n, size=max(1, round(HELD_OUT_FRACTION * n)), replace=False)] = True
        for cell_ids, cell_values in zip(tokenized["input_ids"], tokenized["values"], strict=True):
            cell_ids, cell_values = np.asarray(cell_ids), np.asarray(cell_values)
            expressed_in[cell_ids[1:]] += 1
            if len(cell_ids) > MAX_GENES_STORED:
                keep = np.sort(rng.choice(np.arange(1, len(cell_ids)), MAX_GENES_STORED - 1, replace=False))
                keep = np.concatenate([[0], keep])
                cell_ids, cell_values = cell_ids[keep], cell_values[keep]
            ids.append(cell_ids.astype(np.int32))
            values.append(cell_values.astype(np.int8))
            offsets.append(offsets[-1] + len(cell_ids))
        source += [index] * n
        held_out.append(held)
        cells += [f"{name}:{cell}" for cell in adata.obs_names]
        print(f"{name}: {n} cells, {adata.n_vars} genes, {int(held.sum())} held out")
    np.savez_compressed(
        out,
        input_ids=np.concatenate(ids),
        values=np.concatenate(values),
        offsets=np.asarray(offsets, dtype=np.int64),
        source=np.asarray(source, dtype=np.int8),
        held_out=np.concatenate(held_out),
        expressed_in=expressed_in,
        vocab=np.asarray(json.dumps(vocab.token_to_id)),
        cells=np.asarray(cells),
        sources=np.asarray(POOL),
        processor=np.asarray(json.dumps({"max_length": max_length, "seed": seed, "input_kind": "counts"})),
    )
    print(f"{len(cells)} cells, vocabulary {len(vocab)}, {out.stat().st_size / 2**20:.1f} MiB -> {out}")


class PoolCells(torch.utils.data.Dataset):
    def __init__(self, pool, rows: np.ndarray):
        self.ids, self.values, self.offsets, self.rows = (
            pool["input_ids"],
            pool["values"],
            pool["offsets"],
            rows,
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        start, stop = self.offsets[self.rows[i]], self.offsets[self.rows[i] + 1]
        return {"input_ids": self.ids[start:stop], "values": self.values[start:stop].astype(np.float32)}


def _gene_means(pool, rows: np.ndarray, vocab_size: int) -> np.ndarray:
    """Each gene's mean binned value over the training cells that express it (the per-gene mean predictor)."""
    sums, counts = np.zeros(vocab_size), np.zeros(vocab_size)
    for row in rows:
        start, stop = pool["offsets"][row] + 1, pool["offsets"][row + 1]
        np.add.at(sums, pool["input_ids"][start:stop], pool["values"][start:stop])
        np.add.at(counts, pool["input_ids"][start:stop], 1)
    overall = sums.sum() / counts.sum()
    return np.where(counts > 0, sums / np.maximum(counts, 1), overall)


@torch.no_grad()
def evaluate(model, loader, gene_means: torch.Tensor, device: str) -> dict[str, float]:
    """Masked-value MSE of the expression decoder on held-out cells, beside two mean predictors: each cell's mean
    visible value, and each gene's mean value in the training cells."""
    model.eval()
    totals = {"model_gep": 0.0, "model_gepc": 0.0, "cell_mean": 0.0, "gene_mean": 0.0}
    n = 0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            out = model(**batch)
        masked = batch["values"] == model.config.mask_value
        visible = (batch["attention_mask"] == 1) & ~masked
        visible[:, 0] = False
        truth = batch["labels"]
        cell_mean = (batch["values"] * visible).sum(1, keepdim=True) / visible.sum(1, keepdim=True).clamp(
            min=1
        )
        predictions = {
            "model_gep": out.expression.float(),
            "model_gepc": out.mvc_expression.float(),
            "cell_mean": cell_mean.expand_as(truth),
            "gene_mean": gene_means[batch["input_ids"]],
        }
        for key, prediction in predictions.items():
            totals[key] += float(((prediction - truth) ** 2)[masked].sum())
        n += int(masked.sum())
    model.train()
    return {key: value / n for key, value in totals.items()}


def train(
    pool_path: Path,
    out: Path,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    tiny: bool,
    workers: int = 0,
    shard: str = "1GB",
    time_budget_s: float | None = None,
) -> None:
    from scpeft_hf.data.collator import ScGPTDataCollator
    from scpeft_hf.models.scgpt import ScGPTConfig, ScGPTForMaskedExpressionModeling

    pool = dict(np.load(pool_path))
    vocab = json.loads(str(pool["vocab"]))
    settings = json.loads(str(pool["processor"]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    architecture = dict(
        ARCHITECTURE, **(dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64) if tiny else {})
    )
    architecture["max_seq_len"] = settings["max_length"]
    config = ScGPTConfig(
        vocab_size=len(vocab),
        pad_token_id=vocab["<pad>"],
        cls_token_id=vocab["<cls>"],
        architectures=["ScGPTForMaskedExpressionModeling"],
        **architecture,
    )
    model = ScGPTForMaskedExpressionModeling(config).to(device)
    held_out = pool["held_out"]
    train_rows, eval_rows = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    if tiny:
        train_rows, eval_rows = train_rows[:64], eval_rows[:32]
    collate = ScGPTDataCollator(
        pad_token_id=vocab["<pad>"], max_length=settings["max_length"], mlm_probability=0.4, seed=seed
    )
    eval_collate = ScGPTDataCollator(
        pad_token_id=vocab["<pad>"], max_length=settings["max_length"], mlm_probability=0.4, seed=seed + 1
    ).eval()
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        PoolCells(pool, train_rows),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=generator,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device == "cuda",
    )
    eval_loader = torch.utils.data.DataLoader(
        PoolCells(pool, eval_rows), batch_size=128, collate_fn=eval_collate
    )
    gene_means = torch.tensor(_gene_means(pool, train_rows, len(vocab)), dtype=torch.float32, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    plan = {"epochs": epochs}
    warmup = max(1, epochs * len(loader) // 20)

    def learning_rate_factor(step: int) -> float:
        """Linear warm-up, then cosine decay to 0 over the planned epochs (re-planned after epoch 1 to fit the
        time budget)."""
        progress = min(1.0, step / (plan["epochs"] * len(loader)))
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    history, best, started = [], None, time.perf_counter()
    epoch = 0
    while epoch < plan["epochs"]:
        epoch += 1
        losses = []
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        if epoch == 1 and time_budget_s:
            per_epoch = time.perf_counter() - started
            plan["epochs"] = max(2, min(epochs, int(time_budget_s / (per_epoch * 1.08))))
            print(
                f"epoch 1 took {per_epoch:.1f} s: {plan['epochs']} epochs fit {time_budget_s:.0f} s",
                flush=True,
            )
        if epoch % max(1, plan["epochs"] // 10) == 0 or epoch == plan["epochs"]:
            scores = evaluate(model, eval_loader, gene_means, device)
            history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), **scores})
            print(json.dumps(history[-1]), f"{time.perf_counter() - started:.0f} s", flush=True)
            if best is None or scores["model_gep"] < best["model_gep"]:
                best = history[-1]
                model.save_pretrained(out, max_shard_size=shard)
    seconds = time.perf_counter() - started
    metrics = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "CPU",
        "seconds": round(seconds, 1),
        "epochs": plan["epochs"],
        "batch_size": batch_size,
        "learning_rate": lr,
        "mask_probability": 0.4,
        "seed": seed,
        "train_cells": len(train_rows),
        "held_out_cells": len(eval_rows),
        "parameters": model.num_parameters(),
        "architecture": architecture,
        "best": best,
        "history": history,
    }
    (out / "pretraining_metrics.json").write_text(json.dumps(metrics, indent=1))
    print(
        f"done in {seconds:.0f} s; best held-out GEP MSE {best['model_gep']:.3f} (cell mean "
        f"{best['cell_mean']:.3f}, gene mean {best['gene_mean']:.3f})"
    )


def package(pool_path: Path, run: Path, out: Path) -> None:
    """The run's weights plus vocab, processor and the pool's cell list into the embedded asset folder."""
    from safetensors.torch import load_file, save_file

    from scpeft_hf.data import GeneVocab, ScGPTProcessor

    pool = np.load(pool_path)
    settings = json.loads(str(pool["processor"]))
    vocab = GeneVocab(json.loads(str(pool["vocab"])))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text((run / "config.json").read_text())
    weights = {}
    for shard in sorted(run.glob("model*.safetensors")):
        weights.update(load_file(shard))
    save_file(
        {k: v.float().contiguous() for k, v in weights.items()}, out / "model.safetensors", {"format": "pt"}
    )
    ScGPTProcessor(
        vocab, input_kind="auto", max_length=settings["max_length"], seed=settings["seed"]
    ).save_pretrained(out)
    metrics = json.loads((run / "pretraining_metrics.json").read_text())
    expressed = pool["expressed_in"]
    metrics["vocabulary"] = {
        "genes": int(len(vocab) - len(SPECIALS)),
        "pretrained_genes": int((expressed >= PRETRAINED_MIN_CELLS).sum()),
        "pretrained_min_cells": PRETRAINED_MIN_CELLS,
    }
    metrics["pool"] = {str(s): int((pool["source"] == i).sum()) for i, s in enumerate(pool["sources"])}
    (out / "pretraining_metrics.json").write_text(json.dumps(metrics, indent=1))
    pretrained = sorted(g for g, i in vocab.token_to_id.items() if expressed[i] >= PRETRAINED_MIN_CELLS)
    (out / "pretrained_genes.txt").write_text("\n".join(pretrained) + "\n")
    (out / "pretraining_cells.txt").write_text("\n".join(map(str, pool["cells"])) + "\n")
    print(f"packaged {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    steps = parser.add_subparsers(dest="step", required=True)
    p = steps.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-length", type=int, default=ARCHITECTURE["max_seq_len"])
    p.add_argument("--seed", type=int, default=0)
    t = steps.add_parser("train")
    t.add_argument("--pool", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--time-budget-s", type=float, default=None, help="fewer epochs if they would not fit")
    t.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    t.add_argument("--shard", default="1GB", help="max_shard_size of the saved weights")
    t.add_argument(
        "--tiny", action="store_true", help="a tiny model on 64 cells: checks the script end to end"
    )
    k = steps.add_parser("package")
    k.add_argument("--pool", type=Path, required=True)
    k.add_argument("--run", type=Path, required=True)
    k.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.out, args.max_length, args.seed)
    elif args.step == "train":
        train(
            args.pool,
            args.out,
            args.epochs,
            args.batch_size,
            args.lr,
            args.seed,
            args.tiny,
            args.workers,
            args.shard,
        )
    else:
        package(args.pool, args.run, args.out)


if __name__ == "__main__":
    main()
