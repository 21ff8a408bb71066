"""Full fine-tuning vs. scPEFT's methods at scGPT-human size: trainable parameters, file size, step time, memory.

Each method runs in a fresh Python process (so peak RSS belongs to that method alone) on a randomly initialised
scGPT-human (d 512, 12 layers, vocab 60,697) with a 10-class head, AdamW, batch 8 x 512 genes, no padding.
Writes `benchmarks/results/peft_vs_full.md` and `.json`.

    python benchmarks/peft_vs_full.py --device cpu --steps 3
    python benchmarks/peft_vs_full.py --device cuda --steps 20

By default every method runs twice, without and with activation checkpointing of the encoder layers.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the repository's scpeft_hf, also when another copy is installed

METHODS = ("full", "encoder_adapter", "token_adapter", "prefix_adapter", "lora")
LAYERED_METHODS = ("encoder_adapter", "prefix_adapter", "lora")  # the ones placed in encoder layers
PLACEMENTS = ("paper", "top", "all")
NUM_LABELS = 10


def placement_layers(placement: str | None, num_layers: int) -> list[int] | None:
    """Encoder layers of a placement: "paper" (None: the config default, the first half), "top" (the second
    half, where backpropagation stops at the lowest adapted layer), "all"."""
    if placement in (None, "paper"):
        return None
    if placement == "top":
        return list(range(num_layers // 2, num_layers))
    if placement == "all":
        return list(range(num_layers))
    raise ValueError(f"unknown placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")


def quartile_spread(values: list[float]) -> float:
    """Interquartile range (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    quartiles = statistics.quantiles(values, n=4)
    return quartiles[2] - quartiles[0]


def build_model(
    method: str,
    device: str,
    checkpointing: bool,
    attention_dropout: float | None = None,
    layers: list[int] | None = None,
    config_kwargs: dict | None = None,
):
    """A randomly initialised scGPT cell classifier with `method` attached (peft's model unless "full").

    `layers`: encoder layers that get the adapter, prefix or LoRA (None: the config's default, the first half).
    `config_kwargs`: ScGPTConfig fields other than scGPT-human's (e.g. smaller sizes for a quick check).
    """
    import torch
    from peft import get_peft_model

    from scpeft_hf import (
        EncoderAdapterConfig,
        PrefixAdapterConfig,
        ScGPTConfig,
        ScGPTForCellClassification,
        TokenAdapterConfig,
        scpeft_lora_config,
    )

    torch.manual_seed(0)
    config = ScGPTConfig(num_labels=NUM_LABELS, **(config_kwargs or {}))
    if attention_dropout is not None:
        config.attention_probs_dropout_prob = attention_dropout
    model = ScGPTForCellClassification(config).to(device)
    if checkpointing:
        # non-reentrant: frozen embeddings give the first layer an input without grad
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:  # transformers before the rename
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    peft_configs = {
        "encoder_adapter": lambda: EncoderAdapterConfig(layers_to_transform=layers),
        "token_adapter": TokenAdapterConfig,
        "prefix_adapter": lambda: PrefixAdapterConfig(layers_to_transform=layers),
        "lora": lambda: scpeft_lora_config(layers=layers, num_layers=config.num_hidden_layers),
    }
    if layers is not None and method in ("full", "token_adapter"):
        raise ValueError(f"{method} has no layer placement (layers={layers})")
    if method != "full":
        model = get_peft_model(model, peft_configs[method]())
    return model, config


def cell_batch(config, batch_size: int, seq_len: int, device: str, seed: int = 1) -> tuple[dict, object]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config.vocab_size - 3, (batch_size, seq_len), generator=generator)
    input_ids[:, 0] = config.cls_token_id
    values = torch.randint(1, config.n_bins, (batch_size, seq_len), generator=generator).float()
    values[:, 0] = 0
    batch = {
        "input_ids": input_ids.to(device),
        "values": values.to(device),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device),
    }
    labels = torch.randint(0, NUM_LABELS, (batch_size,), generator=generator).to(device)
    return batch, labels


def timed_steps(step, steps: int, warmup: int, device: str) -> tuple[list[float], list[float]]:
    """Call `step()` `warmup + steps` times; wall-clock and process-CPU seconds of the last `steps` calls."""
    import torch

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    wall_times, cpu_times = [], []
    for index in range(warmup + steps):
        synchronize()
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        step()
        synchronize()
        if index >= warmup:
            wall_times.append(time.perf_counter() - wall_start)
            cpu_times.append(time.process_time() - cpu_start)
    return wall_times, cpu_times


def backward_reach(model, batch: dict) -> str:
    """The encoder layers whose outputs need a gradient, i.e. how far down backpropagation runs."""
    import torch

    layers = next(
        m for name, m in model.named_modules() if name.endswith(("encoder.layer", "encoder.base_layer.layer"))
    )
    needs_grad = []
    handles = [
        layer.register_forward_hook(
            lambda module, args, output, i=i: needs_grad.append((i, output[0].requires_grad))
        )
        for i, layer in enumerate(layers)
    ]
    with torch.enable_grad():
        model(**batch)
    for handle in handles:
        handle.remove()
    embedding = model.get_input_embeddings().weight.requires_grad
    reached = [i for i, flag in needs_grad if flag]
    layer_span = f"layers {min(reached)}-{max(reached)}" if reached else "no layer"
    return f"{layer_span}{' + gene embedding' if embedding else ''}"


def worker(
    method: str,
    device: str,
    checkpointing: bool,
    steps: int,
    warmup: int,
    batch_size: int,
    seq_len: int,
    attention_dropout: float | None = None,
    placement: str | None = None,
):
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    layers = placement_layers(placement, 12)  # scGPT-human's 12 layers
    model, config = build_model(method, device, checkpointing, attention_dropout, layers=layers)
    model.train()
    total = sum(p.numel() for p in model.parameters())
    trainable_parameters = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in trainable_parameters)
    # the frozen original head that peft keeps next to the trained copy is not part of the model's size
    head_copy = sum(p.numel() for n, p in model.named_parameters() if "original_module" in n)
    optimizer = torch.optim.AdamW(trainable_parameters, lr=1e-4)
    batch, labels = cell_batch(config, batch_size, seq_len, device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()

    wall_times, cpu_times = timed_steps(step, steps, warmup, device)

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda_peak_mb = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    # measured after the peak, on a small batch: which layers backpropagation runs through
    reach = backward_reach(model, cell_batch(config, 1, 16, device)[0])
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
        file_bytes = (Path(directory) / weights).stat().st_size
    return {
        "method": method,
        "placement": placement,
        "checkpointing": checkpointing,
        "trainable_params": trainable,
        "model_params": total - head_copy,
        "trainable_percent": 100 * trainable / (total - head_copy),
        "file_bytes": file_bytes,
        "step_wall_s": wall_times,
        "step_cpu_s": cpu_times,
        "median_step_s": statistics.median(wall_times),
        "median_step_cpu_s": statistics.median(cpu_times),
        "iqr_step_s": quartile_spread(wall_times),
        "iqr_step_cpu_s": quartile_spread(cpu_times),
        "baseline_rss_mb": baseline_rss_mb,
        "peak_rss_mb": peak_rss_mb,
        "cuda_peak_mb": cuda_peak_mb,
        "backward_reaches": reach,
    }


def run_method(
    method: str, checkpointing: bool, args: argparse.Namespace, placement: str | None = None
) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--device",
        args.device,
        "--checkpointing",
        "on" if checkpointing else "off",
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
    ]
    if args.attention_dropout is not None:
        command += ["--attention-dropout", str(args.attention_dropout)]
    if placement is not None:
        command += ["--placement", placement]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_mb(row: dict, device: str) -> float:
    return row["cuda_peak_mb"] if device == "cuda" else row["peak_rss_mb"]


def method_label(row: dict) -> str:
    placement = row.get("placement")
    if row["method"] not in LAYERED_METHODS:
        return row["method"]
    layers = {None: "layers 0-5", "paper": "layers 0-5", "top": "layers 6-11", "all": "all layers"}[placement]
    return f"{row['method']} ({layers})"


def results_table(rows: list[dict], device: str) -> list[str]:
    full = next((row for row in rows if row["method"] == "full"), None)
    memory_label = "CUDA max allocated (MiB)" if device == "cuda" else "peak RSS (MiB)"
    cpu_columns = " median step CPU time (s) [IQR] |" if device == "cpu" else ""
    lines = [
        f"| method | trainable params | % of model | saved file | median step (s) [IQR] |{cpu_columns} {memory_label} | "
        "memory / full | step / full | backward reaches |",
        "|---|---:|---:|---:|---:|" + ("---:|" if device == "cpu" else "") + "---:|---:|---:|---|",
    ]
    for row in rows:
        memory = memory_mb(row, device)
        memory_ratio = f"{memory / memory_mb(full, device):.2f}" if full else "-"
        step_ratio = f"{row['median_step_s'] / full['median_step_s']:.2f}" if full else "-"
        cpu_cell = (
            f" {row['median_step_cpu_s']:.2f} [{row.get('iqr_step_cpu_s', 0):.2f}] |"
            if device == "cpu"
            else ""
        )
        lines.append(
            f"| {method_label(row)} | {row['trainable_params']:,} | {row['trainable_percent']:.2f}% | "
            f"{row['file_bytes'] / 2**20:.2f} MiB | {row['median_step_s']:.2f} [{row.get('iqr_step_s', 0):.2f}] |"
            f"{cpu_cell} {memory:,.0f} | "
            f"{memory_ratio} | {step_ratio} | {row['backward_reaches']} |"
        )
    return lines


def target_lines(rows: list[dict], full: dict | None, device: str, label: str) -> list[str]:
    if full is None:
        return []
    lines = []
    for row in rows:
        if row["method"] == "full":
            continue
        memory_ok = memory_mb(row, device) <= 0.5 * memory_mb(full, device)
        step_ratio = row["median_step_s"] / full["median_step_s"]
        cpu_ratio = row["median_step_cpu_s"] / full["median_step_cpu_s"]
        speed = f"{'yes' if step_ratio <= 0.6 else 'NO'} ({step_ratio:.2f}x)" + (
            f" (CPU time: {'yes' if cpu_ratio <= 0.6 else 'NO'}, {cpu_ratio:.2f}x)" if device == "cpu" else ""
        )
        lines.append(
            f"- {method_label(row)} ({label}): memory <= 0.5x full: {'yes' if memory_ok else 'NO'} "
            f"({memory_mb(row, device) / memory_mb(full, device):.2f}x); step <= 0.6x full: {speed}"
        )
    return lines


def write_report(rows: list[dict], args: argparse.Namespace, environment: dict) -> None:
    import torch

    settings = [False, True] if args.checkpointing == "both" else [args.checkpointing == "on"]
    lines = [
        "# Full fine-tuning vs. scPEFT methods at scGPT-human size",
        "",
        f"Command: `python benchmarks/peft_vs_full.py --device {args.device} --steps {args.steps} "
        f"--warmup {args.warmup} --checkpointing {args.checkpointing} --methods {','.join(args.methods)}"
        f" --placements {','.join(args.placements)}"
        + (f" --attention-dropout {args.attention_dropout}" if args.attention_dropout is not None else "")
        + (f" --tag {args.tag}" if args.tag else "")
        + "`",
        "",
        f"Setup: random scGPT-human weights (d 512, 12 layers, 8 heads, vocab 60,697), {NUM_LABELS}-class "
        f"`classifier` head, AdamW (lr 1e-4) on the trainable parameters, batch {args.batch_size} x {args.seq_len} "
        f"genes without padding, dropout 0.2 (attention dropout "
        f"{0.2 if args.attention_dropout is None else args.attention_dropout}), {args.warmup} warm-up step(s) "
        f"then {args.steps} timed step(s). "
        "Each method runs in a fresh process. Adapters use the config defaults (encoder: bottleneck 128 on "
        "layers 0-5; token: bottleneck 512 on the value embedding; prefix: 8 tokens on layers 0-5; LoRA: r 8, "
        "alpha 1 on query/value of layers 0-5); every method trains and saves the head. Placements other than "
        "the paper's put the encoder adapter, prefix and LoRA on layers 6-11 ('top') or on all 12 layers.",
        "",
        f"Environment: {environment['device']}, torch {torch.__version__}, {environment['threads']} threads, "
        f"Python {platform.python_version()}.",
    ]
    targets = []
    for checkpointing in settings:
        subset = [row for row in rows if row["checkpointing"] == checkpointing]
        full = next((row for row in subset if row["method"] == "full"), None)
        label = "activation checkpointing" if checkpointing else "no checkpointing"
        lines += ["", f"## {label.capitalize()}", "", *results_table(subset, args.device)]
        if args.device == "cpu" and full:
            extra_full = full["peak_rss_mb"] - full["baseline_rss_mb"]
            lines += [
                "",
                f"Peak RSS includes the process with torch, transformers and peft imported "
                f"({full['baseline_rss_mb']:,.0f} MiB before the model is built). Above that: "
                + "; ".join(
                    f"{method_label(row)} {row['peak_rss_mb'] - row['baseline_rss_mb']:,.0f} MiB "
                    f"({(row['peak_rss_mb'] - row['baseline_rss_mb']) / extra_full:.2f}x)"
                    for row in subset
                )
                + ".",
            ]
        targets += target_lines(subset, full, args.device, label)
    if targets:
        lines += [
            "",
            "## Targets (PEFT peak memory <= 0.5x full fine-tuning; PEFT step <= 0.6x full fine-tuning's)",
            "",
            *targets,
        ]
    lines += [
        "",
        "## Notes",
        "",
        "- Full fine-tuning keeps a gradient and two AdamW states for every weight, including the 31.1M-parameter "
        "gene embedding (its gradient is dense): 3 x 4 bytes x 50.8M = 580 MiB on top of the 194 MiB of weights. "
        "The PEFT methods keep those only for the adapter and the head.",
        "- What the PEFT methods cannot save: the frozen weights (194 MiB) and the activations of every layer "
        "that backpropagation runs through. Frozen weights only spare the inputs of frozen Linear layers; "
        "LayerNorm, activation-function and attention tensors are kept as in full fine-tuning. With attention "
        "dropout (0.2), CPU SDPA runs its math kernel, which keeps the [batch, heads, L, L] attention "
        "probabilities and dropout masks (64 MiB each per layer at 8 x 8 x 512 x 512); GPU SDPA's flash and "
        "memory-efficient kernels keep none. Activation checkpointing keeps only each layer's input and "
        "recomputes one layer at a time, which shifts the balance towards weights and optimiser states.",
        "- Peak RSS also counts memory that glibc's malloc keeps after tensors are freed: its mmap threshold "
        "grows to 32 MiB, so the many 8 MiB activation tensors come from the heap and are not returned. Run with "
        "`MALLOC_MMAP_THRESHOLD_=1048576` in the environment (the workers inherit it) to make RSS follow the "
        "live memory more closely, at some cost in speed.",
        "- Backpropagation stops by itself below the lowest module that needs a gradient: frozen embeddings get "
        "none, and frozen weights get no weight gradient. 'backward reaches' lists the encoder layers whose "
        "outputs need a gradient. scPEFT places every method at the bottom of the stack (adapters, prefix and "
        "LoRA on layers 0-5, the token adapter on the input embedding), so backpropagation still runs through all "
        "12 layers; the saving comes from skipping weight gradients and optimiser states, not from a shorter "
        "backward pass. Adapting the upper half instead (layers_to_transform=[6, ..., 11]) would stop "
        "backpropagation at layer 6 and roughly halve the backward pass, at the price of departing from the "
        "paper's placement; the token adapter has no such choice because it sits at the input.",
    ]
    if args.device == "cpu":
        lines.append(
            "- CPU timings come from a 2-core machine shared with other jobs: wall times are noisy. Process CPU "
            "time (summed over threads) is less sensitive to other load and is reported next to them. Methods run "
            "one after another, so when the load changes during a run, wall-time ratios between methods reflect "
            "the load; compare CPU times."
        )
    output_dir = REPO_ROOT / "benchmarks" / "results"
    output_dir.mkdir(parents=True, exist_ok=True)
    name = "peft_vs_full" + (f"_{args.tag}" if args.tag else "")
    (output_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    (output_dir / f"{name}.json").write_text(
        json.dumps(
            {"settings": {**vars(args), "from_json": None}, "environment": environment, "results": rows},
            indent=1,
        )
        + "\n"
    )


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument(
        "--methods",
        type=lambda text: [method.strip() for method in text.split(",")],
        default=list(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)}",
    )
    parser.add_argument(
        "--checkpointing",
        choices=["off", "on", "both"],
        default="both",
        help="activation checkpointing of the encoder layers (both: run every method without and with it)",
    )
    parser.add_argument(
        "--attention-dropout",
        type=float,
        default=None,
        help="override scGPT's attention dropout (0.2); 0 lets CPU SDPA use its flash kernel",
    )
    parser.add_argument(
        "--placements",
        type=lambda text: [placement.strip() for placement in text.split(",")],
        default=["paper"],
        help=f"comma-separated subset of {','.join(PLACEMENTS)}: where the encoder adapter, prefix and LoRA go "
        "(paper: layers 0-5; top: 6-11; all)",
    )
    parser.add_argument("--placement", choices=PLACEMENTS, help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help="suffix of the results files, e.g. 'attn-dropout-0'")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--from-json", type=Path, help="rewrite the Markdown report from a results JSON written earlier"
    )
    args = parser.parse_args()

    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        defaults = {
            "attention_dropout": None,
            "tag": "",
            "placements": ["paper"],
        }  # settings added after the first results
        saved_args = argparse.Namespace(**{**defaults, **saved["settings"], "from_json": None})
        write_report(saved["results"], saved_args, saved["environment"])
        return

    if args.worker:
        result = worker(
            args.worker,
            args.device,
            args.checkpointing == "on",
            args.steps,
            args.warmup,
            args.batch_size,
            args.seq_len,
            args.attention_dropout,
            args.placement,
        )
        print(json.dumps(result))
        return

    unknown = [method for method in args.methods if method not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {','.join(METHODS)}")
    if set(args.placements) - set(PLACEMENTS):
        parser.error(f"unknown placements {args.placements}; choose from {','.join(PLACEMENTS)}")
    import torch

    environment = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
    }
    if args.worker is None and args.checkpointing == "both":
        settings = [False, True]
    else:
        settings = [args.checkpointing == "on"]
    rows = []
    for checkpointing in settings:
        runs = [
            (name, placement)
            for name in args.methods
            for placement in (args.placements if name in LAYERED_METHODS else [None])
        ]
        for method, placement in runs:
            row = run_method(method, checkpointing, args, placement)
            print(
                f"{method_label(row)} (checkpointing {'on' if checkpointing else 'off'}): "
                f"{row['trainable_params']:,} trainable "
                f"({row['trainable_percent']:.2f}%), median step {row['median_step_s']:.2f} s "
                f"(CPU {row['median_step_cpu_s']:.2f} s), memory {memory_mb(row, args.device):,.0f} MiB",
                flush=True,
            )
            rows.append(row)
            write_report(rows, args, environment)  # after each method: a stopped run keeps what it measured


if __name__ == "__main__":
    main()
