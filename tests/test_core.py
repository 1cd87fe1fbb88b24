"""The foundation kernels through the bindings: imports, errors, sensor sets, matrix, scaler, windows."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tidewatch
from tidewatch import InputError, SchemaError, SensorSet, TidewatchError


@pytest.mark.parametrize("first", ["", "import torch; "])
def test_import_in_fresh_interpreter_with_or_without_torch(first):
    code = (
        f"{first}import sys, tidewatch; "
        "print(tidewatch.__version__, 'torch' in sys.modules, tidewatch.cuda_available())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == tidewatch.__version__
    assert out[1] == ("True" if first else "False"), "importing tidewatch must not import torch"
    assert out[2] in ("True", "False")


def test_exception_hierarchy():
    for cls in (tidewatch.SchemaError, tidewatch.InputError, tidewatch.ModelError, tidewatch.ConfigError,
                tidewatch.TidewatchIOError):
        assert issubclass(cls, TidewatchError)
    assert not issubclass(SchemaError, InputError)


def test_swat_sensor_set_matches_the_official_schema(shared_dir):
    import csv

    with open(shared_dir / "data/swat/swat_a1_2015_schema.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["stage"]]
    s = SensorSet.swat()
    assert s.sensors == [r["column"] for r in rows]
    assert s.stages == [r["stage"] for r in rows]
    assert s.stage_names == ["P1", "P2", "P3", "P4", "P5", "P6"]


def test_plant_file_yaml_and_errors(tmp_path):
    f = tmp_path / "rig.yaml"
    f.write_text("plant: rig\nsensors: [b, a]\nstages:\n  second: [a]\n  first: [b]\ncsv: {separator: ';'}\n")
    s = SensorSet.load(f)
    assert (s.plant, s.sensors, s.stages, s.stage_names) == ("rig", ["b", "a"], ["first", "second"], ["second", "first"])
    assert SensorSet.from_json(s.to_json()) == s
    bad = tmp_path / "bad.yaml"
    bad.write_text("plant: rig\nsensors: [a, b]\nstages:\n  s: [a]\n")
    with pytest.raises(tidewatch.ConfigError, match=r"bad.yaml.*without a stage: b"):
        SensorSet.load(bad)
    with pytest.raises(tidewatch.TidewatchIOError, match="nope.yaml"):
        SensorSet.load(tmp_path / "nope.yaml")


def _plant():
    return SensorSet("rig", ["a", "b"], [("s", ["a", "b"])])


def test_sensor_matrix_types_names_and_invalid_rows():
    batch = pa.record_batch({
        "b": pa.array([1.5, None, 3.0, 4.0], pa.float32()),
        "ts": pa.array(["x", "y", "z", "w"]),
        "a": pa.array([1, 2, 3, 4], pa.int64()),
    })
    values, valid, problems = tidewatch.sensor_matrix(batch, _plant(), invalid="mask")
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values[[0, 2, 3]], [[1, 1.5], [3, 3], [4, 4]])
    assert valid.tolist() == [True, False, True, True]
    assert problems == [(1, "b", "null")]
    with pytest.raises(InputError, match=r"row 1, column 'b': value is null"):
        tidewatch.sensor_matrix(batch, _plant())
    with pytest.raises(SchemaError, match=r"lacks 1 sensor column.*: a"):
        tidewatch.sensor_matrix(batch.drop_columns(["a"]), _plant())
    with pytest.raises(SchemaError, match=r"column 'a' has type Utf8"):
        tidewatch.sensor_matrix(pa.record_batch({"a": ["1"], "b": [1.0]}), _plant())


def test_scaler_partials_merge_to_the_one_pass_fit():
    rng = np.random.default_rng(7)
    data = rng.normal(5, 3, size=(2000, 3))
    data[:, 2] = 1.25  # constant column
    whole = tidewatch.ScalerStats(3)
    whole.update(data)
    merged = tidewatch.ScalerStats(3)
    for part in np.array_split(data, 9):
        p = tidewatch.ScalerStats(3)
        p.update(part)
        merged.merge(tidewatch.ScalerStats.from_json(p.to_json()))  # as shipped from an executor
    assert merged.rows == 2000
    for kind in ("minmax", "standard"):
        a = whole.finish(kind, ["x", "y", "z"])
        b = merged.finish(kind, ["x", "y", "z"])
        np.testing.assert_allclose(a.offset, b.offset, rtol=1e-12)
        np.testing.assert_allclose(a.scale, b.scale, rtol=1e-12)
        assert b.constant_columns == ["z"]
    std = merged.finish("standard", ["x", "y", "z"])
    np.testing.assert_allclose(std.offset[:2], data[:, :2].mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(std.scale[:2], data[:, :2].std(axis=0), rtol=1e-10)
    scaled = std.transform(data)
    assert np.all(np.isfinite(scaled)) and np.all(scaled[:, 2] == 0)
    mm = merged.finish("minmax", ["x", "y", "z"]).transform(data)
    assert mm[:, :2].min() == 0 and mm[:, :2].max() == 1


def test_scaler_stats_from_batches_skip_invalid_rows():
    stats = tidewatch.ScalerStats(2)
    skipped = stats.update_batch(pa.record_batch({"a": [1.0, float("nan"), 3.0], "b": [0.0, 1.0, 2.0]}), _plant())
    assert skipped == 1 and stats.rows == 2


def naive_windows(series: np.ndarray, length: int, stride: int) -> np.ndarray:
    starts = range(0, len(series) - length + 1, stride)
    return np.array([series[s:s + length] for s in starts], dtype=np.float32).reshape(-1, length, series.shape[1])


@settings(max_examples=150, deadline=None)
@given(
    length=st.integers(1, 8),
    stride_frac=st.floats(0.01, 1.0),
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=3),
    data=st.data(),
)
def test_chunked_interleaved_streams_equal_one_shot_windows(length, stride_frac, lengths, data):
    stride = max(1, int(round(stride_frac * length)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n_features = 3
    series = {f"k{i}": rng.normal(size=(n, n_features)) for i, n in enumerate(lengths)}
    # Random chunks of every key, interleaved in a random order (each key's chunks stay in order).
    pending = {k: list(np.array_split(v, data.draw(st.integers(1, 6)))) for k, v in series.items()}
    order = [k for k, chunks in pending.items() for _ in chunks]
    order = data.draw(st.permutations(order))
    stream = tidewatch.WindowStream(length, stride, n_features)
    got = {k: [] for k in series}
    got_index = {k: [] for k in series}
    row_windows = {k: [] for k in series}
    for key in order:
        chunk = pending[key].pop(0)
        windows, index, row_window = stream.push(key, np.ascontiguousarray(chunk))
        got[key].append(windows)
        got_index[key].extend(index.tolist())
        row_windows[key].extend(row_window.tolist())
    for key, values in series.items():
        expected = naive_windows(values, length, stride)
        actual = np.concatenate(got[key]) if got[key] else np.empty((0, length, n_features), np.float32)
        np.testing.assert_array_equal(actual, expected)
        assert got_index[key] == list(range(len(expected)))
        t = np.arange(len(values))
        expected_rw = np.where(t >= length - 1, (t - length + 1) // stride, -1)
        assert row_windows[key] == expected_rw.tolist()
    assert stream.carried_rows <= len(series) * (length - 1)
