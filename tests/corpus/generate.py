"""Generates the malformed-input corpus for tests/test_bad_input.py, each case with the outcome the reading
path must give. Deterministic for a seed; only this script is committed, the cases are written at test time.

Targets, and what reads them:
- `swat`: SWaT A1 CSV exports (`readers.read_swat`);
- `skab`: SKAB-shaped plant CSVs (`readers.read_plant_csv` with the packaged skab plant file);
- `parquet`: canonical Parquet (`readers.read_dataset`, then the Detector for rows that load);
- `arrow`: record batches for the native kernels (`sensor_matrix`, `Detector.score`);
- `kafka`: messages of the `ics-sensor-data` topic (Spark: `spark.kafka` parsing, `validate`, `split_duplicates`);
- `landing-csv`, `landing-jsonl`: replayer landing files as the streaming job reads them (Spark).

Outcomes: a TidewatchError subclass whose message names the file (and the columns at fault), or rows that
add up: every data line is kept (with exactly the values written), quarantined with the expected line,
column and reason, or counted as blank. `lenient` cases (random truncations, bit flips, garbage) only
require that: a TidewatchError or rows that add up. `known_bug` marks cases a current bug breaks (see
tests/test_bad_input.py, where they run as strict xfails until fixed).

    python tests/corpus/generate.py OUT_DIR [--seed N] [--scale N]   # writes the cases and OUT_DIR/manifest.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import io
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
from fixtures.swat_files import raw_headers, swat_time  # noqa: E402

SINGAPORE = dt.timedelta(hours=8)  # SWaT's clock (no daylight saving)
EPOCH = dt.datetime(1970, 1, 1)
UTC_TYPE = pa.timestamp("us", tz="UTC")

# Known bugs that some cases run into (reported, not fixed here). Keys are used in test ids.
KNOWN_BUGS: dict[str, str] = {}


# ------------------------------------------------------------------------------------------------
# shared data
# ------------------------------------------------------------------------------------------------


def swat_sensors() -> list[str]:
    return [h.strip() for h in raw_headers()[1:-1]]


SKAB_SENSORS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
                "Voltage", "Volume Flow RateRMS"]


def micros(naive_utc: dt.datetime) -> int:
    return (naive_utc - EPOCH) // dt.timedelta(microseconds=1)


def iso_utc(us: int) -> str:
    return (EPOCH + dt.timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Cell texts by the reason the file readers give them (read_swat / read_plant_csv).
MISSING_TEXTS = ["", " ", "   "]
MALFORMED_TEXTS = ["abc", "1.2.3", "--1", "1e", "e5", "0x1A", "1_000", "12°", "１２", "١٢", "1d", "2f", "0x1p3",
                   "TRUE", "null", "None", "N/A", "#VALUE!", "1 2", "+-1", ".", "-", "e", "1e+", "∞", "\x00",
                   "1\x002", "½", "12abc", "$5", "5%"]
NAN_TEXTS = ["NaN", "nan", "NAN", "-nan", "+nan"]
INFINITE_TEXTS = ["inf", "-inf", "+inf", "Infinity", "-Infinity", "INF", "1e309", "-1e309", "1e400", "9" * 400]
ACCEPTED_TEXTS = {"1e308": 1e308, "-1e308": -1e308, "4.9e-324": 5e-324, "1e-400": 0.0, "+3": 3.0, ".5": 0.5,
                  "5.": 5.0, " 7.25 ": 7.25, "0": 0.0, "-0": -0.0, "1E3": 1000.0, "00012": 12.0,
                  "2.5e+2": 250.0, '"42"': 42.0, "0." + "0" * 400 + "1": 0.0, "1" + "0" * 300: 1e300}

# The same for the Spark path (spark.validate): whitespace trimmed to empty is missing; Java syntax aside.
SPARK_MISSING = ["", " ", "   "]
SPARK_MALFORMED = ["abc", "1.2.3", "--1", "1e", "e5", "0x1A", "1_000", "12°", "１２", "١٢", "TRUE", "null", "N/A",
                   "1 2", "+-1", ".", "-", "e", "1e+", "∞", "\x00", "½", "-nan", "+nan", "\t", "1,5", "12abc"]
SPARK_NAN = ["NaN", "nan", "NAN"]
SPARK_INFINITE = ["inf", "-inf", "+inf", "Infinity", "-Infinity", "INF", "infinity", "1e309", "-1e309", "9" * 400]
SPARK_ACCEPTED = {"1e308": 1e308, "4.9e-324": 5e-324, "1e-400": 0.0, "+3": 3.0, ".5": 0.5, "5.": 5.0,
                  " 7.25 ": 7.25, "-0": -0.0, "1E3": 1000.0, "00012": 12.0, "2.5e+2": 250.0}
SPARK_JAVA_NUMBERS = ["1d", "2f", "3D", "4F", "0x1p3", "0x1.8p1"]
SPARK_BAD_TIMES = ["garbage", "31/02/2015 10:00:00 AM", "2015-02-30T00:00:00Z", "28/12/2015 13:00:00 PM",
                   "2015-12-28T25:00:00Z", "0", "1451606400", "NaN", "2015/12/28 10:00:00", "", " "]
SPARK_LENIENT_TIMES = ["2015", "2015-12", "2015-12-2", "12345", "2015-12-28T10", "10:00:00", "T10:00",
                       "99999-01-01", "-2015-01-01"]


# ------------------------------------------------------------------------------------------------
# text files (SWaT, SKAB)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextFormat:
    target: str
    header: tuple[str, ...]  # as written
    names: tuple[str, ...]  # as the reader names them (stripped)
    time_column: str
    sensors: tuple[str, ...]
    label_columns: tuple[str, ...]
    separator: str

    def time_text(self, utc_us: int) -> str:
        when = EPOCH + dt.timedelta(microseconds=utc_us)
        if self.target == "swat":
            return swat_time(when + SINGAPORE)
        return when.strftime("%Y-%m-%d %H:%M:%S")

    def label_text(self, value: int, rng: random.Random) -> str:
        if self.target == "swat":
            return "Normal" if value == 0 else rng.choice(["Attack", "A ttack"])
        return (["0.0", "1.0"] if rng.random() < 0.8 else ["0", "1"])[value]


def text_formats() -> dict[str, TextFormat]:
    swat_header = tuple(raw_headers())
    swat = TextFormat("swat", swat_header, tuple(h.strip() for h in swat_header), "Timestamp",
                      tuple(swat_sensors()), ("Normal/Attack",), ",")
    skab_header = ("datetime", *SKAB_SENSORS, "anomaly", "changepoint")
    skab = TextFormat("skab", skab_header, skab_header, "datetime", tuple(SKAB_SENSORS),
                      ("anomaly", "changepoint"), ";")
    return {"swat": swat, "skab": skab}


@dataclass
class Truth:
    """A row as the reader must return it: UTC microseconds, sensor values in sensor order, labels."""

    time_us: int
    values: list[float]
    labels: list[int]


@dataclass
class Line:
    cells: list[str | bytes] | None  # None: `raw` is the line as written
    raw: bytes = b""
    outcome: tuple = ("keep",)  # ("keep",) | ("quarantine", column, reason) | ("quarantine_any",) | ("blank",)
    truth: Truth | None = None


@dataclass
class TextCase:
    name: str
    kind: str
    target: str
    path: Path
    data_lines: int  # physical lines after the header (blank ones included)
    error: tuple[str, ...] | None = None  # exception class names, one of which must be raised
    fragments: tuple[str, ...] = ()  # text the error message must hold (the file name is always checked)
    quarantine: dict[int, tuple] = field(default_factory=dict)  # line -> (column, reason), or ("any",)
    blank: int = 0
    rows: list[Truth] = field(default_factory=list)
    raise_fragments: tuple[str, ...] = ()  # extra text the on_error="raise" message must hold
    lenient: bool = False
    known_bug: str | None = None
    header_line: int = 1

    @property
    def expected_rows(self) -> int:
        return len(self.rows)


class Draft:
    """A text file being built: header cells, data lines with their expected outcome, layout options."""

    def __init__(self, fmt: TextFormat, rng: random.Random, n_rows: int) -> None:
        self.fmt = fmt
        self.rng = rng
        self.header: list[str] = list(fmt.header)
        self.names: list[str] = list(fmt.names)
        self.lines: list[Line] = []
        self.banner: list[bytes] = []
        self.newline = b"\n"
        self.final_newline = True
        self.bom = False
        self.header_suffix = ""  # e.g. a trailing separator
        self.raw_override: bytes | None = None
        self.error: tuple[str, ...] | None = None
        self.fragments: tuple[str, ...] = ()
        self.raise_fragments: tuple[str, ...] = ()
        self.lenient = False
        self.known_bug: str | None = None
        self.sep = fmt.separator
        year = 2015 if fmt.target == "swat" else 2020
        start = dt.datetime(year, 12 if year == 2015 else 3, 28 if year == 2015 else 9, rng.randrange(24),
                            rng.randrange(60), rng.randrange(60))
        self.start_us = micros(start)
        for i in range(n_rows):
            self.lines.append(self.make_line(self.start_us + i * 1_000_000))

    def make_line(self, time_us: int) -> Line:
        fmt, rng = self.fmt, self.rng
        values, texts = [], []
        for name in fmt.sensors:
            if fmt.target == "swat" and name.startswith(("MV", "P", "UV")) and not name.startswith("PIT"):
                v = float(rng.choice([0, 1, 2]))
                texts.append(str(int(v)))
            else:
                v = round(rng.gauss(500.0, 150.0), rng.choice([2, 4, 6]))
                texts.append(repr(v))
            values.append(v)
        labels = [1 if rng.random() < 0.2 else 0 for _ in fmt.label_columns]
        cells = [fmt.time_text(time_us), *texts, *[fmt.label_text(v, rng) for v in labels]]
        return Line(cells=cells, truth=Truth(time_us, values, labels))

    # -- helpers for mutations ----------------------------------------------------------------------
    def position(self, name: str) -> int:
        return self.names.index(name)

    def data_lines(self, keep_only: bool = True) -> list[int]:
        return [i for i, ln in enumerate(self.lines)
                if ln.cells is not None and (not keep_only or ln.outcome == ("keep",))]

    def pick(self, k: int = 1, lo: int = 0) -> list[int]:
        candidates = [i for i in self.data_lines() if i >= lo]
        return self.rng.sample(candidates, min(k, len(candidates)))

    def set_cell(self, index: int, column: str, text: str | bytes) -> None:
        self.lines[index].cells[self.position(column)] = text  # type: ignore[index]

    def quarantine(self, index: int, column: str | None, reason: str) -> None:
        line = self.lines[index]
        line.outcome = ("quarantine", column, reason)
        line.truth = None

    def sensor(self) -> str:
        return self.rng.choice(self.fmt.sensors)

    def replace_value(self, index: int, column: str, text: str, value: float) -> None:
        self.set_cell(index, column, text)
        truth = self.lines[index].truth
        assert truth is not None
        truth.values[self.fmt.sensors.index(column)] = value

    def set_time(self, index: int, time_us: int) -> None:
        self.set_cell(index, self.fmt.time_column, self.fmt.time_text(time_us))
        truth = self.lines[index].truth
        if truth is not None:
            truth.time_us = time_us

    def time_of(self, index: int) -> int:
        truth = self.lines[index].truth
        assert truth is not None
        return truth.time_us

    def insert(self, index: int, line: Line) -> None:
        self.lines.insert(index, line)

    def fail(self, error: str | tuple[str, ...], *fragments: str) -> None:
        self.error = (error,) if isinstance(error, str) else error
        self.fragments = fragments

    # -- rendering ----------------------------------------------------------------------------------
    def header_bytes(self) -> bytes:
        return (self.sep.join(self.header) + self.header_suffix).encode("utf-8")

    def line_bytes(self, line: Line) -> bytes:
        if line.cells is None:
            return line.raw
        return self.sep.encode().join(c if isinstance(c, bytes) else c.encode("utf-8") for c in line.cells)

    def render(self) -> bytes:
        if self.raw_override is not None:
            return self.raw_override
        parts = [*self.banner, self.header_bytes(), *[self.line_bytes(ln) for ln in self.lines]]
        data = self.newline.join(parts)
        if self.final_newline:
            data += self.newline
        return (b"\xef\xbb\xbf" if self.bom else b"") + data

    def case(self, name: str, kind: str, path: Path) -> TextCase:
        data = self.render()
        path.write_bytes(data)
        header_line = len(self.banner) + 1
        quarantine: dict[int, tuple] = {}
        rows: list[Truth] = []
        blank = 0
        for offset, line in enumerate([] if self.lenient else self.lines):
            number = header_line + 1 + offset
            if line.outcome[0] == "quarantine":
                quarantine[number] = (line.outcome[1], line.outcome[2])
            elif line.outcome[0] == "quarantine_any":
                quarantine[number] = ("any",)
            elif line.outcome[0] == "blank":
                blank += 1
            else:
                assert line.truth is not None, f"{name}: kept line {number} without truth"
                rows.append(line.truth)
        data_lines = count_data_lines(data, header_line) if self.raw_override is None or self.lenient else 0
        return TextCase(name=name, kind=kind, target=self.fmt.target, path=path, data_lines=data_lines,
                        error=self.error, fragments=self.fragments, quarantine=quarantine, blank=blank, rows=rows,
                        raise_fragments=self.raise_fragments, lenient=self.lenient, known_bug=self.known_bug,
                        header_line=header_line)


def count_data_lines(data: bytes, header_line: int) -> int:
    """Physical lines after the header line (a final line without a newline counts)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    return max(0, len(pieces) - header_line)


# -- mutation kinds: each takes a draft and a random generator, and records the outcome it expects --

TextKind = Callable[[Draft], None]
TEXT_KINDS: dict[str, tuple[TextKind, tuple[str, ...], int]] = {}  # name -> (function, targets, cases per target)


def text_kind(count: int, targets: tuple[str, ...] = ("swat", "skab")) -> Callable[[TextKind], TextKind]:
    def register(fn: TextKind) -> TextKind:
        TEXT_KINDS[fn.__name__.removeprefix("k_")] = (fn, targets, count)
        return fn
    return register


def _bad_sensor_cells(d: Draft, texts: Sequence[str], reason: str) -> None:
    for i in d.pick(d.rng.randint(1, 3)):
        column = d.sensor()
        d.set_cell(i, column, d.rng.choice(texts))
        d.quarantine(i, column, reason)


@text_kind(14)
def k_sensor_missing(d: Draft) -> None:
    _bad_sensor_cells(d, MISSING_TEXTS, "missing")


@text_kind(30)
def k_sensor_malformed(d: Draft) -> None:
    _bad_sensor_cells(d, MALFORMED_TEXTS, "malformed")


@text_kind(10)
def k_sensor_nan(d: Draft) -> None:
    _bad_sensor_cells(d, NAN_TEXTS, "nan")


@text_kind(14)
def k_sensor_infinite(d: Draft) -> None:
    _bad_sensor_cells(d, INFINITE_TEXTS, "infinite")


@text_kind(14)
def k_sensor_accepted(d: Draft) -> None:
    for i in d.pick(d.rng.randint(1, 3)):
        text, value = d.rng.choice(list(ACCEPTED_TEXTS.items()))
        d.replace_value(i, d.sensor(), text, value)


@text_kind(6)
def k_time_missing(d: Draft) -> None:
    for i in d.pick(d.rng.randint(1, 2)):
        d.set_cell(i, d.fmt.time_column, d.rng.choice(MISSING_TEXTS))
        d.quarantine(i, d.fmt.time_column, "missing")


SWAT_BAD_TIMES = ["garbage", "28/12/2015 13:00:00 PM", "2015-12-28 10:00:00", "28/12/2015",
                  "10:00:00 AM", "28/12/2015 10:00:00", "99/99/9999 99:99:99 PM", "28-12-2015 10:00:00 AM", "NaN",
                  "0", "28/12/2015 10:00:00 XM", "28/12/15 10:00 AM", "32/12/2015 10:00:00 AM"]
SKAB_BAD_TIMES = ["garbage", "2020-03-09T10:14:33", "2020-03-09 25:00:00", "09/03/2020 10:14:33", "2020-03-09",
                  "2020-03-09 10:14", "NaN", "0", "2020-03-32 10:00:00"]
# Dates that do not exist (pyarrow's strptime would roll them over into the next month): malformed.
IMPOSSIBLE_DATES = {"swat": ["31/02/2015 10:00:00 AM", "30/02/2015 10:00:00 AM", "31/04/2015 10:00:00 AM",
                             "29/02/2015 10:00:00 AM"],
                    "skab": ["2020-02-30 10:00:00", "2020-02-31 10:00:00", "2020-04-31 10:00:00",
                             "2021-02-29 10:00:00"]}


@text_kind(10)
def k_time_malformed(d: Draft) -> None:
    texts = SWAT_BAD_TIMES if d.fmt.target == "swat" else SKAB_BAD_TIMES
    for i in d.pick(d.rng.randint(1, 2)):
        d.set_cell(i, d.fmt.time_column, d.rng.choice(texts))
        d.quarantine(i, d.fmt.time_column, "malformed")


@text_kind(3)
def k_impossible_date(d: Draft) -> None:
    for i in d.pick(1):
        d.set_cell(i, d.fmt.time_column, d.rng.choice(IMPOSSIBLE_DATES[d.fmt.target]))
        d.quarantine(i, d.fmt.time_column, "malformed")


@text_kind(5)
def k_label_missing(d: Draft) -> None:
    for i in d.pick(d.rng.randint(1, 2)):
        column = d.rng.choice(d.fmt.label_columns)
        d.set_cell(i, column, d.rng.choice(MISSING_TEXTS))
        d.quarantine(i, column, "missing")


@text_kind(6)
def k_label_malformed(d: Draft) -> None:
    texts = ["Attak", "2", "yes", "-1", "Norm", "NaN", "0.5", "x"] if d.fmt.target == "swat" else ["0.5", "2", "x", "-1",
                                                                                                 "yes", "Attak"]
    for i in d.pick(d.rng.randint(1, 2)):
        column = d.rng.choice(d.fmt.label_columns)
        d.set_cell(i, column, d.rng.choice(texts))
        d.quarantine(i, column, "malformed")


@text_kind(5)
def k_label_accepted(d: Draft) -> None:
    words = {"A ttack": 1, "ATTACK": 1, " normal ": 0, "1": 1, "0": 0, "true": 1, "False": 0, "Anomaly": 1, "1.0": 1}
    for i in d.pick(d.rng.randint(1, 2)):
        column = d.rng.choice(d.fmt.label_columns)
        text, value = d.rng.choice(list(words.items()))
        d.set_cell(i, column, text)
        d.lines[i].truth.labels[d.fmt.label_columns.index(column)] = value  # type: ignore[union-attr]


@text_kind(6)
def k_extra_field(d: Draft) -> None:
    for i in d.pick(d.rng.randint(1, 2)):
        d.lines[i].cells.append(d.rng.choice(["5", "", "x"]))  # type: ignore[union-attr]
        d.quarantine(i, None, "field_count")


@text_kind(6)
def k_missing_field(d: Draft) -> None:
    for i in d.pick(d.rng.randint(1, 2)):
        cells = d.lines[i].cells
        del cells[d.rng.randrange(len(cells))]  # type: ignore[arg-type, union-attr]
        d.quarantine(i, None, "field_count")


@text_kind(6)
def k_truncated_last_line(d: Draft) -> None:
    last = d.lines[-1]
    text = d.line_bytes(last)
    d.lines[-1] = Line(cells=None, raw=text[: d.rng.randint(len(text) // 4, len(text) // 2)],
                       outcome=("quarantine", None, "field_count"))
    d.final_newline = False
    d.raise_fragments = ("truncated",)


@text_kind(5)
def k_blank_lines(d: Draft) -> None:
    for _ in range(d.rng.randint(1, 3)):
        d.insert(d.rng.randint(0, len(d.lines)), Line(cells=None, raw=b"", outcome=("blank",)))


@text_kind(4)
def k_whitespace_lines(d: Draft) -> None:
    for _ in range(d.rng.randint(1, 3)):
        d.insert(d.rng.randint(0, len(d.lines)), Line(cells=None, raw=d.rng.choice([b"   ", b"\t", b" \t "]),
                                                     outcome=("blank",)))


@text_kind(4)
def k_separator_only_line(d: Draft) -> None:
    d.insert(d.rng.randint(0, len(d.lines)), Line(cells=None, raw=(d.sep * (len(d.header) - 1)).encode(),
                                                 outcome=("blank",)))


@text_kind(10)
def k_non_utf8(d: Draft) -> None:
    bad = [b"\xff", b"\xb0", b"\x80", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\xfe\xff", b"\xf8\x88\x80\x80\x80"]
    for i in d.pick(d.rng.randint(1, 2)):
        column = d.rng.choice([d.fmt.time_column, *d.fmt.sensors, *d.fmt.label_columns])
        cell = d.lines[i].cells[d.position(column)]  # type: ignore[index]
        text = cell.encode() if isinstance(cell, str) else cell
        cut = d.rng.randint(0, len(text))
        d.set_cell(i, column, text[:cut] + d.rng.choice(bad) + text[cut:])
        d.quarantine(i, None, "encoding")


@text_kind(4)
def k_header_repeated(d: Draft) -> None:
    """Two exports concatenated: the header appears again as a data line."""
    i = d.rng.randint(1, len(d.lines))
    d.insert(i, Line(cells=list(d.header), outcome=("quarantine", d.fmt.time_column, "malformed")))


@text_kind(6)
def k_duplicate_timestamp(d: Draft) -> None:
    i = d.pick(1, lo=1)[0]
    if d.lines[i - 1].outcome != ("keep",):
        return
    d.set_time(i, d.time_of(i - 1))
    d.quarantine(i, d.fmt.time_column, "duplicate_timestamp")


@text_kind(5)
def k_duplicate_row(d: Draft) -> None:
    i = d.rng.randrange(len(d.lines))
    copy = Line(cells=list(d.lines[i].cells), outcome=("quarantine", d.fmt.time_column, "duplicate_timestamp"))  # type: ignore[arg-type]
    d.insert(i + 1, copy)


@text_kind(6)
def k_out_of_order(d: Draft) -> None:
    i = d.pick(1, lo=2)[0]
    d.set_time(i, d.start_us - d.rng.choice([1, 60, 3600, 86400 * 400]) * 1_000_000)
    d.quarantine(i, d.fmt.time_column, "out_of_order")


@text_kind(5)
def k_time_gap(d: Draft) -> None:
    """A gap in time is not an error for a reader: every row is kept."""
    i = d.rng.randrange(1, len(d.lines))
    gap = d.rng.choice([2, 3600, 86400, 86400 * 30]) * 1_000_000
    for j in range(i, len(d.lines)):
        d.set_time(j, d.time_of(j) + gap)


@text_kind(4)
def k_crlf(d: Draft) -> None:
    d.newline = b"\r\n"
    k_sensor_malformed(d)


@text_kind(4)
def k_trailing_separator(d: Draft) -> None:
    d.header_suffix = d.sep
    for line in d.lines:
        line.cells.append("")  # type: ignore[union-attr]
    k_sensor_malformed(d)


@text_kind(3)
def k_trailing_separator_data_only(d: Draft) -> None:
    for i in d.data_lines():
        d.lines[i].cells.append("")  # type: ignore[union-attr]
        d.quarantine(i, None, "field_count")


@text_kind(3)
def k_value_beyond_header(d: Draft) -> None:
    d.header_suffix = d.sep
    for line in d.lines:
        line.cells.append("")  # type: ignore[union-attr]
    i = d.pick()[0]
    d.lines[i].cells[-1] = "7"  # type: ignore[index]
    d.quarantine(i, None, "field_count")


@text_kind(4)
def k_quoted_values(d: Draft) -> None:
    for i in d.pick(2):
        column = d.sensor()
        value = d.lines[i].truth.values[d.fmt.sensors.index(column)]  # type: ignore[union-attr]
        d.set_cell(i, column, f'"{value!r}"')
    i = d.pick()[0]
    column = d.sensor()
    d.set_cell(i, column, f'"1{d.sep}234.5"')  # a quoted separator is part of the value: not a number
    d.quarantine(i, column, "malformed")


@text_kind(3)
def k_all_rows_bad(d: Draft) -> None:
    for i in d.data_lines():
        column = d.sensor()
        d.set_cell(i, column, d.rng.choice(MALFORMED_TEXTS))
        d.quarantine(i, column, "malformed")


@text_kind(6)
def k_mixed(d: Draft) -> None:
    for kind in d.rng.sample([k_sensor_missing, k_sensor_malformed, k_sensor_nan, k_sensor_infinite,
                              k_sensor_accepted, k_time_malformed, k_label_malformed, k_extra_field, k_missing_field,
                              k_blank_lines, k_non_utf8, k_header_repeated], 4):
        kind(d)


@text_kind(3, ("swat",))
def k_kafka_label_alias(d: Draft) -> None:
    """The Kafka spelling of the label column is accepted, and named as written."""
    d.header[-1] = "Normal_Attack"
    d.names[-1] = "Normal_Attack"
    for i in d.pick(1):
        d.lines[i].cells[-1] = "Attak"  # type: ignore[index]
        d.quarantine(i, "Normal_Attack", "malformed")


@text_kind(4)
def k_reordered_columns(d: Draft) -> None:
    order = list(range(len(d.header)))
    d.rng.shuffle(order)
    d.header = [d.header[j] for j in order]
    d.names = [d.names[j] for j in order]
    for line in d.lines:
        line.cells = [line.cells[j] for j in order]  # type: ignore[index]
    k_sensor_malformed(d)


@text_kind(3)
def k_bom(d: Draft) -> None:
    d.bom = True
    k_sensor_nan(d)


@text_kind(4)
def k_banner(d: Draft) -> None:
    d.banner = [d.rng.choice([b"SWaT A1 export", b"", d.sep.encode() * 5, b"Report generated 2015-12-28",
                              "Sensor data \u00b0C".encode()]) for _ in range(d.rng.randint(1, 5))]
    k_sensor_malformed(d)


@text_kind(3)
def k_huge_cell(d: Draft) -> None:
    i = d.pick()[0]
    column = d.sensor()
    d.set_cell(i, column, "".join(d.rng.choice("0123456789abc.") for _ in range(d.rng.randint(10_000, 300_000))))
    d.quarantine(i, column, "malformed")


@text_kind(3)
def k_header_cells_quoted(d: Draft) -> None:
    d.header = [f'"{h}"' for h in d.header]


# -- whole-file kinds -----------------------------------------------------------------------------


@text_kind(2)
def k_empty(d: Draft) -> None:
    d.raw_override = b""
    d.fail("SchemaError", "empty file")


@text_kind(2)
def k_whitespace_only(d: Draft) -> None:
    d.raw_override = d.rng.choice([b" \n\n\t\n", b"\n", b"\r\n\r\n", b"   "])
    d.fail("SchemaError", "empty file")


@text_kind(2)
def k_bom_only(d: Draft) -> None:
    d.raw_override = b"\xef\xbb\xbf" + d.rng.choice([b"", b"\n"])
    d.fail("SchemaError", "empty file")


@text_kind(2)
def k_header_only(d: Draft) -> None:
    d.lines = []


@text_kind(2)
def k_header_only_no_newline(d: Draft) -> None:
    d.lines = []
    d.final_newline = False


@text_kind(2)
def k_header_and_blank_lines(d: Draft) -> None:
    d.lines = [Line(cells=None, raw=b"", outcome=("blank",)) for _ in range(d.rng.randint(1, 4))]


@text_kind(4)
def k_header_truncated(d: Draft) -> None:
    header = d.header_bytes()
    start = len(d.header[0]) + 1  # keep the time column, cut in the sensors or labels
    cut = d.rng.randint(start, len(header) - 2)
    d.raw_override = header[:cut]
    present = [c.strip() for c in header[:cut].decode().split(d.sep)]
    required = [d.fmt.time_column, *d.fmt.sensors, d.fmt.label_columns[0]]
    missing = [n for n in required if n not in present]
    if missing:
        d.fail("SchemaError", "missing columns", missing[0])
    elif present[-1] and present[-1] not in d.fmt.names:  # cut inside an extra label column's name
        d.fail("SchemaError", "unexpected columns", present[-1])
    else:
        d.fail("SchemaError", "missing columns", d.fmt.label_columns[-1])


@text_kind(4)
def k_missing_column(d: Draft) -> None:
    column = d.sensor()
    j = d.position(column)
    del d.header[j], d.names[j]
    for line in d.lines:
        del line.cells[j]  # type: ignore[union-attr]
    d.fail("SchemaError", "missing columns", column)


@text_kind(5)
def k_renamed_column(d: Draft) -> None:
    column = d.sensor()
    j = d.position(column)
    renamed = d.rng.choice([column.replace("1", "_1", 1) if "1" in column else column + "_", column.lower(),
                            column.replace("I", "\u0406", 1) if "I" in column else column + "\u200b",
                            column[:-1], column + "x"])
    if renamed.strip() == column:
        renamed = column + "2"
    d.header[j] = renamed
    d.names[j] = renamed
    d.fail("SchemaError", "missing columns", column)


@text_kind(4)
def k_extra_column(d: Draft) -> None:
    name = d.rng.choice(["FOO", "Unnamed: 0", "index", "LIT101_raw", "änderung"])
    j = d.rng.randint(0, len(d.header))
    d.header.insert(j, name)
    d.names.insert(j, name)
    for line in d.lines:
        line.cells.insert(j, "1.0")  # type: ignore[union-attr]
    d.fail("SchemaError", "unexpected columns", name)


@text_kind(3)
def k_duplicated_column(d: Draft) -> None:
    column = d.sensor()
    j = d.position(column)
    d.header.append(d.header[j])
    d.names.append(column)
    for line in d.lines:
        line.cells.append(line.cells[j])  # type: ignore[union-attr]
    d.fail("SchemaError", "duplicated columns", column)


@text_kind(4)
def k_wrong_separator(d: Draft) -> None:
    d.sep = d.rng.choice([";", "\t", "|"] if d.fmt.target == "swat" else [",", "\t", "|"])
    d.fail("SchemaError", "missing columns")


@text_kind(2)
def k_utf16(d: Draft) -> None:
    text = d.render().decode("utf-8")
    d.raw_override = text.encode(d.rng.choice(["utf-16", "utf-16-le", "utf-32"]))
    d.fail(("InputError", "SchemaError"))


@text_kind(2)
def k_binary_garbage(d: Draft) -> None:
    d.raw_override = bytes(d.rng.randrange(256) for _ in range(d.rng.randint(1, 5000)))
    d.fail(("InputError", "SchemaError"))


@text_kind(2)
def k_gzip(d: Draft) -> None:
    d.raw_override = gzip.compress(d.render())
    d.fail(("InputError", "SchemaError"))


@text_kind(2)
def k_parquet_bytes(d: Draft) -> None:
    sink = io.BytesIO()
    pq.write_table(pa.table({"a": [1.0, 2.0]}), sink)
    d.raw_override = sink.getvalue()
    d.fail(("InputError", "SchemaError"))


@text_kind(2)
def k_unnamed_middle_column(d: Draft) -> None:
    j = d.rng.randint(2, len(d.header) - 2)
    d.header.insert(j, "")
    d.names.insert(j, "")
    for line in d.lines:
        line.cells.insert(j, "1")  # type: ignore[union-attr]
    d.fail("SchemaError", "unnamed columns")


@text_kind(2)
def k_label_column_absent(d: Draft) -> None:
    column = d.fmt.label_columns[0]
    j = d.position(column)
    del d.header[j], d.names[j]
    for line in d.lines:
        del line.cells[j]  # type: ignore[union-attr]
    d.fail("SchemaError", "missing columns", column)


@text_kind(2)
def k_banner_too_long(d: Draft) -> None:
    d.banner = [b"banner"] * 20
    d.fail("SchemaError", "no header line")


@text_kind(2)
def k_many_extra_columns(d: Draft) -> None:
    extra = [f"X{i}" for i in range(3000)]
    d.header += extra
    d.names += extra
    for line in d.lines:
        line.cells += ["0"] * len(extra)  # type: ignore[operator]
    d.fail("SchemaError", "unexpected columns", "X0")


@text_kind(2)
def k_only_time_column(d: Draft) -> None:
    d.header = [d.header[0]]
    d.names = [d.names[0]]
    for line in d.lines:
        line.cells = line.cells[:1]  # type: ignore[index]
    d.fail("SchemaError", "missing columns", d.fmt.sensors[0])


# -- lenient kinds: anything but a crash, a hang or rows that do not add up ------------------------

def _after_header(d: Draft) -> tuple[bytes, int]:
    data = d.render()
    return data, len(b"".join(x + d.newline for x in [*d.banner, d.header_bytes()])) + (3 if d.bom else 0)


@text_kind(25)
def k_random_truncation(d: Draft) -> None:
    data, start = _after_header(d)
    d.raw_override = data[: d.rng.randint(start, len(data))]
    d.lenient = True


# Bytes a flip must not produce (none now: a flip to a quote or a lone CR damages its line, which the
# readers quarantine like any other).
_AVOID: set[int] = set()


@text_kind(30)
def k_random_byte_flips(d: Draft) -> None:
    data, start = _after_header(d)
    buf = bytearray(data)
    for _ in range(d.rng.randint(1, 8)):
        at = d.rng.randrange(start, len(buf))
        flipped = buf[at] ^ (1 << d.rng.randrange(8))
        if flipped not in _AVOID:
            buf[at] = flipped
    d.raw_override = bytes(buf)
    d.lenient = True


_PRINTABLE = [chr(c) for c in range(32, 127) if chr(c) != '"'] + ["é", "°", "\u2028", "\ufeff", "\x00", "\t"]


@text_kind(15)
def k_random_garbage_lines(d: Draft) -> None:
    for i in d.pick(d.rng.randint(1, 3)):
        d.lines[i] = Line(cells=None, raw="".join(d.rng.choice(_PRINTABLE + [d.sep] * 10)
                                                  for _ in range(d.rng.randint(0, 400))).encode())
    d.raw_override = d.render()
    d.lenient = True


@text_kind(15)
def k_random_cells(d: Draft) -> None:
    for i in d.pick(d.rng.randint(1, 5)):
        column = d.rng.choice([d.fmt.time_column, *d.fmt.sensors, *d.fmt.label_columns])
        d.set_cell(i, column, "".join(d.rng.choice(_PRINTABLE) for _ in range(d.rng.randint(0, 12))))
    d.raw_override = d.render()
    d.lenient = True


# -- damaged lines: each is quarantined on its own line, and the lines after it read normally ---------


@text_kind(3)
def k_lone_cr(d: Draft) -> None:
    """A lone carriage return inside a line does not end it: the line is quarantined (malformed)."""
    i = d.pick(1, lo=1)[0]
    text = d.line_bytes(d.lines[i])
    cut = d.rng.randint(10, len(text) - 10)
    d.lines[i] = Line(cells=None, raw=text[:cut] + b"\r" + text[cut:], outcome=("quarantine_any",))
    later = [j for j in d.data_lines() if j > i]
    if later:
        j = later[-1]
        column = d.sensor()
        d.set_cell(j, column, "abc")
        d.quarantine(j, column, "malformed")


@text_kind(3)
def k_quote_opens_field(d: Draft) -> None:
    """A quote opening a value that does not close on its line: that line is quarantined (malformed)."""
    i = d.pick(1, lo=1)[0]
    column = d.sensor()
    d.set_cell(i, column, '"' + str(d.lines[i].cells[d.position(column)]))  # type: ignore[index]
    d.lines[i].outcome = ("quarantine_any",)
    d.lines[i].truth = None


def generate_text_cases(out: Path, rng: random.Random, scale: int = 1) -> list[TextCase]:
    formats = text_formats()
    cases = []
    for kind, (fn, targets, count) in TEXT_KINDS.items():
        for target in targets:
            for n in range(count * scale):
                d = Draft(formats[target], rng, rng.randint(5, 24))
                fn(d)
                name = f"{target}-{kind}-{n:03d}"
                directory = out / target
                directory.mkdir(parents=True, exist_ok=True)
                cases.append(d.case(name, kind, directory / f"{name}.csv"))
    return cases


# ------------------------------------------------------------------------------------------------
# canonical tables, Parquet and Arrow batches
# ------------------------------------------------------------------------------------------------


def canonical_table(n: int, rng: np.random.Generator, plant: str = "swat", start_s: int = 1_451_289_600,
                    sensors: Sequence[str] | None = None) -> pa.Table:
    """`n` SWaT rows at 1 Hz from `start_s` (UTC seconds), values near a normal plant's."""
    sensors = list(sensors or swat_sensors())
    times = (np.int64(start_s) + np.arange(n, dtype=np.int64)) * 1_000_000
    columns: dict[str, pa.Array] = {
        "plant": pa.array([plant] * n, pa.string()),
        "timestamp": pa.array(times, pa.int64()).cast(UTC_TYPE),
    }
    base = rng.normal(5.0, 1.0, (n, len(sensors))).round(4)
    for j, name in enumerate(sensors):
        columns[name] = pa.array(base[:, j], pa.float64())
    columns["label"] = pa.array((rng.random(n) < 0.1).astype(np.int32))
    return pa.table(columns)


def detector_reference(batch: pa.RecordBatch | pa.Table, sensors: Sequence[str], window: int,
                       default_plant: str) -> list[tuple[str, str | None]] | None:
    """The scoring contract's outcome for each input row, for a fresh Detector stream with stride 1:
    ("quarantined", reason) | ("warmup", None) | ("scored", None) | ("context", None). None when the
    batch lacks a sensor (a SchemaError)."""
    names = batch.schema.names
    if any(s not in names for s in sensors):
        return None
    n = batch.num_rows
    values = [batch.column(names.index(s)).to_pylist() for s in sensors]
    plants = batch.column(names.index("plant")).cast(pa.string()).to_pylist() if "plant" in names else None
    times = None
    if "timestamp" in names:
        column = batch.column(names.index("timestamp"))
        raw = column.cast(pa.int64()).to_pylist()
        unit = column.type.unit
        limit = 2**63 - 1

        def to_micros(v: int | None) -> int | None:  # as the core converts: saturating, flooring
            if v is None:
                return None
            if unit == "ns":
                return v // 1000
            us = v * {"s": 1_000_000, "ms": 1000, "us": 1}[unit]
            return max(-limit - 1, min(limit, us))
        times = [to_micros(v) for v in raw]
    context = batch.column(names.index("_tw_context")).to_pylist() if "_tw_context" in names else [None] * n
    last: dict[str, int] = {}
    position: dict[str, int] = {}
    out: list[tuple[str, str | None]] = []
    for i in range(n):
        reason = None
        for name, column in zip(sensors, values):
            v = column[i]
            if v is None:
                reason = f"null:{name}"
            elif isinstance(v, float) and np.isnan(v):
                reason = f"nan:{name}"
            elif isinstance(v, float) and np.isinf(v):
                reason = f"infinite:{name}"
            if reason:
                break
        key = default_plant
        if plants is not None:
            if plants[i] is None:
                reason = reason or "null:plant"
                key = ""
            else:
                key = plants[i]
        t = None
        if times is not None:
            if times[i] is None:
                reason = reason or "null:timestamp"
            else:
                t = times[i]
        if reason is None and t is not None:
            if key in last and t < last[key]:
                reason = "out_of_order"
            elif key in last and t == last[key]:
                reason = "duplicate_timestamp"
            else:
                last[key] = t
        is_context = bool(context[i])
        if reason is not None:
            out.append(("context", None) if is_context else ("quarantined", reason))
            continue
        g = position.get(key, 0)
        position[key] = g + 1
        if is_context:
            out.append(("context", None))
        else:
            out.append(("warmup", None) if g < window - 1 else ("scored", None))
    return out


@dataclass
class ParquetCase:
    name: str
    kind: str
    path: Path
    rows: int  # rows the file holds
    error: tuple[str, ...] | None = None
    fragments: tuple[str, ...] = ()
    lenient: bool = False
    score: bool = True  # rows that load are scored by the Detector (checked against detector_reference)
    known_bug: str | None = None


@dataclass
class ArrowCase:
    name: str
    kind: str
    batch: pa.RecordBatch | pa.Table
    error: tuple[str, ...] | None = None  # expected from Detector.score (sensor_matrix: SchemaError too)
    fragments: tuple[str, ...] = ()
    matrix_ok: bool = True  # sensor_matrix accepts it (the Detector may still refuse plant/timestamp columns)
    lenient: bool = False  # the Detector may refuse it (TidewatchError) or score it: rows must add up
    known_bug: str | None = None


def _set_cells(table: pa.Table, column: str, rows: Sequence[int], value: Any) -> pa.Table:
    values = table[column].to_pylist()
    for r in rows:
        values[r] = value
    j = table.schema.get_field_index(column)
    return table.set_column(j, table.schema.field(j), pa.array(values, table.schema.field(j).type))


def _replace_column(table: pa.Table, column: str, array: pa.Array) -> pa.Table:
    j = table.schema.get_field_index(column)
    return table.set_column(j, pa.field(column, array.type), array)


def _bad_value_tables(rng: np.random.Generator, n: int) -> list[tuple[str, pa.Table]]:
    """Canonical tables with nulls, NaN, infinities, ordering and key problems planted."""
    sensors = swat_sensors()
    out = []
    for kind, value in (("null", None), ("nan", float("nan")), ("inf", float("inf")), ("neg_inf", float("-inf"))):
        for _ in range(6):
            t = canonical_table(n, rng)
            for _ in range(int(rng.integers(1, 6))):
                t = _set_cells(t, str(rng.choice(sensors)), [int(rng.integers(n))], value)
            out.append((kind, t))
    for _ in range(6):  # several problems in one row: the first sensor in model order is named
        t = canonical_table(n, rng)
        r = int(rng.integers(n))
        for s, v in zip(rng.choice(sensors, 3, replace=False), (None, float("nan"), float("inf"))):
            t = _set_cells(t, str(s), [r], v)
        out.append(("mixed_row", t))
    for _ in range(3):
        t = canonical_table(n, rng)
        out.append(("whole_column_null", _replace_column(t, str(rng.choice(sensors)), pa.nulls(n, pa.float64()))))
    for _ in range(4):
        t = canonical_table(n, rng)
        out.append(("null_plant", _set_cells(t, "plant", list(rng.choice(n, 2, replace=False)), None)))
        t = canonical_table(n, rng)
        out.append(("null_timestamp", _set_cells(t, "timestamp", list(rng.choice(n, 2, replace=False)), None)))
    for _ in range(6):
        t = canonical_table(n, rng)
        times = t["timestamp"].cast(pa.int64()).to_numpy().copy()
        r = int(rng.integers(2, n))
        times[r] = times[0] - int(rng.choice([1, 3600, 10**9])) * 1_000_000
        out.append(("out_of_order", _replace_column(t, "timestamp", pa.array(times).cast(UTC_TYPE))))
        t = canonical_table(n, rng)
        times = t["timestamp"].cast(pa.int64()).to_numpy().copy()
        r = int(rng.integers(1, n))
        times[r] = times[r - 1]
        out.append(("duplicate_timestamp", _replace_column(t, "timestamp", pa.array(times).cast(UTC_TYPE))))
    for _ in range(4):  # two plants interleaved, each with its own problems
        a = canonical_table(n, rng, plant="alpha")
        b = canonical_table(n, rng, plant="beta", start_s=1_451_289_600 + 7)
        merged = pa.concat_tables([a, b]).take(pa.array(rng.permutation(2 * n)))
        merged = merged.take(pc.sort_indices(merged, [("timestamp", "ascending")]))
        merged = _set_cells(merged, str(rng.choice(sensors)), [int(rng.integers(2 * n))], float("nan"))
        out.append(("two_plants", merged))
    return out


def generate_parquet_cases(out: Path, rng: np.random.Generator, scale: int = 1) -> list[ParquetCase]:
    directory = out / "parquet"
    directory.mkdir(parents=True, exist_ok=True)
    sensors = swat_sensors()
    cases: list[ParquetCase] = []
    counter = [0]

    def write(kind: str, table: pa.Table | None, *, raw: bytes | None = None, **expect: Any) -> None:
        name = f"parquet-{kind}-{counter[0]:03d}"
        counter[0] += 1
        path = directory / f"{name}.parquet"
        if raw is not None:
            path.write_bytes(raw)
        else:
            assert table is not None
            pq.write_table(table, path)
        cases.append(ParquetCase(name=name, kind=kind, path=path, rows=0 if table is None else table.num_rows,
                                 **expect))

    def good(n: int = 30) -> pa.Table:
        return canonical_table(n, rng)

    def file_bytes(table: pa.Table) -> bytes:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()

    for _ in range(scale):
        for kind, table in _bad_value_tables(rng, 30):
            write(kind, table)
        for _ in range(8):  # cut inside the footer (the last bytes: metadata, its length, the magic)
            data = file_bytes(good())
            write("truncated_footer", None, raw=data[: len(data) - int(rng.integers(1, 200))], error=("InputError",))
        for _ in range(8):
            data = file_bytes(good())
            write("truncated_middle", None, raw=data[: int(rng.integers(1, len(data) - 200))], error=("InputError",))
        for raw in (b"", b"PAR1", b"PAR1PAR1", b"PAR1\x00\x00\x00\x00PAR1", b"not parquet at all\n",
                    b"plant,timestamp\nswat,2015\n", bytes(range(256)) * 4, gzip.compress(b"x" * 100)):
            write("not_parquet", None, raw=raw, error=("InputError",))
        for _ in range(20):  # bit flips anywhere: a clear error or rows (Parquet carries no checksums)
            data = bytearray(file_bytes(good()))
            for _ in range(int(rng.integers(1, 6))):
                at = int(rng.integers(len(data)))
                data[at] ^= 1 << int(rng.integers(8))
            write("bit_flips", None, raw=bytes(data), lenient=True)
        for _ in range(3):
            column = str(rng.choice(sensors))
            write("missing_column", good().drop_columns([column]), error=("SchemaError",),
                  fragments=("missing columns", column))
            write("renamed_column", good().rename_columns(
                [c + "_x" if c == column else c for c in good().column_names]), error=("SchemaError",),
                fragments=("missing columns", column))
        write("no_plant", good().drop_columns(["plant"]), error=("SchemaError",), fragments=("plant",))
        write("no_label", good().drop_columns(["label"]), error=("SchemaError",), fragments=("label",))
        write("no_timestamp", good().drop_columns(["timestamp"]), error=("SchemaError",), fragments=("timestamp",))
        write("extra_float_column", good().append_column("FOO", pa.array(np.zeros(30))), error=("SchemaError",),
              fragments=("unexpected columns", "FOO"))
        write("extra_int_column", good().append_column("changepoint", pa.array(np.zeros(30, dtype=np.int32))))
        # pyarrow refuses it while reading ("Can't unify schema with duplicate field names"), without the name.
        write("duplicated_column", good().append_column("LIT101", pa.array(np.zeros(30))),
              error=("SchemaError", "InputError"), fragments=("duplicate",))
        t = good()
        write("sensor_as_numeric_text", _replace_column(t, "FIT101", t["FIT101"].cast(pa.string())))
        write("sensor_as_garbage_text", _replace_column(t, "FIT101", pa.array(["x"] * 30)), error=("SchemaError",),
              fragments=("canonical types",))
        write("sensor_as_timestamp", _replace_column(t, "FIT101", t["timestamp"]), error=("SchemaError",),
              fragments=("canonical types",))
        write("sensor_int64", _replace_column(t, "P101", pa.array(np.arange(30, dtype=np.int64))))
        write("sensor_float32", _replace_column(t, "P101", t["P101"].cast(pa.float32())))
        write("sensor_decimal", _replace_column(t, "P101", t["P101"].cast(pa.decimal128(12, 4))))
        write("sensor_bool", _replace_column(t, "P101", pa.array([True, False] * 15)), lenient=True)
        write("timestamp_naive", _replace_column(t, "timestamp", t["timestamp"].cast(pa.timestamp("us"))))
        write("timestamp_ms", _replace_column(t, "timestamp", t["timestamp"].cast(pa.timestamp("ms", tz="UTC"))))
        ns = pa.array(t["timestamp"].cast(pa.int64()).to_numpy() * 1000 + 7).cast(pa.timestamp("ns", tz="UTC"))
        write("timestamp_ns_fraction", _replace_column(t, "timestamp", ns), error=("SchemaError",),
              fragments=("canonical types",))
        write("timestamp_string", _replace_column(t, "timestamp", t["timestamp"].cast(pa.string())), lenient=True)
        write("timestamp_int", _replace_column(t, "timestamp", t["timestamp"].cast(pa.int64())), lenient=True)
        write("label_string", _replace_column(t, "label", pa.array(["Normal"] * 30)), error=("SchemaError",),
              fragments=("canonical types",))
        write("zero_rows", good().slice(0, 0))
        write("zero_columns", pa.table({}), error=("SchemaError",))
        write("columns_reordered", good().select(list(reversed(good().column_names))))
        big = good()
        for _ in range(3):
            big = _set_cells(big, str(rng.choice(sensors)), [int(rng.integers(5, 30))],
                             float(rng.choice([1e39, 1e300, -1e308, 3e38])))
        write("huge_values", big)
    return cases


def generate_arrow_cases(rng: np.random.Generator, scale: int = 1) -> list[ArrowCase]:
    sensors = swat_sensors()
    cases: list[ArrowCase] = []
    counter = [0]

    def add(kind: str, batch: pa.Table | pa.RecordBatch, **expect: Any) -> None:
        name = f"arrow-{kind}-{counter[0]:03d}"
        counter[0] += 1
        if isinstance(batch, pa.Table) and kind != "as_table_stream":
            batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist(
                [], schema=batch.schema)
        cases.append(ArrowCase(name=name, kind=kind, batch=batch, **expect))

    n = 24
    for _ in range(scale):
        for kind, table in _bad_value_tables(rng, n):
            add(kind, table)
        numeric = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(),
                   pa.float16(), pa.float32(), pa.decimal128(10, 2)]
        for dtype in numeric:
            t = canonical_table(n, rng)
            column = str(rng.choice(sensors))
            if pa.types.is_floating(dtype):
                array = t[column].cast(dtype, safe=False)
            elif pa.types.is_decimal(dtype):
                array = t[column].cast(dtype, safe=False)
            else:
                array = pa.array(rng.integers(0, 100, n)).cast(dtype)
            add(f"type_{dtype}".replace("(", "_").replace(")", "").replace(", ", "_"),
                _replace_column(t, column, array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array))
        non_numeric = {
            "string": lambda c: c.cast(pa.string()),
            "bool": lambda c: pa.array([True] * n),
            "binary": lambda c: pa.array([b"x"] * n),
            "date32": lambda c: pa.array(np.zeros(n, dtype=np.int32)).cast(pa.date32()),
            "timestamp": lambda c: pa.array(np.zeros(n, dtype=np.int64)).cast(UTC_TYPE),
            "list": lambda c: pa.array([[1.0]] * n),
            "struct": lambda c: pa.array([{"x": 1.0}] * n),
            "dictionary": lambda c: pa.array(["a"] * n).dictionary_encode(),
            "null": lambda c: pa.nulls(n),
            "decimal256": lambda c: pa.array([1] * n).cast(pa.decimal256(40, 2)),
        }
        for type_name, make in non_numeric.items():
            t = canonical_table(n, rng)
            column = str(rng.choice(sensors))
            array = make(t[column].combine_chunks())
            add(f"sensor_{type_name}", _replace_column(t, column, array), error=("SchemaError",),
                fragments=(f"'{column}'",), matrix_ok=False)
        for _ in range(3):
            t = canonical_table(n, rng)
            missing = list(rng.choice(sensors, int(rng.integers(1, 4)), replace=False))
            add("missing_sensors", t.drop_columns(missing), error=("SchemaError",), fragments=tuple(missing),
                matrix_ok=False)
        t = canonical_table(n, rng)
        add("extra_columns", t.append_column("FOO", pa.array(["x"] * n)).append_column("bar", pa.nulls(n)))
        add("no_plant", canonical_table(n, rng).drop_columns(["plant"]))
        add("no_timestamp", canonical_table(n, rng).drop_columns(["timestamp"]))
        t = canonical_table(n, rng)
        add("plant_int", _replace_column(t, "plant", pa.array(np.full(n, 7, dtype=np.int64))))
        add("plant_large_string", _replace_column(t, "plant", t["plant"].cast(pa.large_string()).combine_chunks()))
        add("plant_dictionary", _replace_column(t, "plant", t["plant"].combine_chunks().dictionary_encode()))
        # Nested plant values: refused, or cast to text by Arrow (a plant named "[x]"): either way no crash.
        add("plant_list", _replace_column(t, "plant", pa.array([["x"]] * n)), lenient=True)
        add("plant_struct", _replace_column(t, "plant", pa.array([{"p": "x"}] * n)), lenient=True)
        add("plant_binary_not_utf8", _replace_column(t, "plant", pa.array([b"\xff\xfe"] * n, pa.binary())),
            lenient=True)
        for unit in ("s", "ms", "ns"):
            add(f"timestamp_{unit}", _replace_column(t, "timestamp", t["timestamp"].cast(pa.timestamp(unit, tz="UTC"))))
        add("timestamp_naive", _replace_column(t, "timestamp", t["timestamp"].cast(pa.timestamp("us"))))
        add("timestamp_string", _replace_column(t, "timestamp", t["timestamp"].cast(pa.string()).combine_chunks()),
            error=("SchemaError",), fragments=("'timestamp'",))
        add("timestamp_int", _replace_column(t, "timestamp", t["timestamp"].cast(pa.int64()).combine_chunks()),
            error=("SchemaError",), fragments=("'timestamp'",))
        add("timestamp_extreme", _replace_column(t, "timestamp", pa.array(
            [-(2**63) + 1, 2**63 - 1] + list(range(n - 2)), pa.int64()).cast(pa.timestamp("s", tz="UTC"))))
        for _ in range(3):
            t = canonical_table(n, rng)
            ctx = [bool(x) if rng.random() > 0.2 else None for x in (np.arange(n) < int(rng.integers(0, n)))]
            t = _set_cells(t, str(rng.choice(sensors)), [int(rng.integers(n))], float("nan"))
            add("context_rows", t.append_column("_tw_context", pa.array(ctx, pa.bool_())))
        add("context_int", canonical_table(n, rng).append_column("_tw_context", pa.array(np.zeros(n, dtype=np.int8))),
            error=("SchemaError",), fragments=("'_tw_context'",))
        add("zero_rows", canonical_table(n, rng).slice(0, 0))
        for _ in range(4):  # a slice: buffers start at an offset, null bitmaps too
            t = canonical_table(3 * n, rng)
            t = _set_cells(t, str(rng.choice(sensors)), list(rng.choice(3 * n, 6, replace=False)), None)
            start = int(rng.integers(1, n))
            add("sliced", t.combine_chunks().to_batches()[0].slice(start, n))
        t = canonical_table(n, rng)
        add("as_table_stream", pa.concat_tables([t.slice(0, 5), t.slice(5)]))
        big = canonical_table(n, rng)
        for _ in range(3):
            big = _set_cells(big, str(rng.choice(sensors)), [int(rng.integers(5, n))],
                             float(rng.choice([1e39, 1e300, -1e308, 3.4e38])))
        add("huge_values", big)
    return cases


# ------------------------------------------------------------------------------------------------
# Spark inputs: Kafka messages and landing files
# ------------------------------------------------------------------------------------------------


@dataclass
class SparkExpect:
    """One input row for the Spark path: its plant key (the quarantine's `plant`) and outcome ("valid" or
    a reason); for a valid row optionally its UTC time and sensor values, which must come out exactly; for
    a line or message that cannot be read into fields, its text, which must be the quarantined row's `raw`."""

    plant: str | None
    outcome: str
    time_us: int | None = None
    values: dict[str, float] | None = None
    raw: str | None = None


@dataclass
class KafkaCase:
    name: str
    kind: str
    messages: list[bytes]
    expected: list[SparkExpect]
    known_bug: str | None = None


@dataclass
class LandingCase:
    name: str
    kind: str
    file_format: str
    path: Path
    expected: list[SparkExpect]
    known_bug: str | None = None


def _kafka_base(plant: str, rng: random.Random, t_us: int, sensors: Sequence[str]) -> tuple[dict[str, Any], SparkExpect]:
    values = {s: round(rng.gauss(5, 1), 4) for s in sensors}
    message: dict[str, Any] = {"Timestamp": iso_utc(t_us)}
    message.update({s: repr(v) for s, v in values.items()})
    message["Normal_Attack"] = rng.choice(["Normal", "Attack"])
    message["plant"] = plant
    return message, SparkExpect(plant, "valid", t_us, dict(values))


def generate_kafka_cases(rng: random.Random, default_plant: str = "swat", scale: int = 1) -> list[KafkaCase]:
    """Messages of the `ics-sensor-data` topic (all-string fields); each case has its own plant and time."""
    sensors = swat_sensors()
    cases: list[KafkaCase] = []
    t0 = micros(dt.datetime(2015, 12, 28, 2, 0, 0))
    counter = [0]

    def new(kind: str) -> tuple[str, int]:
        name = f"kafka-{kind}-{counter[0]:03d}"
        counter[0] += 1
        return name, t0 + counter[0] * 1_000_000

    def one(kind: str, mutate: Callable[[dict[str, Any], SparkExpect, str], Any], known_bug: str | None = None) -> None:
        name, t = new(kind)
        message, expect = _kafka_base(name, rng, t, sensors)
        raw = mutate(message, expect, name)
        data = raw if isinstance(raw, bytes) else json.dumps(message if raw is None else raw).encode()
        cases.append(KafkaCase(name, kind, [data], [expect], known_bug))

    def sensor_text(texts: Sequence[str], reason: str | None, known_bug: str | None = None,
                    kind: str = "") -> None:
        for text in texts:
            def mutate(m: dict[str, Any], e: SparkExpect, _: str, text: str = text) -> None:
                s = rng.choice(sensors)
                m[s] = text
                if reason is None:
                    e.values = None  # accepted; the value is checked by the accepted-number kind
                else:
                    e.outcome = f"{reason}:{s}"
                    e.time_us = e.values = None
            one(kind or (reason or "accepted"), mutate, known_bug)

    for _ in range(scale):
        sensor_text(SPARK_MISSING, "missing", kind="sensor_missing")
        sensor_text(SPARK_MALFORMED, "malformed", kind="sensor_malformed")
        sensor_text(SPARK_NAN, "nan", kind="sensor_nan")
        sensor_text(SPARK_INFINITE, "infinite", kind="sensor_infinite")
        for text, value in SPARK_ACCEPTED.items():
            def accepted(m: dict[str, Any], e: SparkExpect, _: str, text: str = text, value: float = value) -> None:
                s = rng.choice(sensors)
                m[s] = text
                e.values[s] = value  # type: ignore[index]
            one("sensor_accepted", accepted)
        for _ in range(4):
            def json_number(m: dict[str, Any], e: SparkExpect, _: str) -> None:
                s = rng.choice(sensors)
                m[s] = e.values[s]  # a JSON number where a string is expected: read as its text  # type: ignore[index]
            one("json_number", json_number)
        for value, reason in ((True, "malformed"), (None, "missing"), ([1.0], "malformed"), ({"v": 1}, "malformed")):
            def json_type(m: dict[str, Any], e: SparkExpect, _: str, value: Any = value, reason: str = reason) -> None:
                s = rng.choice(sensors)
                m[s] = value
                e.outcome, e.time_us, e.values = f"{reason}:{s}", None, None
            one("json_wrong_type", json_type)
        for _ in range(4):
            def missing_field(m: dict[str, Any], e: SparkExpect, _: str) -> None:
                s = rng.choice(sensors)
                del m[s]
                e.outcome, e.time_us, e.values = f"missing:{s}", None, None
            one("missing_field", missing_field)

            def renamed_field(m: dict[str, Any], e: SparkExpect, _: str) -> None:
                s = rng.choice(sensors)
                m[s.lower()] = m.pop(s)
                e.outcome, e.time_us, e.values = f"missing:{s}", None, None
            one("renamed_field", renamed_field)

            def extra_field(m: dict[str, Any], e: SparkExpect, _: str) -> None:
                m[rng.choice(["FOO", "Timestamp2", "LIT101_raw"])] = "1.0"
            one("extra_field", extra_field)
        for text in SPARK_BAD_TIMES:
            def bad_time(m: dict[str, Any], e: SparkExpect, _: str, text: str = text) -> None:
                m["Timestamp"] = text
                e.outcome, e.time_us, e.values = "malformed:timestamp", None, None
            one("time_malformed", bad_time)

        def no_time(m: dict[str, Any], e: SparkExpect, _: str) -> None:
            del m["Timestamp"]
            e.outcome, e.time_us, e.values = "missing:timestamp", None, None
        one("time_missing", no_time)
        for text in SPARK_LENIENT_TIMES:
            def lenient_time(m: dict[str, Any], e: SparkExpect, _: str, text: str = text) -> None:
                m["Timestamp"] = text
                e.outcome, e.time_us, e.values = "malformed:timestamp", None, None
            one("time_partial", lenient_time)
        for text in SPARK_JAVA_NUMBERS:
            def java(m: dict[str, Any], e: SparkExpect, _: str, text: str = text) -> None:
                s = rng.choice(sensors)
                m[s] = text
                e.outcome, e.time_us, e.values = f"malformed:{s}", None, None
            one("java_number", java)
        for label, ok in (("A ttack", True), ("ATTACK", True), ("normal", True), ("", True), ("Attak", True),
                          ("1.0", True)):
            def label_text(m: dict[str, Any], e: SparkExpect, _: str, label: str = label) -> None:
                m["Normal_Attack"] = label  # labels do not decide whether a row is scored: never quarantined
            one("label_variants", label_text)

        def swat_clock(m: dict[str, Any], e: SparkExpect, _: str) -> None:
            local = EPOCH + dt.timedelta(microseconds=e.time_us) + SINGAPORE  # type: ignore[operator]
            m["Timestamp"] = swat_time(local).strip()  # the operators' format: SWaT's local clock
        one("swat_clock", swat_clock)

        def single_quotes(m: dict[str, Any], e: SparkExpect, _: str) -> bytes:
            # Spark's JSON reader accepts single quotes: this parses, and lacks every sensor.
            text = "{'Timestamp': '%s'}" % iso_utc(e.time_us)  # type: ignore[arg-type]
            e.plant, e.outcome, e.time_us, e.values = default_plant, f"missing:{sensors[0]}", None, None
            return text.encode()
        one("single_quotes", single_quotes)
        for plant_value, outcome in (("", "missing:plant"), ("   ", "missing:plant")):
            def plant_field(m: dict[str, Any], e: SparkExpect, _: str, pv: str = plant_value, o: str = outcome) -> None:
                m["plant"] = pv
                e.plant, e.outcome, e.time_us, e.values = None, o, None, None
            one("plant_empty", plant_field)

        def no_plant(m: dict[str, Any], e: SparkExpect, _: str) -> None:
            del m["plant"]  # the operators' messages: the model's plant
            e.plant = default_plant
        one("plant_absent", no_plant)
        # A value that is not a JSON object is malformed:json, its text (as Spark decodes it) the raw; an
        # object without fields is a message that lacks them.
        for raw in (b"not json", b"", b"[1,2]", b"null", b"{}", b'"str"', b"42", b"\xff\xfe{}", b"{\"Timestamp\":",
                    b"\x00" * 10, "{\"Timestamp\":\"\u00e9\"".encode(), b"[{}]", b"[]", b" ", b"\n"):
            def not_a_message(m: dict[str, Any], e: SparkExpect, _: str, raw: bytes = raw) -> bytes:
                e.plant, e.time_us, e.values = default_plant, None, None
                if raw == b"{}":
                    e.outcome = "missing:timestamp"
                else:
                    e.outcome, e.raw = "malformed:json", raw.decode("utf-8", "replace")
                return raw
            one("not_a_json_object", not_a_message)
        for _ in range(3):
            def truncated(m: dict[str, Any], e: SparkExpect, _: str) -> bytes:
                text = json.dumps(m).encode()
                text = text[: rng.randint(1, len(text) - 2)]
                e.plant, e.outcome, e.time_us, e.values, e.raw = default_plant, "malformed:json", None, None, text.decode()
                return text
            one("truncated_message", truncated)
        for _ in range(2):  # the raw text of a message that is not JSON reaches the quarantine
            def garbage(m: dict[str, Any], e: SparkExpect, _: str) -> bytes:
                text = "garbage message " + str(rng.random())
                e.plant, e.outcome, e.time_us, e.values, e.raw = default_plant, "malformed:json", None, None, text
                return text.encode()
            one("raw_kept", garbage)
        for _ in range(4):  # the same reading twice, then once more later: the later copies are set aside
            name, t = new("duplicate")
            message, expect = _kafka_base(name, rng, t, sensors)
            twin = dict(message, FIT101="9.5")
            data = [json.dumps(message).encode(), json.dumps(twin).encode(), json.dumps(message).encode()]
            dup = SparkExpect(name, "duplicate_timestamp")
            cases.append(KafkaCase(name, "duplicate", data, [expect, dup, dup]))
        for _ in range(3):
            name, t = new("huge_message")
            message, expect = _kafka_base(name, rng, t, sensors)
            message["padding"] = "x" * 200_000
            cases.append(KafkaCase(name, "huge_message", [json.dumps(message).encode()], [expect]))
    return cases


def generate_landing_cases(out: Path, rng: random.Random, scale: int = 1) -> list[LandingCase]:
    """Replayer landing files (written by tidewatch.replay's DirectorySink), then damaged, one case a file."""
    from tidewatch.replay import DirectorySink

    sensors = swat_sensors()
    cases: list[LandingCase] = []
    counter = [0]
    nrng = np.random.default_rng(rng.randrange(2**32))

    for file_format in ("csv", "jsonl"):
        directory = out / f"landing-{file_format}"
        buggy = out / f"landing-{file_format}-known-bugs"

        def write(kind: str, mutate: Callable[[list[bytes], list[SparkExpect], str], Any],
                  known_bug: str | None = None, optional: bool = False,
                  header_mutate: Callable[[bytes], bytes | None] | None = None) -> None:
            name = f"landing{file_format}-{kind}-{counter[0]:03d}"
            start = 1_451_289_600 + counter[0] * 1000
            counter[0] += 1
            n = rng.randint(3, 12)
            table = canonical_table(n, nrng, plant=name, start_s=start)
            if optional:  # the canonical optional columns after the label, as simulated data has them
                table = table.append_column("attack_id", pa.array([0] * (n - 1) + [2], pa.int32()))
                table = table.append_column("attacked_points", pa.array([""] * (n - 1) + ["LIT101;MV101"]))
            target = buggy if known_bug else directory
            sink = DirectorySink(target, file_format, prefix=name, fsync=False)  # type: ignore[arg-type]
            path = Path(sink.write(table))
            data = path.read_bytes()
            lines = data.split(b"\n")[:-1]  # the replayer ends every file with a newline
            header, rows = (lines[0], lines[1:]) if file_format == "csv" else (None, lines)
            times = table["timestamp"].cast(pa.int64()).to_pylist()
            expected = [SparkExpect(name, "valid", times[i], {s: table[s][i].as_py() for s in sensors})
                        for i in range(n)]
            result = mutate(rows, expected, name)
            if header_mutate is not None:
                # Read by position, a file under any other header is quarantined whole, its first line too
                # (for a file without a header, that line is data).
                header = header_mutate(header)
                texts = ([header] if header is not None else []) + rows
                expected = [SparkExpect(t.split(b",")[0].decode().strip('"'), "header", raw=t.decode())
                            for t in texts]
            body = result if isinstance(result, bytes) else b"".join(r + b"\n" for r in rows)
            path.write_bytes((header + b"\n" if header is not None else b"") + body)
            cases.append(LandingCase(name, kind, file_format, path,
                                     [e for e in expected if e.outcome != "blank"], known_bug))

        def cell(row: bytes, sensor: str, text: str) -> bytes:
            if file_format == "csv":
                fields = row.split(b",")
                fields[2 + sensors.index(sensor)] = text.encode()
                return b",".join(fields)
            obj = json.loads(row)
            obj[sensor] = text
            return json.dumps(obj).encode()

        for _ in range(scale):
            for texts, reason in ((SPARK_MISSING, "missing"), (SPARK_MALFORMED, "malformed"), (SPARK_NAN, "nan"),
                                  (SPARK_INFINITE, "infinite")):
                for _ in range(3):
                    def bad_cells(rows: list[bytes], exp: list[SparkExpect], _: str, texts: Any = texts,
                                  reason: str = reason) -> None:
                        for i in rng.sample(range(len(rows)), rng.randint(1, min(3, len(rows)))):
                            s = rng.choice(sensors)
                            text = rng.choice([t for t in texts if "," not in t or file_format == "jsonl"])
                            rows[i] = cell(rows[i], s, text)
                            exp[i] = SparkExpect(exp[i].plant, f"{reason}:{s}")
                    write(f"sensor_{reason}", bad_cells)

            def blank_lines(rows: list[bytes], exp: list[SparkExpect], _: str) -> None:
                for _ in range(rng.randint(1, 3)):
                    rows.insert(rng.randint(0, len(rows)), b"")
            write("blank_lines", blank_lines)

            def duplicates(rows: list[bytes], exp: list[SparkExpect], name: str) -> None:
                i = rng.randrange(len(rows))
                rows.insert(i + 1, rows[i])
                exp.insert(i + 1, SparkExpect(name, "duplicate_timestamp"))
            write("duplicate_row", duplicates)
            write("duplicate_row", duplicates)

            def truncated_end(rows: list[bytes], exp: list[SparkExpect], _: str) -> bytes:
                # Cut inside the sensors of the last line: too few fields, or not JSON any more.
                last = rows[-1]
                if file_format == "csv":
                    fields = last.split(b",")
                    k = rng.randint(3, 40)
                    cut = b",".join(fields[:k]) + b","
                    exp[-1] = SparkExpect(exp[-1].plant, "field_count", raw=cut.decode())
                else:
                    cut = last[: rng.randint(10, len(last) - 2)]
                    exp[-1] = SparkExpect(None, "malformed:json", raw=cut.decode())
                return b"".join(r + b"\n" for r in rows[:-1]) + cut
            write("truncated_last_line", truncated_end)

            def header_only(rows: list[bytes], exp: list[SparkExpect], _: str) -> bytes:
                exp.clear()
                return b""
            write("header_only", header_only)

            def non_utf8(rows: list[bytes], exp: list[SparkExpect], _: str) -> None:
                i = rng.randrange(len(rows))
                s = rng.choice(sensors)
                rows[i] = _inject_bytes(rows[i], file_format, sensors, s)
                exp[i] = (SparkExpect(exp[i].plant, f"malformed:{s}") if file_format == "csv"  # not JSON any more
                          else SparkExpect(None, "malformed:json", raw=rows[i].decode("utf-8", "replace")))
            write("non_utf8", non_utf8)

            def accepted(rows: list[bytes], exp: list[SparkExpect], _: str) -> None:
                i = rng.randrange(len(rows))
                s = rng.choice(sensors)
                text, value = rng.choice([(t, v) for t, v in SPARK_ACCEPTED.items() if t.strip() == t or
                                          file_format == "jsonl"])
                rows[i] = cell(rows[i], s, text)
                exp[i].values[s] = value  # type: ignore[index]
            write("sensor_accepted", accepted)

            def extra_field(rows: list[bytes], exp: list[SparkExpect], _: str) -> None:
                i = rng.randrange(len(rows))
                if file_format == "csv":
                    fields = rows[i].split(b",")
                    fields.insert(rng.randint(3, len(fields) - 1), b"5")
                    rows[i] = b",".join(fields)
                    exp[i] = SparkExpect(exp[i].plant, "field_count", raw=rows[i].decode())
                else:
                    obj = json.loads(rows[i])
                    obj["FOO"] = 1  # an extra key in a JSON object is harmless
                    rows[i] = json.dumps(obj).encode()
            write("extra_field", extra_field)

            if file_format == "csv":
                def missing_label(rows: list[bytes], exp: list[SparkExpect], _: str) -> None:
                    i = rng.randrange(len(rows))
                    rows[i] = rows[i].rsplit(b",", 1)[0]
                    exp[i] = SparkExpect(exp[i].plant, "field_count", raw=rows[i].decode())
                write("missing_last_field", missing_label)

                # Columns after the label (the replayer writes attack_id, attacked_points when the table has
                # them) are no extra fields: a line's fields are counted against its file's header.
                write("optional_columns", lambda rows, exp, name: None, optional=True)

                def optional_field_count(rows: list[bytes], exp: list[SparkExpect], _: str) -> None:
                    i, j = rng.sample(range(len(rows)), 2)
                    fields = rows[i].split(b",")
                    fields.insert(rng.randint(3, len(fields) - 1), b"5")
                    rows[i] = b",".join(fields)
                    rows[j] = rows[j].rsplit(b",", 1)[0]
                    for k in (i, j):
                        exp[k] = SparkExpect(exp[k].plant, "field_count", raw=rows[k].decode())
                write("optional_columns_field_count", optional_field_count, optional=True)

                def swap(header: bytes) -> bytes:
                    names = header.split(b",")
                    i, j = names.index(b'"FIT101"'), names.index(b'"LIT101"')
                    names[i], names[j] = names[j], names[i]
                    return b",".join(names)
                write("header_columns_swapped", lambda rows, exp, name: None, header_mutate=swap)
                write("header_extra_column", lambda rows, exp, name: None,
                      header_mutate=lambda h: h.replace(b',"FIT101",', b',"FIT100","FIT101",', 1))
                write("header_unknown_sensors", lambda rows, exp, name: None,
                      header_mutate=lambda h: h.replace(b'"LIT101"', b'"LEVEL_1"', 1))
                write("no_header", lambda rows, exp, name: None, header_mutate=lambda h: None)

                def stray_quote(rows: list[bytes], exp: list[SparkExpect], _: str) -> None:
                    i = rng.randrange(len(rows))
                    rows[i] = cell(rows[i], rng.choice(sensors), rng.choice(['"5.1', '5"1', '"5,1']))
                    exp[i] = SparkExpect(exp[i].plant, "field_count", raw=rows[i].decode())
                write("stray_quote", stray_quote)

                def quoted_comma(rows: list[bytes], exp: list[SparkExpect], _: str) -> None:
                    i = rng.randrange(len(rows))
                    s = rng.choice(sensors)
                    rows[i] = cell(rows[i], s, '"1,5"')  # one field holding a comma: not a number
                    exp[i] = SparkExpect(exp[i].plant, f"malformed:{s}")
                write("quoted_comma", quoted_comma)
            else:
                def not_json(rows: list[bytes], exp: list[SparkExpect], _: str) -> None:
                    i = rng.randrange(len(rows))
                    rows[i] = b"garbage line"
                    exp[i] = SparkExpect(None, "malformed:json", raw="garbage line")
                write("not_json", not_json)

                def not_an_object(rows: list[bytes], exp: list[SparkExpect], _: str) -> None:
                    for i in rng.sample(range(len(rows)), min(2, len(rows))):
                        rows[i] = rng.choice([b"null", b"42", b'"str"', b"[1,2]", b"[]", b"true", b"{\"plant\": "])
                        exp[i] = SparkExpect(None, "malformed:json", raw=rows[i].decode())
                write("not_a_json_object", not_an_object)
    return cases


def _inject_bytes(row: bytes, file_format: str, sensors: Sequence[str], sensor: str) -> bytes:
    """`row` with a byte that is not UTF-8 inside `sensor`'s value."""
    if file_format == "csv":
        fields = row.split(b",")
        fields[2 + sensors.index(sensor)] = b"1\xff5"
        return b",".join(fields)
    key = f'"{sensor}":'.encode()
    at = row.index(key) + len(key)
    return row[:at] + b"\xff" + row[at:]


# ------------------------------------------------------------------------------------------------
# everything
# ------------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    text: list[TextCase]
    parquet: list[ParquetCase]
    arrow: list[ArrowCase]
    kafka: list[KafkaCase]
    landing: list[LandingCase]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for case in self.text:
            out[case.target] = out.get(case.target, 0) + 1
        out["parquet"] = len(self.parquet)
        out["arrow"] = len(self.arrow)
        out["kafka"] = len(self.kafka)
        for case in self.landing:
            key = f"landing-{case.file_format}"
            out[key] = out.get(key, 0) + 1
        out["total"] = sum(out.values())
        return out


def generate(out: Path, seed: int = 0, scale: int = 1) -> Corpus:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    return Corpus(
        text=generate_text_cases(out, rng, scale),
        parquet=generate_parquet_cases(out, nrng, scale),
        arrow=generate_arrow_cases(nrng, scale),
        kafka=generate_kafka_cases(rng, scale=scale),
        landing=generate_landing_cases(out, rng, scale),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=1, help="cases per kind, times")
    args = parser.parse_args(argv)
    corpus = generate(args.out, args.seed, args.scale)
    arrow_dir = args.out / "arrow"
    arrow_dir.mkdir(exist_ok=True)
    for case in corpus.arrow:
        with pa.OSFile(str(arrow_dir / f"{case.name}.arrow"), "wb") as sink, \
                pa.ipc.new_file(sink, case.batch.schema) as writer:
            writer.write(case.batch) if isinstance(case.batch, pa.RecordBatch) else writer.write_table(case.batch)
    kafka_path = args.out / "kafka-messages.bin"
    with kafka_path.open("wb") as handle:  # length-prefixed, since messages may hold newlines or any byte
        for case in corpus.kafka:
            for message in case.messages:
                handle.write(len(message).to_bytes(4, "little") + message)
    manifest = {
        "counts": corpus.counts(),
        "known_bugs": KNOWN_BUGS,
        "text": [{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(c).items() if k != "rows"}
                 | {"rows": len(c.rows)} for c in corpus.text],
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    print(json.dumps(corpus.counts()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
