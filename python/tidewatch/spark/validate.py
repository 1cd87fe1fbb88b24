"""Row validation in Spark: every input row comes out either valid and typed, or quarantined with a
reason naming the column at fault. Nothing is dropped silently."""
from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

PLANT = "plant"
TIMESTAMP = "timestamp"
LABEL = "label"
REASON = "reason"
ROW_ID = "_tw_row"

# Text that may be read as a number: decimal notation only (Spark's cast would also take Java forms such
# as '1d' or '0x1p3', which no plant writes and the file readers reject).
_NUMBER = r"^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]+)?$"
_SPECIAL_NUMBER = r"(?i)^[+-]?(nan|inf|infinity)$"
# Timestamps from text sources: ISO 8601 (the replayer; UTC unless an offset is given), and the SWaT
# exports' day-first 12-hour clock, which is plant-local time (operators' Kafka messages carry it as is).
# Anything else is malformed: Spark alone would read '2015' or '10:00:00' as some time.
_ISO_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]+)?)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?$"
_SWAT_TIME = r"^[0-9]{1,2}/[0-9]{1,2}/[0-9]{4} [0-9]{1,2}:[0-9]{2}:[0-9]{2} [AP]M$"


@dataclass
class Validated:
    valid: DataFrame  # plant, timestamp, sensors as double, label (nullable int), _tw_row
    quarantined: DataFrame  # plant, timestamp, reason, raw (JSON of the input row)
    cached: DataFrame  # what both read; unpersist() when done

    def unpersist(self) -> None:
        self.cached.unpersist()


def _parse_timestamp(col: Column, dtype: T.DataType, source_timezone: str) -> Column:
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        return col.cast(T.TimestampType())
    text = F.trim(col.cast(T.StringType()))
    iso = F.when(text.rlike(_ISO_TIME), F.try_to_timestamp(text))
    swat_local = F.when(text.rlike(_SWAT_TIME), F.try_to_timestamp(text, F.lit("d/M/yyyy h:mm:ss a")))
    return F.coalesce(iso, F.to_utc_timestamp(swat_local, source_timezone))


def _parse_number(col: Column, dtype: T.DataType) -> tuple[Column, Column]:
    """(value as double or null, text was present)."""
    if isinstance(dtype, T.NumericType):
        return col.cast(T.DoubleType()), col.isNotNull()
    text = F.trim(col.cast(T.StringType()))
    present = text.isNotNull() & (text != F.lit(""))
    numeric = text.rlike(_NUMBER) | text.rlike(_SPECIAL_NUMBER)
    return F.when(present & numeric, text.try_cast(T.DoubleType())), present


def validate(df: DataFrame, sensors: list[str], default_plant: str,
             source_timezone: str = "Asia/Singapore") -> Validated:
    """Types and checks `df` (any mix of string and typed columns). Extra columns are ignored; a missing
    sensor column makes every row quarantined as `missing_column:NAME`."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    df = df.withColumn(ROW_ID, F.monotonically_increasing_id())
    raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in fields]))

    reasons: list[Column] = []
    plant = F.col(PLANT).cast(T.StringType()) if PLANT in fields else F.lit(default_plant)
    plant = F.when(F.trim(plant) == "", F.lit(None)).otherwise(F.trim(plant))
    reasons.append(F.when(plant.isNull(), F.lit("missing:plant")))
    if TIMESTAMP in fields:
        ts = _parse_timestamp(F.col(TIMESTAMP), fields[TIMESTAMP], source_timezone)
        reasons.append(F.when(F.col(TIMESTAMP).isNull(), F.lit("missing:timestamp")))
        reasons.append(F.when(ts.isNull(), F.lit("malformed:timestamp")))
    else:
        ts = F.lit(None).cast(T.TimestampType())
        reasons.append(F.lit("missing_column:timestamp"))

    # Two projections: parse each column once, then derive reasons from the parsed columns, so the
    # plan stays linear in the number of sensors (nested per-sensor expressions blow up the analyser).
    parsed_cols = []
    sensor_reasons: list[Column] = []
    for i, name in enumerate(sensors):
        if name not in fields:
            reasons.append(F.lit(f"missing_column:{name}"))
            parsed_cols.append(F.lit(None).cast(T.DoubleType()).alias(name))
            continue
        value, present = _parse_number(F.col(f"`{name}`"), fields[name])
        parsed_cols += [value.alias(name), present.alias(f"_tw_present_{i}")]
        v = F.col(f"`{name}`")
        sensor_reasons.append(
            F.when(~F.col(f"_tw_present_{i}"), F.lit(f"missing:{name}"))
            .when(v.isNull(), F.lit(f"malformed:{name}"))
            .when(F.isnan(v), F.lit(f"nan:{name}"))
            .when(F.abs(v) == F.lit(float("inf")), F.lit(f"infinite:{name}"))
        )

    label = F.lit(None).cast(T.IntegerType())
    if LABEL in fields:
        label = _parse_label(F.col(LABEL), fields[LABEL])

    stage1 = df.select(
        plant.alias(PLANT),
        ts.alias(TIMESTAMP),
        F.coalesce(*reasons).alias("_tw_row_reason"),
        *parsed_cols,
        label.alias(LABEL),
        F.col(ROW_ID),
        raw.alias("raw"),
    )
    typed = stage1.select(
        PLANT, TIMESTAMP, *[F.col(f"`{n}`") for n in sensors], LABEL, ROW_ID,
        F.coalesce(F.col("_tw_row_reason"), *sensor_reasons).alias(REASON), "raw",
    )
    # Materialised once: both branches below read it, and without the barrier the optimiser pushes
    # each filter into the projection, inlining every per-sensor expression twice (Spark's generated
    # code then exceeds the JVM's 64 KB method limit and falls back to slow interpretation).
    typed = typed.persist()
    valid = typed.where(F.col(REASON).isNull()).drop(REASON, "raw")
    quarantined = typed.where(F.col(REASON).isNotNull()).select(PLANT, TIMESTAMP, REASON, "raw")
    return Validated(valid, quarantined, typed)


def _parse_label(col: Column, dtype: T.DataType) -> Column:
    if isinstance(dtype, T.NumericType):
        return col.cast(T.IntegerType())
    text = F.lower(F.regexp_replace(col.cast(T.StringType()), r"\s", ""))
    return (
        F.when(text.isin("attack", "1", "true"), F.lit(1))
        .when(text.isin("normal", "0", "false"), F.lit(0))
        .cast(T.IntegerType())
    )


def split_duplicates(valid: DataFrame, last_seen: DataFrame | None) -> tuple[DataFrame, DataFrame]:
    """Keeps the first row of each (plant, timestamp); quarantines the others as `duplicate_timestamp`,
    and rows at or before the plant's last timestamp already scored (`last_seen`: plant, last_ts) as
    `out_of_order`. Returns (kept, quarantined)."""
    w = Window.partitionBy(PLANT, TIMESTAMP).orderBy(ROW_ID)
    ranked = valid.withColumn("_tw_dup", F.row_number().over(w) > 1)
    if last_seen is not None:
        ranked = ranked.join(F.broadcast(last_seen), on=PLANT, how="left")
        late = F.col("last_ts").isNotNull() & (F.col(TIMESTAMP) <= F.col("last_ts"))
    else:
        late = F.lit(False)
    reason = F.when(F.col("_tw_dup"), F.lit("duplicate_timestamp")).when(late, F.lit("out_of_order"))
    ranked = ranked.withColumn(REASON, reason)
    drop = [c for c in ("_tw_dup", "last_ts") if c in ranked.columns]
    kept = ranked.where(F.col(REASON).isNull()).drop(REASON, *drop)
    cols = [c for c in valid.columns if c != ROW_ID]
    quarantined = ranked.where(F.col(REASON).isNotNull()).select(
        PLANT, TIMESTAMP, REASON, F.to_json(F.struct(*[F.col(f"`{c}`") for c in cols])).alias("raw")
    )
    return kept, quarantined
