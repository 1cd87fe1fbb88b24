"""The smallest real SWaT model the bad-input and fuzz tests score with (trained in about two seconds)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from corpus.generate import canonical_table

# Small, but a real trained and calibrated model: 1,200 rows leave enough normal windows for the
# default calibration quantiles.
TINY = dict(window=4, hidden_size=4, latent_size=2, epochs=1, batch_size=64, device="cpu", patience=0,
            beta_anneal_epochs=0, train_stride=1, seed=1)


def train_tiny_swat_model(path: Path) -> Path:
    """Trains and publishes a tiny SWaT model at `path` (a symlink to its version directory)."""
    import tidewatch

    table = canonical_table(1200, np.random.default_rng(7))
    model = tidewatch.train(table, tidewatch.ModelConfig(**TINY), sensors=tidewatch.SensorSet.swat(), progress=None)
    model.save(path)
    return path
