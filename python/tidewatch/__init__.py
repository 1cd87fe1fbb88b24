"""tidewatch: real-time anomaly detection for industrial control systems."""
from tidewatch._torchlibs import preload_torch_libraries as _preload

# The extension links libtorch; make it loadable without importing torch (which costs seconds).
_preload()
from tidewatch import _native  # noqa: E402
from tidewatch.errors import (  # noqa: E402
    ConfigError,
    InputError,
    ModelError,
    SchemaError,
    TidewatchError,
    TidewatchIOError,
)

from tidewatch._native import (  # noqa: E402
    Scaler,
    ScalerStats,
    SensorSet,
    WindowStream,
    sensor_matrix,
)
from tidewatch.model import Detector, Model, ModelConfig, import_legacy, train  # noqa: E402
from tidewatch._native import BatchAggregate, IncidentTracker, MetricsRegistry, MetricsServer  # noqa: E402

__version__ = "0.1.0"


def cuda_available() -> bool:
    """True when the native core's libtorch can reach a CUDA device."""
    return _native.cuda_available()


__all__ = [
    "__version__",
    "cuda_available",
    "SensorSet",
    "Scaler",
    "ScalerStats",
    "WindowStream",
    "sensor_matrix",
    "BatchAggregate", "IncidentTracker", "MetricsRegistry", "MetricsServer",
    "Detector",
    "Model",
    "ModelConfig",
    "train",
    "import_legacy",
    "TidewatchError",
    "SchemaError",
    "InputError",
    "ModelError",
    "ConfigError",
    "TidewatchIOError",
]
