"""Baseline detectors: each flags a planted gross anomaly and (almost) no normal rows."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from tidewatch import InputError
from tidewatch.baselines import IsolationForestDetector, PcaT2QDetector, RandomScoreDetector


def correlated_normal_rows(rng: np.random.Generator, n_rows: int) -> np.ndarray:
    """Six sensors driven by two latent factors plus noise, like coupled process variables."""
    mixing = np.array([[1.0, 0.5, -0.8, 0.3, 0.0, 1.2], [0.2, -1.0, 0.4, 0.9, 1.1, 0.0]])
    return rng.normal(size=(n_rows, 2)) @ mixing + 0.1 * rng.normal(size=(n_rows, 6)) + 10.0


@pytest.fixture()
def data() -> tuple[np.ndarray, np.ndarray, int]:
    rng = np.random.default_rng(7)
    train = correlated_normal_rows(rng, 600)
    test = correlated_normal_rows(rng, 1000)
    planted = 500
    test[planted] += 25.0  # every sensor far outside anything seen in training
    return train, test, planted


@pytest.mark.parametrize("detector", [PcaT2QDetector(), IsolationForestDetector()], ids=lambda d: d.name)
def test_flags_planted_gross_anomaly_and_few_normal_rows(detector, data) -> None:
    train, test, planted = data
    flags = detector.fit(train).score(test) > detector.threshold
    assert flags[planted]
    normal = np.delete(flags, planted)
    # thresholds are the 99th percentile of training scores: fresh normal rows flag at about that rate
    assert normal.mean() < 0.04


def test_pca_q_catches_a_broken_correlation_that_t2_alone_would_miss(data) -> None:
    train, test, _ = data
    detector = PcaT2QDetector(explained_variance=0.95).fit(train)
    assert detector.n_components_ == 2  # two latent factors explain > 95 %
    row = test[:1].copy()
    # a small move of one sensor against its partners: off the principal plane, modest in size
    row[0, 4] += 1.0
    assert detector.q(row)[0] > detector.q_limit_
    assert detector.flag(row)[0]


def test_pca_threshold_is_training_quantile_of_each_statistic(data) -> None:
    train, _, _ = data
    detector = PcaT2QDetector(quantile=0.95).fit(train)
    assert detector.threshold == 1.0
    assert detector.t2_limit_ == pytest.approx(np.quantile(detector.t2(train), 0.95))
    assert detector.q_limit_ == pytest.approx(np.quantile(detector.q(train), 0.95))
    # flagged when either statistic exceeds its limit: at most 5 % + 5 % of the training rows
    assert detector.flag(train).mean() <= 0.10 + 1e-9


def test_pca_keeps_a_constant_training_sensor_in_raw_units(data) -> None:
    train, test, _ = data
    train = np.column_stack([train, np.full(len(train), 3.0)])
    test = np.column_stack([test, np.full(len(test), 3.0)])
    detector = PcaT2QDetector().fit(train)
    assert detector.constant_columns_.tolist() == [6]
    assert np.isfinite(detector.score(test)).all()
    moved = test[:1].copy()
    moved[0, 6] = 4.0  # the "never changes" sensor changed
    assert detector.flag(moved)[0]


def test_random_scores_ignore_the_data_and_repeat_with_the_seed(data) -> None:
    train, test, planted = data
    first = RandomScoreDetector(seed=3).fit(train)
    second = RandomScoreDetector(seed=3).fit(train)
    scores = first.score(test)
    assert np.array_equal(scores, second.score(test))
    assert 0.97 < first.threshold < 1.0  # the 99th percentile of 600 uniform training draws
    # a floor, not a detector: it flags about 1 % everywhere, the planted row no more likely than any other
    assert 0.002 < np.mean(scores > first.threshold) < 0.03


def test_errors_are_clear(data) -> None:
    train, test, _ = data
    with pytest.raises(InputError, match="fit"):
        PcaT2QDetector().score(test)
    broken = train.copy()
    broken[5, 2] = np.nan
    with pytest.raises(InputError, match="row 5, column 2"):
        IsolationForestDetector().fit(broken)
    with pytest.raises(InputError, match="fitted on 6"):
        PcaT2QDetector().fit(train).score(test[:, :5])
    with pytest.raises(InputError, match="quantile"):
        RandomScoreDetector(quantile=1.0)


# The shared dev data beside the repository (../shared/data), or TIDEWATCH_SHARED_DATA.
SKAB_DATA = Path(os.environ.get("TIDEWATCH_SHARED_DATA",
                   Path(__file__).resolve().parents[2] / "shared" / "data")) / "skab"


def _bench_skab(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_skab", Path(__file__).parents[1] / "bench" / "skab.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_skab", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def test_leaderboard_rule_flags_rows_whose_every_covering_window_is_above(monkeypatch) -> None:
    bench = _bench_skab(monkeypatch)
    # row i's score is the window ending at i: with window 3, row i is covered by the windows of rows i..i+2
    scores = np.array([0, 5, 5, 5, 0, 5, 5, 5, 5, 0, 5, 5], dtype=float)
    flags = bench.leaderboard_flags(scores, limit=1.0, window=3)
    assert flags.tolist() == [False, True, False, False, False, True, True, False, False, False, False, False]
    # a score equal to the limit is not above it; fewer rows than a window flag nothing
    assert not bench.leaderboard_flags(np.array([1.0, 2, 2, 2]), 1.0, 4).any()
    assert bench.leaderboard_flags(np.array([2.0, 2.0]), 1.0, 3).tolist() == [False, False]


@pytest.mark.skipif(not (SKAB_DATA / "valve1").is_dir(), reason="SKAB data not on this machine")
def test_skab_benchmark_runs_the_protocol_and_beats_the_random_floor(tmp_path, capsys, monkeypatch) -> None:
    bench = _bench_skab(monkeypatch)
    code = bench.main(["--data-dir", str(SKAB_DATA), "--out-dir", str(tmp_path), "--methods", "pca,random",
                       "--no-plots"])
    assert code == 0
    assert "published" in capsys.readouterr().out
    summary = json.loads((tmp_path / "skab.json").read_text())
    # 34 files, 400 training rows each: 37,401 - 34 * 400 = 23,801 test rows
    assert len(summary["files"]) == 34 and summary["test_rows"] == 23_801
    figures = {r["key"]: r["report"] for r in summary["results"]}
    assert figures["pca"]["f1"] > 0.6 > 0.1 > figures["random"]["f1"]
    # each method is also reported under the leaderboard notebooks' alarm rule, from the same scores
    assert set(figures) == {"pca", "random", "pca+leaderboard-rule", "random+leaderboard-rule"}
    # random scores rank no better than chance: PR-AUC near the anomalous share of the test rows
    share = summary["test_anomalous_rows"] / summary["test_rows"]
    assert abs(figures["random"]["pr_auc"] - share) < 0.03
