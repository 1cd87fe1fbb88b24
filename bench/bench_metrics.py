"""The /metrics endpoint under a scrape storm on loopback (issue 9 item 3).

Phases, each `--seconds` long, on a SWaT-sized registry (51 sensors, every series present):

  1. storm, scorer idle   scrape latency p50/p99/max and errors at `--rate` requests/s from `--clients`
                          client processes (keep-alive connections, paced), and the CPU the server
                          process spends answering (the main thread sleeps, so its CPU is the server's);
  2. scoring, no storm    `Detector.score` rows/s on SWaT-width batches with a small model trained here
                          (skipped with --no-scoring), with a MetricsRegistry.apply_batch per batch;
  3. scoring + storm      the same while the storm runs: slowdown of scoring and apply_batch latency.
                          Phases 2 and 3 alternate `--rounds` times; the medians are compared.

With --pin (the default on 2+ cores) the scoring process, libtorch on one thread and the endpoint's
threads with it, runs on CPU 0 and the scraping clients on CPU 1: in production Prometheus scrapes from
another machine, so the clients' own CPU must not be charged to the endpoint, while the endpoint still
shares its core with scoring (the worst case). Without pinning, the clients compete with scoring for the
same cores and phase 3's slowdown is an upper bound; phase 1's CPU figure is the endpoint's own.

    python bench/bench_metrics.py [--rate 1000] [--seconds 30] [--clients 2] [--rounds 3] [--json bench/out/bench_metrics.json]
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def client(port: int, rate: float, seconds: float, start_at: float, out: Any, cpus: set[int] | None = None) -> None:
    """Paced scrapes on one keep-alive connection (a new one after an error); sends (latency, ok) pairs."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    latencies: list[float] = []
    errors = 0
    cpu0 = sum(os.times()[:2])
    conn: http.client.HTTPConnection | None = None
    i = 0
    while True:
        due = start_at + i / rate
        now = time.time()
        if due - start_at >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        i += 1
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or b"ae_reconstruction_error_bucket" not in body:
                errors += 1
            latencies.append(time.perf_counter() - t0)
        except OSError:
            errors += 1
            if conn is not None:
                conn.close()
            conn = None
    out.put({"latencies": latencies, "errors": errors, "sent": i, "cpu_s": sum(os.times()[:2]) - cpu0})


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    s = sorted(values)
    pick = lambda q: s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]  # noqa: E731
    return {"n": len(s), "p50_ms": pick(0.5) * 1e3, "p99_ms": pick(0.99) * 1e3, "max_ms": s[-1] * 1e3,
            "mean_ms": statistics.fmean(s) * 1e3}


class Storm:
    def __init__(self, port: int, rate: float, seconds: float, clients: int, cpus: set[int] | None = None):
        ctx = mp.get_context("spawn")  # never fork a process running the server's threads
        self.queue = ctx.Queue()
        self.start_at = time.time() + 1.5  # let the spawned interpreters come up
        self.seconds = seconds
        self.procs = [ctx.Process(target=client, args=(port, rate / clients, seconds, self.start_at, self.queue, cpus))
                      for _ in range(clients)]
        for p in self.procs:
            p.start()

    def wait_start(self) -> None:
        time.sleep(max(0.0, self.start_at - time.time()))

    def result(self) -> dict[str, Any]:
        parts = [self.queue.get() for _ in self.procs]
        for p in self.procs:
            p.join()
        self.queue.close()
        self.queue.join_thread()
        latencies = [x for part in parts for x in part["latencies"]]
        return {"sent": sum(p["sent"] for p in parts), "errors": sum(p["errors"] for p in parts),
                "client_cpu_cores": sum(p["cpu_s"] for p in parts) / self.seconds, **percentiles(latencies)}


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def scoring_setup(rows: int) -> tuple[Any, list[Any]]:
    sys.path.insert(0, str(HERE))
    from bench_scoring import record_batches, swat_like  # SWaT-width synthetic data, shared with that bench

    import tidewatch

    train_rows = swat_like(4000, seed=1)
    model = tidewatch.train(record_batches(train_rows, 4000), epochs=1, progress=None)
    detector = model.detector(threads=1)
    return detector, record_batches(swat_like(rows, seed=2), 2000)


def score_for(detector: Any, batches: list[Any], registry: Any, seconds: float) -> dict[str, Any]:
    """Scores the batches over and over (a fresh stream each pass, so rows stay in time order) with one
    apply_batch per batch, for `seconds`; rows/s counts scored rows only."""
    import pyarrow.compute as pc

    import tidewatch

    rows, applies = 0, []
    deadline = time.monotonic() + seconds
    started = time.perf_counter()
    while time.monotonic() < deadline:
        detector.reset_stream()
        for batch in batches:
            t_batch = time.perf_counter()
            out = detector.score(batch)
            scored = pc.sum(pc.equal(out["status"], "scored")).as_py() or 0
            rows += scored
            agg = tidewatch.BatchAggregate(registry.sensors)
            agg.record_warmup(0.0)
            t0 = time.perf_counter()
            registry.apply_batch(agg, time.perf_counter() - t_batch)
            applies.append(time.perf_counter() - t0)
            if time.monotonic() >= deadline:
                break
    elapsed = time.perf_counter() - started
    return {"rows_per_s": rows / elapsed, "apply_batch": percentiles(applies)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=1000.0, help="scrapes per second, all clients together")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    p.add_argument("--clients", type=int, default=2, help="client processes")
    p.add_argument("--rounds", type=int, default=6, help="alternating scoring runs without and with the storm")
    p.add_argument("--score-seconds", type=float, default=10.0, help="length of each scoring run (default 10)")
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2,
                   help="scoring and endpoint on CPU 0, scraping clients on CPU 1 (default on 2+ cores)")
    p.add_argument("--no-scoring", action="store_true", help="only phase 1")
    p.add_argument("--json", type=Path, default=HERE / "out" / "bench_metrics.json")
    args = p.parse_args()

    # libtorch's OpenMP threads spin while waiting; on a small machine shared with other work that makes
    # scoring speed swing several-fold with whatever else runs, hiding the effect measured here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    client_cpus = None
    if args.pin:
        os.sched_setaffinity(0, {0})  # before any thread starts: the server's and libtorch's inherit it
        client_cpus = {1}
    import tidewatch

    sensors = tidewatch.SensorSet.swat()
    registry = tidewatch.MetricsRegistry(sensors)
    registry.model_loaded("bench", "sha256:0", 0.1)
    server = tidewatch.MetricsServer(registry, host="127.0.0.1", port=0)
    body = registry.render()
    report: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds, "clients": args.clients,
                              "exposition_bytes": len(body), "exposition_lines": body.count("\n"),
                              "server_threads": 3}
    t0 = time.perf_counter()
    for i in range(200):
        registry.set_threshold(i)  # a change: the next render cannot reuse the last text
        registry.render()
    report["render_ms"] = (time.perf_counter() - t0) / 200 * 1e3
    t0 = time.perf_counter()
    for _ in range(200):
        registry.render()
    report["render_unchanged_ms"] = (time.perf_counter() - t0) / 200 * 1e3
    print(f"exposition: {len(body)} bytes, {report['exposition_lines']} lines; render {report['render_ms']:.3f} ms, "
          f"{report['render_unchanged_ms']:.3f} ms when nothing changed")

    storm = Storm(server.port, args.rate, args.seconds, args.clients, client_cpus)
    storm.wait_start()
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    time.sleep(args.seconds)
    server_cpu = (cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
    idle = storm.result()
    report["storm_idle"] = {**idle, "server_cpu_cores": server_cpu}
    print(f"phase 1, storm at {args.rate:.0f}/s, scorer idle: {idle['sent']} sent, {idle['errors']} errors, "
          f"p50 {idle.get('p50_ms', float('nan')):.2f} ms, p99 {idle.get('p99_ms', float('nan')):.2f} ms, "
          f"max {idle.get('max_ms', float('nan')):.1f} ms; server CPU {server_cpu:.2f} cores "
          f"(the clients used {idle['client_cpu_cores']:.2f})")

    if not args.no_scoring:
        detector, batches = scoring_setup(20_000)
        score_for(detector, batches, registry, 2.0)  # warm up
        # Alternate quiet and storm runs so that other load on the machine hits both alike.
        quiet_runs, busy_runs, storms = [], [], []
        for _ in range(args.rounds):
            quiet_runs.append(score_for(detector, batches, registry, args.score_seconds))
            storm = Storm(server.port, args.rate, args.score_seconds, args.clients, client_cpus)
            storm.wait_start()
            busy_runs.append(score_for(detector, batches, registry, args.score_seconds))
            storms.append(storm.result())
        quiet = statistics.median(r["rows_per_s"] for r in quiet_runs)
        busy = statistics.median(r["rows_per_s"] for r in busy_runs)
        slowdown = 1 - busy / quiet
        apply_p99 = max(r["apply_batch"]["p99_ms"] for r in busy_runs)
        scrape_p99 = max(r.get("p99_ms", float("nan")) for r in storms)
        report.update(scoring_alone=quiet_runs, scoring_with_storm=busy_runs, storm_scoring=storms,
                      scoring_rows_per_s_alone=quiet, scoring_rows_per_s_storm=busy, scoring_slowdown=slowdown)
        print(f"scoring alone: {quiet:.0f} rows/s (median of {[round(r['rows_per_s']) for r in quiet_runs]})")
        print(f"scoring + storm: {busy:.0f} rows/s (median of {[round(r['rows_per_s']) for r in busy_runs]}), "
              f"{slowdown:+.1%} slower; apply_batch p99 {apply_p99:.3f} ms; scrapes "
              f"{sum(r['sent'] for r in storms)} sent, {sum(r['errors'] for r in storms)} errors, p99 {scrape_p99:.2f} ms; "
              f"the clients used {statistics.median(r['client_cpu_cores'] for r in storms):.2f} cores of {os.cpu_count()}")
    server.stop()
    report["cpu_count"] = os.cpu_count()
    report["pinned"] = bool(args.pin)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"written {args.json}")
    return 1 if report["storm_idle"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
