"""Readers: SWaT A1 exports (CSV, XLSX) and other plants' CSVs into the canonical table (tidewatch.schema).

Every input row ends up in exactly one place: the table, or the quarantine with a reason (``on_error=
"quarantine"``); with ``on_error="raise"`` (the default) the first bad row raises ``InputError`` naming the
file, the line (1-based, as an editor shows it; for XLSX the sheet row) and the column. Blank lines carry no
reading and are skipped, but counted (``ReadResult.blank_lines``). A file that does not have the expected
columns raises ``SchemaError`` naming the missing ones, whatever ``on_error`` says.

Bad values, by ``reason`` in the quarantine: ``missing`` (empty cell), ``malformed`` (not a number, time or
label), ``nan``, ``infinite``, ``nonexistent_local_time`` / ``ambiguous_local_time`` (a clock change in the
source time zone), ``field_count`` (too few or too many fields: a truncated or garbled line), ``encoding``
(not UTF-8), ``duplicate_timestamp`` and ``out_of_order`` (the first row of a time is kept; a row earlier
than one before it is set aside). A date that does not exist (31/02/2015) is ``malformed``.

Lines are what an editor shows: only ``\n`` (or ``\r\n``) ends one. Two kinds of damage would make the
CSV parser's rows differ from the file's lines, and each sets its one line aside as ``malformed`` (in the
column where the damage is), the lines after it read normally: a lone carriage return (``\r`` not
followed by ``\n``) inside a line, and a quote opening a value that does not close on its line (quoted
values are read, but a value cannot span lines: plant data are numbers, times and labels).

Parsing is columnar (pyarrow.csv, pyarrow.compute); Python loops run only over bad values.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tidewatch.errors import ConfigError, InputError, SchemaError, TidewatchIOError
from tidewatch.schema import (
    LABEL,
    QUARANTINE_SCHEMA,
    TIMESTAMP,
    TIMESTAMP_TYPE,
    canonical_schema,
    conform,
    sensor_columns,
)

OnError = Literal["raise", "quarantine"]

SWAT_TIMEZONE = "Asia/Singapore"
SWAT_TIME_COLUMN = "Timestamp"
SWAT_LABEL_COLUMN = "Normal/Attack"
# The Kafka message format's spelling of the label column; accepted in place of the official one.
SWAT_LABEL_ALIASES = ("Normal_Attack",)
# ` 22/12/2015 4:30:00 PM`: day first, 12-hour clock (the leading space is trimmed before parsing).
SWAT_TIME_FORMAT = "%d/%m/%Y %I:%M:%S %p"
# Lines searched for the header (the XLSX exports have a banner row above it).
HEADER_SEARCH_LINES = 20

# Label spellings, compared after lower-casing and removing all white space (so `A ttack` is `attack`).
LABEL_WORDS: Mapping[str, int] = {
    "normal": 0, "attack": 1, "anomaly": 1,
    "0": 0, "1": 1, "0.0": 0, "1.0": 1,
    "false": 0, "true": 1,
}

_NUMBER_RE = r"(?i)^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)(e[+-]?[0-9]+)?|inf|infinity|nan)$"

# Problem codes, in the order they are reported when a cell has several (only the first is kept).
_OK, _MISSING, _MALFORMED, _NAN, _INFINITE, _NONEXISTENT, _AMBIGUOUS = range(7)
_REASONS = {
    _MISSING: "missing",
    _MALFORMED: "malformed",
    _NAN: "nan",
    _INFINITE: "infinite",
    _NONEXISTENT: "nonexistent_local_time",
    _AMBIGUOUS: "ambiguous_local_time",
}
_EXPLAIN = {
    "missing": "empty value",
    "malformed": "cannot parse {value!r}",
    "nan": "NaN is not a reading",
    "infinite": "infinite value {value!r}",
    "nonexistent_local_time": "{value!r} does not exist in time zone {tz} (clock change)",
    "ambiguous_local_time": "{value!r} happens twice in time zone {tz} (clock change)",
}


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------


@dataclass
class ReadResult:
    """The canonical rows read, and the rows set aside (schema.QUARANTINE_SCHEMA) with their reason."""

    table: pa.Table
    quarantined: pa.Table = field(default_factory=QUARANTINE_SCHEMA.empty_table)
    blank_lines: int = 0  # empty lines (or empty sheet rows) skipped: they hold no reading
    sources: list[str] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        """Rows in the input that hold data: kept plus quarantined."""
        return self.table.num_rows + self.quarantined.num_rows

    def summary(self) -> str:
        text = f"{self.table.num_rows} rows"
        if self.quarantined.num_rows:
            reasons = self.quarantine_counts()
            text += f", {self.quarantined.num_rows} quarantined (" + ", ".join(
                f"{k}: {v}" for k, v in reasons.items()) + ")"
        if self.blank_lines:
            text += f", {self.blank_lines} blank lines skipped"
        return text

    def quarantine_counts(self) -> dict[str, int]:
        if not self.quarantined.num_rows:
            return {}
        counts = pc.value_counts(self.quarantined["reason"]).to_pylist()
        return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: -c["counts"])}

    @staticmethod
    def concat(results: Sequence[ReadResult]) -> ReadResult:
        """One result from several files' (same plant); extra columns absent from some files become null."""
        if not results:
            raise ValueError("nothing to concatenate")
        return ReadResult(
            table=pa.concat_tables([r.table for r in results], promote_options="default"),
            quarantined=pa.concat_tables([r.quarantined for r in results]),
            blank_lines=sum(r.blank_lines for r in results),
            sources=[s for r in results for s in r.sources],
        )



# ------------------------------------------------------------------------------------------------
# plant files
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CsvFormat:
    """How a plant's CSV files are laid out: the `csv:` section of its plant file."""

    separator: str = ","
    time_column: str = "timestamp"
    time_format: str = "iso"  # a strptime format, or "iso" (ISO 8601, optional offset)
    timezone: str = "UTC"  # the zone of times written without an offset
    label_column: str | None = None
    extra_labels: tuple[str, ...] = ()  # further 0/1 columns kept as int32 (e.g. SKAB's changepoint)
    ignore_columns: tuple[str, ...] = ()  # columns known to carry nothing tidewatch uses

    @staticmethod
    def from_mapping(section: Mapping[str, Any] | None, source: str) -> CsvFormat:
        section = dict(section or {})
        known = {"separator", "time_column", "time_format", "timezone", "label_column", "extra_labels",
                 "ignore_columns"}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown keys in the csv section: {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(known))})")
        fmt = CsvFormat(
            separator=str(section.get("separator", ",")),
            time_column=str(section.get("time_column", "timestamp")),
            time_format=str(section.get("time_format", "iso")),
            timezone=str(section.get("timezone", "UTC")),
            label_column=None if section.get("label_column") is None else str(section["label_column"]),
            extra_labels=tuple(str(c) for c in section.get("extra_labels") or ()),
            ignore_columns=tuple(str(c) for c in section.get("ignore_columns") or ()),
        )
        if len(fmt.separator) != 1:
            raise ConfigError(f"{source}: csv.separator must be one character, got {fmt.separator!r}")
        _zone(fmt.timezone, source)
        return fmt


@dataclass(frozen=True)
class Plant:
    """A plant file: its sensor set (native `SensorSet`) and how its CSVs are laid out."""

    sensors: Any  # tidewatch.SensorSet
    csv: CsvFormat
    path: str | None = None

    @property
    def name(self) -> str:
        return str(self.sensors.plant)


def load_plant(plant_file: str | Path) -> Plant:
    """Reads a plant file (YAML or JSON): `plant`, `sensors`, `stages`, and the optional `csv` section."""
    import yaml

    from tidewatch import SensorSet

    path = Path(plant_file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TidewatchIOError(f"{path}: cannot read plant file: {exc.strerror or exc}") from exc
    sensors = SensorSet.load(str(path))  # validates sensors and stages, raises ConfigError naming the file
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # SensorSet.load already parsed it; kept for safety
        raise ConfigError(f"{path}: not a valid plant file: {exc}") from exc
    return Plant(sensors=sensors, csv=CsvFormat.from_mapping(document.get("csv"), str(path)), path=str(path))


def packaged_plant_file(name: str) -> Path:
    """A plant file shipped inside the package (tidewatch/data/plants/NAME.yaml)."""
    path = Path(str(resources.files("tidewatch") / "data" / "plants" / f"{name}.yaml"))
    if not path.is_file():
        raise ConfigError(f"no packaged plant file {name!r} (looked for {path})")
    return path


# ------------------------------------------------------------------------------------------------
# public readers
# ------------------------------------------------------------------------------------------------


def read_swat(
    path: str | Path,
    *,
    tz: str = SWAT_TIMEZONE,
    plant: str = "swat",
    labels: Literal["column", "attack-list"] = "column",
    attack_list: str | Path | None = None,
    on_error: OnError = "raise",
    check_order: bool = True,
    ignore_columns: Sequence[str] = (),
    sheet: int | str = 0,
) -> ReadResult:
    """Reads an official SWaT A1 export (.csv or .xlsx) into the canonical table.

    `tz` is the zone the file's clock shows (SWaT's is Singapore time); timestamps come out in UTC.
    `labels="column"` takes labels from `Normal/Attack` (`Normal`, `Attack`, `A ttack`);
    `labels="attack-list"` ignores that column (it may be absent) and labels every row inside an
    attack of `attack_list` (default: the official A1 list shipped with tidewatch) as 1.
    `ignore_columns` names extra columns to leave out; any other unexpected column is a SchemaError.
    """
    from tidewatch import SensorSet

    if labels not in ("column", "attack-list"):
        raise ConfigError(f"labels must be 'column' or 'attack-list', got {labels!r}")
    _check_on_error(on_error)
    sensors = list(SensorSet.swat().sensors)
    spec = _Spec(
        plant=plant,
        sensors=sensors,
        time_column=SWAT_TIME_COLUMN,
        time_formats=(SWAT_TIME_FORMAT,),
        timezone=tz,
        label_column=SWAT_LABEL_COLUMN if labels == "column" else None,
        label_aliases=SWAT_LABEL_ALIASES,
        ignore_columns=tuple(ignore_columns) + (() if labels == "column" else (SWAT_LABEL_COLUMN, *SWAT_LABEL_ALIASES)),
        separator=",",
        kind="SWaT A1 export",
        label_required=labels == "column",
    )
    path = Path(path)
    raw = _read_xlsx(path, spec, sheet) if path.suffix.lower() in (".xlsx", ".xlsm") else _read_text(path, spec)
    result = _assemble(raw, spec, on_error=on_error, check_order=check_order)
    if labels == "attack-list":
        result.table = _label_from_attack_list(result.table, attack_list)
    return result


def read_plant_csv(
    path: str | Path,
    plant_file: str | Path | Plant,
    *,
    tz: str | None = None,
    on_error: OnError = "raise",
    unlabelled: Literal["null", "normal", "error"] = "null",
    check_order: bool = True,
) -> ReadResult:
    """Reads one CSV of a plant described by `plant_file` (its `csv:` section gives separator, time column
    and format, time zone, label column). `tz` overrides the file's time zone. A file without the label
    column gets null labels (`unlabelled="null"`), all-normal labels (`"normal"`, for data known to be
    anomaly-free) or a SchemaError (`"error"`)."""
    _check_on_error(on_error)
    if unlabelled not in ("null", "normal", "error"):
        raise ConfigError(f"unlabelled must be 'null', 'normal' or 'error', got {unlabelled!r}")
    plant = plant_file if isinstance(plant_file, Plant) else load_plant(plant_file)
    fmt = plant.csv
    spec = _Spec(
        plant=plant.name,
        sensors=list(plant.sensors.sensors),
        time_column=fmt.time_column,
        time_formats=(fmt.time_format,),
        timezone=tz or fmt.timezone,
        label_column=fmt.label_column,
        label_aliases=(),
        ignore_columns=fmt.ignore_columns,
        separator=fmt.separator,
        kind=f"{plant.name} CSV (plant file {plant.path})" if plant.path else f"{plant.name} CSV",
        label_required=unlabelled == "error",
        unlabelled_value=0 if unlabelled == "normal" else None,
        extra_labels=fmt.extra_labels,
    )
    return _assemble(_read_text(Path(path), spec), spec, on_error=on_error, check_order=check_order)


def read_skab(path: str | Path) -> pa.Table | dict[str, pa.Table]:
    """SKAB (Skoltech Anomaly Benchmark) with the packaged plant file (plants/skab.yaml).

    A file gives its table; a folder (SKAB's `data/`, or one of its subfolders) gives one table per CSV
    file, keyed `folder/stem` (e.g. `valve1/0`) in natural order, since the benchmark trains and tests
    per file. `anomaly-free` files have no label column and are labelled 0, as the benchmark states.
    Bad rows raise (SKAB as published has none)."""
    plant = load_plant(packaged_plant_file("skab"))
    path = Path(path)

    def one(file: Path) -> pa.Table:
        unlabelled = "normal" if file.parent.name == "anomaly-free" else "error"
        return read_plant_csv(file, plant, unlabelled=unlabelled).table

    if path.is_file():
        return one(path)
    if not path.is_dir():
        raise TidewatchIOError(f"{path}: no such file or folder")
    files = sorted(path.rglob("*.csv"), key=lambda p: _natural_key(p.relative_to(path)))
    if not files:
        raise TidewatchIOError(f"{path}: no .csv files")
    return {f"{f.parent.name}/{f.stem}": one(f) for f in files}


def read_dataset(
    path: str | Path,
    *,
    source_format: Literal["auto", "parquet", "swat", "plant-csv"] = "auto",
    plant_file: str | Path | None = None,
    sensors: Sequence[str] | None = None,
    tz: str | None = None,
    on_error: OnError = "raise",
) -> ReadResult:
    """Any supported input as a canonical table: canonical Parquet (a file or a folder), a SWaT export, or
    a plant CSV. `auto`: .parquet or a folder is Parquet, .xlsx is SWaT, .csv is a plant CSV when a plant
    file is given and SWaT otherwise. Parquet is checked against `sensors`, else the plant file's sensors,
    else its own columns between `timestamp` and `label` are taken as the sensors."""
    path = Path(path)
    if not path.exists():
        raise TidewatchIOError(f"{path}: no such file or folder")
    if source_format == "auto":
        suffix = path.suffix.lower()
        if path.is_dir() or suffix in (".parquet", ".pq"):
            source_format = "parquet"
        elif suffix in (".xlsx", ".xlsm"):
            source_format = "swat"
        elif suffix in (".csv", ".txt"):
            source_format = "plant-csv" if plant_file else "swat"
        else:
            raise InputError(f"{path}: cannot tell the format from the name; give the source format")
    if source_format == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{path}: not a readable Parquet file or folder: {exc}") from exc
        if sensors is not None:
            sensors = list(sensors)
        elif plant_file:
            sensors = list(load_plant(plant_file).sensors.sensors)
        else:
            try:
                sensors = sensor_columns(table.schema)
            except ValueError as exc:
                raise SchemaError(f"{path}: {exc}") from exc
        return ReadResult(conform(table, sensors, source=str(path)), sources=[str(path)])
    if source_format == "swat":
        return read_swat(path, on_error=on_error, **({"tz": tz} if tz else {}))
    if source_format == "plant-csv":
        if not plant_file:
            raise ConfigError("a plant CSV needs its plant file (--plant-file)")
        return read_plant_csv(path, plant_file, tz=tz, on_error=on_error)
    raise ConfigError(f"unknown source format {source_format!r}")


def load_attack_list(path: str | Path | None = None, tz: str = SWAT_TIMEZONE) -> pa.Table:
    """The attack list (default: the official SWaT A1 list shipped with tidewatch) with `start` and `end`
    (inclusive, local times in `tz`) converted to UTC."""
    source = Path(path) if path else Path(str(resources.files("tidewatch") / "data" / "swat_a1_2015_attacks.csv"))
    try:
        table = pacsv.read_csv(source, convert_options=pacsv.ConvertOptions(
            column_types={"start": pa.string(), "end": pa.string(), "attack_points": pa.string()}))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{source}: not a readable attack list: {exc}") from exc
    missing = [c for c in ("attack_no", "start", "end") if c not in table.column_names]
    if missing:
        raise SchemaError(f"{source}: attack list lacks columns: {', '.join(missing)}")
    out = {}
    for column in ("start", "end"):
        text = pc.utf8_trim_whitespace(table[column])
        try:
            local = pc.strptime(text, format="%Y-%m-%d %H:%M:%S", unit="us")
        except pa.ArrowInvalid as exc:
            raise InputError(f"{source}: column {column!r}: times must look like 2015-12-28 10:29:14: {exc}") from exc
        out[column] = pc.assume_timezone(local, tz).cast(TIMESTAMP_TYPE)
    return table.set_column(table.schema.get_field_index("start"), "start", out["start"]).set_column(
        table.schema.get_field_index("end"), "end", out["end"])


# ------------------------------------------------------------------------------------------------
# reading files into raw columns
# ------------------------------------------------------------------------------------------------


@dataclass
class _Spec:
    """What a reader expects of a file."""

    plant: str
    sensors: list[str]
    time_column: str
    time_formats: tuple[str, ...]
    timezone: str
    label_column: str | None
    label_aliases: tuple[str, ...]
    ignore_columns: tuple[str, ...]
    separator: str
    kind: str
    label_required: bool = True
    unlabelled_value: int | None = None
    extra_labels: tuple[str, ...] = ()


@dataclass
class _Rejected:
    line: int
    column: str | None
    reason: str
    raw: str
    message: str


@dataclass
class _Raw:
    """A file's rows as read, before typing: columns (strings, or typed cells from XLSX) by name."""

    source: str
    columns: dict[str, pa.Array]
    lines: np.ndarray  # int64, the line (or sheet row) of each row
    raw_text: Callable[[np.ndarray], list[str]]  # row indices -> the rows as written, for the quarantine
    rejected: list[_Rejected]  # rows refused before typing (field count, encoding)
    blank_lines: int
    label_column: str | None  # the name the label column has in this file, if present
    extra_time_formats: tuple[str, ...] = ()


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "quarantine"):
        raise ConfigError(f"on_error must be 'raise' or 'quarantine', got {on_error!r}")


def _zone(name: str, source: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"{source}: unknown time zone {name!r}") from exc


def _split_header(line: str, sep: str) -> list[str]:
    import csv

    try:
        fields = next(csv.reader([line], delimiter=sep), [])
    except csv.Error:  # a carriage return inside the line: split it plainly, the names will not match
        fields = line.split(sep)
    return [f.strip() for f in fields]


def _match_header(names: list[str], spec: _Spec, source: str) -> tuple[dict[str, int], str | None]:
    """Checks a header (already stripped) against the spec: returns {column: position} for the columns
    used, and the label column's name in this file. Raises SchemaError naming what is missing/extra."""
    blanks = [i for i, n in enumerate(names) if n == ""]
    present = [n for n in names if n]
    duplicated = sorted({n for n in present if present.count(n) > 1})
    if duplicated:
        raise SchemaError(f"{source}: duplicated columns: {', '.join(duplicated)}")
    label_name = None
    for candidate in (spec.label_column, *spec.label_aliases) if spec.label_column else ():
        if candidate in names:
            label_name = candidate
            break
    required = [spec.time_column, *spec.sensors]
    missing = [n for n in required if n not in names]
    if spec.label_column and label_name is None and spec.label_required:
        missing.append(spec.label_column)
    if missing:
        raise SchemaError(
            f"{source}: not a {spec.kind}: missing columns: {', '.join(missing)}"
            f" (the header has {len(present)} columns: {', '.join(present[:8])}{', ...' if len(present) > 8 else ''})"
        )
    used = {spec.time_column, *spec.sensors, *spec.extra_labels}
    if label_name:
        used.add(label_name)
    ignorable = set(spec.ignore_columns) | set(spec.label_aliases) | ({spec.label_column} if spec.label_column else set())
    extra = [n for n in present if n not in used and n not in ignorable]
    if extra:
        raise SchemaError(
            f"{source}: unexpected columns for a {spec.kind}: {', '.join(extra)}"
            " (list them as columns to ignore if they are expected)"
        )
    missing_extra = [n for n in spec.extra_labels if n not in names]
    if missing_extra and spec.label_required:
        raise SchemaError(f"{source}: not a {spec.kind}: missing columns: {', '.join(missing_extra)}")
    # Unnamed columns at the end are trailing separators (their cells are checked to be empty); one in the
    # middle is a garbled header.
    inner = [i for i in blanks if any(names[i + 1:])]
    if inner:
        raise SchemaError(f"{source}: header has unnamed columns at positions {', '.join(str(i + 1) for i in inner)}")
    positions = {n: i for i, n in enumerate(names) if n in used}
    return positions, label_name


def _read_text(path: Path, spec: _Spec) -> _Raw:
    source = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise TidewatchIOError(f"{path}: no such file") from exc
    except OSError as exc:
        raise TidewatchIOError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if data.startswith(b"\xef\xbb\xbf"):  # Excel's UTF-8 byte order mark: blank it, keeping offsets
        data = b"   " + data[3:]
    if not data or data.isspace():
        raise SchemaError(f"{source}: empty file: no header, no rows (expected a {spec.kind})")

    rejected: list[_Rejected] = []
    data, bad_lines = _blank_undecodable_lines(data, source, rejected)

    # Header: the first line (of the first HEADER_SEARCH_LINES) naming the time column.
    head = data[: 1 << 20].split(b"\n", HEADER_SEARCH_LINES)[:HEADER_SEARCH_LINES]
    header_index, header = None, None
    best: list[str] | None = None
    for i, line_bytes in enumerate(head):
        if i + 1 in bad_lines:
            continue
        text = line_bytes.decode("utf-8", errors="replace").rstrip("\r")
        names = _split_header(text, spec.separator)
        if spec.time_column in names:
            if "\r" in text:
                raise InputError(f"{source}: line {i + 1}: a carriage return (\\r) inside the header line (only \\n "
                                 "or \\r\\n ends a line: a file with CR-only line ends?)")
            header_index, header = i, names
            break
        if best is None or _overlap(names, spec) > _overlap(best, spec):
            best = names
    if header is None:
        if bad_lines and min(bad_lines) <= HEADER_SEARCH_LINES:
            raise InputError(f"{source}: line {min(bad_lines)}: not UTF-8 text where the header should be")
        present = [n for n in (best or []) if n]
        missing = [n for n in (spec.time_column, *spec.sensors) if n not in present]
        raise SchemaError(
            f"{source}: not a {spec.kind}: missing columns: {', '.join(missing[:12])}"
            f"{f' and {len(missing) - 12} more' if len(missing) > 12 else ''}"
            f" (no header line with a {spec.time_column!r} column in the first {HEADER_SEARCH_LINES} lines)"
        )
    # Trailing separators give unnamed trailing columns: name them so pyarrow can read them.
    column_names = [n or f"_unnamed_{i}" for i, n in enumerate(header)]
    positions, label_name = _match_header(header, spec, source)
    unnamed = [column_names[i] for i, n in enumerate(header) if not n]
    first_data_line = header_index + 2  # 1-based line after the header
    # pyarrow reads the lines after the header only (so banner and header lines cannot upset it), from
    # this byte on; a header-only file (with or without a final newline) has no rows.
    body_start = sum(len(line) + 1 for line in head[: header_index + 1])

    invalid: list[tuple[int | None, int, str]] = []

    def on_invalid(row: Any) -> str:
        invalid.append((row.number, row.actual_columns, row.text))
        return "skip"

    def parse(use_threads: bool) -> pa.Table:
        invalid.clear()
        if body_start >= len(data):
            return pa.table({n: pa.array([], pa.string()) for n in column_names if n in positions or n in unnamed})
        return pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(data).slice(body_start)),
            read_options=pacsv.ReadOptions(column_names=column_names, use_threads=use_threads, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(
                delimiter=spec.separator, ignore_empty_lines=False, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in column_names},
                include_columns=[n for n in column_names if n in positions or n in unnamed],
                strings_can_be_null=False, quoted_strings_can_be_null=False, null_values=[]),
        )

    # One row per line is what pyarrow gives for all but two kinds of damage, which it does not report:
    # a lone carriage return ends a row inside a line, and a quote opening a value that does not close on
    # its line swallows the following lines. Both are rare, and cheap to rule out where the bytes that
    # cause them are absent; where present, rows are counted against lines, and if they do not match,
    # each damaged line is quarantined (malformed) and blanked, and the rest is read again.
    suspect = body_start < len(data) and (data.find(b"\r", body_start) >= 0 or data.find(b'"', body_start) >= 0)
    try:
        table: pa.Table | None = parse(use_threads=True)
    except pa.ArrowInvalid as exc:
        if not suspect:
            raise InputError(f"{source}: cannot parse as CSV: {exc}") from exc
        table = None
    if suspect:
        lines_in_body = _count_lines(data, body_start)
        if table is None or table.num_rows + len(invalid) != lines_in_body:
            damaged = _damaged_lines(data, body_start, first_data_line, header, spec.separator)
            for line, column, text, message, _, _ in damaged:
                rejected.append(_Rejected(line, column, "malformed", text, message))
            data = _blank_lines(data, [(start, end) for *_, start, end in damaged])
            bad_lines = bad_lines | {line for line, *_ in damaged}
            lines_in_body = _count_lines(data, body_start)  # one less if the last line, unterminated, is blanked
            try:
                table = parse(use_threads=True)
            except pa.ArrowInvalid as exc:
                raise InputError(f"{source}: cannot parse as CSV: {exc}") from exc
            if table.num_rows + len(invalid) != lines_in_body:  # not expected: refuse rather than misnumber
                raise InputError(f"{source}: cannot parse as CSV: {table.num_rows + len(invalid)} rows in "
                                 f"{lines_in_body} lines after the header")
    assert table is not None
    if invalid:  # row numbers of invalid rows are known only to a single-threaded read
        try:
            table = parse(use_threads=False)
        except pa.ArrowInvalid as exc:
            raise InputError(f"{source}: cannot parse as CSV: {exc}") from exc

    ends_with_newline = data.endswith(b"\n")
    total_rows = table.num_rows + len(invalid)
    last_line = first_data_line + total_rows - 1
    invalid_lines = set()
    blank = 0
    for number, actual, text in invalid:
        assert number is not None, "single-threaded read reports row numbers"
        number += first_data_line - 1  # pyarrow counts from the first line it reads
        invalid_lines.add(number)
        if number in bad_lines:
            continue  # already rejected (not UTF-8, or damaged) and blanked
        if not text.strip():
            blank += 1
            continue
        truncated = number == last_line and not ends_with_newline
        rejected.append(_Rejected(
            number, None, "field_count", text,
            f"expected {len(column_names)} fields, found {actual}"
            + (" (the file ends in the middle of this line: truncated?)" if truncated else ""),
        ))
    lines = np.arange(first_data_line, first_data_line + total_rows, dtype=np.int64)
    if invalid_lines:
        lines = lines[~np.isin(lines, np.fromiter(invalid_lines, dtype=np.int64))]

    # Rows with every field empty are blank lines (or lines blanked above: not UTF-8, or damaged): not readings.
    columns = {n: table[n].combine_chunks() for n in table.column_names}
    empty = np.ones(table.num_rows, dtype=bool)
    for array in columns.values():
        empty &= _np_bool(pc.equal(pc.utf8_length(array), 0))
    stray = np.zeros(table.num_rows, dtype=bool)  # a value under no header: the row is garbled
    for name in unnamed:
        has_value = _np_bool(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(columns.pop(name))), 0))
        stray |= has_value & ~stray
    line_index = _LineIndex(data)
    for i in np.flatnonzero(stray):
        rejected.append(_Rejected(int(lines[i]), None, "field_count", line_index.line(int(lines[i])),
                                  f"a value beyond the {len(header) - len(unnamed)} named columns"))
    keep = ~empty & ~stray
    if not keep.all():
        blanked = lines[empty]
        blank += int((~np.isin(blanked, np.fromiter(bad_lines, dtype=np.int64))).sum()) if bad_lines else int(empty.sum())
        mask = pa.array(keep)
        columns = {n: a.filter(mask) for n, a in columns.items()}
        lines = lines[keep]

    return _Raw(
        source=source,
        columns=columns,
        lines=lines,
        raw_text=lambda rows: [line_index.line(int(n)) for n in lines[rows]],
        rejected=rejected,
        blank_lines=blank,
        label_column=label_name,
    )


def _overlap(names: list[str], spec: _Spec) -> int:
    wanted = {spec.time_column, *spec.sensors}
    return sum(1 for n in names if n in wanted)


class _LineIndex:
    """Finds the text of a line by number, computing line offsets only when first asked."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._starts: np.ndarray | None = None

    def line(self, number: int) -> str:
        if self._starts is None:
            newlines = np.flatnonzero(np.frombuffer(self._data, dtype=np.uint8) == 10)
            self._starts = np.concatenate(([0], newlines + 1))
        start = int(self._starts[number - 1])
        end = int(self._starts[number]) - 1 if number < len(self._starts) else len(self._data)
        return self._data[start:end].decode("utf-8", errors="backslashreplace").rstrip("\r")


def _count_lines(data: bytes, start: int) -> int:
    """Lines from byte `start` on (a last line without a newline counts)."""
    if start >= len(data):
        return 0
    return data.count(b"\n", start) + (0 if data.endswith(b"\n") else 1)


def _damaged_lines(data: bytes, body_start: int, first_line: int, header: list[str],
                   sep: str) -> list[tuple[int, str | None, str, str, int, int]]:
    """Lines (from byte `body_start`, numbered from `first_line`) that pyarrow would not read as one row:
    those holding a lone carriage return (not followed by a newline), and those where a quote opens a value
    that does not close on the line. Each as (line, column, text, message, start byte, end byte)."""
    body = np.frombuffer(data, dtype=np.uint8)[body_start:]
    newlines = np.flatnonzero(body == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(body)]))
    found: dict[int, tuple[str, int]] = {}  # line index -> (kind, field or byte offset)
    carriage = np.flatnonzero(body == 13)
    if len(carriage):
        after = carriage + 1
        lone = carriage[(after < len(body)) & (body[np.minimum(after, len(body) - 1)] != 10)]
        for position, k in zip(lone, np.searchsorted(starts, lone, side="right") - 1):
            found.setdefault(int(k), ("cr", int(position - starts[k])))
    quotes = np.flatnonzero(body == 34)
    if len(quotes):
        separator = sep.encode("utf-8")
        for k in np.unique(np.searchsorted(starts, quotes, side="right") - 1):
            if int(k) not in found:
                field_index = _unclosed_quote(body[starts[k]:ends[k]].tobytes(), separator)
                if field_index is not None:
                    found[int(k)] = ("quote", field_index)

    def column(index: int) -> str | None:
        return header[index] if index < len(header) and header[index] else None

    out = []
    for k in sorted(found):
        kind, where = found[k]
        start, end = body_start + int(starts[k]), body_start + int(ends[k])
        raw = data[start:end]
        text = (raw[:-1] if raw.endswith(b"\r") else raw).decode("utf-8", errors="backslashreplace")
        if kind == "cr":
            out.append((first_line + k, column(raw[:where].count(sep.encode("utf-8"))), text,
                        f"a carriage return (\\r) inside the line, at byte {where + 1}: a damaged line "
                        "(only \\n or \\r\\n ends a line)", start, end))
        else:
            out.append((first_line + k, column(where), text,
                        "a quote (\") opens a value that does not close on this line (the values of a line "
                        "cannot span lines)", start, end))
    return out


def _unclosed_quote(line: bytes, sep: bytes) -> int | None:
    """The field (0-based) where a quoted value opens without closing on `line`, by pyarrow's rules: a quote
    opens a value only at the start of a field, `""` inside it is a quote, and after the closing quote
    the field goes on unquoted. None if every quoted value closes."""
    i, n, field_index = 0, len(line), 0
    while True:
        if i < n and line[i] == 34:
            i += 1
            while True:
                j = line.find(b'"', i)
                if j < 0:
                    return field_index
                if j + 1 < n and line[j + 1] == 34:
                    i = j + 2
                    continue
                i = j + 1
                break
        j = line.find(sep, i)
        if j < 0:
            return None
        i, field_index = j + 1, field_index + 1


def _blank_lines(data: bytes, spans: Sequence[tuple[int, int]]) -> bytes:
    """`data` with the bytes of each (start, end) span removed (the line breaks stay, so lines keep their
    numbers)."""
    if not spans:
        return data
    pieces, position = [], 0
    for start, end in sorted(spans):
        pieces.append(data[position:start])
        position = end
    pieces.append(data[position:])
    return b"".join(pieces)


def _blank_undecodable_lines(data: bytes, source: str, rejected: list[_Rejected]) -> tuple[bytes, set[int]]:
    """Lines that are not UTF-8 are rejected (reason `encoding`) and blanked in the buffer, keeping line
    numbers, so that the CSV parser sees text only."""
    try:
        data.decode("utf-8")
        return data, set()
    except UnicodeDecodeError:
        pass
    pieces: list[bytes] = []
    bad: set[int] = set()
    position = 0
    line_number = 1  # line number at `position`
    while True:
        try:
            data[position:].decode("utf-8")
            pieces.append(data[position:])
            break
        except UnicodeDecodeError as exc:
            at = position + exc.start
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            end = len(data) if end < 0 else end
            line_number += data.count(b"\n", position, start)
            text = data[start:end].decode("utf-8", errors="backslashreplace").rstrip("\r")
            rejected.append(_Rejected(
                line_number, None, "encoding", text,
                f"not UTF-8 text (byte 0x{data[at]:02x} at character {at - start + 1})"))
            bad.add(line_number)
            pieces.append(data[position:start])
            position = end  # keep the newline itself, so numbering is unchanged
    return b"".join(pieces), bad


def _read_xlsx(path: Path, spec: _Spec, sheet: int | str) -> _Raw:
    from python_calamine import CalamineWorkbook

    source = str(path)
    if not path.exists():
        raise TidewatchIOError(f"{path}: no such file")
    try:
        workbook = CalamineWorkbook.from_path(source)
        worksheet = workbook.get_sheet_by_index(sheet) if isinstance(sheet, int) else workbook.get_sheet_by_name(sheet)
        rows = worksheet.to_python(skip_empty_area=False)
    except Exception as exc:  # calamine raises its own types for zip, XML and sheet errors
        raise InputError(f"{source}: cannot read as an XLSX workbook: {type(exc).__name__}: {exc}") from exc
    if not rows or not any(_cell_text(c) for row in rows for c in row):
        raise SchemaError(f"{source}: empty sheet: no header, no rows (expected a {spec.kind})")

    header_index, header, best = None, None, None
    for i, row in enumerate(rows[:HEADER_SEARCH_LINES]):
        names = [_cell_text(c).strip() for c in row]
        if spec.time_column in names:
            header_index, header = i, names
            break
        if best is None or _overlap(names, spec) > _overlap(best, spec):
            best = names
    if header is None:
        missing = [n for n in (spec.time_column, *spec.sensors) if n not in (best or [])]
        raise SchemaError(
            f"{source}: not a {spec.kind}: missing columns: {', '.join(missing[:12])}"
            f"{f' and {len(missing) - 12} more' if len(missing) > 12 else ''}"
            f" (no header row with a {spec.time_column!r} column in the first {HEADER_SEARCH_LINES} rows)"
        )
    positions, label_name = _match_header(header, spec, source)
    named = {i for i, n in enumerate(header) if n}

    data_rows = rows[header_index + 1:]
    first_row = header_index + 2
    rejected: list[_Rejected] = []
    kept: list[list[Any]] = []
    lines: list[int] = []
    blank = 0
    unnamed = [i for i in range(max((len(r) for r in rows), default=0)) if i not in named]
    for offset, row in enumerate(data_rows):
        if row.count("") + row.count(None) == len(row):  # calamine gives "" for an empty cell
            blank += 1
            continue
        stray = [i for i in unnamed if i < len(row) and _cell_text(row[i])]
        if stray:
            rejected.append(_Rejected(
                first_row + offset, None, "field_count", _row_text(row),
                f"cells beyond the header's columns (column {stray[0] + 1})"))
            continue
        kept.append(row)
        lines.append(first_row + offset)

    columns: dict[str, pa.Array] = {}
    transposed = list(zip(*kept)) if kept else [()] * len(header)
    for name, position in positions.items():
        cells = transposed[position] if position < len(transposed) else ()
        columns[name] = _xlsx_column(list(cells), is_time=name == spec.time_column)
    line_array = np.asarray(lines, dtype=np.int64)
    return _Raw(
        source=source,
        columns=columns,
        lines=line_array,
        raw_text=lambda idx: [_row_text(kept[int(i)]) for i in idx],
        rejected=rejected,
        blank_lines=blank,
        label_column=label_name,
        extra_time_formats=("iso",),  # date-typed cells arrive as datetimes, written out as ISO if mixed
    )


def _cell_text(cell: Any) -> str:
    if cell is None:
        return ""
    return cell if isinstance(cell, str) else str(cell)


def _row_text(row: Sequence[Any]) -> str:
    return ",".join(c.isoformat(sep=" ") if isinstance(c, dt.datetime) else _cell_text(c) for c in row)


def _xlsx_column(cells: list[Any], *, is_time: bool) -> pa.Array:
    """Typed cells as an Arrow array: all numbers -> float64, all date-times -> timestamp, else strings."""
    if not cells:
        return pa.array([], type=pa.string())
    # The common cases are uniform columns: let Arrow convert them, and refuse anything mixed.
    for kind in (pa.timestamp("us"), pa.string()) if is_time else (pa.float64(), pa.string()):
        try:
            return pa.array(cells, type=kind, from_pandas=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            continue
    out = []
    for c in cells:
        if isinstance(c, dt.datetime):
            out.append(c.isoformat())
        elif isinstance(c, float) and c.is_integer() and not is_time:
            out.append(repr(c))
        else:
            out.append(_cell_text(c))
    return pa.array(out, type=pa.string())


# ------------------------------------------------------------------------------------------------
# typing and checking the columns
# ------------------------------------------------------------------------------------------------


def _np_bool(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def _parse_numbers(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, problem code per row) for a column of numbers as text or float64."""
    n = len(array)
    codes = np.zeros(n, dtype=np.int8)
    if pa.types.is_floating(array.type) or pa.types.is_integer(array.type):
        values = np.asarray(array.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    else:
        try:
            values = array.cast(pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            text = pc.utf8_trim_whitespace(array)
            try:
                values = text.cast(pa.float64()).to_numpy(zero_copy_only=False)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                empty = _np_bool(pc.equal(pc.utf8_length(text), 0))
                wellformed = _np_bool(pc.match_substring_regex(text, _NUMBER_RE))
                codes[~wellformed] = _MALFORMED
                codes[empty] = _MISSING
                candidates = pc.if_else(pa.array(wellformed), text, pa.scalar(None, pa.string()))
                try:
                    values = candidates.cast(pa.float64()).to_numpy(zero_copy_only=False)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    values = np.full(n, np.nan)  # the pattern let through what Arrow refuses: check each
                    for i, s in enumerate(candidates.to_pylist()):
                        if s is None:
                            continue
                        try:
                            values[i] = float(s)
                        except ValueError:
                            codes[i] = _MALFORMED
        values = np.asarray(values, dtype=np.float64)
    unset = codes == _OK
    nulls = np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    codes[unset & nulls] = _MISSING
    unset = codes == _OK
    codes[unset & np.isnan(values)] = _NAN
    codes[unset & np.isinf(values)] = _INFINITE
    return values, codes


def _parse_times(array: pa.Array, formats: Sequence[str], tz: str) -> tuple[np.ndarray, np.ndarray]:
    """(UTC microseconds since the epoch, problem code) for local times in `tz` (or times with offsets)."""
    n = len(array)
    codes = np.zeros(n, dtype=np.int8)
    utc = np.zeros(n, dtype=np.int64)
    aware = np.zeros(n, dtype=bool)  # given with an explicit offset: already UTC
    if pa.types.is_timestamp(array.type):
        naive = array.cast(pa.timestamp("us")) if array.type.tz is None else None
        if naive is None:
            utc = np.asarray(array.cast(TIMESTAMP_TYPE).cast(pa.int64()).to_numpy(zero_copy_only=False))
            return utc, codes
        text = None
    else:
        text = pc.utf8_trim_whitespace(array)
        naive = None
        strp = [f for f in formats if f != "iso"]
        for fmt in strp:
            parsed = _without_rollovers(text, pc.strptime(text, format=fmt, unit="us", error_is_null=True), fmt)
            naive = parsed if naive is None else pc.coalesce(naive, parsed)
        if "iso" in formats and (naive is None or naive.null_count):
            try:
                iso = text.cast(pa.timestamp("us"))
                naive = iso if naive is None else pc.coalesce(naive, iso)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass  # some values are not plain ISO: the per-value pass below sorts them out
        if naive is None:
            naive = pa.nulls(n, pa.timestamp("us"))
        if naive.null_count:
            # Per value, only where the columnar parsers failed: ISO with offsets, or really bad values.
            values = np.array(naive.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
            missing = _np_bool(naive.is_null())
            strings = text.to_pylist()
            for i in np.flatnonzero(missing):
                value = strings[i]
                if value is None or value == "":
                    codes[i] = _MISSING
                    continue
                parsed = _parse_time_slowly(value, formats)
                if parsed is None:
                    codes[i] = _MALFORMED
                elif parsed.tzinfo is not None:
                    utc[i] = _to_micros(parsed.astimezone(dt.timezone.utc).replace(tzinfo=None))
                    aware[i] = True
                else:
                    values[i] = _to_micros(parsed)
            naive = pa.array(values, type=pa.int64()).cast(pa.timestamp("us"))
    local_mask = (codes == _OK) & ~aware
    if local_mask.any():
        if tz == "UTC":
            local_utc = np.asarray(naive.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False))
        else:
            try:
                local_utc = np.asarray(
                    pc.assume_timezone(naive, tz, ambiguous="raise", nonexistent="raise")
                    .cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False))
            except pa.ArrowInvalid:
                local_utc = _localize_slowly(naive, tz, codes)
        utc[local_mask] = local_utc[local_mask]
    return utc, codes


# strptime directives as regular expressions, to find the day of the month as written (_without_rollovers).
_DIRECTIVE_RE = {
    "d": r"\s*(?P<day>[0-9]{1,2})", "e": r"\s*(?P<day>[0-9]{1,2})",
    "m": r"\s*[0-9]{1,2}", "H": r"\s*[0-9]{1,2}", "I": r"\s*[0-9]{1,2}", "M": r"\s*[0-9]{1,2}",
    "S": r"\s*[0-9]{1,2}", "y": r"\s*[0-9]{1,2}", "Y": r"\s*[+-]?[0-9]{1,4}", "j": r"\s*[0-9]{1,3}",
    "f": r"[0-9]+", "p": r"\s*[AaPp][Mm]", "b": r"\s*[A-Za-z]+", "B": r"\s*[A-Za-z]+", "h": r"\s*[A-Za-z]+",
    "a": r"\s*[A-Za-z]+", "A": r"\s*[A-Za-z]+", "z": r"\s*(?:Z|[+-][0-9]{2}:?[0-9]{2})", "%": "%",
}


def _day_pattern(fmt: str) -> str | None:
    """A regular expression for the start of values written in strptime format `fmt`, up to the day of the
    month, captured as `day`; None if the format has no day or, before it, a directive not listed above."""
    parts, i = ["^"], 0
    while i < len(fmt):
        c = fmt[i]
        if c == "%" and i + 1 < len(fmt):
            directive = fmt[i + 1]
            if directive not in _DIRECTIVE_RE:
                return None
            parts.append(_DIRECTIVE_RE[directive])
            if directive in "de":
                return "".join(parts)
            i += 2
        else:
            parts.append(r"\s*" if c.isspace() else re.escape(c))
            i += 1
    return None


def _without_rollovers(text: pa.Array, parsed: pa.Array, fmt: str) -> pa.Array:
    """`parsed` (pc.strptime of `text` with `fmt`) made null where the written date does not exist.

    pyarrow's strptime takes a day beyond the end of its month into the next month (31/02/2015 is
    3/3/2015); the day it gives is then 1 to 3, not the one written. Those values are made null here,
    so the per-value pass (Python's strptime, which refuses them) sets them aside as malformed. Only
    values that fall on the first three days of a month are looked at: columnar, and cheap."""
    if "%d" not in fmt and "%e" not in fmt:
        return parsed
    day = pc.day(parsed)
    candidates = np.flatnonzero(_np_bool(pc.less_equal(day, 3)))
    if not len(candidates):
        return parsed
    indices = pa.array(candidates)
    pattern = _day_pattern(fmt)
    suspect = candidates  # where the written day is unknown, the per-value pass judges
    if pattern is not None:
        try:
            written = pc.struct_field(pc.extract_regex(text.take(indices), pattern), "day").cast(pa.int64())
            suspect = candidates[~_np_bool(pc.equal(written, day.take(indices).cast(pa.int64())))]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    if not len(suspect):
        return parsed
    drop = np.zeros(len(parsed), dtype=bool)
    drop[suspect] = True
    return pc.if_else(pa.array(drop), pa.scalar(None, parsed.type), parsed)


_EPOCH = dt.datetime(1970, 1, 1)


def _to_micros(naive: dt.datetime) -> int:
    return (naive - _EPOCH) // dt.timedelta(microseconds=1)


def _parse_time_slowly(value: str, formats: Sequence[str]) -> dt.datetime | None:
    for fmt in formats:
        try:
            if fmt == "iso":
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
            return dt.datetime.strptime(value, fmt)
        except ValueError:
            continue
    return None


def _localize_slowly(naive: pa.Array, tz: str, codes: np.ndarray) -> np.ndarray:
    """Per-value conversion to UTC, marking local times that a clock change skips or repeats."""
    zone = ZoneInfo(tz)
    out = np.zeros(len(naive), dtype=np.int64)
    for i, value in enumerate(naive.to_pylist()):
        if value is None or codes[i] != _OK:
            continue
        early = value.replace(tzinfo=zone, fold=0)
        late = value.replace(tzinfo=zone, fold=1)
        if early.utcoffset() != late.utcoffset():
            # A skipped time does not survive the round trip through UTC; a repeated one does, twice.
            back = early.astimezone(dt.timezone.utc).astimezone(zone).replace(tzinfo=None)
            codes[i] = _NONEXISTENT if back != value else _AMBIGUOUS
            continue
        out[i] = _to_micros(early.astimezone(dt.timezone.utc).replace(tzinfo=None))
    return out


def _parse_labels(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int32 label, problem code) from 0/1 numbers or words (Normal, Attack, `A ttack`, true/false)."""
    if not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    normal = pc.utf8_lower(pc.replace_substring_regex(array, r"\s+", ""))
    words = pa.array(list(LABEL_WORDS))
    index = pc.index_in(normal, value_set=words)
    values = pc.take(pa.array(list(LABEL_WORDS.values()), type=pa.int32()), index)
    codes = np.zeros(len(array), dtype=np.int8)
    unknown = _np_bool(index.is_null())
    empty = _np_bool(pc.equal(pc.utf8_length(normal), 0)) | _np_bool(normal.is_null())
    codes[unknown] = _MALFORMED
    codes[empty] = _MISSING
    return np.asarray(values.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int32), codes


def _assemble(raw: _Raw, spec: _Spec, *, on_error: OnError, check_order: bool) -> ReadResult:
    """Types the raw columns, sets bad rows aside (or raises for the first), builds the canonical table."""
    n = len(raw.lines)
    first_code = np.zeros(n, dtype=np.int8)
    first_column = np.full(n, -1, dtype=np.int32)
    checked: list[str] = []  # column names in the order problems are looked for (file order)

    def note(codes: np.ndarray, column: str) -> None:
        fresh = (codes != _OK) & (first_code == _OK)
        first_code[fresh] = codes[fresh]
        first_column[fresh] = len(checked)
        checked.append(column)

    formats = tuple(spec.time_formats) + tuple(f for f in raw.extra_time_formats if f not in spec.time_formats)
    utc, codes = _parse_times(raw.columns[spec.time_column], formats, spec.timezone)
    note(codes, spec.time_column)
    sensor_values = {}
    for name in spec.sensors:
        values, codes = _parse_numbers(raw.columns[name])
        sensor_values[name] = values
        note(codes, name)
    if raw.label_column is not None:
        labels, codes = _parse_labels(raw.columns[raw.label_column])
        note(codes, raw.label_column)
        label_array = pa.array(labels, type=pa.int32())
    elif spec.unlabelled_value is not None:
        label_array = pa.array(np.full(n, spec.unlabelled_value, dtype=np.int32))
    else:
        label_array = pa.nulls(n, pa.int32())
    extra_arrays = {}
    for name in spec.extra_labels:
        if name not in raw.columns:  # an unlabelled file: like its label
            extra_arrays[name] = (pa.nulls(n, pa.int32()) if spec.unlabelled_value is None
                                  else pa.array(np.full(n, spec.unlabelled_value, dtype=np.int32)))
            continue
        values, codes = _parse_labels(raw.columns[name])
        note(codes, name)
        extra_arrays[name] = pa.array(values, type=pa.int32())

    bad = first_code != _OK
    rejects = list(raw.rejected)
    value_columns = {spec.time_column: raw.columns[spec.time_column]}
    for i in np.flatnonzero(bad):
        column = checked[first_column[i]]
        reason = _REASONS[int(first_code[i])]
        cell = raw.columns[column][int(i)].as_py()
        rejects.append(_Rejected(int(raw.lines[i]), column, reason, "",
                                 _EXPLAIN[reason].format(value=cell, tz=spec.timezone)))
    if rejects and on_error == "raise":
        _raise_first(rejects, raw, bad, spec, count=len(rejects))

    # Time order among the rows that are otherwise good: keep the first row of each time.
    if check_order and n:
        good = ~bad
        order_code = np.zeros(n, dtype=np.int8)
        times = np.where(good, utc, np.iinfo(np.int64).min)
        running = np.maximum.accumulate(times)
        previous = np.concatenate(([np.iinfo(np.int64).min], running[:-1]))
        duplicate = good & (times == previous)
        late = good & (times < previous)
        if duplicate.any() or late.any():
            for i in np.flatnonzero(duplicate | late):
                earlier = int(np.flatnonzero(good[:i] & (utc[:i] == utc[i]))[0]) if duplicate[i] else int(
                    np.argmax(times[:i]))
                kind = "duplicate_timestamp" if duplicate[i] else "out_of_order"
                when = value_columns[spec.time_column][int(i)].as_py()
                message = (f"time {when!s} repeats line {raw.lines[earlier]}" if duplicate[i]
                           else f"time {when!s} is earlier than line {raw.lines[earlier]}'s")
                rejects.append(_Rejected(int(raw.lines[i]), spec.time_column, kind, "", message))
                order_code[i] = 1
            if on_error == "raise":
                _raise_first(rejects, raw, bad | (order_code != 0), spec, count=len(rejects))
            bad = bad | (order_code != 0)

    keep = ~bad
    keep_mask = pa.array(keep)
    arrays: list[pa.Array] = [
        pa.repeat(pa.scalar(spec.plant, pa.string()), int(keep.sum())),
        pa.array(utc[keep], type=pa.int64()).cast(TIMESTAMP_TYPE),
        *[pa.array(sensor_values[name][keep], type=pa.float64()) for name in spec.sensors],
        label_array.filter(keep_mask),
        *[extra_arrays[name].filter(keep_mask) for name in spec.extra_labels],
    ]
    schema = canonical_schema(spec.sensors, extra_labels=spec.extra_labels)
    table = pa.Table.from_arrays(arrays, schema=schema)
    return ReadResult(table=table, quarantined=_quarantine_table(rejects, raw, bad), blank_lines=raw.blank_lines,
                      sources=[raw.source])


def _fill_raw(rejects: list[_Rejected], raw: _Raw, bad: np.ndarray) -> None:
    """Fills in the raw text of rejected typed rows (structural rejects already carry theirs)."""
    pending = [r for r in rejects if r.raw == "" and r.reason not in ("field_count", "encoding")]
    if not pending:
        return
    row_of_line = {int(line): i for i, line in zip(np.flatnonzero(bad), raw.lines[bad])}
    rows = np.asarray([row_of_line[r.line] for r in pending], dtype=np.int64)
    for reject, text in zip(pending, raw.raw_text(rows)):
        reject.raw = text


def _raise_first(rejects: list[_Rejected], raw: _Raw, bad: np.ndarray, spec: _Spec, count: int) -> None:
    first = min(rejects, key=lambda r: r.line)
    where = f"line {first.line}" if not raw.source.lower().endswith((".xlsx", ".xlsm")) else f"row {first.line}"
    column = f", column {first.column!r}" if first.column else ""
    more = f" ({count - 1} more bad rows; read with on_error='quarantine' to set them aside)" if count > 1 else ""
    raise InputError(f"{raw.source}: {where}{column}: {first.reason}: {first.message}{more}")


def _quarantine_table(rejects: list[_Rejected], raw: _Raw, bad: np.ndarray) -> pa.Table:
    if not rejects:
        return QUARANTINE_SCHEMA.empty_table()
    _fill_raw(rejects, raw, bad)
    rejects = sorted(rejects, key=lambda r: r.line)
    return pa.Table.from_pydict(
        {
            "source_file": [raw.source] * len(rejects),
            "line": [r.line for r in rejects],
            "column": [r.column for r in rejects],
            "reason": [r.reason for r in rejects],
            "raw": [r.raw for r in rejects],
        },
        schema=QUARANTINE_SCHEMA,
    )


def _label_from_attack_list(table: pa.Table, attack_list: str | Path | None) -> pa.Table:
    attacks = load_attack_list(attack_list)
    starts = np.asarray(attacks["start"].cast(pa.int64()).to_numpy(), dtype=np.int64)
    ends = np.asarray(attacks["end"].cast(pa.int64()).to_numpy(), dtype=np.int64)
    order = np.argsort(starts)
    starts, ends = starts[order], ends[order]
    # Merge overlapping attacks so that a binary search over starts finds the covering interval.
    merged_starts, merged_ends = [], []
    for s, e in zip(starts, ends):
        if merged_ends and s <= merged_ends[-1]:
            merged_ends[-1] = max(merged_ends[-1], e)
        else:
            merged_starts.append(s)
            merged_ends.append(e)
    times = np.asarray(table[TIMESTAMP].cast(pa.int64()).to_numpy(), dtype=np.int64)
    index = np.searchsorted(np.asarray(merged_starts, dtype=np.int64), times, side="right") - 1
    inside = (index >= 0) & (times <= np.asarray(merged_ends, dtype=np.int64)[np.maximum(index, 0)])
    labels = pa.array(inside.astype(np.int32))
    return table.set_column(table.schema.get_field_index(LABEL), pa.field(LABEL, pa.int32()), labels)


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


