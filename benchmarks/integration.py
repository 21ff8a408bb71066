"""Batch integration on Baron human pancreas (2,142 cells, 4 donors): `scpeft-hf integrate` per method, the scIB
table of every embedding (scpeft, zero_shot, pca, harmony if installed) and the wall time of each run.

Training runs on the GPU when there is one; scIB metrics are computed on the CPU either way. The backbone decides
whether the numbers mean anything: pass the backbone under test with --base.

    python benchmarks/integration.py --base path/to/backbone                 # encoder, lora, full; 15 epochs
    python benchmarks/integration.py --methods encoder --epochs 4 --max-length 256
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def run_method(method: str, data: Path, workdir: Path, args: argparse.Namespace) -> dict:
    out = workdir / method
    command = [
        sys.executable, "-m", "scpeft_hf.cli", "integrate", "--data", str(data), "--batch-key", "donor",
        "--label-key", "cell_type", "--method", method, "--epochs", str(args.epochs), "--out", str(out),
    ]  # fmt: skip
    if args.base:
        command += ["--base", args.base]
    if args.max_length:
        command += ["--max-length", str(args.max_length)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    return {
        "method": method,
        "wall_seconds": seconds,
        "metrics": json.loads((out / "metrics.json").read_text()),
    }


def markdown(results: list[dict], args: argparse.Namespace, device: str) -> str:
    from scpeft_hf.tasks.integration_report import metrics_table

    lines = [
        "# Batch integration: Baron human pancreas (4 donors)",
        "",
        f"`python benchmarks/integration.py {' '.join(sys.argv[1:])}` on {device} ({platform.processor() or 'CPU'}),"
        f" {args.epochs} epochs, base `{args.base or 'embedded demo backbone'}`. scIB metrics from "
        f"{results[0]['metrics']['metrics_library']}, computed on the CPU.",
    ]
    for result in results:
        lines += [
            "",
            f"## {result['method']}: {result['wall_seconds']:.0f} s wall time (training "
            f"{result['metrics']['train_seconds']:.0f} s, scIB {result['metrics']['scib_seconds']:.0f} s)",
            "",
            metrics_table(result["metrics"]),
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default=None, help="backbone folder (default: the embedded demo backbone)")
    parser.add_argument("--methods", nargs="+", default=["encoder", "lora", "full"])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--max-length", type=int, default=None)
    args = parser.parse_args()

    import torch

    from scpeft_hf.datasets import baron_pancreas

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = workdir / "baron_human.h5ad"
        baron_pancreas("human").write_h5ad(data)
        results = [run_method(method, data, workdir, args) for method in args.methods]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "integration.json").write_text(json.dumps({"device": device, "results": results}, indent=2))
    (RESULTS / "integration.md").write_text(markdown(results, args, device))
    print(markdown(results, args, device))


if __name__ == "__main__":
    main()
