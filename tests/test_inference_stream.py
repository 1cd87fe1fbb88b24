"""The streaming job for real: local Spark, a replayed simulated stream with an attack, a real Prometheus
scraping the job's metrics port, kill -9 and restart, a model swapped and a corrupt one rejected."""
from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

import tidewatch
from tidewatch import simulator
from tidewatch.replay import replay_to_directory
from tests.support.jobs import InferenceProcess
from tests.support.prometheus import PrometheusServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# The metrics contract (shared/DESIGN.md): name -> (type, label names).
CONTRACT = {
    "anomalous_sensor_event": ("gauge", {"sensor"}),
    "ae_reconstruction_error": ("histogram", {"sensor"}),
    "ae_anomalies_in_batch": ("gauge", {"stage"}),
    "ae_anomalies_total": ("counter", {"sensor", "stage"}),
    "ae_anomalies_last_batch": ("gauge", set()),
    "ae_batches_processed_total": ("counter", set()),
    "ae_batch_processing_seconds": ("histogram", set()),
    "ae_model_reloads_total": ("counter", set()),
    "ae_model_load_duration_seconds": ("gauge", set()),
    "ae_rows_processed_total": ("counter", set()),
    "ae_sequences_ready": ("gauge", set()),
}
ERROR_BUCKETS = {"0.01", "0.05", "0.1", "0.5", "1", "5", "10", "50", "+Inf"}
ATTACK = 1  # opens MV101: LIT101 rises towards overflow (stage P1)


def _train(normal: pa.Table, seed: int, path: Path) -> tidewatch.Detector:
    model = tidewatch.train(normal, dict(epochs=4, hidden_size=16, latent_size=4, batch_size=64, seed=seed,
                                         train_stride=2, patience=0), progress=None)
    model.save(path)
    return tidewatch.Detector.load(path, device="cpu")


GARBAGE_LINE = "garbage, not a JSON object"


def _bad_rows_file(landing: Path, template: dict) -> dict[str, str]:
    """A landing file of rows each broken in one way; returns expected reason per row's timestamp."""
    cases = {
        "2015-12-28T00:00:01Z": ("LIT101", "12.3.4", "malformed:LIT101"),
        "2015-12-28T00:00:02Z": ("FIT101", "", "missing:FIT101"),
        "2015-12-28T00:00:03Z": ("AIT201", "NaN", "nan:AIT201"),
    }
    lines = []
    for ts, (col, value, _) in cases.items():
        row = dict(template, timestamp=ts)
        row[col] = value
        lines.append(json.dumps(row))
    lines.append(json.dumps(dict(template, timestamp="not a time")))
    lines.append(GARBAGE_LINE)  # not JSON: quarantined with its text
    tmp = landing / ".bad.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(landing / "zz-bad-rows.jsonl")
    return {ts: reason for ts, (_, _, reason) in cases.items()} | {None: "malformed:timestamp",
                                                                    GARBAGE_LINE: "malformed:json"}


def test_stream_end_to_end(tmp_path: Path):
    work = tmp_path
    normal = simulator.simulate(3 * 3600, seed=11, attacks="none", start="2015-12-27 12:00:00")
    live = simulator.simulate(2400, seed=12, attacks=[ATTACK], start="2015-12-28 10:20:00")
    assert pc.sum(live["label"]).as_py() > 0, "the simulated stretch holds the attack"
    first = _train(normal, seed=1, path=work / "weights" / "tidewatch")
    first_version = first.version

    landing = work / "landing"
    half = live.num_rows // 2
    replay_to_directory(live.slice(0, half), landing, rows_per_file=150, file_format="jsonl", prefix="a")

    port = free_port()
    prom = PrometheusServer(work / "prometheus", target=f"127.0.0.1:{port}")
    job = InferenceProcess(work, work / "weights" / "tidewatch", port)
    try:
        # -- part 1: the first half, then kill -9 in the middle of the stream -----------------------------
        job.wait_committed(2)
        job.kill9()
        # The remaining files of the first half are still waiting; the restarted job resumes.
        job = InferenceProcess(work, work / "weights" / "tidewatch", port, log_name="inference-2.log")
        replay_to_directory(live.slice(half), landing, rows_per_file=150, file_format="jsonl", prefix="b")
        template = {k: str(v) for k, v in live.slice(0, 1).to_pylist()[0].items() if k != "timestamp"}
        expected_reasons = _bad_rows_file(landing, template)
        _wait_all_rows(work, live.num_rows + len(expected_reasons))

        # -- part 2: every contract metric, with its type and labels, seen by Prometheus ---------------------
        prom.wait_for("ae_batches_processed_total", timeout=60)
        meta = prom.api("metadata")
        for name, (kind, labels) in CONTRACT.items():
            assert name in meta, f"{name} not scraped"
            assert meta[name][0]["type"] == kind, f"{name}: {meta[name][0]['type']} != {kind}"
            series_name = f"{name}_bucket" if kind == "histogram" else name
            series = prom.api("series", **{"match[]": series_name})
            assert series, f"no series for {series_name}"
            got = set(series[0]) - {"__name__", "instance", "job", "le"}
            assert got == labels, f"{name} labels {got} != {labels}"
        buckets = {s["le"] for s in prom.api("series", **{"match[]": 'ae_reconstruction_error_bucket{sensor="LIT101"}'})}
        assert buckets == ERROR_BUCKETS
        stages = {s["stage"] for s in prom.api("series", **{"match[]": "ae_anomalies_in_batch"})}
        assert stages == {"P1", "P2", "P3", "P4", "P5", "P6"}

        # -- part 3: a new model is picked up; a corrupt one is rejected and scoring goes on ----------------
        reloads_before = float(prom.wait_for("ae_model_reloads_total")[0]["value"][1])
        second = _train(normal, seed=2, path=work / "weights" / "tidewatch")
        assert second.version != first_version
        replay_to_directory(live.slice(0, 300).set_column(
            live.schema.get_field_index("timestamp"), "timestamp",
            pc.add(live["timestamp"].slice(0, 300), pa.scalar(3600 * 10**6, pa.duration("us")))),
            landing, rows_per_file=150, file_format="jsonl", prefix="c")
        prom.wait_for("ae_model_reloads_total",
                      lambda r: r and float(r[0]["value"][1]) > reloads_before, timeout=180)
        info = prom.wait_for(f'ae_model_info{{version="{second.version}"}}', timeout=60)
        assert info
        resolved = Path(second.resolved_path)
        (resolved / "model.safetensors").write_bytes(b"\x00garbage, not safetensors")
        replay_to_directory(live.slice(300, 300).set_column(
            live.schema.get_field_index("timestamp"), "timestamp",
            pc.add(live["timestamp"].slice(300, 300), pa.scalar(3600 * 10**6, pa.duration("us")))),
            landing, rows_per_file=150, file_format="jsonl", prefix="d")
        prom.wait_for("ae_model_load_failures_total", lambda r: r and float(r[0]["value"][1]) >= 1, timeout=180)
        total_in = live.num_rows + 600 + len(expected_reasons)
        _wait_all_rows(work, total_in)  # scoring went on after the corrupt file
        assert job.proc.poll() is None, "the job stopped"

        # -- part 4: the attack raised anomalies in its stage ---------------------------------------------
        p1 = prom.wait_for('sum(ae_anomalies_total{stage="P1"})', lambda r: r and float(r[0]["value"][1]) > 0,
                           timeout=60)
        assert float(p1[0]["value"][1]) > 0
        # ... and an incident in P1 (its flags persisted), published on the incident metrics.
        prom.wait_for('sum(ae_incidents_total{stage="P1"})', lambda r: r and float(r[0]["value"][1]) > 0,
                      timeout=60)
        prom.wait_for("ae_last_row_timestamp_seconds", lambda r: r and float(r[0]["value"][1]) > 1.7e9, timeout=60)
    finally:
        job.stop()
        prom.stop()

    # -- the sinks: every input row exactly once, bad rows quarantined with their reasons -----------------
    results = ds.dataset(work / "results", format="parquet", partitioning="hive").to_table()
    quarantine = ds.dataset(work / "quarantine", format="parquet", partitioning="hive").to_table()
    assert results.num_rows + quarantine.num_rows == total_in
    keys = pc.binary_join_element_wise(results["plant"], pc.cast(results["timestamp"], pa.string()), "|")
    assert pc.count_distinct(keys).as_py() == results.num_rows, "a row was written twice"
    reasons = sorted(quarantine["reason"].to_pylist())
    assert reasons == sorted(expected_reasons.values())
    assert GARBAGE_LINE in quarantine["raw"].to_pylist()

    # -- same scores as one uninterrupted run, across the kill -9 and restart --------------------------
    v1 = results.filter(pc.equal(results["model_version"], first_version)).sort_by("timestamp")
    assert v1.num_rows >= half
    one_shot = first_detector_scores(work, first_version, live.slice(0, v1.num_rows))
    got = v1["score"].to_numpy(zero_copy_only=False)
    want = one_shot["score"].to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(np.nan_to_num(got, nan=-1), np.nan_to_num(want, nan=-1), rtol=1e-5, atol=1e-7)

    # -- the same incidents as one uninterrupted run, across the kill -9 and restart -------------------
    from tidewatch.incidents import current_incidents, read_transitions

    def key(i: dict) -> tuple:
        return (i["incident_id"], i["start"], i["duration_seconds"], i["rows_flagged"], i["sensors"], i["stages"])

    streamed = [i for i in current_incidents(read_transitions(work / "results")) if i["model_version"] == first_version]
    det = first_detector(work, first_version)
    det.score(live.slice(0, v1.num_rows))
    one_shot_incidents = current_incidents(pa.Table.from_batches([det.incident_transitions()]))
    assert one_shot_incidents, "the attack raised no incident"
    assert any("P1" in i["stages"].split(",") for i in one_shot_incidents)
    assert [key(i) for i in streamed] == [key(i) for i in one_shot_incidents]
    np.testing.assert_allclose([i["peak_score"] for i in streamed], [i["peak_score"] for i in one_shot_incidents],
                               rtol=1e-5)


def first_detector(work: Path, version: str) -> tidewatch.Detector:
    """The first model, from the job's private copy beside the checkpoint."""
    candidates = [p for p in (work / "checkpoints").rglob("manifest.json") if p.parent.name == version]
    assert candidates, "the first model's files are gone"
    return tidewatch.Detector.load(candidates[0].parent, device="cpu")


def first_detector_scores(work: Path, version: str, rows: pa.Table) -> pa.Table:
    """Scores `rows` at once with the first model's files."""
    return first_detector(work, version).score(rows)


def _wait_all_rows(work: Path, total: int, timeout: float = 240.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        seen = 0
        for sink in ("results", "quarantine"):
            root = work / sink
            if root.exists() and any(root.rglob("*.parquet")):
                seen += ds.dataset(root, format="parquet", partitioning="hive",
                                   exclude_invalid_files=True).count_rows()
        if seen >= total:
            return
        time.sleep(1)
    raise AssertionError(f"{seen} of {total} rows reached the sinks")
