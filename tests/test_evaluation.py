"""Metric functions against cases computed by hand (the arithmetic is written next to each assertion)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tidewatch import InputError
from tidewatch.evaluation import (
    AttackedEvent,
    attacked_events_from_time_ranges,
    attacks_from_table,
    attribution_hit_rate,
    confusion_counts,
    evaluate,
    event_outcomes,
    event_recall,
    false_alarm_rate,
    inflated_pa_k_auc,
    inflated_pa_k_f1,
    inflated_point_adjusted_f1,
    label_events,
    missed_alarm_rate,
    pa_k_adjust,
    point_adjust,
    pr_auc,
    precision_recall_f1,
)

# rows:    0  1  2  3  4  5  6  7  8  9  10 11
LABELS = [0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0]
FLAGS = [1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0]
# events: rows 1-4 (length 4) and rows 7-8 (length 2)
# TP: row 2 -> 1;  FP: rows 0, 9 -> 2;  FN: rows 1, 3, 4, 7, 8 -> 5;  TN: 12 - 1 - 2 - 5 = 4


def test_confusion_counts_by_hand() -> None:
    counts = confusion_counts(FLAGS, LABELS)
    assert (counts.tp, counts.fp, counts.tn, counts.fn) == (1, 2, 4, 5)


def test_point_wise_precision_recall_f1_by_hand() -> None:
    precision, recall, f1 = precision_recall_f1(FLAGS, LABELS)
    assert precision == pytest.approx(1 / 3)  # TP / (TP + FP) = 1 / 3
    assert recall == pytest.approx(1 / 6)  # TP / (TP + FN) = 1 / 6
    # 2 TP / (2 TP + FP + FN) = 2 / (2 + 2 + 5) = 2/9, the same as SKAB's TP / (TP + (FN + FP) / 2) = 1 / 4.5
    assert f1 == pytest.approx(2 / 9)
    assert f1 == pytest.approx(2 * precision * recall / (precision + recall))


def test_skab_far_and_mar_by_hand() -> None:
    assert false_alarm_rate(FLAGS, LABELS) == pytest.approx(100 * 2 / 6)  # FP / (FP + TN) = 2 / (2 + 4)
    assert missed_alarm_rate(FLAGS, LABELS) == pytest.approx(100 * 5 / 6)  # FN / (FN + TP) = 5 / (5 + 1)


def test_label_events_are_maximal_runs_including_at_the_edges() -> None:
    assert label_events(LABELS).tolist() == [[1, 5], [7, 9]]
    assert label_events([1, 1, 0, 1]).tolist() == [[0, 2], [3, 4]]
    assert label_events([0, 0, 0]).shape == (0, 2)


def test_event_recall_and_delay_by_hand() -> None:
    outcomes = event_outcomes(FLAGS, LABELS, timestamps=np.arange(12) * 10.0)
    # event 1 (rows 1-4): first flag at row 2 -> delay 1 row = 10 s; event 2 (rows 7-8): no flag inside
    assert [(o.detected, o.first_flag_row, o.delay_rows, o.delay_seconds) for o in outcomes] == [
        (True, 2, 1, 10.0),
        (False, None, None, None),
    ]
    assert event_recall(FLAGS, LABELS) == pytest.approx(1 / 2)


def test_tolerance_counts_a_flag_just_after_the_event() -> None:
    # event 2 is rows 7-8 and ends before row 9; the flag at row 9 is 0 rows past the end
    assert event_recall(FLAGS, LABELS, tolerance_rows=1) == pytest.approx(2 / 2)
    late = event_outcomes(FLAGS, LABELS, tolerance_rows=1)[1]
    assert (late.first_flag_row, late.delay_rows) == (9, 2)  # 9 - 7
    # a flag BEFORE an event never counts for it: row 0 precedes event 1 and is not its first flag
    assert event_outcomes([1, 0, 0, 0], [0, 0, 1, 1])[0].detected is False


def test_delay_seconds_from_datetimes() -> None:
    times = np.datetime64("2024-01-01T00:00:00") + np.arange(12) * np.timedelta64(2, "s")
    outcome = event_outcomes(FLAGS, LABELS, timestamps=times)[0]
    assert outcome.delay_seconds == pytest.approx(2.0)  # one row of 2 s


def test_point_adjust_by_hand() -> None:
    adjusted = point_adjust(FLAGS, LABELS)
    # event 1 has a flag (row 2) -> rows 1-4 all flagged; event 2 has none; FPs at rows 0 and 9 stay
    assert adjusted.astype(int).tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0]
    # TP 4, FP 2, FN 2 -> F1 = 8 / (8 + 2 + 2) = 2/3, three times the honest 2/9
    assert inflated_point_adjusted_f1(FLAGS, LABELS) == pytest.approx(2 / 3)


def test_pa_k_by_hand() -> None:
    # event 1 has 1 of 4 rows flagged: 25 %. Kim et al. adjust when the share EXCEEDS K.
    assert inflated_pa_k_f1(FLAGS, LABELS, 20) == pytest.approx(2 / 3)  # 25 % > 20 %: adjusted
    assert inflated_pa_k_f1(FLAGS, LABELS, 25) == pytest.approx(2 / 9)  # 25 % is not > 25 %: raw F1
    assert inflated_pa_k_f1(FLAGS, LABELS, 100) == pytest.approx(2 / 9)  # K = 100 never adjusts
    assert pa_k_adjust(FLAGS, LABELS, 0).tolist() == point_adjust(FLAGS, LABELS).tolist()


def test_pa_k_auc_by_hand() -> None:
    # F1(K) = 2/3 for K = 0..24 and 2/9 for K = 25..100 (integer K). Trapezoids over [0, 100]:
    # 24 * 2/3 + (2/3 + 2/9) / 2 + 75 * 2/9 = 16 + 4/9 + 50/3 = 33.111..., divided by 100
    expected = (24 * 2 / 3 + (2 / 3 + 2 / 9) / 2 + 75 * 2 / 9) / 100
    assert inflated_pa_k_auc(FLAGS, LABELS) == pytest.approx(expected)
    # on a coarse grid K = 0, 50, 100: (2/3 + 2/9) / 2 * 50 + 2/9 * 50 = 22.22 + 11.11 = 33.33, / 100
    assert inflated_pa_k_auc(FLAGS, LABELS, [0, 50, 100]) == pytest.approx(((2 / 3 + 2 / 9) / 2 * 50 + 2 / 9 * 50) / 100)


def test_point_adjust_inflates_random_flags_on_long_events() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros(10_000, dtype=int)
    labels[2_000:4_000] = 1
    labels[6_000:8_000] = 1
    flags = rng.random(10_000) < 0.01
    honest = confusion_counts(flags, labels).f1
    assert honest < 0.05
    assert inflated_point_adjusted_f1(flags, labels) > 0.9


def test_pr_auc_by_hand() -> None:
    # scores ranked: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg)
    # AP = sum over positives of precision at its rank / n_pos = (1/1 + 2/3) / 2 = 5/6
    assert pr_auc([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    assert math.isnan(pr_auc([0.1, 0.2], [0, 0]))


def test_bad_inputs_name_the_row() -> None:
    with pytest.raises(InputError, match="row 2"):
        confusion_counts([0, 1, 2], [0, 1, 1])
    with pytest.raises(InputError, match="differ in length"):
        confusion_counts([0, 1], [0, 1, 1])
    with pytest.raises(InputError, match="row 1"):
        pr_auc([0.1, float("nan")], [0, 1])


def test_evaluate_report_collects_everything_and_serialises() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.0, 0.0, 0.4, 0.4, 0.7, 0.0, 0.0])
    report = evaluate(LABELS, scores=scores, threshold=0.5)  # flags = scores > 0.5 = FLAGS
    assert report.counts == confusion_counts(FLAGS, LABELS)
    assert report.f1 == pytest.approx(2 / 9)
    assert report.far_pct == pytest.approx(100 / 3)
    assert (report.n_events, report.n_events_detected) == (2, 1)
    assert report.delay_rows_mean == pytest.approx(1.0)
    assert report.inflated_point_adjusted_f1 == pytest.approx(2 / 3)
    assert report.inflated_pa_k_f1[20] == pytest.approx(2 / 3)
    assert report.pr_auc == pytest.approx(pr_auc(scores, LABELS))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["counts"] == {"tp": 1, "fp": 2, "tn": 4, "fn": 5}
    assert data["delay_seconds_mean"] is None
    text = report.format()
    assert "F1 0.222" in text and "FAR 33.33 %" in text
    assert "INFLATED" in text and text.index("INFLATED") < text.index("point-adjusted F1")


def test_undefined_ratios_are_none_in_json() -> None:
    report = evaluate([0, 0, 0], flags=[0, 0, 0])
    data = report.to_dict()
    assert data["precision"] is None and data["recall"] is None and data["event_recall"] is None
    assert data["far_pct"] == 0.0
    assert "n/a" in report.format()


def test_attribution_from_error_matrix_by_hand() -> None:
    names = ["A", "B", "C", "D"]
    errors = np.array(
        [
            [0.0, 0.0, 0.0, 0.0],
            [1.0, 5.0, 0.0, 2.0],  # event e1 rows 1-2: mean errors A 1, B 4, C 0.5, D 2 -> top-2 B, D
            [1.0, 3.0, 1.0, 2.0],
            [9.0, 0.0, 0.0, 0.0],  # event e2 row 3: top-2 A, then B (tie broken by column order)
        ]
    )
    events = [
        AttackedEvent("e1", 1, 3, frozenset({"D"})),  # D is 2nd: hit
        AttackedEvent("e2", 3, 4, frozenset({"C"})),  # C not in top-2: miss
        AttackedEvent("e3", 0, 1, frozenset()),  # nothing attacked named: excluded
        AttackedEvent("e4", 0, 1, frozenset({"MV504"})),  # not a recorded sensor: excluded
    ]
    result = attribution_hit_rate(events, top_k=2, error_matrix=errors, sensor_names=names)
    assert [(o.name, o.top_sensors, o.hit) for o in result.events] == [
        ("e1", ("B", "D"), True),
        ("e2", ("A", "B"), False),
    ]
    assert (result.n_events, result.n_hits, result.hit_rate) == (2, 1, 0.5)
    assert [name for name, _ in result.excluded] == ["e3", "e4"]


def test_attribution_from_top_sensor_lists_and_flag_mask() -> None:
    top_rows = [["A", "B"], ["C", "A"], ["C", "B"], ["B", "C"]]
    event = [AttackedEvent("e", 0, 4, frozenset({"C"}))]
    # votes over all rows: C 3 (ranks 0, 0, 1), B 3 (ranks 1, 1, 0) -> tie on votes, C has the better mean rank
    assert attribution_hit_rate(event, top_k=1, top_sensors_per_row=top_rows).events[0].top_sensors == ("C",)
    # only flagged rows 0 and 3: A 1 (rank 0), B 2 (ranks 1, 0), C 1 (rank 1) -> B
    only_flagged = attribution_hit_rate(event, top_k=1, top_sensors_per_row=top_rows, rows_mask=[1, 0, 0, 1])
    assert only_flagged.events[0].top_sensors == ("B",) and only_flagged.n_hits == 0


def test_attack_list_maps_onto_rows(tmp_path) -> None:
    from tidewatch.readers import load_attack_list

    path = tmp_path / "attacks.csv"
    path.write_text(
        "attack_no,start,end,duration_s,attack_points,stages\n"
        "1,2015-12-28 10:00:02,2015-12-28 10:00:04,3,MV101;LIT101,P1\n"
        "2,2015-12-29 00:00:00,2015-12-29 00:00:01,2,,\n"
    )
    attacks = attacks_from_table(load_attack_list(path, tz="Asia/Singapore"))
    assert attacks[0][3] == frozenset({"MV101", "LIT101"})
    # 10:00:02 in Singapore (UTC+8) is 02:00:02 UTC, the zone scored rows carry
    times = np.datetime64("2015-12-28T02:00:00") + np.arange(10) * np.timedelta64(1, "s")
    events = attacked_events_from_time_ranges(times, attacks)
    assert (events[0].start_row, events[0].end_row) == (2, 5)  # 02:00:02 .. 02:00:04 inclusive
    assert events[1].start_row == events[1].end_row  # outside the data: empty, reported as excluded later


def test_plot_run_writes_a_png(tmp_path) -> None:
    from tidewatch.plots import plot_run

    rng = np.random.default_rng(0)
    n_rows = 2_000
    labels = np.zeros(n_rows, dtype=int)
    labels[800:1000] = 1
    scores = rng.random(n_rows)
    scores[850:950] += 3.0
    times = np.datetime64("2024-01-01T00:00:00") + np.arange(n_rows) * np.timedelta64(1, "s")
    path = plot_run(
        tmp_path / "nested" / "run.png",
        scores=scores,
        threshold=1.5,
        labels=labels,
        signals=rng.normal(size=(n_rows, 3)).cumsum(axis=0),
        sensor_names=["FIT101", "LIT101", "MV101"],
        timestamps=times,
        boundaries=[1_000],
        title="test run",
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 30_000  # three panels of traces, not an empty canvas


def test_plot_run_rejects_misaligned_inputs(tmp_path) -> None:
    from tidewatch.plots import plot_run

    with pytest.raises(InputError, match="labels"):
        plot_run(tmp_path / "x.png", scores=np.zeros(10), labels=np.zeros(9))
    assert not (tmp_path / "x.png").exists()


def test_events_never_span_a_segment_boundary() -> None:
    # two concatenated files: file 1 = rows 0-3 ending anomalous, file 2 = rows 4-7 starting anomalous
    labels = [0, 0, 1, 1, 1, 1, 0, 0]
    assert label_events(labels).tolist() == [[2, 6]]
    assert label_events(labels, boundaries=[4]).tolist() == [[2, 4], [4, 6]]
    flags = [0, 0, 0, 1, 0, 0, 0, 0]
    # without the boundary: one event, detected; with it: file 1's event detected, file 2's missed
    assert event_recall(flags, labels) == 1.0
    assert event_recall(flags, labels, boundaries=[4]) == 0.5
    # point adjustment stays inside file 1: rows 2-3 adjusted, rows 4-5 not
    assert point_adjust(flags, labels, boundaries=[4]).astype(int).tolist() == [0, 0, 1, 1, 0, 0, 0, 0]
    # the tolerance does not reach into the next file: a flag at row 4 is not a late detection of rows 2-3
    assert event_outcomes([0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0], tolerance_rows=3,
                          boundaries=[4])[0].detected is False
    report = evaluate(labels, flags=flags, boundaries=[4])
    assert (report.n_events, report.n_events_detected) == (2, 1)


def test_evaluate_command_on_a_scored_parquet(tmp_path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tidewatch.cli import main

    # 12 rows: 2 warmup rows without a score, then the 10 rows below; written in reverse time order
    # scored rows:   0      1      2      3      4      5      6      7      8      9
    labels = ["Normal", "Normal", "Attack", "A ttack", "Attack", "Normal", "Normal", "Attack", "Attack", "Normal"]
    flags = [False, True, False, True, True, False, False, False, False, True]
    # TP rows 3, 4 -> 2; FP rows 1, 9 -> 2; FN rows 2, 7, 8 -> 3; TN rows 0, 5, 6 -> 3
    times = np.datetime64("2015-12-28T02:00:00", "us") + np.arange(12) * np.timedelta64(1, "s")  # UTC
    scores = [None, None] + [0.1, 0.9, 0.2, 0.8, 0.7, 0.1, 0.1, 0.3, 0.2, 0.6]
    errors_lit = [None, None] + [0.0, 0.0, 1.0, 5.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    errors_fit = [None, None] + [0.0, 0.0, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    table = pa.table({
        "plant": ["swat"] * 12,
        "timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
        "status": ["warmup"] * 2 + ["scored"] * 10,
        "score": scores,
        "flag": [None, None] + flags,
        "threshold": [None, None] + [0.5] * 10,
        "error_LIT101": errors_lit,
        "error_FIT101": errors_fit,
        "label": ["Normal"] * 2 + labels,
    }).take(list(range(11, -1, -1)))
    pq.write_table(table, tmp_path / "scored.parquet")
    (tmp_path / "attacks.csv").write_text(
        "attack_no,start,end,attack_points\n"
        # Singapore time, 02:00:04-02:00:06 UTC: scored rows 2-4; flagged rows 3, 4 -> LIT101 mean error 5
        "1,2015-12-28 10:00:04,2015-12-28 10:00:06,LIT101\n"
    )
    code = main([
        "evaluate", str(tmp_path / "scored.parquet"), "--json", str(tmp_path / "r.json"),
        "--plot", str(tmp_path / "r.png"), "--attacks", str(tmp_path / "attacks.csv"), "--top-k", "1",
    ])
    out = capsys.readouterr().out
    assert code == 0
    assert "12 rows read, 10 evaluated, left out (no score): {'warmup': 2}" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["counts"] == {"tp": 2, "fp": 2, "tn": 3, "fn": 3}
    assert data["far_pct"] == pytest.approx(40.0)  # 2 / (2 + 3)
    assert data["mar_pct"] == pytest.approx(60.0)  # 3 / (3 + 2)
    # events: rows 2-4 (first flag row 3: delay 1 row = 1 s) and rows 7-8 (missed)
    assert (data["n_events"], data["n_events_detected"], data["delay_seconds_mean"]) == (2, 1, 1.0)
    assert data["threshold"] == 0.5
    assert data["attribution"]["n_hits"] == 1 and data["attribution"]["events"][0]["top_sensors"] == ["LIT101"]
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_command_csv_with_threshold_and_clear_errors(tmp_path, capsys) -> None:
    from tidewatch.cli import main

    (tmp_path / "s.csv").write_text("score;label\n0.1;0\n0.9;1\n0.7;0\n0.2;1\n")
    assert main(["evaluate", str(tmp_path / "s.csv"), "--threshold", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "TP 1  FP 1  TN 1  FN 1" in out and "INFLATED" in out
    (tmp_path / "bad.csv").write_text("score,label\n0.1,0\n0.9,maybe\n")
    assert main(["evaluate", str(tmp_path / "bad.csv"), "--threshold", "0.5"]) == 1
    assert "row 1 holds 'maybe'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "s.csv")]) == 1  # no flag column and no --threshold
    assert "--threshold" in capsys.readouterr().err


def test_evaluate_command_reports_incidents_next_to_rows(tmp_path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tidewatch.cli import main

    n = 600
    labels = np.zeros(n, dtype=np.int8)
    labels[100:201] = 1  # one attack, 100 s
    flags = np.zeros(n, dtype=bool)
    flags[110:211] = True  # detected 10 s in, lingers 10 s after
    flags[400:403] = True  # a 3-row blip: no incident
    flags[450:481] = True  # 30 s of false flags: one false incident
    times = np.datetime64("2015-12-28T02:00:00", "us") + np.arange(n) * np.timedelta64(1, "s")
    pq.write_table(pa.table({
        "timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
        "score": np.where(flags, 2.0, 0.1), "flag": flags, "label": labels,
    }), tmp_path / "scored.parquet")
    assert main(["evaluate", str(tmp_path / "scored.parquet"), "--json", str(tmp_path / "r.json")]) == 0
    assert "incident-wise" in capsys.readouterr().out
    inc = json.loads((tmp_path / "r.json").read_text())["incidents"]
    assert (inc["n_incidents"], inc["n_true_incidents"], inc["n_false_incidents"]) == (2, 1, 1)
    assert (inc["n_events"], inc["n_events_detected"]) == (1, 1)
    # Opened once its flags had lasted 10 s (min duration at 1 s sampling): 20 s after the attack began.
    assert inc["delay_seconds_median"] == 20.0
    assert inc["false_incidents_per_day"] == pytest.approx(86400 / (n - 101))
    assert inc["f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)
