"""Incidents: flagged rows grouped into events by the core's tracker, through the Detector, the tracker
the Spark driver checkpoints, the metrics registry, `tidewatch incidents` and the incident evaluation."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tidewatch
from tidewatch import simulator
from tidewatch.incidents import (
    current_incidents,
    evaluate_incidents,
    incidents_from_rows,
    label_spans,
    read_transitions,
)
from tidewatch.metrics import parse_exposition


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> tidewatch.Detector:
    normal = simulator.simulate(3 * 3600, seed=11, attacks="none", start="2015-12-27 12:00:00")
    model = tidewatch.train(normal, dict(epochs=4, hidden_size=16, latent_size=4, batch_size=64, seed=1,
                                         train_stride=2, patience=0), progress=None)
    path = tmp_path_factory.mktemp("model") / "m"
    model.save(path)
    return tidewatch.Detector.load(path, device="cpu")


@pytest.fixture(scope="module")
def attack_run() -> pa.Table:
    return simulator.simulate(2400, seed=12, attacks=[1], start="2015-12-28 10:20:00")


def _key(inc: dict) -> tuple:
    return (inc["incident_id"], inc["start"], inc["duration_seconds"], inc["rows_flagged"], inc["peak_score"],
            inc["sensors"], inc["stages"], inc["status"])


def test_sample_period_is_stored_and_sets_the_incident_defaults(detector):
    assert detector.sample_period_seconds == 1.0
    assert detector.incident_policy == {"min_duration_s": 10.0, "gap_s": 5.0, "quiet_s": 60.0}


def test_an_attack_opens_an_incident_naming_its_sensor_and_stage(detector, attack_run):
    detector.reset_stream()
    detector.score(attack_run)
    incidents = current_incidents(pa.Table.from_batches([detector.incident_transitions()]))
    lit101 = [i for i in incidents if i["sensors"].split(",")[0] == "LIT101"]
    assert lit101, [(i["sensors"], i["stages"]) for i in incidents]
    assert "P1" in lit101[0]["stages"].split(",")
    attack = np.flatnonzero(attack_run["label"].to_numpy())
    t0 = attack_run["timestamp"][int(attack[0])].as_py()
    t1 = attack_run["timestamp"][int(attack[-1])].as_py()
    assert any(i["start"] <= t1 and (i["end"] or i["start"]) >= t0 for i in lit101)
    # Taken once: the next call has nothing new.
    assert detector.incident_transitions().num_rows == 0


def test_incidents_are_identical_in_any_chunking(detector, attack_run):
    detector.reset_stream()
    detector.score(attack_run)
    whole = current_incidents(pa.Table.from_batches([detector.incident_transitions()]))
    assert whole
    rng = np.random.default_rng(5)
    for _ in range(2):
        detector.reset_stream()
        batches, at = [], 0
        while at < attack_run.num_rows:
            n = int(rng.integers(1, 400))
            detector.score(attack_run.slice(at, n))
            batches.append(detector.incident_transitions())
            at += n
        chunked = current_incidents(pa.Table.from_batches(batches))
        assert [_key(i) for i in chunked] == [_key(i) for i in whole]
    # The same incidents from the scored rows alone (what `tidewatch evaluate` does).
    detector.reset_stream()
    scored = detector.score(attack_run)
    from_rows = incidents_from_rows(scored, detector.sensors, sample_period_s=1.0,
                                    model_version=detector.version)
    assert [_key(i) for i in from_rows] == [_key(i) for i in whole]


def _aggregate(sensors, rows):
    agg = tidewatch.BatchAggregate(sensors)
    for plant, t, flagged, score, named in rows:
        agg.record_evidence(plant, t, flagged, score, named)
    return agg


def test_one_flagged_row_is_not_an_incident_and_state_survives_a_restart():
    sensors = tidewatch.SensorSet("p", ["A", "B", "C"], [("S1", ["A", "B"]), ("S2", ["C"])])
    tracker = tidewatch.IncidentTracker(sensors)
    out = tracker.apply(_aggregate(sensors, [("p", 100.0, True, 9.0, [0])] +
                                   [("p", 100.0 + k, False, 0.1, []) for k in range(1, 120)]), "v1")
    assert out.num_rows == 0 and tracker.opened_total == 0

    # 20 s of flags on C: opens; the state goes through JSON between the batches, as in the job.
    out = tracker.apply(_aggregate(sensors, [("p", 300.0 + k, True, 1.0 + k, [2]) for k in range(20)]), "v1")
    assert out.column("transition").to_pylist() == ["opened", "updated"]
    restored = tidewatch.IncidentTracker.from_json(tracker.to_json(), sensors)
    assert restored.open_incidents() == tracker.open_incidents()
    registry = tidewatch.MetricsRegistry(sensors)
    tracker.publish(registry)  # as the job does: the batch's own tracker, right after apply
    fams = parse_exposition(registry.render())
    active = {s.labels["stage"]: s.value for s in fams["ae_incident_active"].samples}
    assert active == {"S1": 0.0, "S2": 1.0}
    assert {s.labels["sensor"]: s.value for s in fams["ae_incident_sensor_active"].samples}["C"] == 1.0
    assert fams["ae_incidents_open"].samples[0].value == 1.0
    assert fams["ae_incident_open_seconds"].samples[0].value == 19.0

    out = restored.apply(_aggregate(sensors, [("p", 400.0, False, 0.1, [])]), "v1")
    assert out.column("transition").to_pylist() == ["closed"]
    assert out.column("sensors").to_pylist() == ["C"] and out.column("stages").to_pylist() == ["S2"]
    restored.publish(registry)
    fams = parse_exposition(registry.render())
    assert {s.labels["stage"]: s.value for s in fams["ae_incident_active"].samples} == {"S1": 0.0, "S2": 0.0}
    totals = {s.labels["stage"]: s.value for s in fams["ae_incidents_total"].samples}
    assert totals == {"S1": 0.0, "S2": 1.0}
    count = [s for s in fams["ae_incident_duration_seconds"].samples if s.name.endswith("_count")]
    assert count[0].value == 1.0

    other = tidewatch.SensorSet("q", ["X"])
    with pytest.raises(tidewatch.InputError, match="saved incident tracker is for sensors"):
        tidewatch.IncidentTracker.from_json(tracker.to_json(), other)
    with pytest.raises(tidewatch.InputError, match="not a saved incident tracker"):
        tidewatch.IncidentTracker.from_json(tracker.to_json()[:-5], sensors)
    with pytest.raises(tidewatch.ConfigError, match="quiet_s"):
        tidewatch.IncidentTracker(sensors, quiet_s=float("nan"))
    with pytest.raises(tidewatch.InputError, match="out of range"):
        tidewatch.BatchAggregate(sensors).record_evidence("p", 1.0, True, 1.0, [7])


def _write_sink(results: Path, sensors) -> None:
    tracker = tidewatch.IncidentTracker(sensors)
    sink = results / "_incidents"
    sink.mkdir(parents=True)
    t0 = 1451296800.0  # 2015-12-28 10:00:00 UTC
    batches = [
        [("p", t0 + k, True, 2.0, [0]) for k in range(15)] + [("q", t0 + k, True, 3.0, [2]) for k in range(30)],
        [("p", t0 + 200, False, 0.1, [])] + [("q", t0 + 40, True, 4.0, [2])],
    ]
    for b, rows in enumerate(batches):
        pq.write_table(pa.Table.from_batches([tracker.apply(_aggregate(sensors, rows), "v7")]),
                       sink / f"batch-{b}.parquet")


def test_incidents_command_prints_a_table_and_json(tmp_path: Path):
    sensors = tidewatch.SensorSet("p", ["A", "B", "C"], [("S1", ["A", "B"]), ("S2", ["C"])])
    results = tmp_path / "results"
    _write_sink(results, sensors)
    run = lambda *a: subprocess.run([sys.executable, "-m", "tidewatch", "incidents", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    table = run(str(results))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "plant", "start", "(UTC)"]
    assert "2 incident(s), 1 open" in lines[-1]
    q_line = next(line for line in lines if line.startswith("q-"))
    assert " open " in q_line and "S2" in q_line and " C " in q_line
    p_line = next(line for line in lines if line.startswith("p-"))
    assert "2015-12-28 10:00:14" in p_line and "14s" in p_line

    as_json = run(str(results), "--json", "--plant", "p")
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(r["plant"], r["status"], r["rows_flagged"], r["sensors"]) for r in rows] == [("p", "closed", 15, "A")]
    assert run(str(results), "--status", "open", "--json").stdout.count("\n") == 1
    assert "no incidents" in run(str(results), "--since", "2016-01-01", "--status", "closed").stdout

    missing = run(str(tmp_path / "nope"))
    assert missing.returncode == 1 and "no such results directory" in missing.stderr
    bad_since = run(str(results), "--since", "yesterday")
    assert bad_since.returncode == 1 and "--since" in bad_since.stderr
    (results / "_incidents" / "batch-2.parquet").write_bytes(b"PAR1 truncated")
    broken = run(str(results))
    assert broken.returncode == 1 and "batch-2.parquet" in broken.stderr
    assert read_transitions(tmp_path).num_rows == 0  # no sink yet: no incidents, not an error


def test_incident_evaluation_counts_events_false_incidents_and_delay():
    events = label_spans([0, 1, 1, 0, 0, 1, 0, 0], [0, 10, 20, 30, 40, 50, 60, 70], ["a"] * 8)
    assert events == [("a", 10.0, 20.0), ("a", 50.0, 50.0)]
    incidents = [
        {"plant": "a", "start": 12.0, "end": 30.0, "opened_at": 15.0},  # detects event 0, 5 s to open
        {"plant": "a", "start": 55.0, "end": 60.0, "opened_at": 58.0},  # after event 1 ended: false
        {"plant": "b", "start": 10.0, "end": 20.0, "opened_at": 11.0},  # another plant: false
    ]
    r = evaluate_incidents(incidents, events, normal_seconds=86400 / 2)
    assert (r.n_true_incidents, r.n_false_incidents, r.n_events_detected) == (1, 2, 1)
    assert r.precision == pytest.approx(1 / 3) and r.recall == 0.5
    assert r.f1 == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    assert r.false_incidents_per_day == 4.0
    assert r.delay_seconds_median == 5.0
    # With 10 s of tolerance after an event, the late incident is counted as detecting event 1.
    tolerant = evaluate_incidents(incidents, events, normal_seconds=86400, tolerance_s=10)
    assert tolerant.n_events_detected == 2 and tolerant.n_false_incidents == 1
    assert "incident-wise" in tolerant.format()
