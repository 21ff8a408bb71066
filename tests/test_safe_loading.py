"""No loading path unpickles code: a pickle that would run a command is refused and its command never runs.

Each `.bin` / `.pt` / `.pth` file a user or a checkpoint can hand us is written with a payload whose
`__reduce__` creates a marker file when unpickled: Geneformer's `pytorch_model.bin`, an scGPT folder's
`pytorch_model.bin`, a peft `adapter_model.bin`, and Trainer's resume files (`rng_state.pth`, `optimizer.pt`,
`scheduler.pt`). (Official scGPT `best_model.pt` and Geneformer dictionary pickles: test_scgpt_convert.py and
test_geneformer_processor.py.)
"""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import Trainer, TrainingArguments

from scpeft_hf.models.geneformer import load_geneformer
from scpeft_hf.tasks.backbones import DEMO_BACKBONE, load_classifier, load_processor
from scpeft_hf.tasks.methods import load_peft_adapter, prepare_model
from tests.geneformer_helpers import write_tiny_geneformer


class Payload:
    """Unpickling this touches `marker`: proof that pickled code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


def write_payload(path: Path, marker: Path) -> Path:
    torch.save({"weight": torch.zeros(1), "payload": Payload(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    marker = tmp_path / "payload-ran"
    yield marker
    assert not marker.exists(), "an unpickled payload ran"


def test_payload_runs_under_plain_pickle(tmp_path, marker):
    """The payload is live: a plain `torch.load(weights_only=False)` would run it (the check the others rely on)."""
    torch.load(write_payload(tmp_path / "x.pt", marker), weights_only=False)
    assert marker.exists()
    marker.unlink()


def test_geneformer_bin_weights(tmp_path, marker):
    folder = write_tiny_geneformer(tmp_path / "gf", 12, weights="bin")
    write_payload(folder / "pytorch_model.bin", marker)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        load_geneformer(folder, num_labels=2)


def test_scgpt_folder_bin_weights(tmp_path, marker):
    folder = tmp_path / "scgpt"
    processor = load_processor(DEMO_BACKBONE)
    load_classifier(DEMO_BACKBONE, processor, num_labels=2).save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "model.safetensors").unlink()  # a folder with pickled weights only, as older releases wrote
    write_payload(folder / "pytorch_model.bin", marker)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        load_classifier(folder, processor)


def test_peft_adapter_bin(tmp_path, marker):
    processor = load_processor(DEMO_BACKBONE)
    model, _ = prepare_model(load_classifier(DEMO_BACKBONE, processor, num_labels=2), "encoder")
    model.save_pretrained(tmp_path / "adapter", safe_serialization=False)
    assert isinstance(model, PeftModel) and (tmp_path / "adapter" / "adapter_model.bin").is_file()
    write_payload(tmp_path / "adapter" / "adapter_model.bin", marker)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        load_peft_adapter(load_classifier(DEMO_BACKBONE, processor, num_labels=2), tmp_path / "adapter")


@pytest.mark.parametrize("name", ["rng_state.pth", "optimizer.pt", "scheduler.pt"])
def test_trainer_resume_files(tmp_path, marker, name):
    processor = load_processor(DEMO_BACKBONE)
    model, _ = prepare_model(load_classifier(DEMO_BACKBONE, processor, num_labels=2), "probe")
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, max_steps=1),
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    torch.save(trainer.optimizer.state_dict(), checkpoint / "optimizer.pt")
    torch.save(trainer.lr_scheduler.state_dict(), checkpoint / "scheduler.pt")
    write_payload(checkpoint / name, marker)
    with pytest.raises(pickle.UnpicklingError, match="(?i)weights_only|unpickl"):
        if name == "rng_state.pth":
            trainer._load_rng_state(str(checkpoint))
        else:
            trainer._load_optimizer_and_scheduler(str(checkpoint))
