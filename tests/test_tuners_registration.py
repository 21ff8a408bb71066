"""Registration of the scPEFT methods with peft, and the room's import boundaries."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import PeftConfig, get_peft_model
from peft.mapping import (
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
    get_peft_config,
)
from transformers import BertConfig, BertForSequenceClassification

import scpeft_hf
from scpeft_hf.tuners import (
    EncoderAdapterConfig,
    EncoderAdapterModel,
    PrefixAdapterConfig,
    PrefixAdapterModel,
    ScPeftType,
    TokenAdapterConfig,
    TokenAdapterModel,
    register_scpeft_method,
)

REPO_ROOT = Path(scpeft_hf.__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "peft_type, config_cls, tuner_cls, prefix",
    [
        (ScPeftType.ENCODER_ADAPTER, EncoderAdapterConfig, EncoderAdapterModel, "scpeft_encoder_adapter_"),
        (ScPeftType.TOKEN_ADAPTER, TokenAdapterConfig, TokenAdapterModel, "scpeft_token_adapter_"),
        (ScPeftType.PREFIX_ADAPTER, PrefixAdapterConfig, PrefixAdapterModel, "scpeft_prefix_adapter_"),
    ],
)
def test_methods_are_registered_under_their_json_names(peft_type, config_cls, tuner_cls, prefix):
    # adapter_config.json stores the plain string; the str-enum member must find the same entries
    name = peft_type.value
    assert PEFT_TYPE_TO_CONFIG_MAPPING[name] is config_cls
    assert PEFT_TYPE_TO_TUNER_MAPPING[name] is tuner_cls
    assert PEFT_TYPE_TO_PREFIX_MAPPING[name] == prefix == tuner_cls.prefix
    config = get_peft_config(
        {"peft_type": name, "num_tokens": 4} if config_cls is PrefixAdapterConfig else {"peft_type": name}
    )
    assert type(config) is config_cls and config.peft_type is peft_type


def test_registration_refuses_a_taken_name_and_tolerates_a_repeat():
    register_scpeft_method(ScPeftType.ENCODER_ADAPTER, EncoderAdapterConfig, EncoderAdapterModel)
    with pytest.raises(KeyError, match="already registered to EncoderAdapterConfig"):
        register_scpeft_method(ScPeftType.ENCODER_ADAPTER, TokenAdapterConfig, EncoderAdapterModel)
    with pytest.raises(ValueError, match="prefix"):
        register_scpeft_method(ScPeftType.ENCODER_ADAPTER, EncoderAdapterConfig, TokenAdapterModel)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[ScPeftType.ENCODER_ADAPTER] is EncoderAdapterConfig


def test_loading_without_import_scpeft_hf_names_the_missing_type(tmp_path):
    # peft has no plugin discovery: in a fresh interpreter that never imported scpeft_hf, peft fails on the
    # unknown peft type. The type's name carries the package name; importing scpeft_hf makes the same load work.
    torch.manual_seed(0)
    bert_config = BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    adapter_dir = tmp_path / "adapter"
    get_peft_model(BertForSequenceClassification(bert_config), EncoderAdapterConfig()).save_pretrained(
        adapter_dir
    )
    script = textwrap.dedent(
        f"""
        import json, sys
        from peft import PeftConfig, PeftModel
        from transformers import BertConfig, BertForSequenceClassification

        path = {str(adapter_dir)!r}
        base = BertForSequenceClassification(BertConfig(**{bert_config.to_diff_dict()!r}))
        errors = {{}}
        for name, load in [("config", lambda: PeftConfig.from_pretrained(path)),
                           ("model", lambda: PeftModel.from_pretrained(base, path))]:
            try:
                load()
            except Exception as error:
                errors[name] = f"{{type(error).__name__}}: {{error}}"
        assert "scpeft_hf" not in sys.modules
        import scpeft_hf
        loaded = PeftModel.from_pretrained(base, path)
        errors["after_import"] = type(loaded.peft_config["default"]).__name__
        print(json.dumps(errors))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {
        "config": "KeyError: 'SCPEFT_ENCODER_ADAPTER'",
        "model": "KeyError: 'SCPEFT_ENCODER_ADAPTER'",
        "after_import": "EncoderAdapterConfig",
    }


def test_peft_config_from_pretrained_returns_our_class(tmp_path):
    PrefixAdapterConfig(num_tokens=5, layers_to_transform=[0, 2]).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "SCPEFT_PREFIX_ADAPTER"
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is PrefixAdapterConfig
    assert (loaded.num_tokens, loaded.layers_to_transform, loaded.peft_type) == (
        5,
        [0, 2],
        ScPeftType.PREFIX_ADAPTER,
    )


def test_tuners_import_neither_models_data_nor_tasks():
    tuners_dir = REPO_ROOT / "scpeft_hf" / "tuners"
    forbidden = ("scpeft_hf.models", "scpeft_hf.data", "scpeft_hf.tasks")
    for path in tuners_dir.rglob("*.py"):
        depth = len(path.relative_to(tuners_dir).parts)  # 1: tuners/x.py, 2: tuners/method/x.py
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    # resolve "..models" relative to scpeft_hf.tuners[.method]
                    package = ["scpeft_hf", "tuners", *path.relative_to(tuners_dir).parts[:-1]][
                        : 2 + depth - node.level
                    ]
                    module = ".".join([*package, module]) if module else ".".join(package)
                names = [module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
