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
from dataclasses import dataclass, field
from pathlib import Path

from tidewatch.spark.landing import APPENDED, LandingWatch

log = logging.getLogger("tidewatch.inference")

RESULT_STATUSES = ("scored", "warmup")


def _positive_finite(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535, got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", choices=["files", "kafka"], default="files", help="where readings come from")
    p.add_argument("--landing-dir", default="/data/landing", help="directory the replayer or plant drops files into")
    p.add_argument("--file-format", choices=["jsonl", "json", "csv", "parquet"], default="jsonl",
                   help="format of landing files: JSON lines (fields by name), CSV (a header naming the columns in "
                        "canonical order: plant, timestamp, sensors, label; `tidewatch replay` writes CSV unless "
                        "told --format jsonl), or Parquet")
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
    p.add_argument("--metrics-port", type=_port, default=8001,
                   help="metrics port (Prometheus scrapes /metrics; 0: any free port)")
    p.add_argument("--trigger-seconds", type=float, default=10.0, help="micro-batch interval")
    p.add_argument("--threshold", type=_positive_finite, default=None,
                   help="override the model's window threshold (a positive number)")
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


class StageClock:
    """Wall time per named stage of a micro-batch: `lap(name)` charges the time since the previous lap."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.stages[name] = self.stages.get(name, 0.0) + now - self._last
        self._last = now


@dataclass
class BatchSummary:
    batch_id: int
    rows_in: int
    scored: int
    warmup: int
    quarantined: int
    anomalies: int
    seconds: float
    # Wall seconds per stage of the batch (in order), for the benchmark's breakdown.
    stages: dict[str, float] = field(default_factory=dict)
    finished_at: float = 0.0  # time.monotonic() when the batch was committed


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
            self.spark_checkpoint = Path(args.checkpoint) / "spark"  # Spark's own: offsets, commits, sources
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.model_dir = self._snapshot()
            self.landing_watch = LandingWatch(self.state_dir / "landing-files.json") \
                if args.source == "files" else None
            self.spark = get_session("tidewatch-inference", master=args.master)
        except BaseException:
            self.server.stop()
            raise
        self.failure: str | None = None  # why the stream stopped, when a batch could not be completed
        self.last_rows_at = time.monotonic()
        self.in_batch = False  # the idle stop never interrupts a batch in progress
        self.summaries: list[BatchSummary] = []
        self.warned: set[str] = set()
        self.query_started: float | None = None  # time.monotonic() when the streaming query started
        # (batch id, tail, incident tracker, model version) after the batch this job committed last.
        self._carried = None
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
        except BaseException as exc:  # noqa: BLE001 - a native panic (pyo3's PanicException) is a BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self.registry.model_load_failed()
            log.error("new model rejected (internal error: %s), still scoring with %s; please report it",
                      str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__, self.detector.version)
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
            # The model's two files only: whatever else a published directory holds (notes, a dangling
            # link) is not the model, and copying it could fail or take long.
            tmp.mkdir(parents=True)
            source = Path(self.detector.resolved_path or self.detector.path)
            for name in ("manifest.json", "model.safetensors"):
                try:
                    shutil.copyfile(source / name, tmp / name)
                except OSError as exc:
                    raise tidewatch.TidewatchIOError(f"{source / name}: {exc.strerror or exc}") from None
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
        """One Spark pass: validate (one projection), partition by plant, sort by time, score in
        `mapInArrow` (see spark/kernel.py), collect to the driver as Arrow. Every sink and the carried state
        are then written from that one table with pyarrow: the batch is never computed twice."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from tidewatch.spark import kernel, validate as V

        clock = StageClock()
        self.check_model()
        tail, tracker = self._state_before(batch_id)
        batch_files = self.landing_watch.sizes_of(self.landing_watch.batch_files(
            self.spark_checkpoint / "sources" / "0", batch_id)) if self.landing_watch else {}
        clock.lap("model check, carried state")

        table = self.score_frame(df, tail)
        clock.lap("Spark: read, validate, shuffle, kernel, collect")

        status = table.column("status")
        states = table.filter(pc.equal(status, kernel.STATE_STATUS))
        results = table.filter(pc.is_in(status, pa.array(RESULT_STATUSES))).select(
            kernel.results_columns(table.schema))
        quarantined = table.filter(pc.equal(status, "quarantined")).select(
            [V.PLANT, V.TIMESTAMP, V.REASON, kernel.RAW])
        appended = self.landing_watch.appended_lines(batch_files) if self.landing_watch else []
        self._warn_subdirectories()
        if appended:
            for path in dict.fromkeys(p for p, _ in appended):
                log.error("%s grew after a batch read it: %d line(s) Spark will not read are quarantined as %s; "
                          "write landing files aside and rename them into place", path,
                          sum(p == path for p, _ in appended), APPENDED)
            late = pa.table({V.PLANT: pa.nulls(len(appended), pa.string()),
                             V.TIMESTAMP: pa.nulls(len(appended), quarantined.schema.field(V.TIMESTAMP).type),
                             V.REASON: pa.array([APPENDED] * len(appended), pa.string()),
                             kernel.RAW: pa.array([line for _, line in appended], pa.string())})
            quarantined = pa.concat_tables([quarantined, late.cast(quarantined.schema)])
        with self._sink("results", self.args.results, batch_id):
            self._write_results(results, batch_id)
        with self._sink("quarantine", self.args.quarantine, batch_id):
            self._write_quarantine(quarantined, batch_id)
        clock.lap("results and quarantine sinks")

        aggregate = kernel.merge_aggregates(self.sensors, states.column(kernel.AGGREGATE).to_pylist())
        if appended:
            aggregate.record_quarantined(APPENDED, len(appended))
        new_tail = self._next_tail(tail, [t for t in states.column(kernel.TAIL).to_pylist() if t is not None])
        with self._sink("checkpoint", str(self.state_dir), batch_id):
            if new_tail is not None:
                self._write_atomic(self.state_dir / f"tail-{batch_id}.parquet",
                                   lambda p: pq.write_table(new_tail, p))
        for warning in aggregate.warnings:
            if warning not in self.warned:  # each worker warns once; the job logs each text once
                self.warned.add(warning)
                log.warning("%s", warning)
        transitions = tracker.apply(aggregate, self.detector.version)
        self._write_incidents(transitions, batch_id)
        with self._sink("checkpoint", str(self.state_dir), batch_id):
            self._write_atomic(self.state_dir / f"incidents-{batch_id}.json",
                               lambda p: p.write_text(tracker.to_json()))
        seconds = time.monotonic() - started
        self.registry.apply_batch(aggregate, seconds)
        tracker.publish(self.registry)
        carried_rows = new_tail.num_rows if new_tail is not None else 0
        self.registry.set_carried_rows(carried_rows)
        counts = aggregate.counts()
        with self._sink("checkpoint", str(self.state_dir), batch_id):
            self._write_atomic(
                self.state_dir / "committed.json",
                lambda p: p.write_text(json.dumps({"batch_id": batch_id, "counts": counts})),
            )
        self._carried = (batch_id, new_tail, tracker, self.detector.version)
        if self.landing_watch is not None:
            self.landing_watch.remember(batch_files)
            with self._sink("checkpoint", str(self.state_dir), batch_id):
                self.landing_watch.save(self._write_atomic)
        for pattern in ("tail-*.parquet", "incidents-*.json"):
            for old in self.state_dir.glob(pattern):
                if int(old.stem.split("-")[1]) < batch_id - 1:
                    old.unlink(missing_ok=True)
        clock.lap("state, incidents, metrics, commit")
        rows_in = counts["scored"] + counts["warmup"] + counts["quarantined"]
        if rows_in:
            self.last_rows_at = time.monotonic()
        summary = BatchSummary(batch_id, rows_in, counts["scored"], counts["warmup"], counts["quarantined"],
                               counts["anomalies"], time.monotonic() - started, clock.stages, time.monotonic())
        self.summaries.append(summary)
        log.info("batch %d: %d rows in, %d scored, %d warm-up, %d quarantined, %d anomalies, %.2fs (%s)",
                 batch_id, rows_in, summary.scored, summary.warmup, summary.quarantined, summary.anomalies,
                 summary.seconds, ", ".join(f"{name} {t:.2f}s" for name, t in clock.stages.items()))
        for t in transitions.to_pylist():
            log.warning("incident %s %s: plant %s since %s, stages %s, sensors %s, peak score %.4g",
                        t["incident_id"], t["transition"], t["plant"], t["start"], t["stages"] or "-",
                        t["sensors"] or "-", t["peak_score"])

    def _warn_subdirectories(self) -> None:
        """Spark's file source reads the landing directory's own files only: say so, once per folder, when
        files are dropped into a folder inside it."""
        if self.args.source != "files":
            return
        archive = Path(self.args.landing_archive_dir).resolve() if self.args.landing_archive_dir else None
        try:
            # scandir: the entries' types come with the listing, no stat per landing file every batch.
            with os.scandir(self.args.landing_dir) as entries:
                folders = [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith((".", "_"))]
        except OSError:
            return
        for folder in folders:
            if str(folder) not in self.warned and folder.resolve() != archive:
                self.warned.add(str(folder))
                log.warning("%s is a folder inside the landing directory: files in it are never read; drop "
                            "landing files into %s itself", folder, self.args.landing_dir)

    def _state_before(self, batch_id: int):
        """(carried tail, incident tracker) after the latest committed batch before `batch_id`: kept in
        memory from the batch this job committed last, else read from the files beside the checkpoint (a
        restarted job). Taken, so that a batch that fails half way never leaves a half-applied state."""
        carried, self._carried = self._carried, None
        if (carried is not None and carried[0] < batch_id and carried[3] == self.detector.version
                and carried[0] == self._committed()):
            return carried[1], carried[2]
        return self._tail_before(batch_id), self._incident_tracker(batch_id)

    @staticmethod
    def _next_tail(tail, partition_tails: list[bytes]):
        """The next batch's context: each plant's last W-1 rows that entered windows. Plants without rows
        in this batch keep theirs."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from tidewatch.spark import kernel

        new = [kernel.tail_from_ipc(t) for t in partition_tails]
        if not new:
            return tail
        if tail is not None and tail.num_rows and tail.schema.names == new[-1].schema.names:
            renewed = pa.concat_arrays([t.column("plant").combine_chunks() for t in new])
            new.insert(0, tail.filter(pc.invert(pc.is_in(tail.column("plant"), renewed))))
        return pa.concat_tables([t.cast(new[-1].schema) for t in new])

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
        """Writes a batch's rows under results/date=YYYY-MM-DD/batch-<id>-0.parquet (UTC dates), replacing
        whatever an interrupted earlier attempt of the same batch left: a replay never duplicates rows.
        Each file is written under a hidden name and renamed, so readers never see half a file."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        root = Path(self.args.results)
        for old in root.glob(f"date=*/batch-{batch_id}-*.parquet"):
            old.unlink()
        if not results.num_rows:
            return
        dates = pc.strftime(results.column("timestamp"), format="%Y-%m-%d")
        for date in pc.unique(dates).to_pylist():
            part = results.filter(pc.equal(dates, date))
            target = root / f"date={date}" / f"batch-{batch_id}-0.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            self._write_atomic(target, lambda p, part=part: pq.write_table(part, p))

    def _write_quarantine(self, quarantined, batch_id: int) -> None:
        """The batch's rejected rows under quarantine/batch=<id>/, replaced whole on replay."""
        import pyarrow.parquet as pq

        directory = Path(self.args.quarantine) / f"batch={batch_id}"
        shutil.rmtree(directory, ignore_errors=True)
        if not quarantined.num_rows:
            return
        directory.mkdir(parents=True, exist_ok=True)
        self._write_atomic(directory / "part-0.parquet", lambda p: pq.write_table(quarantined, p))

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

    def score_frame(self, df, tail):
        """The batch's one Spark pass (see _process_batch): kernel output as an Arrow table."""
        from pyspark.sql.pandas.types import from_arrow_schema

        from tidewatch.spark import kernel, validate as V

        sensors = self.sensors.sensors
        typed = V.typed_rows(df, sensors, self.plant)
        schema = kernel.output_schema(self.detector.output_schema)
        # No more partitions than task slots: on local[2] four partitions ran as two waves of Python tasks.
        n_parts = max(1, min(int(self.spark.conf.get("spark.sql.shuffle.partitions")),
                             self.spark.sparkContext.defaultParallelism))
        tail_ipc = kernel.tail_to_ipc(tail) if tail is not None and tail.num_rows else None
        score = kernel.make_kernel(self.model_dir, self.args.threshold, schema, sensors, tail_ipc,
                                   self.detector.window)
        return (
            typed.repartition(n_parts, V.PLANT)
            # Arrival order breaks ties: of rows at the same time, the first is kept (the Detector's rule).
            .sortWithinPartitions(V.PLANT, V.TIMESTAMP, V.ROW_ID)
            .drop(V.ROW_ID)
            .mapInArrow(score, from_arrow_schema(schema))
            .toArrow()
        )

    def warm_up(self, stream) -> None:
        """Runs the batch pipeline once on a few made-up rows (scored, written nowhere) before the stream
        starts: Spark compiles its code, starts the Python workers, they load the model and run its first
        forward pass, so the first real batch takes about as long as the others."""
        import tempfile

        from tidewatch.spark.validate import read_text

        started = time.monotonic()
        fmt = self.args.file_format
        with tempfile.TemporaryDirectory(prefix="tidewatch-warm-up-") as tmp:
            if self.args.source == "files" and fmt in ("jsonl", "json", "csv"):
                # Through the landing files' own parsing, so that its code is compiled too.
                sensors = self.sensors.sensors
                times = [f"1970-01-01T00:{i // 60:02d}:{i % 60:02d}Z" for i in range(self.detector.window + 16)]
                if fmt == "csv":
                    lines = [",".join(["plant", "timestamp", *sensors, "label"])]
                    lines += [",".join(["warm-up", t, *["0"] * len(sensors), "0"]) for t in times]
                else:
                    lines = [json.dumps({"plant": "warm-up", "timestamp": t, **dict.fromkeys(sensors, "0")})
                             for t in times]
                Path(tmp, f"warm-up.{fmt}").write_text("\n".join(lines) + "\n")
                frame = read_text(self.spark.read, fmt, sensors, tmp)
            else:
                fields = stream.schema.fields
                rows = [tuple(f"warm-up-{i}" if f.name == "plant" else None for f in fields) for i in range(16)]
                frame = self.spark.createDataFrame(rows, stream.schema)
            self.score_frame(frame, None)
        log.info("pipeline warmed up in %.1fs", time.monotonic() - started)

    def run(self) -> list[BatchSummary]:
        args = self.args
        stream = self.input_stream()
        self.warm_up(stream)
        writer = (
            stream
            .writeStream.foreachBatch(self.process_batch)
            .option("checkpointLocation", str(self.spark_checkpoint))
        )
        writer = writer.trigger(availableNow=True) if args.available_now else writer.trigger(
            processingTime=f"{args.trigger_seconds} seconds")
        query = writer.start()
        self.query_started = time.monotonic()
        started_up = False
        try:
            while query.isActive:
                try:
                    query.awaitTermination(1.0)
                except Exception as exc:  # the query failed: StreamingQueryException
                    raise self._query_error(exc) from (None if self.failure else exc)
                if not started_up and (self.summaries or _waiting_for_data(query)):
                    started_up = True
                    if not self.summaries:
                        self.last_rows_at = time.monotonic()
                idle = time.monotonic() - self.last_rows_at
                # Idle time counts from the last batch that brought rows, never during a batch, and only
                # once Spark has started and looked for data (its start-up is not idleness; a restarted
                # job with nothing new to read is idle from then).
                if (args.stop_after_idle is not None and started_up and not self.in_batch
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


def _waiting_for_data(query) -> bool:
    """Spark ran a trigger and found nothing new to read."""
    status = query.status
    return not status.get("isTriggerActive") and not status.get("isDataAvailable") \
        and str(status.get("message", "")).startswith("Waiting for")


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
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # pyarrow's strerror wraps the OS's words in its own
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