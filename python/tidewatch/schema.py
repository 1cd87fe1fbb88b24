"""The canonical table every reader produces and every consumer (training, replay, Spark jobs) expects.

Columns, in this order:

- ``plant``: string, the plant the row comes from (a key: one model per plant);
- ``timestamp``: ``timestamp[us, tz=UTC]``; readers convert from the source's local time zone;
- the plant's sensors as float64, in the plant file's order;
- ``label``: int32, 0 = normal, 1 = attack/anomaly, null = unknown;
- optional, kept when present: ``attack_id`` (int32, simulated data and attack-list labels) and
  ``attacked_points`` (string, ``;``-separated sensor names), and any extra 0/1 annotation columns a
  plant file declares (e.g. SKAB's ``changepoint``), as int32.

All fields are nullable: Spark's ``mapInArrow`` needs identical schemas, nullability included, and emits
nullable fields; readers guarantee non-null values where this module says so, not the schema.
"""
from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

PLANT = "plant"
TIMESTAMP = "timestamp"
LABEL = "label"
ATTACK_ID = "attack_id"
ATTACKED_POINTS = "attacked_points"

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
SENSOR_TYPE = pa.float64()
LABEL_TYPE = pa.int32()

# Optional columns with fixed types, in the order they follow `label`.
OPTIONAL_COLUMNS: dict[str, pa.DataType] = {
    ATTACK_ID: pa.int32(),
    ATTACKED_POINTS: pa.string(),
}

# Rows a reader set aside, one per bad input row: where it was, why, and the row as it was read.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source_file", pa.string()),
        pa.field("line", pa.int64()),  # 1-based line of a text file, or 1-based row of a sheet
        pa.field("column", pa.string()),  # null when the whole row is at fault (e.g. wrong field count)
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
    ]
)

RESERVED_NAMES = frozenset({PLANT, TIMESTAMP, LABEL, *OPTIONAL_COLUMNS})


def canonical_schema(
    sensor_names: Sequence[str],
    *,
    optional: Sequence[str] = (),
    extra_labels: Sequence[str] = (),
) -> pa.Schema:
    """The canonical schema for a plant with these sensors (in this order).

    `optional` names columns of OPTIONAL_COLUMNS to include (in OPTIONAL_COLUMNS' order);
    `extra_labels` names additional int32 0/1 annotation columns, appended last in the order given.
    """
    clash = [n for n in sensor_names if n in RESERVED_NAMES]
    if clash:
        raise ValueError(f"sensor names clash with canonical columns: {', '.join(clash)}")
    unknown = [n for n in optional if n not in OPTIONAL_COLUMNS]
    if unknown:
        raise ValueError(f"not optional canonical columns: {', '.join(unknown)}")
    fields = [pa.field(PLANT, pa.string()), pa.field(TIMESTAMP, TIMESTAMP_TYPE)]
    fields += [pa.field(name, SENSOR_TYPE) for name in sensor_names]
    fields.append(pa.field(LABEL, LABEL_TYPE))
    fields += [pa.field(name, dtype) for name, dtype in OPTIONAL_COLUMNS.items() if name in optional]
    fields += [pa.field(name, LABEL_TYPE) for name in extra_labels]
    return pa.schema(fields)


def sensor_columns(schema: pa.Schema) -> list[str]:
    """The sensor columns of a canonical schema: the float64 columns between `timestamp` and `label`."""
    names = schema.names
    if TIMESTAMP not in names or LABEL not in names:
        raise ValueError(f"not a canonical schema (needs {TIMESTAMP!r} and {LABEL!r}): {names}")
    return names[names.index(TIMESTAMP) + 1 : names.index(LABEL)]


def empty_quarantine() -> pa.Table:
    return QUARANTINE_SCHEMA.empty_table()


def conform(table: pa.Table, sensor_names: Sequence[str], *, source: str = "table") -> pa.Table:
    """`table` in canonical column order and types: missing `plant`/`label` are an error like a missing
    sensor (name them all); optional and extra 0/1 columns are kept after `label`; any other column is an
    error too, so that a misspelt sensor never passes unnoticed. Casts are safe (no silent truncation)."""
    from tidewatch.errors import SchemaError

    names = table.column_names
    required = [PLANT, TIMESTAMP, *sensor_names, LABEL]
    missing = [n for n in required if n not in names]
    if missing:
        raise SchemaError(f"{source}: missing columns: {', '.join(missing)}")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise SchemaError(f"{source}: duplicated columns: {', '.join(duplicated)}")
    rest = [n for n in names if n not in required]
    optional = [n for n in OPTIONAL_COLUMNS if n in rest]
    extra = [n for n in rest if n not in OPTIONAL_COLUMNS]
    not_flags = [n for n in extra if not (pa.types.is_integer(table.schema.field(n).type))]
    if not_flags:
        raise SchemaError(
            f"{source}: unexpected columns (not sensors of this plant, nor integer annotations): "
            f"{', '.join(not_flags)}"
        )
    schema = canonical_schema(sensor_names, optional=optional, extra_labels=extra)
    try:
        return table.select(schema.names).cast(schema, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(f"{source}: columns do not have canonical types: {exc}") from exc
