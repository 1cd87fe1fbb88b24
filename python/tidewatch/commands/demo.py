"""`tidewatch demo`: the whole loop on embedded defaults, on this machine.

Simulates SWaT-shaped plant data (a history, then a live stretch holding an attack), trains the LSTM-VAE
on the history with Spark, replays the live stretch into a landing directory at N× real time,
stream-scores it with the inference job (metrics on :8001), and prints what it found.
"""
from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run tidewatch end to end on simulated SWaT-shaped data",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="demo-run", help="where data, model, checkpoints and results go")
    p.add_argument("--train-hours", type=float, default=5.5, help="hours of plant history to train on")
    p.add_argument("--test-hours", type=float, default=1.5, help="hours that follow, replayed as the live stream")
    p.add_argument("--attacks", default="1", help="official attack numbers the simulator plays (it places them itself; "
                                                  "with the defaults attack 1 falls in the live stretch)")
    p.add_argument("--speed", type=float, default=200.0, help="replay speed, times real time")
    p.add_argument("--epochs", type=int, default=8, help="training epochs")
    p.add_argument("--metrics-port", type=int, default=8001)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from tidewatch import simulator
    from tidewatch.replay import replay_to_directory
    from tidewatch.spark import inference, train

    work = Path(args.workdir).resolve()
    for sub in ("landing", "checkpoints", "results", "quarantine"):
        d = work / sub
        if d.exists():
            import shutil

            shutil.rmtree(d)
    (work / "data").mkdir(parents=True, exist_ok=True)

    # The simulator spreads attacks over its run, the first one near the middle: simulate twice the
    # history so the attack falls just after it, in the live stretch.
    hours = max(2 * args.train_hours + 1, args.train_hours + args.test_hours)
    print(f"[1/4] simulating {hours:g} h of plant operation with attack(s) {args.attacks}")
    attacks = [int(a) for a in args.attacks.split(",") if a]
    plant = simulator.simulate(int(hours * 3600), seed=args.seed, attacks=attacks, start="2015-12-28 07:00:00")
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    split_us = int(np.datetime64("2015-12-28T07:00:00", "us").astype(np.int64)) + int(args.train_hours * 3600e6)
    split = pa.scalar(split_us, pa.timestamp("us", tz="UTC"))
    history = plant.filter(pc.less(plant["timestamp"], split))
    end = pa.scalar(split_us + int(args.test_hours * 3600e6), pa.timestamp("us", tz="UTC"))
    live = plant.filter(pc.and_(pc.greater_equal(plant["timestamp"], split), pc.less(plant["timestamp"], end)))
    pq.write_table(history, work / "data" / "history.parquet")
    pq.write_table(live, work / "data" / "live.parquet")
    print(f"      history {history.num_rows} rows (attack rows {pc.sum(history['label']).as_py() or 0}, left out of "
          f"training), live {live.num_rows} rows (attack rows {pc.sum(live['label']).as_py() or 0})")

    print("[2/4] training on the normal history with Spark (local)")
    model_dir = work / "weights" / "tidewatch"
    train.main([
        "--input", str(work / "data" / "history.parquet"), "--format", "parquet",
        "--model-out", str(model_dir), "--report-dir", str(work / "reports"),
        "--epochs", str(args.epochs), "--seed", str(args.seed), "--skip-startup-hours", "0",
    ])

    print(f"[3/4] replaying {live.num_rows} rows at {args.speed:g}x into {work / 'landing'}")
    replayer = threading.Thread(
        target=replay_to_directory,
        kwargs=dict(source=work / "data" / "live.parquet", landing_dir=work / "landing", speed=args.speed,
                    rows_per_file=300, file_format="jsonl"),
        daemon=True,
    )
    replayer.start()

    print(f"[4/4] scoring the stream; metrics on http://127.0.0.1:{args.metrics_port}/metrics")
    job_args = argparse.Namespace()
    parser = argparse.ArgumentParser()
    inference.add_arguments(parser)
    job_args = parser.parse_args([
        "--landing-dir", str(work / "landing"), "--file-format", "jsonl",
        "--checkpoint", str(work / "checkpoints"), "--results", str(work / "results"),
        "--quarantine", str(work / "quarantine"), "--model", str(model_dir),
        "--metrics-host", "127.0.0.1", "--metrics-port", str(args.metrics_port),
        "--trigger-seconds", "2", "--stop-after-idle", "20",
    ])
    job = inference.InferenceJob(job_args)
    try:
        summaries = job.run()
        replayer.join(timeout=1)
        metrics_text = job.registry.render()
    finally:
        job.close()
    print_summary(work, summaries, metrics_text)
    return 0


def print_summary(work: Path, summaries, metrics_text: str) -> None:
    import pyarrow.dataset as ds

    from tidewatch.evaluation import event_outcomes

    rows = sum(s.rows_in for s in summaries)
    scored = sum(s.scored for s in summaries)
    quarantined = sum(s.quarantined for s in summaries)
    print()
    print(f"batches {len(summaries)}, rows {rows} (scored {scored}, warm-up {sum(s.warmup for s in summaries)}, "
          f"quarantined {quarantined})")
    stage_lines = [l for l in metrics_text.splitlines() if l.startswith("ae_anomalies_total{")]
    per_stage: dict[str, float] = {}
    for line in stage_lines:
        stage = line.split('stage="')[1].split('"')[0]
        per_stage[stage] = per_stage.get(stage, 0.0) + float(line.rsplit(" ", 1)[1])
    print("anomalous sensor readings by stage: " + ", ".join(f"{k} {int(v)}" for k, v in sorted(per_stage.items())))
    if not any((work / "results").glob("date=*/*.parquet")):
        print("no rows reached the results sink")
        return
    table = ds.dataset(work / "results", format="parquet", partitioning="hive").to_table(
        columns=["timestamp", "status", "flag", "label"]).sort_by("timestamp")
    import numpy as np

    scored_mask = np.asarray(table["status"].to_numpy(zero_copy_only=False) == "scored")
    labels = np.nan_to_num(table["label"].to_numpy(zero_copy_only=False).astype(float))[scored_mask].astype(int)
    flags = np.asarray(table["flag"].to_numpy(zero_copy_only=False), dtype=bool)[scored_mask]
    outcomes = event_outcomes(flags, labels)
    detected, total = sum(o.detected for o in outcomes), len(outcomes)
    print(f"attacks detected: {detected} of {total}; flagged rows {int(flags.sum())} of {int(scored_mask.sum())}")
    from tidewatch.incidents import current_incidents, read_transitions

    incidents = current_incidents(read_transitions(work / "results"))
    print(f"incidents: {len(incidents)}")
    for inc in incidents[:5]:
        print(f"  {inc['start']:%Y-%m-%d %H:%M:%S} {inc['status']:<6} {inc['duration_seconds']:>6.0f} s  "
              f"stages {inc['stages'] or '-'}  sensors {inc['sensors'] or '-'}")
    print(f"results: {work / 'results'}   quarantine: {work / 'quarantine'}   "
          f"incidents: python -m tidewatch incidents {work / 'results'}")
