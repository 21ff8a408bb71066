# Device command (repo root; results come back in $OUT, copy them to benchmarks/results/): python benchmarks/gpu_vs_official.py --official-wheel .official/scpeft-0.1.2-py3-none-any.whl --loralib-wheel .official/loralib-0.1.2-py3-none-any.whl --time-budget-s 180 --out "$OUT"
"""Our scGPT + peft tuners beside the official scPEFT 0.1.2 model code, in one process on one device.

For every method (full, encoder, token, prefix, lora), ours and official, at scGPT-human size (d 512, 12 layers,
8 heads, vocab 60,697), bf16 autocast, batch 16 x 1,200 genes without padding, AdamW on the trainable
parameters: median step time (with IQR), peak memory, trainable parameters. Then the backbone forward's TFLOP/s at
batch 32 x 1,200 (full and half padded), ours with recommended settings (adapters on the top half of the layers,
activation checkpointing), and, if time is left, the forward under torch.compile.

Measurements run in priority order and stop at `--time-budget-s` (an alarm interrupts the one running); results
are written after each one to benchmarks/results/gpu_vs_official.{json,md} (or --out). Needs torch,
transformers, peft and this repository only: not anndata, datasets or scanpy.

The official code is read from its wheel (`pip download --no-deps scpeft==0.1.2`): scpeft/model/*.py are loaded
by file path, nothing in them is replaced. Its LoRA needs loralib (`pip download --no-deps loralib==0.1.2`);
without it the official code silently builds attention without LoRA, so the official LoRA row is skipped.
Never commit either wheel.

    python benchmarks/gpu_vs_official.py --tiny --device cpu --official-wheel PATH   # minutes-free check on CPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import signal
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.peft_vs_full import NUM_LABELS, build_model, cell_batch, cpu_name, timed_steps  # noqa: E402
from tests.official_scgpt import load_source_module  # noqa: E402

METHODS = ("full", "encoder_adapter", "token_adapter", "prefix_adapter", "lora")
HUMAN = {
    "vocab_size": 60697,
    "hidden_size": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "intermediate_size": 512,
    "pad_token_id": 60694,
    "cls_token_id": 60695,
}
TINY = {
    "vocab_size": 1000,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "pad_token_id": 997,
    "cls_token_id": 998,
}


NOTES = [
    "- The official model always runs and, in full fine-tuning, trains its expression decoder (`decoder`, "
    "ExprDecoder: 2 x (d x d + d) + d + 1 weights) next to `cls_decoder`, even when only the classification "
    "output is used; ours has no expression decoder in the classifier.",
    "- Official LoRA trains the whole fused QKV bias of the adapted layers (scPEFT freezes with loralib's "
    "`bias='lora_only'`): 3 x d more trainable weights per layer than ours, which trains no base bias.",
    "- Official PEFT layers are scPEFT's own `PeftTransformerEncoderLayer` (LoRA through its copy of "
    "`nn.MultiheadAttention`); official full fine-tuning uses `nn.TransformerEncoder`. Ours: one layer class, "
    "attention through `F.scaled_dot_product_attention`, adapters attached by peft.",
]


class BudgetExceeded(Exception):
    pass


# ---------------------------------------------------------------------------------------------- official code


def load_official(wheel: Path, loralib_wheel: Path | None, folder: Path):
    """scPEFT 0.1.2's `scpeft/model/model.py` (with its sibling files) from the wheel, and loralib if given."""
    with zipfile.ZipFile(wheel) as archive:
        members = [
            name for name in archive.namelist() if name.startswith("scpeft/model/") and name.endswith(".py")
        ]
        archive.extractall(folder, members)
    if loralib_wheel is not None:
        sys.path.insert(0, str(loralib_wheel))  # a pure-Python wheel imports from the zip
        import loralib  # noqa: F401
    return load_source_module("_official_scpeft", folder / "scpeft", "model/model.py")


def official_peft_config(method: str, num_layers: int) -> dict:
    """The dict the official `PeftConfig(use_default_settings=True, peft_type=...).to_dict()` returns."""
    first_half = [index < num_layers // 2 for index in range(num_layers)]
    if method == "full":
        return {
            "peft_type": False,
            "ENCODER_FLAG": False,
            "TOKEN_FLAG": False,
            "PREFIX_FLAG": False,
            "LoRA_FLAG": False,
        }
    if method == "encoder_adapter":
        return {
            "peft_type": "ENCODER",
            "mlp_ratio": 0.25,
            "skip_connect": True,
            "adapter_layer_conf": first_half,
            "ENCODER_FLAG": True,
        }
    if method == "token_adapter":
        return {"peft_type": "TOKEN", "TOKEN_FLAG": True, "mlp_ratio": 1}
    if method == "prefix_adapter":
        return {"peft_type": "PREFIX", "PREFIX_FLAG": True, "adapter_layer_conf": first_half, "token_nums": 8}
    return {"peft_type": "LORA", "r": 8, "LoRA_FLAG": True, "lora_alpha": 1, "adapter_layer_conf": first_half}


def build_official(module, method: str, sizes: dict, device: str):
    """The official annotation model (scGPT's fine-tuning settings) frozen as scPEFT's Identification task does:
    LoRA weights (and, as loralib's bias='lora_only', the adapted QKV bias), adapter weights and `cls_decoder`."""
    torch.manual_seed(0)
    model = module.TransformerModel(
        ntoken=sizes["vocab_size"],
        d_model=sizes["hidden_size"],
        nhead=sizes["num_attention_heads"],
        d_hid=sizes["intermediate_size"],
        nlayers=sizes["num_hidden_layers"],
        nlayers_cls=3,
        n_cls=NUM_LABELS,
        vocab={"<pad>": sizes["pad_token_id"]},
        dropout=0.2,
        pad_token="<pad>",
        pad_value=-2,
        do_mvc=False,
        do_dab=False,
        use_batch_labels=False,
        domain_spec_batchnorm=False,
        input_emb_style="continuous",
        n_input_bins=51,
        cell_emb_style="cls",
        explicit_zero_prob=False,
        use_fast_transformer=False,
        pre_norm=False,
        peft_config=official_peft_config(method, sizes["num_hidden_layers"]),
    )
    names = [name for name, _ in model.named_parameters()]
    if method == "lora" and not any("lora_" in name for name in names):
        raise RuntimeError(
            "the official model has no LoRA weights: loralib is missing (pass --loralib-wheel)"
        )
    if method != "full":
        if method == "lora":
            import loralib

            loralib.mark_only_lora_as_trainable(model, bias="lora_only")
        else:
            model.requires_grad_(False)
        for name, parameter in model.named_parameters():
            if "lora" in name or "adapter" in name or name.startswith("cls_decoder."):
                parameter.requires_grad_(True)
    return model.to(device)


# ---------------------------------------------------------------------------------------------- measurements


def summary(seconds: list[float]) -> dict:
    quartiles = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [seconds[0]] * 3
    return {
        "median_ms": 1000 * statistics.median(seconds),
        "iqr_ms": 1000 * (quartiles[2] - quartiles[0]),
        "steps": len(seconds),
    }


def mib(value: int) -> float:
    return value / 2**20


def training_step_run(args, code: str, method: str, layers=None, checkpointing=False) -> dict:
    device, sizes = args.device, args.sizes
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if code == "ours":
        model, config = build_model(method, device, checkpointing, layers=layers, config_kwargs=sizes)
    else:
        model, config = build_official(args.official, method, sizes, device), build_model_config(sizes)
    model.train()
    weights_mib = mib(torch.cuda.memory_allocated()) if device == "cuda" else None
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    batch, labels = cell_batch(config, args.batch_size, args.seq_len, device)

    def forward_loss():
        with autocast:
            if code == "ours":
                return model(**batch, labels=labels).loss
            output = model(batch["input_ids"], batch["values"], ~batch["attention_mask"].bool(), CLS=True)
            return F.cross_entropy(output["cls_output"], labels)

    def step():
        optimizer.zero_grad(set_to_none=True)
        forward_loss().backward()
        optimizer.step()

    wall, _ = timed_steps(step, args.steps, args.warmup, device)
    row = {
        "code": code,
        "method": method,
        "layers": layers,
        "checkpointing": checkpointing,
        "trainable_params": sum(parameter.numel() for parameter in trainable),
        **summary(wall),
    }
    if device == "cuda":  # weights; + gradients and AdamW states between steps; peak within a step
        row.update(
            weights_mib=weights_mib,
            after_step_mib=mib(torch.cuda.memory_allocated()),
            peak_mib=mib(torch.cuda.max_memory_allocated()),
            peak_reserved_mib=mib(torch.cuda.max_memory_reserved()),
        )
    optimizer.zero_grad(set_to_none=True)  # after the peak was read: one more forward, without gradients held
    row["saved_for_backward_mib"], row["saved_tensors"] = saved_for_backward(forward_loss)
    return row


def saved_for_backward(forward_loss) -> tuple[float, int]:
    """MiB and count of the distinct storages autograd keeps for the backward pass of one forward (activations
    and autocast's low-precision weight copies): where activation memory goes, measured on any device."""
    storages: dict[tuple, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[(storage.data_ptr(), tensor.device)] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = forward_loss()
    del loss
    return mib(sum(storages.values())), len(storages)


def build_model_config(sizes: dict):
    from scpeft_hf.models.scgpt import ScGPTConfig

    return ScGPTConfig(num_labels=NUM_LABELS, **sizes)


def forward_flops(real_lengths: list[int], sizes: dict) -> float:
    """Backbone forward FLOPs on real tokens (2 per multiply-add): value-encoder Linear(d, d), and per layer the
    Q/K/V/output projections, the feed-forward block and attention scores and mixing over the real tokens."""
    d, d_hid, layers = sizes["hidden_size"], sizes["intermediate_size"], sizes["num_hidden_layers"]
    per_token = 2 * d * d + 2 * d + layers * (8 * d * d + 4 * d * d_hid)
    return sum(n * per_token + layers * 4 * n * n * d for n in real_lengths)


def forward_run(args, code: str, padded: bool, compiled: bool = False) -> dict:
    device, sizes, batch_size, length = args.device, args.sizes, args.forward_batch, args.seq_len
    config = build_model_config(sizes)
    batch, _ = cell_batch(config, batch_size, length, device)
    keep = batch["attention_mask"]
    if padded:  # half of the cells carry only half of their genes: 25% of the positions are padding
        keep[batch_size // 2 :, length // 2 :] = 0
        batch["input_ids"][keep == 0] = config.pad_token_id
        batch["values"][keep == 0] = config.pad_value
    if code == "ours":
        from scpeft_hf.models.scgpt import ScGPTModel

        torch.manual_seed(0)
        model = ScGPTModel(config).to(device).eval()
        if compiled:
            model = torch.compile(model)

        def forward():
            return model(**batch)
    else:
        full = build_official(args.official, "full", sizes, device).eval()

        def forward():
            return full._encode(batch["input_ids"], batch["values"], ~keep.bool())

    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
        wall, _ = timed_steps(forward, args.steps, max(args.warmup, 2 if compiled else 1), device)
    flops = forward_flops(keep.sum(1).tolist(), sizes)
    row = {
        "code": code,
        "padded": padded,
        "compiled": compiled,
        "real_tokens": int(keep.sum()),
        "gflop": flops / 1e9,
        **summary(wall),
    }
    row["tflops"] = flops / (row["median_ms"] / 1000) / 1e12
    return row


def matmul_peak(args) -> dict:
    """bf16 matmul throughput of this device (8192^3, or 512^3 in --tiny): the ceiling the forward is held to."""
    n = 512 if args.tiny else 8192
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    a, b = (torch.randn(n, n, device=args.device, dtype=dtype) for _ in range(2))
    wall, _ = timed_steps(lambda: a @ b, 10, 3, args.device)
    return {
        "n": n,
        "median_ms": 1000 * statistics.median(wall),
        "tflops": 2 * n**3 / statistics.median(wall) / 1e12,
    }


# ---------------------------------------------------------------------------------------------- plan and report


def plan(args) -> list[tuple[str, str, callable]]:
    """(section, label, measurement) in priority order: the side-by-side table first."""
    top_half = list(range(args.sizes["num_hidden_layers"] // 2, args.sizes["num_hidden_layers"]))
    tasks = [("device", "bf16 matmul peak", lambda: matmul_peak(args))]
    for method in METHODS:
        tasks.append(("side_by_side", f"ours {method}", lambda m=method: training_step_run(args, "ours", m)))
        if args.official is not None and (method != "lora" or args.loralib_wheel is not None):
            tasks.append(
                (
                    "side_by_side",
                    f"official {method}",
                    lambda m=method: training_step_run(args, "official", m),
                )
            )
    for padded in (False, True):
        tasks.append(
            ("forward", f"ours forward padded={padded}", lambda p=padded: forward_run(args, "ours", p))
        )
        if args.official is not None:
            tasks.append(
                (
                    "forward",
                    f"official forward padded={padded}",
                    lambda p=padded: forward_run(args, "official", p),
                )
            )
    variants = [
        ("encoder_adapter", top_half, False),
        ("encoder_adapter", None, True),
        ("encoder_adapter", top_half, True),
        ("lora", top_half, False),
        ("lora", top_half, True),
        ("prefix_adapter", top_half, False),
        ("prefix_adapter", top_half, True),
        ("token_adapter", None, True),
        ("full", None, True),
    ]
    for method, layers, checkpointing in variants:
        label = f"ours {method} layers={'top half' if layers else 'default'} checkpointing={checkpointing}"
        tasks.append(
            (
                "recommended",
                label,
                lambda m=method, where=layers, c=checkpointing: training_step_run(
                    args, "ours", m, layers=where, checkpointing=c
                ),
            )
        )
    if args.compile:
        tasks.append(
            ("forward", "ours forward torch.compile", lambda: forward_run(args, "ours", False, compiled=True))
        )
    return tasks


def row_label(row: dict) -> str:
    layers = row.get("layers")
    if layers is not None:
        placement = f" on layers {layers[0]}-{layers[-1]}"
    else:
        placement = " (first half)" if row["method"] in ("encoder_adapter", "prefix_adapter", "lora") else ""
    return f"{row['method']}{placement}{' + checkpointing' if row.get('checkpointing') else ''}"


def fmt(value, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def write_report(results: dict, args, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_vs_official.json").write_text(json.dumps(results, indent=1) + "\n")
    side = results["side_by_side"]
    ours = {row["method"]: row for row in side if row["code"] == "ours"}
    official = {row["method"]: row for row in side if row["code"] == "official"}
    sizes = args.sizes
    lines = [
        f"# Ours vs. official scPEFT 0.1.2 on {results['device']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"torch {torch.__version__}; {'bf16 autocast' if args.dtype == 'bf16' else 'fp32'}; random weights at "
        f"d {sizes['hidden_size']}, {sizes['num_hidden_layers']} layers, {sizes['num_attention_heads']} heads, vocab "
        f"{sizes['vocab_size']:,}; {NUM_LABELS}-class head; AdamW (lr 1e-4) on the trainable parameters; batch "
        f"{args.batch_size} x {args.seq_len} genes without padding; {args.warmup} warm-up + {args.steps} timed steps "
        "(median, IQR). Memory: `torch.cuda.max_memory_allocated` from before the model is built (weights, "
        "gradients, AdamW states, activations); 'after step' is what stays allocated between steps; 'saved for "
        "backward' sums the distinct storages autograd keeps from one forward (activations and autocast's bf16 "
        "weight copies). Official: the "
        "wheel's `TransformerModel` with `PeftConfig(use_default_settings=True)`'s settings and scPEFT's "
        "Identification freezing; ours: the config defaults (same placement: first half of the layers).",
        f"Run stopped early: {results['stopped']}" if results.get("stopped") else "",
        "",
        "## Training step, same settings",
        "",
        "| method | official step (ms) | ours step (ms) | ours / official | official peak MiB | ours peak MiB | "
        "official after step MiB | ours after step MiB | official saved for backward MiB | ours saved for backward "
        "MiB | official trainable | ours trainable |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method in METHODS:
        mine, theirs = ours.get(method, {}), official.get(method, {})
        ratio = mine["median_ms"] / theirs["median_ms"] if mine and theirs else None
        lines.append(
            f"| {method} | {fmt(theirs.get('median_ms'), '.1f')} ± {fmt(theirs.get('iqr_ms'), '.1f')} | "
            f"{fmt(mine.get('median_ms'), '.1f')} ± {fmt(mine.get('iqr_ms'), '.1f')} | {fmt(ratio, '.2f')} | "
            f"{fmt(theirs.get('peak_mib'))} | {fmt(mine.get('peak_mib'))} | {fmt(theirs.get('after_step_mib'))} | "
            f"{fmt(mine.get('after_step_mib'))} | {fmt(theirs.get('saved_for_backward_mib'))} | "
            f"{fmt(mine.get('saved_for_backward_mib'))} | {fmt(theirs.get('trainable_params'))} | "
            f"{fmt(mine.get('trainable_params'))} |"
        )
    full = ours.get("full")
    lines += [
        "",
        "## Ours, recommended settings",
        "",
        "| setting | step (ms) | peak MiB | peak / our full | step / official same method | trainable |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in [*ours.values(), *results["recommended"]]:
        if row["method"] == "full" and not row["checkpointing"]:
            continue
        reference = official.get(row["method"])
        memory_ratio = row["peak_mib"] / full["peak_mib"] if full and row.get("peak_mib") else None
        step_ratio = row["median_ms"] / reference["median_ms"] if reference else None
        lines.append(
            f"| {row_label(row)} | {row['median_ms']:.1f} ± {row['iqr_ms']:.1f} | {fmt(row.get('peak_mib'))} | "
            f"{fmt(memory_ratio, '.2f')} | {fmt(step_ratio, '.2f')} | {row['trainable_params']:,} |"
        )
    peak = results.get("device_peak", {})
    lines += [
        "",
        f"## Backbone forward, batch {args.forward_batch} x {args.seq_len}",
        "",
        f"Reference: a {peak.get('n', '-')}^3 matmul in this run reaches {fmt(peak.get('tflops'), '.0f')} "
        "TFLOP/s. FLOPs count real (non-padding) tokens only: value-encoder Linear, Q/K/V/output projections, "
        "feed-forward, and attention scores and mixing. Half padded: half of the cells have half of their "
        "genes (25% of positions are padding).",
        "",
        "| code | padding | compiled | real tokens | GFLOP | forward (ms) | TFLOP/s | % of matmul peak |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["forward"]:
        share = 100 * row["tflops"] / peak["tflops"] if peak.get("tflops") else None
        lines.append(
            f"| {row['code']} | {'half' if row['padded'] else 'none'} | {'yes' if row['compiled'] else 'no'} | "
            f"{row['real_tokens']:,} | {row['gflop']:,.0f} | {row['median_ms']:.2f} ± {row['iqr_ms']:.2f} | "
            f"{row['tflops']:.1f} | {fmt(share, '.0f')} |"
        )
    lines += ["", "## Notes", "", *NOTES]
    if results["skipped"]:
        lines += ["", "## Not measured", "", *[f"- {item}" for item in results["skipped"]]]
    (out / "gpu_vs_official.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--official-wheel", type=Path, help="scpeft-0.1.2-py3-none-any.whl; omit to measure ours only"
    )
    parser.add_argument(
        "--loralib-wheel", type=Path, help="loralib-0.1.2-py3-none-any.whl (the official LoRA needs it)"
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"]
    )
    parser.add_argument(
        "--time-budget-s", type=float, default=200.0, help="stop measuring after this many seconds"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--forward-batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=1200)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument(
        "--no-compile", dest="compile", action="store_false", help="skip the torch.compile forward"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny model and batches: checks the script on CPU"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    started = time.monotonic()
    args.sizes = TINY if args.tiny else HUMAN
    if args.tiny:
        args.batch_size, args.forward_batch, args.seq_len = 4, 4, 32
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 1)
    for wheel in (args.official_wheel, args.loralib_wheel):
        if wheel is not None and not wheel.is_file():
            parser.error(f"{wheel} does not exist; download it with `pip download --no-deps` (see --help)")
    shown = [part for index, part in enumerate(sys.argv[1:]) if "--out" not in sys.argv[index : index + 2]]
    command = "python benchmarks/gpu_vs_official.py " + " ".join(
        Path(part).name if part.endswith(".whl") else part for part in shown
    )
    results = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else cpu_name(),
        "command": command,
        "settings": {key: str(value) for key, value in vars(args).items()},
        "side_by_side": [],
        "recommended": [],
        "forward": [],
        "device_peak": {},
        "skipped": [],
        "stopped": None,
    }
    if args.official_wheel is None:
        results["skipped"].append("official code: no --official-wheel")
    elif args.loralib_wheel is None:
        results["skipped"].append("official lora: no --loralib-wheel")

    def out_of_time(signum, frame):
        raise BudgetExceeded

    signal.signal(signal.SIGALRM, out_of_time)
    with tempfile.TemporaryDirectory() as folder:
        args.official = None
        if args.official_wheel is not None:
            args.official = load_official(args.official_wheel, args.loralib_wheel, Path(folder))
        tasks = plan(args)
        for index, (section, label, measure) in enumerate(tasks):
            left = args.time_budget_s - (time.monotonic() - started)
            if left < 1:
                results["stopped"] = f"time budget {args.time_budget_s:.0f} s spent before '{label}'"
                results["skipped"] += [f"{name} (time budget)" for _, name, _ in tasks[index:]]
                break
            signal.setitimer(signal.ITIMER_REAL, left)
            try:
                row = measure()
            except BudgetExceeded:
                results["stopped"] = f"time budget {args.time_budget_s:.0f} s ran out during '{label}'"
                results["skipped"] += [f"{name} (time budget)" for _, name, _ in tasks[index:]]
                break
            except (
                RuntimeError,
                torch.OutOfMemoryError,
            ) as error:  # one failed measurement leaves the others
                results["skipped"].append(f"{label}: {type(error).__name__}: {str(error).splitlines()[0]}")
                row = None
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                gc.collect()
                if args.device == "cuda":
                    torch.cuda.empty_cache()
            if row is not None:
                if section == "device":
                    results["device_peak"] = row
                else:
                    results[section].append(row)
                print(f"[{time.monotonic() - started:6.1f} s] {label}: {json.dumps(row)}", flush=True)
            write_report(results, args, args.out)
    results["elapsed_s"] = time.monotonic() - started
    write_report(results, args, args.out)
    print((args.out / "gpu_vs_official.md").read_text())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
