"""SKAB outlier-detection benchmark, run the benchmark's own way, for tidewatch and its baselines side by side.

Protocol (SKAB's leaderboard, see ../shared/data/README.md): for EACH of the 34 labelled files, fit on the
first 400 rows (no shuffle, whatever their labels), predict every remaining row of that file, concatenate
the test rows of all files and compute binary F1, FAR % and MAR %. Every detector here takes its threshold
from its own training rows (a high quantile of training scores, or the model's calibrated threshold);
test labels are never used to choose anything.

Run: ``make bench-skab`` or ``.venv/bin/python bench/skab.py [--methods pca,iforest,random,lstm-vae]``.
Writes ``bench/out/skab.json`` (all figures, per method and per file) and one PNG per method.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The shared dev data beside the repository (../shared/data), or TIDEWATCH_SHARED_DATA.
DEFAULT_DATA = Path(os.environ.get("TIDEWATCH_SHARED_DATA",
                   Path(__file__).resolve().parents[2] / "shared" / "data")) / "skab"
DEFAULT_OUT = REPO / "bench" / "out"
SENSORS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
LABELLED_FOLDERS = ("valve1", "valve2", "other")
EXPECTED_FILES = 34

# SKAB's published outlier-detection leaderboard (F1, FAR %, MAR %; None where it gives no figure).
PUBLISHED = (
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("T²+Q (PCA)", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("T²", 0.66, 19.21, 42.6),
    ("LSTM-VAE", 0.56, 9.13, 55.03),
    ("Vanilla LSTM", 0.54, None, None),
    ("Vanilla AE", 0.39, None, None),
    ("MSCRED", 0.36, None, None),
    ("Isolation Forest", 0.29, None, None),
)


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


@dataclass
class SkabFile:
    name: str  # e.g. "valve1/3"
    timestamps: np.ndarray  # datetime64[ns]
    values: np.ndarray  # rows x 8 sensors, float64
    labels: np.ndarray  # rows, 0/1


def _natural_key(path: Path) -> tuple[int, int]:
    return (LABELLED_FOLDERS.index(path.parent.name), int(path.stem) if path.stem.isdigit() else sys.maxsize)


def _table_to_file(name: str, table: Any) -> SkabFile:
    """One SKAB file read by ``tidewatch.readers.read_skab`` (which already refuses bad rows)."""
    missing = [c for c in ("timestamp", *SENSORS, "label") if c not in table.column_names]
    if missing:
        raise ValueError(f"SKAB file {name}: missing column(s) {missing}; has {table.column_names}")
    values = np.column_stack([table[s].to_numpy() for s in SENSORS]).astype(np.float64)
    labels = table["label"].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"SKAB file {name}: 'label' holds values other than 0/1")
    return SkabFile(
        name=name,
        timestamps=table["timestamp"].to_numpy().astype("datetime64[ns]"),
        values=values,
        labels=labels.astype(np.int8),
    )


def load_skab(data_dir: Path) -> list[SkabFile]:
    """The 34 labelled files in a fixed order (valve1, valve2, other; numeric within)."""
    from tidewatch.readers import read_skab

    paths = sorted((p for folder in LABELLED_FOLDERS for p in (data_dir / folder).glob("*.csv")), key=_natural_key)
    if len(paths) != EXPECTED_FILES:
        raise SystemExit(f"expected {EXPECTED_FILES} labelled SKAB files under {data_dir}, found {len(paths)}")
    return [_table_to_file(f"{p.parent.name}/{p.stem}", read_skab(p)) for p in paths]


# ------------------------------------------------------------------------------------------------
# methods: fit(train) / score(x) / threshold, built fresh for every file
# ------------------------------------------------------------------------------------------------


# Settings for 400 training rows per file, fixed before any run (never tuned on SKAB's labels): every
# window is used for fitting (train_stride 1: only a few hundred windows exist), small mini-batches so an
# epoch is several steps, CPU and the benchmark machine's 2 threads. The threshold is the 99 % quantile of
# held-out normal windows, like the baselines' 0.99 training quantile; tidewatch refuses a 99 % quantile
# from fewer than 101 windows, so the last 35 % of the 400 rows (140 rows, 111 windows of 30) are held out
# for calibration and early stopping. Everything else is tidewatch's default (window 30, β schedule, ...).
LSTM_VAE_SETTINGS: dict[str, Any] = {
    "train_stride": 1,
    "batch_size": 32,
    "epochs": 60,
    "patience": 8,
    "validation_fraction": 0.35,
    "threshold_level": 0.99,
    "sensor_threshold_level": 0.99,
    "device": "cpu",
    "threads": 2,
}


# The alarm rule of SKAB's own leaderboard notebooks (e.g. notebooks/Conv_AE.ipynb, the best published
# entry): the limit is 4/3 of the 0.999 quantile of the training rows' scores, and a row is an outlier
# only when every window covering it is above the limit. That looks ahead LEADERBOARD_WINDOW-1 rows, so
# it is an offline rule (a live job would raise the alarm that much later). Every method is reported
# under it too, as its own line beside its own rule, from the same fitted models and scores; the window
# is tidewatch's (30 rows) for all of them, fixed before any run.
LEADERBOARD_QUANTILE = 0.999
LEADERBOARD_MARGIN = 4 / 3
LEADERBOARD_WINDOW = 30


def leaderboard_flags(scores: np.ndarray, limit: float, window: int) -> np.ndarray:
    """Rows whose every covering window scores above `limit`. Row i's score is the window ending at it
    (docs/scoring-contract.md), so the windows covering row i are those of rows i .. i+window-1; the last
    window-1 rows, not covered by enough windows, are not flagged (as in the notebooks)."""
    above = np.asarray(scores) > limit
    flags = np.zeros(len(above), dtype=bool)
    if len(above) >= window:
        flags[: len(above) - window + 1] = np.lib.stride_tricks.sliding_window_view(above, window).all(axis=1)
    return flags


class LstmVaeMethod:
    """tidewatch's LSTM-VAE behind the baselines' interface.

    Trains with ``tidewatch.train`` on the file's training rows (the model holds out the last part of them
    to calibrate its threshold); scores the test rows with the last window-1 training rows prepended as
    context (``_tw_context``) so every test row has a full window, as docs/scoring-contract.md lets the Spark
    job do with its carried tail.
    """

    name = "tidewatch LSTM-VAE"

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = dict(settings)
        self.threshold = math.nan

    @staticmethod
    def _batch(values: np.ndarray, n_context: int = 0) -> Any:
        import pyarrow as pa

        # SKAB's own timestamps have gaps; the model only passes them through, so 1 s steps do
        times = np.datetime64("2020-01-01T00:00:00", "us") + np.arange(len(values)) * np.timedelta64(1, "s")
        columns: dict[str, Any] = {
            "plant": pa.array(["skab"] * len(values)),
            "timestamp": pa.array(times, type=pa.timestamp("us", tz="UTC")),
        }
        for i, sensor in enumerate(SENSORS):
            columns[sensor] = pa.array(values[:, i])
        if n_context:
            columns["_tw_context"] = pa.array(np.arange(len(values)) < n_context)
        return pa.RecordBatch.from_pydict(columns)

    def fit(self, train: np.ndarray) -> LstmVaeMethod:
        import tidewatch
        from tidewatch.readers import packaged_plant_file

        # the packaged SKAB plant file names the 8 sensors and their stages; the min-max scaler is fitted
        # by train() on the training part, the threshold calibrated on its held-out end
        model = tidewatch.train(self._batch(train), self.settings, sensors=packaged_plant_file("skab"),
                                progress=None)
        self.scorer = model.detector(device=self.settings.get("device", "cpu"), threads=self.settings.get("threads"))
        self.window = int(self.scorer.window)
        self.context = train[-(self.window - 1):] if self.window > 1 else train[:0]
        # first window-1 rows: NaN, not yet a full window; then the stream is reset, as the test rows that
        # follow start again at the first timestamp
        self.train_scores = self._scores(self.scorer.score(self._batch(train)))
        self.scorer.reset_stream()
        return self

    @staticmethod
    def _scores(out: Any) -> np.ndarray:
        out = out.to_pydict() if hasattr(out, "to_pydict") else out
        return np.array([np.nan if v is None else v for v in out["score"]], dtype=np.float64)

    def score(self, x: np.ndarray) -> np.ndarray:
        out = self.scorer.score(self._batch(np.vstack([self.context, x]), n_context=len(self.context)))
        out = out.to_pydict() if hasattr(out, "to_pydict") else out
        scores = self._scores(out)
        if scores.shape != (len(x),) or not np.isfinite(scores).all():
            statuses = sorted({str(v) for v in out.get("status", [])})
            raise RuntimeError(
                f"LSTM-VAE returned {int(np.isfinite(scores).sum())} scores for {len(x)} test rows (statuses {statuses})"
            )
        thresholds = {float(v) for v in out["threshold"] if v is not None}
        if len(thresholds) != 1:
            raise RuntimeError(f"LSTM-VAE returned {len(thresholds)} distinct thresholds for one model: {thresholds}")
        self.threshold = thresholds.pop()
        return scores


def method_factories(args: argparse.Namespace) -> tuple[dict[str, Callable[[], Any]], dict[str, Any] | None]:
    """The methods this build can run, and the LSTM-VAE's settings when it can run it."""
    from tidewatch.baselines import IsolationForestDetector, PcaT2QDetector, RandomScoreDetector

    random_seeds = itertools.count(args.seed)

    factories: dict[str, Callable[[], Any]] = {
        "pca": lambda: PcaT2QDetector(explained_variance=args.explained_variance, quantile=args.quantile),
        "iforest": lambda: IsolationForestDetector(quantile=args.quantile, random_state=args.seed),
        # a fresh seed per file: the same seed everywhere would repeat one draw sequence in all 34 files
        "random": lambda: RandomScoreDetector(quantile=args.quantile, seed=next(random_seeds)),
    }
    import tidewatch

    if hasattr(tidewatch, "train"):
        settings = {**LSTM_VAE_SETTINGS, "seed": args.seed}
        if args.lstm_vae_config:
            settings.update(json.loads(Path(args.lstm_vae_config).read_text()))
        factories["lstm-vae"] = lambda: LstmVaeMethod(settings)
        return factories, settings
    return factories, None


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def _normalised(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Scores relative to the file's own threshold (flag when > 1), so files are comparable in one curve."""
    if threshold > 0:
        return scores / threshold
    return scores - threshold + 1.0


def _file_figures(skab_file: SkabFile, threshold: float, flags: np.ndarray, train_rows: int) -> dict[str, Any]:
    from tidewatch.evaluation import confusion_counts

    counts = confusion_counts(flags, skab_file.labels[train_rows:])
    return {"file": skab_file.name, "threshold": threshold, "f1": counts.f1, "far_pct": counts.far_pct,
            "mar_pct": counts.mar_pct, "flagged": int(flags.sum())}


def run_method(key: str, factory: Callable[[], Any], files: list[SkabFile], train_rows: int) -> dict[str, Any]:
    started = time.perf_counter()
    scores, flags, thresholds, per_file = [], [], [], []
    rule: dict[str, Any] = {"scores": [], "flags": [], "per_file": []}  # the leaderboard's rule
    name = key
    for skab_file in files:
        detector = factory()
        name = getattr(detector, "name", key)
        train, test = skab_file.values[:train_rows], skab_file.values[train_rows:]
        detector.fit(train)
        file_scores = np.asarray(detector.score(test), dtype=np.float64)
        threshold = float(detector.threshold)
        if not math.isfinite(threshold):
            raise RuntimeError(f"{name}: no finite threshold after fitting {skab_file.name}")
        file_flags = file_scores > threshold
        per_file.append(_file_figures(skab_file, threshold, file_flags, train_rows))
        scores.append(_normalised(file_scores, threshold))
        flags.append(file_flags)
        thresholds.append(threshold)
        # the same scores under the leaderboard's rule
        train_scores = getattr(detector, "train_scores", None)
        if train_scores is None:
            train_scores = np.asarray(detector.score(train), dtype=np.float64)
        train_scores = train_scores[np.isfinite(train_scores)]
        limit = float(np.quantile(train_scores, LEADERBOARD_QUANTILE)) * LEADERBOARD_MARGIN
        rule_flags = leaderboard_flags(file_scores, limit, LEADERBOARD_WINDOW)
        rule["per_file"].append(_file_figures(skab_file, limit, rule_flags, train_rows))
        rule["scores"].append(_normalised(file_scores, limit))
        rule["flags"].append(rule_flags)
    seconds = time.perf_counter() - started
    rule.update(key=f"{key}+leaderboard-rule", name=f"{name}, leaderboard rule", seconds=seconds,
                scores=np.concatenate(rule["scores"]), flags=np.concatenate(rule["flags"]))
    return {
        "key": key,
        "name": name,
        "scores": np.concatenate(scores),
        "flags": np.concatenate(flags),
        "seconds": seconds,
        "per_file": per_file,
        "variants": [rule],
    }


def _cell(value: float | None, digits: int) -> str:
    return "—" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def format_table(results: list[dict[str, Any]], reference: dict[str, Any]) -> str:
    header = (f"{'method':<40}{'source':<11}{'F1':>6}{'FAR %':>8}{'MAR %':>8}{'events':>9}{'delay s':>9}"
              f"{'PR-AUC':>8}{'PA-F1*':>8}{'inc F1':>8}{'inc/day':>9}{'time s':>8}")
    lines = [header, "-" * len(header)]
    for result in results:
        if "error" in result:
            lines.append(f"{result['name']:<40}{'this run':<11}  FAILED: {result['error']}")
            continue
        r = result["report"]
        events = f"{r['n_events_detected']}/{r['n_events']}"
        lines.append(
            f"{result['name']:<40}{'this run':<11}{_cell(r['f1'], 2):>6}{_cell(r['far_pct'], 2):>8}"
            f"{_cell(r['mar_pct'], 2):>8}{events:>9}{_cell(r['delay_seconds_median'], 0):>9}"
            f"{_cell(r['pr_auc'], 3):>8}{_cell(r['inflated_point_adjusted_f1'], 2):>8}"
            f"{_cell(result['incidents']['f1'], 2):>8}{_cell(result['incidents']['false_incidents_per_day'], 1):>9}"
            f"{result['seconds']:>8.2f}"
        )
    lines.append(
        f"{'(flag every row)':<40}{'reference':<11}{_cell(reference['f1'], 2):>6}{_cell(reference['far_pct'], 2):>8}"
        f"{_cell(reference['mar_pct'], 2):>8}"
    )
    for name, f1, far, mar in PUBLISHED:
        lines.append(f"{name:<40}{'published':<11}{f1:>6.2f}{_cell(far, 2):>8}{_cell(mar, 2):>8}")
    lines.append(
        "events: labelled events with >= 1 flag inside; delay s: median seconds from event start to first flag;"
    )
    lines.append("PA-F1* = point-adjusted F1, INFLATED (one flag marks a whole event), not comparable to F1.")
    lines.append("inc F1: event-wise F1 of incidents (flags grouped by the core's tracker, the streaming job's "
                 "rules); inc/day: false incidents per day of normal rows.")
    return "\n".join(lines)


def incident_figures(flags: np.ndarray, scores: np.ndarray, labels: np.ndarray, timestamps: np.ndarray,
                     boundaries: list[int]) -> dict[str, Any]:
    """Every method's flags grouped into incidents by the same tracker (one plant per file, 1 s sampling
    defaults), measured event-wise against the labelled anomalies."""
    import pyarrow as pa

    import tidewatch
    from tidewatch.incidents import evaluate_incidents, incidents_from_rows, label_spans

    plant = np.zeros(len(flags), dtype=np.int64)
    for b in boundaries[1:]:
        plant[b:] += 1
    plants = [f"file{p}" for p in plant]
    times_us = np.asarray(timestamps).astype("datetime64[us]").astype(np.int64)
    table = pa.table({"plant": plants, "timestamp": pa.array(times_us, pa.timestamp("us", tz="UTC")),
                      "flag": np.asarray(flags, dtype=bool), "score": np.asarray(scores, dtype=np.float64)})
    incidents = incidents_from_rows(table, tidewatch.SensorSet("skab", ["score"]), sample_period_s=1.0)
    events = label_spans(labels, times_us / 1e6, plants)
    report = evaluate_incidents(incidents, events, normal_seconds=float((labels == 0).sum()))
    return report.to_dict()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="SKAB's data/ folder")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where skab.json and the PNGs go")
    parser.add_argument("--train-rows", type=int, default=400, help="rows of each file to fit on (SKAB: 400)")
    parser.add_argument("--methods", default="all",
                        help="comma-separated subset of pca,iforest,random,lstm-vae (default: all available)")
    parser.add_argument("--quantile", type=float, default=0.99,
                        help="training-score quantile used as the baselines' threshold (default 0.99)")
    parser.add_argument("--explained-variance", type=float, default=0.95, help="PCA variance kept (default 0.95)")
    parser.add_argument("--lstm-vae-config",
                        help="JSON object of ModelConfig fields overriding the benchmark's LSTM-VAE settings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    args = parser.parse_args(argv)

    from tidewatch.evaluation import confusion_counts, evaluate
    from tidewatch.plots import plot_run

    total_started = time.perf_counter()
    files = load_skab(args.data_dir)
    too_short = [f.name for f in files if len(f.values) <= args.train_rows]
    if too_short:
        raise SystemExit(f"files with no rows after the first {args.train_rows}: {too_short}")
    labels = np.concatenate([f.labels[args.train_rows:] for f in files])
    timestamps = np.concatenate([f.timestamps[args.train_rows:] for f in files])
    signals = np.concatenate([f.values[args.train_rows:] for f in files])
    lengths = [len(f.values) - args.train_rows for f in files]
    boundaries = np.cumsum([0, *lengths[:-1]]).tolist()
    train_anomalous = sum(int(f.labels[: args.train_rows].sum()) for f in files)

    factories, lstm_vae_settings = method_factories(args)
    wanted = list(factories) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in factories]
    if unknown:
        hint = " (lstm-vae needs tidewatch.train, not available in this build)" if "lstm-vae" in unknown else ""
        raise SystemExit(f"unknown or unavailable method(s) {unknown}; available: {list(factories)}{hint}")

    print(f"SKAB: {len(files)} files (tidewatch.readers.read_skab); fit on the first {args.train_rows} rows of each "
          f"({train_anomalous} of those rows are labelled anomalous, kept as the protocol says); "
          f"{len(labels)} test rows, {int(labels.sum())} anomalous")
    if "lstm-vae" not in factories:
        print("note: tidewatch.train is not in this build, so the LSTM-VAE is not run; baselines only")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for key in wanted:
        print(f"running {key} ...", flush=True)
        try:
            run = run_method(key, factories[key], files, args.train_rows)
        except Exception as exc:  # one broken method must not hide the others' figures
            traceback.print_exc()
            results.append({"key": key, "name": key, "error": f"{type(exc).__name__}: {exc}"})
            continue
        for one in [run, *run["variants"]]:
            report = evaluate(labels, flags=one["flags"], scores=one["scores"], timestamps=timestamps,
                              boundaries=boundaries)
            entry = {"key": one["key"], "name": one["name"], "seconds": one["seconds"], "report": report.to_dict(),
                     "per_file": one["per_file"]}
            entry["report"].pop("events")  # per-event rows are long; per-file figures are kept instead
            entry["incidents"] = incident_figures(one["flags"], one["scores"], labels, timestamps, boundaries)
            if not args.no_plots:
                png = plot_run(
                    args.out_dir / f"skab_{_slug(one['key'])}.png", scores=one["scores"], threshold=1.0,
                    labels=labels, flags=one["flags"], signals=signals, sensor_names=list(SENSORS),
                    boundaries=boundaries,
                    title=f"SKAB, {one['name']}: F1 {report.f1:.2f}  FAR {report.far_pct:.1f} %  "
                          f"MAR {report.mar_pct:.1f} %  (score / per-file threshold; grey lines = file boundaries)",
                )
                entry["plot"] = str(png)
            results.append(entry)

    reference_counts = confusion_counts(np.ones_like(labels), labels)
    reference = {"f1": reference_counts.f1, "far_pct": reference_counts.far_pct, "mar_pct": reference_counts.mar_pct}
    table = format_table(results, reference)
    print()
    print(table)

    summary = {
        "benchmark": "SKAB outlier detection",
        "protocol": f"per file: fit on first {args.train_rows} rows, predict the rest; concatenate; binary metrics",
        "files": [f.name for f in files],
        "test_rows": int(len(labels)),
        "test_anomalous_rows": int(labels.sum()),
        "train_rows_labelled_anomalous": train_anomalous,
        "settings": {"quantile": args.quantile, "explained_variance": args.explained_variance, "seed": args.seed,
                     "lstm_vae_config": args.lstm_vae_config,
                     "lstm_vae_settings": lstm_vae_settings},
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
        "total_seconds": time.perf_counter() - total_started,
        "flag_every_row_reference": reference,
        "published": [{"method": n, "f1": f1, "far_pct": far, "mar_pct": mar} for n, f1, far, mar in PUBLISHED],
        "results": results,
    }
    out_json = args.out_dir / "skab.json"
    out_json.write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {out_json} and {sum('plot' in r for r in results)} PNG(s) to {args.out_dir} "
          f"in {summary['total_seconds']:.0f} s")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
