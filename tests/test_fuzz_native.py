"""Property tests of the native entry points through the bindings (hypothesis): random schemas, types,
nulls and NaNs for sensor_matrix; random text for the plant-file, scaler and aggregate parsers; random
shapes and keys for WindowStream; random, truncated and bit-flipped model artifacts for Detector.load.

The property everywhere: the call returns a result consistent with a numpy/pyarrow reference, or raises a
TidewatchError subclass (TypeError where Python itself refuses the argument type). A Rust panic surfaces as
pyo3's PanicException, a BaseException that none of these handlers catch, so any panic fails the test.
Known bugs run as strict xfails with their exact input.

TIDEWATCH_SOAK=1 multiplies the examples tried by 20.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from corpus.generate import canonical_table
from corpus.models import train_tiny_swat_model
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import tidewatch
from tidewatch import (
    BatchAggregate,
    ConfigError,
    InputError,
    MetricsRegistry,
    ModelError,
    Scaler,
    ScalerStats,
    SchemaError,
    SensorSet,
    TidewatchError,
    WindowStream,
)

SOAK = os.environ.get("TIDEWATCH_SOAK") == "1"
EXAMPLES = 20 if SOAK else 1


def fuzz(examples: int, *, shrink: bool = True) -> Any:
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.target, Phase.shrink] if shrink else [])
    return settings(max_examples=examples * EXAMPLES, deadline=None, phases=phases,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])


pytestmark = pytest.mark.timeout(1800 if SOAK else 300)

# ------------------------------------------------------------------------------------------------
# sensor_matrix
# ------------------------------------------------------------------------------------------------

NUMERIC_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(),
                 pa.float16(), pa.float32(), pa.float64(), pa.decimal128(12, 3)]
OTHER_TYPES = [pa.string(), pa.large_string(), pa.bool_(), pa.binary(), pa.date32(), pa.timestamp("us"),
               pa.null(), pa.decimal256(40, 2), pa.list_(pa.float64()), pa.dictionary(pa.int8(), pa.string())]
# Column names cross the Arrow C data interface as C strings, so a NUL would cut them short: none here.
names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=0, max_size=8)


def numeric_array(draw: Any, dtype: pa.DataType, n: int) -> pa.Array:
    nulls = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        special = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 5e-324])
        floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), special)
        if pa.types.is_decimal(dtype):
            floats = st.floats(-1e8, 1e8, allow_nan=False)
        values = draw(st.lists(floats, min_size=n, max_size=n))
        if pa.types.is_decimal(dtype):
            values = [round(v, 3) for v in values]
        array = pa.array(values, pa.float64())
        array = pc.cast(array, dtype, safe=False)
    else:
        info = np.iinfo(dtype.to_pandas_dtype())
        values = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=n, max_size=n))
        array = pa.array(values, dtype)
    mask = pa.array(nulls)
    return pc.if_else(mask, pa.scalar(None, dtype), array) if any(nulls) else array


def other_array(dtype: pa.DataType, n: int) -> pa.Array:
    """A column of a type that holds no sensor readings."""
    if pa.types.is_null(dtype):
        return pa.nulls(n)
    if pa.types.is_dictionary(dtype):
        return pa.array(["a"] * n).dictionary_encode().cast(dtype)
    if pa.types.is_date32(dtype) or pa.types.is_decimal(dtype):
        return pa.array([1] * n, pa.int32()).cast(dtype)
    if pa.types.is_timestamp(dtype):
        return pa.array([1] * n, pa.int64()).cast(dtype)
    sample = {"string": "1.5", "large_string": "2", "bool": True, "binary": b"3"}.get(str(dtype), [1.0])
    return pa.array([sample] * n, dtype)


@st.composite
def sensor_batches(draw: Any) -> tuple[SensorSet, pa.RecordBatch, dict[str, str]]:
    """A random sensor set and a batch for it: sensors present or not, numeric or not, nulls, NaNs,
    extra and duplicated columns, a slice at an offset. Returns (set, batch, {sensor: 'missing'|'type'})."""
    sensors = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    plant = SensorSet("p", sensors, [("s", sensors)])
    n = draw(st.integers(0, 30))
    offset = draw(st.integers(0, 5))
    columns: list[tuple[str, pa.Array]] = []
    status: dict[str, str] = {}
    for s in sensors:
        kind = draw(st.sampled_from(["numeric"] * 8 + ["missing", "other"]))
        if kind == "missing":
            status[s] = "missing"
            continue
        if kind == "other":
            status[s] = "type"
            columns.append((s, other_array(draw(st.sampled_from(OTHER_TYPES)), n + offset)))
        else:
            columns.append((s, numeric_array(draw, draw(st.sampled_from(NUMERIC_TYPES)), n + offset)))
    for extra in draw(st.lists(names.filter(lambda x: x not in sensors), max_size=3)):
        columns.append((extra, pa.array(["x"] * (n + offset))))
    if columns and draw(st.booleans()):  # a second column with a sensor's name: the first one counts
        name, _ = draw(st.sampled_from(columns))
        columns.append((name, pa.array([math.nan] * (n + offset))))
    order = draw(st.permutations(range(len(columns))))
    columns = [columns[i] for i in order]
    if columns:
        batch = pa.RecordBatch.from_arrays([c for _, c in columns], names=[nm for nm, _ in columns])
    else:
        batch = pa.RecordBatch.from_pydict({"_": pa.nulls(n + offset)})
    return plant, batch.slice(offset, n), status


def first_column(batch: pa.RecordBatch, name: str) -> pa.Array:
    return batch.column(batch.schema.names.index(name))


@fuzz(300)
@given(sensor_batches())
def test_sensor_matrix_never_panics_and_agrees_with_numpy(case: tuple[SensorSet, pa.RecordBatch, dict[str, str]]) -> None:
    plant, batch, status = case
    sensors = plant.sensors
    missing = [s for s in sensors if s not in batch.schema.names]
    # A sensor whose first column of that name is not numeric (a later duplicate does not count).
    wrong = [s for s in sensors if s not in missing and not (
        pa.types.is_integer(first_column(batch, s).type) or pa.types.is_floating(first_column(batch, s).type)
        or isinstance(first_column(batch, s).type, pa.Decimal128Type))]
    try:
        values, valid, problems = tidewatch.sensor_matrix(batch, plant, "mask")
    except SchemaError as exc:
        assert missing or wrong, f"refused a readable batch: {exc}"
        if missing:
            assert all(repr(s)[1:-1] in str(exc) or s in str(exc) for s in missing), str(exc)
        else:
            assert f"'{wrong[0]}'" in str(exc), str(exc)
        return
    assert not missing and not wrong, f"accepted a batch lacking {missing} / with non-numeric {wrong}"
    n = batch.num_rows
    assert values.shape == (n, len(sensors)) and valid.shape == (n,)
    expected_valid = np.ones(n, dtype=bool)
    expected_problems = []
    for i in range(n):
        for j, s in enumerate(sensors):
            cell = first_column(batch, s)[i]
            v = None if not cell.is_valid else float(cell.as_py())
            kind = "null" if v is None else "nan" if math.isnan(v) else "infinite" if math.isinf(v) else None
            if kind:
                expected_problems.append((i, s, kind))
                expected_valid[i] = False
                break
            assert values[i, j] == v or math.isclose(values[i, j], v, rel_tol=1e-12), (i, s, values[i, j], v)
    assert valid.tolist() == expected_valid.tolist()
    assert [tuple(p) for p in problems] == expected_problems
    try:
        tidewatch.sensor_matrix(batch, plant, "error")
        assert not expected_problems
    except InputError as exc:
        assert expected_problems and "row " in str(exc) and "column " in str(exc)


def test_sensor_matrix_refuses_unknown_policy_and_non_batches() -> None:
    batch = canonical_table(3, np.random.default_rng(0)).to_batches()[0]
    with pytest.raises(ConfigError, match="invalid"):
        tidewatch.sensor_matrix(batch, SensorSet.swat(), "ignore")
    for not_a_batch in (None, 3, "batch", {"FIT101": [1.0]}, np.zeros((3, 51))):
        with pytest.raises((TypeError, ValueError, TidewatchError)):
            tidewatch.sensor_matrix(not_a_batch, SensorSet.swat())


# ------------------------------------------------------------------------------------------------
# plant files: SensorSet.from_text / from_json / the constructor
# ------------------------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False),
                    names, st.sampled_from(["a", "b", "c", "P1", "P2"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                            st.dictionaries(names, inner, max_size=5)), max_leaves=20)


@st.composite
def plant_documents(draw: Any) -> dict[str, Any]:
    """Documents shaped like plant files, mostly valid-looking, with random mistakes."""
    sensors = draw(st.lists(st.sampled_from(["a", "b", "c", "d", ""]) | names, max_size=6))
    stage_names = draw(st.lists(st.sampled_from(["P1", "P2", "P3"]) | names, max_size=4))
    stages = {s: draw(st.lists(st.sampled_from(sensors) if sensors else names, max_size=4)) for s in stage_names}
    doc: dict[str, Any] = {"plant": draw(names | st.integers()), "sensors": sensors, "stages": stages}
    for key in draw(st.lists(st.sampled_from(["plant", "sensors", "stages"]), max_size=2)):
        if draw(st.booleans()):
            doc.pop(key, None)
        else:
            doc[key] = draw(json_values)
    if draw(st.booleans()):
        doc[draw(st.sampled_from(["csv", "extra", "sensor"]))] = draw(json_values)
    return doc


def check_sensor_set(s: SensorSet) -> None:
    """A SensorSet that was accepted is consistent, and every accessor works."""
    assert len(set(s.sensors)) == len(s.sensors) == len(s) > 0
    assert len(s.stages) == len(s.sensors)
    assert set(s.stages) <= set(s.stage_names)
    for sensor, stage in zip(s.sensors, s.stages):
        assert s.stage_of(sensor) == stage
    assert SensorSet.from_json(s.to_json()) == s
    repr(s)


@fuzz(300)
@given(st.one_of(st.text(max_size=300), plant_documents().map(yaml.safe_dump),
                 plant_documents().map(json.dumps)))
def test_sensor_set_from_text_never_panics(text: str) -> None:
    try:
        s = SensorSet.from_text(text)
    except ConfigError:
        return
    check_sensor_set(s)


@fuzz(200)
@given(st.text(max_size=50), st.lists(names, max_size=5), st.lists(st.tuples(names, st.lists(names, max_size=4)),
                                                                   max_size=4))
def test_sensor_set_constructor_never_panics(plant: str, sensors: list[str], stages: list[tuple[str, list[str]]]) -> None:
    try:
        s = SensorSet(plant, sensors, stages)
    except ConfigError:
        return
    check_sensor_set(s)


@pytest.mark.parametrize("text", [
    "[" * 100_000,  # deep nesting
    "a: &a [" + ",".join(["x"] * 50) + "]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 50) + "]\n" for i in range(8)),  # laughs
    "plant: p\nsensors: [a]\nstages: {P1: [a]}\n" + "x" * 5_000_000,
    "\x00\xff",
    "plant: !!python/object/apply:os.system ['true']\nsensors: [a]\nstages: {P1: [a]}\n",
])
@pytest.mark.timeout(30)
def test_sensor_set_from_text_hostile_documents(text: str) -> None:
    with pytest.raises(ConfigError):
        SensorSet.from_text(text)


@fuzz(200)
@given(st.text(max_size=200))
def test_sensor_set_from_json_random_text(text: str) -> None:
    try:
        s = SensorSet.from_json(text)
    except ConfigError:
        return
    check_sensor_set(s)


@st.composite
def sensor_set_json(draw: Any) -> str:
    """The serialised form of a SensorSet (as Spark jobs ship it to executors), with random field values."""
    sensors = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True))
    stages = draw(st.lists(st.sampled_from(["P1", "P2"]), min_size=0, max_size=2, unique=True))
    index = draw(st.lists(st.integers(0, 4), min_size=0, max_size=4))
    return json.dumps({"plant": "x", "sensors": sensors, "stages": stages, "stage_index": index})


@fuzz(100, shrink=False)
@given(sensor_set_json())
def test_sensor_set_from_json_checks_what_it_reads(text: str) -> None:
    try:
        s = SensorSet.from_json(text)
    except ConfigError:
        return
    check_sensor_set(s)


def test_sensor_set_from_json_regression() -> None:
    try:
        s = SensorSet.from_json('{"plant":"x","sensors":["a"],"stages":[],"stage_index":[5]}')
    except ConfigError:
        return
    try:
        s.stages
    except BaseException as exc:  # noqa: BLE001 - the panic, re-raised as a plain failure
        pytest.fail(f"{type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------------------------
# scaler statistics and scalers from JSON
# ------------------------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def stats_json(draw: Any) -> str:
    columns = draw(st.lists(st.fixed_dictionaries({
        "count": st.integers(-1, 2**64), "mean": finite, "m2": finite, "min": finite, "max": finite}), max_size=4))
    for c in columns:
        if draw(st.integers(0, 9)) == 0:
            c.pop(draw(st.sampled_from(sorted(c))))
    doc: Any = {"columns": columns}
    if draw(st.integers(0, 9)) == 0:
        doc = draw(json_values)
    return json.dumps(doc)


@fuzz(300)
@given(st.one_of(st.text(max_size=200), stats_json()), st.lists(names, max_size=5))
def test_scaler_stats_from_json_never_panics(text: str, labels: list[str]) -> None:
    try:
        stats = ScalerStats.from_json(text)
    except InputError:
        return
    twin = ScalerStats.from_json(stats.to_json())
    assert twin.to_json() == stats.to_json()
    for other in (twin, ScalerStats(0), ScalerStats(3)):
        try:
            stats.merge(other)
        except InputError:
            pass
    for kind in ("minmax", "standard", "other"):
        try:
            scaler = stats.finish(kind, labels)
        except (InputError, ConfigError):
            continue
        assert len(scaler.offset) == len(scaler.scale)
        scaler.transform(np.ones((2, len(scaler.offset))))
    k = len(json.loads(stats.to_json())["columns"])
    stats.update(np.ones((3, k)))
    with pytest.raises(InputError):
        stats.update(np.ones((3, k + 1)))


@st.composite
def scaler_json(draw: Any, same_length: bool) -> str:
    k = draw(st.integers(0, 4))
    offset = draw(st.lists(finite, min_size=k, max_size=k))
    scale = draw(st.lists(finite, min_size=k, max_size=k))
    if not same_length:
        scale = scale[: draw(st.integers(0, max(0, k - 1)))] if k else [1.0]
    doc = {"kind": draw(st.sampled_from(["minmax", "standard", "robust", 3])), "offset": offset, "scale": scale,
           "constant_columns": draw(st.lists(names, max_size=2))}
    return json.dumps(doc)


@fuzz(300)
@given(st.one_of(st.text(max_size=200), scaler_json(same_length=True)))
def test_scaler_from_json_never_panics(text: str) -> None:
    try:
        scaler = Scaler.from_json(text)
    except ModelError:
        return
    k = len(scaler.offset)
    x = np.arange(2 * k, dtype=np.float64).reshape(2, k)
    with np.errstate(all="ignore"):
        expected = (x - np.asarray(scaler.offset)) / np.asarray(scaler.scale)
    np.testing.assert_array_equal(scaler.transform(x), expected)
    with pytest.raises(InputError):
        scaler.transform(np.ones((1, k + 1)))
    assert Scaler.from_json(scaler.to_json()).to_json() == scaler.to_json()


@fuzz(50, shrink=False)
@given(scaler_json(same_length=False))
def test_scaler_from_json_checks_lengths(text: str) -> None:
    try:
        scaler = Scaler.from_json(text)
    except ModelError:
        return
    scaler.transform(np.ones((2, len(scaler.offset))))


# ------------------------------------------------------------------------------------------------
# WindowStream
# ------------------------------------------------------------------------------------------------


@st.composite
def window_runs(draw: Any) -> tuple[int, int, int, list[tuple[str, np.ndarray]]]:
    length = draw(st.integers(0, 7))
    stride = draw(st.integers(0, 8))
    features = draw(st.integers(0, 4))
    pushes = []
    for _ in range(draw(st.integers(0, 8))):
        rows = draw(st.integers(0, 12))
        cols = features if draw(st.integers(0, 9)) else draw(st.integers(0, 5))
        values = np.asarray(draw(st.lists(st.floats(width=32), min_size=rows * cols, max_size=rows * cols)),
                            dtype=np.float64).reshape(rows, cols)
        if draw(st.booleans()):  # not C-contiguous
            values = np.asfortranarray(values)
        pushes.append((draw(st.sampled_from(["a", "b", "", "ü"])), values))
    return length, stride, features, pushes


@fuzz(300)
@given(window_runs())
def test_window_stream_matches_the_window_rule(run: tuple[int, int, int, list[tuple[str, np.ndarray]]]) -> None:
    length, stride, features, pushes = run
    try:
        stream = WindowStream(length, stride, features)
    except ConfigError:
        assert length == 0 or not 1 <= stride <= length
        return
    assert length >= 1 and 1 <= stride <= length
    history: dict[str, list[np.ndarray]] = {}
    for key, values in pushes:
        if values.shape[1] != features:
            with pytest.raises(InputError):
                stream.push(key, values)
            continue
        before = sum(len(v) for v in history.get(key, []))
        history.setdefault(key, []).append(values)
        series = np.concatenate(history[key]) if history[key] else np.zeros((0, features))
        total = len(series)
        windows, index, row_window = stream.push(key, values)
        ks = [k for k in range(total) if k * stride + length <= total and k * stride + length - 1 >= before]
        assert index.tolist() == ks
        assert windows.shape == (len(ks), length, features)
        for w, k in zip(windows, ks):
            expected = series[k * stride: k * stride + length].astype(np.float32)
            np.testing.assert_array_equal(w, expected)
        assert row_window.tolist() == [(t + 1 - length) // stride if t + 1 >= length else -1
                                       for t in range(before, total)]
    carried = 0
    for parts in history.values():
        total = sum(len(v) for v in parts)
        next_k = (total - length) // stride + 1 if total >= length else 0
        carried += total - min(next_k * stride, total)
    assert stream.carried_rows == carried
    assert carried <= len(history) * (length - 1)


def test_window_stream_argument_types() -> None:
    stream = WindowStream(3, 1, 2)
    for bad in (np.ones((2, 2), dtype=np.int64), np.ones(4), np.ones((1, 2, 2)), [[1.0, 2.0]], None):
        with pytest.raises((TypeError, InputError)):
            stream.push("k", bad)
    with pytest.raises((OverflowError, TypeError, ConfigError)):
        WindowStream(-1, 1, 1)


# ------------------------------------------------------------------------------------------------
# model configuration and metrics aggregates from JSON
# ------------------------------------------------------------------------------------------------


@fuzz(200)
@given(st.one_of(st.text(max_size=200), st.dictionaries(st.sampled_from(
    ["window", "stride", "hidden_size", "epochs", "learning_rate", "device", "threads", "score_method",
     "threshold_level", "seed", "nope"]), json_values, max_size=4).map(json.dumps)))
def test_model_config_from_json_never_panics(text: str) -> None:
    try:
        cfg = tidewatch.ModelConfig.from_json(text)
    except ConfigError:
        return
    assert tidewatch.ModelConfig.from_json(cfg.to_json()) == cfg


def _mutate(value: Any, draw: Any) -> Any:
    """`value` (parsed JSON) with one node somewhere replaced by random JSON."""
    if isinstance(value, dict) and value and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(value)))
        return {**value, key: _mutate(value[key], draw)}
    if isinstance(value, list) and value and draw(st.integers(0, 3)):
        i = draw(st.integers(0, len(value) - 1))
        return value[:i] + [_mutate(value[i], draw)] + value[i + 1:]
    return draw(st.one_of(json_values, st.integers(-(2**64), 2**64), st.sampled_from([[], {}, None, -1, 0, 10**9])))


@pytest.fixture(scope="module")
def real_aggregate() -> str:
    plant = SensorSet("p", ["a", "b", "c"], [("S1", ["a", "b"]), ("S2", ["c"])])
    agg = BatchAggregate(plant)
    agg.record_scored(True, [0, 2], [0.2, 0.01, 7.0], [1.0, 2.0, 3.0], 1_451_289_600.0)
    agg.record_scored(False, [], [0.02, 0.03, 0.04], [1.0, 2.0, 3.0], 1_451_289_601.0)
    agg.record_warmup(1_451_289_599.0)
    agg.record_quarantined("nan:a", 2)
    agg.add_windows(2)
    return agg.to_json()


AGGREGATE_PLANT = SensorSet("p", ["a", "b", "c"], [("S1", ["a", "b"]), ("S2", ["c"])])


def check_aggregate_text(text: str) -> None:
    """What the driver does with an executor's aggregate: parse, merge into the batch's, apply to the one
    registry (built from the model's sensor set). Refused with InputError, or applied; never a panic."""
    registry = MetricsRegistry(AGGREGATE_PLANT)
    try:
        registry.apply_batch(text, 0.1)
    except InputError:
        pass
    try:
        agg = BatchAggregate.from_json(text)
    except InputError:
        return
    twin = BatchAggregate.from_json(agg.to_json())
    merged = BatchAggregate(AGGREGATE_PLANT)
    try:
        merged.merge(agg)
        merged.merge(twin)
    except InputError:
        return
    merged.counts()
    merged.quarantined_by_reason, merged.anomalies_by_sensor, merged.anomalies_by_stage, merged.flagged_values
    merged.error_buckets, merged.latest_event_time_s
    registry.apply_batch(merged, 0.1)
    assert "ae_batches_processed_total" in registry.render()


@fuzz(300)
@given(data=st.data())
def test_batch_aggregate_from_json_never_panics(real_aggregate: str, data: st.DataObject) -> None:
    """Executors send their partial aggregates to the driver as JSON: random text, or a real aggregate
    with one of its counts, lists or values replaced by random JSON (its sensor set kept)."""
    def mutate_counts(text: str) -> str:
        doc = json.loads(text)
        key = data.draw(st.sampled_from(sorted(k for k in doc if k != "sensors")))
        doc[key] = _mutate(doc[key], data.draw)
        return json.dumps(doc)

    check_aggregate_text(data.draw(st.one_of(st.text(max_size=100), st.just(real_aggregate).map(mutate_counts))))


@fuzz(100, shrink=False)
@given(data=st.data())
def test_batch_aggregate_with_a_damaged_sensor_set(real_aggregate: str, data: st.DataObject) -> None:
    doc = json.loads(real_aggregate)
    doc["sensors"]["stage_index"] = data.draw(st.lists(st.integers(0, 200), max_size=5))
    check_aggregate_text(json.dumps(doc))


# ------------------------------------------------------------------------------------------------
# Detector.load on damaged copies of a real artifact
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The version directory of a real tiny SWaT model (manifest.json + model.safetensors)."""
    link = train_tiny_swat_model(tmp_path_factory.mktemp("model") / "swat")
    return link.resolve()


@pytest.fixture(scope="module")
def small_batch() -> pa.RecordBatch:
    return canonical_table(10, np.random.default_rng(5)).to_batches()[0]


def load_damaged(directory: Path, batch: pa.RecordBatch) -> str:
    """Loads `directory`: a ModelError, or a model that then scores `batch`. Returns what happened."""
    try:
        detector = tidewatch.Detector.load(directory, device="cpu", threads=1)
    except ModelError as exc:
        assert str(directory) in str(exc) or directory.name in str(exc), str(exc)
        return "refused"
    try:
        out = detector.score(batch)
    except SchemaError:
        return "loaded, other sensors"  # e.g. a sensor name changed: the batch does not fit this model
    assert out.num_rows == batch.num_rows
    return "loaded"


def copy_artifact(artifact: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(artifact, target)
    return target


FILES = ["manifest.json", "model.safetensors"]


@fuzz(150)
@given(data=st.data())
def test_detector_load_refuses_truncated_and_bit_flipped_files(artifact: Path, small_batch: pa.RecordBatch,
                                                               tmp_path_factory: pytest.TempPathFactory,
                                                               data: st.DataObject) -> None:
    target = copy_artifact(artifact, tmp_path_factory.getbasetemp() / "damaged")
    name = data.draw(st.sampled_from(FILES))
    raw = bytearray((target / name).read_bytes())
    how = data.draw(st.sampled_from(["truncate", "flip", "garbage", "empty", "append"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "garbage":
        raw = bytearray(data.draw(st.binary(max_size=2000)))
    elif how == "empty":
        raw = bytearray()
    else:
        raw += data.draw(st.binary(min_size=1, max_size=100))
    (target / name).write_bytes(bytes(raw))
    outcome = load_damaged(target, small_batch)
    if how in ("truncate", "garbage", "empty", "append") and name == "model.safetensors":
        assert outcome == "refused"  # the manifest's length and sha256 catch any change to the weights


@fuzz(200)
@given(data=st.data())
def test_detector_load_survives_any_manifest_value(artifact: Path, small_batch: pa.RecordBatch,
                                                   tmp_path_factory: pytest.TempPathFactory,
                                                   data: st.DataObject) -> None:
    """One value anywhere in the manifest replaced by random JSON: refused with ModelError, or loaded
    and scoring (a value that does not matter, e.g. the training history)."""
    target = copy_artifact(artifact, tmp_path_factory.getbasetemp() / "manifest-mutant")
    manifest = json.loads((target / "manifest.json").read_text())
    mutant = _mutate(manifest, data.draw)
    (target / "manifest.json").write_text(json.dumps(mutant))
    load_damaged(target, small_batch)


@pytest.mark.parametrize("layout", ["no manifest", "no weights", "both are directories", "empty directory",
                                    "symlink loop", "weights renamed", "weights is a pickle with a matching checksum",
                                    "manifest is a pickle", "huge declared tensor"])
def test_detector_load_refuses_broken_layouts(artifact: Path, small_batch: pa.RecordBatch, tmp_path: Path,
                                              layout: str) -> None:
    import hashlib
    import pickle

    target = copy_artifact(artifact, tmp_path / "m")
    manifest = json.loads((target / "manifest.json").read_text())
    if layout == "no manifest":
        (target / "manifest.json").unlink()
    elif layout == "no weights":
        (target / "model.safetensors").unlink()
    elif layout == "both are directories":
        for name in FILES:
            (target / name).unlink()
            (target / name).mkdir()
    elif layout == "empty directory":
        shutil.rmtree(target)
        target.mkdir()
    elif layout == "symlink loop":
        shutil.rmtree(target)
        target.symlink_to(target)
    elif layout == "weights renamed":
        manifest["weights"]["file"] = "../../etc/passwd"
        (target / "manifest.json").write_text(json.dumps(manifest))
    elif layout == "weights is a pickle with a matching checksum":
        payload = pickle.dumps({"encoder.weight_ih_l0": [1.0]})
        (target / "model.safetensors").write_bytes(payload)
        manifest["weights"].update(sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload))
        (target / "manifest.json").write_text(json.dumps(manifest))
    elif layout == "manifest is a pickle":
        (target / "manifest.json").write_bytes(pickle.dumps(manifest))
    elif layout == "huge declared tensor":
        # A safetensors header declaring a tensor far larger than the file, with checksums that match.
        header = json.dumps({"encoder.weight_ih_l0": {"dtype": "F32", "shape": [2**31, 2**31],
                                                      "data_offsets": [0, 16]}}).encode()
        payload = len(header).to_bytes(8, "little") + header + b"\x00" * 16
        (target / "model.safetensors").write_bytes(payload)
        manifest["weights"].update(sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload))
        (target / "manifest.json").write_text(json.dumps(manifest))
    # Contents that are wrong are a ModelError; a file system that cannot be read as files is an I/O error.
    expected = (ModelError, tidewatch.TidewatchIOError) if layout in ("both are directories", "symlink loop") \
        else ModelError
    with pytest.raises(expected, match=re.escape(str(target))):
        tidewatch.Detector.load(target, device="cpu")


@pytest.mark.parametrize("edit", ["threshold", "scaler offset", "sensor order"])
def test_detector_load_notices_a_changed_manifest(artifact: Path, tmp_path: Path, edit: str) -> None:
    target = copy_artifact(artifact, tmp_path / "m")
    manifest = json.loads((target / "manifest.json").read_text())
    if edit == "threshold":
        manifest["thresholds"]["window"] = 1e9
    elif edit == "scaler offset":
        manifest["scaler"]["offset"][0] = 1e6
    else:
        sensors = manifest["sensors"]
        sensors[0], sensors[1] = sensors[1], sensors[0]
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="does not match the manifest's contents"):
        tidewatch.Detector.load(target, device="cpu")
