"""A SWaT-shaped plant simulator with the official SWaT A1 attacks (core in Rust: ``src/simulator/``).

The six stages run at 1 Hz with coupled physics: tank levels (LIT101, LIT301, LIT401) integrate their in- and
outflows, the PLCs drive pumps and valves from the level set points (LL/L/H/HH) with hysteresis, flows exist
only where pumps and valves allow, analysers drift slowly with noise, the RO pressures follow the RO pump,
the UF backwashes every 30 minutes of filtration. Actuators use SWaT's encodings (MV 0 transition, 1 closed,
2 open; pumps and UV 1 off, 2 on); standby pumps stay off.

The 36 attacks of the official list that had a physical impact act as listed: spoofed readings (the PLCs act
on them, and they are what gets recorded, as in the official files, while the physics carries on) and forced
actuators, for the listed duration. Rows carry ``label`` (1 during an attack), ``attack_id`` and
``attacked_points`` (the list's points, ``;``-separated).

``simulate`` returns the canonical table (``tidewatch.schema``); ``write_parquet`` and ``write_swat_csv`` (the
official export's quirky CSV, for exercising readers) save it. The same settings give the same rows.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tidewatch import _native
from tidewatch.errors import ConfigError, InputError, SchemaError, TidewatchIOError
from tidewatch.schema import ATTACK_ID, LABEL, PLANT, TIMESTAMP

Attacks = Literal["all", "none"] | Sequence[int]
Timing = Literal["spread", "official"]

DEFAULT_START = "2015-12-28 10:00:00"
# Schema metadata key holding the settings a simulated table was made with (JSON).
METADATA_KEY = b"tidewatch.simulation"
# The official exports' clock: Singapore time (what tidewatch.readers.read_swat assumes by default).
SWAT_CSV_TIMEZONE = "Asia/Singapore"
# Header cells of the official exports that start with a space (swat_a1_2015_schema.csv, column_raw_header).
_LEADING_SPACE_HEADERS = frozenset({"MV101", "AIT201", "MV201", "P201", "P202", "P204", "MV303"})
_ACTUATOR = re.compile(r"^(MV|P|UV)\d+$")
# In each attack, these rows (by offset from its first row) are spelled `A ttack`, as some rows of the
# official attack file are.
MISSPELLED_ROWS = range(10, 20)


def simulated_attack_ids() -> list[int]:
    """Ids of the official attacks the simulator reproduces: the 36 with a physical impact."""
    return list(_native.simulated_attack_ids())


def _start_micros(start: str | dt.datetime) -> int:
    if isinstance(start, str):
        try:
            start = dt.datetime.fromisoformat(start.strip())
        except ValueError as exc:
            raise ConfigError(f"start {start!r} is not a date and time like {DEFAULT_START!r}") from exc
    if not isinstance(start, dt.datetime):
        raise ConfigError(f"start must be a string or a datetime, got {type(start).__name__}")
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.timezone.utc)  # a naive start is UTC
    delta = start - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _attack_ids(attacks: Attacks) -> list[int]:
    if isinstance(attacks, str):
        if attacks == "all":
            return simulated_attack_ids()
        if attacks == "none":
            return []
        raise ConfigError(f"attacks must be 'all', 'none' or a list of attack ids, got {attacks!r}")
    ids = list(attacks)
    bad = [a for a in ids if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or a < 1]
    if bad:
        raise ConfigError(f"attack ids must be positive integers, got {bad}")
    return [int(a) for a in ids]


def _check_counts(duration_s: int, seed: int) -> None:
    for name, value, low in (("duration_s", duration_s, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if not low <= value < 2**64:
            raise ConfigError(f"{name} must be between {low} and 2**64 - 1, got {value}")


def _settings(duration_s: int, seed: int, start_us: int, ids: list[int], timing: str, plant: str) -> dict[str, object]:
    start = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=start_us)
    return {"simulator": "tidewatch", "plant": plant, "seed": int(seed), "duration_s": int(duration_s),
            "start": start.isoformat(), "attacks": ids, "timing": timing}


def simulate(
    duration_s: int,
    seed: int = 0,
    start: str | dt.datetime = DEFAULT_START,
    attacks: Attacks = "all",
    plant: str = "swat",
    *,
    timing: Timing = "spread",
) -> pa.Table:
    """`duration_s` seconds of the plant at 1 Hz from `start` (a naive time is UTC), as a canonical table.

    `attacks`: "all" (the 36 physical attacks), "none", or a list of attack ids. With `timing="spread"` they
    come in the order given, spread evenly over the run with normal operation before, between and after
    them (at least 10 minutes each; a run too short for them is a ConfigError saying how long it must be),
    each striking when the plant is in the state it targets (e.g. attack 3 waits for P101 to be running).
    With `timing="official"` they start at their official offsets from 2015-12-28 10:00:00, taking `start`
    as that moment; those beyond the run do not happen.

    The settings are kept in the schema metadata (`simulation_settings(table)`); the attacks that ran can be
    read back from the rows with `attack_windows(table)`.
    """
    _check_counts(duration_s, seed)
    start_us = _start_micros(start)
    ids = _attack_ids(attacks)
    batch, _runs = _native.simulate(int(duration_s), seed=int(seed), start_us=start_us, attacks=ids, timing=timing,
                                    plant=plant)
    table = pa.Table.from_batches([batch])
    meta = {METADATA_KEY: json.dumps(_settings(duration_s, seed, start_us, ids, timing, plant)).encode()}
    return table.replace_schema_metadata(meta)


def simulate_batches(
    duration_s: int,
    seed: int = 0,
    start: str | dt.datetime = DEFAULT_START,
    attacks: Attacks = "all",
    plant: str = "swat",
    *,
    timing: Timing = "spread",
    batch_rows: int = 86_400,
) -> Iterator[pa.RecordBatch]:
    """The rows of `simulate(...)` (same arguments, same rows) as record batches of at most `batch_rows`,
    generated as they are consumed: for runs too long to hold in memory at once."""
    _check_counts(duration_s, seed)
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ConfigError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    start_us = _start_micros(start)
    ids = _attack_ids(attacks)
    sim = _native.PlantSimulation(int(duration_s), seed=int(seed), start_us=start_us, attacks=ids, timing=timing,
                                  plant=plant)
    meta = {METADATA_KEY: json.dumps(_settings(duration_s, seed, start_us, ids, timing, plant)).encode()}
    while (batch := sim.next_batch(batch_rows)) is not None:
        yield batch.replace_schema_metadata(meta)


def simulation_settings(table: pa.Table) -> dict[str, object] | None:
    """The settings `simulate` recorded in the table's schema metadata, or None for other tables."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return None if raw is None else json.loads(raw)


def attack_windows(table: pa.Table) -> list[dict[str, object]]:
    """The attacks in a table with an `attack_id` column, in order: id, first and last timestamp, rows.
    A row shared by two attacks (official attacks 10 and 11 overlap by one second) belongs to the later."""
    if ATTACK_ID not in table.column_names:
        raise SchemaError(f"table has no {ATTACK_ID!r} column: {table.column_names}")
    ids = np.asarray(table[ATTACK_ID].fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    times = table[TIMESTAMP]
    change = np.flatnonzero(np.diff(ids, prepend=0, append=0))
    windows = []
    for begin, end in zip(change[:-1], change[1:]):
        if ids[begin] != 0:
            windows.append({"attack_id": int(ids[begin]), "start": times[int(begin)].as_py(),
                            "end": times[int(end) - 1].as_py(), "rows": int(end - begin)})
    return windows


# ------------------------------------------------------------------------------------------------
# writers
# ------------------------------------------------------------------------------------------------


def _atomic_target(path: str | Path) -> tuple[Path, Path]:
    """(final path, hidden temporary path beside it): write aside, then rename, so a reader never sees a
    half-written file."""
    final = Path(path)
    if final.is_dir():
        raise TidewatchIOError(f"{final}: is a directory")
    if not final.parent.is_dir():
        raise TidewatchIOError(f"{final}: folder {final.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return final, Path(tmp)


def _publish(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)


def write_parquet(table: pa.Table | pa.RecordBatch, path: str | Path) -> Path:
    """Writes `table` (schema metadata included) to a Parquet file, atomically. Returns the path."""
    final, tmp = _atomic_target(path)
    try:
        pq.write_table(table if isinstance(table, pa.Table) else pa.Table.from_batches([table]), tmp)
        _publish(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


class ParquetStream:
    """Writes record batches one after another into one Parquet file, published (renamed into place) on
    `close()`; on an error, or `abort()`, nothing is left behind."""

    def __init__(self, path: str | Path, schema: pa.Schema) -> None:
        self.path, self._tmp = _atomic_target(path)
        self._writer = pq.ParquetWriter(self._tmp, schema)

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if isinstance(batch, pa.RecordBatch):
            self._writer.write_batch(batch)
        else:
            self._writer.write_table(batch)

    def close(self) -> Path:
        self._writer.close()
        _publish(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ParquetStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def _swat_sensors() -> list[str]:
    return list(_native.SensorSet.swat().sensors)


def swat_csv_header() -> list[str]:
    """The header cells of the official SWaT A1 exports, leading spaces included."""
    return [" Timestamp", *((f" {s}" if s in _LEADING_SPACE_HEADERS else s) for s in _swat_sensors()),
            "Normal/Attack"]


class SwatCsvStream:
    """Writes canonical SWaT rows as an official SWaT A1 CSV export, chunk after chunk, atomically (the file
    appears under its name on `close()`). See `write_swat_csv` for the format."""

    def __init__(self, path: str | Path, *, tz: str = SWAT_CSV_TIMEZONE, digits: int | None = 7) -> None:
        if digits is not None and not 1 <= digits <= 17:
            raise ConfigError(f"digits must be between 1 and 17 (or None for exact values), got {digits}")
        try:
            pa.array([0], pa.timestamp("s", tz="UTC")).cast(pa.timestamp("s", tz=tz))
            pc.strftime(pa.array([0], pa.timestamp("s", tz=tz)))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ConfigError(f"unknown time zone {tz!r}") from exc
        self.tz = tz
        self.digits = digits
        self.rows = 0
        self._sensors = _swat_sensors()
        self._attack_rows_seen = 0  # rows into the attack running at the end of the previous chunk
        self.path, self._tmp = _atomic_target(path)
        self._handle: IO[bytes] = open(self._tmp, "wb")
        self._handle.write((",".join(swat_csv_header()) + "\n").encode())

    def _numbers(self, column: pa.ChunkedArray, name: str) -> pa.Array:
        values = np.asarray(column.to_numpy(), dtype=np.float64)
        if not np.all(np.isfinite(values)):
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise InputError(f"column {name!r}, row {self.rows + row}: {values[row]} cannot be written")
        if _ACTUATOR.match(name):
            if not np.all(values == np.round(values)):
                row = int(np.flatnonzero(values != np.round(values))[0])
                raise InputError(f"actuator column {name!r}, row {self.rows + row}: {values[row]} is not a state")
            return pc.cast(pa.array(values.astype(np.int64)), pa.string())
        if self.digits is not None:
            # Round to `digits` significant digits, as the official exports show readings (e.g. 522.8467);
            # the division by a power of ten lands on the double nearest that decimal, whose shortest
            # representation Arrow then prints.
            magnitude = np.floor(np.log10(np.abs(np.where(values == 0, 1.0, values))))
            decimals = (self.digits - 1 - magnitude).astype(np.int64)
            scale = np.power(10.0, np.abs(decimals))
            values = np.where(decimals >= 0, np.round(values * scale) / scale, np.round(values / scale) * scale)
        return pc.cast(pa.array(values), pa.string())

    def _labels(self, label: pa.ChunkedArray) -> pa.Array:
        if label.null_count:
            row = int(np.flatnonzero(label.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"column {LABEL!r}, row {self.rows + row}: no label")
        attack = np.asarray(label.to_numpy(), dtype=np.int64) != 0
        index = np.arange(attack.size)
        starts = attack & ~np.concatenate(([False], attack[:-1]))
        if attack.size and attack[0] and self._attack_rows_seen:
            starts[0] = False  # the attack running at the end of the previous chunk goes on
        last_start = np.maximum.accumulate(np.where(starts, index, -1)) if attack.size else index
        # Offset of each attack row from its attack's first row.
        offset = np.where(last_start >= 0, index - last_start, index + self._attack_rows_seen)
        if attack.size:
            self._attack_rows_seen = int(offset[-1] + 1) if attack[-1] else 0
        misspelled = attack & (offset >= MISSPELLED_ROWS.start) & (offset < MISSPELLED_ROWS.stop)
        text = np.where(misspelled, "A ttack", np.where(attack, "Attack", "Normal"))
        return pa.array(text, pa.string())

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        """Appends the rows of `table`: canonical columns `timestamp`, the 51 SWaT sensors, `label`
        (others are ignored; one plant only)."""
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        missing = [c for c in (TIMESTAMP, *self._sensors, LABEL) if c not in table.column_names]
        if missing:
            raise SchemaError(f"cannot write a SWaT CSV: missing columns {', '.join(missing)}")
        if PLANT in table.column_names and len(pc.unique(table[PLANT])) > 1:
            raise InputError(f"the SWaT CSV format holds one plant; the table has {pc.unique(table[PLANT]).to_pylist()}")
        if table.num_rows == 0:
            return
        try:
            local = table[TIMESTAMP].cast(pa.timestamp("s", tz="UTC")).cast(pa.timestamp("s", tz=self.tz))
        except pa.ArrowInvalid as exc:
            raise InputError(f"column {TIMESTAMP!r}: the SWaT CSV format has whole seconds only: {exc}") from exc
        if local.null_count:
            raise InputError(f"column {TIMESTAMP!r}: {local.null_count} rows have no time")
        text = pc.strftime(local, format="%d/%m/%Y %I:%M:%S %p")
        # ` 28/12/2015 6:00:00 PM`: a leading space, and no leading zero on the hour.
        stamps = pc.replace_substring_regex(text, pattern=r"^(\d\d/\d\d/\d{4}) 0?", replacement=r" \1 ")
        columns = [stamps, *(self._numbers(table[s], s) for s in self._sensors), self._labels(table[LABEL])]
        out = pa.table(columns, names=[f"c{i}" for i in range(len(columns))])
        options = pacsv.WriteOptions(include_header=False, quoting_style="none", delimiter=",")
        try:
            pacsv.write_csv(out, self._handle, write_options=options)
        except pa.ArrowInvalid as exc:
            raise InputError(f"cannot write the SWaT CSV: {exc}") from exc
        self.rows += table.num_rows

    def close(self) -> Path:
        self._handle.close()
        _publish(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._handle.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> SwatCsvStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_swat_csv(table: pa.Table | pa.RecordBatch, path: str | Path, *, tz: str = SWAT_CSV_TIMEZONE,
                   digits: int | None = 7) -> Path:
    """Writes canonical SWaT rows in the format of the official SWaT A1 CSV exports, atomically.

    As the official files have it: the header with its leading spaces (` Timestamp`, ` MV101`, ...), times
    like ` 28/12/2015 6:00:00 PM` (leading space, day first, 12-hour clock without a leading zero) on the
    clock of `tz` (SWaT's: Singapore, which `tidewatch.readers.read_swat` assumes), readings with `digits`
    significant digits (None: the exact doubles), actuator states as integers, and a last
    column `Normal/Attack` holding `Normal`, `Attack`, and `A ttack` for rows 11 to 20 of each attack (the
    official attack file has this misspelling too). `plant`, `attack_id` and `attacked_points` are not
    written: the format has no place for them.
    """
    with SwatCsvStream(path, tz=tz, digits=digits) as stream:
        stream.write(table)
    return stream.path
