"""Metrics layer: partial aggregates, the registry's exposition, the /metrics server (issue 6 item 2,
issue 9 items 2-4 for the endpoint). Real server on an ephemeral loopback port, scraped with urllib."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request

import pytest

import tidewatch
from tidewatch.metrics import (
    CONTRACT_METRICS,
    ERROR_BUCKETS,
    EXTRA_METRICS,
    BatchAggregate,
    MetricsRegistry,
    MetricsServer,
    parse_exposition,
)

SWAT_STAGES = ["P1", "P2", "P3", "P4", "P5", "P6"]
LE = ["0.01", "0.05", "0.1", "0.5", "1", "5", "10", "50", "+Inf"]

# The contract as DESIGN.md writes it, spelled out here rather than read from the package.
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


@pytest.fixture()
def swat() -> tidewatch.SensorSet:
    return tidewatch.SensorSet.swat()


@pytest.fixture()
def rig() -> tidewatch.SensorSet:
    return tidewatch.SensorSet("rig", ["a", "b", "c"], [("S1", ["a", "c"]), ("S2", ["b"])])


def scrape(url: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


@pytest.fixture()
def served(swat):
    registry = MetricsRegistry(swat)
    server = MetricsServer(registry, host="127.0.0.1", port=0)
    yield registry, server
    server.stop()


# --- the text-format reader itself -------------------------------------------------------------------


def test_parse_exposition_reads_types_labels_escapes_and_histograms():
    text = textwrap.dedent(
        r"""
        # HELP h A histogram
        # TYPE h histogram
        h_bucket{sensor="x\"y",le="0.5"} 1
        h_bucket{sensor="x\"y",le="+Inf"} 3
        h_sum{sensor="x\"y"} 7.5
        h_count{sensor="x\"y"} 3
        # TYPE g gauge
        g{path="a\\b\nc"} NaN
        g_count 4
        """
    )
    fams = parse_exposition(text)
    assert fams["h"].type == "histogram" and fams["h"].help == "A histogram"
    assert fams["h"].value("h_bucket", sensor='x"y', le="+Inf") == 3
    assert fams["h"].value("h_sum", sensor='x"y') == 7.5
    assert fams["g"].samples[0].labels == {"path": "a\\b\nc"}
    # g is a gauge: g_count is a family of its own, not part of g
    assert fams["g_count"].value() == 4
    with pytest.raises(ValueError, match="line 2"):
        parse_exposition("ok 1\nbad{x=1} 2\n")


def test_package_contract_table_matches_design():
    assert {k: (t, set(labels)) for k, (t, labels) in CONTRACT_METRICS.items()} == CONTRACT
    assert ERROR_BUCKETS == (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 50.0)
    assert not set(EXTRA_METRICS) & set(CONTRACT_METRICS)


# --- aggregates -------------------------------------------------------------------------------------


def test_aggregate_counts_rows_anomalies_stages_and_buckets(rig):
    agg = BatchAggregate(rig)
    agg.record_warmup(10.0)
    agg.record_scored(False, [], [0.01, 0.0500001, 50.0], [1.0, 2.0, 3.0], 11.0)
    agg.record_scored(True, [0, 2, 0], [1.0, 5.0, float("nan")], [4.0, 5.0, 6.0], 12.0)
    agg.record_quarantined("nan:b")
    agg.record_quarantined("nan:b", 4)
    agg.add_windows(2)
    assert agg.counts() == {"scored": 2, "warmup": 1, "quarantined": 5, "rows_in": 8, "anomalies": 1, "windows": 2}
    assert agg.quarantined_by_reason == {"nan:b": 5}
    assert agg.anomalies_by_sensor == {"a": 1, "b": 0, "c": 1}
    assert agg.anomalies_by_stage == {"S1": 1, "S2": 0}  # a and c in one row: S1 once
    assert agg.flagged_values == {"a": 4.0, "c": 6.0}
    # bucket edges are inclusive upper bounds (Prometheus `le`); NaN goes to +Inf only
    assert agg.error_buckets["a"] == [1, 0, 0, 0, 1, 0, 0, 0, 0]
    assert agg.error_buckets["b"] == [0, 0, 1, 0, 0, 1, 0, 0, 0]
    assert agg.error_buckets["c"] == [0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert agg.latest_event_time_s == 12.0


def test_aggregate_merge_and_json_round_trip(rig):
    whole, parts = BatchAggregate(rig), [BatchAggregate(rig) for _ in range(3)]
    for i in range(60):
        errors = [0.003 * i, 0.2 * (i % 7), 2.0 ** (i % 9)]
        for target in (whole, parts[i % 3]):
            if i % 10 == 0:
                target.record_warmup(float(i))
            elif i % 10 == 1:
                target.record_quarantined("missing:a")
            else:
                target.record_scored(i % 4 == 0, [i % 3], errors, [float(i)] * 3, float(i))
                target.add_windows(1)
    merged = BatchAggregate(rig)
    for p in parts:
        merged.merge(BatchAggregate.from_json(p.to_json()))
    assert merged.counts() == whole.counts()
    assert merged.error_buckets == whole.error_buckets
    assert merged.anomalies_by_stage == whole.anomalies_by_stage
    assert merged.flagged_values == whole.flagged_values
    assert merged.latest_event_time_s == whole.latest_event_time_s == 59.0
    back = BatchAggregate.from_json(whole.to_json())
    assert back.to_json() == whole.to_json()
    assert json.loads(whole.to_json())["rows_scored"] == 48


def test_aggregate_errors_name_the_problem(rig, swat):
    agg = BatchAggregate(rig)
    with pytest.raises(tidewatch.InputError, match="2 errors and 3 values given, the sensor set has 3"):
        agg.record_scored(False, [], [0.0, 0.0], [0.0] * 3, 0.0)
    with pytest.raises(tidewatch.InputError, match="index 3 is out of range"):
        agg.record_scored(True, [3], [0.0] * 3, [0.0] * 3, 0.0)
    with pytest.raises(tidewatch.InputError, match="sensor sets differ"):
        agg.merge(BatchAggregate(swat))
    with pytest.raises(tidewatch.InputError, match="not a metrics aggregate"):
        BatchAggregate.from_json('{"rows_scored": 1}')
    assert agg.counts()["scored"] == 0  # nothing recorded by the failed calls


# --- registry and server ----------------------------------------------------------------------------


def check_contract(fams, sensors: tidewatch.SensorSet):
    names, stages = sensors.sensors, sensors.stages
    for name, (kind, labels) in CONTRACT.items():
        assert name in fams, f"{name} missing"
        fam = fams[name]
        assert fam.type == kind, f"{name}: TYPE {fam.type}, want {kind}"
        label_sets = {frozenset(k for k in s.labels if k != "le") for s in fam.samples}
        assert label_sets == {frozenset(labels)}, f"{name}: labels {label_sets}"
    # every sensor / stage series exists
    assert {s.labels["sensor"] for s in fams["anomalous_sensor_event"].samples} == set(names)
    assert {s.labels["stage"] for s in fams["ae_anomalies_in_batch"].samples} == set(SWAT_STAGES)
    assert {(s.labels["sensor"], s.labels["stage"]) for s in fams["ae_anomalies_total"].samples} == set(
        zip(names, stages)
    )
    errors = fams["ae_reconstruction_error"]
    for sensor in names:
        les = [s.labels["le"] for s in errors.samples if s.name.endswith("_bucket") and s.labels["sensor"] == sensor]
        assert les == LE, f"{sensor}: buckets {les}"
        assert errors.value("ae_reconstruction_error_count", sensor=sensor) == errors.value(
            "ae_reconstruction_error_bucket", sensor=sensor, le="+Inf"
        )


def test_every_contract_metric_is_served_from_the_first_scrape(served, swat):
    _, server = served
    status, headers, body = scrape(server.url)
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    fams = parse_exposition(body)
    check_contract(fams, swat)
    for name in ("ae_rows_warmup_total", "ae_model_load_failures_total", "ae_last_event_timestamp_seconds",
                 "ae_rows_carried", "ae_threshold"):
        assert fams[name].type == EXTRA_METRICS[name][0]


def test_batches_move_the_served_metrics(served, swat):
    registry, server = served
    names = swat.sensors
    lit101, fit401, p101 = names.index("LIT101"), names.index("FIT401"), names.index("P101")
    values = [float(i) for i in range(51)]
    values[lit101] = 812.5

    part1, part2 = BatchAggregate(swat), BatchAggregate(swat)
    for t in range(29):
        part1.record_warmup(1_450_000_000.0 + t)
    part1.record_scored(False, [], [0.02] * 51, values, 1_450_000_030.0)
    part1.record_scored(True, [lit101, p101, fit401], [0.7] * 51, values, 1_450_000_031.0)
    part1.add_windows(2)
    part2.record_scored(True, [fit401], [60.0] * 51, values, 1_450_000_032.0)
    part2.record_quarantined("nan:LIT101", 3)
    part2.add_windows(1)
    merged = BatchAggregate(swat)
    for p in (part1, part2):
        merged.merge(BatchAggregate.from_json(p.to_json()))

    registry.apply_batch(merged, 0.42)
    registry.model_loaded("v1", "sha256:aaa", 1.25)
    registry.model_loaded("v2", "sha256:bbb", 0.5)
    registry.model_load_failed()
    registry.set_carried_rows(29)
    registry.set_threshold(0.031)

    fams = parse_exposition(scrape(server.url)[2])
    check_contract(fams, swat)
    v = lambda name, sample=None, **labels: fams[name].value(sample, **labels)  # noqa: E731
    assert v("ae_batches_processed_total") == 1
    assert v("ae_rows_processed_total") == 29 + 3 + 3
    assert v("ae_rows_warmup_total") == 29
    assert v("ae_rows_quarantined_total", reason="nan:LIT101") == 3
    assert v("ae_sequences_ready") == 3
    assert v("ae_anomalies_last_batch") == 2
    assert v("ae_anomalies_in_batch", stage="P1") == 1  # LIT101 and P101 in one row: P1 once
    assert v("ae_anomalies_in_batch", stage="P4") == 2
    assert v("ae_anomalies_in_batch", stage="P2") == 0
    assert v("ae_anomalies_total", sensor="FIT401", stage="P4") == 2
    assert v("ae_anomalies_total", sensor="LIT101", stage="P1") == 1
    assert v("ae_anomalies_total", sensor="MV101", stage="P1") == 0
    assert v("anomalous_sensor_event", sensor="LIT101") == 812.5
    assert v("anomalous_sensor_event", sensor="FIT401") == float(fit401)
    assert v("anomalous_sensor_event", sensor="MV101") == 0
    err = "ae_reconstruction_error"
    assert v(err, f"{err}_bucket", sensor="AIT201", le="0.05") == 1
    assert v(err, f"{err}_bucket", sensor="AIT201", le="1") == 2
    assert v(err, f"{err}_bucket", sensor="AIT201", le="50") == 2
    assert v(err, f"{err}_bucket", sensor="AIT201", le="+Inf") == 3
    assert v(err, f"{err}_sum", sensor="AIT201") == pytest.approx(60.72)
    batch = "ae_batch_processing_seconds"
    assert v(batch, f"{batch}_count") == 1 and v(batch, f"{batch}_sum") == pytest.approx(0.42)
    assert v("ae_model_reloads_total") == 2
    assert v("ae_model_load_duration_seconds") == 0.5
    assert v("ae_model_load_failures_total") == 1
    assert [s.labels for s in fams["ae_model_info"].samples] == [{"version": "v2", "checksum": "sha256:bbb"}]
    assert v("ae_model_info", version="v2", checksum="sha256:bbb") == 1
    assert v("ae_rows_carried") == 29
    assert v("ae_threshold") == 0.031
    assert v("ae_last_event_timestamp_seconds") == 1_450_000_032.0

    # the next batch, as JSON: per-batch gauges follow it, counters accumulate
    quiet = BatchAggregate(swat)
    quiet.record_scored(False, [], [0.001] * 51, values, 1_450_000_033.0)
    registry.apply_batch(quiet.to_json(), 0.1)
    fams = parse_exposition(registry.render())
    v = lambda name, sample=None, **labels: fams[name].value(sample, **labels)  # noqa: E731
    assert v("ae_anomalies_last_batch") == 0
    assert v("ae_anomalies_in_batch", stage="P4") == 0
    assert v("anomalous_sensor_event", sensor="LIT101") == 0
    assert v("ae_anomalies_total", sensor="FIT401", stage="P4") == 2
    assert v("ae_rows_processed_total") == 36
    assert v(err, f"{err}_bucket", sensor="AIT201", le="0.01") == 1


def test_registry_refuses_foreign_aggregates(rig, swat):
    registry = MetricsRegistry(swat)
    with pytest.raises(tidewatch.InputError, match="sensor sets differ"):
        registry.apply_batch(BatchAggregate(rig), 0.1)
    with pytest.raises(tidewatch.InputError, match="not a metrics aggregate"):
        registry.apply_batch("{}", 0.1)
    with pytest.raises(tidewatch.InputError, match="batch duration"):
        registry.apply_batch(BatchAggregate(swat), -1.0)
    assert parse_exposition(registry.render())["ae_batches_processed_total"].value() == 0


def test_only_metrics_and_health_are_served_read_only(served):
    _, server = served
    base = f"http://127.0.0.1:{server.port}"
    assert scrape(f"{base}/healthz")[::2] == (200, "ok")
    for path in ("/", "/metric", "/metrics/extra", "/admin", "/../../etc/passwd", "/healthz/"):
        assert scrape(base + path)[0] == 404, path
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = scrape(f"{base}/metrics", method)
        assert status == 405, method
        assert headers["allow"] == "GET, HEAD"
    assert scrape(f"{base}/metrics", "HEAD")[0] == 200


def test_keep_alive_scrapes_are_not_held_by_nagle(served):
    """Prometheus keeps its connection open; with Nagle on, each scrape waited ~40 ms for a delayed ACK."""
    import http.client

    _, server = served
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200 and len(response.read()) > 10_000
        times.append(time.perf_counter() - t0)
    conn.close()
    assert sorted(times)[10] < 0.02, f"median keep-alive scrape {sorted(times)[10] * 1e3:.1f} ms"


def test_port_in_use_is_a_clear_error(served, swat):
    _, server = served
    with pytest.raises(tidewatch.ConfigError, match=rf"^metrics port {server.port} on 127.0.0.1 is already in use$"):
        MetricsServer(MetricsRegistry(swat), host="127.0.0.1", port=server.port)
    # a port held by something else entirely
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(tidewatch.TidewatchError, match=f"metrics port {port} on 127.0.0.1 is already in use"):
            MetricsServer(MetricsRegistry(swat), host="127.0.0.1", port=port)


def test_stop_frees_the_port_and_context_manager_stops(swat):
    registry = MetricsRegistry(swat)
    with MetricsServer(registry, host="127.0.0.1", port=0) as server:
        port = server.port
        assert server.running and scrape(server.url)[0] == 200
    assert not server.running
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    server.stop()  # idempotent
    again = MetricsServer(registry, host="127.0.0.1", port=port)
    try:
        assert scrape(again.url)[0] == 200
    finally:
        again.stop()


def test_scrapes_keep_answering_while_batches_apply(served, swat):
    registry, server = served
    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def scraper():
        while not stop.is_set():
            t0 = time.perf_counter()
            status, _, body = scrape(server.url)
            latencies.append(time.perf_counter() - t0)
            fams = parse_exposition(body)
            # a scrape never sees half a batch: each batch below adds 3 rows and 1 batch
            rows, batches = fams["ae_rows_processed_total"].value(), fams["ae_batches_processed_total"].value()
            if status != 200 or rows != 3 * batches:
                failures.append(f"status {status}, rows {rows}, batches {batches}")

    threads = [threading.Thread(target=scraper) for _ in range(6)]
    for t in threads:
        t.start()
    apply_times = []
    # At least 300 batches and at least a second of them, so the scrapers get a fair number of turns on
    # any machine (a fixed count alone finished before 20 scrapes on a loaded 2-core machine).
    began, i = time.perf_counter(), -1
    while (i := i + 1) < 300 or time.perf_counter() - began < 1.0:
        agg = BatchAggregate(swat)
        agg.record_warmup(float(i))
        agg.record_scored(True, [i % 51], [0.1] * 51, [1.0] * 51, float(i))
        agg.record_quarantined("nan:P101")
        t0 = time.perf_counter()
        registry.apply_batch(agg, 0.01)
        apply_times.append(time.perf_counter() - t0)
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert len(latencies) > 20
    latencies.sort()
    apply_times.sort()
    # generous bounds for a shared 2-core machine: scrapes answer, batches are never held up for long
    assert latencies[int(0.99 * (len(latencies) - 1))] < 1.0
    assert apply_times[-1] < 0.5


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def test_no_server_threads_until_started():
    """PySpark forks its workers: importing tidewatch must not start the metrics threads."""
    r = run_python(
        """
        import os, time, tidewatch
        def ours():
            names = []
            for t in os.listdir("/proc/self/task"):
                try:
                    names.append(open(f"/proc/self/task/{t}/comm").read().strip())
                except FileNotFoundError:
                    pass  # a thread that just ended
            return sum(n.startswith("tidewatch-metri") for n in names)
        before = ours()
        reg = tidewatch.MetricsRegistry(tidewatch.SensorSet.swat())
        after_registry = ours()
        server = tidewatch.MetricsServer(reg, host="127.0.0.1", port=0)
        for _ in range(100):  # each thread names itself as it starts
            running = ours()
            if running == 3:
                break
            time.sleep(0.02)
        server.stop()
        print(before, after_registry, running, ours())
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0", "3", "0"]


def test_endpoint_comes_back_after_running_out_of_file_descriptors():
    """tiny_http's accept loop ends on the first accept error (EMFILE here); the server binds again."""
    r = run_python(
        """
        import os, resource, socket, time, urllib.request, tidewatch
        server = tidewatch.MetricsServer(tidewatch.MetricsRegistry(tidewatch.SensorSet.swat()), host="127.0.0.1", port=0)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 30, hard))
        client = socket.socket()  # made first: connecting it needs no new descriptor
        hogs = []
        try:
            while True:
                hogs.append(open(os.devnull))
        except OSError:
            pass
        client.settimeout(5)
        client.connect(("127.0.0.1", server.port))  # the server cannot accept it: no descriptor left
        time.sleep(0.5)
        client.close()
        for f in hogs:
            f.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(server.url, timeout=2) as r:
                    status = r.status
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        print(status, server.listener_restarts)
        server.stop()
        """
    )
    assert r.returncode == 0, r.stderr
    status, restarts = r.stdout.split()
    assert status == "200"
    assert int(restarts) >= 1, f"the accept loop never failed, the test did not exercise recovery: {r.stderr}"
