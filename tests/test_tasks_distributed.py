"""Multi-process fine-tuning: a real 2-process CPU job (torchrun, gloo) and the DDP loss-scaling trap."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest
from transformers import Trainer, TrainingArguments

from scpeft_hf.demo import DEMO_LABEL_KEY, DEMO_SPLIT_KEY, demo_data
from scpeft_hf.models.geneformer import load_geneformer
from scpeft_hf.tasks.annotation import load_annotator
from scpeft_hf.tasks.backbones import DEMO_BACKBONE, load_classifier, load_processor
from scpeft_hf.tasks.methods import METHODS, prepare_model
from scpeft_hf.tasks.metrics import classification_metrics

from .geneformer_helpers import write_tiny_geneformer

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = REPO / "examples" / "accelerate"


def scgpt_classifier(_tmp_path: Path):
    return load_classifier(DEMO_BACKBONE, load_processor(DEMO_BACKBONE), num_labels=3)


def geneformer_classifier(tmp_path: Path):
    return load_geneformer(write_tiny_geneformer(tmp_path, 40), num_labels=3, dictionary_size=40 + 4)


@pytest.mark.parametrize("backbone", [scgpt_classifier, geneformer_classifier], ids=["scgpt", "geneformer"])
@pytest.mark.parametrize("method", METHODS)
def test_trainer_never_rescales_the_loss_by_world_size(backbone, method, tmp_path):
    # A model that "accepts loss kwargs" gets its loss multiplied by the number of processes under DDP
    # (transformers assumes the model divided by num_items_in_batch). Our heads return a plain mean.
    model, _ = prepare_model(backbone(tmp_path), method)
    trainer = Trainer(
        model=model, args=TrainingArguments(str(tmp_path / "out"), use_cpu=True, report_to="none")
    )
    assert trainer.model_accepts_loss_kwargs is False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def logged_losses(output: str) -> list[float]:
    """Training losses from Trainer's log lines, e.g. `{'loss': '1.236', 'grad_norm': ...}`."""
    logs = [ast.literal_eval(match) for match in re.findall(r"\{'loss': [^}]*\}", output)]
    return [float(log["loss"]) for log in logs]


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    # The shipped DDP config, on CPU: accelerate starts 2 processes and scpeft-hf joins them with gloo.
    # bf16 autocast is for GPUs; on CPU it is two orders of magnitude slower.
    "accelerate": ["-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / "multi_gpu_ddp.yaml"),
                   "--num_processes", "2", "--mixed_precision", "no"],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_process_training_matches_a_single_process_evaluation(launcher, tmp_path):
    data = tmp_path / "pbmc.h5ad"
    demo_data().write_h5ad(data)
    out = tmp_path / "encoder-ddp"
    port = ["--main_process_port", str(free_port())] if launcher == "accelerate" else []
    command = [
        sys.executable, *LAUNCHERS[launcher], *port,
        "-m", "scpeft_hf.cli", "--verbose", "train", "--data", str(data), "--label-key", DEMO_LABEL_KEY,
        "--split-key", DEMO_SPLIT_KEY, "--method", "encoder", "--epochs", "2", "--batch-size", "16",
        "--out", str(out),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]

    # Two ranks ran, in one gloo process group.
    for rank in (0, 1):
        assert f"process {rank} of 2 (DistributedType.MULTI_CPU)" in output
    run_info = json.loads((out / "run_info.json").read_text())
    assert run_info["training"]["world_size"] == 2
    # Only rank 0 wrote: one output folder, no leftover staging folders or checkpoints.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder-ddp", "pbmc.h5ad"]
    assert not (out / "checkpoints").exists()

    # The loss is a per-cell mean averaged over ranks, not multiplied by the world size: at the start it is
    # near the cross-entropy of a near-uniform 10-class prediction, ln(10) = 2.30.
    losses = logged_losses(output)
    assert losses and losses[0] < 1.3 * math.log(10)

    # The test metrics gathered across ranks equal a single-process evaluation of the saved adapter: no test
    # cell was dropped or counted twice (140 test cells do not fill the ranks' 32-cell batches evenly).
    test = ad.read_h5ad(data)[run_info["test_obs_names"]].copy()
    assert test.n_obs == run_info["n_cells"]["test"] and test.n_obs % 64 != 0
    load_annotator(out).predict(test)
    single = classification_metrics(
        test.obs[DEMO_LABEL_KEY].astype(str).to_numpy(), test.obs["scpeft_pred"].astype(str).to_numpy()
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for key, value in single.items():
        assert metrics[f"test_{key}"] == pytest.approx(value, abs=1e-12)
