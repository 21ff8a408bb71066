"""Load the official scGPT v0.2.4 source files (installed with `pip install --no-deps scgpt==0.2.4`) by path.

`import scgpt` fails on current torch (it imports torchtext), so modules are loaded one file at a time
under a private package name. Tests use this; benchmarks use `load_source_module` for other official code
(scPEFT's model files), which needs no pytest.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

_PACKAGE = "_official_scgpt"


def official_source_dir() -> Path:
    """Folder of the installed `scgpt` distribution's sources, or skip the test with how to install it."""
    import pytest

    try:
        dist = importlib.metadata.distribution("scgpt")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("official scGPT code not installed: pip install --no-deps scgpt==0.2.4")
    if dist.version != "0.2.4":
        pytest.skip(f"parity tests target scgpt 0.2.4, found {dist.version}")
    return Path(dist.locate_file("scgpt"))


def _ensure_package(name: str, path: Path) -> None:
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package


def load_source_module(package: str, root: Path, relative_path: str) -> types.ModuleType:
    """Import `<root>/<relative_path>` as module `<package>.<dotted relative path>`, running no `__init__.py`.

    Parent packages are empty stand-ins whose `__path__` points into `root`, so relative imports between sibling
    files (also lazy ones inside functions) find the real files. A module already loaded is returned as is.
    """
    _ensure_package(package, root)
    parts = Path(relative_path).with_suffix("").parts
    for depth in range(1, len(parts)):
        _ensure_package(".".join((package, *parts[:depth])), root.joinpath(*parts[:depth]))
    name = ".".join((package, *parts))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, root / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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
