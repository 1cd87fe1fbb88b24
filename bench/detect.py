"""Detection benchmark of issue 13: one harness, one protocol, every method side by side, on every dev dataset.

Protocol (fixed before any run; nothing here is tuned on test labels):

Datasets (read from ../shared/data beside the repository, never copied into the repository):
  skab     SKAB's per-file protocol: for each of the 34 labelled files, fit on its first 400 rows and score
           the rest; files are separate streams, their test rows are concatenated for the metrics. 1 Hz
           (the files' own timestamps).
  smap     NASA SMAP, 12 channels: one model per channel, fitted on train/<ch>.npy only, scoring
           test/<ch>.npy; labels from labeled_anomalies.csv (inclusive [first, last] test-row ranges).
           Columns c0..c24; rows 60 s apart (timestamps from 2020-01-01 00:00 UTC, the test file
           continuing the train file's clock). Channels are separate streams.
  sim-1s   the simulator (tidewatch.simulator.simulate): train on --sim-train-hours of normal operation
           (seed S), test on the 36 physical attacks spread over --sim-eval-s seconds (seed S+1, clock
           continuing where training ended).
  sim-10s, sim-60s
           the same two runs resampled to 10 s / 60 s by the MEAN of each block of 10 / 60 source rows
           (a historian's averaged export; the block's first timestamp; a trailing partial block is
           dropped). A resampled row is labelled attack if any of its source rows is. Training data is
           resampled the same way.
  drift    train on the first 12 h of an attack-free simulated run (seed S+2), score the next 48 h (all
           normal): flagged share (overall and per block), false-alarm episodes and false incidents per day.

Methods (every one sees the same rows; rows of a stream are scored with nothing from the test labels):
  tidewatch  tidewatch.train with tidewatch.ModelConfig DEFAULTS except device="cpu", threads, the epochs
             cap (--epochs; early stopping as by default) and seed, plus any --tidewatch-config overrides.
             Its own calibrated threshold; flags = the `flag` column of Detector.score. The last window-1
             training rows are prepended as `_tw_context` so every test row has a full window (the Spark
             job does the same with its carried tail). Run through ONE function: run_tidewatch().
  knn        pyod KNN (k=5, largest distance) on rows standardised with the fit part's mean / std (a column
             constant there keeps unit scale); its reference set is at most --knn-max-ref rows of the fit
             part, evenly strided (exact KNN on 1 Hz days would dominate the run time).
  pca        tidewatch.baselines.PcaT2QDetector (standardised, 95 % variance, max of T² and Q over their
             own limits).
  iforest    pyod IForest (100 trees, seed); score = minus the forest's score_samples (the paper's s(x) in
             (0, 1], so one positive scale per stream).
  ecod       ECOD's score (pyod.models.ecod.ECOD, Li et al. 2022) with the empirical CDFs of the fit part
             only: pyod's decision_function re-estimates them on train+test rows together, which would let
             each test set shape its own scores (score_one_at_a_time equals pyod's decision_function on a
             single row; tests/test_bench_detect.py checks it).
  random     uniform random scores, seeded per stream: the floor.
  Peers fit on the first 80 % of a stream's training rows; their threshold is the 99th percentile of their
  scores on the last 20 % (held-out normal rows). Peers score rows, not windows.

Metrics per dataset and method (tidewatch.evaluation.evaluate, tidewatch.incidents):
  point-wise P, R, F1, FAR % (FP / normal rows); event recall (labelled runs with >= 1 flag inside);
  PR-AUC of the scores normalised per stream by that stream's threshold (score / threshold, or
  score - threshold + 1 when the threshold is <= 0; per row for tidewatch, whose threshold column may vary)
  so one curve covers every stream; false alarms per day on normal rows (runs of flagged normal rows per day
  of normal rows); median detection delay (s); incident-wise F1 and false incidents per day (every method's
  flags grouped by tidewatch.incidents.incidents_from_rows with the dataset's sample period, one plant per
  stream). Point-adjusted F1 (PA-F1*) is printed only next to the point-wise F1 and is INFLATED.

Run: ``make bench-detect`` or ``.venv/bin/python bench/detect.py [--quick] [--methods tidewatch,knn]
[--datasets skab,smap] [--tidewatch-config '{"score_method": "sensor_max"}']``.
Writes bench/out/detect/detect.json, detect.md and one PNG per dataset. Measured: 266 s for the full run on the
2-core dev machine at load ~3 (about 75 % of it tidewatch training; 1 Hz KNN scoring is most of the rest); about
4x that while other builds and benchmarks share the machine. --quick: about 1.5 minutes.
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import math
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The shared dev data beside the repository (../shared/data), or TIDEWATCH_SHARED_DATA.
DATA = Path(os.environ.get("TIDEWATCH_SHARED_DATA",
                   Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_OUT = REPO / "bench" / "out" / "detect"
SIM_START = dt.datetime(2015, 12, 28, 10, 0, 0, tzinfo=dt.timezone.utc)
SMAP_START = np.datetime64("2020-01-01T00:00:00", "us")
SMAP_CHANNELS = ("P-1", "S-1", "E-1", "E-2", "A-1", "D-1", "P-3", "G-1", "F-1", "T-1", "B-1", "R-1")
SKAB_TRAIN_ROWS = 400
SIM_NON_SENSORS = ("plant", "timestamp", "label", "attack_id", "attacked_points")
PEER_FIT_FRACTION = 0.8
PEER_QUANTILE = 0.99
ALL_DATASETS = ("skab", "smap", "sim-1s", "sim-10s", "sim-60s", "drift")
ALL_METHODS = ("tidewatch", "knn", "pca", "iforest", "ecod", "random")
METHOD_NAMES = {"tidewatch": "tidewatch LSTM-VAE", "knn": "KNN (pyod)", "pca": "PCA T²+Q", "iforest": "IForest (pyod)",
                "ecod": "ECOD (pyod formula)", "random": "random floor"}


# ------------------------------------------------------------------------------------------------
# data: a dataset is a list of streams, each with its own training rows and test rows
# ------------------------------------------------------------------------------------------------


@dataclass
class Stream:
    name: str  # plant name in the incident grouping, e.g. "valve1/3" or "P-1"
    sensors: list[str]
    train_times: np.ndarray  # datetime64[us], UTC
    train: np.ndarray  # rows x sensors, float64
    test_times: np.ndarray
    test: np.ndarray
    labels: np.ndarray  # bool, one per test row


@dataclass
class Dataset:
    key: str
    title: str
    period_s: float
    streams: list[Stream]
    labelled: bool = True
    notes: list[str] = field(default_factory=list)


def smap_label_rows(n_rows: int, sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """Labels of a SMAP test file from labeled_anomalies.csv's [[first, last], ...]: both ends INCLUSIVE."""
    labels = np.zeros(n_rows, dtype=bool)
    for first, last in sequences:
        if not 0 <= first <= last < n_rows:
            raise ValueError(f"SMAP label range [{first}, {last}] outside the {n_rows} test rows")
        labels[first:last + 1] = True
    return labels


def regular_times(start: np.datetime64, n_rows: int, period_s: float) -> np.ndarray:
    return start + (np.arange(n_rows) * int(round(period_s * 1e6))).astype("timedelta64[us]")


def resample_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each block of `factor` consecutive rows; a trailing partial block is dropped."""
    n = (len(values) // factor) * factor
    return values[:n].reshape(-1, factor, *values.shape[1:]).mean(axis=1)


def resample_labels(labels: np.ndarray, factor: int) -> np.ndarray:
    """A resampled row is anomalous if ANY of its `factor` source rows is."""
    n = (len(labels) // factor) * factor
    return np.asarray(labels[:n], dtype=bool).reshape(-1, factor).any(axis=1)


def resample_times(times: np.ndarray, factor: int) -> np.ndarray:
    """Each block's first timestamp."""
    n = (len(times) // factor) * factor
    return times[:n:factor]


def load_skab(n_files: int | None) -> Dataset:
    sys.path.insert(0, str(REPO / "bench"))
    from skab import SENSORS, load_skab as load_skab_files  # the same files, order and checks as bench/skab.py

    files = load_skab_files(DATA / "skab")
    if n_files is not None and n_files < len(files):
        files = [files[i] for i in np.linspace(0, len(files) - 1, n_files).round().astype(int)]
    streams = []
    for f in files:
        times = f.timestamps.astype("datetime64[us]")
        streams.append(Stream(f.name, list(SENSORS), times[:SKAB_TRAIN_ROWS], f.values[:SKAB_TRAIN_ROWS],
                              times[SKAB_TRAIN_ROWS:], f.values[SKAB_TRAIN_ROWS:],
                              f.labels[SKAB_TRAIN_ROWS:].astype(bool)))
    train_anomalous = sum(int(f.labels[:SKAB_TRAIN_ROWS].sum()) for f in files)
    return Dataset("skab", f"SKAB ({len(files)} files, fit on the first {SKAB_TRAIN_ROWS} rows of each)", 1.0,
                   streams, notes=[f"{train_anomalous} training rows are labelled anomalous and kept, as SKAB's "
                                   "protocol says"])


def load_smap(channels: Sequence[str]) -> Dataset:
    import csv

    ranges = {}
    with open(DATA / "smap" / "labeled_anomalies.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            ranges[row["chan_id"]] = ast.literal_eval(row["anomaly_sequences"])
    streams = []
    for ch in channels:
        train = np.load(DATA / "smap" / "train" / f"{ch}.npy").astype(np.float64)
        test = np.load(DATA / "smap" / "test" / f"{ch}.npy").astype(np.float64)
        times = regular_times(SMAP_START, len(train) + len(test), 60.0)
        streams.append(Stream(ch, [f"c{i}" for i in range(train.shape[1])], times[:len(train)], train,
                              times[len(train):], test, smap_label_rows(len(test), ranges[ch])))
    return Dataset("smap", f"SMAP ({len(channels)} channels, one model each)", 60.0, streams)


def _sim_arrays(table: Any) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    sensors = [c for c in table.column_names if c not in SIM_NON_SENSORS]
    values = np.column_stack([table[s].to_numpy() for s in sensors]).astype(np.float64)
    times = table["timestamp"].to_numpy().astype("datetime64[us]")
    labels = table["label"].to_numpy().astype(bool) if "label" in table.column_names else np.zeros(len(times), bool)
    return sensors, times, values, labels


def load_simulator(train_hours: float, eval_s: int, attacks: Any, seed: int, factors: Sequence[int]) -> list[Dataset]:
    from tidewatch.simulator import simulate

    train_s = int(round(train_hours * 3600))
    train = simulate(train_s, seed=seed, start=SIM_START, attacks="none")
    test = simulate(eval_s, seed=seed + 1, start=SIM_START + dt.timedelta(seconds=train_s), attacks=attacks,
                    timing="spread")
    sensors, tr_times, tr_values, _ = _sim_arrays(train)
    _, te_times, te_values, labels = _sim_arrays(test)
    out = []
    for factor in factors:
        stream = Stream("swat", sensors, resample_times(tr_times, factor), resample_mean(tr_values, factor),
                        resample_times(te_times, factor), resample_mean(te_values, factor),
                        resample_labels(labels, factor))
        n_attacks = "all 36" if attacks == "all" else f"{len(attacks)}"
        out.append(Dataset(f"sim-{factor}s", f"simulator, {n_attacks} attacks, {factor} s rows"
                           + (" (block means)" if factor > 1 else ""), float(factor), [stream],
                           notes=[f"train {train_hours:g} h normal (seed {seed}), attack run {eval_s} s "
                                  f"(seed {seed + 1})"]))
    return out


def load_drift(train_hours: float, test_hours: float, seed: int) -> Dataset:
    from tidewatch.simulator import simulate

    train_s, test_s = int(round(train_hours * 3600)), int(round(test_hours * 3600))
    run = simulate(train_s + test_s, seed=seed, start=SIM_START, attacks="none")
    sensors, times, values, _ = _sim_arrays(run)
    stream = Stream("swat", sensors, times[:train_s], values[:train_s], times[train_s:], values[train_s:],
                    np.zeros(test_s, dtype=bool))
    return Dataset("drift", f"drift: train on the first {train_hours:g} h of an attack-free run, score the next "
                   f"{test_hours:g} h", 1.0, [stream], labelled=False, notes=[f"seed {seed}, all rows normal"])


# ------------------------------------------------------------------------------------------------
# methods
# ------------------------------------------------------------------------------------------------


def peer_split(n_rows: int, fit_fraction: float = PEER_FIT_FRACTION) -> int:
    """Rows [0, k) fit a peer, rows [k, n) calibrate its threshold."""
    k = int(math.floor(n_rows * fit_fraction))
    if k < 2 or n_rows - k < 1:
        raise ValueError(f"{n_rows} training rows are too few to fit on 80 % and calibrate on 20 %")
    return k


def peer_threshold(calibration_scores: np.ndarray, quantile: float = PEER_QUANTILE) -> float:
    """The peers' threshold: the `quantile` of their scores on held-out normal rows."""
    return float(np.quantile(np.asarray(calibration_scores, dtype=np.float64), quantile))


def standardiser(fit: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    mean = fit.mean(axis=0)
    std = fit.std(axis=0)
    std[std <= 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0  # constant in training: unit scale (raw units)
    return lambda x: (x - mean) / std


class Ecod:
    """ECOD's score (pyod.models.ecod) against the fit rows' empirical CDFs only: each scored row is
    ranked among the fit rows plus itself, so test rows never shape each other's scores."""

    def fit(self, x: np.ndarray) -> Ecod:
        from scipy.stats import skew

        self.sorted_ = np.sort(x, axis=0)
        with warnings.catch_warnings():  # constant columns: scipy warns, the sign is 0 or nan (set to 0)
            warnings.simplefilter("ignore", RuntimeWarning)
            self.skew_sign_ = np.sign(skew(x, axis=0))
        self.skew_sign_[~np.isfinite(self.skew_sign_)] = 0.0
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        n = self.sorted_.shape[0]
        u_l = np.empty_like(x)
        u_r = np.empty_like(x)
        for j in range(x.shape[1]):
            col = self.sorted_[:, j]
            le = np.searchsorted(col, x[:, j], side="right")
            ge = n - np.searchsorted(col, x[:, j], side="left")
            u_l[:, j] = -np.log((le + 1) / (n + 1))
            u_r[:, j] = -np.log((ge + 1) / (n + 1))
        s = self.skew_sign_
        u_skew = u_l * -np.sign(s - 1) + u_r * np.sign(s + 1)
        return np.maximum(np.maximum(u_l, u_r), u_skew).sum(axis=1)


Fit = Callable[[np.ndarray], None]
Score = Callable[[np.ndarray], np.ndarray]


def make_peer(key: str, seed: int, knn_max_ref: int) -> tuple[Fit, Score]:
    """fit(rows) and score(rows) of one peer, fresh per stream."""
    state: dict[str, Any] = {}
    if key == "knn":
        from pyod.models.knn import KNN

        def fit(x: np.ndarray) -> None:
            state["z"] = standardiser(x)
            ref = state["z"](x)
            if len(ref) > knn_max_ref:
                ref = ref[np.linspace(0, len(ref) - 1, knn_max_ref).round().astype(int)]
            state["m"] = KNN(n_neighbors=min(5, len(ref) - 1), method="largest").fit(ref)

        return fit, lambda x: state["m"].decision_function(state["z"](x))
    if key == "pca":
        from tidewatch.baselines import PcaT2QDetector

        def fit(x: np.ndarray) -> None:
            state["m"] = PcaT2QDetector(explained_variance=0.95, quantile=PEER_QUANTILE).fit(x)

        return fit, lambda x: state["m"].score(x)
    if key == "iforest":
        from pyod.models.iforest import IForest

        def fit(x: np.ndarray) -> None:
            state["m"] = IForest(n_estimators=100, random_state=seed, n_jobs=1).fit(x)

        return fit, lambda x: -state["m"].detector_.score_samples(x)
    if key == "ecod":
        def fit(x: np.ndarray) -> None:
            state["m"] = Ecod().fit(x)

        return fit, lambda x: state["m"].score(x)
    if key == "random":
        def fit(x: np.ndarray) -> None:
            state["rng"] = np.random.default_rng(seed)

        return fit, lambda x: state["rng"].uniform(size=len(x))
    raise ValueError(f"unknown peer {key!r}")


def run_peer(key: str, stream: Stream, seed: int, knn_max_ref: int) -> dict[str, Any]:
    """Fit on the first 80 % of the stream's training rows, threshold = 99th percentile of the scores of
    the last 20 %, score the test rows."""
    fit, score = make_peer(key, seed, knn_max_ref)
    k = peer_split(len(stream.train))
    t0 = time.perf_counter()
    fit(stream.train[:k])
    threshold = peer_threshold(score(stream.train[k:]))
    t1 = time.perf_counter()
    scores = np.asarray(score(stream.test), dtype=np.float64)
    t2 = time.perf_counter()
    return {"scores": scores, "flags": scores > threshold, "threshold": np.full(len(scores), threshold),
            "train_s": t1 - t0, "score_s": t2 - t1, "unscored": 0}


def _arrow(stream_name: str, sensors: list[str], times: np.ndarray, values: np.ndarray, n_context: int = 0) -> Any:
    import pyarrow as pa

    columns: dict[str, Any] = {"plant": pa.array([stream_name.replace("/", "_")] * len(times)),
                               "timestamp": pa.array(times.astype("datetime64[us]"), type=pa.timestamp("us", tz="UTC"))}
    for i, s in enumerate(sensors):
        columns[s] = pa.array(values[:, i])
    if n_context:
        columns["_tw_context"] = pa.array(np.arange(len(times)) < n_context)
    return pa.table(columns)


def tidewatch_config(overrides: dict[str, Any] | None, *, epochs: int, threads: int, seed: int) -> dict[str, Any]:
    """ModelConfig defaults except device, threads, the epochs cap and seed; then the overrides."""
    return {"device": "cpu", "threads": threads, "epochs": epochs, "seed": seed, **(overrides or {})}


def run_tidewatch(train_table: Any, test_table: Any, overrides: dict[str, Any] | None = None, *,
                  epochs: int = 30, threads: int = 2, seed: int = 0) -> dict[str, Any]:
    """THE way tidewatch is run here: train on `train_table` (plant, timestamp, sensors), score `test_table`
    with the last window-1 training rows prepended as context. Returns per test row: scores, flags (the
    `flag` column), thresholds (the `threshold` column), plus training / scoring seconds and epochs."""
    import pyarrow as pa

    import tidewatch

    sensors = [c for c in train_table.column_names if c not in ("plant", "timestamp", "_tw_context")]
    plant = train_table["plant"][0].as_py()
    config = tidewatch.ModelConfig(**tidewatch_config(overrides, epochs=epochs, threads=threads, seed=seed))
    t0 = time.perf_counter()
    model = tidewatch.train(train_table, config, sensors=tidewatch.SensorSet(plant, sensors), progress=None)
    t1 = time.perf_counter()
    detector = model.detector(device="cpu", threads=threads)
    n_ctx = min(max(int(detector.window) - 1, 0), train_table.num_rows)
    context = train_table.slice(train_table.num_rows - n_ctx, n_ctx)
    flag_ctx = pa.array(np.arange(n_ctx + test_table.num_rows) < n_ctx)
    batch = pa.concat_tables([context, test_table]).append_column("_tw_context", flag_ctx).combine_chunks()
    batch = batch.to_batches()[0] if batch.num_rows else batch
    t2 = time.perf_counter()
    out = detector.score(batch, reset=True)
    t3 = time.perf_counter()
    out = out if isinstance(out, pa.RecordBatch) else pa.Table.from_batches(out.to_batches()).combine_chunks()
    if out.num_rows != test_table.num_rows:
        raise RuntimeError(f"tidewatch returned {out.num_rows} rows for {test_table.num_rows} test rows")
    status = np.array(out.column("status").to_pylist(), dtype=object)
    scores = np.array([np.nan if v is None else v for v in out.column("score").to_pylist()], dtype=np.float64)
    thresholds = np.array([np.nan if v is None else v for v in out.column("threshold").to_pylist()], np.float64)
    flags = np.array([bool(v) for v in out.column("flag").to_pylist()], dtype=bool)
    scored = (status == "scored") & np.isfinite(scores) & np.isfinite(thresholds)
    if not scored.any():
        raise RuntimeError(f"tidewatch scored none of {len(scores)} rows (statuses {sorted(set(status))})")
    # an unscored row (warm-up, quarantine) ranks lowest and is not flagged: it counts against recall
    low = np.nanmin(scores[scored])
    fill_thr = float(np.median(thresholds[scored]))
    scores = np.where(scored, scores, low)
    thresholds = np.where(scored, thresholds, fill_thr)
    flags &= scored
    history = model.history
    return {"scores": scores, "flags": flags, "threshold": thresholds, "train_s": t1 - t0, "score_s": t3 - t2,
            "unscored": int((~scored).sum()), "statuses": sorted({str(s) for s in status}),
            "epochs": len(history), "epoch_s": float(np.mean([e["seconds"] for e in history])) if history else None,
            "window": int(detector.window), "model_threshold": float(model.threshold)}


def run_method_on_stream(key: str, stream: Stream, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    if key == "tidewatch":
        train = _arrow(stream.name, stream.sensors, stream.train_times, stream.train)
        test = _arrow(stream.name, stream.sensors, stream.test_times, stream.test)
        return run_tidewatch(train, test, args.tidewatch_overrides, epochs=args.epochs, threads=args.threads,
                             seed=args.seed)
    return run_peer(key, stream, seed, args.knn_max_ref)


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------


def normalise(scores: np.ndarray, threshold: np.ndarray | float) -> np.ndarray:
    """Scores relative to their threshold (flag when > 1): score / threshold, or score - threshold + 1 where
    the threshold is <= 0, so the streams of one dataset share one scale."""
    scores = np.asarray(scores, dtype=np.float64)
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), scores.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(thr > 0, scores / np.where(thr > 0, thr, 1.0), scores - thr + 1.0)


def false_alarm_episodes(flags: np.ndarray, labels: np.ndarray, boundaries: Sequence[int] = ()) -> int:
    """Runs of flagged normal rows (never across a stream boundary)."""
    from tidewatch.evaluation import label_events

    return int(len(label_events(np.asarray(flags, bool) & ~np.asarray(labels, bool), boundaries)))


def per_day(count: float, rows: int, period_s: float) -> float:
    days = rows * period_s / 86400.0
    return count / days if days > 0 else math.nan


def incident_figures(flags: np.ndarray, scores: np.ndarray, labels: np.ndarray, times: np.ndarray,
                     plants: list[str], period_s: float) -> dict[str, Any]:
    import pyarrow as pa

    import tidewatch
    from tidewatch.incidents import evaluate_incidents, incidents_from_rows, label_spans

    times_us = times.astype("datetime64[us]").astype(np.int64)
    table = pa.table({"plant": plants, "timestamp": pa.array(times_us, pa.timestamp("us", tz="UTC")),
                      "flag": flags.astype(bool), "score": scores.astype(np.float64)})
    incidents = incidents_from_rows(table, tidewatch.SensorSet("bench", ["score"]), sample_period_s=period_s)
    events = label_spans(labels.astype(int), times_us / 1e6, plants)
    report = evaluate_incidents(incidents, events, normal_seconds=float((~labels).sum()) * period_s)
    return report.to_dict()


def measure(dataset: Dataset, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every figure of one method on one dataset, from its per-stream runs."""
    from tidewatch.evaluation import evaluate

    labels = np.concatenate([s.labels for s in dataset.streams])
    times = np.concatenate([s.test_times for s in dataset.streams])
    lengths = [len(s.labels) for s in dataset.streams]
    boundaries = np.cumsum([0, *lengths[:-1]]).tolist()
    plants = [s.name for s, n in zip(dataset.streams, lengths) for _ in range(n)]
    flags = np.concatenate([r["flags"] for r in runs])
    nscores = np.concatenate([normalise(r["scores"], r["threshold"]) for r in runs])
    nscores = np.nan_to_num(nscores, nan=0.0, posinf=1e300, neginf=-1e300)
    report = evaluate(labels, flags=flags, scores=nscores, timestamps=times, boundaries=boundaries)
    normal_rows = int((~labels).sum())
    episodes = false_alarm_episodes(flags, labels, boundaries)
    inc = incident_figures(flags, nscores, labels, times, plants, dataset.period_s)
    out = {
        "precision": report.precision, "recall": report.recall, "f1": report.f1, "far_pct": report.far_pct,
        "n_events": report.n_events, "n_events_detected": report.n_events_detected,
        "event_recall": report.event_recall, "pr_auc": report.pr_auc,
        "delay_seconds_median": report.delay_seconds_median,
        "false_alarm_episodes": episodes, "false_alarms_per_day": per_day(episodes, normal_rows, dataset.period_s),
        "incident_f1": inc["f1"], "false_incidents_per_day": inc["false_incidents_per_day"],
        "n_incidents": inc["n_incidents"], "incidents": inc,
        "inflated_point_adjusted_f1": report.inflated_point_adjusted_f1,
        "flagged_pct": 100.0 * float(flags.mean()), "n_rows": int(len(labels)),
        "unscored_rows": int(sum(r.get("unscored", 0) for r in runs)),
    }
    if not dataset.labelled:
        blocks = np.array_split(flags, 6)
        out["flagged_pct_per_block"] = [100.0 * float(b.mean()) for b in blocks]
        out["block_hours"] = len(flags) * dataset.period_s / 6 / 3600
    out["_plot"] = {"scores": nscores, "flags": flags, "labels": labels, "boundaries": boundaries}
    return out


# ------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------


def _c(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


LABELLED_COLUMNS = ("method", "P", "R", "F1", "FAR %", "events", "PR-AUC", "FA/day", "delay s", "inc F1",
                    "inc/day", "PA-F1*", "train s", "score s")
DRIFT_COLUMNS = ("method", "flagged %", "flagged % per block", "FA episodes", "FA/day", "incidents",
                 "false inc/day", "train s", "score s")


def table_rows(dataset: Dataset, results: dict[str, dict[str, Any]]) -> tuple[tuple[str, ...], list[list[str]]]:
    rows = []
    for key, r in results.items():
        name = METHOD_NAMES.get(key, key)
        if "error" in r:
            rows.append([name, f"FAILED: {r['error'][:160]}"])
            continue
        times = [_c(r["train_s"], 1), _c(r["score_s"], 1)]
        if dataset.labelled:
            rows.append([name, _c(r["precision"], 2), _c(r["recall"], 2), _c(r["f1"], 2), _c(r["far_pct"], 2),
                         f"{r['n_events_detected']}/{r['n_events']}", _c(r["pr_auc"], 3),
                         _c(r["false_alarms_per_day"], 1), _c(r["delay_seconds_median"], 0), _c(r["incident_f1"], 2),
                         _c(r["false_incidents_per_day"], 1), _c(r["inflated_point_adjusted_f1"], 2), *times])
        else:
            blocks = " ".join(f"{b:.1f}" for b in r["flagged_pct_per_block"])
            rows.append([name, _c(r["flagged_pct"], 2), blocks, str(r["false_alarm_episodes"]),
                         _c(r["false_alarms_per_day"], 1), str(r["n_incidents"]), _c(r["false_incidents_per_day"], 1),
                         *times])
    return (LABELLED_COLUMNS if dataset.labelled else DRIFT_COLUMNS), rows


def markdown_table(header: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = row if len(row) == len(header) else [row[0], row[1], *[""] * (len(header) - 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: list[list[str]]) -> str:
    full = [r for r in rows if len(r) == len(header)]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *full)] if full else [len(h) for h in header]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    out.append("-" * len(out[0]))
    for r in rows:
        if len(r) != len(header):
            out.append(f"{r[0].ljust(widths[0])}  {r[1]}")
        else:
            out.append("  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def rank_of(results: dict[str, dict[str, Any]], metric: str, key: str,
            higher: bool = True) -> tuple[str | None, int | None, int]:
    """(best method, rank of `key` (1 = best), methods ranked) on `metric` among methods with a figure."""
    vals = {k: r[metric] for k, r in results.items() if "error" not in r and r.get(metric) is not None
            and math.isfinite(r[metric])}
    if not vals:
        return None, None, 0
    order = sorted(vals, key=lambda k: -vals[k] if higher else vals[k])
    rank = 1 + sum(1 for k in vals if (vals[k] > vals[key] if higher else vals[k] < vals[key])) if key in vals else None
    return order[0], rank, len(vals)


def summary_lines(datasets: list[Dataset], all_results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines = []
    for ds in datasets:
        res = all_results[ds.key]
        if ds.labelled:
            parts = []
            for metric, label in (("pr_auc", "PR-AUC"), ("f1", "F1")):
                best, rank, n = rank_of(res, metric, "tidewatch")
                if best is None:
                    parts.append(f"{label}: no figures")
                    continue
                tw = f"tidewatch rank {rank}/{n}" if rank else "tidewatch: no figure"
                parts.append(f"best {label} {METHOD_NAMES.get(best, best)} {res[best][metric]:.3f} ({tw})")
            lines.append(f"- **{ds.key}**: " + "; ".join(parts))
        else:
            # the random floor flags 1 % of rows at random whatever the data: not a contender for "fewest"
            best, rank, n = rank_of({k: v for k, v in res.items() if k != "random"}, "false_alarms_per_day",
                                    "tidewatch", higher=False)
            if best is None:
                lines.append(f"- **{ds.key}**: no figures")
                continue
            tw = res.get("tidewatch", {})
            tw_text = (f"tidewatch {tw['false_alarms_per_day']:.1f} FA/day, {tw['flagged_pct']:.2f} % flagged, "
                       f"rank {rank}/{n}" if "false_alarms_per_day" in tw else "tidewatch: no figure")
            lines.append(f"- **{ds.key}**: fewest false alarms per day (random floor left out) "
                         f"{METHOD_NAMES.get(best, best)} "
                         f"{res[best]['false_alarms_per_day']:.1f} ({tw_text})")
    return lines


def plot_dataset(path: Path, ds: Dataset, results: dict[str, dict[str, Any]]) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [(k, r) for k, r in results.items() if "_plot" in r]
    if not ok:
        return None
    fig, axes = plt.subplots(len(ok), 1, figsize=(14, 1.9 * len(ok) + 0.6), sharex=True, squeeze=False)
    for ax, (key, r) in zip(axes[:, 0], ok):
        p = r["_plot"]
        n = len(p["scores"])
        step = max(1, n // 4000)
        m = (n // step) * step
        x = np.arange(0, m, step)
        s = np.clip(p["scores"][:m].reshape(-1, step).max(axis=1), 1e-3, 1e4)
        lab = p["labels"][:m].reshape(-1, step).any(axis=1)
        ax.fill_between(x, 1e-3, 1e4, where=lab, color="tab:red", alpha=0.18, step="post", linewidth=0)
        ax.plot(x, s, lw=0.6, color="tab:blue")
        ax.axhline(1.0, color="k", lw=0.7, ls="--")
        for b in p["boundaries"][1:]:
            ax.axvline(b, color="grey", lw=0.4, alpha=0.6)
        ax.set_yscale("log")
        ax.set_ylim(1e-2, 1e3)
        title = METHOD_NAMES.get(key, key)
        if ds.labelled:
            title += f"   F1 {_c(r['f1'], 2)}  FAR {_c(r['far_pct'], 1)} %  PR-AUC {_c(r['pr_auc'], 3)}"
        else:
            title += f"   flagged {_c(r['flagged_pct'], 2)} %  FA/day {_c(r['false_alarms_per_day'], 1)}"
        ax.set_title(title, fontsize=8, loc="left")
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("test row (streams concatenated; grey lines = stream boundaries)", fontsize=8)
    fig.suptitle(f"{ds.title}: score / threshold (dashed = 1, the flag line; red = labelled anomalous; max per "
                 f"{max(1, len(ok and ok[0][1]['_plot']['scores']) // 4000)} rows)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating,)):
        return jsonable(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def import_tidewatch(wait_s: float = 240.0) -> None:
    """The extension may be rebuilt under us (replaced for about a minute): retry the import."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            import tidewatch  # noqa: F401

            return
        except ImportError as exc:
            if time.monotonic() > deadline:
                raise
            print(f"tidewatch import failed ({exc}); retrying in 15 s", flush=True)
            for name in [m for m in sys.modules if m.startswith("tidewatch")]:
                del sys.modules[name]
            time.sleep(15)


def tidewatch_build() -> dict[str, Any]:
    """Which core was measured: the extension's checksum and time, and the ModelConfig defaults it has."""
    import hashlib

    import tidewatch
    from tidewatch import _native

    so = Path(_native.__file__)
    return {"extension": str(so), "sha256": hashlib.sha256(so.read_bytes()).hexdigest(),
            "modified": dt.datetime.fromtimestamp(so.stat().st_mtime, dt.timezone.utc).isoformat(),
            "model_config_defaults": tidewatch.ModelConfig().to_dict()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="short dev run: 4 SKAB files, 3 SMAP channels, 6 attacks on short simulator runs, 3 epochs")
    p.add_argument("--datasets", default=",".join(ALL_DATASETS), help=f"comma-separated subset of {ALL_DATASETS}")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma-separated subset of {ALL_METHODS}")
    p.add_argument("--tidewatch-config", default=None,
                   help="JSON object (or a path to a JSON file) of ModelConfig overrides for tidewatch")
    p.add_argument("--epochs", type=int, default=None,
                   help="tidewatch's epochs cap (default 30, early stopping with the default patience; --quick 3)")
    p.add_argument("--threads", type=int, default=2, help="libtorch threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skab-files", type=int, default=None, help="SKAB files, evenly spread (default 34; --quick 4)")
    p.add_argument("--smap-channels", type=int, default=None, help="SMAP channels (default 12; --quick 3)")
    p.add_argument("--sim-train-hours", type=float, default=None,
                   help="simulator training hours (default 24; --quick 2)")
    p.add_argument("--sim-eval-s", type=int, default=None,
                   help="seconds of the attack run (default 172,800: 2 days, 25-80 min of normal operation between "
                        "the 36 attacks, as bench-attacks; all 36 need >= 76,086 s; --quick: 6 attacks in 14,400)")
    p.add_argument("--drift-train-hours", type=float, default=None, help="default 12 (--quick 2)")
    p.add_argument("--drift-test-hours", type=float, default=None, help="default 48 (--quick 6)")
    p.add_argument("--knn-max-ref", type=int, default=20_000, help="KNN reference rows at most (default 20,000)")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    q = args.quick
    defaults = {"epochs": (30, 3), "skab_files": (34, 4), "smap_channels": (12, 3), "sim_train_hours": (24.0, 2.0),
                "sim_eval_s": (172_800, 14_400), "drift_train_hours": (12.0, 2.0), "drift_test_hours": (48.0, 6.0)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [d for d in args.datasets if d not in ALL_DATASETS] + [m for m in args.methods if m not in ALL_METHODS]
    if bad:
        p.error(f"unknown dataset(s) / method(s): {bad}")
    text = args.tidewatch_config
    if text and not text.lstrip().startswith("{") and Path(text).is_file():
        text = Path(text).read_text()
    args.tidewatch_overrides = json.loads(text) if text else {}
    if not isinstance(args.tidewatch_overrides, dict):
        p.error("--tidewatch-config must be a JSON object")
    return args


def load_datasets(args: argparse.Namespace) -> list[Dataset]:
    out: list[Dataset] = []
    for key in args.datasets:
        if key == "skab":
            out.append(load_skab(args.skab_files))
        elif key == "smap":
            out.append(load_smap(SMAP_CHANNELS[: args.smap_channels]))
    factors = [f for f, k in ((1, "sim-1s"), (10, "sim-10s"), (60, "sim-60s")) if k in args.datasets]
    if factors:
        from tidewatch.simulator import simulated_attack_ids

        attacks: Any = simulated_attack_ids()[:6] if args.quick else "all"
        out += load_simulator(args.sim_train_hours, args.sim_eval_s, attacks, args.seed, factors)
    if "drift" in args.datasets:
        out.append(load_drift(args.drift_train_hours, args.drift_test_hours, args.seed + 2))
    order = {k: i for i, k in enumerate(args.datasets)}
    return sorted(out, key=lambda d: order[d.key])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    import_tidewatch()
    build = tidewatch_build()
    print(f"tidewatch extension sha256 {build['sha256'][:16]} ({build['modified']}); ModelConfig defaults "
          f"{build['model_config_defaults']}", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    datasets = load_datasets(args)
    tw_config = tidewatch_config(args.tidewatch_overrides, epochs=args.epochs, threads=args.threads, seed=args.seed)
    print(f"loaded {len(datasets)} dataset(s) in {time.perf_counter() - started:.0f} s; methods {args.methods}; "
          f"tidewatch: ModelConfig defaults + {tw_config}", flush=True)
    all_results: dict[str, dict[str, dict[str, Any]]] = {}
    md = ["# bench-detect", "",
          f"Protocol: see bench/detect.py. {'QUICK dev run (not the benchmark). ' if args.quick else ''}"
          f"tidewatch: ModelConfig defaults except "
          f"{json.dumps(tw_config)}. Peers: fit on the first 80 % of training rows, threshold = 99th percentile "
          f"of their scores on the last 20 %.",
          ""]
    text_out = []
    for ds in datasets:
        n_test = sum(len(s.labels) for s in ds.streams)
        n_train = sum(len(s.train) for s in ds.streams)
        n_anom = sum(int(s.labels.sum()) for s in ds.streams)
        head = (f"{ds.key}: {ds.title}; {len(ds.streams)} stream(s), {n_train} training rows, {n_test} test rows "
                f"({n_anom} anomalous), {ds.period_s:g} s rows" + "".join(f"; {n}" for n in ds.notes))
        print(f"\n== {head}", flush=True)
        results: dict[str, dict[str, Any]] = {}
        for key in args.methods:
            t0 = time.perf_counter()
            try:
                runs = []
                for i, stream in enumerate(ds.streams):
                    runs.append(run_method_on_stream(key, stream, args, seed=args.seed + i))
                r = measure(ds, runs)
                r["train_s"] = float(sum(x["train_s"] for x in runs))
                r["score_s"] = float(sum(x["score_s"] for x in runs))
                if key == "tidewatch":
                    r["epochs_per_stream"] = [x["epochs"] for x in runs]
                    r["epoch_s_mean"] = float(np.mean([x["epoch_s"] for x in runs if x["epoch_s"] is not None]))
                    r["statuses"] = sorted({s for x in runs for s in x["statuses"]})
                    r["window"] = runs[0]["window"]
            except Exception as exc:  # one broken method must not hide the others' figures
                traceback.print_exc()
                r = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}
            r["wall_s"] = time.perf_counter() - t0
            results[key] = r
            extra = ""
            if "error" in r:
                extra = f"FAILED {r['error'][:200]}"
            else:
                extra = (f"train {r['train_s']:.1f} s, score {r['score_s']:.1f} s, metrics "
                         f"{r['wall_s'] - r['train_s'] - r['score_s']:.1f} s")
                if key == "tidewatch":
                    extra += (f"; epochs per stream {r['epochs_per_stream']} ({r['epoch_s_mean']:.2f} s/epoch), "
                              f"window {r['window']}, unscored rows {r['unscored_rows']}")
            print(f"  {key:<10} {r['wall_s']:7.1f} s  {extra}", flush=True)
        all_results[ds.key] = results
        header, rows = table_rows(ds, results)
        text_out.append(f"{head}\n{text_table(header, rows)}")
        print("\n" + text_out[-1], flush=True)
        md += [f"## {ds.key}", "", head, "", markdown_table(header, rows), ""]
        if not args.no_plots:
            png = plot_dataset(args.out_dir / f"detect_{ds.key}.png", ds, results)
            if png:
                md += [f"![{ds.key}]({png.name})", ""]
    summary = summary_lines(datasets, all_results)
    total = time.perf_counter() - started
    legend = ("P/R/F1/FAR: point-wise at each method's own threshold; events: labelled runs with >= 1 flag; PR-AUC: "
              "of scores / per-stream threshold; FA/day: runs of flagged normal rows per day of normal rows; delay s: "
              "median from event start to first flag; inc F1 / inc/day: flags grouped into incidents by "
              "tidewatch.incidents.incidents_from_rows (dataset's sample period), event-wise F1 and false incidents "
              "per day; PA-F1*: point-adjusted F1, INFLATED, not comparable to F1; train s / score s: seconds summed "
              "over streams. Drift: flagged % per block = share of rows flagged in each sixth of the scored run.")
    md += ["## Summary", "", *summary, "", legend, "", f"Total wall time {total:.0f} s "
           f"({platform.python_version()}, {os.cpu_count()} CPUs)."]
    (args.out_dir / "detect.md").write_text("\n".join(md) + "\n")
    payload = {
        "benchmark": "bench-detect (issue 13)", "quick": args.quick, "total_seconds": total,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "tidewatch_config": tw_config,
        "tidewatch_build": build,
        "peers": {"fit_fraction": PEER_FIT_FRACTION, "threshold_quantile": PEER_QUANTILE},
        "datasets": {ds.key: {"title": ds.title, "period_s": ds.period_s, "streams": [s.name for s in ds.streams],
                              "test_rows": sum(len(s.labels) for s in ds.streams),
                              "anomalous_rows": sum(int(s.labels.sum()) for s in ds.streams), "notes": ds.notes,
                              "results": all_results[ds.key]} for ds in datasets},
        "summary": summary,
    }
    (args.out_dir / "detect.json").write_text(json.dumps(jsonable(payload), indent=2))
    print("\nsummary\n" + "\n".join(summary))
    print(f"\n{legend}\nwrote {args.out_dir}/detect.json, detect.md and PNGs in {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
