"""The LSTM-VAE from Python: train on Arrow data of normal operation, save, load a Detector, score.

    import tidewatch
    model = tidewatch.train(table, tidewatch.ModelConfig(epochs=20), sensors=tidewatch.SensorSet.swat())
    version = model.save("/weights/swat")
    detector = tidewatch.Detector.load("/weights/swat")
    scored = detector.score(record_batch)   # pyarrow.RecordBatch, docs/scoring-contract.md

Training runs in the native core with the GIL released; the progress callback is the only Python it runs.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any, Union

import pyarrow as pa

from tidewatch import _native
from tidewatch._native import Detector, Model, ModelConfig, SensorSet

log = logging.getLogger("tidewatch.train")

Progress = Union[Callable[[dict[str, Any]], Any], str, bool, None]

__all__ = ["Detector", "Model", "ModelConfig", "train", "as_record_batches", "ProgressBar"]


def as_record_batches(data: Any, what: str = "data") -> list[pa.RecordBatch]:
    """Record batches of `data`: a pyarrow Table or RecordBatch, an iterable of them, a pandas DataFrame,
    or any object exporting the Arrow C stream interface (``__arrow_c_stream__``)."""
    if isinstance(data, pa.RecordBatch):
        return [data]
    if isinstance(data, pa.Table):
        return data.to_batches()
    if hasattr(data, "__arrow_c_stream__"):
        return pa.table(data).to_batches()
    if type(data).__module__.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False).to_batches()
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)):
        batches: list[pa.RecordBatch] = []
        for i, part in enumerate(data):
            if isinstance(part, (pa.RecordBatch, pa.Table)) or hasattr(part, "__arrow_c_stream__"):
                batches += as_record_batches(part, f"{what}[{i}]")
            else:
                raise _native.InputError(f"{what}[{i}]: expected a pyarrow RecordBatch or Table, got {type(part).__name__}")
        return batches
    raise _native.InputError(f"{what}: expected a pyarrow Table or RecordBatch (or a list of them), got {type(data).__name__}")


def _sensor_set(sensors: SensorSet | str | os.PathLike[str] | None, batches: list[pa.RecordBatch]) -> SensorSet:
    if isinstance(sensors, SensorSet):
        return sensors
    if sensors is not None:
        return SensorSet.load(sensors)
    swat = SensorSet.swat()
    names = set(batches[0].schema.names) if batches else set()
    if set(swat.sensors) <= names:
        return swat
    raise _native.ConfigError(
        "sensors=... is needed: the data does not hold the 51 SWaT columns; pass a SensorSet or a plant file")


def _config(config: ModelConfig | Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> ModelConfig:
    if config is None:
        fields: dict[str, Any] = {}
    elif isinstance(config, ModelConfig):
        fields = config.to_dict()
    elif isinstance(config, Mapping):
        fields = dict(config)
    else:
        raise _native.ConfigError(f"config must be a ModelConfig or a dict, got {type(config).__name__}")
    fields.update(overrides)
    return ModelConfig(**fields)


class ProgressBar:
    """One self-rewriting line per training run on a terminal: epoch, bar, losses, β, time per epoch."""

    def __init__(self, stream: IO[str] | None = None, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.last_len = 0

    def __call__(self, epoch: dict[str, Any]) -> None:
        done = int(self.width * epoch["epoch"] / max(1, epoch["epochs"]))
        bar = "#" * done + "-" * (self.width - done)
        mark = "*" if epoch["improved"] else " "
        line = (f"epoch {epoch['epoch']:>3}/{epoch['epochs']} [{bar}] train {epoch['train_loss']:.5f} "
                f"val {epoch['val_loss']:.5f}{mark} beta {epoch['beta']:.3g} {epoch['seconds']:.1f}s/epoch")
        self.stream.write("\r" + line + " " * max(0, self.last_len - len(line)))
        self.stream.flush()
        self.last_len = len(line)

    def close(self) -> None:
        if self.last_len:
            self.stream.write("\n")
            self.stream.flush()


def _log_epoch(epoch: dict[str, Any]) -> None:
    log.info("epoch %d/%d: train loss %.6f, validation loss %.6f%s (beta %.3g, %.1fs)", epoch["epoch"],
             epoch["epochs"], epoch["train_loss"], epoch["val_loss"], " (best)" if epoch["improved"] else "",
             epoch["beta"], epoch["seconds"])


def train(
    data: Any,
    config: ModelConfig | Mapping[str, Any] | None = None,
    *,
    sensors: SensorSet | str | os.PathLike[str] | None = None,
    validation: Any = None,
    scaler: _native.Scaler | None = None,
    progress: Progress = "auto",
    **overrides: Any,
) -> Model:
    """Trains the LSTM-VAE on rows of normal operation and calibrates its thresholds.

    `data`: Arrow rows (see `as_record_batches`) with the plant's sensors by name, optionally `plant`
    and `timestamp`, in time order per plant. `config`: a ModelConfig or dict; keyword `overrides`
    (e.g. ``epochs=5``) change single fields. `sensors`: a SensorSet or plant file (default: SWaT when
    its 51 columns are present). `validation`: held-out normal rows; by default the last
    ``validation_fraction`` of the data is held out. `scaler`: fitted on the training data elsewhere
    (e.g. by Spark); by default a min-max scaler is fitted on the training part. `progress`: "auto" (a
    bar on a terminal, else INFO log lines on logger ``tidewatch.train``), "bar", "log", None/False,
    or a callable receiving each epoch's dict. Returns the trained Model (save it with ``.save(path)``).
    """
    batches = as_record_batches(data, "data")
    held_out = None if validation is None else as_record_batches(validation, "validation")
    plant = _sensor_set(sensors, batches)
    cfg = _config(config, overrides)
    bar: ProgressBar | None = None
    if progress == "auto":
        progress = "bar" if sys.stderr.isatty() else "log"
    if progress == "bar":
        bar = ProgressBar()
        callback: Callable[[dict[str, Any]], Any] | None = bar
    elif progress == "log":
        callback = _log_epoch
    elif progress is None or progress is False:
        callback = None
    elif callable(progress):
        callback = progress
    else:
        raise _native.ConfigError(f"progress must be 'auto', 'bar', 'log', None or a callable, got {progress!r}")
    try:
        return _native.train_model(batches, cfg, plant, validation=held_out, scaler=scaler, progress=callback)
    finally:
        if bar is not None:
            bar.close()
