"""Registering the cell processors with `transformers.AutoProcessor`, without importing the data stack.

`AutoProcessor.from_pretrained(folder_or_repo)` reads `processor_class` from `processor_config.json` and looks
the name up with `processor_class_from_name`, which also searches the classes registered with
`AutoProcessor.register(config_class, processor_class)`. The real processors import anndata, datasets and
pyarrow, which `import scpeft_hf` must not need; so each name is registered as a small stand-in class of the
same name whose `from_pretrained` imports the real class, puts it in the stand-in's place in transformers'
mapping, and loads with it. Loading a folder therefore returns a real `ScGPTProcessor` /
`GeneformerProcessor`, and only then needs the data stack.

`scpeft_hf/__init__.py` calls `register_processors` with (config class, processor name) pairs: the config class is
the key transformers files the processor under, and must be one of ours (transformers refuses its own, such as
`BertConfig`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from transformers import AutoProcessor, PreTrainedConfig

# processor name -> config classes it is registered under
_REGISTERED: dict[str, list[type[PreTrainedConfig]]] = {}


def register_processors(pairs: Iterable[tuple[type[PreTrainedConfig], str]]) -> None:
    """Register each processor of `scpeft_hf.data` (by class name) under its config class with `AutoProcessor`."""
    for config_class, name in pairs:
        AutoProcessor.register(config_class, _stand_in(name), exist_ok=True)
        _REGISTERED.setdefault(name, []).append(config_class)


def processor_class(name: str) -> type:
    """The real processor class `name` of `scpeft_hf.data`, registered in place of its stand-in."""
    real = getattr(importlib.import_module("scpeft_hf.data"), name)
    for config_class in _REGISTERED.get(name, []):
        AutoProcessor.register(config_class, real, exist_ok=True)
    return real


def _stand_in(name: str) -> type:
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        return processor_class(name).from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    return type(
        name,
        (),
        {
            "__module__": __name__,
            "__doc__": f"Stands in for `scpeft_hf.data.{name}` until first use (see `scpeft_hf.data.auto`).",
            "from_pretrained": classmethod(from_pretrained),
        },
    )


__all__ = ["processor_class", "register_processors"]
