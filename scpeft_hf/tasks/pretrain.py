"""Masked-expression pretraining (scGPT's GEP + GEPC objectives) of the embedded backbone `scpeft-hf/scgpt-offline-v1`.

The pretraining pool is every offline human raw-count cell from MIT/BSD registry packages (DESIGN.md §6) that no
benchmark evaluates on: pbmc3k, the HLCA lung query, CellTypist's sample and scMIDAS' PBMC RNA. pbmc68k_reduced
(its benchmark splits are evaluation data) and Baron pancreas (human and mouse) are kept out, so pancreas is a
tissue the backbone never saw. Three steps, so that the training step needs only torch and transformers (a GPU
machine without anndata or datasets): `prepare_pool` (vocabulary + tokenized arrays), `train_backbone` (weights
and held-out losses against mean predictors), `package_backbone` (the model folder with vocab, processor, card).
`pretrain_backbone` runs all three; `scripts/pretrain_backbone.py` runs them one by one.
"""

from __future__ import annotations

import json
import logging
import math
import string
import time
from pathlib import Path

import numpy as np
import torch

from .training_knobs import autocast, resolve_device, resolve_precision

logger = logging.getLogger(__name__)

PRETRAINING_CELLS = "pretraining_cells.txt"
PRETRAINED_GENES = "pretrained_genes.txt"
PRETRAINING_METRICS = "pretraining_metrics.json"
GENE_EMBEDDING = "scgpt.embeddings.gene_encoder.embedding.weight"
# How each dataset's coverage is reported in the card: name -> (loader, species)
COVERAGE_DATASETS = ("pbmc68k_reduced", "baron_human", "baron_mouse")


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


def prepare_pool(out: Path, max_length: int = 1024, seed: int = 0) -> None:
    """Tokenize the pool with a vocabulary of all its gene symbols into one compressed .npz."""
    from .. import datasets
    from ..data import GeneVocab, ScGPTProcessor

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
        logger.info("%s: %d cells, %d genes, %d held out", name, n, adata.n_vars, int(held.sum()))
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
    logger.info(
        "%d cells, vocabulary %d, %.1f MiB -> %s", len(cells), len(vocab), out.stat().st_size / 2**20, out
    )


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
def evaluate(
    model, loader, gene_means: torch.Tensor, device: torch.device, precision: str = "auto"
) -> dict[str, float]:
    """Masked-value MSE of the expression decoder on held-out cells, beside two mean predictors: each cell's mean
    visible value, and each gene's mean value in the training cells."""
    model.eval()
    totals = {"model_gep": 0.0, "model_gepc": 0.0, "cell_mean": 0.0, "gene_mean": 0.0}
    n = 0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(precision, device):
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


def train_backbone(
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
    precision: str = "auto",
    device: str = "auto",
) -> None:
    """Pretrain on the pool's training cells; keep the epoch with the lowest held-out GEP loss in `out`. `precision`
    and `device` as every command resolves them (auto: bf16 autocast on a CUDA GPU that supports it)."""
    from ..data.collator import ScGPTDataCollator
    from ..models.scgpt import ScGPTConfig, ScGPTForMaskedExpressionModeling

    pool = dict(np.load(pool_path))
    vocab = json.loads(str(pool["vocab"]))
    settings = json.loads(str(pool["processor"]))
    device = resolve_device(device)
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
        pin_memory=device.type == "cuda",
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
            with autocast(precision, device):
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
            logger.info("epoch 1 took %.1f s: %d epochs fit %.0f s", per_epoch, plan["epochs"], time_budget_s)
        if epoch % max(1, plan["epochs"] // 10) == 0 or epoch == plan["epochs"]:
            scores = evaluate(model, eval_loader, gene_means, device, precision)
            history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), **scores})
            logger.info("%s %.0f s", json.dumps(history[-1]), time.perf_counter() - started)
            if best is None or scores["model_gep"] < best["model_gep"]:
                best = history[-1]
                model.save_pretrained(out, max_shard_size=shard)
    seconds = time.perf_counter() - started
    metrics = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "precision": resolve_precision(precision, device),
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
    (out / PRETRAINING_METRICS).write_text(json.dumps(metrics, indent=1))
    logger.info(
        "done in %.0f s; best held-out GEP MSE %.3f (cell mean %.3f, gene mean %.3f)",
        seconds,
        best["model_gep"],
        best["cell_mean"],
        best["gene_mean"],
    )


def package_backbone(pool_path: Path, run: Path, out: Path) -> None:
    """The run's weights plus vocab, processor and the pool's cell list into the embedded asset folder."""
    from safetensors.torch import load_file, save_file

    from ..data import GeneVocab, ScGPTProcessor

    pool = np.load(pool_path)
    settings = json.loads(str(pool["processor"]))
    vocab = GeneVocab(json.loads(str(pool["vocab"])))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text((run / "config.json").read_text())
    weights = {}
    for shard in sorted(run.glob("model*.safetensors")):
        weights.update(load_file(shard))
    # The gene embedding (50k x d) is stored in float16 so the embedded file stays under 20 MB; the rounding is
    # ~1e-4 and from_pretrained loads it as float32 (config dtype). Every other tensor stays float32.
    stored = {k: (v.half() if k == GENE_EMBEDDING else v.float()).contiguous() for k, v in weights.items()}
    save_file(stored, out / "model.safetensors", {"format": "pt"})
    ScGPTProcessor(
        vocab, input_kind="auto", max_length=settings["max_length"], seed=settings["seed"]
    ).save_pretrained(out)
    metrics = json.loads((run / PRETRAINING_METRICS).read_text())
    expressed = pool["expressed_in"]
    metrics["vocabulary"] = {
        "genes": int(len(vocab) - len(SPECIALS)),
        "pretrained_genes": int((expressed >= PRETRAINED_MIN_CELLS).sum()),
        "pretrained_min_cells": PRETRAINED_MIN_CELLS,
    }
    metrics["pool"] = {str(s): int((pool["source"] == i).sum()) for i, s in enumerate(pool["sources"])}
    (out / PRETRAINING_METRICS).write_text(json.dumps(metrics, indent=1))
    pretrained = sorted(g for g, i in vocab.token_to_id.items() if expressed[i] >= PRETRAINED_MIN_CELLS)
    (out / PRETRAINED_GENES).write_text("\n".join(pretrained) + "\n")
    (out / PRETRAINING_CELLS).write_text("\n".join(map(str, pool["cells"])) + "\n")
    metrics["coverage"] = coverage_table(vocab, set(pretrained))
    (out / PRETRAINING_METRICS).write_text(json.dumps(metrics, indent=1))
    (out / "README.md").write_text(render_backbone_card(metrics))


def coverage_table(vocab, pretrained: set[str]) -> list[dict]:
    """Per evaluation dataset: its expressed genes (and counts) in the vocabulary and among pretrained genes.
    Mouse symbols are matched case-insensitively, as `GeneVocab.match` does without a species."""
    from .. import datasets

    loaders = {
        "pbmc68k_reduced": datasets.pbmc68k_reduced,
        "baron_human": lambda: datasets.baron_pancreas("human"),
        "baron_mouse": lambda: datasets.baron_pancreas("mouse"),
    }
    in_vocab = {gene.upper() for gene in vocab.token_to_id}
    seen = {gene.upper() for gene in pretrained}
    rows = []
    for name in COVERAGE_DATASETS:
        adata = loaders[name]()
        genes = np.asarray([gene.upper() for gene in adata.var_names])
        counts = np.asarray(adata.X.sum(0)).ravel()
        expressed = counts > 0
        genes, counts = genes[expressed], counts[expressed]
        vocab_mask = np.isin(genes, list(in_vocab))
        seen_mask = np.isin(genes, list(seen))
        rows.append(
            {
                "dataset": name,
                "expressed_genes": int(expressed.sum()),
                "in_vocabulary": float(vocab_mask.mean()),
                "pretrained": float(seen_mask.mean()),
                "counts_in_vocabulary": float(counts[vocab_mask].sum() / counts.sum()),
                "counts_on_pretrained": float(counts[seen_mask].sum() / counts.sum()),
            }
        )
    return rows


def render_backbone_card(metrics: dict) -> str:
    """The backbone folder's README.md from `model_cards/offline_backbone.md` and the pretraining metrics."""
    from .card import TEMPLATES

    best = metrics["best"]
    pool = "\n".join(f"| {name} | {cells:,} |" for name, cells in metrics["pool"].items())
    coverage = "\n".join(
        f"| {row['dataset']} | {row['expressed_genes']:,} | {100 * row['in_vocabulary']:.1f}% | "
        f"{100 * row['pretrained']:.1f}% | {100 * row['counts_in_vocabulary']:.1f}% | "
        f"{100 * row['counts_on_pretrained']:.1f}% |"
        for row in metrics["coverage"]
    )
    history = "\n".join(
        f"| {h['epoch']} | {h['train_loss']:.2f} | {h['model_gep']:.2f} | {h['model_gepc']:.2f} |"
        for h in metrics["history"]
    )
    return string.Template((TEMPLATES / "offline_backbone.md").read_text()).substitute(
        parameters=f"{metrics['parameters']:,}",
        cells=f"{sum(metrics['pool'].values()):,}",
        pool=pool,
        genes=f"{metrics['vocabulary']['genes']:,}",
        pretrained_genes=f"{metrics['vocabulary']['pretrained_genes']:,}",
        min_cells=metrics["vocabulary"]["pretrained_min_cells"],
        coverage=coverage,
        architecture=json.dumps(metrics["architecture"]),
        epochs=metrics["epochs"],
        best_epoch=best["epoch"],
        batch_size=metrics["batch_size"],
        learning_rate=metrics["learning_rate"],
        device=metrics["device"],
        seconds=f"{metrics['seconds']:.0f}",
        held_out=metrics["held_out_cells"],
        gep=f"{best['model_gep']:.2f}",
        gepc=f"{best['model_gepc']:.2f}",
        gene_mean=f"{best['gene_mean']:.2f}",
        cell_mean=f"{best['cell_mean']:.2f}",
        history=history,
    )


def pretrain_backbone(
    out_dir: str | Path,
    epochs: int = 40,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    time_budget_s: float | None = None,
    overwrite: bool = False,
    precision: str = "auto",
    device: str = "auto",
) -> Path:
    """Prepare the pool, pretrain and package a backbone folder like `scpeft_hf/assets/scgpt-offline-v1`."""
    resolve_precision(precision, device)  # bad flags fail before the pool is built
    import shutil

    from ..output_folders import check_out_dir, make_staging_dir, publish

    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    staging = make_staging_dir(out_dir)
    try:
        work = staging / ".work"
        work.mkdir()
        prepare_pool(work / "pool.npz", seed=seed)
        train_backbone(
            work / "pool.npz",
            work / "run",
            epochs,
            batch_size,
            learning_rate,
            seed,
            False,
            time_budget_s=time_budget_s,
            precision=precision,
            device=device,
        )
        package_backbone(work / "pool.npz", work / "run", staging)
        shutil.rmtree(work)
        publish(staging, out_dir, command="pretrain")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
