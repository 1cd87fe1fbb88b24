"""The scoring kernel that runs inside `mapInArrow` on the executors.

Python workers are forked by PySpark: nothing is loaded at import. Each worker process loads the model
lazily the first time a task needs it and keeps it while the model's directory stays the same.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pyarrow as pa

_DETECTORS: dict[str, object] = {}

AGGREGATE_STATUS = "aggregate"


def worker_detector(model_dir: str, threshold: float | None):
    """The worker's Detector for this model version, loaded once per process."""
    from tidewatch import Detector

    det = _DETECTORS.get(model_dir)
    if det is None:
        _DETECTORS.clear()  # one model per worker: drop an older version
        threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
        det = Detector.load(model_dir, device=os.environ.get("TIDEWATCH_DEVICE", "auto"), threads=threads)
        _DETECTORS[model_dir] = det
    if threshold is not None:
        det.set_threshold(threshold)
    return det


def make_kernel(model_dir: str, threshold: float | None, output_schema: pa.Schema):
    """A `mapInArrow` function: scores one partition's batches (each plant's rows in time order, carried
    context rows first) and appends one row holding the partition's metrics aggregate as JSON."""

    def kernel(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from tidewatch import BatchAggregate

        det = worker_detector(model_dir, threshold)
        det.reset_stream()  # windows of this partition start from its own context rows
        aggregate = BatchAggregate(det.sensors)
        for batch in batches:
            out = det.score(batch, aggregate=aggregate)
            if out.num_rows:
                yield with_labels(out, batch).select(output_schema.names).cast(output_schema)
        yield aggregate_row(aggregate, output_schema)

    return kernel


def output_schema_with_label(detector_schema: pa.Schema) -> pa.Schema:
    """The Detector's output plus the input's `label`, kept so results can be evaluated."""
    return detector_schema.append(pa.field("label", pa.int32(), nullable=True))


def with_labels(out: pa.RecordBatch, batch: pa.RecordBatch) -> pa.RecordBatch:
    """Appends the input rows' labels: the Detector emits one row per non-context input row, in order."""
    names = batch.schema.names
    if "label" not in names:
        return out.append_column("label", pa.nulls(out.num_rows, pa.int32()))
    labels = batch.column(names.index("label"))
    if "_tw_context" in names:
        context = batch.column(names.index("_tw_context"))
        import pyarrow.compute as pc

        labels = labels.filter(pc.invert(pc.fill_null(context, False)))
    return out.append_column("label", labels.cast(pa.int32()))


def aggregate_row(aggregate, schema: pa.Schema) -> pa.RecordBatch:
    columns = []
    for field in schema:
        if field.name == "status":
            columns.append(pa.array([AGGREGATE_STATUS], field.type))
        elif field.name == "reason":
            columns.append(pa.array([aggregate.to_json()], field.type))
        else:
            columns.append(pa.nulls(1, field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def merge_aggregates(sensors, payloads: list[str]):
    from tidewatch import BatchAggregate

    merged = BatchAggregate(sensors)
    for text in payloads:
        merged.merge(BatchAggregate.from_json(text))
    return merged


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True)
