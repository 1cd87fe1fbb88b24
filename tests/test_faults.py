"""Faults through the real streaming job (local Spark): kill -9 at random points several times in a row, a
full and a read-only results disk (a real tmpfs), and a metrics port already taken at start.

Every recovery is checked the same way: each input row is in the sinks exactly once, with the score one
uninterrupted one-shot scoring gives it.
"""
from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

import tidewatch
from tidewatch import simulator
from tidewatch.replay import replay_to_directory
from tests.support.jobs import REPO, InferenceProcess, job_env
from tests.support.prometheus import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SOAK = os.environ.get("TIDEWATCH_SOAK") == "1"
KILLS = 8 if SOAK else 3
ROWS_PER_FILE = 150


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tidewatch"
    normal = simulator.simulate(2 * 3600, seed=21, attacks="none", start="2015-12-27 12:00:00")
    model = tidewatch.train(normal, dict(epochs=2, hidden_size=16, latent_size=4, batch_size=64, seed=3,
                                         train_stride=3, patience=0), progress=None)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def live() -> pa.Table:
    return simulator.simulate(2400, seed=22, attacks=[1], start="2015-12-28 10:20:00")


def sink_rows(work: Path) -> tuple[pa.Table, int]:
    """The results sink's rows and the quarantine sink's row count."""
    results = ds.dataset(work / "results", format="parquet", partitioning="hive",
                         exclude_invalid_files=True).to_table()
    q = work / "quarantine"
    quarantined = ds.dataset(q, format="parquet", partitioning="hive").count_rows() if q.exists() else 0
    return results, quarantined


def assert_exactly_once_with_one_shot_scores(work: Path, model: Path, live: pa.Table) -> None:
    results, quarantined = sink_rows(work)
    assert quarantined == 0, "no input row was bad"
    assert results.num_rows == live.num_rows, f"{results.num_rows} rows in the results sink, {live.num_rows} sent"
    keys = pc.binary_join_element_wise(results["plant"], pc.cast(results["timestamp"], pa.string()), "|")
    assert pc.count_distinct(keys).as_py() == results.num_rows, "a row was written twice"
    got = results.sort_by("timestamp")
    want = tidewatch.Detector.load(model, device="cpu").score(live).sort_by("timestamp")
    def micros(column):  # the sink's timestamps come back naive, the scorer's tz-aware: compare instants
        return pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64()).to_pylist()

    assert micros(got["timestamp"]) == micros(want["timestamp"])
    assert got["status"].to_pylist() == want["status"].to_pylist()
    np.testing.assert_allclose(np.nan_to_num(got["score"].to_numpy(zero_copy_only=False), nan=-1),
                               np.nan_to_num(want["score"].to_numpy(zero_copy_only=False), nan=-1),
                               rtol=1e-5, atol=1e-7)


def finish(work: Path, model: Path, port: int, name: str) -> InferenceProcess:
    """Runs the job until it has been idle for a few seconds; it must exit cleanly."""
    job = InferenceProcess(work, model, port, "--stop-after-idle", "6", log_name=name)
    try:
        rc = job.proc.wait(timeout=300)
    finally:
        job.stop()
    assert rc == 0, job.tail_log()
    return job


def test_kill9_at_random_points_repeatedly_loses_and_duplicates_nothing(tmp_path: Path, model_dir: Path,
                                                                       live: pa.Table):
    seed = int(os.environ.get("TIDEWATCH_FAULT_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    replay_to_directory(live, tmp_path / "landing", rows_per_file=ROWS_PER_FILE, file_format="jsonl")
    port = free_port()
    committed_before_each_kill = []
    for attempt in range(KILLS):
        job = InferenceProcess(tmp_path, model_dir, port, log_name=f"inference-{attempt}.log")
        # Start-up, mid-batch, between batches: Spark takes ~10 s to start and a batch a few seconds.
        time.sleep(rng.uniform(3.0, 25.0))
        assert job.proc.poll() is None, job.tail_log()
        committed_before_each_kill.append((job.committed() or {}).get("batch_id", -1))
        job.kill9()
    finish(tmp_path, model_dir, port, "inference-final.log")
    print(f"seed {seed}; committed batch before each kill: {committed_before_each_kill}")
    assert_exactly_once_with_one_shot_scores(tmp_path, model_dir, live)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tidewatch-test", str(path)],
                         capture_output=True, text=True)
    if out.returncode:
        pytest.skip(f"a real full disk needs a small tmpfs, and mounting one failed: {out.stderr.strip()}")


def _remount(path: Path, options: str) -> None:
    # Busy while a process of the stopped job (Spark's JVM shuts down after the driver) still holds a file.
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(["mount", "-o", f"remount,{options}", str(path)], capture_output=True, text=True)
        if out.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"remount,{options} {path}: {out.stderr.strip()}")
        time.sleep(0.5)


def _fill(path: Path) -> Path:
    """Writes a file until the file system is full."""
    filler = path / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    return filler


def _wait_exit(job: InferenceProcess, timeout: float = 240.0) -> int:
    try:
        return job.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the job kept running after its sink failed: {job.tail_log()}") from None
    finally:
        job.stop()


def test_full_then_read_only_results_disk_stops_the_batch_and_loses_nothing_on_retry(tmp_path: Path,
                                                                                   model_dir: Path,
                                                                                   live: pa.Table):
    results = tmp_path / "results"
    _mount_tmpfs(results, "8m")
    landing = tmp_path / "landing"
    port = free_port()
    try:
        first = live.slice(0, 2 * ROWS_PER_FILE)
        replay_to_directory(first, landing, rows_per_file=ROWS_PER_FILE, file_format="jsonl", prefix="a")
        job = InferenceProcess(tmp_path, model_dir, port, log_name="inference-0.log")
        job.wait_committed(0)

        # -- the disk fills up: the next batch fails with the OS's reason and is not committed ---------------
        filler = _fill(results)
        second = live.slice(first.num_rows, 2 * ROWS_PER_FILE)
        replay_to_directory(second, landing, rows_per_file=ROWS_PER_FILE, file_format="jsonl", prefix="b")
        rc = _wait_exit(job)
        log = job.log_path.read_text()
        assert rc == 1, job.tail_log()
        assert f"inference.py: error: batch 1: cannot write to the results sink {results}: No space left on device" \
            in log, job.tail_log()
        assert job.committed()["batch_id"] == 0

        # -- space comes back but the mount turns read-only: the retried batch fails the same clear way -------
        filler.unlink()
        _remount(results, "ro")
        job = InferenceProcess(tmp_path, model_dir, port, log_name="inference-1.log")
        rc = _wait_exit(job)
        assert rc == 1, job.tail_log()
        assert "cannot write to the results sink" in job.log_path.read_text(), job.tail_log()
        assert "Read-only file system" in job.log_path.read_text(), job.tail_log()
        assert job.committed()["batch_id"] == 0

        # -- writable again: the restart replays the failed batch and goes on -------------------------------
        _remount(results, "rw")
        replay_to_directory(live.slice(first.num_rows + second.num_rows), landing, rows_per_file=ROWS_PER_FILE,
                            file_format="jsonl", prefix="c")
        finish(tmp_path, model_dir, port, "inference-2.log")
        assert_exactly_once_with_one_shot_scores(tmp_path, model_dir, live)
    finally:
        subprocess.run(["umount", "-l", str(results)], capture_output=True)


def test_metrics_port_in_use_is_a_clear_error_before_spark_starts(tmp_path: Path, model_dir: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, str(REPO / "inference.py"), "--model", str(model_dir), "--landing-dir",
             str(tmp_path / "landing"), "--checkpoint", str(tmp_path / "cp"), "--results", str(tmp_path / "r"),
             "--quarantine", str(tmp_path / "q"), "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
            cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=120)
        seconds = time.monotonic() - started
    assert out.returncode == 1, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == \
        f"inference.py: error: metrics port {port} on 127.0.0.1 is already in use"
    assert "SparkContext" not in out.stderr, "Spark was started before the port was checked"
    assert not (tmp_path / "cp").exists(), "nothing is written before the port is checked"
    print(f"port in use reported after {seconds:.1f}s")


@pytest.mark.parametrize("flag, value", [("--threshold", "-1"), ("--threshold", "nan"), ("--threshold", "inf"),
                                         ("--metrics-port", "70000"), ("--metrics-port", "-5")])
def test_nonsense_options_are_refused_before_spark_starts(tmp_path: Path, flag: str, value: str):
    run = subprocess.run([sys.executable, str(REPO / "inference.py"), "--model", str(tmp_path), flag, value],
                         cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert flag in run.stderr and "Traceback" not in run.stderr


def test_a_published_model_dir_holding_a_dangling_link_still_serves(tmp_path: Path, model_dir: Path, live: pa.Table):
    """The hostile pass's input: a valid model whose directory also holds a dangling symlink. Copying the
    directory aside failed with shutil.Error and the job could not start; only the model's files matter."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dir.resolve(), model)
    (model / "notes.txt").symlink_to(tmp_path / "gone")
    replay_to_directory(live.slice(0, 200), tmp_path / "landing", rows_per_file=100, file_format="jsonl")
    port = free_port()
    job = InferenceProcess(tmp_path, model, port, "--available-now")
    try:
        assert job.proc.wait(timeout=240) == 0, job.tail_log()
    finally:
        job.stop()
    assert job.committed()["counts"]["scored"] + job.committed()["counts"]["warmup"] == 200


def test_a_landing_file_written_in_two_steps_loses_nothing(tmp_path: Path, model_dir: Path, live: pa.Table):
    """The hostile pass's case: a landing file written in two steps. Spark reads a path once, so the
    first part was scored, the torn line quarantined and the rest (49 rows) never read, without a word.
    The rest is now quarantined as appended_after_read with its text: every row is accounted for."""
    from tidewatch.spark.landing import APPENDED

    staging = tmp_path / "staging"
    replay_to_directory(live.slice(0, 100), staging, rows_per_file=100, file_format="jsonl", prefix="a")
    text = next(staging.glob("*.jsonl")).read_bytes()
    lines = text.splitlines(keepends=True)
    first, torn, rest = b"".join(lines[:50]), lines[50][:20], lines[50][20:] + b"".join(lines[51:])
    landing = tmp_path / "landing"
    landing.mkdir()
    target = landing / "a-two-steps.jsonl"
    target.write_bytes(first + torn)
    (landing / "late").mkdir()  # files dropped into a folder inside it are never read: the job says so
    job = InferenceProcess(tmp_path, model_dir, free_port())
    try:
        job.wait_committed(0)
        with open(target, "ab") as f:  # the writer's second step
            f.write(rest)
        replay_to_directory(live.slice(100, 100), landing, rows_per_file=100, file_format="jsonl", prefix="b")
        job.wait_committed(1)
    finally:
        job.stop()
    q = ds.dataset(tmp_path / "quarantine", format="parquet", partitioning="hive").to_table()
    late = q.filter(pc.equal(q["reason"], APPENDED))
    assert late.num_rows == 50  # the torn line's second half and the 49 lines after it
    assert late["raw"].to_pylist() == [line.decode().rstrip("\n") for line in [lines[50][20:], *lines[51:]]]
    log = job.log_path.read_text()
    assert "grew after a batch read it" in log
    assert "late is a folder inside the landing directory" in log
    results, quarantined = sink_rows(tmp_path)
    # 200 rows written: 150 read whole + the torn line + its 50 appended lines... counted once each.
    assert results.num_rows + quarantined == 200 + 1
