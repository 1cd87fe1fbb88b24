"""`tidewatch simulate`: generate SWaT-shaped plant data with the official attacks.

Six stages at 1 Hz with coupled physics and PLC logic; the 36 physical attacks of the SWaT A1 list act as
listed (spoofed readings, forced actuators). Output: canonical Parquet (default), or the official SWaT CSV
export format with its quirks (`--format swat-csv`), which the SWaT reader reads back.

Examples:
  tidewatch simulate --duration 1d --out swat_sim.parquet
  tidewatch simulate --duration 6h --attacks none --seed 7 --out normal.parquet
  tidewatch simulate --duration 2d --attacks 1,3,28 --format swat-csv --out SWaT_sim.csv
  tidewatch simulate --duration 5d4h --timing official --start "2015-12-28 02:00:00" --out official.parquet
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

_DURATION = re.compile(r"(\d+)([dhms]?)")
_UNIT_SECONDS = {"d": 86_400, "h": 3600, "m": 60, "s": 1, "": 1}


def parse_duration(text: str) -> int:
    """Seconds in `86400`, `1d`, `6h`, `90m`, `45s` or combinations like `1d12h`."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    whole = "".join(n + u for n, u in parts) == compact
    # A bare number is seconds, alone; in combinations every part names its unit.
    if not compact or not whole or (len(parts) > 1 and any(u == "" for _, u in parts)):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 86400, 1d, 6h, 1d12h, 90m)")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"the duration must be at least 1 s, got {text!r}")
    return seconds


def parse_attacks(text: str) -> str | list[int]:
    """`all`, `none`, or comma-separated attack ids."""
    value = text.strip().lower()
    if value in ("all", "none"):
        return value
    try:
        ids = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--attacks takes all, none or ids like 1,3,28; got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError(f"--attacks takes all, none or ids like 1,3,28; got {text!r}")
    return ids


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate", help="generate SWaT-shaped plant data with the official attacks (Parquet or SWaT CSV)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=parse_duration, default=86_400, metavar="D",
                   help="simulated time: seconds, or like 1d, 6h, 1d12h (default 1d)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same settings give the same rows (default 0)")
    p.add_argument("--start", default="2015-12-28 10:00:00",
                   help="time of the first row, UTC unless it names an offset (default 2015-12-28 10:00:00)")
    p.add_argument("--attacks", type=parse_attacks, default="all", metavar="all|none|1,2,3",
                   help="which official attacks to run (default all 36 with physical impact)")
    p.add_argument("--timing", choices=("spread", "official"), default="spread",
                   help="spread the attacks evenly with normal operation between them (default), or place them "
                        "at their official offsets from 2015-12-28 10:00:00, taking --start as that moment")
    p.add_argument("--plant", default="swat", help="value of the plant column (default swat)")
    p.add_argument("--format", dest="out_format", choices=("parquet", "swat-csv"), default="parquet",
                   help="canonical Parquet (default) or the official SWaT CSV export format")
    p.add_argument("--tz", default="Asia/Singapore",
                   help="clock of the SWaT CSV's timestamps (default Asia/Singapore, as in the official files)")
    p.add_argument("--digits", type=int, default=7,
                   help="significant digits of readings in the SWaT CSV (default 7, as the official files; 0: exact)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--batch-rows", type=int, default=86_400, metavar="N",
                   help="rows generated and written at a time (default 86400: one simulated day)")
    p.add_argument("--progress-every", type=float, default=2.0, metavar="S",
                   help="seconds between progress lines on stderr (default 2; 0 for none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tidewatch.errors import ConfigError
    from tidewatch.simulator import ParquetStream, SwatCsvStream, attack_windows, simulate_batches
    from tidewatch.simulator import simulated_attack_ids

    if args.batch_rows < 1:
        raise ConfigError("--batch-rows must be at least 1")
    if args.digits < 0:
        raise ConfigError("--digits must not be negative")
    batches = simulate_batches(args.duration, seed=args.seed, start=args.start, attacks=args.attacks,
                               plant=args.plant, timing=args.timing, batch_rows=args.batch_rows)
    n_attacks = len(simulated_attack_ids()) if args.attacks == "all" else 0 if args.attacks == "none" \
        else len(args.attacks)
    print(f"tidewatch simulate: {args.duration} s of plant {args.plant!r} from {args.start} (UTC), seed {args.seed}, "
          f"{n_attacks} attacks ({args.timing}) -> {args.out} ({args.out_format})", file=sys.stderr)
    started = last_print = time.monotonic()
    rows = 0
    windows: list[dict[str, Any]] = []
    sink: ParquetStream | SwatCsvStream | None = None
    try:
        for batch in batches:
            if sink is None:
                sink = (ParquetStream(args.out, batch.schema) if args.out_format == "parquet"
                        else SwatCsvStream(args.out, tz=args.tz, digits=args.digits or None))
            sink.write(batch)
            windows.extend(attack_windows(batch))
            rows += batch.num_rows
            now = time.monotonic()
            if args.progress_every and now - last_print >= args.progress_every:
                last_print = now
                print(f"tidewatch simulate: {rows}/{args.duration} rows ({100 * rows / args.duration:.0f} %), "
                      f"{rows / (now - started):.0f} rows/s", file=sys.stderr)
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    assert sink is not None  # the duration is at least 1 s, so there was a batch
    path = sink.close()
    # An attack cut by a batch boundary shows up as two windows: count distinct attacks.
    ran = sorted({int(w["attack_id"]) for w in windows})
    attack_rows = sum(int(w["rows"]) for w in windows)
    print(f"tidewatch simulate: wrote {rows} rows to {path} in {time.monotonic() - started:.1f} s; "
          f"{len(ran)} attacks ran ({attack_rows} rows labelled attack)", file=sys.stderr)
    return 0
