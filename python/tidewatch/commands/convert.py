"""`tidewatch convert`: read SWaT exports (.csv, .xlsx) or plant CSVs into one canonical Parquet file.

Prints the rows read and the rows quarantined per input. With `--on-error quarantine`, bad rows are left
out of the output and written, with file, line, column, reason and the raw text, to
`--quarantine-out` (default: OUTPUT with `.quarantine.parquet`). The output is written atomically.

Examples:
  tidewatch convert SWaT_Dataset_Normal_v1.xlsx -o swat_normal.parquet
  tidewatch convert SWaT_Dataset_Attack_v0.csv -o attack.parquet --labels attack-list
  tidewatch convert data/skab/valve1 -o valve1.parquet --plant-file plants/skab.yaml
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

_SUFFIXES = (".csv", ".xlsx", ".xlsm", ".txt")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "convert", help="read SWaT CSV/XLSX or plant CSVs into canonical Parquet, reporting quarantined rows",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, or folders of .csv/.xlsx files")
    p.add_argument("-o", "--output", required=True, help="Parquet file to write")
    p.add_argument("--format", dest="source_format", choices=("auto", "swat", "plant-csv"), default="auto",
                   help="input kind (default: plant CSV when --plant-file is given, else SWaT)")
    p.add_argument("--plant-file", help="plant file (YAML/JSON) describing a plant CSV")
    p.add_argument("--tz", help="time zone of the inputs' clock (default: Asia/Singapore for SWaT, else the plant file's)")
    p.add_argument("--labels", choices=("column", "attack-list"), default="column",
                   help="SWaT labels from the Normal/Attack column (default) or from the attack list")
    p.add_argument("--attack-list", metavar="CSV", help="attack list for --labels attack-list (default: official A1 list)")
    p.add_argument("--unlabelled", choices=("null", "normal", "error"), default="null",
                   help="plant CSVs without the label column: null labels (default), all normal, or an error")
    p.add_argument("--on-error", choices=("raise", "quarantine"), default="raise",
                   help="bad rows: stop at the first with its file, line and column (default), or set them aside")
    p.add_argument("--quarantine-out", help="where quarantined rows go (default OUTPUT.quarantine.parquet)")
    p.add_argument("--no-order-check", action="store_true",
                   help="keep duplicate and out-of-order timestamps instead of refusing them")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(func=run)


def _files(inputs: list[str]) -> list[Path]:
    from tidewatch.errors import TidewatchIOError
    from tidewatch.readers import _natural_key

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted((p for p in path.rglob("*") if p.suffix.lower() in _SUFFIXES and p.is_file()),
                           key=lambda p: _natural_key(p.relative_to(path)))
            if not found:
                raise TidewatchIOError(f"{path}: no .csv or .xlsx files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise TidewatchIOError(f"{path}: no such file or folder")
    return files


def _write_parquet(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    from tidewatch.errors import ConfigError, TidewatchIOError
    from tidewatch.readers import ReadResult, load_plant, read_plant_csv, read_swat

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise TidewatchIOError(f"{output} exists (use --overwrite to replace it)")
    kind = args.source_format
    if kind == "auto":
        kind = "plant-csv" if args.plant_file else "swat"
    if kind == "plant-csv" and not args.plant_file:
        raise ConfigError("--format plant-csv needs --plant-file")
    plant = load_plant(args.plant_file) if kind == "plant-csv" else None

    results: list[ReadResult] = []
    for path in _files(args.inputs):
        if kind == "swat":
            result = read_swat(path, on_error=args.on_error, labels=args.labels, attack_list=args.attack_list,
                               check_order=not args.no_order_check, **({"tz": args.tz} if args.tz else {}))
        else:
            result = read_plant_csv(path, plant, tz=args.tz, on_error=args.on_error, unlabelled=args.unlabelled,
                                    check_order=not args.no_order_check)
        print(f"{path}: {result.summary()}")
        results.append(result)
    total = ReadResult.concat(results)
    _write_parquet(total.table, output)
    print(f"wrote {output}: {total.table.num_rows} rows"
          + (f" from {len(results)} files" if len(results) > 1 else ""))
    if total.quarantined.num_rows:
        quarantine = Path(args.quarantine_out) if args.quarantine_out else output.with_name(
            output.name.removesuffix(".parquet") + ".quarantine.parquet")
        _write_parquet(total.quarantined, quarantine)
        print(f"quarantined {total.quarantined.num_rows} rows -> {quarantine}: "
              + ", ".join(f"{k} {v}" for k, v in total.quarantine_counts().items()))
        for row in total.quarantined.slice(0, 5).to_pylist():
            column = f", column {row['column']!r}" if row["column"] else ""
            print(f"  {row['source_file']}: line {row['line']}{column}: {row['reason']}", file=sys.stderr)
    return 0
