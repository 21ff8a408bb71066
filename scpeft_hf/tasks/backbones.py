"""Which backbone a task runs on, and the matching processor and collator."""

from __future__ import annotations

from pathlib import Path

from ..data import ScGPTDataCollator, ScGPTProcessor

DEMO_BACKBONE = Path(__file__).resolve().parents[1] / "assets" / "scgpt-demo"


def resolve_base(base: str | Path | None) -> Path:
    """A base model folder: `base` itself, or the embedded demo backbone when None."""
    folder = Path(base) if base is not None else DEMO_BACKBONE
    if not (folder / "config.json").is_file():
        hint = (
            "the embedded demo backbone is missing from this installation; reinstall scpeft-hf"
            if base is None
            else "pass a folder written by `scpeft-hf convert` or save_pretrained()"
        )
        raise FileNotFoundError(f"{folder} has no config.json: {hint}")
    return folder


def load_processor(folder: str | Path, **overrides) -> ScGPTProcessor:
    """The processor saved in `folder` (or derived from its model files); None-valued overrides are ignored."""
    return ScGPTProcessor.from_pretrained(folder, **{k: v for k, v in overrides.items() if v is not None})


def make_collator(processor: ScGPTProcessor, train: bool, **kwargs) -> ScGPTDataCollator:
    return ScGPTDataCollator.from_processor(processor, training=train, **kwargs)


def describe_preprocessing(processor: ScGPTProcessor) -> str:
    """One sentence a model card can show."""
    settings = processor.to_dict()
    steps = [f"input `{settings['input_kind']}`"]
    if settings.get("normalize_total"):
        steps.append(f"normalize_total to {settings['normalize_total']:g}")
    if settings.get("log1p"):
        steps.append("log1p")
    if settings.get("hvg_genes"):
        steps.append(f"{len(settings['hvg_genes'])} highly variable genes")
    steps.append(f"{settings['n_bins']} per-cell quantile bins ({settings['ties']} ties)")
    steps.append(f"at most {settings['max_length']} genes per cell incl. `<cls>`")
    return ", ".join(steps) + "."
