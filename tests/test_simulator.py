"""The SWaT-shaped plant simulator through the Python API: schema, determinism, a day of normal operation,
every attack's intended effect and labels, the official-CSV writer read back by the SWaT reader, the CLI."""
from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tidewatch import ConfigError, SchemaError, SensorSet
from tidewatch.cli import main as cli_main
from tidewatch.commands.simulate import parse_duration
from tidewatch.readers import load_attack_list, read_swat
from tidewatch.schema import canonical_schema, conform
from tidewatch.simulator import (
    attack_windows,
    simulate,
    simulate_batches,
    simulated_attack_ids,
    simulation_settings,
    swat_csv_header,
    SwatCsvStream,
    write_parquet,
    write_swat_csv,
)

SENSORS = list(SensorSet.swat().sensors)
UTC = dt.timezone.utc
START = dt.datetime(2015, 12, 28, 10, tzinfo=UTC)
# Set points (mm) from the SWaT A1 facts.
LIT101 = {"LL": 250.0, "L": 500.0, "H": 800.0, "HH": 1200.0}
LIT301 = LIT401 = {"LL": 250.0, "L": 800.0, "H": 1000.0, "HH": 1200.0}
STANDBY = ["P102", "P202", "P204", "P206", "P301", "P401", "P404", "P502", "P601", "P603"]
VALVES = ["MV101", "MV201", "MV301", "MV302", "MV303", "MV304"]
PUMPS = [s for s in SENSORS if s[0] == "P" and not s.startswith("PIT")] + ["UV401"]


def attack_info() -> dict[int, dict[str, object]]:
    table = load_attack_list()
    return {row["attack_no"]: row for row in table.to_pylist()}


def columns(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}


def test_schema_is_canonical_and_rows_are_complete() -> None:
    table = simulate(3600, seed=1, attacks="none")
    assert table.schema.equals(canonical_schema(SENSORS, optional=["attack_id", "attacked_points"]))
    assert conform(table, SENSORS).num_rows == 3600
    assert sum(c.null_count for c in table.columns) == 0
    assert table["plant"].unique().to_pylist() == ["swat"]
    times = table["timestamp"].to_pylist()
    assert times[0] == START and times[-1] == START + dt.timedelta(seconds=3599)
    assert table["label"].unique().to_pylist() == [0]
    assert table["attacked_points"].unique().to_pylist() == [""]
    settings = simulation_settings(table)
    assert settings is not None and settings["seed"] == 1 and settings["attacks"] == []


def test_start_may_be_a_string_or_an_aware_datetime() -> None:
    sgt = dt.timezone(dt.timedelta(hours=8))
    a = simulate(10, attacks="none", start="2016-01-01 00:00:00")
    b = simulate(10, attacks="none", start=dt.datetime(2016, 1, 1, 8, tzinfo=sgt))
    assert a.equals(b)
    assert a["timestamp"][0].as_py() == dt.datetime(2016, 1, 1, tzinfo=UTC)


def test_same_seed_same_rows_at_once_or_in_batches() -> None:
    one = simulate(20_000, seed=5, attacks=[1, 8])
    assert one.equals(simulate(20_000, seed=5, attacks=[1, 8]))
    batches = list(simulate_batches(20_000, seed=5, attacks=[1, 8], batch_rows=7_777))
    assert [b.num_rows for b in batches] == [7_777, 7_777, 4_446]
    assert pa.Table.from_batches(batches).equals(one)
    other = simulate(20_000, seed=6, attacks=[1, 8])
    assert not other["LIT101"].equals(one["LIT101"])


@pytest.mark.parametrize("seed", [0, 11])
def test_a_normal_day_keeps_its_invariants(seed: int) -> None:
    c = columns(simulate(86_400, seed=seed, attacks="none"))
    values = np.stack([c[s] for s in SENSORS])
    assert np.isfinite(values).all()
    # Levels stay within LL..HH, and near the L..H band the PLCs hold them in.
    assert LIT101["L"] - 30 <= c["LIT101"].min() and c["LIT101"].max() <= LIT101["H"] + 30
    assert LIT301["L"] - 30 <= c["LIT301"].min() and c["LIT301"].max() <= LIT301["H"] + 30
    assert LIT401["LL"] <= c["LIT401"].min() and c["LIT401"].max() <= LIT401["H"] + 30
    for valve in VALVES:
        assert set(np.unique(c[valve])) <= {0.0, 1.0, 2.0}, valve
    for pump in PUMPS:
        assert set(np.unique(c[pump])) <= {1.0, 2.0}, pump
    for pump in STANDBY:
        assert (c[pump] == 1).all(), f"standby {pump} ran"
    # Pumps and valves obey the set points (allowing for hysteresis and valve travel).
    assert (c["MV101"][c["LIT101"] < LIT101["L"] - 10] == 2).all()
    assert (c["MV101"][c["LIT101"] > LIT101["H"] + 10] == 1).all()
    assert (c["P101"][c["LIT301"] > LIT301["H"] + 10] == 1).all()
    p101 = c["P101"] == 2
    assert (c["MV201"][p101] == 2).all() and (c["LIT101"][p101] > LIT101["LL"]).all()
    p302 = c["P302"] == 2
    assert (c["MV302"][p302] == 2).all() and (c["LIT401"][p302] < LIT401["H"] + 10).all()
    backwash = c["P602"] == 2
    assert (c["MV301"][backwash] == 2).all() and (c["MV303"][backwash] == 2).all()
    assert (c["P402"][(c["UV401"] == 2) | (c["P501"] == 2)] == 2).all()
    # Flows appear only where a pump runs or a valve is open (15 s for a flow to die away).
    for actuator, flow in [("MV101", "FIT101"), ("P101", "FIT201"), ("P302", "FIT301"), ("P402", "FIT401"),
                           ("P501", "FIT501"), ("P602", "FIT601")]:
        off = c[actuator] == 1
        off_15s = np.convolve(off, np.ones(16), mode="full")[: off.size] == 16
        assert (c[flow][off_15s] == 0).all(), flow
    # The plant runs in cycles, with realistic readings.
    for name in ["MV101", "P101", "MV201", "P302", "MV302", "P602"]:
        assert np.count_nonzero(np.diff(c[name])) >= 40, name
    for name, low, high in [("AIT201", 230, 290), ("AIT202", 8.0, 9.0), ("AIT203", 280, 380), ("AIT402", 140, 200),
                            ("AIT501", 7.5, 8.3), ("AIT502", 120, 180), ("AIT503", 240, 300), ("AIT504", 9, 15),
                            ("DPIT301", 0, 30), ("PIT501", 0, 270), ("PIT503", 0, 210), ("FIT101", 0, 3)]:
        assert low <= c[name].min() and c[name].max() <= high, name


# ---- each attack's intended effect ----

Cols = dict[str, np.ndarray]
H301, H401 = LIT301["H"], LIT401["H"]


def rising_edges(x: np.ndarray) -> int:
    return int(np.count_nonzero((x[1:] == 2) & (x[:-1] != 2)))


def effect_checks() -> dict[int, Callable[[Cols, Cols, int, int], bool]]:
    """Per attack: (attacked rows, same seed without the attack, first row, row after the last) -> effect?
    Recorded values are what the PLCs saw; the first row after an attack shows the true state again."""
    def alls(a: Cols, name: str, s: int, e: int, value: float) -> bool:
        return bool((a[name][s:e] == value).all())

    def t301_overflow(a: Cols, b: Cols, s: int, e: int) -> bool:
        return a["LIT301"][e] > H301 + 20 and b["LIT301"][s:e + 1].max() < H301 + 10

    def t401_overflow(a: Cols, b: Cols, s: int, e: int) -> bool:
        return a["LIT401"][e] > H401 + 15 and b["LIT401"][s:e + 1].max() < H401 + 5

    def t301_underflow(a: Cols, b: Cols, s: int, e: int) -> bool:
        return alls(a, "LIT301", s, e, 1250) and alls(a, "P101", s + 1, e, 1) and a["LIT301"][e] < a["LIT301"][s - 1] - 100

    def uv_off_ro_stops(a: Cols, b: Cols, s: int, e: int) -> bool:
        return alls(a, "UV401", s + 1, e, 1) and alls(a, "P501", min(s + 120, e - 1), e, 1)

    def stage3_halted(valve: str) -> Callable[[Cols, Cols, int, int], bool]:
        return lambda a, b, s, e: (not (a[valve][s:e] == 2).any() and alls(a, "FIT301", e - 60, e, 0)
                                   and bool((b[valve][s:e + 300] == 2).any()))

    def p101_stopped(a: Cols, b: Cols, s: int, e: int) -> bool:
        return alls(a, "P101", s, e, 1) and alls(a, "FIT201", s + 15, e, 0)

    def ro_timer(value: float) -> Callable[[Cols, Cols, int, int], bool]:
        return lambda a, b, s, e: alls(a, "AIT504", s, e, value) and alls(a, "P501", s, e, 2)

    return {
        1: lambda a, b, s, e: (alls(a, "MV101", s + 7, e, 2) and a["LIT101"][s:e].max() > LIT101["H"] + 50
                               and a["LIT101"][s:e].max() > b["LIT101"][s:e].max() + 50),
        2: lambda a, b, s, e: alls(a, "P102", s, e, 2) and a["FIT201"][s:e].max() > 3.0,
        3: lambda a, b, s, e: (alls(a, "MV101", s, e, 1) and a["LIT101"][e - 1] - a["LIT101"][s] > 100
                               and a["LIT101"][e] < LIT101["L"] - 30),
        4: lambda a, b, s, e: a["PIT501"][s + 10:e].mean() < 0.75 * b["PIT501"][s + 10:e].mean(),
        6: lambda a, b, s, e: (alls(a, "AIT202", s, e, 6.0) and alls(a, "P203", s + 1, e, 1)
                               and a["AIT202"][e] > b["AIT202"][e] + 0.2),
        7: t301_underflow,
        8: lambda a, b, s, e: rising_edges(a["P602"][s:e]) >= 4 and rising_edges(b["P602"][s:e]) <= 1,
        10: uv_off_ro_stops,
        11: uv_off_ro_stops,
        13: stage3_halted("MV304"),
        14: stage3_halted("MV303"),
        16: t301_overflow,
        17: stage3_halted("MV303"),
        19: ro_timer(16.0),
        20: ro_timer(255.0),
        21: lambda a, b, s, e: (bool((a["LIT101"][s:e] == a["LIT101"][s]).all()) and alls(a, "MV101", s + 7, e, 2)
                                and a["LIT101"][e] > LIT101["H"] and a["LIT101"][e] > b["LIT101"][e] + 25),
        22: lambda a, b, s, e: (alls(a, "UV401", s, e, 1) and alls(a, "P501", s, e, 1) and alls(a, "AIT502", s, e, 150)
                                and alls(a, "FIT501", s + 15, e, 0)),
        23: lambda a, b, s, e: alls(a, "P602", s, e, 1) and alls(a, "FIT301", s + 15, e, 0) and alls(a, "MV302", s, e, 2),
        24: lambda a, b, s, e: (alls(a, "P203", s, e, 1) and alls(a, "P205", s, e, 1)
                                and a["AIT202"][e] > b["AIT202"][e] + 0.2 and a["AIT203"][e] < b["AIT203"][e] - 30),
        25: lambda a, b, s, e: (alls(a, "LIT401", s, e, 1000) and alls(a, "P402", s, e, 2) and alls(a, "P302", s + 1, e, 1)
                                and a["LIT401"][e] < a["LIT401"][s - 1] - 150),
        26: t301_overflow,
        27: t401_overflow,
        28: lambda a, b, s, e: (alls(a, "P302", s, e, 1) and alls(a, "FIT301", s + 15, e, 0)
                                and a["LIT401"][e - 1] < LIT401["LL"] + 30 and a["P402"][e - 1] == 1),
        29: lambda a, b, s, e: (np.count_nonzero(a["P201"][s:e] == 2) * 2 >= e - s
                                and a["AIT201"][e - 1] > b["AIT201"][e - 1] + 10),
        30: t301_overflow,
        31: t401_overflow,
        32: t301_underflow,
        33: lambda a, b, s, e: alls(a, "LIT101", s, e, 850) and a["LIT101"][e] < a["LIT101"][s - 1] - 100,
        34: p101_stopped,
        35: p101_stopped,
        36: lambda a, b, s, e: (alls(a, "LIT101", s, e, 200) and alls(a, "P101", s, e, 1)
                                and a["LIT101"][e] > a["LIT101"][s - 1] + 150),
        37: lambda a, b, s, e: alls(a, "P501", s, e, 1) and alls(a, "FIT502", s, e, 1.29) and alls(a, "FIT501", s + 15, e, 0),
        38: lambda a, b, s, e: (alls(a, "AIT402", s, e, 260) and alls(a, "AIT502", s, e, 260) and alls(a, "P403", s + 1, e, 2)
                                and alls(a, "P501", s + 1, e, 1) and a["AIT402"][e] < b["AIT402"][e] - 20),
        39: lambda a, b, s, e: (alls(a, "FIT401", s, e, 0.5) and alls(a, "UV401", s + 1, e, 1) and alls(a, "P501", s, e, 2)
                                and a["AIT502"][e] > 250),
        40: uv_off_ro_stops,
        41: t301_overflow,
    }


def test_every_physical_attack_has_an_effect_check() -> None:
    assert sorted(effect_checks()) == simulated_attack_ids()
    info = attack_info()
    assert len(info) == 41 and sorted(i for i, row in info.items() if row["physical_impact"]) == simulated_attack_ids()


@pytest.mark.parametrize("attack", simulated_attack_ids())
def test_each_attack_has_its_intended_effect_and_labels(attack: int) -> None:
    info = attack_info()[attack]
    duration = int(info["duration_s"]) + 6 * 3600
    attacked = simulate(duration, seed=7, attacks=[attack])
    normal = simulate(duration, seed=7, attacks="none")
    (window,) = attack_windows(attacked)
    assert window["attack_id"] == attack and window["rows"] == info["duration_s"]
    a, b = columns(attacked), columns(normal)
    s = int(np.flatnonzero(a["attack_id"])[0])
    e = s + int(info["duration_s"])
    # Rows carry the label, the id and the list's points exactly while the attack runs.
    inside = np.zeros(duration, dtype=bool)
    inside[s:e] = True
    assert (a["label"] == inside).all()
    assert (a["attack_id"] == np.where(inside, attack, 0)).all()
    assert set(a["attacked_points"][s:e]) == {str(info["attack_points"]).strip()}
    assert set(a["attacked_points"][~inside]) == {""}
    # Normal operation up to the attack, then its effect.
    for name in SENSORS:
        assert np.array_equal(a[name][:s], b[name][:s]), name
    assert effect_checks()[attack](a, b, s, e), f"attack {attack} ({info['action']}) had no effect"


def test_all_attacks_fit_in_one_day_in_order_with_normal_gaps() -> None:
    table = simulate(86_400, seed=2)
    windows = attack_windows(table)
    info = attack_info()
    assert [w["attack_id"] for w in windows] == simulated_attack_ids()
    assert all(w["rows"] == info[w["attack_id"]]["duration_s"] for w in windows)
    assert table["label"].to_numpy().sum() == sum(int(info[i]["duration_s"]) for i in simulated_attack_ids())
    for before, after in zip(windows, windows[1:]):
        assert (after["start"] - before["end"]).total_seconds() > 300
    assert windows[0]["start"] > START + dt.timedelta(minutes=10)


def test_official_timing_follows_the_attack_list() -> None:
    table = simulate(86_400, seed=1, timing="official")
    info = attack_info()
    origin = info[1]["start"] - dt.timedelta(minutes=29, seconds=14)  # the list's 2015-12-28 10:00:00
    windows = attack_windows(table)
    assert [w["attack_id"] for w in windows] == [1, 2, 3, 4, 6, 7, 8, 10, 11]
    for w in windows:
        offset = info[w["attack_id"]]["start"] - origin
        assert w["start"] == START + offset
    # Attacks 10 and 11 share a second; the row goes to 11.
    assert windows[-2]["rows"] == info[10]["duration_s"] - 1 and windows[-1]["rows"] == info[11]["duration_s"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"duration_s": 0}, "duration_s"),
        ({"duration_s": 10, "seed": -1}, "seed"),
        ({"duration_s": 100_000, "attacks": [5]}, "no physical impact"),
        ({"duration_s": 100_000, "attacks": [99]}, "not in the SWaT A1 attack list"),
        ({"duration_s": 100_000, "attacks": [1, 1]}, "twice"),
        ({"duration_s": 100_000, "attacks": "some"}, "'all', 'none'"),
        ({"duration_s": 3600}, "simulate at least"),
        ({"duration_s": 10, "start": "yesterday"}, "not a date"),
        ({"duration_s": 10, "timing": "soon"}, "timing"),
        ({"duration_s": 10, "plant": ""}, "plant name"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        simulate(**kwargs)  # type: ignore[arg-type]


# ---- writers ----


def test_swat_csv_has_the_official_quirks_and_reads_back(tmp_path: Path) -> None:
    table = simulate(8 * 3600, seed=4, attacks=[1, 21, 36])
    path = write_swat_csv(table, tmp_path / "SWaT_sim.csv")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].split(",") == swat_csv_header()
    assert lines[0].startswith(" Timestamp,FIT101,LIT101, MV101,P101")
    # 2015-12-28 10:00 UTC is 6 PM in Singapore: a leading space, day first, no leading zero on the hour.
    assert lines[1].startswith(" 28/12/2015 6:00:00 PM,")
    labels = [line.rsplit(",", 1)[1] for line in lines[1:]]
    assert set(labels) == {"Normal", "Attack", "A ttack"}
    assert labels.count("A ttack") == 30  # 10 rows in each of the 3 attacks
    actuator = lines[1].split(",")[3]  # MV101, written as a state, not a float
    assert actuator in {"0", "1", "2"}

    result = read_swat(path)
    back = result.table
    assert back.num_rows == table.num_rows
    assert back["timestamp"].equals(table["timestamp"])
    assert back["label"].equals(table["label"])
    for name in SENSORS:
        x, y = back[name].to_numpy(), table[name].to_numpy()
        assert np.allclose(x, y, rtol=6e-7, atol=0), name  # 7 significant digits, as the official files

    exact = write_swat_csv(table, tmp_path / "exact.csv", digits=None)
    back = read_swat(exact).table
    for name in ["timestamp", *SENSORS, "label"]:
        assert back[name].equals(table[name]), name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_swat_csv_written_in_chunks_is_the_same_file(tmp_path: Path) -> None:
    table = simulate(4 * 3600, seed=5, attacks=[2, 34])
    whole = write_swat_csv(table, tmp_path / "whole.csv")
    with SwatCsvStream(tmp_path / "chunks.csv") as stream:
        for batch in table.to_batches(max_chunksize=97):  # attacks cross chunk boundaries
            stream.write(batch)
    assert (tmp_path / "chunks.csv").read_bytes() == whole.read_bytes()


def test_swat_csv_refuses_tables_without_swat_columns(tmp_path: Path) -> None:
    table = simulate(60, attacks="none").drop_columns(["LIT301", "label"])
    with pytest.raises(SchemaError, match="LIT301, label"):
        write_swat_csv(table, tmp_path / "bad.csv")
    assert list(tmp_path.iterdir()) == []


def test_parquet_keeps_rows_and_settings(tmp_path: Path) -> None:
    table = simulate(10_000, seed=9, attacks=[2])
    path = write_parquet(table, tmp_path / "sim.parquet")
    back = pq.read_table(path)
    assert back.equals(table)
    assert simulation_settings(back) == simulation_settings(table)
    assert os.listdir(tmp_path) == ["sim.parquet"]


# ---- command line ----


@pytest.mark.parametrize("text, seconds", [("86400", 86_400), ("1d", 86_400), ("6h", 21_600), ("90m", 5_400),
                                           ("1d12h", 129_600), ("2h30m15s", 9_015)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "1x", "1d30", "h", "-5"])
def test_bad_durations(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_cli_writes_parquet_and_swat_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim.parquet"
    assert cli_main(["simulate", "--duration", "3h", "--attacks", "1,36", "--seed", "3", "--out", str(out),
                     "--batch-rows", "4000", "--progress-every", "0"]) == 0
    table = pq.read_table(out)
    assert table.equals(simulate(3 * 3600, seed=3, attacks=[1, 36]))
    assert "2 attacks ran" in capsys.readouterr().err
    csv_out = tmp_path / "sim.csv"
    assert cli_main(["simulate", "--duration", "2h", "--attacks", "none", "--format", "swat-csv",
                     "--out", str(csv_out), "--batch-rows", "1000"]) == 0
    assert read_swat(csv_out).table.num_rows == 7200
    assert cli_main(["simulate", "--duration", "1h", "--out", str(tmp_path / "x.parquet")]) == 1  # too short for all
    assert "simulate at least" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()
