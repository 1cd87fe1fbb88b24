"""The CUDA path, checked and measured in one run (at most a few minutes on an H100/H200):

1. the build reaches CUDA (Detector.load(device="cuda"));
2. CPU and CUDA scores agree on the same rows (max relative difference printed);
3. Detector.score rows/s at 4k to 256k-row batches, CPU beside CUDA, and the ratio;
4. one training epoch on CUDA beside CPU;
5. the streaming kernel as mapInArrow calls it (spark/kernel.py, no Spark), on CUDA.

Goal: >= 1,000,000 rows/s scored on one H100/H200. CI never runs this; run it whenever a GPU machine is at
hand, e.g. through the device tool: build here, carry the package, then `python bench/gpu_check.py`.
`--allow-cpu` runs every step on the CPU alone (a dry run of the script where there is no GPU).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCHES = (4_096, 16_384, 65_536, 262_144)
GOAL_ROWS_PER_S = 1_000_000


def rows_per_s(det, data: pa.Table, batch_rows: int, min_seconds: float = 2.0) -> float:
    batches = [data.slice(i, batch_rows) for i in range(0, data.num_rows, batch_rows)]
    det.reset_stream()
    det.score(batches[0])  # warm-up: allocator, kernels
    rows = 0
    started = time.perf_counter()
    while True:
        det.reset_stream()
        for b in batches:
            det.score(b)
            rows += b.num_rows
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return rows / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=262_144 * 2, help="rows scored per measurement")
    p.add_argument("--allow-cpu", action="store_true", help="no CUDA: run every step on the CPU (dry run)")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args()
    import tidewatch
    from tidewatch import simulator
    from tidewatch.spark import kernel

    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        normal = simulator.simulate(2 * 3600, seed=1, attacks="none", start="2015-12-27 10:00:00")
        tidewatch.train(normal, dict(epochs=2, seed=1, device="cpu"), progress=None).save(model_dir)

        # 1. CUDA reachable
        try:
            gpu = tidewatch.Detector.load(model_dir, device="cuda")
            device = "cuda"
        except tidewatch.TidewatchError as exc:
            if not a.allow_cpu:
                print(f"FAIL: no CUDA device reachable from this build: {exc}", file=sys.stderr)
                return 1
            print(f"no CUDA ({exc}); --allow-cpu: measuring the CPU twice")
            gpu = tidewatch.Detector.load(model_dir, device="cpu")
            device = "cpu"
        cpu = tidewatch.Detector.load(model_dir, device="cpu")
        figures["device"] = gpu.device
        print(f"[1] scoring device: {gpu.device}")

        # 2. agreement
        data = simulator.simulate(a.rows, seed=2, attacks=[1, 3, 7], start="2015-12-28 10:00:00")
        sample = data.slice(0, 20_000)
        s_cpu = cpu.score(sample, reset=True).column("score").to_numpy(zero_copy_only=False)
        s_gpu = gpu.score(sample, reset=True).column("score").to_numpy(zero_copy_only=False)
        ok = ~np.isnan(s_cpu)
        rel = float(np.max(np.abs(s_cpu[ok] - s_gpu[ok]) / np.maximum(np.abs(s_cpu[ok]), 1e-12)))
        flags_cpu = cpu.score(sample, reset=True).column("flag").to_pylist()
        flags_gpu = gpu.score(sample, reset=True).column("flag").to_pylist()
        differ = sum(x != y for x, y in zip(flags_cpu, flags_gpu))
        figures["agreement"] = {"max_relative_difference": rel, "flags_differing": differ, "rows": len(s_cpu)}
        print(f"[2] CPU vs {device}: max relative score difference {rel:.2e}, flags differing {differ} of "
              f"{len(s_cpu)}")

        # 3. rows/s by batch size
        print(f"[3] Detector.score rows/s ({a.rows:,} rows per measurement)")
        print(f"    {'batch rows':>10} {'cpu':>12} {device:>12} {'ratio':>7}")
        figures["score_rows_per_s"] = []
        for batch_rows in BATCHES:
            rc, rg = rows_per_s(cpu, data, batch_rows), rows_per_s(gpu, data, batch_rows)
            figures["score_rows_per_s"].append({"batch_rows": batch_rows, "cpu": rc, device: rg})
            print(f"    {batch_rows:>10,} {rc:>12,.0f} {rg:>12,.0f} {rg / rc:>7.1f}")
        best = max(f[device] for f in figures["score_rows_per_s"])
        print(f"    best {device}: {best:,.0f} rows/s; goal {GOAL_ROWS_PER_S:,}: "
              f"{'met' if best >= GOAL_ROWS_PER_S else 'MISSED'}")

        # 4. one epoch
        epoch = {}
        for dev in dict.fromkeys(["cpu", device]):
            started = time.perf_counter()
            model = tidewatch.train(normal, dict(epochs=1, seed=1, device=dev, patience=0), progress=None)
            epoch[dev] = {"total_s": time.perf_counter() - started, "epoch_s": model.history[-1]["seconds"]}
        figures["one_epoch"] = epoch
        print("[4] one training epoch (2 h of history): " + ", ".join(
            f"{d} {e['epoch_s']:.2f}s (whole call {e['total_s']:.1f}s)" for d, e in epoch.items()))

        # 5. the streaming kernel, as mapInArrow calls it
        import os

        os.environ["TIDEWATCH_DEVICE"] = device
        det = gpu
        schema = kernel.output_schema(det.output_schema)
        n = min(a.rows, 262_144)
        rows = data.slice(0, n)
        table = pa.table({"plant": rows.column("plant"), "timestamp": rows.column("timestamp"),
                          **{s: rows.column(s).cast(pa.float64()) for s in det.sensors.sensors},
                          "label": rows.column("label").cast(pa.int32()),
                          "reason": pa.nulls(n, pa.string()), "raw": pa.nulls(n, pa.string())})
        fn = kernel.make_kernel(str(model_dir), None, schema, det.sensors.sensors, None, det.window)
        list(fn(iter(table.slice(0, 4096).to_batches())))  # loads the worker's detector
        started = time.perf_counter()
        out = pa.Table.from_batches(list(fn(iter(table.to_batches(max_chunksize=10_000)))), schema=schema)
        elapsed = time.perf_counter() - started
        scored = pc.sum(pc.equal(out.column("status"), "scored")).as_py()
        figures["kernel_rows_per_s"] = n / elapsed
        print(f"[5] streaming kernel on {device} (10,000-row Arrow batches, Spark's default): "
              f"{n / elapsed:,.0f} rows/s ({scored:,} scored)")
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
