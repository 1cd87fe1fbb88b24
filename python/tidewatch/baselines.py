"""Reference detectors to measure tidewatch's LSTM-VAE against.

Each has the same interface: ``fit(train)`` on normal rows (rows x sensors), then ``score(x)`` giving one
score per row (higher = more anomalous) and ``threshold`` fitted on the training rows only (a high quantile of
the training scores; never test labels). A row is flagged when its score exceeds the threshold.

- ``PcaT2QDetector``: standardise, keep the principal components explaining ``explained_variance`` of the
  variance, Hotelling's T² in the kept space and Q (squared prediction error) in the residual space. Each
  statistic gets its own training-quantile limit; the score is the larger of the two statistics divided by
  its limit, so the threshold is 1 and a row is flagged when either statistic is over its limit.
- ``IsolationForestDetector``: scikit-learn's Isolation Forest, score = minus ``score_samples``.
- ``RandomScoreDetector``: uniform random scores, the floor any real detector must beat.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from tidewatch.errors import InputError

DEFAULT_QUANTILE = 0.99


def _as_matrix(values: Any, what: str, n_features: int | None = None) -> np.ndarray:
    """A finite float64 rows x sensors matrix; errors name the first bad row and column."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise InputError(f"{what}: expected rows x sensors, got shape {x.shape}")
    if n_features is not None and x.shape[1] != n_features:
        raise InputError(f"{what}: has {x.shape[1]} sensor columns, the detector was fitted on {n_features}")
    bad = ~np.isfinite(x)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"{what}: {int(bad.sum())} value(s) are not finite (first at row {row}, column {column}: {x[row, column]})"
        )
    return x


def _check_quantile(quantile: float) -> float:
    if not 0.0 < quantile < 1.0:
        raise InputError(f"threshold quantile must be within (0, 1), got {quantile}")
    return float(quantile)


class BaselineDetector(ABC):
    """``fit(train)`` then ``score(x)``; ``threshold`` comes from the training scores only."""

    name: str = "baseline"

    def __init__(self, quantile: float = DEFAULT_QUANTILE) -> None:
        self.quantile = _check_quantile(quantile)
        self.threshold: float = np.nan
        self.n_features: int | None = None

    def fit(self, train: Any) -> BaselineDetector:
        x = _as_matrix(train, f"{self.name}: training data")
        if x.shape[0] < 2:
            raise InputError(f"{self.name}: needs at least 2 training rows, got {x.shape[0]}")
        self.n_features = x.shape[1]
        self._fit(x)
        self.threshold = self._fit_threshold(x)
        return self

    def score(self, x: Any) -> np.ndarray:
        if self.n_features is None:
            raise InputError(f"{self.name}: call fit() before score()")
        return self._score(_as_matrix(x, f"{self.name}: scored data", self.n_features))

    def flag(self, x: Any) -> np.ndarray:
        return self.score(x) > self.threshold

    def _fit_threshold(self, train: np.ndarray) -> float:
        return float(np.quantile(self._score(train), self.quantile))

    @abstractmethod
    def _fit(self, train: np.ndarray) -> None: ...

    @abstractmethod
    def _score(self, x: np.ndarray) -> np.ndarray: ...


class PcaT2QDetector(BaselineDetector):
    """PCA with Hotelling's T² and Q (SPE) statistics; thresholds are training quantiles of each statistic."""

    name = "PCA T²+Q"

    def __init__(self, explained_variance: float = 0.95, quantile: float = DEFAULT_QUANTILE) -> None:
        super().__init__(quantile)
        if not 0.0 < explained_variance <= 1.0:
            raise InputError(f"explained_variance must be within (0, 1], got {explained_variance}")
        self.explained_variance = explained_variance

    def _fit(self, train: np.ndarray) -> None:
        self.mean_ = train.mean(axis=0)
        std = train.std(axis=0, ddof=1)
        # a sensor constant in training cannot be standardised; keep it in raw units so any move shows in Q
        self.constant_columns_ = np.flatnonzero(std <= 1e-12 * np.maximum(1.0, np.abs(self.mean_)))
        std[self.constant_columns_] = 1.0
        self.std_ = std
        z = (train - self.mean_) / self.std_
        _, singular, components = np.linalg.svd(z, full_matrices=False)
        variances = singular**2 / (train.shape[0] - 1)
        total = variances.sum()
        if total <= 0:
            raise InputError(f"{self.name}: every training column is constant; nothing to model")
        cumulative = np.cumsum(variances) / total
        n_kept = int(np.searchsorted(cumulative, self.explained_variance - 1e-12) + 1)
        self.n_components_ = min(n_kept, variances.size)
        self.components_ = components[: self.n_components_].T  # sensors x kept
        # floor tiny eigenvalues so T² stays finite on (near) rank-deficient training data
        self.eigenvalues_ = np.maximum(variances[: self.n_components_], 1e-12 * total)

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean_) / self.std_

    def t2(self, x: Any) -> np.ndarray:
        z = self._standardise(_as_matrix(x, f"{self.name}: data", self.n_features))
        projected = z @ self.components_
        return np.sum(projected**2 / self.eigenvalues_, axis=1)

    def residuals(self, x: Any) -> np.ndarray:
        """Per-sensor residuals in standardised units (rows x sensors); their squares sum to Q."""
        z = self._standardise(_as_matrix(x, f"{self.name}: data", self.n_features))
        return z - (z @ self.components_) @ self.components_.T

    def q(self, x: Any) -> np.ndarray:
        return np.sum(self.residuals(x) ** 2, axis=1)

    def _fit_threshold(self, train: np.ndarray) -> float:
        tiny = np.finfo(np.float64).tiny
        self.t2_limit_ = max(float(np.quantile(self.t2(train), self.quantile)), tiny)
        # with every component kept Q is rounding noise: only T² speaks
        self.uses_q_ = self.n_components_ < self.n_features
        self.q_limit_ = max(float(np.quantile(self.q(train), self.quantile)), tiny) if self.uses_q_ else np.nan
        return 1.0

    def _score(self, x: np.ndarray) -> np.ndarray:
        t2_ratio = self.t2(x) / self.t2_limit_
        if not self.uses_q_:
            return t2_ratio
        return np.maximum(t2_ratio, self.q(x) / self.q_limit_)


class IsolationForestDetector(BaselineDetector):
    """scikit-learn's Isolation Forest; the threshold is a training quantile of its anomaly score."""

    name = "Isolation Forest"

    def __init__(
        self, n_estimators: int = 200, quantile: float = DEFAULT_QUANTILE, random_state: int = 0
    ) -> None:
        super().__init__(quantile)
        self.n_estimators = n_estimators
        self.random_state = random_state

    def _fit(self, train: np.ndarray) -> None:
        from sklearn.ensemble import IsolationForest

        self.forest_ = IsolationForest(n_estimators=self.n_estimators, random_state=self.random_state, n_jobs=1)
        self.forest_.fit(train)

    def _score(self, x: np.ndarray) -> np.ndarray:
        return -self.forest_.score_samples(x)


class RandomScoreDetector(BaselineDetector):
    """Uniform random scores, independent of the data: the floor. Seeded, so runs repeat."""

    name = "random scores"

    def __init__(self, quantile: float = DEFAULT_QUANTILE, seed: int = 0) -> None:
        super().__init__(quantile)
        self.seed = seed

    def _fit(self, train: np.ndarray) -> None:
        self.rng_ = np.random.default_rng(self.seed)

    def _score(self, x: np.ndarray) -> np.ndarray:
        return self.rng_.uniform(size=x.shape[0])
