"""`spark-submit inference.py`: score a stream of plant readings in micro-batches and serve metrics.

Per micro-batch (foreachBatch): validate and quarantine bad rows, prepend each plant's carried tail
(the last W-1 rows already scored), repartition by plant and sort by time, score with the native kernel
in `mapInArrow`, write every scored row to the results sink idempotently per batch id, merge the
partitions' metric aggregates on the driver into the one registry served on the metrics port.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tidewatch.inference")

RESULT_STATUSES = ("scored", "warmup")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", choices=["files", "kafka"], default="files", help="where readings come from")
    p.add_argument("--landing-dir", default="/data/landing", help="directory the replayer or plant drops files into")
    p.add_argument("--file-format", choices=["jsonl", "json", "csv", "parquet"], default="jsonl",
                   help="format of landing files: JSON lines (fields by name; the replayer's default), CSV (header "
                        "and columns in canonical order: plant, timestamp, sensors, label), or Parquet")
    p.add_argument("--max-files-per-trigger", type=int, default=50, help="landing files per micro-batch at most")
    p.add_argument("--clean-landing", choices=["off", "delete", "archive"], default="off",
                   help="what happens to a landing file once its batch is committed: kept (default), deleted, or "
                        "moved under --landing-archive-dir. A job that runs for months should not keep them: Spark "
                        "lists the landing directory every trigger")
    p.add_argument("--landing-archive-dir", help="where --clean-landing archive moves processed files")
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (with --source kafka)")
    p.add_argument("--topic", default="ics-sensor-data", help="Kafka topic (with --source kafka)")
    p.add_argument("--checkpoint", default="/data/checkpoints/inference",
                   help="Spark checkpoint; tidewatch keeps its carried tails and batch bookkeeping beside it")
    p.add_argument("--results", default="/data/results", help="results sink (Parquet, partitioned by date)")
    p.add_argument("--quarantine", default="/data/quarantine", help="quarantine sink for rejected rows (Parquet)")
    p.add_argument("--model", default="/weights/tidewatch", help="model directory (manifest.json + model.safetensors)")
    p.add_argument("--metrics-host", default="0.0.0.0", help="address the metrics endpoint binds to")
    p.add_argument("--metrics-port", type=int, default=8001, help="metrics port (Prometheus scrapes /metrics)")
    p.add_argument("--trigger-seconds", type=float, default=10.0, help="micro-batch interval")
    p.add_argument("--threshold", type=float, default=None, help="override the model's window threshold")
    p.add_argument("--plant", default=None, help="plant name for rows without a plant column (default: the model's)")
    p.add_argument("--available-now", action="store_true",
                   help="process what is in the landing directory now, then stop")
    p.add_argument("--stop-after-idle", type=float, default=None,
                   help="stop after this many seconds without new rows (demos and tests)")
    p.add_argument("--incident-min-seconds", type=float, default=None,
                   help="flags must persist this long before an incident opens (default: max(10 s, 10 sample "
                        "periods of the model's training data))")
    p.add_argument("--incident-quiet-seconds", type=float, default=None,
                   help="an incident closes after this long without flags (default: max(60 s, 30 sample periods))")
    p.add_argument("--master", default=None, help="Spark master (default: spark-submit's, or local[*])")


@dataclass
class BatchSummary:
    batch_id: int
    rows_in: int
    scored: int
    warmup: int
    quarantined: int
    anomalies: int
    seconds: float


class InferenceJob:
    def __init__(self, args: argparse.Namespace):
        import tidewatch
        from tidewatch.spark.session import get_session

        self.args = args
        # The model and the metrics port are checked before Spark starts: a wrong path or a port in use
        # is reported in a second, not after the JVM's start-up.
        self.detector = tidewatch.Detector.load(args.model, device="cpu")
        self.sensors = self.detector.sensors
        self.plant = args.plant or self.sensors.plant
        self.registry = tidewatch.MetricsRegistry(self.sensors)
        self.registry.model_loaded(self.detector.version, self.detector.checksum, self.detector.load_seconds)
        self.registry.set_threshold(args.threshold if args.threshold is not None else self.detector.threshold)
        self.server = tidewatch.MetricsServer(self.registry, host=args.metrics_host, port=args.metrics_port)
        try:
            self.state_dir = Path(args.checkpoint) / "tidewatch"
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.model_dir = self._snapshot()
            self.spark = get_session("tidewatch-inference", master=args.master)
        except BaseException:
            self.server.stop()
            raise
        self.failure: str | None = None  # why the stream stopped, when a batch could not be completed
        self.last_rows_at = time.monotonic()
        self.in_batch = False  # the idle stop never interrupts a batch in progress
        self.summaries: list[BatchSummary] = []
        self.warned: set[str] = set()
        log.info("metrics on http://%s:%d/metrics; model %s", args.metrics_host, self.server.port, self.detector.version)

    # -- model hot reload -------------------------------------------------------------------------
    def check_model(self) -> None:
        """Cheap change check each batch; a bad new file is rejected and the current model keeps scoring."""
        import tidewatch

        try:
            changed = self.detector.reload_if_changed()
        except tidewatch.TidewatchError as exc:
            self.registry.model_load_failed()
            log.error("new model rejected, still scoring with %s: %s", self.detector.version, exc)
            return
        if changed:
            try:
                self.model_dir = self._snapshot()
            except tidewatch.TidewatchError as exc:
                self.registry.model_load_failed()
                log.error("new model %s changed while being copied, keeping %s: %s",
                          self.detector.version, self.model_dir, exc)
                return
            self.registry.model_loaded(self.detector.version, self.detector.checksum, self.detector.load_seconds)
            self.registry.set_threshold(
                self.args.threshold if self.args.threshold is not None else self.detector.threshold)
            log.info("model reloaded: %s", self.detector.version)

    def _snapshot(self) -> str:
        """A private, verified copy of the current model beside the checkpoint, which the executors load.
        Published model directories can still be changed or damaged by hand; a worker that starts later
        must get exactly the model the driver checked, never a file swapped underneath it."""
        import tidewatch

        target = self.state_dir / "models" / self.detector.version
        if not (target / "manifest.json").exists():
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.detector.resolved_path or self.detector.path, tmp)
            tidewatch.Detector.load(tmp, device="cpu")  # checks sizes and sha256 of the copy
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        return str(target)

    # -- state beside the checkpoint ----------------------------------------------------------------
    def _committed(self) -> int:
        f = self.state_dir / "committed.json"
        return json.loads(f.read_text())["batch_id"] if f.exists() else -1

    def _tail_before(self, batch_id: int):
        """The tail written by the latest committed batch before `batch_id` (pyarrow Table) or None."""
        import pyarrow.parquet as pq

        candidates = sorted(
            (int(p.stem.split("-")[1]), p) for p in self.state_dir.glob("tail-*.parquet")
        )
        older = [p for i, p in candidates if i < batch_id]
        return pq.read_table(older[-1]) if older else None

    def _write_atomic(self, path: Path, write) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _incident_tracker(self, batch_id: int):
        """The incident state after the latest committed batch before `batch_id`, or a fresh tracker. A
        state saved for other sensors (the model was swapped for one of another plant) starts afresh."""
        import tidewatch

        candidates = sorted((int(p.stem.split("-")[1]), p) for p in self.state_dir.glob("incidents-*.json"))
        older = [p for i, p in candidates if i < batch_id]
        if older:
            try:
                return tidewatch.IncidentTracker.from_json(older[-1].read_text(), self.sensors)
            except tidewatch.InputError as exc:
                log.warning("incident state %s does not apply (%s); starting afresh", older[-1], exc)
        return tidewatch.IncidentTracker(
            self.sensors, sample_period_s=self.detector.sample_period_seconds or 1.0,
            min_duration_s=self.args.incident_min_seconds, quiet_s=self.args.incident_quiet_seconds)

    def _write_incidents(self, transitions, batch_id: int) -> None:
        """One Parquet file per batch under RESULTS/_incidents (hidden from readers of the results),
        replaced whole on replay: a replayed batch never duplicates a transition."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from tidewatch.incidents import INCIDENTS_DIR

        root = Path(self.args.results) / INCIDENTS_DIR
        with self._sink("incidents", str(root), batch_id):
            root.mkdir(parents=True, exist_ok=True)
            target = root / f"batch-{batch_id}.parquet"
            if transitions.num_rows:
                self._write_atomic(target, lambda p: pq.write_table(pa.Table.from_batches([transitions]), p))
            else:
                target.unlink(missing_ok=True)

    # -- the micro-batch ------------------------------------------------------------------------------
    def process_batch(self, df, batch_id: int) -> None:
        if batch_id <= self._committed():
            log.info("batch %d already committed; skipping its replay", batch_id)
            return
        started = time.monotonic()
        self.in_batch = True
        try:
            self._process_batch(df, batch_id, started)
        finally:
            self.in_batch = False

    def _process_batch(self, df, batch_id: int, started: float) -> None:
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        from tidewatch.spark import kernel, validate as V

        self.check_model()
        spark = self.spark
        window = self.detector.window
        sensors = self.sensors.sensors

        checked = V.validate(df, sensors, self.plant)
        tail = self._tail_before(batch_id)
        last_seen = None
        if tail is not None and tail.num_rows:
            tail_df = spark.createDataFrame(tail)  # from Arrow, no pandas
            last_seen = tail_df.groupBy(V.PLANT).agg(F.max(V.TIMESTAMP).alias("last_ts"))
        kept, late_or_dup = V.split_duplicates(checked.valid, last_seen)
        kept = kept.drop(V.ROW_ID).withColumn("_tw_context", F.lit(False))
        combined = kept
        if tail is not None and tail.num_rows:
            combined = kept.unionByName(tail_df.withColumn("_tw_context", F.lit(True)), allowMissingColumns=True)
        combined = combined.persist()

        out_schema = kernel.output_schema_with_label(self.detector.output_schema)
        from pyspark.sql.pandas.types import from_arrow_schema

        spark_schema = from_arrow_schema(out_schema)
        n_parts = int(spark.conf.get("spark.sql.shuffle.partitions"))
        scored = (
            combined.repartition(n_parts, V.PLANT)
            .sortWithinPartitions(V.PLANT, V.TIMESTAMP)
            .mapInArrow(kernel.make_kernel(self.model_dir, self.args.threshold, out_schema), spark_schema)
            .persist()
        )
        payloads = [r[0] for r in scored.where(F.col("status") == kernel.AGGREGATE_STATUS).select("reason").collect()]
        results = scored.where(F.col("status").isin(*RESULT_STATUSES))
        kernel_quarantine = scored.where(F.col("status") == "quarantined").select(
            V.PLANT, V.TIMESTAMP, "reason", F.lit(None).cast(T.StringType()).alias("raw"))

        with self._sink("results", self.args.results, batch_id):
            self._write_results(results, batch_id)
        rejected = checked.quarantined.unionByName(late_or_dup)
        # Rows the kernel quarantined are already in the partitions' aggregates; count only these here.
        q_counts = {r[0]: r[1] for r in rejected.groupBy("reason").count().collect()}
        quarantined = rejected.unionByName(kernel_quarantine)
        if q_counts or payloads:
            with self._sink("quarantine", self.args.quarantine, batch_id):
                quarantined.write.mode("overwrite").parquet(str(Path(self.args.quarantine) / f"batch={batch_id}"))

        # The next batch's context: each plant's last W-1 rows that entered windows.
        from pyspark.sql import Window

        w = Window.partitionBy(V.PLANT).orderBy(F.col(V.TIMESTAMP).desc())
        new_tail = (
            combined.withColumn("_rank", F.row_number().over(w))
            .where(F.col("_rank") < window)
            .drop("_rank", "_tw_context")
        )
        tail_table = new_tail.toArrow()
        import pyarrow.parquet as pq

        with self._sink("checkpoint", str(self.state_dir), batch_id):
            self._write_atomic(self.state_dir / f"tail-{batch_id}.parquet", lambda p: pq.write_table(tail_table, p))

        aggregate = kernel.merge_aggregates(self.sensors, payloads)
        for warning in aggregate.warnings:
            if warning not in self.warned:  # each worker warns once; the job logs each text once
                self.warned.add(warning)
                log.warning("%s", warning)
        for reason, count in q_counts.items():
            aggregate.record_quarantined(reason, count)
        seconds = time.monotonic() - started
        tracker = self._incident_tracker(batch_id)
        transitions = tracker.apply(aggregate, self.detector.version)
        self._write_incidents(transitions, batch_id)
        with self._sink("checkpoint", str(self.state_dir), batch_id):
            self._write_atomic(self.state_dir / f"incidents-{batch_id}.json",
                               lambda p: p.write_text(tracker.to_json()))
        self.registry.apply_batch(aggregate, seconds)
        tracker.publish(self.registry)
        self.registry.set_carried_rows(tail_table.num_rows)
        counts = aggregate.counts()
        with self._sink("checkpoint", str(self.state_dir), batch_id):
            self._write_atomic(
                self.state_dir / "committed.json",
                lambda p: p.write_text(json.dumps({"batch_id": batch_id, "counts": counts})),
            )
        for pattern in ("tail-*.parquet", "incidents-*.json"):
            for old in self.state_dir.glob(pattern):
                if int(old.stem.split("-")[1]) < batch_id - 1:
                    old.unlink(missing_ok=True)
        combined.unpersist()
        scored.unpersist()
        checked.unpersist()
        rows_in = counts["scored"] + counts["warmup"] + counts["quarantined"]
        if rows_in:
            self.last_rows_at = time.monotonic()
        summary = BatchSummary(batch_id, rows_in, counts["scored"], counts["warmup"], counts["quarantined"],
                               counts["anomalies"], seconds)
        self.summaries.append(summary)
        log.info("batch %d: %d rows in, %d scored, %d warm-up, %d quarantined, %d anomalies, %.2fs",
                 batch_id, rows_in, summary.scored, summary.warmup, summary.quarantined, summary.anomalies, seconds)
        for t in transitions.to_pylist():
            log.warning("incident %s %s: plant %s since %s, stages %s, sensors %s, peak score %.4g",
                        t["incident_id"], t["transition"], t["plant"], t["start"], t["stages"] or "-",
                        t["sensors"] or "-", t["peak_score"])

    @contextmanager
    def _sink(self, name: str, path: str, batch_id: int):
        """A failed write to a sink (full disk, read-only or missing mount, no permission) stops the stream
        with one clear line; the batch is not committed, so a restart replays it and replaces its partial
        output: nothing lost, nothing written twice."""
        try:
            yield
        except Exception as exc:
            reason = os_error_of(exc) or probe_write(Path(path)) or first_error_line(exc)
            self.failure = (f"batch {batch_id}: cannot write to the {name} sink {path}: {reason}; "
                            f"the batch is not committed and is replayed when the job restarts")
            log.error("%s", self.failure)
            raise

    def _write_results(self, results, batch_id: int) -> None:
        """Writes a batch's rows under results/date=YYYY-MM-DD/ with the batch id in each file name,
        replacing whatever an interrupted earlier attempt of the same batch left: a replay never
        duplicates rows."""
        from pyspark.sql import functions as F

        root = Path(self.args.results)
        staging = root / "_staging" / f"batch={batch_id}"
        (results.withColumn("date", F.to_date("timestamp").cast("string"))
         .write.mode("overwrite").partitionBy("date").parquet(str(staging)))
        for old in root.glob(f"date=*/batch-{batch_id}-*.parquet"):
            old.unlink()
        for part in sorted(staging.glob("date=*/*.parquet")):
            target = root / part.parent.name / f"batch-{batch_id}-{part.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, target)
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.parent.rmdir()  # _staging, when no other batch is in flight
        except OSError:
            pass

    # -- the stream -----------------------------------------------------------------------------------
    def input_stream(self):
        args = self.args
        spark = self.spark
        if args.source == "kafka":
            if not args.bootstrap_servers:
                raise SystemExit("--source kafka needs --bootstrap-servers")
            from tidewatch.spark.kafka import kafka_stream

            return kafka_stream(spark, args.bootstrap_servers, args.topic, self.sensors.sensors, self.plant)
        Path(args.landing_dir).mkdir(parents=True, exist_ok=True)
        reader = spark.readStream.option("maxFilesPerTrigger", args.max_files_per_trigger)
        if args.clean_landing != "off":
            reader = reader.option("cleanSource", args.clean_landing)
            if args.clean_landing == "archive":
                reader = reader.option("sourceArchiveDir", args.landing_archive_dir)
        if args.file_format == "parquet":
            # Parquet files carry their own types; the first file fixes the schema.
            import pyarrow.parquet as pq

            files = sorted(Path(args.landing_dir).glob("*.parquet"))
            if not files:
                raise SystemExit(f"no Parquet files in {args.landing_dir} to take the schema from")
            from pyspark.sql.pandas.types import from_arrow_schema

            return reader.schema(from_arrow_schema(pq.read_schema(files[0]))).parquet(args.landing_dir)
        # Text sources are read as strings so that bad values are quarantined with a reason, not nulled; a
        # line that cannot be read into fields is quarantined with its text (validate.read_text).
        from tidewatch.spark.validate import read_text

        return read_text(reader, args.file_format, self.sensors.sensors, args.landing_dir)

    def _query_error(self, exc: object) -> Exception:
        """What the user is told when the streaming query failed: the sink failure's one line when a write
        failed (see _sink), else the first line of Spark's error."""
        import tidewatch

        if self.failure:
            return tidewatch.TidewatchIOError(self.failure)
        return RuntimeError(f"streaming query failed: {str(exc).splitlines()[0][:500]}")

    def run(self) -> list[BatchSummary]:
        args = self.args
        writer = (
            self.input_stream()
            .writeStream.foreachBatch(self.process_batch)
            .option("checkpointLocation", str(Path(args.checkpoint) / "spark"))
        )
        writer = writer.trigger(availableNow=True) if args.available_now else writer.trigger(
            processingTime=f"{args.trigger_seconds} seconds")
        query = writer.start()
        try:
            while query.isActive:
                try:
                    query.awaitTermination(1.0)
                except Exception as exc:  # the query failed: StreamingQueryException
                    raise self._query_error(exc) from (None if self.failure else exc)
                idle = time.monotonic() - self.last_rows_at
                # Idle time counts from the last batch that brought rows, never during a batch, and only
                # once a first batch ran (Spark's start-up is not idleness).
                if (args.stop_after_idle is not None and self.summaries and not self.in_batch
                        and idle > args.stop_after_idle):
                    log.info("no new rows for %.0fs: stopping", args.stop_after_idle)
                    query.stop()
            if query.exception() is not None:
                raise self._query_error(query.exception())
        finally:
            if query.isActive:
                query.stop()
        return self.summaries

    def close(self) -> None:
        self.server.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("TIDEWATCH_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="inference.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.clean_landing == "archive" and not args.landing_archive_dir:
        parser.error("--clean-landing archive needs --landing-archive-dir")
    import tidewatch

    try:
        job = InferenceJob(args)
        try:
            job.run()
        finally:
            job.close()
    except tidewatch.TidewatchError as exc:
        print(f"inference.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


# What the OS said, found in a Spark/Hadoop error chain (the first line of which is rarely it).
_OS_ERRORS = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied",
              "Not a directory", "Is a directory", "No such file or directory", "Input/output error",
              "Mkdirs failed to create")


def os_error_of(exc: BaseException) -> str | None:
    """The operating system's reason for a failed write when the error chain carries it."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    for phrase in _OS_ERRORS:
        at = text.find(phrase)
        if at >= 0:
            end = text.find("\n", at)
            return text[at:end if end >= 0 else None].strip()
    return None


def probe_write(directory: Path) -> str | None:
    """Writes and removes a small file in `directory` to learn what the OS says: Hadoop's local file system
    reports some failures (a read-only mount, no permission) without the reason."""
    probe = directory / f".tidewatch-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return None


def first_error_line(exc: BaseException) -> str:
    """The first line of a (Java) error chain that names an exception, without Py4J's wrapper line."""
    lines = [line.strip(" :") for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "Exception: " in line and "Py4J" not in line:
            return line.split("Exception: ", 1)[1][:300]
    return (lines[0] if lines else type(exc).__name__)[:300]