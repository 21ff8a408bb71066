"""`import scpeft_hf` needs only the model stack (torch, transformers, peft): GPU images often lack the data stack."""

import subprocess
import sys

DATA_STACK = ("anndata", "datasets", "scanpy", "pyarrow")


def run_without_data_stack(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter in which importing any data-stack package fails as if not installed."""
    block = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in DATA_STACK)
    return subprocess.run([sys.executable, "-c", block + code], capture_output=True, text=True, timeout=300)


def test_models_and_tuners_import_and_register_without_the_data_stack():
    result = run_without_data_stack(
        "import scpeft_hf, scpeft_hf.models.scgpt, scpeft_hf.tuners\n"
        "from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING\n"
        "from transformers import AutoConfig\n"
        "print(sorted(str(key) for key in PEFT_TYPE_TO_CONFIG_MAPPING if 'ADAPTER' in str(key)))\n"
        "print(type(AutoConfig.for_model('scgpt')).__name__)\n"
        "print(scpeft_hf.ScGPTForCellClassification.__name__, scpeft_hf.EncoderAdapterConfig.__name__)\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    registered, config, names = result.stdout.strip().splitlines()
    assert (
        "ENCODER_ADAPTER" in registered and "TOKEN_ADAPTER" in registered and "PREFIX_ADAPTER" in registered
    )
    assert config == "ScGPTConfig"
    assert names == "ScGPTForCellClassification EncoderAdapterConfig"


def test_data_names_load_on_first_use_and_say_what_is_missing():
    result = run_without_data_stack("import scpeft_hf\nscpeft_hf.ScGPTProcessor\n")
    assert result.returncode != 0
    assert "No module named" in result.stderr or "import of" in result.stderr
    assert any(name in result.stderr.splitlines()[-1] for name in DATA_STACK)


def test_lazy_names_resolve_to_the_data_room():
    import scpeft_hf
    from scpeft_hf.data import GeneVocab, ScGPTProcessor

    assert scpeft_hf.GeneVocab is GeneVocab and scpeft_hf.ScGPTProcessor is ScGPTProcessor
    assert {"GeneVocab", "ScGPTDataCollator", "ScPeftType"} <= set(dir(scpeft_hf))
    assert set(scpeft_hf.__all__) <= set(dir(scpeft_hf))


def test_the_collator_imports_without_the_data_stack():
    """The backbone pretraining step runs on GPU machines with only the model stack (scripts/pretrain_backbone.py)."""
    result = run_without_data_stack(
        "from scpeft_hf.data.collator import ScGPTDataCollator\n"
        "batch = ScGPTDataCollator(pad_token_id=9, max_length=4, mlm_probability=0.5)(\n"
        "    [{'input_ids': [8, 1, 2, 3], 'values': [0.0, 3.0, 1.0, 2.0]}])\n"
        "print(sorted(batch))\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "['attention_mask', 'input_ids', 'labels', 'values']"
