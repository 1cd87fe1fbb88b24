"""tidewatch's exceptions. Native errors map to these one to one (see src/python/mod.rs)."""
from tidewatch._native import (
    ConfigError,
    InputError,
    ModelError,
    SchemaError,
    TidewatchError,
    TidewatchIOError,
)

__all__ = ["TidewatchError", "SchemaError", "InputError", "ModelError", "ConfigError", "TidewatchIOError"]

for _cls in (TidewatchError, SchemaError, InputError, ModelError, ConfigError, TidewatchIOError):
    _cls.__module__ = "tidewatch"  # show `tidewatch.SchemaError` in tracebacks, not the extension's name
