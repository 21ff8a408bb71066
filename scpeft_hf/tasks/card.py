"""Model cards for trained adapters, rendered from the templates in the repository's `model_cards/` folder."""

from __future__ import annotations

import json
import string
from pathlib import Path

from huggingface_hub import ModelCard

TEMPLATES = Path(__file__).resolve().parents[2] / "model_cards"
METHOD_NAMES = {
    "encoder": "scPEFT encoder adapter",
    "token": "scPEFT token adapter",
    "prefix": "scPEFT prefix adapter",
    "lora": "LoRA adapter (scPEFT setting)",
    "probe": "linear-probe head (frozen backbone)",
    "full": "fully fine-tuned model",
}


def render_adapter_card(folder: str | Path, adapter_ref: str | None = None, license: str = "mit") -> str:
    """Render the card of a trained folder from its `run_info.json`, `metrics.json` and processor config."""
    folder = Path(folder)
    info = json.loads((folder / "run_info.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    labels = info["label_names"]
    values = {
        "title": f"{METHOD_NAMES[info['method']]} for {info['model_type']}: {info['label_key']}",
        "method": info["method"],
        "method_name": METHOD_NAMES[info["method"]],
        "model_type": info["model_type"],
        "base_model": info["base_model"],
        "base_name": Path(info["base_model"]).name,
        "fingerprint": info["base_model_fingerprint"],
        "adapter_ref": adapter_ref or str(folder),
        "license": license,
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
        **{
            key: f"{metrics[key]:.4f}" for key in ("test_accuracy", "test_macro_f1", "test_balanced_accuracy")
        },
        **{key: info["training"][key] for key in ("epochs", "learning_rate", "batch_size", "seed")},
    }
    template = string.Template((TEMPLATES / "adapter.md").read_text())
    return template.substitute(values)


def read_card_metadata(folder: str | Path) -> dict:
    """The YAML metadata of a folder's README.md (empty when there is no card)."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return {}
    return ModelCard.load(path).data.to_dict()
