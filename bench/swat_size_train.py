"""A SWaT-size training run (`make bench-swat-size`): `spark-submit train.py` on 495,000 rows x 51 sensors.

SWaT's normal-operation export holds 495,000 rows at 1 Hz (about 5 days 17 hours). This simulates as
many normal rows in the official CSV export format, trains on all of them through the real job (the SWaT
reader, Spark validation and scaler statistics, the native trainer, calibration, the report) and prints
where the time went: preparation (reading, Spark), epochs, the whole run. Default: local[2], the 2 cores
tidewatch's minimum machine has.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWAT_NORMAL_ROWS = 495_000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=SWAT_NORMAL_ROWS, help="normal rows (default 495000, SWaT's)")
    p.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: the model's, 50)")
    p.add_argument("--json", default=str(REPO / "bench" / "out" / "swat_size_train.json"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="tw-swat-size-") as tmp:
        csv = Path(tmp) / "SWaT_sim_normal.csv"
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "tidewatch", "simulate", "--duration", str(args.rows),
                        "--attacks", "none", "--format", "swat-csv", "--seed", "11", "--out", str(csv)], check=True)
        print(f"simulated {args.rows} rows ({csv.stat().st_size / 1e6:.0f} MB CSV) in "
              f"{time.monotonic() - started:.1f}s", flush=True)

        spark_submit = Path(sys.executable).with_name("spark-submit")
        cmd = [str(spark_submit), "--master", args.master, str(REPO / "train.py"), "--input", str(csv),
               "--format", "swat", "--skip-startup-hours", "0", "--model-out", str(Path(tmp) / "model"),
               "--report-dir", str(Path(tmp) / "reports"), "--seed", "1"]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        env = dict(os.environ, SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
                   PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
        started = time.monotonic()
        run = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.monotonic() - started
        if run.returncode:
            sys.stderr.write(run.stdout[-8000:])
            print(f"train.py failed with exit {run.returncode} after {wall:.0f}s", file=sys.stderr)
            return 1
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        report = json.loads((Path(tmp) / "reports" / "training-report.json").read_text())

    history = report["history"]
    epoch_s = sorted(h["seconds"] for h in history)
    fig = {
        "rows_in_file": args.rows,
        "rows_train": report["rows"]["train"],
        "rows_validation": report["rows"]["validation"],
        "master": args.master,
        "prepare_s": report["seconds"]["prepare"],
        "epochs_run": len(history),
        "epoch_s_median": epoch_s[len(epoch_s) // 2],
        "fit_s": sum(h["seconds"] for h in history),
        "job_total_s": report["seconds"]["total"],
        "spark_submit_wall_s": round(wall, 1),
        "peak_rss_mb_largest_child": round(children.ru_maxrss / 1024),
        "cpu_s_children": round(children.ru_utime + children.ru_stime, 1),
        "load_average_end": round(os.getloadavg()[0], 2),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(fig, indent=2))
    print(f"spark-submit train.py, {args.master}, {fig['rows_train']:,} training + {fig['rows_validation']:,} "
          f"validation rows x 51 sensors")
    print(f"  preparation (SWaT reader, Spark validation, scaler, split, to Arrow): {fig['prepare_s']:.1f}s")
    print(f"  fit: {fig['epochs_run']} epochs, median {fig['epoch_s_median']:.1f}s/epoch, {fig['fit_s']:.0f}s")
    print(f"  whole job (with calibration and report): {fig['job_total_s']:.0f}s; spark-submit wall "
          f"{fig['spark_submit_wall_s']:.0f}s ({fig['spark_submit_wall_s'] / 60:.1f} min)")
    print(f"  peak RSS of the largest process {fig['peak_rss_mb_largest_child']} MB; load average at the end "
          f"{fig['load_average_end']} (other processes on the machine skew figures)")
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
