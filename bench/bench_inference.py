"""Streaming job throughput: rows per second and per-batch latency (p50/p99) of inference.py's
micro-batches on local[2] (1 and 100 plants at 2,000 rows a batch, 100 plants at 20,000), each beside the
native kernel alone on the same rows (job/kernel), with the breakdown of a steady batch's time by stage.

The job runs in-process over landing files written beforehand (`--available-now`, a fixed number of
files per trigger), so every batch has the same size and the figures are the job's own cost: Spark
validation, the carried tail, repartition and sort, the native kernel, the sinks, the metrics.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def plant_data(plants: int, rows_per_plant: int) -> pa.Table:
    from tidewatch import simulator

    tables = []
    for p in range(plants):
        t = simulator.simulate(rows_per_plant, seed=100 + p, attacks="none", start="2015-12-28 10:00:00")
        tables.append(t.set_column(t.schema.get_field_index("plant"), "plant", pa.array([f"plant{p:03d}"] * t.num_rows)))
    return pa.concat_tables(tables).sort_by([("timestamp", "ascending"), ("plant", "ascending")])


def kernel_rows_per_s(model: Path, data: pa.Table, batch_rows: int) -> float:
    """The native kernel alone on the same rows in the same batch size, on the job's cores (local[2]: two
    single-threaded workers, so two libtorch threads here)."""
    import tidewatch

    det = tidewatch.Detector.load(model, device="cpu", threads=2)
    batches = [data.slice(i, batch_rows) for i in range(0, data.num_rows, batch_rows)]
    det.score(batches[0])  # warm-up, like the job's first batch
    best = float("inf")
    for _ in range(3):  # the best of three: the job's JVM may still be winding down beside it
        det.reset_stream()
        started = time.perf_counter()
        for b in batches:
            det.score(b)
        best = min(best, time.perf_counter() - started)
    return data.num_rows / best


def run_case(work: Path, model: Path, plants: int, rows: int, batch_rows: int):
    from tidewatch.replay import replay_to_directory
    from tidewatch.spark import inference

    landing = work / "landing"
    data = plant_data(plants, rows // plants)
    files_per_batch = 4
    replay_to_directory(data, landing, rows_per_file=max(1, batch_rows // files_per_batch), file_format="jsonl")
    parser = argparse.ArgumentParser()
    inference.add_arguments(parser)
    args = parser.parse_args([
        "--landing-dir", str(landing), "--file-format", "jsonl", "--checkpoint", str(work / "ck"),
        "--results", str(work / "results"), "--quarantine", str(work / "q"), "--model", str(model),
        "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--available-now",
        "--max-files-per-trigger", str(files_per_batch), "--master", "local[2]",
    ])
    job = inference.InferenceJob(args)
    started = time.monotonic()
    try:
        summaries = job.run()
    finally:
        job.close()
    wall = time.monotonic() - started
    # The first batch pays Spark's and the workers' warm-up; report it apart.
    steady_batches = summaries[1:] or summaries
    steady = [s.seconds for s in steady_batches]
    stages: dict[str, float] = {}
    for s in steady_batches:
        for name, seconds in s.stages.items():
            stages[name] = stages.get(name, 0.0) + seconds / len(steady_batches)
    kernel = kernel_rows_per_s(model, data, batch_rows)
    steady_rows_per_s = sum(s.rows_in for s in steady_batches) / max(sum(steady), 1e-9)
    return {
        "plants": plants, "batch_rows": batch_rows, "rows": sum(s.rows_in for s in summaries),
        "batches": len(summaries), "wall_s": wall, "steady_rows_per_s": steady_rows_per_s,
        "kernel_rows_per_s": kernel, "job_over_kernel": steady_rows_per_s / kernel,
        "p50_s": float(np.percentile(steady, 50)), "p99_s": float(np.percentile(steady, 99)),
        "first_batch_s": summaries[0].seconds,
        "first_batch_after_start_s": summaries[0].finished_at - job.query_started,
        "stages": stages,
    }


CASES = ((1, 2000), (100, 2000), (100, 20000))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", type=int, default=8, help="micro-batches in each case (the first is warm-up)")
    p.add_argument("--case", action="append", metavar="PLANTS:BATCH_ROWS",
                   help="run only these cases (default: 1:2000, 100:2000, 100:20000)")
    a = p.parse_args()
    cases = [tuple(int(x) for x in c.split(":")) for c in a.case] if a.case else CASES
    os.environ.setdefault("TIDEWATCH_SPARK_LOG_LEVEL", "ERROR")
    import tidewatch
    from tidewatch import simulator

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        normal = simulator.simulate(2 * 3600, seed=1, attacks="none", start="2015-12-27 10:00:00")
        tidewatch.train(normal, dict(epochs=2, seed=1), progress=None).save(tmp / "model")
        results = [run_case(tmp / f"p{plants}-b{batch_rows}", tmp / "model", plants, a.batches * batch_rows,
                            batch_rows) for plants, batch_rows in cases]
    print(f"\ninference.py on local[2], {a.batches} micro-batches per case (the first reported apart)")
    print(f"{'plants':>7} {'batch rows':>11} {'rows/s job':>11} {'rows/s kernel':>14} {'job/kernel':>11} "
          f"{'p50 batch s':>12} {'p99 batch s':>12} {'first batch s':>14} {'first after start s':>20}")
    for r in results:
        print(f"{r['plants']:>7} {r['batch_rows']:>11} {r['steady_rows_per_s']:>11.0f} {r['kernel_rows_per_s']:>14.0f} "
              f"{r['job_over_kernel']:>11.3f} {r['p50_s']:>12.2f} {r['p99_s']:>12.2f} {r['first_batch_s']:>14.2f} "
              f"{r['first_batch_after_start_s']:>20.2f}")
    print("\nWhere a steady micro-batch's time goes (mean seconds per stage):")
    names = list(dict.fromkeys(n for r in results for n in r["stages"]))
    header = "".join(f"{str(r['plants']) + 'p/' + str(r['batch_rows']):>12}" for r in results)
    print(f"{'stage':<48}{header}")
    for n in names:
        print(f"{n:<48}" + "".join(f"{r['stages'].get(n, 0.0):>12.3f}" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
