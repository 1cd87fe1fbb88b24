"""Streaming job throughput: rows per second and per-batch latency (p50/p99) of inference.py's
micro-batches on local[2], for 1 plant and for 100 plants, measured side by side in one run.

The job runs in-process over landing files written beforehand (`--available-now`, a fixed number of
files per trigger), so every batch has the same size and the figures are the job's own cost: Spark
validation, the carried-tail union, repartition and sort, the native kernel, the sinks, the metrics.
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


def run_case(work: Path, model: Path, plants: int, rows_per_plant: int, rows_per_file: int, files_per_batch: int):
    from tidewatch import simulator
    from tidewatch.replay import replay_to_directory
    from tidewatch.spark import inference

    landing = work / "landing"
    tables = []
    for p in range(plants):
        t = simulator.simulate(rows_per_plant, seed=100 + p, attacks="none", start="2015-12-28 10:00:00")
        tables.append(t.set_column(t.schema.get_field_index("plant"), "plant", pa.array([f"plant{p:03d}"] * t.num_rows)))
    data = pa.concat_tables(tables).sort_by([("timestamp", "ascending"), ("plant", "ascending")])
    replay_to_directory(data, landing, rows_per_file=rows_per_file, file_format="jsonl")
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
    steady = [s.seconds for s in summaries[1:]] or [s.seconds for s in summaries]
    rows = sum(s.rows_in for s in summaries)
    return {
        "plants": plants, "rows": rows, "batches": len(summaries), "wall_s": wall,
        "rows_per_s": rows / wall, "steady_rows_per_s": sum(s.rows_in for s in summaries[1:]) / max(sum(steady), 1e-9),
        "p50_s": float(np.percentile(steady, 50)), "p99_s": float(np.percentile(steady, 99)),
        "first_batch_s": summaries[0].seconds,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=20000, help="rows in each case")
    p.add_argument("--batch-rows", type=int, default=2000, help="rows per micro-batch")
    a = p.parse_args()
    os.environ.setdefault("TIDEWATCH_SPARK_LOG_LEVEL", "ERROR")
    import tidewatch
    from tidewatch import simulator

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        normal = simulator.simulate(2 * 3600, seed=1, attacks="none", start="2015-12-27 10:00:00")
        tidewatch.train(normal, dict(epochs=2, seed=1), progress=None).save(tmp / "model")
        results = []
        for plants in (1, 100):
            per_file = max(1, a.batch_rows // 4)
            results.append(run_case(tmp / f"p{plants}", tmp / "model", plants, a.rows // plants, per_file, 4))
    print(f"\ninference.py on local[2], {a.rows} rows per case, ~{a.batch_rows} rows per micro-batch")
    print(f"{'plants':>7} {'rows':>7} {'batches':>8} {'rows/s (all)':>13} {'rows/s (steady)':>16} "
          f"{'p50 batch s':>12} {'p99 batch s':>12} {'first batch s':>14}")
    for r in results:
        print(f"{r['plants']:>7} {r['rows']:>7} {r['batches']:>8} {r['rows_per_s']:>13.0f} {r['steady_rows_per_s']:>16.0f} "
              f"{r['p50_s']:>12.2f} {r['p99_s']:>12.2f} {r['first_batch_s']:>14.2f}")
    print(f"100 plants / 1 plant steady throughput: {results[1]['steady_rows_per_s'] / results[0]['steady_rows_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
