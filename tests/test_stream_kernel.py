"""The streaming job's `mapInArrow` kernel (spark/kernel.py) called directly, as Spark calls it: micro-batches
carried through it with the tails it hands back score exactly like one-shot scoring, validation's rejects
pass through with their text, and duplicate or out-of-order times against the carried tail are quarantined."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import tidewatch
from tidewatch import simulator
from tidewatch.spark import kernel

W = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kernel") / "model"
    normal = simulator.simulate(1800, seed=3, attacks="none", start="2015-12-27 10:00:00")
    tidewatch.train(normal, dict(epochs=1, window=W, hidden_size=8, latent_size=2, batch_size=64, seed=1,
                                 patience=0), progress=None).save(path)
    return path


def _plants(n_plants: int, rows: int) -> pa.Table:
    tables = []
    for p in range(n_plants):
        t = simulator.simulate(rows, seed=10 + p, attacks="none", start="2015-12-28 10:00:00")
        t = t.set_column(t.schema.get_field_index("plant"), "plant", pa.array([f"p{p}"] * t.num_rows))
        tables.append(t)
    return pa.concat_tables(tables)


def _kernel_input(rows: pa.Table, sensors: list[str], reasons: list[str | None] | None = None) -> pa.Table:
    """What the job feeds the kernel: typed rows with validation's reason and raw, sorted by plant, time."""
    n = rows.num_rows
    label = rows.column("label").cast(pa.int32()) if "label" in rows.schema.names else pa.nulls(n, pa.int32())
    table = pa.table({"plant": rows.column("plant"), "timestamp": rows.column("timestamp"),
                      **{s: rows.column(s).cast(pa.float64()) for s in sensors}, "label": label,
                      "reason": pa.array(reasons or [None] * n, pa.string()),
                      "raw": pa.array([None if r is None else "{}" for r in (reasons or [None] * n)], pa.string())})
    return table.sort_by([("plant", "ascending"), ("timestamp", "ascending")])


def _run(model_dir: Path, det: tidewatch.Detector, table: pa.Table, tail: pa.Table | None, batch_rows: int = 500):
    schema = kernel.output_schema(det.output_schema)
    fn = kernel.make_kernel(str(model_dir), None, schema, det.sensors.sensors,
                            kernel.tail_to_ipc(tail) if tail is not None else None, det.window)
    out = pa.Table.from_batches(list(fn(iter(table.to_batches(max_chunksize=batch_rows)))), schema=schema)
    state = out.filter(pc.equal(out.column("status"), kernel.STATE_STATUS))
    assert state.num_rows == 1
    blob = state.column(kernel.TAIL)[0].as_py()
    new_tail = kernel.tail_from_ipc(blob) if blob else None
    aggregate = tidewatch.BatchAggregate.from_json(state.column(kernel.AGGREGATE)[0].as_py())
    return out.filter(pc.not_equal(out.column("status"), kernel.STATE_STATUS)), new_tail, aggregate


def test_micro_batches_with_carried_tails_score_like_one_shot(model_dir: Path):
    det = tidewatch.Detector.load(model_dir, device="cpu")
    sensors = det.sensors.sensors
    data = _plants(3, 300)
    expected = det.score(data.sort_by([("plant", "ascending"), ("timestamp", "ascending")]), reset=True)
    # Three micro-batches cut at times that differ per plant's rows; the driver merges tails as the job does.
    times = data.column("timestamp")
    cuts = sorted(pc.unique(times).to_pylist())
    edges = [cuts[0], cuts[57], cuts[201], None]
    tail = None
    outputs = []
    for lo, hi in zip(edges, edges[1:]):
        mask = pc.greater_equal(times, lo) if hi is None else pc.and_(pc.greater_equal(times, lo), pc.less(times, hi))
        out, new_tail, _ = _run(model_dir, det, _kernel_input(data.filter(mask), sensors), tail, batch_rows=97)
        from tidewatch.spark.inference import InferenceJob

        tail = InferenceJob._next_tail(tail, [kernel.tail_to_ipc(new_tail)] if new_tail is not None else [])
        assert tail.num_rows == 3 * (W - 1)
        outputs.append(out)
    got = pa.concat_tables(outputs).sort_by([("plant", "ascending"), ("timestamp", "ascending")])
    assert got.num_rows == expected.num_rows
    assert got.column("status").to_pylist() == expected.column("status").to_pylist()
    np.testing.assert_array_equal(got.column("score").to_numpy(zero_copy_only=False),
                                  expected.column("score").to_numpy(zero_copy_only=False))


def test_rejects_pass_through_and_times_against_the_tail_are_quarantined(model_dir: Path):
    det = tidewatch.Detector.load(model_dir, device="cpu")
    sensors = det.sensors.sensors
    data = _plants(2, 40)
    first = data.filter(pc.less(data.column("timestamp"), data.column("timestamp")[30]))
    _, tail, _ = _run(model_dir, det, _kernel_input(first, sensors), None)
    earlier_p0 = sorted(t for p, t in zip(tail.column("plant").to_pylist(), tail.column("timestamp").to_pylist())
                        if p == "p0")[-2]
    # The next batch: p0 repeats a time it already scored (out of order against the tail) and one of its
    # new times twice; p1 has one row validation rejected.
    rest = data.filter(pc.greater_equal(data.column("timestamp"), data.column("timestamp")[30]))
    p0 = rest.filter(pc.equal(rest.column("plant"), "p0"))
    again = first.filter(pc.and_(pc.equal(first.column("plant"), "p0"), pc.equal(first.column("timestamp"), earlier_p0)))
    batch = pa.concat_tables([again, p0, p0.slice(3, 1), rest.filter(pc.equal(rest.column("plant"), "p1"))])
    reasons: list[str | None] = [None] * batch.num_rows
    reasons[-1] = "malformed:LIT101"
    table = _kernel_input(batch, sensors, reasons)
    out, _, aggregate = _run(model_dir, det, table, tail)
    quarantined = out.filter(pc.equal(out.column("status"), "quarantined"))
    got = sorted(zip(quarantined.column("plant").to_pylist(), quarantined.column("reason").to_pylist()))
    assert got == [("p0", "duplicate_timestamp"), ("p0", "out_of_order"), ("p1", "malformed:LIT101")]
    raws = dict(zip(quarantined.column("reason").to_pylist(), quarantined.column("raw").to_pylist()))
    assert raws["malformed:LIT101"] == "{}"
    assert json.loads(raws["out_of_order"])["plant"] == "p0"
    # Every row accounted for, in the aggregate the driver publishes.
    counts = aggregate.counts()
    assert counts["scored"] + counts["warmup"] + counts["quarantined"] == batch.num_rows
    assert counts["quarantined"] == 3
    # The carried tail made p0's first new row scored, not warm-up.
    p0_out = out.filter(pc.and_(pc.equal(out.column("plant"), "p0"), pc.not_equal(out.column("status"), "quarantined")))
    assert set(p0_out.column("status").to_pylist()) == {"scored"}
