"""`tidewatch replay`: play a dataset as a live stream, for the streaming job to read.

Into a landing directory as small files (`--to DIR`; CSV, JSON lines or Parquet, written atomically:
a hidden temporary file, fsync, rename), or as JSON lines in the Kafka message format of the
`ics-sensor-data` topic (`--kafka-jsonl FILE`, `-` for stdout: pipe it into a Kafka producer).

The source is canonical Parquet (a file or folder), an official SWaT export (.csv, .xlsx), or a plant
CSV (with --plant-file). Pacing follows the data's timestamps: real time by default, `--speed N` for N
times faster, `--fast` for no waiting. Ctrl-C (or SIGTERM) stops after the file in hand: only complete
files are left, and the last line printed says where to resume (--start-row).

Examples:
  tidewatch replay SWaT_Dataset_Attack_v0.xlsx --to /data/landing --speed 60 --rows-per-file 300
  tidewatch replay live.parquet --kafka-jsonl - --speed 10 | kafka-console-producer.sh --topic ics-sensor-data ...
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "replay", help="play a dataset into a landing directory or as Kafka-format JSON lines, at a chosen rate",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="canonical Parquet file or folder, SWaT .csv/.xlsx, or a plant CSV")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", dest="landing_dir", metavar="DIR", help="landing directory to write files into")
    target.add_argument("--kafka-jsonl", metavar="FILE",
                        help="write JSON lines in the Kafka message format to FILE ('-' for stdout)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, metavar="N",
                      help="times real time, by the data's timestamps (default 1: real time)")
    pace.add_argument("--fast", action="store_true", help="as fast as possible, no waiting")
    p.add_argument("--format", dest="file_format", choices=("csv", "jsonl", "parquet"), default="csv",
                   help="landing file format (default csv)")
    p.add_argument("--rows-per-file", type=int, default=None, metavar="N",
                   help="rows per landing file (default 1000), or per write of JSON lines "
                        "(default 1 when paced, 1000 with --fast)")
    p.add_argument("--prefix", help="landing file name prefix (default replay-<UTC start time>)")
    p.add_argument("--start-row", type=int, default=0, metavar="N", help="skip the first N rows (to resume)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="replay at most N rows")
    p.add_argument("--source-format", choices=("auto", "parquet", "swat", "plant-csv"), default="auto",
                   help="how to read SOURCE (default: by its name; .csv is SWaT unless --plant-file is given)")
    p.add_argument("--plant-file", help="plant file (YAML/JSON) for a plant CSV or non-SWaT Parquet")
    p.add_argument("--tz", help="time zone of the source's clock (default: SWaT's Asia/Singapore, or the plant file's)")
    p.add_argument("--on-error", choices=("raise", "quarantine"), default="raise",
                   help="bad source rows: stop with an error (default), or leave them out and count them")
    p.add_argument("--time-style", choices=("iso", "swat"), default="iso",
                   help="Kafka Timestamp field: ISO 8601 UTC (default) or SWaT's day-first 12-hour local clock")
    p.add_argument("--kafka-tz", default="Asia/Singapore",
                   help="zone of the SWaT-style clock for --time-style swat (default Asia/Singapore)")
    p.add_argument("--no-plant-field", action="store_true",
                   help="Kafka messages without the `plant` field (exactly the operators' fields)")
    p.add_argument("--progress-every", type=float, default=5.0, metavar="S",
                   help="seconds between progress lines on stderr (default 5; 0 for none)")
    p.set_defaults(func=run)


def _sigterm_as_interrupt() -> None:
    """A container is stopped with SIGTERM: stop as cleanly as on Ctrl-C."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass


def run(args: argparse.Namespace) -> int:
    from tidewatch.errors import ConfigError
    from tidewatch.readers import read_dataset
    from tidewatch.replay import DirectorySink, KafkaJsonLinesSink, ReplayStats, replay
    from tidewatch.schema import sensor_columns

    if args.start_row < 0 or (args.limit is not None and args.limit < 0):
        raise ConfigError("--start-row and --limit must not be negative")
    speed = None if args.fast else args.speed
    result = read_dataset(args.source, source_format=args.source_format, plant_file=args.plant_file, tz=args.tz,
                          on_error=args.on_error)
    print(f"tidewatch replay: read {args.source}: {result.summary()}", file=sys.stderr)
    table = result.table.slice(args.start_row, args.limit)

    if args.landing_dir:
        rows_per_chunk = args.rows_per_file or 1000
        sink = DirectorySink(args.landing_dir, args.file_format, prefix=args.prefix)
        where = f"{args.landing_dir} ({args.file_format}, {rows_per_chunk} rows per file)"
        stream = None
    else:
        # Paced, each reading goes out when its time comes; unpaced, lines go out in blocks.
        rows_per_chunk = args.rows_per_file or (1 if speed is not None else 1000)
        stream = sys.stdout if args.kafka_jsonl == "-" else open(args.kafka_jsonl, "w", encoding="utf-8")
        sink = KafkaJsonLinesSink(stream, sensor_columns(table.schema), time_style=args.time_style,
                                  timezone=args.kafka_tz, plant_field=not args.no_plant_field)
        where = "stdout" if args.kafka_jsonl == "-" else args.kafka_jsonl
    pace = "as fast as possible" if speed is None else ("real time" if speed == 1 else f"{speed:g}x real time")
    print(f"tidewatch replay: {table.num_rows} rows to {where}, {pace}", file=sys.stderr)

    last_print = [time.monotonic()]

    def progress(stats: ReplayStats) -> None:
        if args.progress_every and time.monotonic() - last_print[0] >= args.progress_every:
            last_print[0] = time.monotonic()
            print(f"tidewatch replay: {stats.line()}", file=sys.stderr)

    _sigterm_as_interrupt()
    stats = ReplayStats(total_rows=table.num_rows)
    try:
        replay(table, sink, speed=speed, rows_per_chunk=rows_per_chunk, progress=progress, stats=stats)
    except KeyboardInterrupt:
        print(f"tidewatch replay: interrupted: {stats.line()}; every file written is complete; "
              f"resume with --start-row {args.start_row + stats.rows}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reading end went away (a producer that stopped, `head`): say how far we got.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        print(f"tidewatch replay: the output was closed by its reader: {stats.line()}; "
              f"resume with --start-row {args.start_row + stats.rows}", file=sys.stderr)
        return 141
    finally:
        if stream is not None and stream is not sys.stdout:
            stream.close()
    print(f"tidewatch replay: done: {stats.line()} in {stats.elapsed:.1f} s", file=sys.stderr)
    return 0
