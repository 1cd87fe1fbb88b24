"""The pure parts of bench/detect.py (the issue-13 harness) on tiny synthetic data: no dataset is read."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def detect():
    spec = importlib.util.spec_from_file_location("bench_detect", REPO / "bench" / "detect.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_detect"] = module
    spec.loader.exec_module(module)
    return module


def _stream(detect, train, test=None, labels=None):
    n = len(train)
    test = train[:5] if test is None else test
    times = detect.regular_times(np.datetime64("2020-01-01T00:00:00", "us"), n + len(test), 1.0)
    return detect.Stream("s", [f"c{i}" for i in range(train.shape[1])], times[:n], train, times[n:], test,
                         np.zeros(len(test), bool) if labels is None else labels)


def test_peer_threshold_uses_only_the_last_20_percent_of_training_rows(detect):
    # rows 0..79 are wild (values up to 1e6), rows 80..99 tame (0..19): the random floor ignores the data,
    # so use a peer whose score is the value itself through the public split + threshold rule
    assert detect.peer_split(100) == 80
    calib = np.arange(20, dtype=float)
    assert detect.peer_threshold(calib) == pytest.approx(np.quantile(calib, 0.99))
    train = np.concatenate([np.linspace(1e5, 1e6, 80), np.arange(20.0)])[:, None]
    run = detect.run_peer("pca", _stream(detect, train), seed=0, knn_max_ref=1000)
    # PCA fitted on the wild rows only; the threshold is the 99th percentile of the tame rows' scores
    fit, score = detect.make_peer("pca", 0, 1000)
    fit(train[:80])
    expected = np.quantile(score(train[80:]), 0.99)
    assert run["threshold"][0] == pytest.approx(expected)
    assert run["threshold"][0] != pytest.approx(np.quantile(score(train), 0.99))


def test_resampling_keeps_an_attack_if_any_source_row_is_attack(detect):
    labels = np.zeros(35, bool)
    labels[13] = True  # one attacked row in the second block of 10
    labels[29] = True  # the last row of the third block
    labels[31] = True  # inside the trailing partial block: dropped with it
    out = detect.resample_labels(labels, 10)
    assert out.tolist() == [False, True, True]
    values = np.arange(70, dtype=float).reshape(35, 2)
    means = detect.resample_mean(values, 10)
    assert means.shape == (3, 2)
    assert means[0].tolist() == [9.0, 10.0]  # mean of rows 0..9
    times = detect.regular_times(np.datetime64("2020-01-01T00:00:00", "us"), 35, 1.0)
    assert detect.resample_times(times, 10)[1] == times[10]


def test_smap_label_ranges_are_inclusive(detect):
    labels = detect.smap_label_rows(10, [[2, 4], [9, 9]])
    assert np.flatnonzero(labels).tolist() == [2, 3, 4, 9]
    with pytest.raises(ValueError):
        detect.smap_label_rows(10, [[5, 10]])


def test_normalise_puts_every_threshold_at_one(detect):
    scores = np.array([0.5, 2.0, -3.0, -1.0])
    thr = np.array([1.0, 1.0, -2.0, -2.0])
    out = detect.normalise(scores, thr)
    assert out.tolist() == [0.5, 2.0, 0.0, 2.0]
    assert ((out > 1) == (scores > thr)).all()


def test_false_alarm_episodes_count_runs_of_flagged_normal_rows_per_stream(detect):
    flags = np.array([1, 1, 0, 1, 1, 1, 0, 1], bool)
    labels = np.array([0, 0, 0, 0, 1, 0, 0, 0], bool)
    # runs of flagged normal rows: [0,1], [3], [5], [7]; a boundary at 1 splits the first one
    assert detect.false_alarm_episodes(flags, labels) == 4
    assert detect.false_alarm_episodes(flags, labels, boundaries=[0, 1]) == 5
    assert detect.per_day(4, 8640, 10.0) == pytest.approx(4.0)


def test_ecod_matches_pyod_on_single_rows_and_ignores_other_test_rows(detect):
    pytest.importorskip("pyod")
    from pyod.models.ecod import ECOD

    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 4)) * [1, 2, 0.5, 3] + rng.exponential(size=(300, 4)) * [0, 1, 0, 2]
    test = rng.normal(size=(6, 4)) * 3
    ours = detect.Ecod().fit(train)
    reference = ECOD().fit(train)
    # pyod ranks a new row among the training rows plus the rows scored with it: one row at a time is ours
    one_by_one = np.array([reference.decision_function(row[None, :])[0] for row in test])
    np.testing.assert_allclose(ours.score(test), one_by_one, rtol=1e-6)
    # and a row's score does not depend on the other rows scored with it
    np.testing.assert_allclose(ours.score(np.vstack([test, test * 10]))[:6], ours.score(test))


def test_rank_of_ranks_methods_and_skips_failures(detect):
    results = {"tidewatch": {"pr_auc": 0.4}, "knn": {"pr_auc": 0.6}, "pca": {"error": "x"},
               "random": {"pr_auc": 0.1}}
    assert detect.rank_of(results, "pr_auc", "tidewatch") == ("knn", 2, 3)
    assert detect.rank_of(results, "pr_auc", "pca") == ("knn", None, 3)
