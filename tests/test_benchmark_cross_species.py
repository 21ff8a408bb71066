"""benchmarks/cross_species.py's bookkeeping, without training: the summary over seeds, the reductions from the
issue's grid that a results header must state, the partial marker, and the zero-shot nearest centroid."""

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cross_species.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cross_species_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grid(**changes) -> argparse.Namespace:
    args = dict(base=None, methods=["encoder", "lora", "full", "probe"], policies=["one2one", "sum", "case-insensitive"],
                seeds=[0, 1], seeds_b=[0, 1], epochs=10, max_length=1024, batch_size=32, max_cells=None,
                min_cells=10, scenarios=["a", "b"])  # fmt: skip
    return argparse.Namespace(**{**args, **changes})


def row(seed: int, balanced_accuracy: float, method: str = "encoder") -> dict:
    return dict(scenario="a: mouse1 -> mouse2", policy="sum", method=method, seed=seed, n_scored=40, left_out=3,
                n_excluded=0, balanced_accuracy=balanced_accuracy, macro_f1=0.5, accuracy=0.6)  # fmt: skip


def test_the_issue_grid_has_no_reductions_and_each_cut_is_named(bench):
    assert bench.reductions(grid()) == []
    cuts = bench.reductions(grid(seeds_b=[0], max_length=128, epochs=2, max_cells=1000, methods=["encoder"]))
    assert cuts == [
        "max_length 128 instead of 1024",
        "(b) seeds 0 instead of 0, 1",
        "methods without lora, full, probe",
        "at most 2 epochs instead of 10 (the issue names none)",
        "at most 1000 cells per species instead of all",
    ]


def test_summary_is_mean_and_sample_sd_over_seeds_per_row(bench):
    summary = bench.summarise([row(0, 0.6), row(1, 0.8), row(0, 0.9, method="probe")])
    encoder, probe = summary
    assert (encoder["seeds"], probe["seeds"]) == (2, 1)
    assert encoder["balanced_accuracy"] == pytest.approx(0.7)
    assert encoder["balanced_accuracy_sd"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert probe["balanced_accuracy_sd"] == 0.0 and encoder["n_excluded"] == 3


def test_partial_results_say_so_and_list_the_reductions(bench, tmp_path):
    coverage = {
        "sum": dict(source_genes=10, mapped=8, in_vocabulary=7, human_genes=6, pretrained=5, counts_kept=0.9)
    }
    out = tmp_path / "cross_species.md"
    args = grid(max_length=128)
    bench.write_markdown(bench.summarise([row(0, 0.6), row(1, 0.8)]), coverage, args, 60, out, complete=False)
    text = out.read_text()
    assert "**Partial" in text and "max_length 128 instead of 1024" in text
    assert "| a: mouse1 -> mouse2 | sum | encoder | 2 | 0.700 ± 0.141 |" in text
    assert "| sum | 10 | 8 | 7 | 6 | 5 | 90.0% |" in text
    bench.write_markdown(bench.summarise([row(0, 0.6)]), coverage, args, 60, out, complete=True)
    assert "Partial" not in out.read_text()


def test_zero_shot_centroid_picks_the_nearest_class_mean_by_cosine(bench):
    train = np.array([[1.0, 0.0], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9]])
    labels = np.array(["alpha", "alpha", "beta", "beta"])
    test = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert list(bench.nearest_centroid(train, labels, test)) == ["alpha", "beta", "alpha"]
