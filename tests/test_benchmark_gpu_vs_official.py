"""benchmarks/gpu_vs_official.py end to end on CPU at tiny sizes, without the data stack (as on the GPU image).

The official side needs scPEFT 0.1.2's wheel (and loralib's) in `.official/` at the repository root
(`pip download --no-deps -d .official scpeft==0.1.2 loralib==0.1.2`); without them only our side runs.
"""

import json
from pathlib import Path

import pytest

from tests.test_package_import import run_without_data_stack

REPO_ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = REPO_ROOT / ".official" / "scpeft-0.1.2-py3-none-any.whl"
LORALIB = REPO_ROOT / ".official" / "loralib-0.1.2-py3-none-any.whl"
D, LAYERS = 64, 4  # the script's --tiny sizes


@pytest.mark.slow
def test_tiny_run_writes_every_method_ours_and_official(tmp_path):
    argv = ["--tiny", "--device", "cpu", "--dtype", "fp32", "--no-compile", "--out", str(tmp_path)]
    if OFFICIAL.is_file() and LORALIB.is_file():
        argv += ["--official-wheel", str(OFFICIAL), "--loralib-wheel", str(LORALIB)]
    script = REPO_ROOT / "benchmarks" / "gpu_vs_official.py"
    result = run_without_data_stack(
        f"import runpy\nsys.argv = [{str(script)!r}, *{argv!r}]\nrunpy.run_path({str(script)!r}, run_name='__main__')"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_vs_official.json").read_text())
    report = (tmp_path / "gpu_vs_official.md").read_text()
    ours = {row["method"]: row for row in results["side_by_side"] if row["code"] == "ours"}
    assert set(ours) == {"full", "encoder_adapter", "token_adapter", "prefix_adapter", "lora"}
    assert all(row["steps"] == 3 and row["median_ms"] > 0 for row in ours.values())
    # every recommended variant ran; the top-half placement trains as many weights as the paper's
    recommended = results["recommended"]
    assert len(recommended) == 9 and not results["stopped"]
    top_encoder = next(row for row in recommended if row["method"] == "encoder_adapter" and row["layers"])
    assert (
        top_encoder["layers"] == [2, 3]
        and top_encoder["trainable_params"] == ours["encoder_adapter"]["trainable_params"]
    )
    forward = {(row["code"], row["padded"]): row for row in results["forward"]}
    # 4 cells x 32 genes; half padded: 2 cells keep 16 of their 32
    assert forward[("ours", False)]["real_tokens"] == 128 and forward[("ours", True)]["real_tokens"] == 96
    assert "## Training step, same settings" in report and "| lora |" in report
    if "--official-wheel" not in argv:
        pytest.skip("official scPEFT wheels not in .official/: checked our side only")
    official = {row["method"]: row for row in results["side_by_side"] if row["code"] == "official"}
    assert set(official) == set(ours) and not results["skipped"]
    for method in ("encoder_adapter", "token_adapter", "prefix_adapter"):  # same adapters, same head
        assert official[method]["trainable_params"] == ours[method]["trainable_params"], method
    # official LoRA also trains the fused QKV bias of the adapted half of the layers
    assert official["lora"]["trainable_params"] == ours["lora"]["trainable_params"] + LAYERS // 2 * 3 * D
    # official full fine-tuning also trains the expression decoder: Linear(d, d), Linear(d, d), Linear(d, 1)
    assert official["full"]["trainable_params"] == ours["full"]["trainable_params"] + 2 * (D * D + D) + D + 1
    assert forward[("official", True)]["real_tokens"] == 96
