"""The scoring kernel that runs inside `mapInArrow` on the executors: one pass per micro-batch.

Each partition holds whole plants, sorted by time. The kernel passes rows that validation quarantined
through with their reason and text, prepends each plant's carried tail (the last W-1 rows the previous
batch scored, sent by the driver) as context, scores with the native Detector (which also quarantines
duplicate and out-of-order times against the tail), and ends with one state row holding the partition's
metrics aggregate and its plants' new tails. The driver collects this one output and writes every sink
from it: no second pass over the batch.

Python workers are forked by PySpark: nothing is loaded at import. Each worker process loads the model
lazily the first time a task needs it and keeps it while the model's directory stays the same.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

_DETECTORS: dict[str, object] = {}

STATE_STATUS = "partition_state"  # the partition's closing row: aggregate and tails
RAW = "raw"  # a quarantined row's input, as text
AGGREGATE = "_tw_aggregate"  # the state row's BatchAggregate, as JSON
TAIL = "_tw_tail"  # the state row's new tails, as an Arrow IPC stream
CONTEXT = "_tw_context"
REASON = "reason"


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


def output_schema(detector_schema: pa.Schema) -> pa.Schema:
    """What the kernel emits: the Detector's output, the input's `label` (kept so results can be
    evaluated), a quarantined row's `raw` text, and the state row's aggregate and tails."""
    return (detector_schema.append(pa.field("label", pa.int32(), nullable=True))
            .append(pa.field(RAW, pa.string(), nullable=True))
            .append(pa.field(AGGREGATE, pa.string(), nullable=True))
            .append(pa.field(TAIL, pa.binary(), nullable=True)))


def results_columns(schema: pa.Schema) -> list[str]:
    """The kernel output's columns that the results sink keeps."""
    return [n for n in schema.names if n not in (RAW, AGGREGATE, TAIL)]


def tail_to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def tail_from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


class CarriedTails:
    """Each plant's last `keep` rows that entered windows (plant, timestamp, sensors, label): given at the
    start of the batch by the driver, updated as the partition's rows are scored. Tails are slices of a
    few tables (one gather per update, never one per plant: a batch may hold hundreds of plants)."""

    def __init__(self, tail: pa.Table | None, keep: int):
        self.keep = keep
        self.tails: dict[str, pa.Table] = {}
        self.seen: set[str] = set()  # plants whose carried rows were already given to the Detector
        if tail is not None and tail.num_rows:
            self._set_last(tail, self.tails)

    def _set_last(self, table: pa.Table, into: dict[str, pa.Table]) -> None:
        """Puts each plant's last `keep` rows of `table` (each plant's rows in time order) into `into`."""
        rows: dict[str, list[int]] = {}
        for i, plant in enumerate(table.column("plant").to_pylist()):
            rows.setdefault(plant, []).append(i)
        picked: list[int] = []
        spans = []
        for plant, idx in rows.items():
            last = idx[-self.keep:] if self.keep else []
            spans.append((plant, len(picked), len(last)))
            picked += last
        gathered = table.take(pa.array(picked, pa.int64()))
        for plant, offset, length in spans:
            into[plant] = gathered.slice(offset, length)

    def context_for(self, plants: list[str]) -> pa.Table | None:
        """The carried rows of the plants in `plants` not seen before in this partition (once each)."""
        out = []
        for plant in dict.fromkeys(plants):
            if plant not in self.seen:
                self.seen.add(plant)
                if plant in self.tails:  # from now on in the Detector's rows, and in `update`'s
                    out.append(self.tails.pop(plant))
        return _concat(out)

    def update(self, kept: pa.Table) -> None:
        """`kept`: rows that entered windows, each plant's in time order (carried rows first)."""
        fresh: dict[str, pa.Table] = {}
        self._set_last(kept, fresh)
        for plant, new in fresh.items():
            old = self.tails.get(plant)
            if old is not None and new.num_rows < self.keep:  # a plant's rows split across Arrow batches
                new = _concat([old, new])
                new = new.slice(max(0, new.num_rows - self.keep))
            self.tails[plant] = new

    def table_of_seen(self) -> pa.Table | None:
        """The new tails of the plants this partition scored (the driver keeps the others')."""
        return _concat([self.tails[p] for p in self.seen if p in self.tails])


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    if not tables:
        return None
    schema = tables[0].schema
    return pa.concat_tables([t if t.schema == schema else t.cast(schema) for t in tables])


def make_kernel(model_dir: str, threshold: float | None, schema: pa.Schema, sensors: list[str],
                tail_ipc: bytes | None, window: int):
    """A `mapInArrow` function over one partition of validated rows (see module documentation). Input
    columns: plant, timestamp, the sensors, label, reason (validation's, null for a valid row), raw."""
    row_columns = ["plant", "timestamp", *sensors, "label"]
    tail = tail_from_ipc(tail_ipc) if tail_ipc else None
    if tail is not None and tail.schema.names != row_columns:
        tail = None  # carried for another model's sensors: this one's windows start afresh

    def kernel(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from tidewatch import BatchAggregate

        det = worker_detector(model_dir, threshold)
        det.reset_stream()  # windows of this partition start from its own context rows
        aggregate = BatchAggregate(det.sensors)
        carried = CarriedTails(tail, window - 1)
        for batch in batches:
            table = pa.Table.from_batches([batch])
            invalid = pc.is_valid(table.column(REASON))
            if pc.any(invalid).as_py():
                rejected = table.filter(invalid)
                for reason, count in _counts(rejected.column(REASON)).items():
                    aggregate.record_quarantined(reason, count)
                yield _quarantine_rows(rejected, schema)
                table = table.filter(pc.invert(invalid))
            if not table.num_rows:
                continue
            rows = table.select(row_columns)
            context = carried.context_for(rows.column("plant").to_pylist())
            combined = rows.append_column(CONTEXT, pa.repeat(False, rows.num_rows))
            if context is not None:
                if context.schema != rows.schema:
                    context = context.cast(rows.schema)
                context = context.append_column(CONTEXT, pa.repeat(True, context.num_rows))
                combined = pa.concat_tables([context, combined])
            out = det.score(combined, aggregate=aggregate)
            # The Detector emits one row per non-context input row, in order.
            scored_rows = combined.filter(pc.invert(combined.column(CONTEXT)))
            quarantined = pc.equal(out.column("status"), "quarantined")
            keep_mask = pa.concat_arrays([pa.repeat(True, combined.num_rows - scored_rows.num_rows),
                                          pc.invert(quarantined).combine_chunks()])
            carried.update(combined.filter(keep_mask).drop_columns([CONTEXT]))
            raw = _raw_of(scored_rows, quarantined)
            out = out.append_column("label", scored_rows.column("label").cast(pa.int32()))
            out = out.append_column(RAW, raw)
            for name in (AGGREGATE, TAIL):
                out = out.append_column(schema.field(name), pa.nulls(out.num_rows, schema.field(name).type))
            # One batch back to Spark, not one per plant's chunk: each costs an Arrow IPC message.
            yield from out.select(schema.names).cast(schema).combine_chunks().to_batches()
        new_tail = carried.table_of_seen()
        yield _state_row(aggregate, new_tail, schema)

    return kernel


def _counts(reasons: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(reasons)
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


def _raw_of(rows: pa.Table, quarantined: pa.ChunkedArray) -> pa.Array:
    """The JSON text of each row the Detector quarantined (duplicate or out-of-order time), null else."""
    mask = quarantined.to_pylist()
    if not any(mask):
        return pa.nulls(rows.num_rows, pa.string())
    texts: list[str | None] = [None] * rows.num_rows
    picked = rows.filter(quarantined).to_pylist()
    positions = [i for i, q in enumerate(mask) if q]
    for i, row in zip(positions, picked):
        texts[i] = json.dumps(row, default=str)
    return pa.array(texts, pa.string())


def _quarantine_rows(rejected: pa.Table, schema: pa.Schema) -> pa.RecordBatch:
    n = rejected.num_rows
    columns = []
    for field in schema:
        if field.name in ("plant", "timestamp", REASON, RAW):
            columns.append(rejected.column(field.name).cast(field.type).combine_chunks())
        elif field.name == "status":
            columns.append(pa.array(["quarantined"] * n, field.type))
        elif field.name == "label":
            columns.append(rejected.column("label").cast(field.type).combine_chunks())
        else:
            columns.append(pa.nulls(n, field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _state_row(aggregate, tail: pa.Table | None, schema: pa.Schema) -> pa.RecordBatch:
    columns = []
    for field in schema:
        if field.name == "status":
            columns.append(pa.array([STATE_STATUS], field.type))
        elif field.name == AGGREGATE:
            columns.append(pa.array([aggregate.to_json()], field.type))
        elif field.name == TAIL:
            columns.append(pa.array([tail_to_ipc(tail) if tail is not None else None], field.type))
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
