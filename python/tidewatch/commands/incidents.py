"""`tidewatch incidents`: the incidents the inference job found, as a table a person reads.

Reads RESULTS_DIR/_incidents (one Parquet file per micro-batch, one row per opened / updated / closed
transition) and shows each incident as it stands now: plant, start, end (or "open"), duration, stages
and sensors involved (most involved first), peak score, rows flagged, model version.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "incidents",
        help="list the incidents the inference job found (open and closed)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", metavar="RESULTS_DIR", help="the inference job's --results directory")
    p.add_argument("--since", help="only incidents still open or ending at/after this time (ISO 8601, UTC if no zone)")
    p.add_argument("--plant", help="only this plant's incidents")
    p.add_argument("--status", choices=("all", "open", "closed"), default="all", help="which incidents (default all)")
    p.add_argument("--json", action="store_true", help="print JSON (one object per incident) instead of a table")
    p.set_defaults(func=run)


def _parse_since(text: str):
    import datetime as dt

    from tidewatch.errors import InputError

    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"--since {text!r}: not an ISO 8601 time (e.g. 2015-12-28T10:00:00)") from exc
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def run(args: argparse.Namespace) -> int:
    from tidewatch.incidents import current_incidents, read_transitions

    incidents = current_incidents(read_transitions(args.results))
    if args.plant:
        incidents = [i for i in incidents if i["plant"] == args.plant]
    if args.status != "all":
        incidents = [i for i in incidents if i["status"] == args.status]
    if args.since:
        since = _parse_since(args.since)
        incidents = [i for i in incidents if i["end"] is None or i["end"] >= since]
    if args.json:
        for inc in incidents:
            print(json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in inc.items()}))
        return 0
    if not incidents:
        print(f"no incidents in {args.results}" + (" matching the filters" if args.plant or args.since
                                                     or args.status != "all" else ""))
        return 0
    header = ("id", "plant", "start (UTC)", "end", "duration", "stages", "sensors", "peak", "rows", "model")
    rows = []
    for i in incidents:
        rows.append((
            i["incident_id"], i["plant"], i["start"].strftime("%Y-%m-%d %H:%M:%S"),
            "open" if i["status"] == "open" else i["end"].strftime("%Y-%m-%d %H:%M:%S"),
            _duration(i["duration_seconds"]) + ("+" if i["status"] == "open" else ""),
            i["stages"] or "-", i["sensors"] or "-", f"{i['peak_score']:.4g}", str(i["rows_flagged"]),
            i["model_version"],
        ))
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
    out = sys.stdout
    out.write("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip() + "\n")
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    n_open = sum(i["status"] == "open" for i in incidents)
    out.write(f"{len(incidents)} incident(s), {n_open} open\n")
    return 0
