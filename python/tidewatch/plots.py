"""One PNG per run: what an engineer looks at first.

Three panels sharing the time axis: the sensor signals (standardised, so they share an axis), the anomaly
score with its threshold, and two strips showing the labelled and the flagged rows. Labelled ranges are also
shaded behind the first two panels so missed and false alarms stand out.

Drawn with matplotlib's object API on the Agg canvas: no display, no pyplot global state, safe in workers.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tidewatch.errors import InputError

LABEL_COLOUR = "#d62728"
FLAG_COLOUR = "#ff7f0e"
SCORE_COLOUR = "#1f3b73"


def _mask(values: Any | None, n_rows: int, what: str) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values)
    if array.shape != (n_rows,):
        raise InputError(f"plot: {what} has shape {array.shape}, expected ({n_rows},) like the scores")
    return array.astype(bool)


def _shade(ax: Any, x: np.ndarray, mask: np.ndarray, colour: str, alpha: float, y0: float = 0.0, y1: float = 1.0,
           label: str | None = None) -> None:
    """Shade the x ranges where ``mask`` holds, spanning [y0, y1] of the axes height."""
    if not mask.any():
        return
    transform = ax.get_xaxis_transform()
    ax.fill_between(x, y0, y1, where=mask, step="post", color=colour, alpha=alpha, linewidth=0,
                    transform=transform, label=label)
    # a one-row range is narrower than a pixel on a long run: a line at each range's start keeps it visible
    starts = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8)))) == 1)
    ax.vlines(x[starts], y0, y1, colors=colour, alpha=alpha, linewidth=0.8, transform=transform)


def _rolling_mean(values: np.ndarray, rows: int) -> np.ndarray:
    """Trailing mean over ``rows`` rows per column (shorter at the start), via cumulative sums."""
    cumulative = np.cumsum(np.nan_to_num(values), axis=0)
    out = cumulative.copy()
    out[rows:] = cumulative[rows:] - cumulative[:-rows]
    counts = np.minimum(np.arange(1, len(values) + 1), rows)[:, None]
    return out / counts


def plot_run(
    path: str | Path,
    *,
    scores: Any,
    threshold: float | None = None,
    labels: Any | None = None,
    flags: Any | None = None,
    signals: Any | None = None,
    sensor_names: Sequence[str] | None = None,
    timestamps: Any | None = None,
    boundaries: Sequence[int] = (),
    title: str = "",
    max_signals: int = 8,
) -> Path:
    """Write the run's PNG to ``path`` and return it.

    ``signals`` is rows x sensors (the first ``max_signals`` columns are drawn); ``boundaries`` are row
    indices drawn as vertical lines (e.g. where one concatenated file ends and the next begins). When
    ``flags`` is not given and ``threshold`` is, the flags are ``scores > threshold``.
    """
    from matplotlib.figure import Figure

    score_values = np.asarray(scores, dtype=np.float64)
    if score_values.ndim != 1 or score_values.size == 0:
        raise InputError(f"plot: scores must be a non-empty 1-D array, got shape {score_values.shape}")
    n_rows = score_values.size
    label_mask = _mask(labels, n_rows, "labels")
    flag_mask = _mask(flags, n_rows, "flags")
    if flag_mask is None and threshold is not None:
        flag_mask = score_values > threshold
    x = np.arange(n_rows) if timestamps is None else np.asarray(timestamps)
    if x.shape != (n_rows,):
        raise InputError(f"plot: timestamps have shape {x.shape}, expected ({n_rows},)")

    signal_values = None
    if signals is not None:
        signal_values = np.asarray(signals, dtype=np.float64)
        if signal_values.ndim == 1:
            signal_values = signal_values[:, None]
        if signal_values.shape[0] != n_rows:
            raise InputError(f"plot: signals have {signal_values.shape[0]} rows, the scores {n_rows}")
        signal_values = signal_values[:, :max_signals]

    figure = Figure(figsize=(14, 8 if signal_values is not None else 5.5), dpi=110, layout="constrained")
    ratios = ([3] if signal_values is not None else []) + [3, 0.8]
    axes = figure.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
    axes = list(np.atleast_1d(axes))
    strip_ax = axes[-1]
    score_ax = axes[-2]

    if signal_values is not None:
        signal_ax = axes[0]
        mean = np.nanmean(signal_values, axis=0)
        std = np.nanstd(signal_values, axis=0)
        standardised = (signal_values - mean) / np.where(std > 0, std, 1.0)
        # on long runs, noisy sensors (quantised voltage, pressure) paint a solid band over the others:
        # draw a rolling mean of about one pixel's worth of rows instead, and say so on the axis
        smoothing = n_rows // 1500
        if smoothing > 1:
            standardised = _rolling_mean(standardised, smoothing)
        names = list(sensor_names or [f"sensor {i}" for i in range(signal_values.shape[1])])
        for column in range(standardised.shape[1]):
            signal_ax.plot(x, standardised[:, column], linewidth=0.6, label=names[column])
        if label_mask is not None:
            _shade(signal_ax, x, label_mask, LABEL_COLOUR, 0.12)
        signal_ax.set_ylabel("signal (z-score)" + (f"\nrolling mean of {smoothing} rows" if smoothing > 1 else ""))
        signal_ax.legend(loc="upper left", fontsize=7, ncol=min(4, standardised.shape[1]), framealpha=0.8)

    finite = score_values[np.isfinite(score_values)]
    # heavy tails (T², Q, reconstruction errors far past the threshold) flatten a linear axis
    log_scale = bool(finite.size and finite.min() > 0 and finite.max() > 100 * np.median(finite))
    score_ax.plot(x, score_values, color=SCORE_COLOUR, linewidth=0.6, label="score")
    if threshold is not None:
        score_ax.axhline(threshold, color="black", linestyle="--", linewidth=1.0, label=f"threshold {threshold:.4g}")
    if label_mask is not None:
        _shade(score_ax, x, label_mask, LABEL_COLOUR, 0.12, label="labelled anomalous")
    if log_scale:
        score_ax.set_yscale("log")
    score_ax.set_ylabel("anomaly score" + (" (log)" if log_scale else ""))
    score_ax.legend(loc="upper left", fontsize=8, framealpha=0.8)

    if label_mask is not None:
        _shade(strip_ax, x, label_mask, LABEL_COLOUR, 0.8, 0.55, 0.95)
    if flag_mask is not None:
        _shade(strip_ax, x, flag_mask, FLAG_COLOUR, 0.9, 0.05, 0.45)
    strip_ax.set_yticks([0.25, 0.75], ["flagged", "labelled"])
    strip_ax.set_ylim(0, 1)
    strip_ax.set_xlabel("time" if timestamps is not None else "row")

    for ax in axes:
        for boundary in boundaries:
            ax.axvline(x[min(max(int(boundary), 0), n_rows - 1)], color="grey", linewidth=0.5, alpha=0.6)
        ax.margins(x=0)
    if title:
        figure.suptitle(title)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
