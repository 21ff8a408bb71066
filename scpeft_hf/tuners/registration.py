"""scPEFT's own peft types and their registration with peft.

peft's `PeftType` is a closed enum and `register_peft_method` only accepts its members, so scPEFT methods get
their own str-enum and are written straight into peft's lookup tables. A str-enum member hashes and compares
equal to the string that `save_pretrained` stores in `adapter_config.json`, so `PeftConfig.from_pretrained`,
`PeftModel.from_pretrained` and `load_adapter` find our classes once `scpeft_hf` is imported.

Without `import scpeft_hf`, peft has no way to discover these types (it has no entry points) and fails with
`KeyError: 'SCPEFT_ENCODER_ADAPTER'` (or `..._TOKEN_ADAPTER`, `..._PREFIX_ADAPTER`); the `SCPEFT_` in the
type names is there so that this message points at the package to import.
"""

from __future__ import annotations

import enum

from peft.config import PeftConfig
from peft.mapping import (
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
)
from peft.tuners.tuners_utils import BaseTuner


# str + Enum like peft's own PeftType (not StrEnum), so str() and repr() of both kinds of types look alike
class ScPeftType(str, enum.Enum):  # noqa: UP042
    """peft types of the scPEFT methods (stored as `peft_type` in `adapter_config.json`)."""

    ENCODER_ADAPTER = "SCPEFT_ENCODER_ADAPTER"
    TOKEN_ADAPTER = "SCPEFT_TOKEN_ADAPTER"
    PREFIX_ADAPTER = "SCPEFT_PREFIX_ADAPTER"

    @property
    def prefix(self) -> str:
        """Prefix of the method's parameter names (transformers derives it the same way from the value)."""
        return self.value.lower() + "_"


def register_scpeft_method(
    peft_type: ScPeftType, config_cls: type[PeftConfig], tuner_cls: type[BaseTuner]
) -> None:
    """Make `peft_type` known to peft: config class, tuner class and parameter-name prefix.

    Registering the same classes again (e.g. after `importlib.reload`) is a no-op; registering different
    classes under a type or prefix that is already taken raises, as peft's own `register_peft_method` does.
    """
    if tuner_cls.prefix != peft_type.prefix:
        raise ValueError(
            f"{tuner_cls.__name__}.prefix is {tuner_cls.prefix!r} but {peft_type!r} needs {peft_type.prefix!r}; "
            "set the tuner's prefix to the lower-cased peft type followed by '_'"
        )
    for mapping, value in (
        (PEFT_TYPE_TO_CONFIG_MAPPING, config_cls),
        (PEFT_TYPE_TO_TUNER_MAPPING, tuner_cls),
    ):
        registered = mapping.get(peft_type)
        if registered is not None and registered.__qualname__ != value.__qualname__:
            raise KeyError(
                f"peft type {peft_type.value!r} is already registered to {registered.__qualname__}; "
                f"cannot register {value.__qualname__} under the same name"
            )
    for other_type, other_prefix in PEFT_TYPE_TO_PREFIX_MAPPING.items():
        if other_prefix == peft_type.prefix and other_type != peft_type:
            raise KeyError(f"prefix {other_prefix!r} is already used by peft type {other_type!r}")
    PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
    PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = tuner_cls
    PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = peft_type.prefix
