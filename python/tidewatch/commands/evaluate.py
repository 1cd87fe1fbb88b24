"""`tidewatch evaluate`: measure scored rows against labels and print the report.

Reads a scored Parquet file or folder (the Detector's / inference job's output joined with labels) or a CSV,
with columns `score`, `flag`, `label`, and optionally `timestamp`, `plant`, `status`, `threshold`,
`top_sensors` (comma-separated) and `error_<SENSOR>`. Labels may be 0/1, booleans or SWaT's
`Normal`/`Attack` (`A ttack` included).

Timestamps are compared in UTC (timezone-naive ones are taken as UTC); the attack list's local times are
converted with --attacks-tz.

Rows with no score (status `warmup` or `quarantined`) are left out and counted in the output; with
`--unscored error` they are an error instead. With a timestamp column, rows are put in (plant, time) order
first, and labelled events never span two plants.

Point-adjusted F1 and PA%K are printed under INFLATED: they overstate detection; compare detectors on the
point-wise and event-wise figures.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

LABEL_WORDS = {"normal": 0, "attack": 1, "anomaly": 1, "anomalous": 1, "0": 0, "1": 1, "false": 0, "true": 1}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="measure scored rows against labels: F1, FAR/MAR, event recall, delay, PR-AUC, attribution",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="scored rows: a .parquet file or folder, or a .csv file")
    p.add_argument("--json", dest="json_out", metavar="PATH", help="also write the report as JSON here")
    p.add_argument("--plot", metavar="PATH", help="also write a PNG of score, threshold, labelled/flagged ranges")
    p.add_argument("--threshold", type=float,
                   help="flag rows whose score exceeds this instead of using the flag column")
    p.add_argument("--tolerance-rows", type=int, default=0,
                   help="a flag up to this many rows after an event still detects it (default 0)")
    p.add_argument("--attacks", metavar="CSV",
                   help="attack list (attack_no,start,end,attack_points with ';' between points) for per-sensor "
                        "attribution; 'swat' for the official SWaT A1 list shipped with tidewatch")
    p.add_argument("--attacks-tz", default="Asia/Singapore",
                   help="time zone of the attack list's local times (default Asia/Singapore, SWaT's)")
    p.add_argument("--top-k", type=int, default=3, help="attribution: attacked sensor among the top k (default 3)")
    p.add_argument("--unscored", choices=("skip", "error"), default="skip",
                   help="rows without a score: leave out and count them (default), or fail")
    p.add_argument("--signals", default="",
                   help="comma-separated input columns to draw above the score in --plot")
    p.add_argument("--sep", default=None, help="CSV separator (default: guessed from the header line)")
    p.add_argument("--incident-min-seconds", type=float, default=None,
                   help="incidents: flags must persist this long to open one (default: max(10 s, 10 sample periods))")
    p.add_argument("--incident-quiet-seconds", type=float, default=None,
                   help="incidents: one closes after this long without flags (default: max(60 s, 30 sample periods))")
    for column, default in (("score", "score"), ("flag", "flag"), ("label", "label"), ("timestamp", "timestamp"),
                            ("plant", "plant"), ("status", "status"), ("threshold", "threshold"),
                            ("top-sensors", "top_sensors")):
        p.add_argument(f"--{column}-col", default=default, help=f"column name (default {default!r})")
    p.set_defaults(func=run)


def _read(path: Path, sep: str | None) -> Any:
    import pandas as pd

    from tidewatch.errors import InputError

    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir() or path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pandas()
    if path.suffix.lower() in (".csv", ".txt"):
        if sep is None:
            with path.open(encoding="utf-8") as handle:
                header = handle.readline()
            sep = ";" if header.count(";") > header.count(",") else ","
        return pd.read_csv(path, sep=sep)
    raise InputError(f"{path}: expected a .parquet file or folder or a .csv file")


def _labels(series: Any, column: str) -> Any:
    import numpy as np
    import pandas as pd

    from tidewatch.errors import InputError

    if series.isna().any():
        row = int(np.flatnonzero(series.isna().to_numpy())[0])
        raise InputError(f"column {column!r}: row {row} has no label")
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy()
        bad = ~np.isin(values, (0, 1))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"column {column!r}: row {row} holds {values[row]!r}; expected 0/1")
        return values.astype(np.int8)
    words = series.astype(str).str.replace(r"\s+", "", regex=True).str.lower()
    mapped = words.map(LABEL_WORDS)
    if mapped.isna().any():
        row = int(np.flatnonzero(mapped.isna().to_numpy())[0])
        raise InputError(
            f"column {column!r}: row {row} holds {series.iloc[row]!r}; expected 0/1 or Normal/Attack"
        )
    return mapped.to_numpy(dtype=np.int8)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from tidewatch.errors import InputError
    from tidewatch.evaluation import attacked_events_from_time_ranges, attacks_from_table, evaluate

    frame = _read(Path(args.input), args.sep)
    n_read = len(frame)
    for needed in (args.score_col, args.label_col):
        if needed not in frame.columns:
            raise InputError(f"{args.input}: no column {needed!r}; columns are {list(frame.columns)}")
    if args.threshold is None and args.flag_col not in frame.columns:
        raise InputError(f"{args.input}: no column {args.flag_col!r}; give --threshold to flag from the score")

    has_time = args.timestamp_col in frame.columns
    has_plant = args.plant_col in frame.columns
    if has_time:
        times = pd.to_datetime(frame[args.timestamp_col])
        if getattr(times.dt, "tz", None) is not None:
            times = times.dt.tz_convert(None)
        frame[args.timestamp_col] = times
        order = [args.plant_col, args.timestamp_col] if has_plant else [args.timestamp_col]
        frame = frame.sort_values(order, kind="stable").reset_index(drop=True)

    unscored = frame[args.score_col].isna()
    if args.flag_col in frame.columns and args.threshold is None:
        unscored |= frame[args.flag_col].isna()
    left_out: dict[str, int] = {}
    if unscored.any():
        reasons = (frame.loc[unscored, args.status_col].fillna("no status").astype(str)
                   if args.status_col in frame.columns else pd.Series("no score", index=frame.index[unscored]))
        left_out = {str(k): int(v) for k, v in reasons.value_counts().items()}
        if args.unscored == "error":
            row = int(np.flatnonzero(unscored.to_numpy())[0])
            raise InputError(f"{int(unscored.sum())} row(s) have no score (first at row {row}): {left_out}")
        frame = frame.loc[~unscored].reset_index(drop=True)
    if frame.empty:
        raise InputError(f"{args.input}: no scored rows to evaluate (left out: {left_out})")

    labels = _labels(frame[args.label_col], args.label_col)
    scores = frame[args.score_col].to_numpy(dtype=np.float64)
    if args.threshold is not None:
        flags = scores > args.threshold
        threshold: float | None = args.threshold
    else:
        flags = _labels(frame[args.flag_col], args.flag_col).astype(bool)
        threshold = None
        if args.threshold_col in frame.columns and frame[args.threshold_col].notna().any():
            distinct = frame[args.threshold_col].dropna().unique()
            threshold = float(distinct[0]) if len(distinct) == 1 else None
    boundaries: list[int] = []
    if has_plant:
        plants = frame[args.plant_col].astype(str).to_numpy()
        boundaries = (np.flatnonzero(plants[1:] != plants[:-1]) + 1).tolist()
    timestamps = frame[args.timestamp_col].to_numpy() if has_time else None

    attribution_inputs: dict[str, Any] = {}
    if args.attacks:
        if not has_time:
            raise InputError(f"--attacks needs a {args.timestamp_col!r} column to place the attacks in time")
        if boundaries:
            raise InputError("--attacks works on one plant's rows; the input holds several plants")
        from tidewatch.readers import load_attack_list

        attack_table = load_attack_list(None if args.attacks == "swat" else args.attacks, tz=args.attacks_tz)
        events = attacked_events_from_time_ranges(timestamps, attacks_from_table(attack_table))
        error_columns = [c for c in frame.columns if isinstance(c, str) and c.startswith("error_")]
        if error_columns:
            attribution_inputs = {
                "error_matrix": frame[error_columns].to_numpy(dtype=np.float64),
                "sensor_names": [c[len("error_"):] for c in error_columns],
            }
        elif args.top_sensors_col in frame.columns:
            attribution_inputs = {
                "top_sensors_per_row": [
                    [s for s in re.split(r"[,;]", v) if s.strip()] if isinstance(v, str) else []
                    for v in frame[args.top_sensors_col].tolist()
                ]
            }
        else:
            raise InputError(
                f"--attacks needs per-sensor errors (error_<SENSOR> columns) or a {args.top_sensors_col!r} column"
            )
        attribution_inputs["attacked_events"] = events

    report = evaluate(
        labels,
        flags=flags,
        scores=scores,
        threshold=threshold,
        timestamps=timestamps,
        tolerance_rows=args.tolerance_rows,
        boundaries=boundaries,
        top_k=args.top_k,
        **attribution_inputs,
    )
    print(f"{args.input}: {n_read} rows read, {len(frame)} evaluated"
          + (f", left out (no score): {left_out}" if left_out else "")
          + ("" if has_time else "; no timestamp column, rows taken in file order"))
    print(report.format())
    incident_report = None
    if has_time:
        incident_report = _incident_report(frame, args, flags, scores, labels, timestamps)
        print(incident_report.format())

    if args.json_out:
        data = report.to_dict()
        data["input"] = str(args.input)
        data["rows_read"] = n_read
        data["rows_left_out"] = left_out
        if incident_report is not None:
            data["incidents"] = incident_report.to_dict()
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(data, indent=2, default=str))
        print(f"wrote {args.json_out}")
    if args.plot:
        from tidewatch.plots import plot_run

        signal_columns = [c.strip() for c in args.signals.split(",") if c.strip()]
        missing = [c for c in signal_columns if c not in frame.columns]
        if missing:
            raise InputError(f"--signals: no column(s) {missing} in {args.input}")
        plot_run(
            args.plot,
            scores=scores,
            threshold=threshold,
            labels=labels,
            flags=flags,
            signals=frame[signal_columns].to_numpy(dtype=np.float64) if signal_columns else None,
            sensor_names=signal_columns or None,
            timestamps=timestamps,
            boundaries=boundaries,
            title=f"{Path(args.input).name}: F1 {report.f1:.2f}  FAR {report.far_pct:.1f} %  "
                  f"MAR {report.mar_pct:.1f} %  events {report.n_events_detected}/{report.n_events}",
        )
        print(f"wrote {args.plot}")
    return 0


def _incident_report(frame: Any, args: argparse.Namespace, flags: Any, scores: Any, labels: Any, timestamps: Any):
    """Incident-wise figures: the flags grouped into incidents by the core's tracker (as the streaming job
    does), against the labelled events. Needs timestamps."""
    import numpy as np
    import pyarrow as pa

    from tidewatch._native import SensorSet
    from tidewatch.incidents import evaluate_incidents, incidents_from_rows, label_spans, median_step_seconds

    times_us = np.asarray(timestamps).astype("datetime64[us]").astype(np.int64)
    plants = (frame[args.plant_col].astype(str).to_numpy() if args.plant_col in frame.columns
              else np.full(len(frame), "plant"))
    error_columns = [c for c in frame.columns if isinstance(c, str) and c.startswith("error_")]
    names = [c[len("error_"):] for c in error_columns] or ["score"]
    sensors = SensorSet(str(plants[0]) if len(plants) else "plant", names)
    columns = {
        "plant": pa.array(plants, pa.string()),
        "timestamp": pa.array(times_us, pa.timestamp("us", tz="UTC")),
        "flag": pa.array(np.asarray(flags, dtype=bool)),
        "score": pa.array(np.asarray(scores, dtype=np.float64)),
    }
    if "anomalous_sensors" in frame.columns:
        columns["anomalous_sensors"] = pa.array(frame["anomalous_sensors"].astype(object).where(
            frame["anomalous_sensors"].notna(), None).tolist(), pa.string())
    period = median_step_seconds(times_us)
    incidents = incidents_from_rows(pa.table(columns), sensors, sample_period_s=period,
                                    min_duration_s=args.incident_min_seconds, quiet_s=args.incident_quiet_seconds)
    times_s = times_us / 1e6
    events = label_spans(labels, times_s, list(plants))
    normal_seconds = float((np.asarray(labels) == 0).sum()) * period
    return evaluate_incidents(incidents, events, normal_seconds=normal_seconds,
                              tolerance_s=args.tolerance_rows * period)
