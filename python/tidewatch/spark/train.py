"""`spark-submit train.py`: train tidewatch's LSTM-VAE from plant history and publish the model.

Canonical Parquet history is read and validated by Spark in one pass and fetched to the driver as Arrow;
exports tidewatch's own readers parse (SWaT CSV/XLSX, plant CSV) are read and validated by them on the
driver. Then, on that one table: duplicates, attacks and start-up left out, a time-ordered train/validation
split per plant, native scaler statistics; the fit runs in the native trainer on the driver's device (a
GPU when there is one), fed Arrow, not pandas.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tidewatch.train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, help="history files or directories")
    p.add_argument("--format", choices=["auto", "swat", "parquet", "plant-csv"], default="auto",
                   help="swat: official SWaT CSV/XLSX; parquet: canonical Parquet; plant-csv: with --plant-file")
    p.add_argument("--plant-file", help="YAML/JSON plant file (sensors, stages, csv settings) for other plants")
    p.add_argument("--train-start", help="first timestamp to train on (ISO 8601, UTC)")
    p.add_argument("--train-end", help="last timestamp to train on (ISO 8601, UTC)")
    p.add_argument("--skip-startup-hours", type=float, default=None,
                   help="hours after each plant's first reading left out (start-up transients; default 6 for SWaT, else 0)")
    p.add_argument("--downsample", type=int, default=1,
                   help="train on every Nth window (window stride); scoring still scores every row")
    p.add_argument("--window", type=int, default=30, help="window length in rows (1 Hz SWaT: 30 s)")
    p.add_argument("--epochs", type=int, default=None, help="maximum training epochs")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--latent-size", type=int, default=None)
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="last fraction of each plant's history held out for early stopping and thresholds")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-out", default="/weights/tidewatch", help="model directory, published atomically")
    p.add_argument("--report-dir", default=None, help="training report (JSON, PNG); default: beside the model")
    p.add_argument("--master", default=None, help="Spark master (default: spark-submit's, or local[*])")


def _load(args):
    """The inputs and the plant's SensorSet: (Parquet paths for Spark to read, or the table tidewatch's
    own reader already read and validated on the driver; the sensors; the reader's quarantined rows; the
    number of rows when known)."""
    import tidewatch

    paths = [Path(p) for p in args.input]
    fmt = args.format
    if fmt == "auto":
        suffixes = {p.suffix.lower() for p in paths if p.is_file()} or {".parquet"}
        fmt = "parquet" if suffixes <= {".parquet"} else ("plant-csv" if args.plant_file else "swat")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise tidewatch.TidewatchIOError(f"input not found: {', '.join(missing)}")
    if fmt == "parquet":
        sensors = tidewatch.SensorSet.load(args.plant_file) if args.plant_file else tidewatch.SensorSet.swat()
        return [str(p) for p in paths], sensors, [], _parquet_rows(paths)
    from tidewatch import readers

    tables, quarantined = [], []
    for path in paths:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for f in files:
            if fmt == "swat":
                result = readers.read_swat(f, on_error="quarantine")
            else:
                result = readers.read_plant_csv(f, args.plant_file, on_error="quarantine")
            tables.append(result.table)
            if result.quarantined.num_rows:
                quarantined.append(result.quarantined)
    import pyarrow as pa

    sensors = tidewatch.SensorSet.load(args.plant_file) if args.plant_file else tidewatch.SensorSet.swat()
    table = pa.concat_tables(tables, promote_options="default")
    return table, sensors, quarantined, table.num_rows


def _reader_rows(table, sensors: list[str]):
    """A reader's table in the form prepare_history takes (typed_rows' columns, sorted)."""
    import pyarrow as pa

    from tidewatch.spark import validate as V

    n = table.num_rows
    label = table.column(V.LABEL).cast(pa.int32()) if V.LABEL in table.schema.names else pa.nulls(n, pa.int32())
    rows = pa.table({V.PLANT: table.column(V.PLANT).cast(pa.string()), V.TIMESTAMP: table.column(V.TIMESTAMP),
                     **{s: table.column(s).cast(pa.float64()) for s in sensors}, V.LABEL: label,
                     V.ROW_ID: pa.array(range(n), pa.int64()), V.REASON: pa.nulls(n, pa.string())})
    return rows.sort_by([(V.PLANT, "ascending"), (V.TIMESTAMP, "ascending"), (V.ROW_ID, "ascending")])


def _parquet_rows(paths: list[Path]) -> int | None:
    """Rows in local Parquet inputs, from their footers (no Spark job), or None when unknown."""
    import pyarrow.parquet as pq

    total = 0
    try:
        for path in paths:
            for f in (sorted(path.rglob("*.parquet")) if path.is_dir() else [path]):
                total += pq.ParquetFile(f).metadata.num_rows
    except (OSError, ValueError):
        return None
    return total


# Rows per partition fetched to the driver: ~9 MB of SWaT-width rows, a small slice of a 1 GB driver heap.
ROWS_PER_FETCH = 20_000


def collect_arrow(df, rows: int | None, sort_by: list[str]):
    """All rows of `df` as one Arrow table on the driver, sorted by `sort_by`.

    Fetched a partition at a time as Arrow IPC blobs: `DataFrame.toArrow()` gathers every task's result
    in the driver JVM at once, which ran a 495,000-row SWaT history out of spark-submit's default 1 GB
    heap. Sorting here rather than in Spark spares a range-partitioning job and keeps the order exact
    whatever order the partitions arrive in ((plant, timestamp) is unique after de-duplication).
    `rows` (the DataFrame's row count, counted by Spark when None) sizes the partitions fetched: about
    ROWS_PER_FETCH rows each.
    """
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    if rows is None:
        rows = df.count()

    def to_ipc(batches):
        for batch in batches:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch)
            yield pa.RecordBatch.from_pydict({"ipc": [sink.getvalue().to_pybytes()]})

    tables = [pa.ipc.open_stream(row[0]).read_all()
              for row in df.repartition(max(1, -(-rows // ROWS_PER_FETCH)))
                           .mapInArrow(to_ipc, "ipc binary").toLocalIterator(prefetchPartitions=False)]
    if not tables:
        schema = to_arrow_schema(df.schema)
        return schema.empty_table()
    return pa.concat_tables(tables).sort_by([(c, "ascending") for c in sort_by])


@dataclass
class PreparedHistory:
    train: object  # pa.Table: plant, timestamp, sensors
    validation: object
    quarantined: dict[str, int]  # reason -> rows
    attack_rows: int  # labelled attacks, left out (counted, not quarantined)
    steps: dict[str, int]  # rows left after each step, for the error when none are

    def describe(self) -> str:
        return "; ".join(f"{step}: {rows}" for step, rows in self.steps.items())


def _micros(text: str) -> int:
    """An ISO 8601 time (UTC unless it carries an offset) as microseconds since the epoch."""
    import datetime as dt

    t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(round(t.timestamp() * 1_000_000))


def prepare_history(table, sensors: list[str], skip_hours: float, train_start: str | None,
                    train_end: str | None, validation_fraction: float) -> PreparedHistory:
    """Validated history (typed_rows' columns, sorted by plant, timestamp, arrival) -> the training and
    validation tables. In order: rows validation rejected are counted by reason; of rows at the same time
    the first is kept (the others are `duplicate_timestamp`); labelled attacks are left out; each plant's
    first `skip_hours` (start-up transients) and rows outside [train_start, train_end] are left out; each
    plant's rows from its (1 - validation_fraction) time quantile on are validation, so no validation
    window overlaps training (windows never cross the one cut in time)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from tidewatch.spark import validate as V

    reasons = table.column(V.REASON)
    rejected = pc.value_counts(reasons.filter(pc.is_valid(reasons)))
    quarantined = dict(zip(rejected.field("values").to_pylist(), rejected.field("counts").to_pylist()))
    rows = table.filter(pc.is_null(reasons))
    steps = {"rows read": table.num_rows, "valid": rows.num_rows}
    if rows.num_rows > 1:
        plant, ts = rows.column(V.PLANT), rows.column(V.TIMESTAMP)
        same = pc.and_(pc.equal(plant.slice(1), plant.slice(0, rows.num_rows - 1)),
                       pc.equal(ts.slice(1), ts.slice(0, rows.num_rows - 1)))
        duplicate = pa.concat_arrays([pa.array([False]), same.combine_chunks()])
        if pc.any(duplicate).as_py():
            quarantined[V.REASON_DUPLICATE] = quarantined.get(V.REASON_DUPLICATE, 0) + pc.sum(duplicate).as_py()
            rows = rows.filter(pc.invert(duplicate))
    attack = pc.fill_null(pc.equal(rows.column(V.LABEL), 1), False)
    attack_rows = int(pc.sum(attack).as_py() or 0)
    rows = rows.filter(pc.invert(attack))
    steps["normal (attacks left out)"] = rows.num_rows

    def plant_runs(t):
        """Each row's plant run index and each run's first row (rows are sorted by plant)."""
        codes = pc.dictionary_encode(t.column(V.PLANT)).combine_chunks().indices.to_numpy()
        change = np.r_[True, codes[1:] != codes[:-1]] if len(codes) else np.zeros(0, bool)
        return np.cumsum(change) - 1, np.flatnonzero(change)

    micros = rows.column(V.TIMESTAMP).cast(pa.int64()).to_numpy()
    keep = np.ones(len(micros), bool)
    if skip_hours > 0 and len(micros):
        run, first = plant_runs(rows)
        keep &= micros >= micros[first][run] + int(skip_hours * 3600 * 1_000_000)
        steps[f"after the first {skip_hours:g} h of each plant (--skip-startup-hours)"] = int(keep.sum())
    if train_start:
        keep &= micros >= _micros(train_start)
        steps[f"from --train-start {train_start}"] = int(keep.sum())
    if train_end:
        keep &= micros <= _micros(train_end)
        steps[f"to --train-end {train_end}"] = int(keep.sum())
    rows = rows.filter(pa.array(keep)).select([V.PLANT, V.TIMESTAMP, *sensors])
    micros = micros[keep]
    is_train = np.zeros(len(micros), bool)
    if len(micros):
        _, first = plant_runs(rows)
        ends = np.r_[first[1:], len(micros)]
        for a, b in zip(first, ends):
            # Linear interpolation between closest ranks: Spark's `percentile`, which this replaced.
            cut = np.percentile(micros[a:b], 100 * (1 - validation_fraction))
            is_train[a:b] = micros[a:b] < cut
    steps["training (before each plant's validation cut)"] = int(is_train.sum())
    return PreparedHistory(rows.filter(pa.array(is_train)), rows.filter(pa.array(~is_train)), quarantined,
                           attack_rows, steps)


def run(args: argparse.Namespace) -> dict:
    import tidewatch
    from tidewatch.spark import validate as V
    from tidewatch.spark.session import get_session

    started = time.monotonic()
    log.info("reading %s", ", ".join(args.input))
    source, sensors, read_quarantine, rows_hint = _load(args)
    if isinstance(source, list):
        log.info("starting Spark")
        spark = get_session("tidewatch-train", master=args.master)
        log.info("reading and validating the history (%s rows)", f"{rows_hint:,}" if rows_hint else "unknown")
        # One Spark pass: read, validate, fetch to the driver (where the fit needs every row anyway). The
        # rest of the preparation (duplicates, start-up skip, time window, split, scaler statistics) is
        # columnar work on that one table, not more Spark jobs re-reading the history.
        typed = V.typed_rows(spark.read.parquet(*source), sensors.sensors, sensors.plant).drop("raw")
        table = collect_arrow(typed, rows_hint, sort_by=[V.PLANT, V.TIMESTAMP, V.ROW_ID])
    else:
        # Exports tidewatch's own readers parse (SWaT CSV/XLSX, plant CSV) were read and validated cell by
        # cell on the driver: handing them to Spark to validate again and fetching them back doubled the
        # preparation (SWaT's 495,000 rows: 19 s of 24).
        table = _reader_rows(source, sensors.sensors)
    log.info("%d rows read and validated in %.1fs", table.num_rows, time.monotonic() - started)
    skip_hours = args.skip_startup_hours if args.skip_startup_hours is not None else (
        6.0 if sensors.plant == "swat" else 0.0)
    prepared = prepare_history(table, sensors.sensors, skip_hours=skip_hours, train_start=args.train_start,
                               train_end=args.train_end, validation_fraction=args.validation_fraction)
    reasons = prepared.quarantined
    for t in read_quarantine:
        for reason in t.column("reason").to_pylist():
            reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        log.warning("quarantined %d row(s): %s", count, reason)
    attack_rows = prepared.attack_rows
    train_table, val_table = prepared.train, prepared.validation
    if train_table.num_rows == 0:
        raise tidewatch.InputError(
            f"no normal rows left to train on after validation and filters ({prepared.describe()})")
    stats = tidewatch.ScalerStats(len(sensors))
    for batch in train_table.select(sensors.sensors).to_batches():
        stats.update_batch(batch, sensors)
    scaler = stats.finish("minmax", sensors.sensors)
    if scaler.constant_columns:
        log.warning("constant in training data (kept at unit scale): %s", ", ".join(scaler.constant_columns))
    prep_seconds = time.monotonic() - started
    log.info("training rows %d, validation rows %d (prepared in %.1fs)", train_table.num_rows, val_table.num_rows,
             prep_seconds)

    overrides = {"window": args.window, "seed": args.seed, "device": args.device,
                 "validation_fraction": args.validation_fraction}
    if args.downsample > 1:
        overrides["train_stride"] = args.downsample
    for name, value in (("epochs", args.epochs), ("batch_size", args.batch_size),
                        ("learning_rate", args.learning_rate), ("hidden_size", args.hidden_size),
                        ("latent_size", args.latent_size)):
        if value is not None:
            overrides[name] = value
    model = tidewatch.train(train_table, tidewatch.ModelConfig(**overrides), validation=val_table, sensors=sensors,
                            scaler=scaler, progress="log")
    version = model.save(args.model_out)
    # Scores of the held-out normal rows: the distribution the thresholds were calibrated on.
    calibration = model.detector(device="cpu").score(val_table)
    calibration_scores = calibration.column("score").drop_null().to_numpy()
    report_dir = Path(args.report_dir) if args.report_dir else Path(args.model_out).parent / "reports"
    report = {
        "model": str(Path(args.model_out)),
        "version": version,
        "rows": {"train": train_table.num_rows, "validation": val_table.num_rows, "attack_rows_excluded": attack_rows,
                 "quarantined": reasons},
        "constant_columns": scaler.constant_columns,
        "seconds": {"prepare": round(prep_seconds, 2), "total": round(time.monotonic() - started, 2)},
        "history": model.history,
        "threshold": model.threshold,
    }
    write_report(report_dir, report, calibration_scores, model.threshold)
    log.info("published model %s to %s in %.1fs", version, args.model_out, time.monotonic() - started)
    return report


def write_report(report_dir: Path, report: dict, calibration_scores, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "training-report.json").write_text(json.dumps(report, indent=2, default=str))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    epochs = [h["epoch"] for h in report["history"]]
    ax1.plot(epochs, [h["train_loss"] for h in report["history"]], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in report["history"]], label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_title("loss")
    ax1.legend()
    scores = np.asarray(calibration_scores)
    if scores.size:
        ax2.hist(scores, bins=100, log=True, color="tab:blue", alpha=0.8)
    ax2.axvline(threshold, color="tab:red", label=f"window threshold {threshold:.4g}")
    ax2.set_xlabel("window score (held-out normal data)")
    ax2.set_title("calibration")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(report_dir / "training-report.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("TIDEWATCH_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    import tidewatch

    try:
        run(args)
    except tidewatch.TidewatchError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1
    return 0
