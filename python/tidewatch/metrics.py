"""Operator metrics: the contract the dashboards rely on, and a reader for the text format.

The work is native (src/metrics/): executors fill a `BatchAggregate` per partition while scoring,
the driver merges them and applies the result to the one `MetricsRegistry`, which a `MetricsServer`
serves on `GET /metrics` (and `GET /healthz`)::

    registry = MetricsRegistry(sensors)
    server = MetricsServer(registry, host="0.0.0.0", port=8001)   # started here, never at import
    registry.apply_batch(merged_aggregate, batch_seconds)
    server.stop()

`parse_exposition` reads Prometheus' text format 0.0.4 back (for summaries, checks and tests).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from tidewatch._native import BatchAggregate, MetricsRegistry, MetricsServer

__all__ = [
    "BatchAggregate",
    "MetricsRegistry",
    "MetricsServer",
    "CONTRACT_METRICS",
    "EXTRA_METRICS",
    "ERROR_BUCKETS",
    "INCIDENT_DURATION_BUCKETS",
    "Sample",
    "MetricFamily",
    "parse_exposition",
]

#: Upper bounds of `ae_reconstruction_error`'s buckets (+Inf implied), fixed by the dashboards.
ERROR_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 50.0)

#: name -> (type, label names): the metrics contract (DESIGN.md). None of these may change.
CONTRACT_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "anomalous_sensor_event": ("gauge", ("sensor",)),
    "ae_reconstruction_error": ("histogram", ("sensor",)),
    "ae_anomalies_in_batch": ("gauge", ("stage",)),
    "ae_anomalies_total": ("counter", ("sensor", "stage")),
    "ae_anomalies_last_batch": ("gauge", ()),
    "ae_batches_processed_total": ("counter", ()),
    "ae_batch_processing_seconds": ("histogram", ()),
    "ae_model_reloads_total": ("counter", ()),
    "ae_model_load_duration_seconds": ("gauge", ()),
    "ae_rows_processed_total": ("counter", ()),
    "ae_sequences_ready": ("gauge", ()),
}

#: Metrics tidewatch adds. `ae_rows_quarantined_total` appears with the first quarantined row,
#: `ae_model_info` with the first model load; the others exist from the start.
EXTRA_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ae_rows_quarantined_total": ("counter", ("reason",)),
    "ae_rows_warmup_total": ("counter", ()),
    "ae_model_load_failures_total": ("counter", ()),
    "ae_model_info": ("gauge", ("version", "checksum")),
    "ae_last_event_timestamp_seconds": ("gauge", ()),
    "ae_rows_carried": ("gauge", ()),
    "ae_threshold": ("gauge", ()),
    # Scores and data freshness.
    "ae_score_max_last_batch": ("gauge", ()),
    "ae_last_row_timestamp_seconds": ("gauge", ()),
    # Incidents (src/incidents.rs): flags grouped into events per plant.
    "ae_incidents_open": ("gauge", ()),
    "ae_incident_active": ("gauge", ("stage",)),
    "ae_incident_sensor_active": ("gauge", ("sensor", "stage")),
    "ae_incident_open_seconds": ("gauge", ()),
    "ae_incidents_total": ("counter", ("stage",)),
    "ae_incident_duration_seconds": ("histogram", ()),
}

#: Upper bounds of `ae_incident_duration_seconds`' buckets (+Inf implied): 10 s to 6 h.
INCIDENT_DURATION_BUCKETS: tuple[float, ...] = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)


@dataclass(frozen=True)
class Sample:
    name: str  # e.g. ae_reconstruction_error_bucket
    labels: dict[str, str]
    value: float


@dataclass
class MetricFamily:
    name: str
    type: str = "untyped"
    help: str = ""
    samples: list[Sample] = field(default_factory=list)

    def value(self, sample_name: str | None = None, **labels: str) -> float:
        """The value of the one sample with this name (default: the family's) and exactly these labels."""
        name = sample_name or self.name
        hits = [s.value for s in self.samples if s.name == name and s.labels == labels]
        if len(hits) != 1:
            raise KeyError(f"{len(hits)} samples named {name} with labels {labels}")
        return hits[0]


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_UNESCAPE = re.compile(r"\\(.)")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _labels(text: str, line_no: int) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if not m:
            raise ValueError(f"line {line_no}: malformed labels {text!r}")
        value = _UNESCAPE.sub(lambda e: "\n" if e.group(1) == "n" else e.group(1), m.group(2))
        labels[m.group(1)] = value
        pos = m.end()
    return labels


def parse_exposition(text: str) -> dict[str, MetricFamily]:
    """Families by name from Prometheus text format 0.0.4. Histogram samples (`_bucket`, `_sum`,
    `_count`) belong to their family; a malformed line raises ValueError naming it."""
    families: dict[str, MetricFamily] = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                family = families.setdefault(parts[2], MetricFamily(parts[2]))
                rest = parts[3] if len(parts) > 3 else ""
                if parts[1] == "TYPE":
                    family.type = rest
                else:
                    family.help = rest
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise ValueError(f"line {line_no}: not a sample: {line!r}")
        name, label_text, raw = m.groups()
        value = float(raw.replace("Inf", "inf"))  # +Inf, -Inf, NaN
        owner = name
        for suffix in _HISTOGRAM_SUFFIXES:
            base = name[: -len(suffix)]
            if name.endswith(suffix) and families.get(base, MetricFamily(base)).type in ("histogram", "summary"):
                owner = base
                break
        family = families.setdefault(owner, MetricFamily(owner))
        family.samples.append(Sample(name, _labels(label_text or "", line_no), value))
    return families
