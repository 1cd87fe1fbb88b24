"""`spark-submit train.py`: train tidewatch's LSTM-VAE from plant history and publish the model.

Spark does the data work (parse, validate and quarantine, order by time per plant, scaler statistics by
distributed partial aggregation merged on the driver, a time-ordered train/validation split); the fit runs
in the native trainer on the driver's device (a GPU when there is one), fed Arrow, not pandas.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
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


def _load(spark, args, sensors_hint):
    """Reads the inputs into one Spark DataFrame (columns plant, timestamp, sensors, label) and the
    plant's SensorSet."""
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
        return spark.read.parquet(*[str(p) for p in paths]), sensors, []
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
    return spark.createDataFrame(table), sensors, quarantined


def _scaler_stats(df, sensors):
    """Scaler statistics: one partial per Spark partition, merged on the driver."""
    import pyarrow as pa

    import tidewatch

    sensor_json = sensors.to_json()
    n = len(sensors)

    def partials(batches):
        from tidewatch import ScalerStats, SensorSet

        plant = SensorSet.from_json(sensor_json)
        stats = ScalerStats(n)
        for batch in batches:
            stats.update_batch(batch, plant)
        yield pa.RecordBatch.from_pydict({"stats": [stats.to_json()]})

    merged = tidewatch.ScalerStats(n)
    for row in df.select(*sensors.sensors).mapInArrow(partials, "stats string").collect():
        merged.merge(tidewatch.ScalerStats.from_json(row[0]))
    return merged


# Rows per partition fetched to the driver: ~9 MB of SWaT-width rows, a small slice of a 1 GB driver heap.
ROWS_PER_FETCH = 20_000


def collect_arrow(df, rows: int, sort_by: list[str]):
    """All rows of `df` as one Arrow table on the driver, sorted by `sort_by`.

    Fetched a partition at a time as Arrow IPC blobs: `DataFrame.toArrow()` gathers every task's result
    in the driver JVM at once, which ran a 495,000-row SWaT history out of spark-submit's default 1 GB
    heap. Sorting here rather than in Spark spares a range-partitioning job and keeps the order exact
    whatever order the partitions arrive in ((plant, timestamp) is unique after de-duplication).
    `rows` (the DataFrame's row count) sizes the partitions fetched: about ROWS_PER_FETCH rows each.
    """
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

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


def run(args: argparse.Namespace) -> dict:
    from pyspark.sql import functions as F

    import tidewatch
    from tidewatch.spark import validate as V
    from tidewatch.spark.session import get_session

    started = time.monotonic()
    spark = get_session("tidewatch-train", master=args.master)
    raw, sensors, read_quarantine = _load(spark, args, None)
    checked = V.validate(raw, sensors.sensors, sensors.plant)
    kept, dups = V.split_duplicates(checked.valid, None)
    quarantined = checked.quarantined.unionByName(dups)
    reasons = {r[0]: r[1] for r in quarantined.groupBy("reason").count().collect()}
    for t in read_quarantine:
        for reason in t.column("reason").to_pylist():
            reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        log.warning("quarantined %d row(s): %s", count, reason)

    # Normal operation only: rows labelled as attacks are left out (counted, not quarantined).
    attack_rows = kept.where(F.col(V.LABEL) == 1).count()
    normal = kept.where(F.col(V.LABEL).isNull() | (F.col(V.LABEL) == 0)).drop(V.ROW_ID)
    skip_hours = args.skip_startup_hours if args.skip_startup_hours is not None else (
        6.0 if sensors.plant == "swat" else 0.0)
    # Per-plant bounds come from small aggregations joined back, never from a window over a plant's whole
    # history: such a window puts every row of a plant in one partition (495,000 SWaT rows in one task).
    if skip_hours > 0:
        first = normal.groupBy(V.PLANT).agg(F.min(V.TIMESTAMP).alias("_first"))
        normal = (normal.join(F.broadcast(first), on=V.PLANT)
                  .where(F.col(V.TIMESTAMP) >= F.col("_first") + F.expr(f"INTERVAL {int(skip_hours * 3600)} SECONDS"))
                  .drop("_first"))
    if args.train_start:
        normal = normal.where(F.col(V.TIMESTAMP) >= F.to_timestamp(F.lit(args.train_start)))
    if args.train_end:
        normal = normal.where(F.col(V.TIMESTAMP) <= F.to_timestamp(F.lit(args.train_end)))

    # Time-ordered split per plant: rows from the plant's (1 - validation_fraction) timestamp quantile on are
    # validation, so no validation window leaks into training (windows never cross the one cut in time).
    normal = normal.persist()
    micros = F.unix_micros(F.col(V.TIMESTAMP))
    cut = normal.groupBy(V.PLANT).agg(
        F.percentile(micros, 1 - args.validation_fraction).alias("_cut"))
    split = normal.join(F.broadcast(cut), on=V.PLANT)
    train_df = split.where(micros < F.col("_cut")).drop("_cut")
    val_df = split.where(micros >= F.col("_cut")).drop("_cut")
    stats = _scaler_stats(train_df, sensors)
    if stats.rows == 0:
        raise tidewatch.InputError("no normal rows left to train on after validation and filters")
    scaler = stats.finish("minmax", sensors.sensors)
    if scaler.constant_columns:
        log.warning("constant in training data (kept at unit scale): %s", ", ".join(scaler.constant_columns))

    columns = [V.PLANT, V.TIMESTAMP, *sensors.sensors]
    train_table = collect_arrow(train_df.select(*columns), stats.rows, sort_by=[V.PLANT, V.TIMESTAMP])
    val_table = collect_arrow(val_df.select(*columns), val_df.count(), sort_by=[V.PLANT, V.TIMESTAMP])
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
