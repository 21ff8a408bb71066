"""Convert an official scGPT checkpoint folder (`best_model.pt`, `args.json`, `vocab.json`) to a Hugging Face
folder (`config.json`, `model.safetensors`, `vocab.json`).

The official state dict is loaded with `torch.load(weights_only=True)`, so no pickled code runs. Attention
weights come in two layouts: flash-attn's fused `self_attn.Wqkv.*` and PyTorch's `self_attn.in_proj_*`; both
hold [q; k; v] stacked along the output axis and are split into our `query`/`key`/`value` projections.
The output folder carries a model card (`README.md`) with the architecture, the source checkpoint, the vocabulary
size, the licence and the parity figure (see `parity.py`), ready for `--push-to-hub`.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import string
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import ModelCardData

from ...errors import InvalidInputError, MissingFileError
from ...output_folders import check_out_dir, make_staging_dir, publish
from .configuration_scgpt import ScGPTConfig
from .modeling_scgpt import ScGPTForCellClassification
from .modeling_scgpt_integration import ScGPTForBatchIntegration
from .modeling_scgpt_pretraining import ScGPTForMaskedExpressionModeling
from .parity import Parity, measure_parity

CHECKPOINT_FILE = "best_model.pt"
ARGS_FILE = "args.json"
VOCAB_FILE = "vocab.json"
CARD_FILE = "README.md"
CARD_TEMPLATE = Path(__file__).resolve().parents[2] / "model_cards" / "scgpt_base.md"

# Official module prefixes that our classes do not have (pretraining-only, or the plain-batchnorm variant).
_UNUSED_PREFIXES = (
    "flag_encoder.",
    "bn.",
    "sim.",
)
# Batch-integration modules (use_batch_labels, domain_spec_batchnorm, do_dab): official prefix -> ours.
_BATCH_RENAMES = {
    "batch_encoder.": "batch_encoder.",
    "dsbn.": "scgpt.dsbn.",
    "grad_reverse_discriminator._decoder.": "batch_discriminator.layers.",
    "grad_reverse_discriminator.out_layer.": "batch_discriminator.out_layer.",
}
_LAYER_KEY = re.compile(r"^transformer_encoder\.layers\.(\d+)\.(.+)$")
_LAYER_RENAMES = {
    "self_attn.out_proj.weight": "attention.output.dense.weight",
    "self_attn.out_proj.bias": "attention.output.dense.bias",
    "linear1.weight": "intermediate.dense.weight",
    "linear1.bias": "intermediate.dense.bias",
    "linear2.weight": "output.dense.weight",
    "linear2.bias": "output.dense.bias",
    "norm1.weight": "attention.output.LayerNorm.weight",
    "norm1.bias": "attention.output.LayerNorm.bias",
    "norm2.weight": "output.LayerNorm.weight",
    "norm2.bias": "output.LayerNorm.bias",
}
_FUSED_QKV = {
    "self_attn.Wqkv.weight": ("Wqkv", "weight"),
    "self_attn.Wqkv.bias": ("Wqkv", "bias"),
    "self_attn.in_proj_weight": ("in_proj", "weight"),
    "self_attn.in_proj_bias": ("in_proj", "bias"),
}


@dataclass
class ConversionReport:
    """What a conversion did: the class written, its size, and which weights were dropped or left fresh."""

    out_dir: Path
    model_class: str
    num_parameters: int
    attention_layout: str
    unused_keys: list[str] = field(default_factory=list)
    initialized_keys: list[str] = field(default_factory=list)
    vocab_size: int = 0
    source: str = ""
    parity: Parity = field(default_factory=lambda: Parity(None, "not run"))
    license: str = "mit"

    def summary(self) -> str:
        lines = [
            f"Wrote {self.model_class} ({self.num_parameters:,} parameters, attention layout "
            f"'{self.attention_layout}') to {self.out_dir}",
            f"Parity, max |Δ| of cell embeddings vs the official scGPT code: {self.parity.describe()}",
            f"Checkpoint keys not used ({len(self.unused_keys)}): {', '.join(self.unused_keys) or 'none'}",
            f"Weights freshly initialised ({len(self.initialized_keys)}): "
            f"{', '.join(self.initialized_keys) or 'none'}",
        ]
        if self.model_class == "ScGPTForMaskedExpressionModeling":
            lines.append(
                "The checkpoint has no cls_decoder: ScGPTForCellClassification.from_pretrained() on this folder "
                "initialises the classification head `classifier` freshly (train it, or an adapter with it)."
            )
        return "\n".join(lines)


def load_official_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load `best_model.pt` with `weights_only=True`; refuse anything that is not a plain tensor dict."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise InvalidInputError(
            f"{path} was refused by torch.load(weights_only=True): it contains pickled objects other than "
            "tensors, which could run code when loaded. Re-save it from a trusted environment with "
            "torch.save(model.state_dict(), path)."
        ) from err
    if (
        isinstance(state, dict)
        and "model_state_dict" in state
        and isinstance(state["model_state_dict"], dict)
    ):
        state = state["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidInputError(
            f"{path} does not hold a state dict (a mapping of parameter names to tensors)"
        )
    return state


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise MissingFileError(
            f"{path.parent} has no {path.name} ({what}). An official scGPT checkpoint folder holds "
            f"{CHECKPOINT_FILE}, {ARGS_FILE} and {VOCAB_FILE}; copy the missing file from the checkpoint download."
        )
    with path.open() as handle:
        return json.load(handle)


def _check_vocab(vocab: dict, path: Path) -> None:
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        raise InvalidInputError(f"{path}: token ids must be 0..{len(ids) - 1} without gaps or duplicates")
    for special in ("<pad>", "<cls>"):
        if special not in vocab:
            raise InvalidInputError(
                f"{path} has no '{special}' token; scGPT vocabularies contain <pad>, <cls> and <eoc>"
            )


def config_from_official(args: dict, vocab: dict, state: dict[str, torch.Tensor]) -> ScGPTConfig:
    """Build the config from `args.json`, the vocabulary, and what the state dict shows (heads present)."""
    embedding_rows = state["encoder.embedding.weight"].shape[0]
    if embedding_rows != len(vocab):
        raise InvalidInputError(
            f"vocab.json has {len(vocab):,} tokens but the checkpoint's gene embedding has {embedding_rows:,} rows; "
            "the vocab.json must be the one saved with this checkpoint"
        )
    layer_ids = {int(m.group(1)) for key in state if (m := _LAYER_KEY.match(key))}
    n_layers = args.get("nlayers", len(layer_ids))
    if n_layers != len(layer_ids):
        raise InvalidInputError(
            f"args.json says nlayers={n_layers} but the checkpoint has {len(layer_ids)} encoder layers"
        )
    cls_layers = sum(1 for key in state if re.fullmatch(r"cls_decoder\._decoder\.\d+\.weight", key)) // 2 + 1
    config = ScGPTConfig(
        vocab_size=len(vocab),
        hidden_size=args.get("embsize", args.get("layer_size", 512)),
        num_hidden_layers=n_layers,
        num_attention_heads=args.get("nheads", args.get("nhead", 8)),
        intermediate_size=args.get("d_hid", 512),
        hidden_dropout_prob=args.get("dropout", 0.2),
        attention_probs_dropout_prob=args.get("dropout", 0.2),
        pad_token_id=vocab[args.get("pad_token", "<pad>")],
        cls_token_id=vocab["<cls>"],
        pad_value=args.get("pad_value", -2),
        mask_value=args.get("mask_value", -1),
        n_bins=args.get("n_bins", 51),
        max_seq_len=args.get("max_seq_len", 1200),
        input_emb_style=args.get("input_emb_style", "continuous"),
        pre_norm=args.get("pre_norm", False),
        num_cls_layers=cls_layers if "cls_decoder.out_layer.weight" in state else args.get("n_layers_cls", 3),
        use_mvc="mvc_decoder.W.weight" in state,
        explicit_zero_prob="decoder.zero_logit.0.weight" in state,
    )
    if "cls_decoder.out_layer.weight" in state:
        config.num_labels = state["cls_decoder.out_layer.weight"].shape[0]
    _batch_modules_from_official(config, state)
    return config


def _batch_modules_from_official(config: ScGPTConfig, state: dict[str, torch.Tensor]) -> None:
    """Switch on the batch-integration modules the checkpoint has, with its number of batches."""
    counts = {}
    if "batch_encoder.embedding.weight" in state:
        config.use_batch_labels = True
        counts["batch_encoder"] = state["batch_encoder.embedding.weight"].shape[0]
    dsbn_ids = {int(m.group(1)) for key in state if (m := re.match(r"^dsbn\.bns\.(\d+)\.", key))}
    if dsbn_ids:
        config.domain_spec_batchnorm = True
        counts["dsbn"] = len(dsbn_ids)
    if "grad_reverse_discriminator.out_layer.weight" in state:
        config.use_batch_discriminator = True
        counts["grad_reverse_discriminator"] = state["grad_reverse_discriminator.out_layer.weight"].shape[0]
    if len(set(counts.values())) > 1:
        raise ValueError(f"The checkpoint's batch modules disagree on the number of batches: {counts}")
    if counts:
        config.num_batch_labels = next(iter(counts.values()))


def rename_official_keys(
    state: dict[str, torch.Tensor], hidden_size: int
) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """Map official parameter names to ours. Returns (renamed state, unused keys, attention layout)."""
    renamed: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    layouts: set[str] = set()
    for key, tensor in state.items():
        if key.startswith("encoder."):
            renamed["scgpt.embeddings.gene_encoder." + key.removeprefix("encoder.")] = tensor
        elif key.startswith("value_encoder."):
            renamed["scgpt.embeddings." + key] = tensor
        elif key.startswith(("decoder.", "mvc_decoder.")):
            renamed[key] = tensor
        elif key.startswith("cls_decoder.out_layer."):  # the head is `classifier` here, as in transformers
            renamed["classifier." + key.removeprefix("cls_decoder.")] = tensor
        elif key.startswith("cls_decoder._decoder."):
            renamed["classifier.layers." + key.removeprefix("cls_decoder._decoder.")] = tensor
        elif match := _LAYER_KEY.match(key):
            prefix, name = f"scgpt.encoder.layer.{match.group(1)}.", match.group(2)
            if name in _LAYER_RENAMES:
                renamed[prefix + _LAYER_RENAMES[name]] = tensor
            elif name in _FUSED_QKV:
                layout, kind = _FUSED_QKV[name]
                layouts.add(layout)
                if tensor.shape[0] != 3 * hidden_size:
                    raise InvalidInputError(
                        f"{key} has shape {tuple(tensor.shape)}; expected [3 x {hidden_size}, ...]"
                    )
                for part, chunk in zip(("query", "key", "value"), tensor.chunk(3, dim=0), strict=True):
                    renamed[f"{prefix}attention.self.{part}.{kind}"] = chunk.clone()
            else:
                raise InvalidInputError(
                    f"Unknown key '{key}' in the encoder layers. Known attention layouts are flash-attn "
                    "(self_attn.Wqkv.weight/bias) and PyTorch (self_attn.in_proj_weight/bias), each with "
                    "self_attn.out_proj; is this a scGPT TransformerModel checkpoint?"
                )
        elif batch_prefix := next((p for p in _BATCH_RENAMES if key.startswith(p)), None):
            renamed[_BATCH_RENAMES[batch_prefix] + key.removeprefix(batch_prefix)] = tensor
        elif key.startswith(_UNUSED_PREFIXES):
            unused.append(key)
        else:
            raise InvalidInputError(f"Unknown checkpoint key '{key}': not part of scGPT's TransformerModel")
    if len(layouts) > 1:
        raise InvalidInputError(f"The checkpoint mixes attention layouts {sorted(layouts)}; expected one")
    return renamed, unused, layouts.pop() if layouts else "none"


def convert_scgpt_checkpoint(
    src_dir: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    checkpoint_file: str = CHECKPOINT_FILE,
    *,
    repo_id: str | None = None,
    source: str | None = None,
    license: str = "mit",
) -> ConversionReport:
    """Convert an official scGPT checkpoint folder into a Hugging Face folder loadable with `from_pretrained`.

    Checkpoints without a classification head become `ScGPTForMaskedExpressionModeling` (gene embeddings,
    encoder, expression and MVC decoders); fine-tuned annotation checkpoints with a `cls_decoder` become
    `ScGPTForCellClassification`, whose head is named `classifier` (transformers' and peft's name); integration
    checkpoints (batch embedding or discriminator) become `ScGPTForBatchIntegration`. Each loads into the others
    with the heads it lacks initialised.
    The model card (`README.md`) names `repo_id` (the Hub repo it will be pushed to) or else `out_dir` as what to
    load, `source` (default: the checkpoint's folder, file name and SHA-256) and `license` (scGPT's is MIT); it
    holds the parity figure measured here when the official scGPT code is installed ("not measured" otherwise).
    Everything is written to a temporary folder first, so a failure leaves `out_dir` untouched.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise MissingFileError(f"Checkpoint folder {src_dir} does not exist")
    check_out_dir(out_dir, overwrite, inputs=[src_dir / checkpoint_file])
    args = _read_json(src_dir / ARGS_FILE, "the model hyper-parameters")
    vocab_path = src_dir / VOCAB_FILE
    vocab = _read_json(vocab_path, "the gene vocabulary")
    _check_vocab(vocab, vocab_path)
    checkpoint = src_dir / checkpoint_file
    if not checkpoint.is_file():
        raise MissingFileError(f"{src_dir} has no {checkpoint_file} (the model weights)")
    state = load_official_state_dict(checkpoint)
    if "encoder.embedding.weight" not in state:
        raise InvalidInputError(
            f"{checkpoint} has no 'encoder.embedding.weight': not a scGPT TransformerModel state dict"
        )

    config = config_from_official(args, vocab, state)
    renamed, unused, layout = rename_official_keys(state, config.hidden_size)
    has_classifier = "classifier.out_layer.weight" in renamed
    has_batch_heads = config.use_batch_labels or config.use_batch_discriminator
    if has_batch_heads:  # an integration checkpoint; official models always carry an (untrained) cls_decoder
        model_class, head_only = ScGPTForBatchIntegration, ("classifier.",)
    elif has_classifier:
        model_class, head_only = ScGPTForCellClassification, ("decoder.", "mvc_decoder.")
    else:
        model_class, head_only = ScGPTForMaskedExpressionModeling, ("classifier.",)
    config.architectures = [model_class.__name__]
    model = model_class(config)
    unused += [key for key in renamed if key.startswith(head_only)]
    renamed = {key: value for key, value in renamed.items() if not key.startswith(head_only)}
    result = model.load_state_dict(renamed, strict=False)
    if result.unexpected_keys:
        raise InvalidInputError(
            f"Checkpoint tensors with no place in {model_class.__name__}: {result.unexpected_keys}"
        )

    report = ConversionReport(
        out_dir=out_dir,
        model_class=model_class.__name__,
        num_parameters=model.num_parameters(),
        attention_layout=layout,
        unused_keys=sorted(unused),
        initialized_keys=sorted(result.missing_keys),
        vocab_size=len(vocab),
        source=source or f"`{src_dir.name}/{checkpoint_file}` (SHA-256 `{_sha256(checkpoint)}`)",
        parity=measure_parity(model, state, vocab),
        license=license,
    )
    staging = make_staging_dir(out_dir)
    try:
        model.save_pretrained(staging)
        shutil.copyfile(vocab_path, staging / VOCAB_FILE)
        (staging / CARD_FILE).write_text(render_base_card(report, model.config, repo_id or str(out_dir)))
        publish(staging, out_dir, command="convert")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def render_base_card(report: ConversionReport, config: ScGPTConfig, model_ref: str) -> str:
    """The converted base's model card; `model_ref` is what it tells readers to load (a Hub id or a folder)."""
    metadata = ModelCardData(
        library_name="transformers",
        license=report.license,
        tags=["single-cell", "scgpt", "scpeft-hf", "converted"],
        pipeline_tag="feature-extraction",
        parity_max_abs_diff=report.parity.max_abs_diff,
    )
    architecture = (
        f"`{report.model_class}` ({report.num_parameters:,} parameters): hidden size {config.hidden_size}, "
        f"{config.num_hidden_layers} layers, {config.num_attention_heads} attention heads, feed-forward "
        f"{config.intermediate_size}, {'pre' if config.pre_norm else 'post'}-norm, `{config.input_emb_style}` "
        f"value encoding with {config.n_bins} bins, cell embedding `{config.cell_emb_style}`, at most "
        f"{config.max_seq_len} genes per cell; attention converted from the `{report.attention_layout}` layout"
    )
    licence = (
        f"`{report.license}`, the licence given at conversion (`--license`), which should be the source's."
    )
    values = {
        "metadata": metadata.to_yaml().rstrip("\n"),
        "title": f"scGPT base ({config.num_hidden_layers} layers, {report.vocab_size:,} tokens)",
        "architecture": architecture,
        "source": report.source,
        "unused_keys": ", ".join(f"`{key}`" for key in report.unused_keys) or "none",
        "initialized_keys": ", ".join(f"`{key}`" for key in report.initialized_keys) or "none",
        "vocab_size": f"{report.vocab_size:,}",
        "pad_id": config.pad_token_id,
        "cls_id": config.cls_token_id,
        "parity": report.parity.describe(),
        "model_ref": model_ref,
        "license_note": licence,
    }
    return string.Template(CARD_TEMPLATE.read_text()).substitute(values)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
