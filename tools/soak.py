"""Soak run (`make soak`): the streaming job fed simulated plant data as fast as it scores, for 30 minutes,
with its memory sampled all along. Operators leave inference running for months; memory must stay flat.

What runs: a small model trained on simulated normal operation; `inference.py` on local Spark with
1-second triggers and processed landing files deleted (`--clean-landing delete`); a feeder that keeps a few
micro-batches of simulated rows (timestamps always moving forward, attacks included) waiting in the landing
directory; a scraper reading /metrics every second like Prometheus. Every 10 s the resident memory of
each process of the job (the Python driver, Spark's JVM, Python workers) is read from /proc.

Verdict: after a warm-up (JVM heap and caches filling), the growth of the job's total resident memory from
the first to the last tenth of the run, and its linear trend in MB/hour. Exit 1 if memory grew by more
than --max-growth-mb, or if a row was lost (rows fed != rows scored + carried + quarantined).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def process_tree_rss(root: int) -> dict[str, float]:
    """Resident MB of `root` and every process below it, keyed 'pid:name'. By parentage, not process
    group: PySpark's worker daemon starts a group of its own, and the workers are where scoring runs."""
    parent, names = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            name, rest = text.split("(", 1)[1].rsplit(")", 1)
            parent[int(stat.parent.name)] = int(rest.split()[1])  # field 4 of stat: parent pid
            names[int(stat.parent.name)] = name
        except (OSError, IndexError, ValueError):
            continue
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, ppid in parent.items() if ppid in tree} - tree
        tree |= below
        grew = bool(below)
    out = {}
    for pid in tree:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                out[f"{pid}:{names.get(pid, '?')}"] = int(line.split()[1]) / 1024
    return out


def linear_slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="length of the run (default 30)")
    p.add_argument("--warmup-minutes", type=float, default=10.0,
                   help="left out of the verdict while Spark's JVM heap grows to its limit (default 10)")
    p.add_argument("--driver-memory", default="1g",
                   help="Spark driver JVM heap (default 1g, spark-submit's default; k8s/inference.yaml sets 2g). "
                        "Bounded as in production: an unbounded heap (a quarter of this machine's RAM) grows for "
                        "hours before the collector reclaims it, which would read as a leak")
    p.add_argument("--rows-per-file", type=int, default=1000)
    p.add_argument("--backlog-files", type=int, default=6, help="landing files kept waiting (default 6)")
    p.add_argument("--max-growth-mb", type=float, default=50.0,
                   help="largest allowed growth of total resident memory after warm-up (default 50 MB)")
    p.add_argument("--json", default=str(REPO / "bench" / "out" / "soak.json"))
    args = p.parse_args()

    import pyarrow as pa
    import pyarrow.compute as pc

    import tidewatch
    from tidewatch import simulator
    from tidewatch.replay import DirectorySink

    work = Path(tempfile.mkdtemp(prefix="tw-soak-"))
    print(f"soak: {args.minutes:g} min in {work}", flush=True)
    normal = simulator.simulate(3 * 3600, seed=31, attacks="none", start="2015-12-27 12:00:00")
    model = tidewatch.train(normal, dict(epochs=3, hidden_size=32, latent_size=8, seed=1, train_stride=3),
                            progress=None)
    model.save(work / "model")
    # A day of plant time with all 36 attacks, replayed again and again, each lap shifted forward in time.
    lap_seconds = 24 * 3600
    lap = simulator.simulate(lap_seconds, seed=32, attacks="all", start="2015-12-28 10:00:00")
    lap_us = lap_seconds * 10**6

    with socket.socket() as probe:  # a free port for the metrics endpoint
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable, TIDEWATCH_SPARK_MASTER=os.environ.get(
                   "TIDEWATCH_SPARK_MASTER", "local[2]"),
               PYSPARK_SUBMIT_ARGS=f"--driver-memory {args.driver_memory} pyspark-shell")
    log = open(work / "inference.log", "w")
    job = subprocess.Popen(
        [sys.executable, str(REPO / "inference.py"), "--landing-dir", str(work / "landing"),
         "--checkpoint", str(work / "checkpoints"), "--results", str(work / "results"),
         "--quarantine", str(work / "quarantine"), "--model", str(work / "model"),
         "--metrics-host", "127.0.0.1", "--metrics-port", str(port), "--trigger-seconds", "1",
         "--max-files-per-trigger", "3", "--clean-landing", "delete"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    stop = threading.Event()
    fed = {"rows": 0}
    state = work / "checkpoints" / "tidewatch"

    def feed() -> None:
        sink = DirectorySink(work / "landing", "jsonl", prefix="soak")
        landing = work / "landing"
        k = 0
        while not stop.is_set():
            if sum(1 for f in landing.glob("*.jsonl")) >= args.backlog_files:
                time.sleep(0.2)
                continue
            at = (k * args.rows_per_file) % lap.num_rows
            chunk = lap.slice(at, min(args.rows_per_file, lap.num_rows - at))
            shift = pa.scalar((k * args.rows_per_file // lap.num_rows) * lap_us, pa.duration("us"))
            chunk = chunk.set_column(chunk.schema.get_field_index("timestamp"), "timestamp",
                                     pc.add(chunk["timestamp"], shift))
            sink.write(chunk)
            fed["rows"] += chunk.num_rows
            k += 1

    def prune_results() -> None:
        """Keeps the results sink to the last batches (a retention policy), so disk stays bounded."""
        try:
            committed = json.loads((state / "committed.json").read_text())["batch_id"]
        except (OSError, ValueError, KeyError):
            return
        for f in (work / "results").glob("date=*/batch-*.parquet"):
            if int(f.name.split("-")[1]) < committed - 20:
                f.unlink(missing_ok=True)

    samples: list[tuple[float, float, dict[str, float]]] = []
    scrapes = {"ok": 0, "failed": 0}

    def scrape() -> None:
        while not stop.is_set():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
                scrapes["ok"] += 1
            except OSError:
                if scrapes["ok"]:  # failures count once the endpoint has answered (it starts with the job)
                    scrapes["failed"] += 1
            stop.wait(1.0)

    started = time.monotonic()
    threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=scrape, daemon=True)]
    for t in threads:
        t.start()
    try:
        deadline = started + args.minutes * 60
        next_report = started + 60
        while time.monotonic() < deadline:
            if job.poll() is not None:
                raise SystemExit(f"inference.py exited with {job.returncode}; see {work / 'inference.log'}")
            per_process = process_tree_rss(job.pid)
            samples.append((time.monotonic() - started, sum(per_process.values()), per_process))
            prune_results()
            if time.monotonic() >= next_report:
                committed = json.loads((state / "committed.json").read_text()) if (state / "committed.json").exists() else {}
                print(f"  {(time.monotonic() - started) / 60:5.1f} min: job RSS {samples[-1][1]:7.0f} MB, "
                      f"rows fed {fed['rows']:,}, batch {committed.get('batch_id', -1)}", flush=True)
                next_report += 60
            time.sleep(10)
        # Let the job drain what was fed, then stop it cleanly.
        stop.set()
        drain_until = time.monotonic() + 180
        while any((work / "landing").glob("*.jsonl")) and time.monotonic() < drain_until:
            time.sleep(2)
        time.sleep(8)
    finally:
        stop.set()
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGTERM)
            try:
                job.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(job.pid, signal.SIGKILL)
        log.close()

    totals = {"scored": 0, "warmup": 0, "quarantined": 0}
    for line in (work / "inference.log").read_text().splitlines():
        if " INFO tidewatch.inference: batch " in line and " rows in, " in line:
            parts = line.split("batch ", 1)[1].split(", ")
            totals["scored"] += int(parts[1].split()[0])
            totals["warmup"] += int(parts[2].split()[0])
            totals["quarantined"] += int(parts[3].split()[0])
    accounted = totals["scored"] + totals["warmup"] + totals["quarantined"]

    def kind(key: str) -> str:
        pid, name = key.split(":", 1)
        return "driver" if int(pid) == job.pid else ("jvm" if name == "java" else "workers")

    def by_kind(per_process: dict[str, float]) -> dict[str, float]:
        out = {"driver": 0.0, "jvm": 0.0, "workers": 0.0}
        for key, mb in per_process.items():
            out[kind(key)] += mb
        return out

    kept = [(t, rss) for t, rss, _ in samples if t >= args.warmup_minutes * 60]
    kept_kinds = [by_kind(p) for t, _, p in samples if t >= args.warmup_minutes * 60]
    if len(kept) < 10:
        print("too few samples after the warm-up for a verdict", file=sys.stderr)
        return 1
    tenth = max(1, len(kept) // 10)
    first = sorted(r for _, r in kept[:tenth])[tenth // 2]
    last = sorted(r for _, r in kept[-tenth:])[tenth // 2]
    slope_per_hour = linear_slope([t for t, _ in kept], [r for _, r in kept]) * 3600

    def growth(k: str) -> float:
        values = [p[k] for p in kept_kinds]
        return sorted(values[-tenth:])[tenth // 2] - sorted(values[:tenth])[tenth // 2]
    fig = {
        "minutes": args.minutes,
        "driver_memory": args.driver_memory,
        "rows_fed": fed["rows"],
        "rows_accounted": accounted,
        "rows_scored": totals["scored"],
        "rows_per_s": round(fed["rows"] / (args.minutes * 60), 1),
        "rss_first_tenth_mb": round(first, 1),
        "rss_last_tenth_mb": round(last, 1),
        "rss_growth_mb": round(last - first, 1),
        "rss_trend_mb_per_hour": round(slope_per_hour, 1),
        "rss_max_mb": round(max(r for _, r in kept), 1),
        "growth_mb_by_process": {k: round(growth(k), 1) for k in ("driver", "jvm", "workers")},
        "rss_mb_at_end_by_process": {k: round(v) for k, v in kept_kinds[-1].items()},
        "scrapes_ok": scrapes["ok"],
        "scrapes_failed": scrapes["failed"],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(fig, indent=2))
    print(json.dumps(fig, indent=2))
    ok = True
    if fig["rss_growth_mb"] > args.max_growth_mb:
        print(f"MEMORY GREW by {fig['rss_growth_mb']} MB after warm-up (limit {args.max_growth_mb} MB)")
        ok = False
    if accounted != fed["rows"]:
        print(f"ROWS: {fed['rows']} fed, {accounted} scored + warm-up + quarantined")
        ok = False
    if scrapes["failed"]:
        print(f"SCRAPES: {scrapes['failed']} failed")
        ok = False
    print("soak: " + ("memory flat, every row accounted for" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
