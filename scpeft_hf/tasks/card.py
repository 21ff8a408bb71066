"""Model cards for trained adapters, rendered from the templates in the repository's `model_cards/` folder."""

from __future__ import annotations

import json
import string
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .backbones import DEMO_BACKBONE_NAME, is_hub_repo_id

TEMPLATES = Path(__file__).resolve().parents[1] / "model_cards"  # a link to the repository's model_cards/
METHOD_NAMES = {
    "encoder": "scPEFT encoder adapter",
    "token": "scPEFT token adapter",
    "prefix": "scPEFT prefix adapter",
    "lora": "LoRA adapter (scPEFT setting)",
    "probe": "linear-probe head (frozen backbone)",
    "full": "fully fine-tuned model",
}


def render_adapter_card(folder: str | Path, adapter_ref: str | None = None, license: str = "mit") -> str:
    """Render the card of a trained folder from its `run_info.json`, `metrics.json` and processor config.

    `adapter_ref` is what the card tells readers to load: the local folder, or the Hub id it is pushed to.
    """
    folder = Path(folder)
    info = json.loads((folder / "run_info.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    labels = info["label_names"]
    tags = ["single-cell", "scpeft", "scpeft-hf", info["model_type"], info["method"], "cell-type-annotation"]
    metadata = ModelCardData(
        library_name="peft",
        base_model=hub_model_id(info["base_model"]),
        license=license,
        tags=tags,
        pipeline_tag="other",
        base_model_fingerprint=info["base_model_fingerprint"],
    )
    values = {
        "metadata": metadata.to_yaml().rstrip("\n"),
        "title": f"{METHOD_NAMES[info['method']]} for {info['model_type']}: {info['label_key']}",
        "method_name": METHOD_NAMES[info["method"]],
        "model_type": info["model_type"],
        "base_model": describe_base(info["base_model"]),
        "base_note": base_note(info["base_model"], info.get("base_model_revision")),
        "transformers_load": transformers_load(info, adapter_ref or str(folder)),
        "fingerprint": info["base_model_fingerprint"],
        "adapter_ref": adapter_ref or str(folder),
        "trainable_params": f"{metrics['trainable_params']:,}",
        "total_params": f"{metrics['total_params']:,}",
        "trainable_percent": f"{100 * metrics['trainable_params'] / metrics['total_params']:.2f}%",
        "preprocessing": info["preprocessing"],
        "num_labels": len(labels),
        "label_key": info["label_key"],
        "labels": ", ".join(f"`{name}`" for name in labels),
        "n_train": info["n_cells"]["train"],
        "n_validation": info["n_cells"]["validation"],
        "n_test": info["n_cells"]["test"],
        "train_seconds": f"{metrics['train_seconds']:.1f}",
        "split_note": split_note(info),
        "results_table": results_table(metrics),
        **{key: info["training"][key] for key in ("epochs", "learning_rate", "batch_size", "seed")},
    }
    template = string.Template((TEMPLATES / "adapter.md").read_text())
    return template.substitute(values)


RESULT_METRICS = {
    "accuracy": "test_accuracy",
    "macro-F1": "test_macro_f1",
    "balanced accuracy": "test_balanced_accuracy",
}


def results_table(metrics: dict) -> str:
    """Test metrics of the model beside the logistic-regression baseline of the same split (`metrics["baseline"]`)."""
    baseline = metrics.get("baseline")
    lines = ["| metric | this model | logistic regression |", "|---|---|---|"]
    for name, key in RESULT_METRICS.items():
        if baseline is None:
            reference = "not computed (`--no-baseline`)"
        else:
            reference = f"{baseline[key]:.4f}" if key in baseline else baseline.get("status", "n/a")
        lines.append(f"| {name} | {metrics[key]:.4f} | {reference} |")
    if baseline is not None:
        lines.append(f"\nBaseline input: {baseline['features']}; C={baseline['C']:g}, max_iter {baseline['max_iter']}, "
                     f"class weights {baseline['class_weight']}.")  # fmt: skip
    return "\n".join(lines)


def split_note(info: dict) -> str:
    """How the test cells were chosen, when not by the default stratified split."""
    notes = []
    if info.get("test_groups"):
        ((key, values),) = info["test_groups"].items()
        notes.append(f", every cell of {key} {', '.join(values)} held out")
    if info.get("dropped_classes"):
        notes.append("; classes dropped before splitting for having too few cells: "
                     + ", ".join(f"{name} ({count})" for name, count in info["dropped_classes"].items()))  # fmt: skip
    return "".join(notes)


def hub_model_id(base_model: str) -> str | None:
    """`base_model` as the Hub's card metadata expects it (a model id such as `owner/name`), or None for a local
    folder and for the embedded backbone, which is not published on the Hub."""
    if base_model == DEMO_BACKBONE_NAME or Path(base_model).exists() or not is_hub_repo_id(base_model):
        return None
    return base_model


def describe_base(base_model: str) -> str:
    if base_model == DEMO_BACKBONE_NAME:
        return f"`{base_model}`, the demonstration backbone embedded in scpeft-hf"
    if hub_model_id(base_model):
        return f"[`{base_model}`](https://huggingface.co/{base_model})"
    return f"`{Path(base_model).name}` (a local folder at training time: `{base_model}`)"


def base_note(base_model: str, revision: str | None = None) -> str:
    """Where the base model comes from when the adapter is loaded."""
    if base_model == DEMO_BACKBONE_NAME:
        return "The base model ships inside scpeft-hf: nothing else to download."
    if hub_model_id(base_model):
        at = f" at commit `{revision}`" if revision else ""
        return (
            f"The base model is not stored here: loading downloads `{base_model}`{at} from the Hub (recorded in "
            "`adapter_config.json` as `base_model_name_or_path` and `revision`); its weights are checked against "
            "the fingerprint above."
        )
    name = Path(base_model).name
    return (
        f"The base model is not stored here: it is read from `{base_model}`; where your copy is elsewhere, pass "
        f'`base="path/to/{name}"` (`--base` on the command line); its weights are checked against the '
        "fingerprint above."
    )


def transformers_load(info: dict, adapter_ref: str) -> str:
    """The three-line load with transformers and peft alone, for an scGPT adapter on a Hub base: the label count
    must be known before the base is built, so it comes from the label names saved with the adapter."""
    base_model = hub_model_id(info["base_model"])
    on_hub = hub_model_id(adapter_ref) is not None  # the card of a pushed adapter, not of a local folder
    if base_model is None or not on_hub or info["model_type"] != "scgpt" or info.get("task") == "integration":
        return ""
    revision = info.get("base_model_revision")
    return f"""
With transformers and peft alone (after `import scpeft_hf`, which registers scGPT, its processor and the scPEFT
tuners; `AutoProcessor` and `AutoModelForSequenceClassification` from transformers, `PeftModel` from peft), the
processor comes first: it holds the label names, and the label count must be known before the base is built:

```python
processor = AutoProcessor.from_pretrained("{adapter_ref}")  # label names, gene vocabulary, binning
base = AutoModelForSequenceClassification.from_pretrained("{base_model}", revision={revision!r}, num_labels=len(processor.label_names), id2label=dict(enumerate(processor.label_names)))
model = PeftModel.from_pretrained(base, "{adapter_ref}")
```

`processor(adata)` then tokenizes cells for `model`.
"""


def read_card_metadata(folder: str | Path) -> dict:
    """The YAML metadata of a folder's README.md (empty when there is no card)."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return {}
    return ModelCard.load(path).data.to_dict()
