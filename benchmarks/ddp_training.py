"""Wall time of `scpeft-hf train` in one process vs `torchrun --nproc_per_node N` (DDP; gloo on CPU, nccl on GPU).

Both runs train the same method on the demo data (pbmc68k_reduced, its fixed demo split) with the same
per-process batch size, so N processes take 1/N of the optimizer steps per epoch (Trainer's convention:
`--batch-size` is per device). Early stopping is off (patience = epochs) so both run every epoch. On CPU each
process gets `cores // N` intra-op threads, so the comparison spends the same cores either way.

    python benchmarks/ddp_training.py                       # encoder adapter, 5 epochs, 2 processes
    python benchmarks/ddp_training.py --method lora --epochs 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def train_command(processes: int, data: Path, out: Path, args: argparse.Namespace) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [
        *launcher, "-m", "scpeft_hf.cli", "train", "--data", str(data), "--label-key", "bulk_labels",
        "--split-key", "demo_split", "--method", args.method, "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--patience", str(args.epochs), "--out", str(out),
    ]  # fmt: skip


def run(processes: int, data: Path, workdir: Path, args: argparse.Namespace) -> dict:
    import torch

    out = workdir / f"{args.method}-{processes}"
    threads = max(1, (os.cpu_count() or 1) // processes) if not torch.cuda.is_available() else 1
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    started = time.perf_counter()
    subprocess.run(train_command(processes, data, out, args), env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    run_info = json.loads((out / "run_info.json").read_text())
    return {
        "processes": processes,
        "world_size": run_info["training"]["world_size"],
        "threads_per_process": threads,
        "wall_seconds": round(wall, 1),
        "train_seconds": round(metrics["train_seconds"], 1),
        "test_macro_f1": round(metrics["test_macro_f1"], 4),
        "test_accuracy": round(metrics["test_accuracy"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", default="encoder")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "ddp_training")
    args = parser.parse_args()

    import torch

    from scpeft_hf.demo import demo_data

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = workdir / "pbmc.h5ad"
        demo_data().write_h5ad(data)
        rows = [run(1, data, workdir, args), run(args.processes, data, workdir, args)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    result = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "method": args.method,
        "epochs": args.epochs,
        "batch_size_per_process": args.batch_size,
        "runs": rows,
        "speedup": round(rows[0]["wall_seconds"] / rows[1]["wall_seconds"], 2),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# `scpeft-hf train` in 1 vs {args.processes} processes ({device})",
        "",
        f"Method `{args.method}`, {args.epochs} epochs, batch {args.batch_size} per process, demo data "
        "(pbmc68k_reduced, 700 cells). Wall time includes start-up, tokenization and test evaluation.",
        "",
        "| processes | threads each | wall s | train s | test macro-F1 | test accuracy |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['processes']} | {r['threads_per_process']} | {r['wall_seconds']} | {r['train_seconds']} | "
            f"{r['test_macro_f1']} | {r['test_accuracy']} |"
            for r in rows
        ),
        "",
        f"Speed-up: {result['speedup']}x.",
    ]
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
