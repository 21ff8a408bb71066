"""Speed and memory knobs of `scpeft-hf train`: adapter placement, checkpointing, precision, compile, accumulation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors import safe_open
from transformers import TrainingArguments

from scpeft_hf.cli import build_parser, training_settings
from scpeft_hf.cli import main as cli_main
from scpeft_hf.demo import DEMO_LABEL_KEY, DEMO_SPLIT_KEY, demo_data
from scpeft_hf.errors import InvalidInputError
from scpeft_hf.tasks.methods import parse_adapter_layers
from scpeft_hf.tasks.training_knobs import resolve_precision, trainer_arguments


def test_adapter_layers_parse_ranges_lists_and_names():
    assert parse_adapter_layers("6-11", 12, "encoder") == [6, 7, 8, 9, 10, 11]
    assert parse_adapter_layers("0,2,4-5", 12, "lora") == [0, 2, 4, 5]
    assert parse_adapter_layers("paper", 12, "prefix") == [0, 1, 2, 3, 4, 5]
    assert parse_adapter_layers("all", 4, "encoder") == [0, 1, 2, 3]
    assert parse_adapter_layers(None, 4, "token") is None


@pytest.mark.parametrize(
    ("spec", "method", "message"),
    [
        ("2-3", "token", "token adapter sits on the input embedding"),
        ("all", "full", "full has no adapter"),
        ("all", "probe", "probe has no adapter"),
        ("3-4", "encoder", "layers [4] are outside the model's 4 layers (0-3)"),
        ("top", "lora", "'top' names no layer of the model's 4 layers"),
        ("3-1", "lora", "names no layer"),
    ],
)
def test_adapter_layers_refuse_what_cannot_work(spec, method, message):
    with pytest.raises(InvalidInputError, match="--adapter-layers") as error:
        parse_adapter_layers(spec, 4, method)
    assert message in str(error.value)


def test_precision_on_cpu_only_machine(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_precision("auto") == "fp32" and resolve_precision("bf16") == "bf16"
    with pytest.raises(InvalidInputError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16")
    with pytest.raises(InvalidInputError, match="--gradient-accumulation-steps must be >= 1, got 0"):
        trainer_arguments("auto", False, 0)


def test_cli_flags_reach_training_arguments(tmp_path):
    args = build_parser().parse_args(
        ["train", "--data", "x.h5ad", "--label-key", "y", "--out", "o", "--adapter-layers", "6-11",
         "--gradient-checkpointing", "--precision", "bf16", "--torch-compile", "--gradient-accumulation-steps", "4",
         "--device", "cpu"]
    )  # fmt: skip
    settings = training_settings(args)
    assert (settings.adapter_layers, settings.gradient_checkpointing, settings.precision) == (
        "6-11",
        True,
        "bf16",
    )
    assert (settings.torch_compile, settings.gradient_accumulation_steps, settings.device) == (True, 4, "cpu")
    knobs = trainer_arguments(
        settings.precision, settings.torch_compile, settings.gradient_accumulation_steps, settings.device
    )
    training_args = TrainingArguments(output_dir=str(tmp_path), report_to="none", **knobs)
    assert training_args.torch_compile and training_args.bf16 and not training_args.fp16
    assert training_args.use_cpu
    assert training_args.gradient_accumulation_steps == 4
    defaults = training_settings(
        build_parser().parse_args(["train", "--data", "x", "--label-key", "y", "--out", "o"])
    )
    assert (defaults.adapter_layers, defaults.precision, defaults.torch_compile) == (None, "auto", False)
    assert defaults.gradient_accumulation_steps == 1 and not defaults.gradient_checkpointing


@pytest.fixture(scope="module")
def small_pbmc(tmp_path_factory) -> Path:
    """pbmc68k_reduced, 120 cells of the demo split: 96 training cells, then 12 validation and 12 test cells of
    the cell types those contain."""
    adata = demo_data()
    split, labels = adata.obs[DEMO_SPLIT_KEY], adata.obs[DEMO_LABEL_KEY]
    train = adata.obs_names[split == "train"][:96]
    seen = labels.isin(set(labels[train]))
    keep = [
        *train,
        *adata.obs_names[(split == "validation") & seen][:12],
        *adata.obs_names[(split == "test") & seen][:12],
    ]
    path = tmp_path_factory.mktemp("knobs") / "pbmc_small.h5ad"
    adata[keep].copy().write_h5ad(path)
    return path


def train(small_pbmc: Path, out: Path, *flags: str) -> tuple[dict, dict]:
    code = cli_main(
        ["train", "--data", str(small_pbmc), "--label-key", DEMO_LABEL_KEY, "--split-key", DEMO_SPLIT_KEY,
         "--epochs", "1", "--batch-size", "16", "--max-length", "64", "--out", str(out), *flags]
    )  # fmt: skip
    assert code == 0
    return json.loads((out / "metrics.json").read_text()), json.loads((out / "run_info.json").read_text())


@pytest.mark.slow
def test_checkpointed_run_matches_the_plain_run_in_fp32(small_pbmc, tmp_path):
    plain, plain_info = train(small_pbmc, tmp_path / "plain", "--precision", "fp32")
    checkpointed, info = train(
        small_pbmc, tmp_path / "ckpt", "--precision", "fp32", "--gradient-checkpointing"
    )
    assert checkpointed["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-5)
    assert checkpointed["test_accuracy"] == plain["test_accuracy"]
    assert info["training"]["gradient_checkpointing"] and not plain_info["training"]["gradient_checkpointing"]
    assert info["training"]["precision"] == "fp32" and info["training"]["precision_used"] == "fp32"
    # the default placement is recorded too: the first half of the demo backbone's 4 layers
    assert info["training"]["adapter_layers"] is None and info["training"]["adapter_layers_placed"] == [0, 1]


@pytest.mark.slow
def test_placement_and_accumulation_are_applied_and_recorded(small_pbmc, tmp_path):
    out = tmp_path / "top"
    _, info = train(
        small_pbmc, out, "--method", "lora", "--adapter-layers", "2-3", "--gradient-accumulation-steps", "2"
    )
    training = info["training"]
    assert training["adapter_layers"] == "2-3" and training["adapter_layers_placed"] == [2, 3]
    # 96 training cells in batches of 16 = 6 batches per epoch, 2 per optimizer step
    assert training["gradient_accumulation_steps"] == 2 and training["optimizer_steps"] == math.ceil(6 / 2)
    with safe_open(out / "adapter_model.safetensors", "pt") as weights:
        lora_layers = {int(key.split(".layer.")[1].split(".")[0]) for key in weights.keys() if "lora_" in key}
    assert lora_layers == {2, 3}
    assert json.loads((out / "adapter_config.json").read_text())["layers_to_transform"] == [2, 3]


def test_adapter_layers_on_the_token_adapter_is_one_line_and_writes_nothing(small_pbmc, tmp_path, capsys):
    out = tmp_path / "token"
    code = cli_main(["train", "--data", str(small_pbmc), "--label-key", DEMO_LABEL_KEY, "--method", "token",
                     "--adapter-layers", "2-3", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--adapter-layers does not apply to --method token" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
