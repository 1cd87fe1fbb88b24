"""Running tidewatch's Spark jobs as real processes for integration tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env.setdefault("TIDEWATCH_SPARK_MASTER", "local[2]")
    env.setdefault("TIDEWATCH_SHUFFLE_PARTITIONS", "2")
    return env


class InferenceProcess:
    """`python inference.py ...` in its own process group, so kill -9 takes Spark's JVM with it."""

    def __init__(self, workdir: Path, model: Path, port: int, *extra: str, log_name: str = "inference.log"):
        self.workdir = workdir
        self.state = workdir / "checkpoints" / "tidewatch"
        args = [
            sys.executable, str(REPO / "inference.py"),
            "--landing-dir", str(workdir / "landing"), "--file-format", "jsonl",
            "--checkpoint", str(workdir / "checkpoints"), "--results", str(workdir / "results"),
            "--quarantine", str(workdir / "quarantine"), "--model", str(model),
            "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
            "--trigger-seconds", "1", "--max-files-per-trigger", "2", *extra,
        ]
        self.log_path = workdir / log_name
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(args, cwd=REPO, env=job_env(), stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def committed(self) -> dict | None:
        f = self.state / "committed.json"
        try:
            return json.loads(f.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def wait_committed(self, batch_id: int, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"inference job exited with {self.proc.returncode}: {self.tail_log()}")
            c = self.committed()
            if c is not None and c["batch_id"] >= batch_id:
                return c
            time.sleep(0.3)
        raise AssertionError(f"batch {batch_id} not committed in {timeout}s: {self.tail_log()}")

    def wait_log(self, needle: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_path.read_text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"inference job exited with {self.proc.returncode}: {self.tail_log()}")
            time.sleep(0.3)
        raise AssertionError(f"{needle!r} not in the job's log after {timeout}s: {self.tail_log()}")

    def tail_log(self, lines: int = 40) -> str:
        text = self.log_path.read_text().splitlines()
        return "\n".join(line for line in text if " WARN " not in line)[-6000:]

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        if not self.log.closed:
            self.log.close()
