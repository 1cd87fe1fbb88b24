"""Detection-quality metrics: how many attacks a detector catches and how many false alarms it raises.

All functions take one row per time step, in time order: ``labels`` (1 = labelled anomalous), ``flags``
(1 = the detector raised an alarm) and optionally ``scores`` (higher = more anomalous). Everything is
vectorised numpy; scikit-learn is used only for the average precision (PR-AUC).

Definitions used throughout:

- point-wise precision / recall / F1 over rows; F1 = 2·TP / (2·TP + FP + FN), which is SKAB's
  ``TP / (TP + (FN + FP) / 2)``.
- FAR and MAR as SKAB defines them, in percent: FAR = FP / (FP + TN) · 100, MAR = FN / (FN + TP) · 100.
- a labelled *event* is a maximal run of consecutive label-1 rows. It is *detected* when at least one row
  from its start up to ``tolerance_rows`` rows after its end is flagged; the detection delay is the first
  such flag's row (or time) minus the event's start.
- PR-AUC is the average precision of the scores (threshold-free).
- point-adjusted F1 and PA%K (Kim et al., "Towards a Rigorous Evaluation of Time-series Anomaly Detection",
  AAAI 2022) mark a whole event as detected once enough of it is flagged. Point adjustment (K = 0) makes even
  random scores look good on long events: these figures are INFLATED, carry ``inflated`` in their names and are
  printed under a warning. Compare detectors on the point-wise and event-wise figures.

Undefined ratios (no flags for precision, no labelled rows for recall, ...) are ``nan`` here, ``None`` in
``to_dict()`` and ``n/a`` in ``format()``.
"""
from __future__ import annotations

import math
from datetime import timezone
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tidewatch.errors import InputError

DEFAULT_PA_K_PERCENTS: tuple[int, ...] = (0, 20, 50, 80, 100)


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------


def _as_binary(values: Any, what: str) -> np.ndarray:
    """A 1-D boolean array from 0/1 (or bool) values; anything else is an error naming the first bad row."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError(f"{what}: expected a 1-D array of 0/1 values, got shape {array.shape}")
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{what}: expected numeric 0/1 values, got dtype {array.dtype}")
    bad = ~np.isin(array, (0, 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{what}: row {row} holds {array[row]!r}; only 0 and 1 are allowed")
    return array.astype(bool)


def _as_scores(values: Any, what: str = "scores") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise InputError(f"{what}: expected a 1-D array, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise InputError(
            f"{what}: {rows.size} row(s) are not finite numbers (first at row {int(rows[0])}: {array[rows[0]]})"
        )
    return array


def _same_length(**arrays: np.ndarray | None) -> int:
    lengths = {name: len(a) for name, a in arrays.items() if a is not None}
    if len(set(lengths.values())) > 1:
        raise InputError(f"inputs differ in length: {lengths}")
    return next(iter(lengths.values()))


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else math.nan


# --------------------------------------------------------------------------------------------------
# point-wise metrics
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfusionCounts:
    """Row counts of a binary detector against labels."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def far_pct(self) -> float:
        """SKAB's false alarm rate, percent: FP / (FP + TN) * 100."""
        return 100.0 * _ratio(self.fp, self.fp + self.tn)

    @property
    def mar_pct(self) -> float:
        """SKAB's missed alarm rate, percent: FN / (FN + TP) * 100."""
        return 100.0 * _ratio(self.fn, self.fn + self.tp)


def confusion_counts(flags: Any, labels: Any) -> ConfusionCounts:
    flags_b = _as_binary(flags, "flags")
    labels_b = _as_binary(labels, "labels")
    _same_length(flags=flags_b, labels=labels_b)
    tp = int(np.count_nonzero(flags_b & labels_b))
    fp = int(np.count_nonzero(flags_b & ~labels_b))
    fn = int(np.count_nonzero(~flags_b & labels_b))
    tn = int(flags_b.size - tp - fp - fn)
    return ConfusionCounts(tp=tp, fp=fp, tn=tn, fn=fn)


def precision_recall_f1(flags: Any, labels: Any) -> tuple[float, float, float]:
    counts = confusion_counts(flags, labels)
    return counts.precision, counts.recall, counts.f1


def false_alarm_rate(flags: Any, labels: Any) -> float:
    """FAR in percent, as SKAB defines it: FP / (FP + TN) * 100."""
    return confusion_counts(flags, labels).far_pct


def missed_alarm_rate(flags: Any, labels: Any) -> float:
    """MAR in percent, as SKAB defines it: FN / (FN + TP) * 100."""
    return confusion_counts(flags, labels).mar_pct


def pr_auc(scores: Any, labels: Any) -> float:
    """Average precision of ``scores`` against ``labels`` (area under the precision-recall curve, step-wise).

    ``nan`` when there is no labelled anomalous row (the curve is undefined).
    """
    from sklearn.metrics import average_precision_score

    scores_f = _as_scores(scores)
    labels_b = _as_binary(labels, "labels")
    _same_length(scores=scores_f, labels=labels_b)
    if not labels_b.any():
        return math.nan
    return float(average_precision_score(labels_b, scores_f))


# --------------------------------------------------------------------------------------------------
# events
# --------------------------------------------------------------------------------------------------


def _segment_starts(boundaries: Sequence[int], n_rows: int) -> np.ndarray:
    """Sorted rows where a new segment (e.g. the next concatenated file) begins, 0 excluded."""
    starts = np.unique(np.asarray(boundaries, dtype=np.int64))
    if starts.size and (starts[0] < 0 or starts[-1] > n_rows):
        raise InputError(f"segment boundaries must lie within [0, {n_rows}], got {starts.tolist()}")
    return starts[(starts > 0) & (starts < n_rows)]


def label_events(labels: Any, boundaries: Sequence[int] = ()) -> np.ndarray:
    """Maximal runs of label 1 as an ``(n_events, 2)`` int64 array of ``[start, end)`` row ranges.

    ``boundaries`` are rows where a new segment begins (concatenated files or plants): a run never spans one.
    """
    labels_b = _as_binary(labels, "labels")
    cuts = _segment_starts(boundaries, labels_b.size)
    previous = np.concatenate(([False], labels_b[:-1]))
    following = np.concatenate((labels_b[1:], [False]))
    previous[cuts] = False
    following[cuts - 1] = False
    starts = np.flatnonzero(labels_b & ~previous)
    ends = np.flatnonzero(labels_b & ~following) + 1
    return np.stack([starts, ends], axis=1).astype(np.int64)


def _flags_per_event(flags_b: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Number of flagged rows inside each ``[start, end)`` event."""
    cumulative = np.concatenate(([0], np.cumsum(flags_b, dtype=np.int64)))
    return cumulative[events[:, 1]] - cumulative[events[:, 0]]


@dataclass(frozen=True)
class EventOutcome:
    """One labelled event and whether (and how fast) the detector caught it."""

    start_row: int
    end_row: int  # exclusive
    detected: bool
    first_flag_row: int | None
    delay_rows: int | None
    delay_seconds: float | None


def _seconds(timestamps: Any, n_rows: int) -> np.ndarray:
    """Timestamps as float seconds: datetime64 values, or numbers already in seconds."""
    array = np.asarray(timestamps)
    if array.ndim != 1 or len(array) != n_rows:
        raise InputError(f"timestamps: expected {n_rows} values, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.datetime64):
        if np.isnat(array).any():
            raise InputError(f"timestamps: row {int(np.flatnonzero(np.isnat(array))[0])} is not a time")
        return array.astype("datetime64[ns]").astype(np.int64) / 1e9
    return _as_scores(array, "timestamps")


def event_outcomes(
    flags: Any,
    labels: Any,
    *,
    tolerance_rows: int = 0,
    timestamps: Any | None = None,
    boundaries: Sequence[int] = (),
) -> list[EventOutcome]:
    """Per labelled event: detected or not, first flag, delay in rows (and seconds when ``timestamps`` given).

    An event ``[start, end)`` counts as detected when a row in ``[start, end + tolerance_rows)`` is flagged:
    a detector that only alarms a little after a short event ends still caught it, late. The tolerance
    never reaches past the event's segment (see ``label_events``).
    """
    if tolerance_rows < 0:
        raise InputError(f"tolerance_rows must be >= 0, got {tolerance_rows}")
    flags_b = _as_binary(flags, "flags")
    labels_b = _as_binary(labels, "labels")
    n_rows = _same_length(flags=flags_b, labels=labels_b)
    events = label_events(labels_b, boundaries)
    seconds = _seconds(timestamps, n_rows) if timestamps is not None else None

    flagged_rows = np.flatnonzero(flags_b)
    # the first flagged row at or after each event's start, then whether it lies within the window
    if flagged_rows.size:
        position = np.searchsorted(flagged_rows, events[:, 0], side="left")
        last = flagged_rows.size - 1
        candidate = np.where(position <= last, flagged_rows[np.minimum(position, last)], -1)
    else:
        candidate = np.full(len(events), -1, dtype=np.int64)
    segment_ends = np.append(_segment_starts(boundaries, n_rows), n_rows)
    own_segment_end = segment_ends[np.searchsorted(segment_ends, events[:, 0], side="right")]
    window_end = np.minimum(events[:, 1] + tolerance_rows, own_segment_end)
    detected = (candidate >= 0) & (candidate < window_end)

    outcomes = []
    for (start, end), hit, first in zip(events.tolist(), detected.tolist(), candidate.tolist()):
        delay_seconds = float(seconds[first] - seconds[start]) if hit and seconds is not None else None
        outcomes.append(
            EventOutcome(
                start_row=start,
                end_row=end,
                detected=hit,
                first_flag_row=first if hit else None,
                delay_rows=first - start if hit else None,
                delay_seconds=delay_seconds,
            )
        )
    return outcomes


def event_recall(flags: Any, labels: Any, *, tolerance_rows: int = 0, boundaries: Sequence[int] = ()) -> float:
    """Share of labelled events with at least one flag (see ``event_outcomes``); ``nan`` with no events."""
    outcomes = event_outcomes(flags, labels, tolerance_rows=tolerance_rows, boundaries=boundaries)
    return _ratio(sum(o.detected for o in outcomes), len(outcomes))


# --------------------------------------------------------------------------------------------------
# point adjustment: INFLATED metrics, kept because papers report them
# --------------------------------------------------------------------------------------------------


def pa_k_adjust(flags: Any, labels: Any, k_percent: float, boundaries: Sequence[int] = ()) -> np.ndarray:
    """PA%K (Kim et al. 2022): flag every row of an event whose flagged share EXCEEDS ``k_percent`` %.

    K = 0 is classic point adjustment (one flag marks the whole event); K = 100 changes nothing.
    Rows outside events keep their flags.
    """
    if not 0 <= k_percent <= 100:
        raise InputError(f"PA%K: K must be within [0, 100], got {k_percent}")
    flags_b = _as_binary(flags, "flags")
    labels_b = _as_binary(labels, "labels")
    _same_length(flags=flags_b, labels=labels_b)
    events = label_events(labels_b, boundaries)
    adjusted = flags_b.copy()
    if events.size == 0:
        return adjusted
    lengths = events[:, 1] - events[:, 0]
    share = _flags_per_event(flags_b, events) / lengths
    # label-1 rows appear event after event, so repeating each event's verdict over its length lines up
    adjust_row = np.repeat(share > k_percent / 100.0, lengths)
    adjusted[np.flatnonzero(labels_b)[adjust_row]] = True
    return adjusted


def point_adjust(flags: Any, labels: Any, boundaries: Sequence[int] = ()) -> np.ndarray:
    """Classic point adjustment (PA%K with K = 0): any flag inside an event flags the whole event."""
    return pa_k_adjust(flags, labels, 0, boundaries)


def inflated_point_adjusted_f1(flags: Any, labels: Any, boundaries: Sequence[int] = ()) -> float:
    """F1 after point adjustment. INFLATED: long events make near-random detectors score high."""
    return confusion_counts(point_adjust(flags, labels, boundaries), labels).f1


def inflated_pa_k_f1(flags: Any, labels: Any, k_percent: float, boundaries: Sequence[int] = ()) -> float:
    """F1 after PA%K adjustment with threshold ``k_percent``. Inflated for small K."""
    return confusion_counts(pa_k_adjust(flags, labels, k_percent, boundaries), labels).f1


def inflated_pa_k_auc(
    flags: Any, labels: Any, k_percents: Sequence[float] | None = None, boundaries: Sequence[int] = ()
) -> float:
    """Area under the PA%K F1 curve over K in [0, 100] (trapezoids), normalised to [0, 1] (Kim et al. 2022)."""
    ks = np.asarray(k_percents if k_percents is not None else np.arange(0, 101), dtype=np.float64)
    if ks.size < 2 or ks[0] != 0 or ks[-1] != 100 or np.any(np.diff(ks) <= 0):
        raise InputError("PA%K AUC: K values must increase from 0 to 100")
    f1s = np.array([inflated_pa_k_f1(flags, labels, k, boundaries) for k in ks])
    return float(np.sum((f1s[1:] + f1s[:-1]) / 2 * np.diff(ks)) / 100.0)


# --------------------------------------------------------------------------------------------------
# per-sensor attribution
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackedEvent:
    """A labelled event with the sensors the attack (or fault) acted on; rows ``[start_row, end_row)``."""

    name: str
    start_row: int
    end_row: int
    sensors: frozenset[str]


@dataclass(frozen=True)
class AttributionOutcome:
    name: str
    attacked: tuple[str, ...]
    top_sensors: tuple[str, ...]
    hit: bool


@dataclass(frozen=True)
class AttributionResult:
    """Share of events whose attacked sensor is among the detector's top-k sensors by reconstruction error."""

    top_k: int
    n_events: int
    n_hits: int
    hit_rate: float
    events: tuple[AttributionOutcome, ...]
    # events that cannot be scored, with why: no attacked sensor named, none recorded, or no rows in the data
    excluded: tuple[tuple[str, str], ...] = ()


def attacked_events_from_time_ranges(
    timestamps: Any,
    attacks: Sequence[tuple[str, Any, Any, Collection[str]]],
) -> list[AttackedEvent]:
    """Map ``(name, start_time, end_time, sensors)`` attacks (end inclusive) onto row ranges of ``timestamps``.

    Times are compared as naive datetimes (UTC by convention); ``timestamps`` must be sorted. An attack
    outside the data gets an empty row range, which attribution
    reports as excluded rather than dropping it silently.
    """
    times = np.asarray(timestamps).astype("datetime64[ns]")
    if times.size and np.any(times[1:] < times[:-1]):
        raise InputError("timestamps must be sorted to map attack times onto rows")
    events = []
    for name, start, end, sensors in attacks:
        start_row = int(np.searchsorted(times, np.datetime64(start, "ns"), side="left"))
        end_row = int(np.searchsorted(times, np.datetime64(end, "ns"), side="right"))
        events.append(AttackedEvent(str(name), start_row, max(start_row, end_row), frozenset(sensors)))
    return events


def attacks_from_table(table: Any) -> list[tuple[str, Any, Any, frozenset[str]]]:
    """``(name, start, end, sensors)`` tuples from an attack list table (``tidewatch.readers.load_attack_list``:
    columns ``attack_no``, ``start``, ``end`` in UTC, ``attack_points`` separated by ``;``)."""
    columns = table.to_pydict() if hasattr(table, "to_pydict") else dict(table)
    points = columns.get("attack_points") or [None] * len(columns["start"])
    attacks = []
    for name, start, end, named in zip(columns["attack_no"], columns["start"], columns["end"], points):
        sensors = frozenset(s.strip() for s in (named or "").split(";") if s.strip())
        attacks.append((str(name), _naive_utc(start), _naive_utc(end), sensors))
    return attacks


def _naive_utc(value: Any) -> np.datetime64:
    """A datetime (aware ones converted to UTC) as a naive datetime64[ns], the form timestamps take here."""
    tz = getattr(value, "tzinfo", None)
    if tz is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return np.datetime64(value, "ns")


def _top_from_errors(mean_error: np.ndarray, sensor_names: Sequence[str], top_k: int) -> tuple[str, ...]:
    order = np.argsort(-mean_error, kind="stable")[:top_k]
    return tuple(sensor_names[i] for i in order)


def _top_from_votes(rows: Sequence[Sequence[str]], top_k: int) -> tuple[str, ...]:
    """Sensors most often in the per-row top lists; ties go to the better mean rank."""
    votes: dict[str, list[int]] = {}
    for ranked in rows:
        for rank, sensor in enumerate(ranked):
            entry = votes.setdefault(sensor, [0, 0])
            entry[0] += 1
            entry[1] += rank
    ordered = sorted(votes.items(), key=lambda item: (-item[1][0], item[1][1] / item[1][0], item[0]))
    return tuple(sensor for sensor, _ in ordered[:top_k])


def attribution_hit_rate(
    events: Sequence[AttackedEvent],
    *,
    top_k: int = 3,
    error_matrix: Any | None = None,
    sensor_names: Sequence[str] | None = None,
    top_sensors_per_row: Sequence[Sequence[str] | None] | None = None,
    rows_mask: Any | None = None,
) -> AttributionResult:
    """For each attacked event, rank sensors and check whether an attacked sensor is in the top ``top_k``.

    Give either ``error_matrix`` (rows x sensors reconstruction errors, with ``sensor_names``; sensors are
    ranked by mean error over the event's rows) or ``top_sensors_per_row`` (each row's sensors, largest error
    first; sensors are ranked by how often they appear over the event's rows). ``rows_mask`` (e.g. the flags)
    restricts each event to those rows where it has any, which is what an operator sees on an alarm.
    """
    if top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    if (error_matrix is None) == (top_sensors_per_row is None):
        raise InputError("give exactly one of error_matrix (with sensor_names) or top_sensors_per_row")
    if error_matrix is not None:
        errors = np.asarray(error_matrix, dtype=np.float64)
        if errors.ndim != 2:
            raise InputError(f"error_matrix: expected rows x sensors, got shape {errors.shape}")
        if sensor_names is None or len(sensor_names) != errors.shape[1]:
            raise InputError(
                f"error_matrix has {errors.shape[1]} sensor columns; sensor_names must name each of them"
            )
        n_rows = errors.shape[0]
    else:
        n_rows = len(top_sensors_per_row)  # type: ignore[arg-type]
    mask = _as_binary(rows_mask, "rows_mask") if rows_mask is not None else None
    if mask is not None and mask.size != n_rows:
        raise InputError(f"rows_mask has {mask.size} rows, the errors have {n_rows}")
    known = set(sensor_names) if sensor_names is not None else None

    outcomes: list[AttributionOutcome] = []
    excluded: list[tuple[str, str]] = []
    for event in events:
        if not event.sensors:
            excluded.append((event.name, "no attacked sensor named"))
            continue
        if known is not None and not (event.sensors & known):
            excluded.append((event.name, f"attacked point(s) {sorted(event.sensors)} not among the sensors"))
            continue
        start, end = max(event.start_row, 0), min(event.end_row, n_rows)
        if end <= start:
            excluded.append((event.name, "no rows of the event in the data"))
            continue
        rows = np.arange(start, end)
        if mask is not None and mask[start:end].any():
            rows = rows[mask[start:end]]
        if error_matrix is not None:
            top = _top_from_errors(errors[rows].mean(axis=0), sensor_names, top_k)  # type: ignore[arg-type]
        else:
            per_row = [top_sensors_per_row[i] or () for i in rows.tolist()]  # type: ignore[index]
            top = _top_from_votes(per_row, top_k)
        outcomes.append(
            AttributionOutcome(
                name=event.name,
                attacked=tuple(sorted(event.sensors)),
                top_sensors=top,
                hit=bool(event.sensors & set(top)),
            )
        )
    hits = sum(o.hit for o in outcomes)
    return AttributionResult(
        top_k=top_k,
        n_events=len(outcomes),
        n_hits=hits,
        hit_rate=_ratio(hits, len(outcomes)),
        events=tuple(outcomes),
        excluded=tuple(excluded),
    )


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_number(v) for v in value]
    return value


def _fmt(value: float | None, digits: int = 3, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


@dataclass
class EvaluationReport:
    """Everything ``evaluate`` measures. ``inflated_*`` fields are point-adjusted and overstate quality."""

    n_rows: int
    n_labelled_rows: int
    n_flagged_rows: int
    counts: ConfusionCounts
    precision: float
    recall: float
    f1: float
    far_pct: float
    mar_pct: float
    tolerance_rows: int
    n_events: int
    n_events_detected: int
    event_recall: float
    delay_rows_mean: float
    delay_rows_median: float
    delay_rows_max: float
    delay_seconds_mean: float | None
    delay_seconds_median: float | None
    pr_auc: float | None
    threshold: float | None
    inflated_point_adjusted_f1: float
    inflated_pa_k_f1: dict[int, float]
    inflated_pa_k_auc: float
    events: list[EventOutcome] = field(default_factory=list)
    attribution: AttributionResult | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``nan`` becomes ``None``)."""
        data = asdict(self)
        data["inflated_pa_k_f1"] = {str(k): v for k, v in self.inflated_pa_k_f1.items()}
        return _json_number(data)

    def format(self) -> str:
        c = self.counts
        lines = [
            f"rows {self.n_rows}  labelled anomalous {self.n_labelled_rows}  flagged {self.n_flagged_rows}"
            + (f"  threshold {self.threshold:.6g}" if self.threshold is not None else ""),
            "point-wise",
            f"  precision {_fmt(self.precision)}  recall {_fmt(self.recall)}  F1 {_fmt(self.f1)}",
            f"  FAR {_fmt(self.far_pct, 2, ' %')}  MAR {_fmt(self.mar_pct, 2, ' %')}"
            f"  (TP {c.tp}  FP {c.fp}  TN {c.tn}  FN {c.fn})",
            f"  PR-AUC {_fmt(self.pr_auc)}" if self.pr_auc is not None else "  PR-AUC n/a (no scores)",
            f"event-wise (tolerance {self.tolerance_rows} rows after each event)",
            f"  events detected {self.n_events_detected}/{self.n_events}  event recall {_fmt(self.event_recall)}",
            f"  detection delay rows: mean {_fmt(self.delay_rows_mean, 1)}  median {_fmt(self.delay_rows_median, 1)}"
            f"  max {_fmt(self.delay_rows_max, 0)}",
        ]
        if self.delay_seconds_mean is not None:
            lines.append(
                f"  detection delay seconds: mean {_fmt(self.delay_seconds_mean, 1)}"
                f"  median {_fmt(self.delay_seconds_median, 1)}"
            )
        if self.attribution is not None:
            a = self.attribution
            lines.append(
                f"attribution: attacked sensor in top-{a.top_k} for {a.n_hits}/{a.n_events} events"
                f"  hit rate {_fmt(a.hit_rate)}"
                + (f"  ({len(a.excluded)} event(s) excluded)" if a.excluded else "")
            )
        pa_k = "  ".join(f"K={k}: {_fmt(v)}" for k, v in self.inflated_pa_k_f1.items())
        lines += [
            "INFLATED (point-adjusted; overstates detection, not comparable to point-wise F1)",
            f"  point-adjusted F1 {_fmt(self.inflated_point_adjusted_f1)}",
            f"  PA%K F1 {pa_k}",
            f"  PA%K AUC {_fmt(self.inflated_pa_k_auc)}",
        ]
        return "\n".join(lines)


def evaluate(
    labels: Any,
    *,
    flags: Any | None = None,
    scores: Any | None = None,
    threshold: float | None = None,
    timestamps: Any | None = None,
    tolerance_rows: int = 0,
    pa_k_percents: Sequence[int] = DEFAULT_PA_K_PERCENTS,
    attacked_events: Sequence[AttackedEvent] | None = None,
    top_k: int = 3,
    error_matrix: Any | None = None,
    sensor_names: Sequence[str] | None = None,
    top_sensors_per_row: Sequence[Sequence[str] | None] | None = None,
    boundaries: Sequence[int] = (),
) -> EvaluationReport:
    """Measure a detector's output against labels.

    Give ``flags``, or ``scores`` with ``threshold`` (a row is flagged when its score exceeds the threshold),
    or all three (then ``flags`` is used as given and ``scores`` only for PR-AUC). Attribution is computed when
    ``attacked_events`` and either ``error_matrix`` + ``sensor_names`` or ``top_sensors_per_row`` are given.
    ``boundaries`` are rows where a new segment begins (concatenated files): no event spans one.
    """
    labels_b = _as_binary(labels, "labels")
    scores_f = _as_scores(scores) if scores is not None else None
    if flags is None:
        if scores_f is None or threshold is None:
            raise InputError("give flags, or scores together with a threshold")
        flags_b = scores_f > threshold
    else:
        flags_b = _as_binary(flags, "flags")
    n_rows = _same_length(labels=labels_b, flags=flags_b, scores=scores_f)

    counts = confusion_counts(flags_b, labels_b)
    outcomes = event_outcomes(
        flags_b, labels_b, tolerance_rows=tolerance_rows, timestamps=timestamps, boundaries=boundaries
    )
    delays = np.array([o.delay_rows for o in outcomes if o.detected], dtype=np.float64)
    delay_seconds = np.array([o.delay_seconds for o in outcomes if o.delay_seconds is not None], dtype=np.float64)
    with_times = timestamps is not None

    attribution = None
    if attacked_events is not None and (error_matrix is not None or top_sensors_per_row is not None):
        attribution = attribution_hit_rate(
            attacked_events,
            top_k=top_k,
            error_matrix=error_matrix,
            sensor_names=sensor_names,
            top_sensors_per_row=top_sensors_per_row,
            rows_mask=flags_b,
        )
    detected = sum(o.detected for o in outcomes)
    return EvaluationReport(
        n_rows=n_rows,
        n_labelled_rows=int(labels_b.sum()),
        n_flagged_rows=int(flags_b.sum()),
        counts=counts,
        precision=counts.precision,
        recall=counts.recall,
        f1=counts.f1,
        far_pct=counts.far_pct,
        mar_pct=counts.mar_pct,
        tolerance_rows=tolerance_rows,
        n_events=len(outcomes),
        n_events_detected=detected,
        event_recall=_ratio(detected, len(outcomes)),
        delay_rows_mean=float(delays.mean()) if delays.size else math.nan,
        delay_rows_median=float(np.median(delays)) if delays.size else math.nan,
        delay_rows_max=float(delays.max()) if delays.size else math.nan,
        delay_seconds_mean=(float(delay_seconds.mean()) if delay_seconds.size else math.nan) if with_times else None,
        delay_seconds_median=(float(np.median(delay_seconds)) if delay_seconds.size else math.nan)
        if with_times
        else None,
        pr_auc=pr_auc(scores_f, labels_b) if scores_f is not None else None,
        threshold=threshold,
        inflated_point_adjusted_f1=inflated_point_adjusted_f1(flags_b, labels_b, boundaries),
        inflated_pa_k_f1={int(k): inflated_pa_k_f1(flags_b, labels_b, k, boundaries) for k in pa_k_percents},
        inflated_pa_k_auc=inflated_pa_k_auc(flags_b, labels_b, boundaries=boundaries),
        events=outcomes,
        attribution=attribution,
    )


# --------------------------------------------------------------------------------------------------
# a detector against a run with attack ids (the simulator's tables)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackOutcome:
    """One attack of a labelled run: detected or not, how fast, and whether the attribution named it.

    Rows are positions among the evaluated (scored) rows, ``[start_row, end_row)``; ``rows`` is 0 for an
    attack that fell entirely in unscored (warm-up or quarantined) rows, which then counts as not detected.
    ``attribution_hit`` is ``None`` when the attack cannot be attributed (``attribution_note`` says why, e.g.
    its attacked point is not a recorded sensor).
    """

    name: str
    attack_id: int
    start: Any  # first row's timestamp
    end: Any  # last row's timestamp
    start_row: int
    end_row: int
    rows: int
    attacked_points: tuple[str, ...]
    detected: bool
    delay_rows: int | None
    delay_seconds: float | None
    top_sensors: tuple[str, ...]
    attribution_hit: bool | None
    attribution_note: str | None = None


@dataclass
class AttackRunReport:
    """``evaluate_attack_run``'s result: one ``AttackOutcome`` per attack that ran, and the run's ``report``
    (point-wise, event-wise, PR-AUC, attribution over all attacks). ``event_recall`` is
    ``n_detected / n_attacks`` over ``attacks``, where an attack without evaluated rows counts as missed
    (``report``'s event figures only see attacks with evaluated rows); ``unscored_rows`` counts the rows left out by status;
    ``labels``, ``flags``, ``scores`` and ``timestamps`` are the evaluated rows."""

    top_k: int
    n_rows: int
    unscored_rows: dict[str, int]
    attacks: list[AttackOutcome]
    n_attacks: int
    n_detected: int
    event_recall: float
    attribution_hit_rate: float
    report: EvaluationReport
    # the evaluated rows, in order (not part of to_dict): what the figures were computed from
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool), repr=False)
    flags: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool), repr=False)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    timestamps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="datetime64[us]"), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``nan`` becomes ``None``, times become ISO strings)."""
        attacks = []
        for outcome in self.attacks:
            row = asdict(outcome)
            for key in ("start", "end"):
                value = row[key]
                row[key] = value.isoformat() if hasattr(value, "isoformat") else None if value is None else str(value)
            attacks.append(row)
        return _json_number(
            {
                "top_k": self.top_k,
                "n_rows": self.n_rows,
                "unscored_rows": dict(self.unscored_rows),
                "n_attacks": self.n_attacks,
                "n_detected": self.n_detected,
                "event_recall": self.event_recall,
                "attribution_hit_rate": self.attribution_hit_rate,
                "attacks": attacks,
                "report": self.report.to_dict(),
            }
        )

    def format(self, info: dict[int, tuple[str, str]] | None = None) -> str:
        """A table of the attacks, then the run's report. ``info``: attack id -> (stage, description),
        shown when given (e.g. from ``tidewatch.readers.load_attack_list``)."""
        k = self.top_k
        header = f"{'attack':>6}  {'stage':<5}  {'attacked':<18}  {'detected':<8}  {'delay s':>8}  {f'top-{k} hit':<10}  top-{k} sensors"
        header = f"{header:<{len(header) + 24 - 13}}"
        lines = [(header + ("  description" if info else "")).rstrip(), "-" * len(header)]
        for a in self.attacks:
            stage, description = (info or {}).get(a.attack_id, ("", ""))
            hit = "n/a" if a.attribution_hit is None else "yes" if a.attribution_hit else "no"
            line = (
                f"{a.name:>6}  {stage:<5}  {';'.join(a.attacked_points) or '-':<18}  "
                f"{'yes' if a.detected else 'no':<8}  {_fmt(a.delay_seconds, 0):>8}  {hit:<10}  "
                f"{','.join(a.top_sensors) or '-':<24}"
            )
            if info:
                line += f"  {description}"
            if a.attribution_note:
                line += f"  [{a.attribution_note}]"
            lines.append(line.rstrip())
        attribution = self.report.attribution
        n_attr = attribution.n_events if attribution is not None else 0
        n_hits = attribution.n_hits if attribution is not None else 0
        lines += [
            "",
            f"attacks {self.n_attacks}  detected {self.n_detected}  event recall {_fmt(self.event_recall)}",
            f"attribution: attacked sensor in top-{k} for {n_hits}/{n_attr} attributable attacks"
            f"  hit rate {_fmt(self.attribution_hit_rate)}",
        ]
        if self.unscored_rows:
            lines.append(f"rows left out (not scored): {self.unscored_rows}")
        lines.append(self.report.format())
        return "\n".join(lines)


def _arrow_column(data: Any, name: str, what: str) -> Any:
    names = data.schema.names
    if name not in names:
        raise InputError(f"{what}: no column {name!r}; columns are {names}")
    column = data.column(name)
    return column.combine_chunks() if hasattr(column, "combine_chunks") else column


def _arrow_numbers(data: Any, name: str, what: str, fill: float) -> np.ndarray:
    import pyarrow.compute as pc

    return np.asarray(pc.fill_null(_arrow_column(data, name, what), fill).to_numpy(zero_copy_only=False))


def _unique_names(ids: Sequence[int]) -> list[str]:
    seen: dict[int, int] = {}
    names = []
    for attack_id in ids:
        seen[attack_id] = seen.get(attack_id, 0) + 1
        names.append(str(attack_id) if seen[attack_id] == 1 else f"{attack_id}#{seen[attack_id]}")
    return names


def evaluate_attack_run(
    scored: Any,
    table: Any,
    *,
    top_k: int = 3,
    tolerance_rows: int = 0,
) -> AttackRunReport:
    """Measures a detector's output ``scored`` (``Detector.score``'s rows, docs/scoring-contract.md) against
    the run ``table`` it scored (rows in the same order), which carries ``label`` and ``attack_id`` (0 or
    null outside attacks) and optionally ``attacked_points`` (``;``-separated), as simulated tables do.

    Only rows with status ``scored`` are evaluated. Each maximal run of one attack id is one attack; it is
    detected when one of its rows (or ``tolerance_rows`` after it) is flagged, and attributed when one of its
    attacked points is among the ``top_k`` sensors by mean reconstruction error over its flagged rows (all
    its rows when none is flagged). Thresholds are the detector's own (its ``flag`` column).
    """
    if scored.num_rows != table.num_rows:
        raise InputError(f"the scored rows ({scored.num_rows}) do not match the table's rows ({table.num_rows})")
    status = np.asarray(_arrow_column(scored, "status", "scored rows").to_pylist(), dtype=object)
    kept = status == "scored"
    unscored: dict[str, int] = {}
    for value in status[~kept]:
        key = str(value) if value is not None else "no status"
        unscored[key] = unscored.get(key, 0) + 1

    label_column = _arrow_column(table, "label", "table")
    if label_column.null_count:
        raise InputError(f"table: column 'label' has {label_column.null_count} null row(s)")
    labels_all = _as_binary(label_column.to_numpy(zero_copy_only=False), "labels")
    ids_all = _arrow_numbers(table, "attack_id", "table", 0).astype(np.int64)
    if np.any(labels_all != (ids_all != 0)):
        row = int(np.flatnonzero(labels_all != (ids_all != 0))[0])
        raise InputError(f"table: row {row} has label {int(labels_all[row])} but attack_id {ids_all[row]}")
    points_all = (
        _arrow_column(table, "attacked_points", "table").to_pylist()
        if "attacked_points" in table.schema.names
        else [None] * table.num_rows
    )

    error_columns = [c for c in scored.schema.names if c.startswith("error_")]
    sensor_names = [c[len("error_"):] for c in error_columns]
    labels = labels_all[kept]
    flags = _arrow_numbers(scored, "flag", "scored rows", False).astype(bool)[kept]
    scores = _arrow_numbers(scored, "score", "scored rows", np.nan).astype(np.float64)[kept]
    time_column = _arrow_column(table, "timestamp", "table")
    timestamps = np.asarray(time_column.to_numpy(zero_copy_only=False))[kept]
    errors = np.column_stack(
        [_arrow_numbers(scored, c, "scored rows", np.nan).astype(np.float64)[kept] for c in error_columns]
    ) if error_columns else np.zeros((int(kept.sum()), 0))
    thresholds = _arrow_column(scored, "threshold", "scored rows").drop_null().unique().to_pylist()
    threshold = float(thresholds[0]) if len(thresholds) == 1 else None

    # each run of one attack id, in table rows, then in evaluated rows
    change = np.flatnonzero(np.diff(ids_all, prepend=0, append=0))
    runs = [(int(b), int(e)) for b, e in zip(change[:-1], change[1:]) if ids_all[b] != 0]
    before = np.concatenate(([0], np.cumsum(kept, dtype=np.int64)))  # evaluated rows before each table row
    run_ids = [int(ids_all[b]) for b, _ in runs]
    names = _unique_names(run_ids)
    events = []
    boundaries = []
    for name, (begin, end) in zip(names, runs):
        start_row, end_row = int(before[begin]), int(before[end])
        sensors = frozenset(s.strip() for s in (points_all[begin] or "").split(";") if s.strip())
        events.append(AttackedEvent(name, start_row, end_row, sensors))
        if 0 < start_row < end_row and labels[start_row - 1]:
            boundaries.append(start_row)  # two attacks back to back stay two events

    report = evaluate(
        labels,
        flags=flags,
        scores=scores,
        threshold=threshold,
        timestamps=timestamps,
        tolerance_rows=tolerance_rows,
        boundaries=boundaries,
        attacked_events=events,
        top_k=top_k,
        error_matrix=errors,
        sensor_names=sensor_names,
    )
    by_start = {o.start_row: o for o in report.events}
    attribution = report.attribution
    assert attribution is not None
    attributed = {o.name: o for o in attribution.events}
    excluded = dict(attribution.excluded)

    outcomes = []
    for name, attack_id, event, (begin, end) in zip(names, run_ids, events, runs):
        found = by_start.get(event.start_row) if event.end_row > event.start_row else None
        ranked = attributed.get(name)
        outcomes.append(
            AttackOutcome(
                name=name,
                attack_id=attack_id,
                start=time_column[begin].as_py(),
                end=time_column[end - 1].as_py(),
                start_row=event.start_row,
                end_row=event.end_row,
                rows=event.end_row - event.start_row,
                attacked_points=tuple(sorted(event.sensors)),
                detected=bool(found and found.detected),
                delay_rows=found.delay_rows if found else None,
                delay_seconds=found.delay_seconds if found else None,
                top_sensors=ranked.top_sensors if ranked else (),
                attribution_hit=ranked.hit if ranked else None,
                attribution_note=excluded.get(name),
            )
        )
    detected = sum(o.detected for o in outcomes)
    return AttackRunReport(
        top_k=top_k,
        n_rows=int(kept.sum()),
        unscored_rows=unscored,
        attacks=outcomes,
        n_attacks=len(outcomes),
        n_detected=detected,
        event_recall=_ratio(detected, len(outcomes)),
        attribution_hit_rate=attribution.hit_rate,
        report=report,
        labels=labels,
        flags=flags,
        scores=scores,
        timestamps=timestamps,
    )


def evaluate_simulated_attacks(
    detector: Any,
    table: Any,
    *,
    top_k: int = 3,
    tolerance_rows: int = 0,
    reset_stream: bool = True,
) -> AttackRunReport:
    """Scores ``table`` (a simulated run, ``tidewatch.simulator.simulate``, or any table with ``label`` and
    ``attack_id``) with ``detector`` (a ``tidewatch.Detector``) and measures it with ``evaluate_attack_run``:
    per attack detected or not, detection delay, attacked sensor in the top ``top_k``; event recall,
    attribution hit rate, point-wise precision / recall / F1, FAR and PR-AUC. ``reset_stream`` first drops
    rows the detector carries from earlier calls, so the run's first window-1 rows are warm-up."""
    if reset_stream:
        detector.reset_stream()
    scored = detector.score(table)
    return evaluate_attack_run(scored, table, top_k=top_k, tolerance_rows=tolerance_rows)
