"""Tokenization throughput and memory: ScGPTProcessor in memory and streaming from .h5ad, vs the official path.

Synthetic counts (cells x genes CSR, ~`density` non-zero, negative-binomial values with gene-specific means)
are written to .h5ad files; each measurement then runs in a fresh subprocess whose peak RSS is read from
`os.wait4`. The official scGPT 0.2.4 path (its `Preprocessor`: normalise, log1p, per-cell `binning`; then
`tokenize_and_pad_batch`), loaded from the installed wheel by file path, runs on the first
`--official-cells` cells, and ours runs on the same cells too, so the speed ratio comes from one run.

    python benchmarks/tokenization.py                 # 100,000 x 20,000 (writes ~3.5 GB of temporary files)
    python benchmarks/tokenization.py --cells 20000   # smaller
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def synthetic_counts(n_cells: int, n_genes: int, density: float, seed: int):
    """CSR counts: per cell, genes drawn with geometric gaps (~`density` of them), values 1 + NB(1, gene mean)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    gene_mean = rng.lognormal(0.0, 1.2, n_genes)
    indptr, indices, data = [np.zeros(1, dtype=np.int64)], [], []
    for start in range(0, n_cells, 2000):
        block = min(2000, n_cells - start)
        genes = np.cumsum(rng.geometric(density, size=(block, int(n_genes * density * 1.5))), axis=1) - 1
        inside = genes < n_genes
        columns = genes[inside]
        indices.append(columns.astype(np.int32))
        data.append((1 + rng.negative_binomial(1, 1 / (1 + gene_mean[columns]))).astype(np.float32))
        indptr.append(indptr[-1][-1] + np.cumsum(inside.sum(axis=1)))
    return sp.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), np.concatenate(indptr)), shape=(n_cells, n_genes)
    )


def gene_names(n_genes: int) -> list[str]:
    return [f"GENE{index:05d}" for index in range(n_genes)]


def processor(n_genes: int, chunk_size: int):
    from scpeft_hf.data import GeneVocab, ScGPTProcessor

    token_to_id = {gene: index for index, gene in enumerate(gene_names(n_genes))}
    token_to_id.update({"<pad>": n_genes, "<cls>": n_genes + 1, "<eoc>": n_genes + 2})
    return ScGPTProcessor(GeneVocab(token_to_id), chunk_size=chunk_size)


def official_modules() -> types.SimpleNamespace:
    """scgpt 0.2.4's preprocess.py and tokenizer/gene_tokenizer.py, loaded by path (`import scgpt` fails)."""
    root = Path(importlib.metadata.distribution("scgpt").locate_file("scgpt"))
    stand_in = types.ModuleType("scgpt")  # preprocess.py imports `logger` from the package
    stand_in.logger = logging.getLogger("official_scgpt")
    torchtext_vocab = types.ModuleType("torchtext.vocab")  # the tokenizer subclasses torchtext's Vocab
    torchtext_vocab.Vocab = type("Vocab", (), {})
    package = types.ModuleType("_official_scgpt")
    package.__path__, package.logger = [str(root)], stand_in.logger
    tokenizer_package = types.ModuleType("_official_scgpt.tokenizer")
    tokenizer_package.__path__ = [str(root / "tokenizer")]
    sys.modules.update(
        {
            "scgpt": stand_in,
            "torchtext": types.SimpleNamespace(vocab=torchtext_vocab),
            "torchtext.vocab": torchtext_vocab,
            "_official_scgpt": package,
            "_official_scgpt.tokenizer": tokenizer_package,
        }
    )
    modules = {}
    for name, relative in (("preprocess", "preprocess.py"), ("tokenizer", "tokenizer/gene_tokenizer.py")):
        module_name = "_official_scgpt." + relative[:-3].replace("/", ".")
        spec = importlib.util.spec_from_file_location(module_name, root / relative)
        modules[name] = sys.modules[module_name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    return types.SimpleNamespace(**modules)


# -- stages, each run in its own process --------------------------------------------------------------------


def stage_generate(args) -> dict:
    import anndata
    import pandas as pd

    counts = synthetic_counts(args.cells, args.genes, args.density, args.seed)
    var = pd.DataFrame(index=gene_names(args.genes))
    anndata.AnnData(counts, var=var).write_h5ad(args.file)
    small = max(args.cells // 10, 1)
    anndata.AnnData(counts[:small], var=var).write_h5ad(args.small_file)
    return {"nnz_per_cell": counts.nnz / args.cells, "max_count": float(counts.data.max())}


def stage_memory(args) -> dict:
    import anndata

    adata = anndata.read_h5ad(args.file)
    if args.limit:
        adata = adata[: args.limit].copy()
    tokenizer = processor(args.genes, args.chunk_size)
    loaded_rss = _current_rss_mb()
    start = time.perf_counter()
    dataset = tokenizer(adata)
    seconds = time.perf_counter() - start
    tokens = int(dataset.data.column("length").to_numpy().sum())
    return {"cells": adata.n_obs, "seconds": seconds, "tokens": tokens, "rss_loaded_mb": loaded_rss}


def stage_stream(args) -> dict:
    tokenizer = processor(args.genes, args.chunk_size)
    start = time.perf_counter()
    dataset = tokenizer.tokenize_h5ad(args.file, cache_dir=args.cache_dir)
    seconds = time.perf_counter() - start
    return {"cells": len(dataset), "seconds": seconds}


def stage_official(args) -> dict:
    import anndata

    official = official_modules()
    adata = anndata.read_h5ad(args.file, backed="r")[: args.limit].to_memory()
    gene_ids = np.arange(args.genes)
    vocab = {"<pad>": args.genes, "<cls>": args.genes + 1}
    longest = int(np.diff(adata.X.indptr).max()) + 1
    preprocessor = official.preprocess.Preprocessor(use_key="X", normalize_total=1e4, log1p=True, binning=51)
    official.preprocess.logger.setLevel(logging.ERROR)
    start = time.perf_counter()
    preprocessor(adata)
    # max_len = longest cell: full sequences, as our Dataset keeps them (no subsampling cost here).
    official.tokenizer.tokenize_and_pad_batch(
        adata.layers["X_binned"], gene_ids, max_len=longest, vocab=vocab, pad_token="<pad>", pad_value=-2
    )
    seconds = time.perf_counter() - start
    return {"cells": adata.n_obs, "seconds": seconds}


def _current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


STAGES = {
    "generate": stage_generate,
    "memory": stage_memory,
    "stream": stage_stream,
    "official": stage_official,
}


def run_stage(name: str, args, **overrides) -> dict:
    """Run one stage in a fresh interpreter; returns its JSON result plus its peak RSS (MB)."""
    settings = {**vars(args), **overrides, "stage": name}
    command = [sys.executable, __file__]
    for key, value in settings.items():
        if value is not None and key != "keep_files":
            command += [f"--{key.replace('_', '-')}", str(value)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"stage {name} failed with exit code {process.returncode}")
    result = json.loads(output.decode().strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    print(f"{name}: {result}", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument(
        "--official-cells", type=int, default=2_000, help="cells run through the official path"
    )
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="for the .h5ad and cache files (default: temp)"
    )
    parser.add_argument("--keep-files", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--small-file", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(STAGES[args.stage](args)))
        return

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="scpeft-tokenize-"))
    workdir.mkdir(parents=True, exist_ok=True)
    files = {"file": str(workdir / "cells.h5ad"), "small_file": str(workdir / "cells_small.h5ad")}
    try:
        generated = run_stage("generate", args, **files)
        official = run_stage("official", args, file=files["file"], limit=args.official_cells)
        ours_same_cells = run_stage("memory", args, file=files["file"], limit=args.official_cells)
        in_memory = run_stage("memory", args, file=files["file"])
        streaming = run_stage("stream", args, file=files["file"], cache_dir=str(workdir / "cache"))
        streaming_small = run_stage(
            "stream", args, file=files["small_file"], cache_dir=str(workdir / "cache_small")
        )
    finally:
        if not args.keep_files:
            shutil.rmtree(workdir, ignore_errors=True)
    write_results(args, generated, official, ours_same_cells, in_memory, streaming, streaming_small)


def write_results(args, generated, official, ours_same_cells, in_memory, streaming, streaming_small) -> None:
    def speed(result: dict) -> float:
        return result["cells"] / result["seconds"]

    results = {
        "settings": {
            "cells": args.cells,
            "genes": args.genes,
            "density": args.density,
            "official_cells": args.official_cells,
            "chunk_size": args.chunk_size,
            "nnz_per_cell": round(generated["nnz_per_cell"], 1),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
        },
        "official_cells_per_s": speed(official),
        "ours_same_cells_per_s": speed(ours_same_cells),
        "in_memory_cells_per_s": speed(in_memory),
        "streaming_cells_per_s": speed(streaming),
        "speedup_in_memory_vs_official": speed(in_memory) / speed(official),
        "speedup_same_cells": speed(ours_same_cells) / speed(official),
        "streaming_speedup_vs_official": speed(streaming) / speed(official),
        "in_memory_peak_rss_mb": in_memory["peak_rss_mb"],
        "in_memory_rss_after_loading_mb": in_memory["rss_loaded_mb"],
        "streaming_peak_rss_mb": streaming["peak_rss_mb"],
        "streaming_small_cells": streaming_small["cells"],
        "streaming_small_peak_rss_mb": streaming_small["peak_rss_mb"],
        "official_peak_rss_mb": official["peak_rss_mb"],
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "tokenization.json").write_text(json.dumps(results, indent=2) + "\n")
    settings = results["settings"]
    lines = [
        "# Tokenization benchmark (`benchmarks/tokenization.py`)",
        "",
        f"Synthetic counts: {settings['cells']:,} cells x {settings['genes']:,} genes, "
        f"{settings['nnz_per_cell']:,} non-zero genes per cell (~{100 * settings['density']:.0f}%), "
        f"negative-binomial values; scGPT settings (normalize_total 1e4, log1p, 51 bins, deterministic ties); "
        f"chunks of {settings['chunk_size']} cells. Machine: {results['machine']['cpus']} CPUs (shared; load "
        f"average {results['machine']['load_average'][0]:.1f} at the end). Each row ran in a fresh process.",
        "",
        "| path | cells | cells/s | peak RSS |",
        "|---|---:|---:|---:|",
        f"| official scGPT 0.2.4 (Preprocessor per-cell binning + tokenize_and_pad_batch) | {official['cells']:,} "
        f"| {speed(official):,.0f} | {official['peak_rss_mb']:,.0f} MB |",
        f"| ours, in memory, same cells | {ours_same_cells['cells']:,} | {speed(ours_same_cells):,.0f} "
        f"| {ours_same_cells['peak_rss_mb']:,.0f} MB |",
        f"| ours, in memory | {in_memory['cells']:,} | {speed(in_memory):,.0f} | {in_memory['peak_rss_mb']:,.0f} MB "
        f"({in_memory['rss_loaded_mb']:,.0f} MB once the AnnData is loaded) |",
        f"| ours, streaming from .h5ad to an Arrow cache | {streaming['cells']:,} | {speed(streaming):,.0f} "
        f"| {streaming['peak_rss_mb']:,.0f} MB |",
        f"| ours, streaming, a tenth of the cells | {streaming_small['cells']:,} | {speed(streaming_small):,.0f} "
        f"| {streaming_small['peak_rss_mb']:,.0f} MB |",
        "",
        f"Speed-up over the official path: **{results['speedup_in_memory_vs_official']:.1f}x** in memory, "
        f"{results['streaming_speedup_vs_official']:.1f}x streaming (reading and writing files included), "
        f"{results['speedup_same_cells']:.1f}x on the same {official['cells']:,} cells. Target: >= 10x.",
        f"Streaming peak RSS: {streaming['peak_rss_mb']:,.0f} MB for {streaming['cells']:,} cells and "
        f"{streaming_small['peak_rss_mb']:,.0f} MB for {streaming_small['cells']:,} (target: < 2 GB, independent "
        f"of the number of cells). The in-memory figure includes the loaded matrix and the Arrow table.",
        "",
        "The official path's `max_len` is the longest cell, so it pads but never subsamples (our Dataset keeps "
        "full sequences; the collator subsamples per batch). Timings exclude reading the .h5ad, except streaming.",
        "",
    ]
    (args.results_dir / "tokenization.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
