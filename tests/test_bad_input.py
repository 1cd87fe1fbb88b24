"""Bad input through the whole path: a generated corpus of more than 1,000 malformed inputs (tests/corpus/
generate.py) for the file readers, canonical Parquet, the native kernels, the Kafka message parsing and the
streaming job's landing-file validation in Spark.

For every case the outcome is checked: a TidewatchError naming the file (and the columns at fault), or rows
that add up (kept + quarantined + blank = lines in; kept rows hold exactly the values written; each
quarantined row has the expected line, column and reason). Nothing may crash: a Rust panic surfaces as
pyo3's PanicException (a BaseException) and counts as a crash, like any exception that is not a
TidewatchError. Cases that a known bug breaks run as strict xfails (see corpus.generate.KNOWN_BUGS).

TIDEWATCH_SOAK=1 runs the corpus five times larger (TIDEWATCH_CORPUS_SCALE and TIDEWATCH_CORPUS_SEED to choose).
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from corpus.generate import (
    KNOWN_BUGS,
    ArrowCase,
    Corpus,
    KafkaCase,
    LandingCase,
    ParquetCase,
    TextCase,
    detector_reference,
    generate,
    swat_sensors,
)
from corpus.models import train_tiny_swat_model

import tidewatch
from tidewatch import TidewatchError
from tidewatch.readers import load_plant, packaged_plant_file, read_dataset, read_plant_csv, read_swat

SOAK = os.environ.get("TIDEWATCH_SOAK") == "1"
SCALE = int(os.environ.get("TIDEWATCH_CORPUS_SCALE", "5" if SOAK else "1"))
SEED = int(os.environ.get("TIDEWATCH_CORPUS_SEED", "20151228"))
SENSORS = swat_sensors()
READER_REASONS = {"missing", "malformed", "nan", "infinite", "nonexistent_local_time", "ambiguous_local_time",
                  "field_count", "encoding", "duplicate_timestamp", "out_of_order"}
# What the suite ran, for the summary at the end: cases by target, and crashes (must stay 0).
STATS: Counter[str] = Counter()

pytestmark = pytest.mark.timeout(600 if SOAK else 240)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return generate(tmp_path_factory.mktemp("corpus"), seed=SEED, scale=SCALE)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> tidewatch.Detector:
    path = train_tiny_swat_model(tmp_path_factory.mktemp("model") / "swat")
    return tidewatch.Detector.load(path, device="cpu")


def known(bug: str) -> Any:
    return pytest.param(bug, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[bug]), id=bug)


def crash(where: str, exc: BaseException) -> str:
    """Any exception that is not a TidewatchError is a crash (a panic is a BaseException)."""
    STATS["crashes"] += 1
    return f"{where}: CRASH {type(exc).__module__}.{type(exc).__name__}: {str(exc)[:300]}"


def names_word(message: str, word: str) -> bool:
    """`word` appears in `message` as a whole name (not inside a longer one)."""
    return re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", message) is not None


def fail_with(problems: list[str], total: int, what: str) -> None:
    if problems:
        shown = "\n  ".join(problems[:25])
        more = f"\n  ... and {len(problems) - 25} more" if len(problems) > 25 else ""
        pytest.fail(f"{len(problems)} problems in {total} {what} cases:\n  {shown}{more}")


# ------------------------------------------------------------------------------------------------
# text files: SWaT exports and SKAB-shaped plant CSVs
# ------------------------------------------------------------------------------------------------

_SKAB_PLANT = None


def read_text(case: TextCase, on_error: str) -> Any:
    global _SKAB_PLANT
    if case.target == "swat":
        return read_swat(case.path, on_error=on_error)  # type: ignore[arg-type]
    if _SKAB_PLANT is None:
        _SKAB_PLANT = load_plant(packaged_plant_file("skab"))
    return read_plant_csv(case.path, _SKAB_PLANT, on_error=on_error, unlabelled="error")  # type: ignore[arg-type]


def check_error(case: Any, exc: TidewatchError, allowed: Iterable[str] | None, fragments: Iterable[str]) -> list[str]:
    problems = []
    message = str(exc)
    if allowed is not None and type(exc).__name__ not in allowed:
        problems.append(f"{case.name}: raised {type(exc).__name__}, expected {'/'.join(allowed)}: {message[:200]}")
    if str(case.path) not in message:
        problems.append(f"{case.name}: the error does not name the file: {message[:200]}")
    for fragment in fragments:
        if not names_word(message, fragment):
            problems.append(f"{case.name}: the error does not name {fragment!r}: {message[:300]}")
    return problems


def check_text_case(case: TextCase) -> list[str]:
    STATS[case.target] += 1
    try:
        result = read_text(case, "quarantine")
    except TidewatchError as exc:
        if case.error or case.lenient:
            return check_error(case, exc, case.error, case.fragments)
        return [f"{case.name}: unexpected {type(exc).__name__}: {str(exc)[:300]}"]
    except BaseException as exc:  # noqa: BLE001 - a panic or any non-tidewatch exception is the finding
        return [crash(case.name, exc)]
    if case.error:
        return [f"{case.name}: expected {'/'.join(case.error)}, got {result.summary()}"]

    problems = []
    q = result.quarantined.to_pydict()
    # Nothing silently dropped: every line after the header is kept, quarantined, or blank.
    accounted = result.table.num_rows + result.quarantined.num_rows + result.blank_lines
    if accounted != case.data_lines:
        problems.append(f"{case.name}: {case.data_lines} lines in, {result.table.num_rows} kept + "
                        f"{result.quarantined.num_rows} quarantined + {result.blank_lines} blank = {accounted}")
    first, last = case.header_line + 1, case.header_line + case.data_lines
    for line, column, reason, source, raw in zip(q["line"], q["column"], q["reason"], q["source_file"], q["raw"]):
        if reason not in READER_REASONS:
            problems.append(f"{case.name}: line {line}: unknown quarantine reason {reason!r}")
        if not first <= line <= last:
            problems.append(f"{case.name}: quarantined line {line} is outside the data lines {first}..{last}")
        if source != str(case.path) or raw is None:
            problems.append(f"{case.name}: line {line}: quarantine lacks its file or raw text")
    if case.lenient:
        return problems

    actual: dict[int, tuple[str | None, str]] = {}
    for line, column, reason in zip(q["line"], q["column"], q["reason"]):
        if line in actual:
            problems.append(f"{case.name}: line {line} quarantined twice")
        actual[line] = (column, reason)
    for line in sorted(set(actual) | set(case.quarantine)):
        want, got = case.quarantine.get(line), actual.get(line)
        if want is None or got is None or (want != ("any",) and want != got):
            problems.append(f"{case.name}: line {line}: expected {want or 'kept'}, got {got or 'kept'}")
    if result.blank_lines != case.blank:
        problems.append(f"{case.name}: {result.blank_lines} blank lines counted, {case.blank} written")
    problems += compare_rows(case, result.table)
    problems += check_raise_mode(case, result)
    return problems


def compare_rows(case: TextCase, table: pa.Table) -> list[str]:
    if table.num_rows != len(case.rows):
        return [f"{case.name}: {table.num_rows} rows kept, expected {len(case.rows)}"]
    times = table["timestamp"].cast(pa.int64()).to_pylist()
    problems = []
    sensors = list(table.schema.names[2: 2 + len(case.rows[0].values)]) if case.rows else []
    values = np.column_stack([table[s].to_numpy() for s in sensors]) if case.rows else None
    label_columns = table.schema.names[2 + len(sensors):]
    labels = [table[c].to_pylist() for c in label_columns]
    for i, truth in enumerate(case.rows):
        if times[i] != truth.time_us:
            problems.append(f"{case.name}: row {i}: time {times[i]}, expected {truth.time_us}")
        if not np.array_equal(values[i], np.asarray(truth.values)):  # type: ignore[index]
            diff = [s for s, a, b in zip(sensors, values[i], truth.values) if a != b]  # type: ignore[index]
            problems.append(f"{case.name}: row {i}: values differ in {diff[:5]}")
        got_labels = [col[i] for col in labels]
        if got_labels != truth.labels:
            problems.append(f"{case.name}: row {i}: labels {got_labels}, expected {truth.labels}")
        if len(problems) > 3:
            break
    return problems


def check_raise_mode(case: TextCase, quarantined: Any) -> list[str]:
    """on_error="raise": the first bad line raises InputError naming file, line, column and reason."""
    try:
        result = read_text(case, "raise")
    except TidewatchError as exc:
        if not case.quarantine:
            return [f"{case.name}: raise mode raised for a clean file: {exc}"]
        message = str(exc)
        line = min(case.quarantine)
        want = case.quarantine[line]
        problems = []
        if type(exc).__name__ != "InputError" or str(case.path) not in message or f"line {line}" not in message:
            problems.append(f"{case.name}: raise mode: expected InputError naming the file and line {line}: "
                            f"{type(exc).__name__}: {message[:300]}")
        if want != ("any",):
            column, reason = want
            if (column is not None and repr(column) not in message) or reason not in message:
                problems.append(f"{case.name}: raise mode: the error does not name {column!r} / {reason}: "
                                f"{message[:300]}")
        for fragment in case.raise_fragments:
            if fragment not in message:
                problems.append(f"{case.name}: raise mode: the error does not say {fragment!r}: {message[:300]}")
        return problems
    except BaseException as exc:  # noqa: BLE001
        return [crash(f"{case.name} (raise mode)", exc)]
    if case.quarantine:
        return [f"{case.name}: raise mode returned {result.summary()} although lines are bad"]
    if not result.table.equals(quarantined.table):
        return [f"{case.name}: raise mode and quarantine mode read different tables"]
    return []


@pytest.mark.parametrize("target", ["swat", "skab"])
def test_text_corpus(corpus: Corpus, target: str) -> None:
    cases = [c for c in corpus.text if c.target == target and c.known_bug is None]
    assert len(cases) > 300
    problems = [p for case in cases for p in check_text_case(case)]
    fail_with(problems, len(cases), f"{target} CSV")


def test_text_corpus_covers_every_kind(corpus: Corpus) -> None:
    from corpus.generate import TEXT_KINDS

    kinds = {c.kind for c in corpus.text}
    assert kinds == set(TEXT_KINDS)
    assert sum(1 for c in corpus.text if c.lenient) >= 100
    assert sum(1 for c in corpus.text if c.error) >= 80
    used = {c.known_bug for group in (corpus.text, corpus.parquet, corpus.arrow, corpus.kafka, corpus.landing)
            for c in group if c.known_bug}
    assert used == set(KNOWN_BUGS), "every known bug has cases, and every case's bug is listed"


# ------------------------------------------------------------------------------------------------
# the native kernels: sensor_matrix and the Detector on record batches
# ------------------------------------------------------------------------------------------------


def matrix_reference(batch: pa.RecordBatch, sensors: list[str]) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """(values, valid, problems) as sensor_matrix must give them, computed with pyarrow and numpy."""
    columns = []
    for s in sensors:
        array = batch.column(batch.schema.get_field_index(s))
        columns.append(np.asarray(pc.cast(array, pa.float64(), safe=False).to_numpy(zero_copy_only=False),
                                  dtype=np.float64))
    values = np.column_stack(columns) if columns else np.zeros((batch.num_rows, 0))
    nulls = np.column_stack([np.asarray(batch.column(batch.schema.get_field_index(s)).is_null().to_numpy(
        zero_copy_only=False)) for s in sensors])
    problems = []
    valid = np.ones(batch.num_rows, dtype=bool)
    for i in range(batch.num_rows):
        for j, s in enumerate(sensors):
            kind = "null" if nulls[i, j] else "nan" if np.isnan(values[i, j]) else \
                "infinite" if np.isinf(values[i, j]) else None
            if kind:
                problems.append((i, s, kind))
                valid[i] = False
                break
    return values, valid, problems


def check_matrix(case: ArrowCase) -> list[str]:
    batch = case.batch if isinstance(case.batch, pa.RecordBatch) else case.batch.combine_chunks().to_batches()[0]
    swat = tidewatch.SensorSet.swat()
    try:
        values, valid, problems = tidewatch.sensor_matrix(batch, swat, "mask")
    except TidewatchError as exc:
        if case.matrix_ok:
            return [f"{case.name}: sensor_matrix raised {type(exc).__name__}: {exc}"]
        return check_error_plain(case, exc, ("SchemaError",), case.fragments)
    except BaseException as exc:  # noqa: BLE001
        return [crash(f"{case.name} sensor_matrix", exc)]
    if not case.matrix_ok:
        return [f"{case.name}: sensor_matrix accepted a batch it must refuse"]
    ref_values, ref_valid, ref_problems = matrix_reference(batch, SENSORS)
    out = []
    if values.shape != (batch.num_rows, len(SENSORS)):
        return [f"{case.name}: values shape {values.shape}"]
    if not np.array_equal(valid, ref_valid):
        out.append(f"{case.name}: valid mask differs from the reference at rows {np.flatnonzero(valid != ref_valid)}")
    if not np.allclose(values[ref_valid], ref_values[ref_valid], rtol=1e-12, atol=0):
        out.append(f"{case.name}: values of valid rows differ from the reference")
    if [tuple(p) for p in problems] != ref_problems:
        out.append(f"{case.name}: problems {problems[:4]} != reference {ref_problems[:4]}")
    try:  # the strict policy raises on the first bad value, naming its row and column
        tidewatch.sensor_matrix(batch, swat, "error")
        if ref_problems:
            out.append(f"{case.name}: invalid='error' accepted bad values")
    except tidewatch.InputError as exc:
        if not ref_problems or not re.search(r"row \d+, column '\w+'", str(exc)):
            out.append(f"{case.name}: invalid='error' raised {exc}")
    except BaseException as exc:  # noqa: BLE001
        out.append(crash(f"{case.name} sensor_matrix(error)", exc))
    return out


def check_error_plain(case: Any, exc: TidewatchError, allowed: Iterable[str], fragments: Iterable[str]) -> list[str]:
    problems = []
    if type(exc).__name__ not in allowed:
        problems.append(f"{case.name}: raised {type(exc).__name__}, expected {'/'.join(allowed)}: {exc}")
    for fragment in fragments:
        if fragment not in str(exc):
            problems.append(f"{case.name}: the error does not name {fragment!r}: {str(exc)[:300]}")
    return problems


def check_scoring(name: str, detector: tidewatch.Detector, data: pa.RecordBatch | pa.Table,
                  error: tuple[str, ...] | None = None, fragments: Iterable[str] = (), lenient: bool = False
                  ) -> list[str]:
    """Scores `data` on a fresh stream and checks every row's outcome against the scoring contract."""
    whole = data if isinstance(data, pa.RecordBatch) else (
        data.combine_chunks().to_batches()[0] if data.num_rows else None)
    detector.reset_stream()
    aggregate = tidewatch.BatchAggregate(detector.sensors)
    try:
        out = detector.score(data, aggregate=aggregate)
    except TidewatchError as exc:
        if lenient:
            return []
        if error:
            return check_error_plain(type("C", (), {"name": name}), exc, error, fragments)
        return [f"{name}: Detector.score raised {type(exc).__name__}: {str(exc)[:300]}"]
    except BaseException as exc:  # noqa: BLE001
        return [crash(f"{name} Detector.score", exc)]
    if error:
        return [f"{name}: Detector.score accepted a batch it must refuse ({'/'.join(error)})"]
    out = pa.table(out) if isinstance(out, pa.RecordBatch) else out
    if lenient:
        rows_in = 0 if whole is None else whole.num_rows
        return [] if out.num_rows == rows_in else [f"{name}: {out.num_rows} output rows for {rows_in} input rows"]
    reference = [] if whole is None else detector_reference(whole, SENSORS, detector.window, detector.sensors.plant)
    assert reference is not None
    expected = [r for r in reference if r[0] != "context"]
    problems = []
    if out.num_rows != len(expected):
        return [f"{name}: {out.num_rows} output rows for {len(expected)} input rows (context rows excluded)"]
    status, reason, score, flag = (out[c].to_pylist() for c in ("status", "reason", "score", "flag"))
    for i, (want_status, want_reason) in enumerate(expected):
        if (status[i], reason[i]) != (want_status, want_reason):
            problems.append(f"{name}: output row {i}: {status[i]}/{reason[i]}, expected {want_status}/{want_reason}")
            if len(problems) > 3:
                break
        if status[i] == "scored" and (score[i] is None or math.isnan(score[i]) or (
                not math.isfinite(score[i]) and not flag[i])):
            problems.append(f"{name}: output row {i}: scored with score {score[i]} and flag {flag[i]}")
            break
    counts = Counter(s for s, _ in expected)
    agg = aggregate.counts()
    if (agg["scored"], agg["warmup"], agg["quarantined"]) != (counts["scored"], counts["warmup"], counts["quarantined"]):
        problems.append(f"{name}: metrics aggregate counts {agg} do not match the output {dict(counts)}")
    reasons = Counter(r for s, r in expected if s == "quarantined")
    if dict(aggregate.quarantined_by_reason) != dict(reasons):
        problems.append(f"{name}: aggregate quarantine reasons {aggregate.quarantined_by_reason} != {dict(reasons)}")
    return problems


def test_arrow_corpus(corpus: Corpus, detector: tidewatch.Detector) -> None:
    cases = [c for c in corpus.arrow if c.known_bug is None]
    assert len(cases) > 80
    problems = []
    for case in cases:
        STATS["arrow"] += 1
        problems += check_matrix(case)
        problems += check_scoring(case.name, detector, case.batch, case.error, case.fragments, case.lenient)
    fail_with(problems, len(cases), "Arrow batch")


def test_huge_value_regression(detector: tidewatch.Detector) -> None:
    """Once a known bug: 12 rows of the tiny SWaT model's plant, row 6 with LIT101=1e39 (finite in float64,
    infinite in float32 once scaled), MV101=1e308 and P101=-1e308 scored NaN, unflagged. Each row must be
    quarantined, or scored with a score that is a number and flagged if infinite; the windows holding the
    absurd row are flagged and name one of its sensors."""
    from corpus.generate import canonical_table

    table = canonical_table(12, np.random.default_rng(3))
    for column, value in (("LIT101", 1e39), ("MV101", 1e308), ("P101", -1e308)):
        values = table[column].to_pylist()
        values[6] = value
        table = table.set_column(table.schema.get_field_index(column), column, pa.array(values))
    detector.reset_stream()
    out = detector.score(table.combine_chunks().to_batches()[0])
    rows = out.select(["status", "score", "flag", "top_sensors"]).to_pylist()
    for row in rows:
        if row["status"] == "scored":
            assert not math.isnan(row["score"]) and (math.isfinite(row["score"]) or row["flag"]), row
    # A row's score looks at its window's last focus_rows steps: the rows whose focus holds the absurd row.
    focus = detector.manifest["thresholds"].get("focus_rows") or detector.window
    covering = [r for i, r in enumerate(rows) if 6 <= i < 6 + focus and r["status"] == "scored"]
    assert covering, "some scored window holds the absurd row"
    for row in covering:
        assert row["flag"], row
        assert {"LIT101", "MV101", "P101"} & set(row["top_sensors"].split(",")), row


# ------------------------------------------------------------------------------------------------
# canonical Parquet through read_dataset, then the Detector
# ------------------------------------------------------------------------------------------------


def check_parquet_case(case: ParquetCase, detector: tidewatch.Detector) -> list[str]:
    STATS["parquet"] += 1
    try:
        result = read_dataset(case.path, sensors=SENSORS)
    except TidewatchError as exc:
        if case.error or case.lenient:
            return check_error(case, exc, case.error, case.fragments)
        return [f"{case.name}: unexpected {type(exc).__name__}: {str(exc)[:300]}"]
    except BaseException as exc:  # noqa: BLE001
        return [crash(case.name, exc)]
    if case.error:
        return [f"{case.name}: expected {'/'.join(case.error)}, read {result.table.num_rows} rows"]
    if not case.lenient and result.table.num_rows != case.rows:
        return [f"{case.name}: {result.table.num_rows} rows read, the file holds {case.rows}"]
    if case.score:
        return check_scoring(case.name, detector, result.table)
    return []


def test_parquet_corpus(corpus: Corpus, detector: tidewatch.Detector) -> None:
    cases = [c for c in corpus.parquet if c.known_bug is None]
    assert len(cases) > 80
    problems = [p for case in cases for p in check_parquet_case(case, detector)]
    fail_with(problems, len(cases), "Parquet")


# ------------------------------------------------------------------------------------------------
# Spark: Kafka messages and landing files through the streaming job's validation
# ------------------------------------------------------------------------------------------------


def _spark_available() -> bool:
    import subprocess

    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False
    return subprocess.run(["java", "-version"], capture_output=True).returncode == 0


spark_only = pytest.mark.skipif(not _spark_available(), reason="needs pyspark and a Java runtime")


@pytest.fixture(scope="module")
def spark() -> Any:
    from tidewatch.spark.session import get_session

    return get_session("tidewatch-test-bad-input", master="local[2]")


class _KafkaSource:
    """Stands in for Spark's Kafka source (no broker here): `load()` gives the messages as a DataFrame with
    Kafka's binary `value` column; tidewatch.spark.kafka's parsing and everything after it runs for real."""

    def __init__(self, frame: Any) -> None:
        self.frame = frame

    def format(self, _name: str) -> _KafkaSource:
        return self

    def option(self, *_: Any) -> _KafkaSource:
        return self

    def load(self) -> Any:
        return self.frame


class _SparkWithKafka:
    def __init__(self, frame: Any) -> None:
        self.readStream = _KafkaSource(frame)


def run_validation(frame: Any) -> tuple[pa.Table, pa.Table]:
    """The streaming job's first steps on `frame`: validate, then split_duplicates. Returns (valid rows:
    plant, t (UTC microseconds), sensors; quarantined rows: plant, reason, raw)."""
    from pyspark.sql import functions as F

    from tidewatch.spark.validate import split_duplicates, validate

    checked = validate(frame, SENSORS, "swat")
    kept, duplicates = split_duplicates(checked.valid, None)
    valid = kept.select("plant", F.unix_micros("timestamp").alias("t"), *[F.col(f"`{s}`") for s in SENSORS])
    quarantined = checked.quarantined.unionByName(duplicates).select("plant", "reason", "raw")
    return valid.toArrow(), quarantined.toArrow()


def compare_spark(expected: list[tuple[str, Any]], valid: pa.Table, quarantined: pa.Table, rows_in: int,
                  what: str) -> list[str]:
    """`expected`: (case name, SparkExpect) for every input row. Outcomes are compared per plant key as
    multisets; valid rows' times and values exactly; the text of a line or message that cannot be read
    into fields must be its quarantined row's raw; and rows in = valid + quarantined."""
    problems = []
    if valid.num_rows + quarantined.num_rows != rows_in:
        problems.append(f"{what}: {rows_in} rows in, {valid.num_rows} valid + {quarantined.num_rows} quarantined")
    want = Counter((e.plant, e.outcome) for _, e in expected)
    got = Counter((p, "valid") for p in valid["plant"].to_pylist())
    got.update(zip(quarantined["plant"].to_pylist(), quarantined["reason"].to_pylist()))
    for key in sorted(set(want) | set(got), key=str):
        if want[key] != got[key]:
            case = next((n for n, e in expected if (e.plant, e.outcome) == key), None) or next(
                (n for n, e in expected if e.plant == key[0]), "?")
            problems.append(f"{what}: {case}: plant {key[0]!r} outcome {key[1]!r}: expected {want[key]}, got {got[key]}")
    kept_raw = Counter(zip(quarantined["plant"].to_pylist(), quarantined["reason"].to_pylist(),
                           quarantined["raw"].to_pylist()))
    for name, e in expected:
        if e.raw is not None:
            if kept_raw[(e.plant, e.outcome, e.raw)] > 0:
                kept_raw[(e.plant, e.outcome, e.raw)] -= 1
            else:
                problems.append(f"{what}: {name}: no row quarantined as {e.outcome!r} with raw {e.raw[:80]!r}")
    rows = {(p, t): i for i, (p, t) in enumerate(zip(valid["plant"].to_pylist(), valid["t"].to_pylist()))}
    columns = {s: valid[s].to_pylist() for s in SENSORS}
    for name, e in expected:
        if e.outcome != "valid" or e.time_us is None:
            continue
        i = rows.get((e.plant, e.time_us))
        if i is None:
            problems.append(f"{what}: {name}: no valid row of plant {e.plant!r} at {e.time_us}")
            continue
        for s, v in (e.values or {}).items():
            if columns[s][i] != v:
                problems.append(f"{what}: {name}: {s} = {columns[s][i]!r}, written {v!r}")
                break
    return problems


def kafka_frame(spark: Any, cases: list[KafkaCase]) -> Any:
    from tidewatch.spark.kafka import kafka_stream

    raw = spark.createDataFrame([(bytearray(m),) for c in cases for m in c.messages], "value binary")
    return kafka_stream(_SparkWithKafka(raw), "localhost:9092", "ics-sensor-data", SENSORS, "swat")


def check_kafka(spark: Any, cases: list[KafkaCase]) -> list[str]:
    STATS["kafka"] += len(cases)
    valid, quarantined = run_validation(kafka_frame(spark, cases))
    expected = [(c.name, e) for c in cases for e in c.expected]
    return compare_spark(expected, valid, quarantined, sum(len(c.messages) for c in cases), "kafka")


@spark_only
@pytest.mark.integration
def test_kafka_messages(corpus: Corpus, spark: Any) -> None:
    cases = [c for c in corpus.kafka if c.known_bug is None]
    assert len(cases) > 100
    fail_with(check_kafka(spark, cases), len(cases), "Kafka message")


def landing_frame(spark: Any, directory: Path, file_format: str) -> Any:
    """The streaming job's landing-file read (inference.InferenceJob.input_stream), as a batch read."""
    from tidewatch.spark.validate import read_text

    return read_text(spark.read, file_format, SENSORS, str(directory))


def check_landing(spark: Any, cases: list[LandingCase]) -> list[str]:
    STATS[f"landing-{cases[0].file_format}"] += len(cases)
    directory = cases[0].path.parent
    assert all(c.path.parent == directory for c in cases)
    valid, quarantined = run_validation(landing_frame(spark, directory, cases[0].file_format))
    expected = [(c.name, e) for c in cases for e in c.expected]
    rows_in = sum(len(c.expected) for c in cases)
    return compare_spark(expected, valid, quarantined, rows_in, f"landing-{cases[0].file_format}")


@spark_only
@pytest.mark.integration
@pytest.mark.parametrize("file_format", ["csv", "jsonl"])
def test_landing_files(corpus: Corpus, spark: Any, file_format: str) -> None:
    cases = [c for c in corpus.landing if c.file_format == file_format and c.known_bug is None]
    assert len(cases) >= 15
    fail_with(check_landing(spark, cases), len(cases), f"landing {file_format}")


# ------------------------------------------------------------------------------------------------
# the summary: at least 1,000 cases, no crash
# ------------------------------------------------------------------------------------------------


def test_corpus_summary(corpus: Corpus, capsys: pytest.CaptureFixture[str]) -> None:
    counts = corpus.counts()
    assert counts["total"] >= 1000, counts
    assert STATS["crashes"] == 0, STATS
    with capsys.disabled():
        tried = {k: v for k, v in STATS.items() if k != "crashes"}
        print(f"\nbad-input corpus: {counts['total']} cases generated {counts}; checked in this run: {tried}; "
              f"crashes: {STATS['crashes']}")
