"""Incidents from Python: read the inference job's incidents sink, group scored rows into incidents
with the core's tracker (src/incidents.rs), and measure incidents against labelled events.

An incident is true when it overlaps a labelled event of its plant (up to ``tolerance_s`` after the
event's end); an event is detected when a true incident overlaps it. Detection delay is the time from
the event's start to the moment its first incident *opened* (became known), never negative.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

#: The incidents sink, under the results directory (hidden from readers of the results by the underscore).
INCIDENTS_DIR = "_incidents"

__all__ = [
    "INCIDENTS_DIR",
    "read_transitions",
    "current_incidents",
    "incidents_from_rows",
    "median_step_seconds",
    "IncidentReport",
    "evaluate_incidents",
]


def read_transitions(results_dir: str | Path) -> pa.Table:
    """Every transition the inference job wrote under ``results_dir/_incidents``, in observation order."""
    import pyarrow.parquet as pq

    from tidewatch.errors import InputError

    root = Path(results_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such results directory")
    sink = root / INCIDENTS_DIR
    files = sorted(sink.glob("batch-*.parquet"), key=lambda p: int(p.stem.split("-")[1])) if sink.is_dir() else []
    if not files:
        return pa.table({})
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f))
        except Exception as exc:  # a damaged file is named, the others still read
            raise InputError(f"{f}: not a readable incidents file: {exc}") from exc
    return pa.concat_tables(tables)


def current_incidents(transitions: pa.Table) -> list[dict[str, Any]]:
    """Each incident as it stands after its latest transition, with ``status`` open/closed and
    ``opened_at`` (when it opened), most recent start first."""
    if transitions.num_rows == 0:
        return []
    latest: dict[str, dict[str, Any]] = {}
    opened_at: dict[str, Any] = {}
    for row in transitions.to_pylist():
        key = row["incident_id"]
        if row["transition"] == "opened":
            opened_at.setdefault(key, row["observed_at"])
        prev = latest.get(key)
        if prev is not None and prev["transition"] == "closed":
            continue
        latest[key] = row
    out = []
    for key, row in latest.items():
        row = dict(row)
        row["status"] = "closed" if row.pop("transition") == "closed" else "open"
        row["opened_at"] = opened_at.get(key)
        out.append(row)
    out.sort(key=lambda r: r["start"], reverse=True)
    return out


def median_step_seconds(times_us: Any) -> float:
    """The median positive step between consecutive times (microseconds), in seconds; 1 s without one."""
    steps = np.diff(np.asarray(times_us, dtype=np.int64)) / 1e6
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0


def incidents_from_rows(
    scored: pa.Table | pa.RecordBatch,
    sensors: Any,
    *,
    sample_period_s: float | None = None,
    min_duration_s: float | None = None,
    gap_s: float | None = None,
    quiet_s: float | None = None,
    model_version: str = "",
) -> list[dict[str, Any]]:
    """Incidents of scored rows (columns ``timestamp``, ``flag``, ``score``; optional ``plant``,
    ``status``, ``anomalous_sensors``) grouped by the core's tracker, as the job would have found them.
    Incidents still open at the end of the rows are returned with ``status`` "open" and ``end`` None.
    Rows must be in time order per plant."""
    from tidewatch._native import BatchAggregate, IncidentTracker

    table = scored if isinstance(scored, pa.Table) else pa.Table.from_batches([scored])
    names = table.column_names
    n = table.num_rows
    status = table.column("status").to_pylist() if "status" in names else ["scored"] * n
    flags = table.column("flag").to_pylist()
    scores = table.column("score").to_pylist()
    times = table.column("timestamp").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(
        zero_copy_only=False)
    plants = table.column("plant").to_pylist() if "plant" in names else [sensors.plant] * n
    named = table.column("anomalous_sensors").to_pylist() if "anomalous_sensors" in names else [None] * n
    index = {s: i for i, s in enumerate(sensors.sensors)}

    period = sample_period_s
    if period is None:
        period = median_step_seconds(times[np.array([s == "scored" for s in status], dtype=bool)])
    agg = BatchAggregate(sensors)
    last_time: dict[str, float] = {}
    for i in range(n):
        if status[i] != "scored" or flags[i] is None:
            continue
        t = float(times[i]) / 1e6
        plant = plants[i] or ""
        last_time[plant] = max(last_time.get(plant, t), t)
        if flags[i]:
            ids = [index[s] for s in (named[i] or "").split(",") if s in index]
            agg.record_evidence(plant, t, True, float(scores[i]), ids)
    for plant, t in last_time.items():
        agg.record_evidence(plant, t, False, 0.0, [])
    tracker = IncidentTracker(sensors, sample_period_s=period, min_duration_s=min_duration_s, gap_s=gap_s,
                              quiet_s=quiet_s)
    transitions = pa.Table.from_batches([tracker.apply(agg, model_version)])
    return current_incidents(transitions)


@dataclass
class IncidentReport:
    """Incidents against labelled events (see the module documentation)."""

    n_incidents: int
    n_true_incidents: int
    n_false_incidents: int
    n_events: int
    n_events_detected: int
    precision: float
    recall: float
    f1: float
    false_incidents_per_day: float
    normal_days: float
    delay_seconds_median: float
    delay_seconds_mean: float
    tolerance_s: float
    detected_events: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}

    def format(self) -> str:
        def f(v: float, d: int = 3) -> str:
            return "n/a" if math.isnan(v) else f"{v:.{d}f}"

        return "\n".join([
            f"incident-wise (tolerance {self.tolerance_s:g} s after each event)",
            f"  incidents {self.n_incidents} (true {self.n_true_incidents}, false {self.n_false_incidents})"
            f"  events with an incident {self.n_events_detected}/{self.n_events}",
            f"  precision {f(self.precision)}  recall {f(self.recall)}  F1 {f(self.f1)}",
            f"  false incidents per day {f(self.false_incidents_per_day, 2)} (over {f(self.normal_days, 2)} days "
            f"of normal rows)",
            f"  delay to open (s): median {f(self.delay_seconds_median, 1)}  mean {f(self.delay_seconds_mean, 1)}",
        ])


def _seconds(value: Any) -> float:
    """A timestamp (datetime, pandas/numpy time, or seconds) as Unix seconds."""
    if value is None:
        return math.nan
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, np.datetime64):
        return float(value.astype("datetime64[us]").astype(np.int64)) / 1e6
    ts = getattr(value, "timestamp", None)
    if ts is not None:
        import datetime as dt

        if isinstance(value, dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return float(value.timestamp())
    raise TypeError(f"not a time: {value!r}")


def label_spans(labels: Sequence[int], times_s: Sequence[float], plants: Sequence[str] | None = None
                ) -> list[tuple[str, float, float]]:
    """Contiguous labelled rows as (plant, first time, last time), never across plants."""
    from tidewatch.evaluation import label_events

    times = np.asarray(times_s, dtype=np.float64)
    plants = list(plants) if plants is not None else [""] * len(times)
    boundaries = [i for i in range(1, len(plants)) if plants[i] != plants[i - 1]]
    return [(plants[a], float(times[a]), float(times[b - 1])) for a, b in label_events(labels, boundaries)]


def evaluate_incidents(
    incidents: Sequence[dict[str, Any]],
    events: Sequence[tuple[str, float, float]],
    *,
    normal_seconds: float,
    tolerance_s: float = 0.0,
) -> IncidentReport:
    """Event-wise precision / recall / F1 of ``incidents`` (dicts with plant, start, end or last flag,
    opened_at) against ``events`` (plant, start, end in seconds); false incidents per day of normal time."""
    spans = []
    for inc in incidents:
        start = _seconds(inc["start"])
        end = _seconds(inc.get("end")) if inc.get("end") is not None else start + float(inc.get("duration_seconds") or 0)
        opened = _seconds(inc.get("opened_at")) if inc.get("opened_at") is not None else start
        spans.append((inc.get("plant") or "", start, end, opened))
    matched_incident = [False] * len(spans)
    delays: list[float] = []
    detected: list[int] = []
    for k, (plant, ev_start, ev_end) in enumerate(events):
        first_open = math.inf
        for j, (ip, s, e, opened) in enumerate(spans):
            if (plant and ip and ip != plant) or s > ev_end + tolerance_s or e < ev_start:
                continue
            matched_incident[j] = True
            first_open = min(first_open, opened)
        if first_open < math.inf:
            detected.append(k)
            delays.append(max(0.0, first_open - ev_start))
    n_true = sum(matched_incident)
    n_false = len(spans) - n_true
    precision = n_true / len(spans) if spans else math.nan
    recall = len(detected) / len(events) if events else math.nan
    f1 = (2 * precision * recall / (precision + recall)
          if spans and events and (precision + recall) > 0 else (0.0 if events else math.nan))
    days = normal_seconds / 86400.0
    return IncidentReport(
        n_incidents=len(spans), n_true_incidents=n_true, n_false_incidents=n_false, n_events=len(events),
        n_events_detected=len(detected), precision=precision, recall=recall, f1=f1,
        false_incidents_per_day=n_false / days if days > 0 else math.nan, normal_days=days,
        delay_seconds_median=float(np.median(delays)) if delays else math.nan,
        delay_seconds_mean=float(np.mean(delays)) if delays else math.nan,
        tolerance_s=tolerance_s, detected_events=detected,
    )
