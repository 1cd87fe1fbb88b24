"""Runs every benchmark under bench/ in turn (`make bench`); each prints its own figures and ratios.

The SKAB detection benchmark and the simulated-attacks benchmark are longer and have their own targets,
`make bench-skab` and `make bench-attacks`.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

SKIP = {"run_all.py", "skab.py", "bench_simulated_attacks.py"}


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = []
    for script in sorted(here.glob("bench_*.py")):
        if script.name in SKIP:
            continue
        print(f"\n=== {script.name} ===", flush=True)
        started = time.monotonic()
        rc = subprocess.call([sys.executable, str(script)])
        print(f"--- {script.name}: exit {rc}, {time.monotonic() - started:.1f}s", flush=True)
        if rc:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
