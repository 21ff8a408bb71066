"""Load the official scGPT v0.2.4 source files (installed with `pip install --no-deps scgpt==0.2.4`) by path.

`import scgpt` fails on current torch (it imports torchtext), so modules are loaded one file at a time
under a private package name, by the loader of the converter's parity check (`scpeft_hf.models.scgpt.parity`).
Tests use this; benchmarks use `load_source_module` for other official code (scPEFT's model files), which needs
no pytest.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

from scpeft_hf.models.scgpt import parity

if TYPE_CHECKING:
    import pytest

_PACKAGE, OFFICIAL_VERSION = parity.OFFICIAL_PACKAGE, parity.OFFICIAL_VERSION
_ensure_package, load_source_module = parity.ensure_package, parity.load_source_module
__all__ = ["load_official_module", "load_source_module", "official_source_dir", "stub_official_imports"]


def official_source_dir() -> Path:
    """Folder of the installed `scgpt` distribution's sources, or skip the test with how to install it."""
    import pytest

    root = parity.official_source_root()
    if root is None:
        pytest.skip(
            f"official scGPT {OFFICIAL_VERSION} code not installed: pip install --no-deps scgpt=={OFFICIAL_VERSION}"
        )
    return root


def load_official_module(relative_path: str) -> types.ModuleType:
    """Import `scgpt/<relative_path>` (e.g. "model/model.py") without running `scgpt/__init__.py`.

    A stand-in `logger` is provided because several modules do `from .. import logger`.
    """
    root = official_source_dir()
    _ensure_package(_PACKAGE, root)
    sys.modules[_PACKAGE].logger = logging.getLogger("official_scgpt")
    return load_source_module(_PACKAGE, root, relative_path)


def stub_official_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for imports of `preprocess.py` and `tokenizer/gene_tokenizer.py` that our tests never use.

    `preprocess.py` does `from scgpt import logger` (an absolute import of the package, whose `__init__`
    fails), and `gene_tokenizer.py` subclasses torchtext's `Vocab`. Call before `load_official_module`.
    """
    scgpt = types.ModuleType("scgpt")
    scgpt.logger = logging.getLogger("official_scgpt")
    torchtext_vocab = types.ModuleType("torchtext.vocab")
    torchtext_vocab.Vocab = type("Vocab", (), {})
    torchtext = types.ModuleType("torchtext")
    torchtext.vocab = torchtext_vocab
    for name, module in (("scgpt", scgpt), ("torchtext", torchtext), ("torchtext.vocab", torchtext_vocab)):
        monkeypatch.setitem(sys.modules, name, module)
