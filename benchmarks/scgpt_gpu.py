"""scGPT port on a GPU: parity with the official model in fp32, SDPA vs eager, bf16 error, and throughput.

    python benchmarks/scgpt_gpu.py [--device cuda] [--out benchmarks/results]

Needs the official scGPT 0.2.4 sources (`pip install --no-deps scgpt==0.2.4`). Writes scgpt_gpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scpeft_hf.models.scgpt import (  # noqa: E402
    ScGPTConfig,
    ScGPTForMaskedExpressionModeling,
    ScGPTModel,
    convert_scgpt_checkpoint,  # noqa: E402
)
from tests.test_scgpt_convert import (  # noqa: E402
    SMALL_ARGS,
    cell_batch,
    official_model,
    small_vocab,
    write_official_folder,
)


def parity(device: str) -> dict:
    vocab = small_vocab()
    reference = official_model(SMALL_ARGS, vocab).eval()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        convert_scgpt_checkpoint(
            write_official_folder(folder / "o", reference, SMALL_ARGS, vocab), folder / "hf"
        )
        ours = ScGPTForMaskedExpressionModeling.from_pretrained(folder / "hf").to(device).eval()
    reference.to(device)
    ids, values, padding = (t.to(device) for t in cell_batch(vocab))
    real = ~padding
    with torch.no_grad():
        expected = reference(ids, values, padding, MVC=True)
        tokens = reference._encode(ids, values, padding)
        results = {}
        for implementation in ("sdpa", "eager"):
            ours.config._attn_implementation = implementation
            got = ours(input_ids=ids, values=values, attention_mask=real.long())
            results[implementation] = {
                "tokens": (got.last_hidden_state[real] - tokens[real]).abs().max().item(),
                "cell_embedding": (got.cell_embedding - expected["cell_emb"]).abs().max().item(),
                "expression": (got.expression[real] - expected["mlm_output"][real]).abs().max().item(),
                "mvc": (got.mvc_expression - expected["mvc_output"]).abs().max().item(),
            }
    return results


def human_size(device: str, batch: int, length: int) -> dict:
    torch.manual_seed(0)
    model = ScGPTModel(ScGPTConfig()).to(device).eval()
    ids = torch.randint(0, 60694, (batch, length), device=device)
    values = torch.randint(0, 51, (batch, length), device=device).float()
    mask = torch.ones(batch, length, dtype=torch.long, device=device)
    mask[batch // 2 :, length // 2 :] = 0
    out = {"parameters": model.num_parameters()}
    with torch.no_grad():
        model.config._attn_implementation = "sdpa"
        fp32 = model(ids, values, mask).cell_embedding
        with torch.autocast(device, dtype=torch.bfloat16):
            bf16 = model(ids, values, mask).cell_embedding.float()
        out["bf16_vs_fp32_cell_embedding_max_abs"] = (bf16 - fp32).abs().max().item()
        out["bf16_vs_fp32_cosine_min"] = torch.nn.functional.cosine_similarity(bf16, fp32).min().item()
        for implementation in ("sdpa", "eager"):
            model.config._attn_implementation = implementation
            with torch.autocast(device, dtype=torch.bfloat16):
                for _ in range(3):
                    model(ids, values, mask)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                started = time.perf_counter()
                for _ in range(10):
                    model(ids, values, mask)
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - started) / 10
            out[f"{implementation}_bf16_forward_ms"] = 1000 * seconds
            out[f"{implementation}_bf16_cells_per_s"] = batch / seconds
            out[f"{implementation}_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=1200)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
        "torch": torch.__version__,
        "parity_fp32_max_abs": parity(args.device),
        "scgpt_human_size": human_size(args.device, args.batch, args.length),
        "batch": args.batch,
        "length": args.length,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scgpt_gpu.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# scGPT port on {result['device']} (torch {result['torch']})",
        "",
        "## Parity with official (fp32)",
        "",
    ]
    lines += ["| attention | tokens | cell embedding | expression | MVC |", "|---|---|---|---|---|"]
    for name, diffs in result["parity_fp32_max_abs"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{diffs[k]:.2e}" for k in ("tokens", "cell_embedding", "expression", "mvc"))
            + " |"
        )
    lines += [
        "",
        f"## scGPT-human size, batch {args.batch} x {args.length} genes (half padded), bf16 autocast",
        "",
    ]
    lines += [
        f"- {key}: {value:.4g}" if isinstance(value, float) else f"- {key}: {value:,}"
        for key, value in result["scgpt_human_size"].items()
    ]
    (out / "scgpt_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
