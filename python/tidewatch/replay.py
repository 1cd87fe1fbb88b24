"""Replays a dataset as a live stream: into a landing directory as small files, or as JSON lines in the
Kafka message format of the `ics-sensor-data` topic.

Pacing follows the data's own clock: a chunk of rows is released when the time of its last row has
come, at `speed` times real time (1 = real time; None = as fast as possible).

Landing files are written atomically: to a hidden temporary name in the same directory (Spark's file
source ignores names starting with `.` or `_`), flushed, fsynced, then renamed. A reader never sees a
partial file, and an interrupted replay (Ctrl-C, SIGTERM, `stop`) leaves only complete files behind.
Names sort in replay order: `PREFIX-000000.csv`, `PREFIX-000001.csv`, ...

Landing formats hold the canonical columns (plant, timestamp, sensors, label, then any optional ones):
- `csv`: a header line, ISO 8601 UTC times (`2015-12-28T02:00:00.000000Z`), numbers in shortest
  round-trip form, an empty field for a null;
- `jsonl`: one JSON object per row, numbers as JSON numbers, the time as an ISO 8601 string;
- `parquet`: the canonical schema, identical in every file.

The Kafka message format (`KafkaJsonLinesSink`): one JSON object per reading, every value a string:
`Timestamp`, the sensors by name, `Normal_Attack` (`Normal`, `Attack`, or "" when unknown), and `plant`
(tidewatch's Kafka source keys plants by it; leave it out with `plant_field=False` for consumers that
want exactly the operators' fields).
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tidewatch.errors import ConfigError, TidewatchIOError
from tidewatch.schema import LABEL, PLANT, TIMESTAMP, TIMESTAMP_TYPE, sensor_columns

LandingFormat = Literal["csv", "jsonl", "parquet"]
LANDING_FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")
_EXTENSIONS = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # Arrow's %S carries the fraction of the unit (microseconds here)


@dataclass
class ReplayStats:
    """Where a replay stands; updated after every chunk, so it is right after an interruption too."""

    total_rows: int
    rows: int = 0
    chunks: int = 0
    started: float = field(default_factory=time.monotonic)
    last_time: object = None  # timestamp of the last row delivered
    behind_s: float = 0.0  # how late the last chunk was against its schedule
    interrupted: bool = False
    outputs: list[str] = field(default_factory=list)  # files written (directory sink)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self) -> str:
        share = f" ({100 * self.rows / self.total_rows:.1f}%)" if self.total_rows else ""
        rate = self.rows / self.elapsed if self.elapsed > 0 else 0.0
        text = f"{self.rows}/{self.total_rows} rows{share}, {self.chunks} chunks, {rate:,.0f} rows/s"
        if self.last_time is not None:
            text += f", data time {self.last_time}"
        if self.behind_s > 1.0:
            text += f", {self.behind_s:.1f} s behind schedule"
        return text


class Sink(Protocol):
    def write(self, chunk: pa.Table) -> str | None:
        """Delivers one chunk; returns what was written (a file path) if anything names it."""

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------------
# sinks
# ------------------------------------------------------------------------------------------------


def _iso_times(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return pc.strftime(column.cast(TIMESTAMP_TYPE), format=ISO_FORMAT)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySink:
    """Writes each chunk as one complete file in `landing_dir`, atomically."""

    def __init__(self, landing_dir: str | Path, file_format: LandingFormat = "csv", *, prefix: str | None = None,
                 fsync: bool = True) -> None:
        if file_format not in LANDING_FORMATS:
            raise ConfigError(f"landing file format must be one of {', '.join(LANDING_FORMATS)}, got {file_format!r}")
        if prefix is not None and (not prefix or prefix[0] in "._" or "/" in prefix):
            raise ConfigError(f"file prefix {prefix!r} must be non-empty, not start with '.' or '_', hold no '/'")
        self.directory = Path(landing_dir)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TidewatchIOError(f"{self.directory}: cannot create the landing directory: {exc}") from exc
        self.file_format = file_format
        self.prefix = prefix or time.strftime("replay-%Y%m%dT%H%M%S", time.gmtime())
        self.fsync = fsync
        self.sequence = 0

    def _encode(self, chunk: pa.Table, handle: IO[bytes]) -> None:
        if self.file_format == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(chunk, handle)
            return
        text_chunk = chunk.set_column(chunk.schema.get_field_index(TIMESTAMP), TIMESTAMP, _iso_times(chunk[TIMESTAMP]))
        if self.file_format == "csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(text_chunk, handle)
        else:
            lines = [json.dumps(row, separators=(",", ":")) for row in text_chunk.to_pylist()]
            handle.write(("\n".join(lines) + "\n").encode("utf-8"))

    def write(self, chunk: pa.Table) -> str:
        name = f"{self.prefix}-{self.sequence:06d}.{_EXTENSIONS[self.file_format]}"
        target = self.directory / name
        temporary = self.directory / f".{name}.tmp"
        if target.exists():
            raise TidewatchIOError(f"{target} already exists: replaying again needs another --prefix or an empty directory")
        try:
            with open(temporary, "wb") as handle:
                self._encode(chunk, handle)
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
            os.rename(temporary, target)
        except BaseException:  # KeyboardInterrupt included: never leave the temporary file behind
            temporary.unlink(missing_ok=True)
            raise
        if self.fsync:
            _fsync_directory(self.directory)
        self.sequence += 1
        return str(target)

    def close(self) -> None:
        pass


def kafka_messages(chunk: pa.Table, sensors: Sequence[str], *, time_style: Literal["iso", "swat"] = "iso",
                   timezone: str = "Asia/Singapore", plant_field: bool = True) -> list[str]:
    """The rows of `chunk` as JSON messages of the `ics-sensor-data` topic: every field a string."""
    n = chunk.num_rows
    if time_style == "iso":
        times = _iso_times(chunk[TIMESTAMP]).to_pylist()
    elif time_style == "swat":
        # An array typed with the zone gives datetimes in that zone: the wall clock the plant shows.
        times = [_swat_time(t) for t in chunk[TIMESTAMP].cast(pa.timestamp("us", tz=timezone)).to_pylist()]
    else:
        raise ConfigError(f"time style must be 'iso' or 'swat', got {time_style!r}")
    columns = [[_number_text(v) for v in chunk[s].to_pylist()] for s in sensors]
    labels = ["" if v is None else ("Attack" if v else "Normal") for v in chunk[LABEL].to_pylist()]
    plants = chunk[PLANT].to_pylist() if plant_field else None
    messages = []
    for i in range(n):
        message = {"Timestamp": "" if times[i] is None else times[i]}
        for name, values in zip(sensors, columns):
            message[name] = values[i]
        message["Normal_Attack"] = labels[i]
        if plants is not None:
            message["plant"] = "" if plants[i] is None else plants[i]
        messages.append(json.dumps(message, separators=(",", ":")))
    return messages


def _number_text(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value))


def _swat_time(local: object) -> str:
    """`28/12/2015 10:00:00 AM`: the official exports' day-first 12-hour clock (without their leading space)."""
    if local is None:
        return ""
    hour = local.hour % 12 or 12  # type: ignore[attr-defined]
    return f"{local:%d/%m/%Y} {hour}:{local:%M:%S} {'AM' if local.hour < 12 else 'PM'}"  # type: ignore[attr-defined]


class KafkaJsonLinesSink:
    """Writes each chunk as JSON lines in the Kafka message format to `stream` (a file or stdout)."""

    def __init__(self, stream: IO[str], sensors: Sequence[str], *, time_style: Literal["iso", "swat"] = "iso",
                 timezone: str = "Asia/Singapore", plant_field: bool = True) -> None:
        self.stream = stream
        self.sensors = list(sensors)
        self.time_style = time_style
        self.timezone = timezone
        self.plant_field = plant_field

    def write(self, chunk: pa.Table) -> None:
        messages = kafka_messages(chunk, self.sensors, time_style=self.time_style, timezone=self.timezone,
                                  plant_field=self.plant_field)
        self.stream.write("\n".join(messages) + "\n")  # one write per chunk: lines are never split
        self.stream.flush()
        return None

    def close(self) -> None:
        self.stream.flush()


# ------------------------------------------------------------------------------------------------
# the replay loop
# ------------------------------------------------------------------------------------------------


def replay(
    table: pa.Table,
    sink: Sink,
    *,
    speed: float | None = None,
    rows_per_chunk: int = 1000,
    stop: threading.Event | None = None,
    progress: Callable[[ReplayStats], None] | None = None,
    stats: ReplayStats | None = None,
) -> ReplayStats:
    """Delivers `table`'s rows in order, in chunks of `rows_per_chunk`, to `sink`, each chunk when the
    time of its last row has come at `speed` times real time (None: no waiting). Returns the stats; a set
    `stop` event ends the replay after the chunk in hand (stats.interrupted). KeyboardInterrupt propagates
    after the current chunk is either complete or not written at all; `stats` (pass your own to read it
    then) says how far the replay got."""
    if rows_per_chunk < 1:
        raise ConfigError(f"rows per chunk must be at least 1, got {rows_per_chunk}")
    if speed is not None and not (speed > 0 and math.isfinite(speed)):
        raise ConfigError(f"speed must be a positive number (times real time), got {speed}")
    if TIMESTAMP not in table.column_names:
        raise ConfigError(f"the table to replay has no {TIMESTAMP!r} column")
    stats = stats or ReplayStats(total_rows=table.num_rows)
    stats.total_rows = table.num_rows
    times_us = np.asarray(table[TIMESTAMP].cast(TIMESTAMP_TYPE).cast(pa.int64()).fill_null(0).to_numpy(),
                          dtype=np.int64) if speed is not None else None
    start_wall = time.monotonic()
    for offset in range(0, table.num_rows, rows_per_chunk):
        if stop is not None and stop.is_set():
            stats.interrupted = True
            break
        end = min(offset + rows_per_chunk, table.num_rows)
        if times_us is not None:
            due = start_wall + (times_us[end - 1] - times_us[0]) / 1e6 / speed
            wait = due - time.monotonic()
            if wait > 0:
                if stop is not None:
                    if stop.wait(wait):
                        stats.interrupted = True
                        break
                else:
                    time.sleep(wait)
            stats.behind_s = max(0.0, -wait)
        chunk = table.slice(offset, end - offset)
        written = sink.write(chunk)
        if written:
            stats.outputs.append(written)
        stats.rows = end
        stats.chunks += 1
        stats.last_time = chunk[TIMESTAMP][-1].as_py()
        if progress is not None:
            progress(stats)
    sink.close()
    return stats


def replay_to_directory(
    source: str | Path | pa.Table,
    landing_dir: str | Path,
    *,
    speed: float | None = None,
    rows_per_file: int = 1000,
    file_format: LandingFormat = "csv",
    prefix: str | None = None,
    plant_file: str | Path | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[ReplayStats], None] | None = None,
) -> ReplayStats:
    """Replays a dataset (a canonical table, or any file `readers.read_dataset` reads) into `landing_dir`."""
    table = source if isinstance(source, pa.Table) else _load(source, plant_file)
    sink = DirectorySink(landing_dir, file_format, prefix=prefix)
    return replay(table, sink, speed=speed, rows_per_chunk=rows_per_file, stop=stop, progress=progress)


def replay_to_kafka_jsonl(
    source: str | Path | pa.Table,
    stream: IO[str],
    *,
    speed: float | None = None,
    rows_per_chunk: int = 1,
    plant_file: str | Path | None = None,
    time_style: Literal["iso", "swat"] = "iso",
    timezone: str = "Asia/Singapore",
    plant_field: bool = True,
    stop: threading.Event | None = None,
    progress: Callable[[ReplayStats], None] | None = None,
) -> ReplayStats:
    """Replays a dataset as JSON lines in the Kafka message format onto `stream`."""
    table = source if isinstance(source, pa.Table) else _load(source, plant_file)
    sink = KafkaJsonLinesSink(stream, sensor_columns(table.schema), time_style=time_style, timezone=timezone,
                              plant_field=plant_field)
    return replay(table, sink, speed=speed, rows_per_chunk=rows_per_chunk, stop=stop, progress=progress)


def _load(source: str | Path, plant_file: str | Path | None) -> pa.Table:
    from tidewatch.readers import read_dataset

    return read_dataset(source, plant_file=plant_file).table
