"""Plant simulator generation speed (issue 4 item 2): rows per second of the Rust core through the binding,
on one core, against the target of 1,000,000 rows/s.

Each repeat calls `tidewatch.simulator.simulate` for `--rows` seconds of plant time with all 36 attacks
spread over it (the Arrow table comes back without copying). The process is pinned to one CPU. Two
rates are printed: by wall clock, and by the CPU time of the calling thread (the core runs there with the
GIL released), which a busy shared machine disturbs less. Also timed: the same rows in day-sized batches
(`simulate_batches`, as the CLI generates them), and, with --writers, the Parquet and SWaT-CSV writers.

    python bench/bench_simulator.py [--rows 1000000] [--repeats 5] [--writers] [--json bench/out/bench_simulator.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET_ROWS_PER_S = 1_000_000


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this thread, result)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    result = fn()
    return time.perf_counter() - wall, time.thread_time() - cpu, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows (simulated seconds) per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--writers", action="store_true", help="also time the Parquet and SWaT-CSV writers")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinned = f"pinned to CPU {cpu}"
    else:
        pinned = "not pinned (no sched_setaffinity)"

    from tidewatch.simulator import simulate, simulate_batches, write_parquet, write_swat_csv

    simulate(10_000, seed=args.seed, attacks="none")  # load the extension and warm caches outside the timings
    print(f"simulating {args.rows} rows x {args.repeats}, all 36 attacks spread, {pinned}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    walls, cpus = [], []
    for _ in range(args.repeats):
        wall, cpu_s, table = timed(lambda: simulate(args.rows, seed=args.seed))
        assert table.num_rows == args.rows
        walls.append(wall)
        cpus.append(cpu_s)
        del table
    batched = []
    for _ in range(args.repeats):
        wall, _cpu, n = timed(lambda: sum(b.num_rows for b in simulate_batches(args.rows, seed=args.seed)))
        assert n == args.rows
        batched.append(wall)

    wall_rate = args.rows / statistics.median(walls)
    cpu_rate = args.rows / statistics.median(cpus)
    batched_rate = args.rows / statistics.median(batched)
    figures: dict[str, Any] = {
        "rows": args.rows,
        "repeats": args.repeats,
        "rows_per_s_wall": round(wall_rate),
        "rows_per_s_cpu": round(cpu_rate),
        "rows_per_s_wall_day_batches": round(batched_rate),
        "best_rows_per_s_wall": round(args.rows / min(walls)),
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "ratio_to_target_wall": round(wall_rate / TARGET_ROWS_PER_S, 2),
        "ratio_to_target_cpu": round(cpu_rate / TARGET_ROWS_PER_S, 2),
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(f"generation (one call):     {wall_rate:12,.0f} rows/s wall   (median; best {args.rows / min(walls):,.0f})")
    print(f"generation (one call):     {cpu_rate:12,.0f} rows/s CPU time of the generating thread")
    print(f"generation (1-day batches):{batched_rate:12,.0f} rows/s wall")
    print(f"ratio to the {TARGET_ROWS_PER_S:,} rows/s target: {wall_rate / TARGET_ROWS_PER_S:.2f} (wall), "
          f"{cpu_rate / TARGET_ROWS_PER_S:.2f} (CPU time)")

    if args.writers:
        rows = min(args.rows, 172_800)
        table = simulate(rows, seed=args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            parquet_s, _, _ = timed(lambda: write_parquet(table, Path(tmp) / "sim.parquet"))
            csv_s, _, _ = timed(lambda: write_swat_csv(table, Path(tmp) / "sim.csv"))
        figures["parquet_rows_per_s"] = round(rows / parquet_s)
        figures["swat_csv_rows_per_s"] = round(rows / csv_s)
        print(f"write_parquet:             {rows / parquet_s:12,.0f} rows/s ({rows} rows)")
        print(f"write_swat_csv:            {rows / csv_s:12,.0f} rows/s ({rows} rows)")

    verdict = "meets" if max(wall_rate, cpu_rate) >= TARGET_ROWS_PER_S else "BELOW"
    print(f"{verdict} the target of {TARGET_ROWS_PER_S:,} rows/s on one core")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
