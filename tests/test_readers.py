"""Readers against real files: a committed SWaT-quirks CSV, XLSX workbooks built here, all of SKAB, and
broken files of every kind (each must raise naming the problem, or be quarantined with a reason)."""
from __future__ import annotations

import datetime as dt
import filecmp
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from fixtures.swat_files import random_rows, raw_headers, sensor_names, swat_time, write_swat_csv
from fixtures.xlsx import write_xlsx

import tidewatch
from tidewatch import ConfigError, InputError, SchemaError
from tidewatch.readers import (
    ReadResult,
    load_attack_list,
    load_plant,
    read_dataset,
    read_plant_csv,
    read_skab,
    read_swat,
)
from tidewatch.schema import QUARANTINE_SCHEMA, canonical_schema

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
SENSORS = sensor_names()
UTC = dt.timezone.utc

# What tests/fixtures/swat_quirks.csv holds (UTF-8 BOM, CRLF, leading spaces in headers and times,
# 12-hour clock around midnight and noon, all three label spellings, numbers written five ways).
QUIRK_TIMES_UTC = [
    dt.datetime(2015, 12, 22, 8, 30, 0, tzinfo=UTC),  # 22/12/2015 4:30:00 PM in Singapore (UTC+8)
    dt.datetime(2015, 12, 22, 15, 59, 59, tzinfo=UTC),  # 11:59:59 PM
    dt.datetime(2015, 12, 22, 16, 0, 0, tzinfo=UTC),  # 23/12/2015 12:00:00 AM: midnight
    dt.datetime(2015, 12, 23, 4, 30, 5, tzinfo=UTC),  # 12:30:05 PM: just after noon
    dt.datetime(2016, 1, 2, 1, 5, 7, tzinfo=UTC),  # 2/1/2016 9:05:07 AM: day first, no leading zeros
]
QUIRK_LABELS = [0, 1, 1, 0, 1]  # Normal, Attack, A ttack, " Normal ", Attack


def quirk_value(row: int, sensor: int) -> float:
    if row == 0 and sensor < 5:
        return [0.001, 523.5, 2.0, -0.5, 3.0][sensor]  # written 1e-3, " 523.5", 2, -0.5, +3
    return sensor * 10 + row / 4


def expected_quirk_columns() -> dict[str, list[object]]:
    columns: dict[str, list[object]] = {"plant": ["swat"] * 5, "timestamp": QUIRK_TIMES_UTC}
    for j, name in enumerate(SENSORS):
        columns[name] = [quirk_value(r, j) for r in range(5)]
    columns["label"] = QUIRK_LABELS
    return columns


def body_line(time: str, values: list[str], label: str) -> str:
    return ",".join([time, *values, label])


def good_values(row: int) -> list[str]:
    return [repr(j + row / 8) for j in range(51)]


def write_lines(path: Path, lines: list[str], *, header: bool = True, end: str = "\n") -> Path:
    text = "\n".join(([",".join(raw_headers())] if header else []) + lines) + end
    path.write_text(text, encoding="utf-8")
    return path


def local(i: int) -> str:
    return swat_time(dt.datetime(2015, 12, 28, 10, 0, 0) + dt.timedelta(seconds=i))


# ------------------------------------------------------------------------------------------------
# the quirks, CSV and XLSX
# ------------------------------------------------------------------------------------------------


def test_swat_csv_with_every_quirk_reads_back_exactly() -> None:
    result = read_swat(FIXTURES / "swat_quirks.csv")
    assert isinstance(result, ReadResult)
    assert result.table.schema == canonical_schema(SENSORS)
    assert result.table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert result.table.to_pydict() == expected_quirk_columns()
    assert result.quarantined.num_rows == 0 and result.quarantined.schema == QUARANTINE_SCHEMA
    assert result.blank_lines == 0


def test_sensor_order_is_the_native_swat_sensor_set() -> None:
    assert SENSORS == tidewatch.SensorSet.swat().sensors
    table = read_swat(FIXTURES / "swat_quirks.csv").table
    assert table.column_names == ["plant", "timestamp", *tidewatch.SensorSet.swat().sensors, "label"]


def quirk_xlsx_rows() -> list[list[object]]:
    headers = raw_headers()
    banner: list[object] = ["SWaT Dataset - Normal v1"] + [None] * (len(headers) - 1)
    banner[1], banner[6], banner[17] = "P1", "P2", "P3"  # stage labels over the columns, as in the export
    rows: list[list[object]] = [banner, headers]
    times: list[object] = [" 22/12/2015 4:30:00 PM", " 22/12/2015 11:59:59 PM",
                           dt.datetime(2015, 12, 23, 0, 0, 0),  # a date-typed cell instead of text
                           " 23/12/2015 12:30:05 PM", " 2/1/2016 9:05:07 AM"]
    labels = ["Normal", "Attack", "A ttack", " Normal ", "Attack"]
    for r in range(5):
        values: list[object] = [quirk_value(r, j) for j in range(51)]
        if r == 0:
            values[1] = " 523.5"  # a number stored as text, with a leading space
            values[2] = 2  # an integer cell
        rows.append([times[r], *values, labels[r]])
    return rows


def test_swat_xlsx_with_banner_and_every_quirk_reads_back_exactly(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "SWaT_Dataset_Normal_v1.xlsx", quirk_xlsx_rows())
    result = read_swat(path)
    assert result.table.schema == canonical_schema(SENSORS)
    assert result.table.to_pydict() == expected_quirk_columns()
    assert result.quarantined.num_rows == 0


def test_swat_xlsx_bad_cell_names_the_sheet_row_and_column(tmp_path: Path) -> None:
    rows = quirk_xlsx_rows()
    rows[4][1 + SENSORS.index("AIT203")] = "n/a"  # sheet row 5 (banner 1, header 2, data from 3)
    rows.append([""] * len(rows[1]))  # a trailing row of empty cells: skipped, counted
    path = write_xlsx(tmp_path / "bad.xlsx", rows)
    with pytest.raises(InputError, match=r"bad\.xlsx: row 5, column 'AIT203': malformed: cannot parse 'n/a'"):
        read_swat(path)
    result = read_swat(path, on_error="quarantine")
    assert result.table.num_rows == 4 and result.blank_lines == 1
    q = result.quarantined.to_pylist()
    assert [(r["line"], r["column"], r["reason"]) for r in q] == [(5, "AIT203", "malformed")]
    assert "n/a" in q[0]["raw"] and q[0]["source_file"] == str(path)


def test_swat_xlsx_cell_beyond_the_header_is_refused(tmp_path: Path) -> None:
    rows = quirk_xlsx_rows()
    rows[3] = rows[3] + ["stray"]
    path = write_xlsx(tmp_path / "stray.xlsx", rows)
    result = read_swat(path, on_error="quarantine")
    assert result.quarantined.to_pylist()[0]["line"] == 4
    assert result.quarantined.to_pylist()[0]["reason"] == "field_count"
    assert result.table.num_rows == 4


def test_attack_list_labels_follow_the_official_list(tmp_path: Path) -> None:
    # Attack 1: 2015-12-28 10:29:14 to 10:44:53 (inclusive) Singapore time. The label column says
    # otherwise on purpose: attack-list labels must ignore it.
    start = dt.datetime(2015, 12, 28, 10, 29, 12)
    rows = []
    for i, second in enumerate([0, 1, 2, 3, 4, 941, 942, 943]):
        rows.append([swat_time(start + dt.timedelta(seconds=second)), *[float(j) for j in range(51)], "Normal"])
    path = write_swat_csv(tmp_path / "attack.csv", rows)
    table = read_swat(path, labels="attack-list").table
    assert table["label"].to_pylist() == [0, 0, 1, 1, 1, 1, 0, 0]  # 10:29:14 .. 10:44:53 inclusive
    assert read_swat(path).table["label"].to_pylist() == [0] * 8


def test_attack_list_labels_need_no_label_column(tmp_path: Path) -> None:
    headers = raw_headers()[:-1]
    rows = [[swat_time(dt.datetime(2015, 12, 28, 10, 29, 14)), *[1.0] * 51]]
    path = write_swat_csv(tmp_path / "nolabel.csv", rows, header=headers)
    with pytest.raises(SchemaError, match="missing columns: Normal/Attack"):
        read_swat(path)
    assert read_swat(path, labels="attack-list").table["label"].to_pylist() == [1]


def test_packaged_attack_list_has_the_41_official_attacks() -> None:
    attacks = load_attack_list()
    assert attacks.num_rows == 41
    first = attacks.slice(0, 1).to_pylist()[0]
    assert first["start"] == dt.datetime(2015, 12, 28, 2, 29, 14, tzinfo=UTC)
    assert first["end"] == dt.datetime(2015, 12, 28, 2, 44, 53, tzinfo=UTC)
    shared = REPO.parent / "shared" / "data" / "swat" / "swat_a1_2015_attacks.csv"
    packaged = REPO / "python" / "tidewatch" / "data" / "swat_a1_2015_attacks.csv"
    assert filecmp.cmp(shared, packaged, shallow=False)


def test_label_column_in_kafka_spelling_is_accepted(tmp_path: Path) -> None:
    headers = raw_headers()[:-1] + ["Normal_Attack"]
    path = write_swat_csv(tmp_path / "kafka.csv", random_rows(3, dt.datetime(2015, 12, 28, 10), attack_every=2),
                          header=headers)
    assert read_swat(path).table["label"].to_pylist() == [1, 0, 1]


# ------------------------------------------------------------------------------------------------
# files that are not SWaT-shaped
# ------------------------------------------------------------------------------------------------


def test_a_file_that_is_not_swat_is_refused_naming_what_is_missing(shared_dir: Path) -> None:
    skab = shared_dir / "data" / "skab" / "valve1" / "0.csv"
    with pytest.raises(SchemaError) as info:
        read_swat(skab)
    message = str(info.value)
    assert message.startswith(f"{skab}: not a SWaT A1 export: missing columns: Timestamp, FIT101, LIT101, ")
    assert "and 40 more" in message


def test_missing_sensor_columns_are_named(tmp_path: Path) -> None:
    headers = raw_headers()
    keep = [i for i, h in enumerate(headers) if h.strip() not in ("LIT301", "P603")]
    rows = [[row[i] for i in keep] for row in random_rows(2, dt.datetime(2015, 12, 28, 10))]
    path = write_swat_csv(tmp_path / "short.csv", rows, header=[headers[i] for i in keep])
    with pytest.raises(SchemaError, match=r"short\.csv: not a SWaT A1 export: missing columns: LIT301, P603 "):
        read_swat(path, on_error="quarantine")  # a schema problem is never a row problem


def test_extra_column_is_refused_unless_ignored(tmp_path: Path) -> None:
    headers = raw_headers() + ["Operator note"]
    rows = [row + ["ok"] for row in random_rows(2, dt.datetime(2015, 12, 28, 10))]
    path = write_swat_csv(tmp_path / "extra.csv", rows, header=headers)
    with pytest.raises(SchemaError, match="unexpected columns for a SWaT A1 export: Operator note"):
        read_swat(path)
    assert read_swat(path, ignore_columns=["Operator note"]).table.num_rows == 2


def test_duplicated_column_is_refused(tmp_path: Path) -> None:
    headers = raw_headers() + ["FIT101"]
    rows = [row + [1.0] for row in random_rows(2, dt.datetime(2015, 12, 28, 10))]
    with pytest.raises(SchemaError, match="duplicated columns: FIT101"):
        read_swat(write_swat_csv(tmp_path / "dup.csv", rows, header=headers))


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(SchemaError, match=r"empty\.csv: empty file"):
        read_swat(path)
    path.write_bytes(b"\n\n  \n")
    with pytest.raises(SchemaError, match="empty file"):
        read_swat(path)


def test_header_only_file_gives_no_rows(tmp_path: Path) -> None:
    result = read_swat(write_lines(tmp_path / "header.csv", []))
    assert result.table.num_rows == 0 and result.table.schema == canonical_schema(SENSORS)
    assert result.rows_read == 0


def test_missing_file_is_an_io_error(tmp_path: Path) -> None:
    with pytest.raises(tidewatch.TidewatchIOError, match="nope.csv: no such file"):
        read_swat(tmp_path / "nope.csv")


def test_not_an_xlsx_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.xlsx"
    path.write_text("Timestamp,FIT101\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"fake\.xlsx: cannot read as an XLSX workbook"):
        read_swat(path)


# ------------------------------------------------------------------------------------------------
# bad rows: raised naming file, line and column, or quarantined with a reason; counts add up
# ------------------------------------------------------------------------------------------------

BAD_CASES = [
    # (what is written in place of one value, the column it goes to, the reason)
    ("abc", "FIT101", "malformed"),
    ("1,5", "AIT402", None),  # an extra field: the row has 54 fields
    ("", "LIT101", "missing"),
    ("NaN", "P602", "nan"),
    ("nan", "P602", "nan"),
    ("inf", "FIT504", "infinite"),
    ("-Infinity", "FIT504", "infinite"),
    ("0x1F", "MV101", "malformed"),
    ("12..5", "MV101", "malformed"),
]


@pytest.mark.parametrize(("text", "column", "reason"), BAD_CASES)
def test_bad_value_raises_naming_file_line_and_column(tmp_path: Path, text: str, column: str,
                                                      reason: str | None) -> None:
    lines = [body_line(local(i), good_values(i), "Normal") for i in range(6)]
    values = good_values(3)
    values[SENSORS.index(column)] = text
    lines[3] = body_line(local(3), values, "Normal")  # line 5 of the file
    path = write_lines(tmp_path / "bad.csv", lines)
    expected_reason = reason or "field_count"
    with pytest.raises(InputError) as info:
        read_swat(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 5")
    assert expected_reason in message
    if reason:
        assert f"column {column!r}" in message

    result = read_swat(path, on_error="quarantine")
    assert result.table.num_rows == 5
    assert result.rows_read == 6
    [q] = result.quarantined.to_pylist()
    assert q["line"] == 5 and q["reason"] == expected_reason and q["source_file"] == str(path)
    assert q["column"] == (column if reason else None)
    assert q["raw"] == lines[3]
    kept_seconds = [(t - result.table["timestamp"][0].as_py()).seconds for t in result.table["timestamp"].to_pylist()]
    assert kept_seconds == [0, 1, 2, 4, 5]


def test_bad_timestamp_and_label_are_named(tmp_path: Path) -> None:
    lines = [body_line(local(i), good_values(i), "Normal") for i in range(5)]
    lines[1] = body_line(" 32/12/2015 10:00:01 AM", good_values(1), "Normal")
    lines[2] = body_line(local(2), good_values(2), "Maybe")
    lines[3] = body_line("", good_values(3), "Attack")
    path = write_lines(tmp_path / "times.csv", lines)
    with pytest.raises(InputError, match=r"times\.csv: line 3, column 'Timestamp': malformed: cannot parse "
                                         r"' 32/12/2015 10:00:01 AM' \(2 more bad rows"):
        read_swat(path)
    result = read_swat(path, on_error="quarantine")
    got = [(r["line"], r["column"], r["reason"]) for r in result.quarantined.to_pylist()]
    assert got == [(3, "Timestamp", "malformed"), (4, "Normal/Attack", "malformed"), (5, "Timestamp", "missing")]
    assert result.table.num_rows == 2 and result.rows_read == 5


def test_first_bad_column_in_file_order_is_reported(tmp_path: Path) -> None:
    values = good_values(0)
    values[SENSORS.index("P603")] = "x"
    values[SENSORS.index("LIT101")] = "y"
    path = write_lines(tmp_path / "two.csv", [body_line(local(0), values, "Normal")])
    with pytest.raises(InputError, match="column 'LIT101'"):
        read_swat(path)


def test_duplicate_and_out_of_order_timestamps(tmp_path: Path) -> None:
    order = [0, 1, 1, 2, 5, 3, 6, 6]  # seconds: a repeat (line 4), a step back (line 7), a repeat (line 9)
    lines = [body_line(local(s), good_values(i), "Normal") for i, s in enumerate(order)]
    path = write_lines(tmp_path / "order.csv", lines)
    with pytest.raises(InputError, match=r"line 4, column 'Timestamp': duplicate_timestamp: .* repeats line 3"):
        read_swat(path)
    result = read_swat(path, on_error="quarantine")
    got = [(r["line"], r["reason"]) for r in result.quarantined.to_pylist()]
    assert got == [(4, "duplicate_timestamp"), (7, "out_of_order"), (9, "duplicate_timestamp")]
    assert result.table.num_rows == 5 and result.rows_read == len(order)
    times = result.table["timestamp"].to_pylist()
    assert times == sorted(times) and len(set(times)) == len(times)
    # The first row of each time is the one kept.
    assert result.table["FIT101"].to_pylist() == [0.0, 0.125, 0.375, 0.5, 0.75]
    assert read_swat(path, check_order=False).table.num_rows == len(order)


def test_truncated_file_is_reported_as_truncated(tmp_path: Path) -> None:
    lines = [body_line(local(i), good_values(i), "Normal") for i in range(4)]
    full = write_lines(tmp_path / "full.csv", lines).read_text(encoding="utf-8")
    cut = full[: len(full) - len(lines[-1]) // 2 - 1]  # the last line stops halfway
    path = tmp_path / "cut.csv"
    path.write_text(cut, encoding="utf-8")
    with pytest.raises(InputError, match=r"cut\.csv: line 5: field_count: expected 53 fields, found \d+ "
                                         r"\(the file ends in the middle of this line: truncated\?\)"):
        read_swat(path)
    result = read_swat(path, on_error="quarantine")
    assert result.table.num_rows == 3 and result.quarantined["line"].to_pylist() == [5]


def test_non_utf8_bytes_are_named_or_quarantined(tmp_path: Path) -> None:
    lines = [body_line(local(i), good_values(i), "Normal") for i in range(4)]
    data = ("\n".join([",".join(raw_headers()), *lines]) + "\n").encode("utf-8")
    latin = lines[2].replace("Normal", "Norm\xe9l").encode("latin-1")  # line 4 in Latin-1
    data = data.replace(lines[2].encode("utf-8"), latin)
    path = tmp_path / "latin.csv"
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"latin\.csv: line 4: encoding: not UTF-8 text \(byte 0xe9"):
        read_swat(path)
    result = read_swat(path, on_error="quarantine")
    assert result.table.num_rows == 3 and result.blank_lines == 0
    [q] = result.quarantined.to_pylist()
    assert (q["line"], q["reason"], q["column"]) == (4, "encoding", None)
    assert q["raw"].endswith("Norm\\xe9l")


def test_blank_lines_are_skipped_counted_and_keep_line_numbers(tmp_path: Path) -> None:
    lines = [body_line(local(i), good_values(i), "Normal") for i in range(4)]
    values = good_values(3)
    values[0] = "bad"
    lines[3] = body_line(local(3), values, "Normal")
    path = write_lines(tmp_path / "blank.csv", [lines[0], "", lines[1], "   ", lines[2], lines[3], ""])
    result = read_swat(path, on_error="quarantine")
    assert result.blank_lines == 3
    assert result.quarantined.to_pylist()[0]["line"] == 7  # header 1, rows at 2, 4, 6, 7
    assert result.table.num_rows == 3


def test_quarantine_counts_add_up_over_a_mixed_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    lines, bad_lines = [], set()
    for i in range(300):
        values = good_values(i)
        label = "Normal"
        kind = rng.integers(0, 10)
        if kind == 0:
            values[int(rng.integers(0, 51))] = "oops"
        elif kind == 1:
            values[int(rng.integers(0, 51))] = "NaN"
        elif kind == 2:
            values = values[:-3]
        elif kind == 3:
            label = "?"
        if kind <= 3:
            bad_lines.add(i + 2)
        lines.append(body_line(local(i), values, label))
    result = read_swat(write_lines(tmp_path / "mixed.csv", lines), on_error="quarantine")
    assert set(result.quarantined["line"].to_pylist()) == bad_lines
    assert result.quarantined.num_rows == len(bad_lines)
    assert result.table.num_rows + result.quarantined.num_rows == 300
    counts = result.quarantine_counts()
    assert sum(counts.values()) == len(bad_lines)
    assert set(counts) <= {"malformed", "nan", "field_count"}


def test_impossible_date_is_malformed_not_rolled_over(tmp_path: Path) -> None:
    """Once a known bug: pyarrow's strptime took 31/02/2015 as 3/3/2015 (a row kept with another time, or
    set aside as out_of_order). A date that does not exist is malformed, named by file, line and column."""
    lines = [body_line(local(i), good_values(i), "Normal") for i in range(5)]
    lines[1] = body_line(" 31/02/2015 10:00:01 AM", good_values(1), "Normal")  # line 3
    lines[3] = body_line(" 29/02/2015 10:00:03 AM", good_values(3), "Normal")  # line 5: 2015 is no leap year
    path = write_lines(tmp_path / "feb.csv", lines)
    with pytest.raises(InputError, match=r"feb\.csv: line 3, column 'Timestamp': malformed: cannot parse "
                                         r"' 31/02/2015 10:00:01 AM' \(1 more bad rows"):
        read_swat(path)
    result = read_swat(path, on_error="quarantine")
    got = [(r["line"], r["column"], r["reason"]) for r in result.quarantined.to_pylist()]
    assert got == [(3, "Timestamp", "malformed"), (5, "Timestamp", "malformed")]
    assert result.table.num_rows == 3 and result.rows_read == 5
    # Real first days of a month, and a leap day, still read (they are the values looked at twice).
    lines = [body_line(" 1/3/2015 10:00:00 AM", good_values(0), "Normal"),
             body_line(" 29/02/2016 10:00:00 AM", good_values(1), "Normal"),
             body_line(" 2/1/2016 4:30:00 PM", good_values(2), "Normal")]
    result = read_swat(write_lines(tmp_path / "real.csv", lines), check_order=False)
    assert result.table["timestamp"].to_pylist() == [dt.datetime(2015, 3, 1, 2, 0, tzinfo=UTC),
                                                     dt.datetime(2016, 2, 29, 2, 0, tzinfo=UTC),
                                                     dt.datetime(2016, 1, 2, 8, 30, tzinfo=UTC)]
    # The same for a plant CSV's own strptime format.
    plant = write_plant(tmp_path, "csv:\n  time_column: t\n  time_format: \"%Y-%m-%d %H:%M:%S\"\n")
    data = tmp_path / "rig.csv"
    data.write_text("t,a,b\n2020-02-28 10:00:00,1,2\n2020-02-30 10:00:00,1,2\n2021-04-31 10:00:00,1,2\n"
                    "2020-03-01 10:00:00,1,2\n", encoding="utf-8")
    result = read_plant_csv(data, plant, on_error="quarantine")
    got = [(r["line"], r["column"], r["reason"]) for r in result.quarantined.to_pylist()]
    assert got == [(3, "t", "malformed"), (4, "t", "malformed")]
    assert result.table["timestamp"].to_pylist() == [dt.datetime(2020, 2, 28, 10, tzinfo=UTC),
                                                     dt.datetime(2020, 3, 1, 10, tzinfo=UTC)]


def test_header_only_file_without_final_newline_gives_no_rows(tmp_path: Path) -> None:
    """Once a known bug: InputError 'cannot parse as CSV: Could not skip initial 1 rows'."""
    result = read_swat(write_lines(tmp_path / "header.csv", [], end=""))
    assert result.table.num_rows == 0 and result.table.schema == canonical_schema(SENSORS)
    assert result.rows_read == 0 and result.blank_lines == 0
    path = tmp_path / "banner.csv"  # the same under a banner line, CRLF
    path.write_bytes(b"SWaT export\r\n" + ",".join(raw_headers()).encode())
    assert read_swat(path).rows_read == 0


def test_lone_carriage_return_quarantines_its_line(tmp_path: Path) -> None:
    """Once a known bug: a lone CR split a row in two for pyarrow but not for the line count, so every
    later line number was off by one. A lone CR (not followed by LF) does not end a line: its line is
    damaged, quarantined as malformed in the column holding the CR, and the lines after it keep their
    numbers."""
    lines = [body_line(local(i), good_values(i), "Normal") for i in range(6)]
    cut = lines[1].index(",", len(local(1)) + 1) + 3  # inside the value of LIT101
    lines[1] = lines[1][:cut] + "\r" + lines[1][cut:]  # line 3
    values = good_values(4)
    values[SENSORS.index("P101")] = "abc"
    lines[4] = body_line(local(4), values, "Normal")  # line 6
    path = tmp_path / "cr.csv"
    path.write_bytes(("\r\n".join([",".join(raw_headers()), *lines]) + "\r\n").encode())  # CRLF elsewhere
    with pytest.raises(InputError, match=r"cr\.csv: line 3, column 'LIT101': malformed: a carriage return "
                                         r"\(\\r\) inside the line"):
        read_swat(path)
    result = read_swat(path, on_error="quarantine")
    got = [(r["line"], r["column"], r["reason"]) for r in result.quarantined.to_pylist()]
    assert got == [(3, "LIT101", "malformed"), (6, "P101", "malformed")]
    assert result.quarantined["raw"].to_pylist() == [lines[1], lines[4]]
    assert result.table.num_rows == 4 and result.rows_read == 6 and result.blank_lines == 0
    assert result.table["FIT101"].to_pylist() == [float(good_values(i)[0]) for i in (0, 2, 3, 5)]
    # A file with CR-only line ends is one line: refused, naming the header line.
    path.write_bytes(("\r".join([",".join(raw_headers()), *lines[:1]]) + "\r").encode())
    with pytest.raises(InputError, match=r"cr\.csv: line 1: a carriage return \(\\r\) inside the header line"):
        read_swat(path, on_error="quarantine")


def test_stray_quote_quarantines_its_line_only(tmp_path: Path) -> None:
    """Once a known bug: a quote opening a value swallowed the following lines into it, and those rows
    vanished. Values cannot span lines: the line whose quote does not close is quarantined (malformed, in
    the column the quote opens), and the lines after it are read normally. Quoted values that close on
    their line still read."""
    lines = [body_line(local(i), good_values(i), "Normal") for i in range(6)]
    values = good_values(1)
    values[SENSORS.index("AIT201")] = '"' + values[SENSORS.index("AIT201")]
    lines[1] = body_line(local(1), values, "Normal")  # line 3
    values = good_values(3)
    values[SENSORS.index("FIT101")] = '"1.5"'
    lines[3] = body_line(local(3), values, "Normal")  # line 5: quoted, closed: read
    path = write_lines(tmp_path / "quote.csv", lines)
    with pytest.raises(InputError, match=r"quote\.csv: line 3, column 'AIT201': malformed: a quote"):
        read_swat(path)
    result = read_swat(path, on_error="quarantine")
    got = [(r["line"], r["column"], r["reason"], r["raw"]) for r in result.quarantined.to_pylist()]
    assert got == [(3, "AIT201", "malformed", lines[1])]
    assert result.table.num_rows == 5 and result.rows_read == 6
    assert result.table["FIT101"].to_pylist() == [0.0, 0.25, 1.5, 0.5, 0.625]
    # A stray quote on the last line, and one closing a value on a later line: each line on its own.
    lines[5] = lines[5].replace(",", ',"', 1)
    lines[4] = lines[4].replace(",", ',"', 1)
    lines[2] = lines[2] + '"'  # a quote inside the (unquoted) label value: a malformed label
    result = read_swat(write_lines(tmp_path / "quotes.csv", lines, end=""), on_error="quarantine")
    got = [(r["line"], r["column"], r["reason"]) for r in result.quarantined.to_pylist()]
    assert got == [(3, "AIT201", "malformed"), (4, "Normal/Attack", "malformed"), (6, "FIT101", "malformed"),
                   (7, "FIT101", "malformed")]
    assert result.table.num_rows == 2 and result.rows_read == 6


def test_on_error_must_be_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="on_error"):
        read_swat(FIXTURES / "swat_quirks.csv", on_error="ignore")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# other plants: the plant-file-driven CSV reader, SKAB
# ------------------------------------------------------------------------------------------------


def test_all_of_skab_reads(shared_dir: Path) -> None:
    tables = read_skab(shared_dir / "data" / "skab")
    assert isinstance(tables, dict) and len(tables) == 35
    sensors = load_plant(REPO / "plants" / "skab.yaml").sensors.sensors
    free = tables.pop("anomaly-free/anomaly-free")
    assert free.num_rows == 9405 and pc.sum(free["label"]).as_py() == 0 and free["label"].null_count == 0
    assert len(tables) == 34
    assert sum(t.num_rows for t in tables.values()) == 37_401
    assert sum(pc.sum(t["label"]).as_py() for t in tables.values()) == 13_067
    for name, table in tables.items():
        assert table.schema == canonical_schema(sensors, extra_labels=["changepoint"]), name
        assert table["label"].null_count == 0
        values = np.column_stack([table[s].to_numpy() for s in sensors])
        assert np.isfinite(values).all(), name
    first = tables["valve1/0"].slice(0, 1).to_pylist()[0]
    assert first["timestamp"] == dt.datetime(2020, 3, 9, 10, 14, 33, tzinfo=UTC)
    assert first["Accelerometer1RMS"] == 0.0265878 and first["Volume Flow RateRMS"] == 32.0
    assert list(tables)[:3] == ["other/1", "other/2", "other/3"]  # natural order within a folder


def test_skab_single_file_and_generic_reader_agree(shared_dir: Path) -> None:
    path = shared_dir / "data" / "skab" / "other" / "13.csv"
    via_skab = read_skab(path)
    via_plant = read_plant_csv(path, REPO / "plants" / "skab.yaml")
    assert isinstance(via_skab, pa.Table) and via_skab.equals(via_plant.table)
    assert via_plant.table.num_rows == 923 and pc.sum(via_plant.table["label"]).as_py() == 265


def test_skab_plant_file_is_valid_and_packaged_copy_matches() -> None:
    plant = load_plant(REPO / "plants" / "skab.yaml")
    assert plant.name == "skab" and len(plant.sensors) == 8
    assert plant.sensors.stage_names == ["motor", "pump", "loop"]
    assert plant.csv.separator == ";" and plant.csv.label_column == "anomaly"
    packaged = REPO / "python" / "tidewatch" / "data" / "plants" / "skab.yaml"
    assert filecmp.cmp(REPO / "plants" / "skab.yaml", packaged, shallow=False)


def test_unlabelled_plant_file_labels_are_null_normal_or_an_error(shared_dir: Path) -> None:
    path = shared_dir / "data" / "skab" / "anomaly-free" / "anomaly-free.csv"
    plant = REPO / "plants" / "skab.yaml"
    assert read_plant_csv(path, plant).table["label"].null_count == 9405
    assert pc.sum(read_plant_csv(path, plant, unlabelled="normal").table["label"]).as_py() == 0
    with pytest.raises(SchemaError, match="missing columns: anomaly"):
        read_plant_csv(path, plant, unlabelled="error")


def write_plant(tmp_path: Path, csv_section: str) -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(
        "plant: rig\nsensors: [a, b]\nstages:\n  one: [a]\n  two: [b]\n" + csv_section, encoding="utf-8")
    return path


def test_plant_csv_time_zones_offsets_and_clock_changes(tmp_path: Path) -> None:
    plant = write_plant(tmp_path, "csv:\n  time_column: t\n  timezone: Europe/Berlin\n  label_column: y\n")
    data = tmp_path / "rig.csv"
    data.write_text(
        "t,a,b,y\n"
        "2021-03-28T01:59:59,1,2,0\n"  # CET, +01:00
        "2021-03-28 02:30:00,1,2,0\n"  # skipped by the spring clock change
        "2021-03-28T03:00:00,1,2,1\n"  # CEST, +02:00
        "2021-03-28T01:00:01Z,1,2,1\n"  # an explicit offset wins over the zone
        "2021-10-31T02:30:00,1,2,0\n"  # happens twice in autumn
        "2021-10-31T04:00:00.25,1.5,2,normal\n",
        encoding="utf-8")
    with pytest.raises(InputError, match=r"rig\.csv: line 3, column 't': nonexistent_local_time"):
        read_plant_csv(data, plant)
    result = read_plant_csv(data, plant, on_error="quarantine")
    got = [(r["line"], r["reason"]) for r in result.quarantined.to_pylist()]
    assert got == [(3, "nonexistent_local_time"), (6, "ambiguous_local_time")]
    assert result.table["timestamp"].to_pylist() == [
        dt.datetime(2021, 3, 28, 0, 59, 59, tzinfo=UTC),
        dt.datetime(2021, 3, 28, 1, 0, 0, tzinfo=UTC),
        dt.datetime(2021, 3, 28, 1, 0, 1, tzinfo=UTC),
        dt.datetime(2021, 10, 31, 3, 0, 0, 250000, tzinfo=UTC),
    ]
    assert result.table["label"].to_pylist() == [0, 1, 1, 0]
    assert result.table["plant"].to_pylist() == ["rig"] * 4


def test_plant_csv_strptime_format_and_separator(tmp_path: Path) -> None:
    plant = write_plant(tmp_path, 'csv:\n  separator: "|"\n  time_column: when\n  time_format: "%d.%m.%Y %H:%M"\n')
    data = tmp_path / "rig.csv"
    data.write_text("when|b|a\n01.02.2020 10:00|2|1\n01.02.2020 10:01|4|3\n", encoding="utf-8")
    table = read_plant_csv(data, plant).table
    assert table.column_names == ["plant", "timestamp", "a", "b", "label"]  # plant-file order, not file order
    assert table["a"].to_pylist() == [1.0, 3.0] and table["b"].to_pylist() == [2.0, 4.0]
    assert table["timestamp"].to_pylist()[1] == dt.datetime(2020, 2, 1, 10, 1, tzinfo=UTC)
    assert table["label"].null_count == 2


def test_plant_file_mistakes_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown keys in the csv section: sep"):
        load_plant(write_plant(tmp_path, "csv:\n  sep: ';'\n"))
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        load_plant(write_plant(tmp_path, "csv:\n  timezone: Mars/Olympus\n"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("plant: rig\nsensors: [a, b]\nstages:\n  one: [a]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="sensors without a stage: b"):
        load_plant(bad)


def test_read_dataset_dispatches_and_conforms_parquet(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    table = read_swat(FIXTURES / "swat_quirks.csv").table
    pq.write_table(table, tmp_path / "swat.parquet")
    assert read_dataset(tmp_path / "swat.parquet").table.equals(table)
    assert read_dataset(FIXTURES / "swat_quirks.csv").table.equals(table)
    pq.write_table(table.drop_columns(["LIT101"]), tmp_path / "broken.parquet")
    with pytest.raises(SchemaError, match=r"broken\.parquet: missing columns: LIT101"):
        read_dataset(tmp_path / "broken.parquet", sensors=SENSORS)
    # Without a sensor list, the sensors are the columns between timestamp and label.
    assert read_dataset(tmp_path / "broken.parquet").table.num_columns == table.num_columns - 1
