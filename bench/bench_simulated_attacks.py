"""Detection quality on the plant simulator's attacks (issue 8 item 4): per attack, detected or not, the
detection delay and whether an attacked sensor is among the model's top-3 sensors; then event recall,
attribution top-3 hit rate, point-wise precision / recall / F1, FAR and PR-AUC.

Protocol, fixed before any run (nothing is tuned on the attack labels):

1. train: ``--train-hours`` of normal operation (``simulate(..., seed=SEED, attacks="none")`` from
   2015-12-28 10:00 UTC) fit with ``tidewatch.train`` and the ModelConfig defaults except ``--epochs``, CPU
   and ``--threads``. The model holds out the last 20 % (``validation_fraction``) of those rows for early
   stopping and calibrates its thresholds there: the flags are the model's own.
2. attacks: ``--eval-s`` seconds with the simulator's attacks (``--attacks``, default all 36 with physical
   impact) spread over them (``timing="spread"``), simulated with seed SEED+1 (an independent run: with
   the training seed the rows before the first attack would repeat the training rows) on a clock that
   starts where training ended. The plant restarts from its own warm-up, so the analysers' slow drifts
   (time constants up to 2 h) are a fresh realisation; training on many hours covers their range.
3. score with ``model.detector(device="cpu")`` and evaluate with
   ``tidewatch.evaluation.evaluate_simulated_attacks`` (event outcomes, attribution over each attack's
   flagged rows, precision / recall / F1, FAR, PR-AUC from ``tidewatch.evaluation``). The first
   window-1 rows have no full window (warm-up) and are left out.
4. for reading the FAR: false alarms by time since the last attack ended (a tank an attack drained or
   overflowed takes a while to return to its cycle, and those rows are labelled normal), and the FAR on a
   further ``--normal-s`` of attack-free operation (seed SEED+2, clock after the attack run).
5. incidents: the same flags grouped into incidents by the core's tracker (the streaming job's rules and
   defaults): attacks that raised one, delay to open, event-wise precision / recall / F1 and false
   incidents per day on the attack run and on the attack-free run.

Run: ``make bench-attacks`` or ``.venv/bin/python bench/bench_simulated_attacks.py [--epochs 100]``.
Writes ``bench/out/bench_simulated_attacks.json``. About 5 minutes on a shared 2-core machine with the
defaults, nearly all of it training (about 3 s per epoch on one thread).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "bench" / "out" / "bench_simulated_attacks.json"
START = dt.datetime(2015, 12, 28, 10, 0, 0, tzinfo=dt.timezone.utc)
# Buckets (seconds since the last attack ended) for the false-alarm breakdown.
SINCE_ATTACK_S = (0, 600, 1800, 3600, 7200)


def parse_attacks(text: str) -> str | list[int]:
    if text in ("all",):
        return text
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--attacks: 'all' or comma-separated attack ids, got {text!r}") from exc
    if not ids:
        raise argparse.ArgumentTypeError("--attacks: no attack id given")
    return ids


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-hours", type=float, default=24.0,
                        help="hours of normal operation to train on (default 24; the last 20%% calibrate)")
    parser.add_argument("--epochs", type=int, default=100,
                        help="upper bound on training epochs; early stopping (patience 5) may end sooner")
    parser.add_argument("--eval-s", type=int, default=172_800,
                        help="seconds of the attack run (default 2 days: 25-80 minutes of normal operation "
                             "between attacks; all 36 need at least 76,086 s)")
    parser.add_argument("--attacks", type=parse_attacks, default="all",
                        help="'all' (the 36 physical attacks) or comma-separated attack ids")
    parser.add_argument("--normal-s", type=int, default=86_400,
                        help="seconds of attack-free operation after the attack run, for a FAR and false "
                             "incidents per day without attack after-effects (default 24 h; 0 skips it)")
    parser.add_argument("--seed", type=int, default=0, help="training run's seed; the attack run uses seed+1")
    parser.add_argument("--threads", type=int, default=1,
                        help="libtorch threads for training and scoring (default 1: the bench machine is shared)")
    parser.add_argument("--top-k", type=int, default=3, help="attribution: attacked sensor among the top K")
    parser.add_argument("--tolerance-s", type=int, default=0,
                        help="an attack also counts as detected by a flag this many seconds after it ends (1 Hz)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the figures go")
    return parser.parse_args(argv)


def _fmt(value: float | None, digits: int = 3, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def jsonable(value: Any) -> Any:
    """``nan`` as ``None`` (JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def far_by_time_since_attack(report: Any) -> list[dict[str, Any]]:
    """FAR (tidewatch.evaluation.false_alarm_rate) over the normal rows, bucketed by seconds since the
    last attack ended; rows before the first attack form their own bucket."""
    from tidewatch.evaluation import false_alarm_rate, label_events

    labels, flags = report.labels, report.flags
    seconds = report.timestamps.astype("datetime64[s]").astype(np.int64)
    last_end = np.full(labels.size, np.iinfo(np.int64).min)
    for _, end in label_events(labels):
        if end < labels.size:
            last_end[end:] = seconds[end - 1] + 1
    since = seconds - last_end
    normal = ~labels
    buckets: list[tuple[str, np.ndarray]] = [("before the first attack", normal & (last_end == np.iinfo(np.int64).min))]
    edges = [*SINCE_ATTACK_S, None]
    for low, high in zip(edges[:-1], edges[1:]):
        name = f"{low // 60}-{high // 60} min after an attack" if high else f">= {low // 60} min after an attack"
        inside = normal & (last_end != np.iinfo(np.int64).min) & (since >= low)
        if high is not None:
            inside &= since < high
        buckets.append((name, inside))
    rows = []
    for name, mask in buckets:
        n = int(mask.sum())
        rows.append({"bucket": name, "normal_rows": n, "false_alarm_rows": int(flags[mask].sum()),
                     "far_pct": false_alarm_rate(flags[mask], labels[mask]) if n else math.nan})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import pyarrow as pa

    import tidewatch
    from tidewatch.evaluation import evaluate_simulated_attacks, false_alarm_rate, label_events
    from tidewatch.incidents import current_incidents, evaluate_incidents
    from tidewatch.readers import load_attack_list
    from tidewatch.simulator import attack_windows, simulate

    started = time.monotonic()
    train_s = int(round(args.train_hours * 3600))
    print(f"simulating {train_s} s of normal operation (seed {args.seed}) from {START:%Y-%m-%d %H:%M} UTC",
          flush=True)
    train_table = simulate(train_s, seed=args.seed, start=START, attacks="none")

    config = tidewatch.ModelConfig(epochs=args.epochs, device="cpu", threads=args.threads)
    print(f"training the LSTM-VAE (ModelConfig defaults; epochs <= {args.epochs}, CPU, {args.threads} thread(s))",
          flush=True)
    t0 = time.monotonic()
    model = tidewatch.train(train_table, config, progress=None)
    train_seconds = time.monotonic() - t0
    history = model.history
    best = min(history, key=lambda e: e["val_loss"])
    print(f"  {len(history)} epochs in {train_seconds:.0f} s; best validation loss {best['val_loss']:.5f} "
          f"(epoch {best['epoch']}); window threshold {model.threshold:.6g} "
          f"({config.threshold_method} {config.threshold_level} of held-out normal windows)")
    del train_table

    eval_start = START + dt.timedelta(seconds=train_s)
    print(f"simulating {args.eval_s} s with attacks {args.attacks if args.attacks != 'all' else 'all'} spread "
          f"(seed {args.seed + 1}) from {eval_start:%Y-%m-%d %H:%M} UTC", flush=True)
    table = simulate(args.eval_s, seed=args.seed + 1, start=eval_start, attacks=args.attacks, timing="spread")
    windows = attack_windows(table)
    detector = model.detector(device="cpu", threads=args.threads)
    t0 = time.monotonic()
    result = evaluate_simulated_attacks(detector, table, top_k=args.top_k, tolerance_rows=args.tolerance_s)
    score_seconds = time.monotonic() - t0
    attack_incidents = current_incidents(pa.Table.from_batches([detector.incident_transitions()]))
    ran = [w["attack_id"] for w in windows]
    if [a.attack_id for a in result.attacks] != ran:
        raise SystemExit(f"evaluated attacks {[a.attack_id for a in result.attacks]} differ from those that ran {ran}")

    official = {row["attack_no"]: row for row in load_attack_list().to_pylist()}
    info = {i: (str(official[i]["stages"]), str(official[i]["action"])) for i in ran if i in official}
    print(f"\nscored {table.num_rows} rows in {score_seconds:.1f} s; {len(ran)} attacks ran\n")
    print(result.format(info))

    gaps = [(b["start"] - a["end"]).total_seconds() - 1 for a, b in zip(windows[:-1], windows[1:])]
    since = far_by_time_since_attack(result)
    print("\nfalse alarms on normal rows by time since the last attack ended (after-effects are labelled normal)")
    for row in since:
        print(f"  {row['bucket']:<26} normal rows {row['normal_rows']:>7}  flagged {row['false_alarm_rows']:>6}"
              f"  FAR {_fmt(row['far_pct'], 2, ' %')}")
    fp_runs = label_events(result.flags & ~result.labels)
    hours_normal = (~result.labels).sum() / 3600
    per_hour = f" ({len(fp_runs) / hours_normal:.2f} per hour of normal rows)" if hours_normal else ""
    print(f"  false-alarm episodes (runs of flagged normal rows): {len(fp_runs)}{per_hour}")
    if gaps:
        print(f"  normal operation between attacks: {min(gaps):.0f}-{max(gaps):.0f} s")

    # Incidents (what reaches operators): the same flags grouped by the core's tracker, as the job does.
    spans = [(table["plant"][0].as_py(), w["start"].timestamp(), w["end"].timestamp()) for w in windows]
    normal_rows = int((~result.labels).sum())
    incident_report = evaluate_incidents(attack_incidents, spans, normal_seconds=float(normal_rows),
                                         tolerance_s=float(args.tolerance_s))
    detected_ids = {ran[k] for k in incident_report.detected_events}
    print("\nincidents (policy " + ", ".join(f"{k} {v:g}" for k, v in detector.incident_policy.items()) + ")")
    print(incident_report.format())
    print(f"  attacks without an incident: {sorted(set(ran) - detected_ids) or 'none'}")

    normal_figures: dict[str, Any] | None = None
    if args.normal_s > 0:
        normal_start = eval_start + dt.timedelta(seconds=args.eval_s)
        normal = simulate(args.normal_s, seed=args.seed + 2, start=normal_start, attacks="none")
        detector.reset_stream()
        scored = detector.score(normal)
        status = np.asarray(scored["status"].to_pylist(), dtype=object) == "scored"
        flags = np.asarray(scored["flag"].fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)[status]
        labels = np.zeros(flags.size, dtype=bool)
        episodes = len(label_events(flags))
        normal_incidents = current_incidents(pa.Table.from_batches([detector.incident_transitions()]))
        normal_days = flags.size / 86400
        normal_figures = {"incidents": len(normal_incidents),
                          "false_incidents_per_day": len(normal_incidents) / normal_days if normal_days else None,"seconds": args.normal_s, "seed": args.seed + 2, "start": normal_start.isoformat(),
                          "scored_rows": int(flags.size), "flagged_rows": int(flags.sum()),
                          "far_pct": false_alarm_rate(flags, labels), "false_alarm_episodes": episodes}
        print(f"attack-free run, {args.normal_s} s (seed {args.seed + 2}): FAR "
              f"{_fmt(normal_figures['far_pct'], 2, ' %')} ({int(flags.sum())} of {flags.size} rows flagged, "
              f"{episodes} episodes); {len(normal_incidents)} incident(s) = "
              f"{_fmt(normal_figures['false_incidents_per_day'], 2)} false incidents per day")

    report = result.report
    attribution = report.attribution
    print("\nsummary")
    print(f"  event recall             {result.n_detected}/{result.n_attacks} = {_fmt(result.event_recall)}")
    print(f"  attribution top-{args.top_k} hit rate "
          f"{attribution.n_hits if attribution else 0}/{attribution.n_events if attribution else 0}"
          f" = {_fmt(result.attribution_hit_rate)}"
          + (f" ({len(attribution.excluded)} attack(s) without a recorded attacked sensor left out)"
             if attribution and attribution.excluded else ""))
    print(f"  point-wise precision {_fmt(report.precision)}  recall {_fmt(report.recall)}  F1 {_fmt(report.f1)}")
    print(f"  FAR {_fmt(report.far_pct, 2, ' %')} (attack run)"
          + (f", {_fmt(normal_figures['far_pct'], 2, ' %')} (attack-free run)" if normal_figures else ""))
    print(f"  PR-AUC {_fmt(report.pr_auc)}")
    print(f"  incidents: {incident_report.n_events_detected}/{incident_report.n_events} attacks raised one; "
          f"median delay to open {_fmt(incident_report.delay_seconds_median, 1)} s; event-wise F1 "
          f"{_fmt(incident_report.f1)}; false incidents per day {_fmt(incident_report.false_incidents_per_day, 2)}"
          f" (attack run)" + (f", {_fmt(normal_figures['false_incidents_per_day'], 2)} (attack-free run)"
                              if normal_figures else ""))
    total = time.monotonic() - started
    print(f"  total {total:.0f} s")

    figures = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {"config": model.config.to_dict(), "epochs_run": len(history), "best_epoch": best["epoch"],
                  "best_val_loss": best["val_loss"], "threshold": model.threshold,
                  "train_seconds": round(train_seconds, 1)},
        "train_run": {"seconds": train_s, "seed": args.seed, "start": START.isoformat()},
        "attack_run": {"seconds": args.eval_s, "seed": args.seed + 1, "start": eval_start.isoformat(),
                       "attacks": ran, "score_seconds": round(score_seconds, 2),
                       "normal_gap_s": [min(gaps), max(gaps)] if gaps else None},
        "per_attack": [
            {**a, "stage": info.get(a["attack_id"], ("", ""))[0], "description": info.get(a["attack_id"], ("", ""))[1]}
            for a in result.to_dict()["attacks"]
        ],
        "summary": {
            "n_attacks": result.n_attacks,
            "n_detected": result.n_detected,
            "event_recall": result.event_recall,
            "attribution_top_k": args.top_k,
            "attribution_hits": attribution.n_hits if attribution else 0,
            "attribution_events": attribution.n_events if attribution else 0,
            "attribution_hit_rate": result.attribution_hit_rate,
            "precision": report.precision,
            "recall": report.recall,
            "f1": report.f1,
            "far_pct": report.far_pct,
            "pr_auc": report.pr_auc,
        },
        "report": report.to_dict(),
        "incidents": {**incident_report.to_dict(), "policy": detector.incident_policy,
                      "attacks_without_incident": sorted(set(ran) - detected_ids)},
        "far_by_time_since_attack": since,
        "false_alarm_episodes": len(fp_runs),
        "attack_free_run": normal_figures,
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
        "total_seconds": round(total, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(jsonable(figures), indent=2, default=str) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
