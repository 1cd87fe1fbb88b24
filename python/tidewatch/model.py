"""The LSTM-VAE from Python: train on Arrow data of normal operation, save, load a Detector, score.

    import tidewatch
    model = tidewatch.train(table, tidewatch.ModelConfig(epochs=20), sensors=tidewatch.SensorSet.swat())
    version = model.save("/weights/swat")
    detector = tidewatch.Detector.load("/weights/swat")
    scored = detector.score(record_batch)   # pyarrow.RecordBatch, docs/scoring-contract.md

Training runs in the native core with the GIL released; the progress callback is the only Python it runs.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Union

import pyarrow as pa

from tidewatch import _native
from tidewatch._native import Detector, Model, ModelConfig, SensorSet

log = logging.getLogger("tidewatch.train")

Progress = Union[Callable[[dict[str, Any]], Any], str, bool, None]

__all__ = ["Detector", "Model", "ModelConfig", "train", "import_legacy", "as_record_batches", "ProgressBar"]


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


# Module names that legacy LSTM-VAE code commonly gives the five parts of the network, per tidewatch name.
LEGACY_ALIASES: dict[str, tuple[str, ...]] = {
    "encoder": ("encoder", "enc", "lstm_enc", "encoder_lstm", "lstm_encoder", "enc_lstm"),
    "fc_mu": ("fc_mu", "mu", "fc21", "hidden2mean", "mean", "z_mean", "enc_mu", "linear_mu"),
    "fc_logvar": ("fc_logvar", "logvar", "log_var", "fc22", "hidden2logvar", "z_log_var", "enc_logvar",
                  "linear_logvar", "fc_var"),
    "decoder": ("decoder", "dec", "lstm_dec", "decoder_lstm", "lstm_decoder", "dec_lstm"),
    "output": ("output", "out", "fc_out", "output_layer", "linear_out", "dec_out", "hidden2output"),
}
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "model.")


def _legacy_state_dict(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    try:
        # weights_only: tensors and plain containers only; no code from the file ever runs.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise _native.ModelError(
            f"{path}: not a plain PyTorch state dict that can be read without running code from the file "
            f"({str(e).splitlines()[0]}); in the old code, save `model.state_dict()` instead of the model") from e
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise _native.ModelError(f"{path}: expected a state dict (parameter name -> tensor), got {type(obj).__name__}")
    return dict(obj)


def _rename(names: Iterable[str], mapping: Mapping[str, str] | None, path: Path) -> dict[str, str]:
    """Old name -> tidewatch name: user `mapping` (old module prefix -> tidewatch module) first, then
    LEGACY_ALIASES; a wrapper prefix such as `module.` (DataParallel) is dropped."""
    alias = {old: new for new, olds in LEGACY_ALIASES.items() for old in olds}
    alias.update(mapping or {})
    out: dict[str, str] = {}
    for name in names:
        bare = name
        for prefix in _PREFIXES:
            if bare.startswith(prefix):
                bare = bare[len(prefix):]
        module, _, param = bare.rpartition(".")
        new = alias.get(module)
        if new is None:
            raise _native.ModelError(
                f"{path}: parameter '{name}' belongs to module '{module}', which is not part of tidewatch's LSTM-VAE "
                f"(encoder LSTM, fc_mu, fc_logvar, decoder LSTM fed the latent, output Linear); "
                f"pass mapping={{'{module}': '<encoder|fc_mu|fc_logvar|decoder|output>'}} if it is one of them")
        out[name] = f"{new}.{param}"
    if len(set(out.values())) != len(out):
        raise _native.ModelError(f"{path}: two parameters map onto the same tidewatch name: {sorted(out)}")
    return out


def import_legacy(
    path: str | os.PathLike[str],
    data: Any,
    config: ModelConfig | Mapping[str, Any] | None = None,
    *,
    sensors: SensorSet | str | os.PathLike[str] | None = None,
    scaler: _native.Scaler | None = None,
    mapping: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Model:
    """Converts a legacy PyTorch `.pth` state dict of an equivalent LSTM-VAE into a tidewatch Model.

    The file is read with ``torch.load(weights_only=True)``: tensors only, no code runs. Parameter names
    are mapped onto tidewatch's (see LEGACY_ALIASES; `mapping` adds old-module -> new-module entries);
    hidden size, latent size and layers are read from the shapes. The legacy model came without
    calibrated thresholds: `data` (normal operation, ideally not what the weights were trained on)
    calibrates them, and `scaler` should be the scaler the old model was trained with (default: min-max
    fitted on `data`). Save the result with ``.save(path)``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise _native.ModelError(f"{path}: no such file")
    state = _legacy_state_dict(path)
    names = _rename(state, mapping, path)
    weights = {names[k]: v.detach().to(dtype=torch.float32).numpy() for k, v in state.items()}
    batches = as_record_batches(data, "data")
    plant = _sensor_set(sensors, batches)

    def shape(name: str) -> tuple[int, ...]:
        if name not in weights:
            raise _native.ModelError(f"{path}: no '{name}' parameter after renaming (have {sorted(weights)})")
        return tuple(weights[name].shape)

    hidden = shape("encoder.weight_hh_l0")[1]
    latent = shape("fc_mu.weight")[0]
    layers = len([n for n in weights if re.fullmatch(r"encoder\.weight_ih_l\d+", n)])
    n_features = shape("encoder.weight_ih_l0")[1]
    if n_features != len(plant.sensors):
        raise _native.ModelError(
            f"{path}: the encoder reads {n_features} sensors, plant '{plant.plant}' has {len(plant.sensors)}")
    cfg = _config(config, overrides)
    for field, value in (("hidden_size", hidden), ("latent_size", latent), ("layers", layers)):
        given = (dict(config) if isinstance(config, Mapping) else {}).get(field, overrides.get(field))
        if given is not None and given != value:
            raise _native.ConfigError(f"model config field '{field}': {given} given, the weights in {path} have {value}")
        setattr(cfg, field, value)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    source = f"legacy import of {path.name} (sha256 {digest[:16]})"
    return _native.import_weights(weights, batches, cfg, plant, scaler=scaler, source=source)
