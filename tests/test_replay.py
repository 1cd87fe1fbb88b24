"""The replayer and the convert/replay commands, on real files and real processes: complete files only,
every row exactly once and in order, string-only Kafka messages, pacing by the data's clock, clean stops."""
from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from fixtures.swat_files import random_rows, write_swat_csv

from tidewatch import ConfigError, TidewatchIOError
from tidewatch.cli import main as cli_main
from tidewatch.readers import read_swat
from tidewatch.replay import (
    DirectorySink,
    ReplayStats,
    kafka_messages,
    replay,
    replay_to_directory,
    replay_to_kafka_jsonl,
)
from tidewatch.schema import canonical_schema

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def swat_table(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    """1,234 SWaT rows at 1 Hz from a quirky CSV, labels mixed, plus a simulated-style attack column."""
    path = tmp_path_factory.mktemp("src") / "swat.csv"
    write_swat_csv(path, random_rows(1234, dt.datetime(2015, 12, 28, 10, 0, 0), seed=5, attack_every=7))
    table = read_swat(path).table
    attack = pa.array(np.where(np.arange(table.num_rows) % 7 == 0, 3, 0).astype(np.int32))
    points = pa.array(["LIT101;MV101" if i % 7 == 0 else "" for i in range(table.num_rows)])
    return table.append_column("attack_id", attack).append_column("attacked_points", points)


def landing_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if not p.name.startswith((".", "_")))


def assert_no_hidden_files(directory: Path) -> None:
    assert [p.name for p in directory.iterdir() if p.name.startswith((".", "_"))] == []


def read_landing(directory: Path, file_format: str, schema: pa.Schema) -> pa.Table:
    """Reads landing files back into the canonical schema, file by file in name order."""
    tables = []
    for path in landing_files(directory):
        if file_format == "parquet":
            tables.append(pq.read_table(path))
        elif file_format == "csv":
            types = {f.name: (pa.string() if f.name == "timestamp" else f.type) for f in schema}
            t = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
            assert t.column_names == schema.names  # header in canonical order
            tables.append(_times_from_iso(t).cast(schema))
        else:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            assert all(list(r) == schema.names for r in rows)
            t = pa.Table.from_pylist(rows, schema=pa.schema([(f.name, pa.string() if f.name == "timestamp" else f.type)
                                                             for f in schema]))
            tables.append(_times_from_iso(t).cast(schema))
    return pa.concat_tables(tables)


def _times_from_iso(table: pa.Table) -> pa.Table:
    times = [dt.datetime.fromisoformat(s) for s in table["timestamp"].to_pylist()]
    index = table.schema.get_field_index("timestamp")
    return table.set_column(index, "timestamp", pa.array(times, type=pa.timestamp("us", tz="UTC")))


# ------------------------------------------------------------------------------------------------
# landing directory
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file_format", ["csv", "jsonl", "parquet"])
def test_every_row_lands_exactly_once_in_order_in_complete_files(tmp_path: Path, swat_table: pa.Table,
                                                                 file_format: str) -> None:
    stats = replay_to_directory(swat_table, tmp_path / "landing", rows_per_file=100, file_format=file_format,
                                prefix="run")
    files = landing_files(tmp_path / "landing")
    assert [p.name for p in files] == [f"run-{i:06d}.{file_format}" for i in range(13)]
    assert stats.rows == 1234 and stats.chunks == 13 and stats.outputs == [str(p) for p in files]
    assert_no_hidden_files(tmp_path / "landing")
    back = read_landing(tmp_path / "landing", file_format, swat_table.schema)
    assert back.equals(swat_table)
    # Rows per file: full files, then the remainder.
    sizes = [read_landing_file_rows(p, file_format) for p in files]
    assert sizes == [100] * 12 + [34]


def read_landing_file_rows(path: Path, file_format: str) -> int:
    if file_format == "parquet":
        return pq.read_metadata(path).num_rows
    lines = path.read_text(encoding="utf-8").splitlines()
    return len(lines) - (1 if file_format == "csv" else 0)


def test_landing_csv_is_what_the_streaming_job_reads(tmp_path: Path, swat_table: pa.Table) -> None:
    replay_to_directory(swat_table.slice(0, 3), tmp_path, rows_per_file=10, file_format="csv", prefix="p")
    lines = (tmp_path / "p-000000.csv").read_text(encoding="utf-8").splitlines()
    header = [h.strip('"') for h in lines[0].split(",")]
    assert header == swat_table.schema.names  # plant, timestamp, sensors..., label, then the optional columns
    first = lines[1].split(",")
    assert first[0] == '"swat"' and first[1] == '"2015-12-28T02:00:00.000000Z"'
    assert first[header.index("label")] == "1"


def test_a_concurrent_reader_never_sees_a_partial_file(tmp_path: Path, swat_table: pa.Table) -> None:
    big = pa.concat_tables([swat_table] * 20)  # 24,680 rows
    landing = tmp_path / "landing"
    landing.mkdir()
    done = threading.Event()
    error: list[BaseException] = []

    def produce() -> None:
        try:
            replay_to_directory(big, landing, rows_per_file=250, file_format="parquet", prefix="r")
        except BaseException as exc:  # surfaced below
            error.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    seen: dict[str, int] = {}
    while not done.is_set() or len(seen) < len(landing_files(landing)):
        for path in landing_files(landing):
            if path.name not in seen:
                seen[path.name] = pq.read_table(path).num_rows  # a partial Parquet file would not parse
    thread.join()
    assert not error
    assert len(seen) == 99 and sum(seen.values()) == big.num_rows
    assert set(seen.values()) == {250, 180}


def test_existing_file_is_never_overwritten(tmp_path: Path, swat_table: pa.Table) -> None:
    replay_to_directory(swat_table.slice(0, 10), tmp_path, rows_per_file=10, prefix="same")
    before = (tmp_path / "same-000000.csv").read_bytes()
    with pytest.raises(TidewatchIOError, match="same-000000.csv already exists"):
        replay_to_directory(swat_table.slice(10, 10), tmp_path, rows_per_file=10, prefix="same")
    assert (tmp_path / "same-000000.csv").read_bytes() == before
    assert_no_hidden_files(tmp_path)


def test_bad_arguments_are_config_errors(tmp_path: Path, swat_table: pa.Table) -> None:
    with pytest.raises(ConfigError, match="landing file format"):
        DirectorySink(tmp_path, "xml")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be non-empty, not start with"):
        DirectorySink(tmp_path, "csv", prefix=".hidden")
    with pytest.raises(ConfigError, match="speed must be a positive number"):
        replay(swat_table, DirectorySink(tmp_path), speed=0)
    with pytest.raises(ConfigError, match="rows per chunk"):
        replay(swat_table, DirectorySink(tmp_path), rows_per_chunk=0)


# ------------------------------------------------------------------------------------------------
# pacing and stopping
# ------------------------------------------------------------------------------------------------


class TimedSink:
    """A real sink that records when each chunk arrived (and what it held)."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.chunks: list[pa.Table] = []

    def write(self, chunk: pa.Table) -> None:
        self.arrivals.append(time.monotonic())
        self.chunks.append(chunk)

    def close(self) -> None:
        pass


def test_pacing_follows_the_data_clock_at_the_chosen_speed(swat_table: pa.Table) -> None:
    table = swat_table.slice(0, 13)  # 12 s of data
    sink = TimedSink()
    start = time.monotonic()
    replay(table, sink, speed=10.0, rows_per_chunk=3)  # chunks end at data seconds 2, 5, 8, 11, 12
    offsets = [a - start for a in sink.arrivals]
    due = [0.2, 0.5, 0.8, 1.1, 1.2]
    assert len(offsets) == 5
    for got, want in zip(offsets, due):
        assert want - 0.02 <= got <= want + 0.25, (offsets, due)
    assert pa.concat_tables(sink.chunks).equals(table)


def test_fast_replay_does_not_wait(swat_table: pa.Table) -> None:
    sink = TimedSink()
    start = time.monotonic()
    replay(swat_table, sink, speed=None, rows_per_chunk=50)  # 20 minutes of data
    assert time.monotonic() - start < 2.0


def test_stop_event_ends_after_complete_files(tmp_path: Path, swat_table: pa.Table) -> None:
    stop = threading.Event()
    result: list[ReplayStats] = []
    thread = threading.Thread(target=lambda: result.append(replay_to_directory(
        swat_table, tmp_path, speed=20.0, rows_per_file=5, prefix="s", stop=stop)))
    thread.start()
    time.sleep(1.0)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    [stats] = result
    assert stats.interrupted and 0 < stats.rows < swat_table.num_rows
    files = landing_files(tmp_path)
    assert len(files) == stats.chunks
    back = read_landing(tmp_path, "csv", swat_table.schema)
    assert back.equals(swat_table.slice(0, stats.rows))
    assert_no_hidden_files(tmp_path)


# ------------------------------------------------------------------------------------------------
# Kafka message format
# ------------------------------------------------------------------------------------------------


def test_kafka_json_lines_are_string_fields_in_the_operators_format(tmp_path: Path, swat_table: pa.Table) -> None:
    out = tmp_path / "messages.jsonl"
    with out.open("w", encoding="utf-8") as stream:
        stats = replay_to_kafka_jsonl(swat_table, stream, rows_per_chunk=100)
    assert stats.rows == swat_table.num_rows
    messages = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(messages) == swat_table.num_rows
    sensors = swat_table.schema.names[2:53]
    for message, row in zip(messages, swat_table.to_pylist()):
        assert list(message) == ["Timestamp", *sensors, "Normal_Attack", "plant"]
        assert all(isinstance(v, str) for v in message.values())
        assert dt.datetime.fromisoformat(message["Timestamp"]) == row["timestamp"]
        assert [float(message[s]) for s in sensors] == [row[s] for s in sensors]
        assert message["Normal_Attack"] == ("Attack" if row["label"] else "Normal")
        assert message["plant"] == "swat"


def test_kafka_messages_swat_clock_and_exact_operator_fields() -> None:
    table = read_swat(FIXTURES / "swat_quirks.csv").table
    messages = [json.loads(m) for m in kafka_messages(table, table.schema.names[2:53], time_style="swat",
                                                       plant_field=False)]
    assert [m["Timestamp"] for m in messages] == [
        "22/12/2015 4:30:00 PM", "22/12/2015 11:59:59 PM", "23/12/2015 12:00:00 AM",
        "23/12/2015 12:30:05 PM", "02/01/2016 9:05:07 AM"]
    assert [m["Normal_Attack"] for m in messages] == ["Normal", "Attack", "Attack", "Normal", "Attack"]
    assert len(messages[0]) == 53 and "plant" not in messages[0]
    assert messages[0]["FIT101"] == "0.001" and messages[0]["LIT101"] == "523.5"


def test_unknown_labels_are_empty_strings() -> None:
    table = read_swat(FIXTURES / "swat_quirks.csv").table
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.nulls(5, pa.int32()))
    messages = [json.loads(m) for m in kafka_messages(table, table.schema.names[2:53])]
    assert {m["Normal_Attack"] for m in messages} == {""}


# ------------------------------------------------------------------------------------------------
# the commands
# ------------------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidewatch", *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def test_convert_swat_csv_and_xlsx_to_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "swat.parquet"
    assert cli_main(["convert", str(FIXTURES / "swat_quirks.csv"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "swat_quirks.csv: 5 rows" in printed and f"wrote {out}: 5 rows" in printed
    assert pq.read_table(out).equals(read_swat(FIXTURES / "swat_quirks.csv").table)
    assert cli_main(["convert", str(FIXTURES / "swat_quirks.csv"), "-o", str(out)]) == 1  # exists
    assert "exists (use --overwrite" in capsys.readouterr().err


def test_convert_quarantines_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "bad.csv"
    lines = (FIXTURES / "swat_quirks.csv").read_text(encoding="utf-8-sig").splitlines()
    lines[2] = lines[2].replace(",0.25,", ",zero,")
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.parquet"
    assert cli_main(["convert", str(source), "-o", str(out)]) == 1
    assert "bad.csv: line 3, column 'FIT101': malformed" in capsys.readouterr().err
    assert cli_main(["convert", str(source), "-o", str(out), "--on-error", "quarantine"]) == 0
    printed = capsys.readouterr().out
    assert "bad.csv: 4 rows, 1 quarantined (malformed: 1)" in printed
    quarantine = pq.read_table(tmp_path / "out.quarantine.parquet").to_pylist()
    assert [(q["line"], q["column"], q["reason"]) for q in quarantine] == [(3, "FIT101", "malformed")]
    assert pq.read_metadata(out).num_rows == 4


def test_convert_plant_csv_folder(tmp_path: Path, shared_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "valve2.parquet"
    code = cli_main(["convert", str(shared_dir / "data" / "skab" / "valve2"), "-o", str(out),
                     "--plant-file", str(REPO / "plants" / "skab.yaml")])
    assert code == 0
    table = pq.read_table(out)
    assert table.num_rows == 1125 + 1063 + 1129 + 995
    assert f"wrote {out}: 4312 rows from 4 files" in capsys.readouterr().out


def test_convert_refuses_a_file_that_is_not_swat(tmp_path: Path, shared_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["convert", str(shared_dir / "data" / "skab" / "valve1" / "1.csv"), "-o", str(tmp_path / "x.parquet")])
    assert code == 1
    assert "not a SWaT A1 export: missing columns: Timestamp, FIT101" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_every_command_has_help() -> None:
    for command in ("convert", "replay"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and f"usage: tidewatch {command}" in result.stdout


def test_replay_cli_to_directory_and_stdout(tmp_path: Path, swat_table: pa.Table) -> None:
    source = tmp_path / "src.parquet"
    pq.write_table(swat_table, source)
    result = run_cli("replay", str(source), "--to", str(tmp_path / "landing"), "--fast", "--rows-per-file", "500",
                     "--format", "parquet", "--prefix", "cli")
    assert result.returncode == 0, result.stderr
    assert "done: 1234/1234 rows" in result.stderr
    assert read_landing(tmp_path / "landing", "parquet", swat_table.schema).equals(swat_table)

    result = run_cli("replay", str(source), "--kafka-jsonl", "-", "--fast", "--start-row", "1000", "--limit", "5",
                     "--no-plant-field")
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(messages) == 5 and all(isinstance(v, str) for m in messages for v in m.values())
    assert float(messages[0]["FIT101"]) == swat_table["FIT101"][1000].as_py()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_replay_cli_stops_cleanly_leaving_complete_files(tmp_path: Path, swat_table: pa.Table, sig: int) -> None:
    source = tmp_path / "src.parquet"
    pq.write_table(swat_table, source)
    landing = tmp_path / "landing"
    process = subprocess.Popen(
        [sys.executable, "-m", "tidewatch", "replay", str(source), "--to", str(landing), "--speed", "50",
         "--rows-per-file", "10", "--prefix", "ctrl"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not landing.exists() or len(landing_files(landing)) < 3):
        time.sleep(0.05)
    process.send_signal(sig)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "interrupted" in err and "resume with --start-row" in err
    resumed_at = int(err.rsplit("--start-row", 1)[1].split()[0])
    assert_no_hidden_files(landing)
    back = read_landing(landing, "csv", swat_table.schema)
    assert back.num_rows == resumed_at and 30 <= resumed_at < swat_table.num_rows
    assert back.equals(swat_table.slice(0, resumed_at))
    assert all(read_landing_file_rows(p, "csv") == 10 for p in landing_files(landing))

    # Resuming where it stopped completes the stream, every row exactly once.
    result = run_cli("replay", str(source), "--to", str(landing), "--fast", "--rows-per-file", "10",
                     "--prefix", "ctrl2", "--start-row", str(resumed_at))
    assert result.returncode == 0, result.stderr
    assert read_landing(landing, "csv", swat_table.schema).equals(swat_table)


def test_replay_schema_is_canonical(swat_table: pa.Table) -> None:
    sensors = swat_table.schema.names[2:53]
    assert swat_table.schema == canonical_schema(sensors, optional=["attack_id", "attacked_points"])


def _spark_available() -> bool:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False
    return subprocess.run(["java", "-version"], capture_output=True).returncode == 0


@pytest.mark.integration
@pytest.mark.skipif(not _spark_available(), reason="needs pyspark and a Java runtime")
def test_streaming_job_validation_accepts_every_replayed_row(tmp_path: Path, swat_table: pa.Table) -> None:
    """The landing files as the inference job reads them (all fields as strings, its validation): every
    row valid, none quarantined, values and times exact."""
    from tidewatch.spark.session import get_session
    from tidewatch.spark.validate import read_text, validate

    table = swat_table.slice(0, 300)
    sensors = table.schema.names[2:53]
    spark = get_session("tidewatch-test-replay", master="local[1]")
    for file_format in ("csv", "jsonl"):
        landing = tmp_path / file_format
        replay_to_directory(table, landing, rows_per_file=64, file_format=file_format)  # type: ignore[arg-type]
        df = read_text(spark.read, file_format, sensors, str(landing))  # as InferenceJob.input_stream reads them
        checked = validate(df, sensors, default_plant="swat")
        assert checked.quarantined.count() == 0, checked.quarantined.limit(3).collect()
        valid = checked.valid.orderBy("timestamp").toPandas()
        assert len(valid) == 300
        expected = table.to_pandas()
        assert (valid["timestamp"].dt.tz_localize("UTC") if valid["timestamp"].dt.tz is None
                else valid["timestamp"]).tolist() == expected["timestamp"].tolist()
        assert np.array_equal(valid[sensors].to_numpy(), expected[sensors].to_numpy())
        assert valid["label"].tolist() == expected["label"].tolist()
