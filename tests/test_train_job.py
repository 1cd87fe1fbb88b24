"""`spark-submit train.py` for real on local Spark, over simulated history with planted bad rows."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import tidewatch
from tidewatch import simulator
from tests.support.jobs import REPO, job_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


SPLIT = "2015-12-28T09:00:00"  # train before, evaluate after: the simulator starts attack 1 at 09:23:17 here


def _plant_history() -> pa.Table:
    return simulator.simulate(4 * 3600, seed=21, attacks=[1], start="2015-12-28 07:00:00")


def _history_with_bad_rows(path: Path) -> dict[str, int]:
    table = _plant_history()
    lit = table["LIT101"].to_numpy().copy()
    lit[500] = np.nan
    fit = table["FIT101"].to_numpy().copy()
    fit[900] = np.inf
    table = table.set_column(table.schema.get_field_index("LIT101"), "LIT101", pa.array(lit))
    table = table.set_column(table.schema.get_field_index("FIT101"), "FIT101", pa.array(fit))
    duplicate = table.slice(1200, 1)
    pq.write_table(pa.concat_tables([table, duplicate]), path)
    return {"nan:LIT101": 1, "infinite:FIT101": 1, "duplicate_timestamp": 1}


def _train(data: Path, out: Path) -> subprocess.CompletedProcess:
    spark_submit = Path(sys.executable).parent / "spark-submit"
    cmd = [str(spark_submit), "--master", "local[2]", "--conf", "spark.sql.shuffle.partitions=2",
           str(REPO / "train.py"), "--input", str(data), "--model-out", str(out / "tidewatch"),
           "--epochs", "6", "--seed", "5", "--skip-startup-hours", "0", "--hidden-size", "32",
           "--latent-size", "8", "--train-end", SPLIT]
    return subprocess.run(cmd, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=600)


def test_spark_submit_train(tmp_path: Path):
    data = tmp_path / "history.parquet"
    planted = _history_with_bad_rows(data)

    run = _train(data, tmp_path / "a")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    output = run.stdout + run.stderr
    for reason in planted:
        assert f"quarantined 1 row(s): {reason}" in output, f"{reason} not reported"
    report = json.loads((tmp_path / "a" / "reports" / "training-report.json").read_text())
    assert report["rows"]["quarantined"] == planted
    assert (tmp_path / "a" / "reports" / "training-report.png").stat().st_size > 10_000

    det = tidewatch.Detector.load(tmp_path / "a" / "tidewatch", device="cpu")
    assert det.version == report["version"]

    # The thresholds separate a planted attack (1: MV101 forced open, LIT101 overflows) from normal data.
    history = _plant_history()
    split = pa.scalar(int(np.datetime64(SPLIT, "us").astype(np.int64)), pa.timestamp("us", tz="UTC"))
    live = history.filter(pc.greater_equal(history["timestamp"], split))
    assert pc.sum(live["label"]).as_py() > 0
    scored = det.score(live)
    ok = pc.equal(scored["status"], "scored")
    flags = scored["flag"].filter(ok).to_numpy(zero_copy_only=False)
    labels = live["label"].filter(ok).to_numpy()
    assert flags[labels == 1].mean() > 0.3, "the attack went unflagged"
    # Normal operation before the attack (after it the plant takes a long while to settle back:
    # those rows are labelled normal but are not the operation the model learnt).
    before = np.arange(len(labels)) < np.flatnonzero(labels)[0]
    assert flags[before].mean() < 0.10, "too many false alarms on normal data"

    # Same data, same seed: the same model, bit for bit.
    again = _train(data, tmp_path / "b")
    assert again.returncode == 0, again.stderr[-3000:]
    weights = [hashlib.sha256((p / "tidewatch" / "model.safetensors").read_bytes()).hexdigest()
               for p in (tmp_path / "a", tmp_path / "b")]
    assert weights[0] == weights[1]


def test_train_rejects_missing_input(tmp_path: Path):
    run = subprocess.run([sys.executable, str(REPO / "train.py"), "--input", str(tmp_path / "nope.parquet"),
                          "--model-out", str(tmp_path / "m")], cwd=REPO, env=job_env(), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 1
    assert "nope.parquet" in run.stderr and "Traceback" not in run.stderr


def test_prepare_history_counts_every_row_it_leaves_out():
    """The driver-side preparation after the one Spark pass: rejected rows by reason, the first row of a
    time kept, attacks left out, each plant's start-up skipped and its own time-ordered split."""
    from tidewatch.spark.train import prepare_history

    base = int(np.datetime64("2015-12-28T00:00:00", "us").astype(np.int64))
    rows = []
    for plant in ("a", "b"):
        for i in range(100):
            rows.append({"plant": plant, "t": base + i * 1_000_000, "LIT101": float(i), "label": 0, "reason": None})
    rows[10]["label"] = 1  # a's 11th second is an attack
    rows.insert(21, dict(rows[20], LIT101=-1.0))  # a second reading of a's 21st second, arriving later
    rows.append({"plant": "b", "t": None, "LIT101": None, "label": None, "reason": "malformed:timestamp"})
    table = pa.table({
        "plant": [r["plant"] for r in rows],
        "timestamp": pa.array([r["t"] for r in rows], pa.timestamp("us", tz="UTC")),
        "LIT101": [r["LIT101"] for r in rows], "label": pa.array([r["label"] for r in rows], pa.int32()),
        "_tw_row": list(range(len(rows))), "reason": pa.array([r["reason"] for r in rows], pa.string()),
    })
    prepared = prepare_history(table, ["LIT101"], skip_hours=10 / 3600, train_start=None, train_end=None,
                               validation_fraction=0.2)
    assert prepared.quarantined == {"malformed:timestamp": 1, "duplicate_timestamp": 1}
    assert prepared.attack_rows == 1
    # The duplicate's first arrival was kept, the later one (-1.0) left out.
    assert -1.0 not in prepared.train.column("LIT101").to_pylist() + prepared.validation.column("LIT101").to_pylist()
    for plant in ("a", "b"):
        train = prepared.train.filter(pc.equal(prepared.train.column("plant"), plant))
        val = prepared.validation.filter(pc.equal(prepared.validation.column("plant"), plant))
        # Seconds 0-9 skipped as start-up; the rest split at the plant's 80 % time quantile.
        assert min(train.column("LIT101").to_pylist()) == (11.0 if plant == "a" else 10.0)  # a's 10th: attack
        assert max(train.column("LIT101").to_pylist()) < min(val.column("LIT101").to_pylist())
        assert 0.15 < val.num_rows / (train.num_rows + val.num_rows) < 0.25
    nothing = prepare_history(table, ["LIT101"], skip_hours=1000, train_start=None, train_end=None,
                              validation_fraction=0.2)
    assert nothing.train.num_rows == 0
    assert "--skip-startup-hours" in nothing.describe()


def test_train_on_a_swat_export_reads_it_once_on_the_driver(tmp_path: Path):
    """A SWaT CSV export is read and validated by tidewatch's reader; every row is accounted for in the
    report (trained on, held out, or quarantined with the reader's reason), and Spark is not started."""
    csv = tmp_path / "SWaT_export.csv"
    subprocess.run([sys.executable, "-m", "tidewatch", "simulate", "--duration", "1h", "--attacks", "none",
                    "--format", "swat-csv", "--seed", "3", "--out", str(csv)], check=True, capture_output=True)
    lines = csv.read_text().splitlines()
    header_lines = next(i for i, line in enumerate(lines) if line[:1].isdigit() or line[:2].strip().isdigit())
    fields = lines[header_lines + 5].split(",")
    fields[2] = "12.3.4"  # a malformed reading in the sixth data row
    lines[header_lines + 5] = ",".join(fields)
    csv.write_text("\n".join(lines) + "\n")
    run = subprocess.run([sys.executable, str(REPO / "train.py"), "--input", str(csv), "--format", "swat",
                          "--skip-startup-hours", "0", "--epochs", "1", "--model-out", str(tmp_path / "m")],
                         cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "starting Spark" not in run.stderr
    report = json.loads((tmp_path / "reports" / "training-report.json").read_text())
    quarantined = sum(report["rows"]["quarantined"].values())
    assert quarantined == 1, report["rows"]
    assert report["rows"]["train"] + report["rows"]["validation"] + quarantined == 3600
