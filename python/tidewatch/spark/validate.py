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
# A source's rows that could not be read into fields at all carry the input's text in UNPARSED and the
# reason in UNPARSED_REASON (both null for rows that were read): `field_count` for a CSV line whose
# fields do not match its file's header, `malformed:json` for a JSON line or Kafka message that is not a
# JSON object. The quarantine keeps that text as the row's `raw`.
UNPARSED = "_tw_unparsed"
UNPARSED_REASON = "_tw_unparsed_reason"
FIELD_COUNT = "field_count"
HEADER = "header"  # a CSV file whose header is not the canonical columns in order
MALFORMED_JSON = "malformed:json"
REASON_DUPLICATE = "duplicate_timestamp"  # the native Detector's name too (REASON_DUPLICATE in detector.rs)

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
    """Types and checks `df` (any mix of string and typed columns) and splits it into valid and
    quarantined rows (see `typed_rows`)."""
    typed = typed_rows(df, sensors, default_plant, source_timezone)
    # Materialised once: both branches below read it, and without the barrier the optimiser pushes
    # each filter into the projection, inlining every per-sensor expression twice (Spark's generated
    # code then exceeds the JVM's 64 KB method limit and falls back to slow interpretation).
    typed = typed.persist()
    valid = typed.where(F.col(REASON).isNull()).drop(REASON, "raw")
    quarantined = typed.where(F.col(REASON).isNotNull()).select(PLANT, TIMESTAMP, REASON, "raw")
    return Validated(valid, quarantined, typed)


def typed_rows(df: DataFrame, sensors: list[str], default_plant: str,
               source_timezone: str = "Asia/Singapore") -> DataFrame:
    """Every row of `df` typed and checked, in one projection: plant, timestamp, sensors as double, label
    (nullable int), _tw_row (arrival order), `reason` (null for a valid row, else the first fault, naming
    its column) and `raw` (a rejected row's input as JSON, or the text of a line that could not be read
    into fields; null for a valid row). Extra columns are ignored; a missing sensor column makes every
    row quarantined as `missing_column:NAME`."""
    field_types = tuple((f.name, f.dataType.simpleString()) for f in df.schema.fields)
    key = (df.sparkSession.sparkContext.applicationId, field_types, tuple(sensors), default_plant, source_timezone)
    projections = _PROJECTIONS.get(key)
    if projections is None:
        # Built once per input schema: the expressions of a wide plant take thousands of Py4J calls
        # (seconds per micro-batch on two cores); unresolved columns apply to any DataFrame of that schema.
        projections = _typed_projections(df.schema, sensors, default_plant, source_timezone)
        _PROJECTIONS.clear()
        _PROJECTIONS[key] = projections
    typed = df.withColumn(ROW_ID, F.monotonically_increasing_id())
    for projection in projections:
        typed = projection.apply(typed)
    return typed


class _Projection:
    """A select of fixed columns, applied to many DataFrames of one schema. Its Java column list is built
    once: Py4J sends a Python list to the JVM one element per call, hundreds of calls for a wide plant."""

    def __init__(self, columns: list[Column]):
        self.columns = columns
        self._java_columns = None

    def apply(self, df: DataFrame) -> DataFrame:
        try:
            from pyspark.sql.classic.dataframe import DataFrame as ClassicDataFrame

            if self._java_columns is None:
                jvm = df.sparkSession.sparkContext._jvm
                self._java_columns = jvm.PythonUtils.toSeq([c._jc for c in self.columns])
            return ClassicDataFrame(df._jdf.select(self._java_columns), df.sparkSession)
        except (ImportError, AttributeError):  # not classic PySpark (Spark Connect): the plain way
            return df.select(*self.columns)


_PROJECTIONS: dict[tuple, list[_Projection]] = {}


def _typed_projections(schema: T.StructType, sensors: list[str], default_plant: str,
                       source_timezone: str) -> list[_Projection]:
    """typed_rows' projections, in order, for inputs of `schema` (plus ROW_ID)."""
    fields = {f.name: f.dataType for f in schema.fields}
    unparsed = UNPARSED_REASON in fields
    fields = {n: t for n, t in fields.items() if n not in (UNPARSED, UNPARSED_REASON)}
    raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in fields]))

    reasons: list[Column] = []
    if unparsed:
        # First: a line that was not read into fields has nothing else worth naming, and its text is
        # all there is to keep (as valid UTF-8: Spark passes a source's bytes through as they are).
        reasons.append(F.col(UNPARSED_REASON))
        text = F.make_valid_utf8(F.coalesce(F.col(UNPARSED), F.lit("")))
        raw = F.when(F.col(UNPARSED_REASON).isNotNull(), text).otherwise(raw)
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

    sensor_cols = [F.col(f"`{n}`") for n in sensors]
    return [_Projection(columns) for columns in [
        [plant.alias(PLANT), ts.alias(TIMESTAMP), F.coalesce(*reasons).alias("_tw_row_reason"), *parsed_cols,
         label.alias(LABEL), F.col(ROW_ID), raw.alias("raw")],
        [F.col(PLANT), F.col(TIMESTAMP), *sensor_cols, F.col(LABEL), F.col(ROW_ID),
         F.coalesce(F.col("_tw_row_reason"), *sensor_reasons).alias(REASON), F.col("raw")],
        # The input's JSON is kept for rejected rows only: valid rows never need it.
        [F.col(PLANT), F.col(TIMESTAMP), *sensor_cols, F.col(LABEL), F.col(ROW_ID), F.col(REASON),
         F.when(F.col(REASON).isNotNull(), F.col("raw")).alias("raw")],
    ]]


_BLANK = r"^\s*$"


def read_text(reader, file_format: str, sensors: list[str], path: str) -> DataFrame:
    """Reads landing files of `file_format` ('csv' or 'jsonl'/'json') with `reader` (a DataStreamReader,
    or a DataFrameReader for a batch read) into the columns `validate` takes, every field a string (so that
    bad values are quarantined with a reason, not nulled). Blank lines carry no reading and are skipped.

    CSV: see `parse_csv_files`. JSON lines: one reading per line, fields matched by name (see `parse_json`).
    The lines are read as text and parsed like Kafka messages rather than with Spark's JSON source, which
    turns a line holding an array into one row per element, or none at all for '[]': a line would vanish
    unaccounted for."""
    if file_format == "csv":
        return parse_csv_files(reader.text(path, wholetext=True), sensors)
    lines = reader.text(path)
    lines = lines.where(~F.col("value").rlike(_BLANK))
    return parse_json(lines, "value", [PLANT, TIMESTAMP, *sensors, LABEL])


def _csv_field_count(line: Column) -> Column:
    """Fields in a CSV line ('"'-quoted fields may hold commas; '""' is a quote inside one), or -1 when its
    quotes do not pair up (a quoted value cut by a line break, or a stray quote): its fields are unknown."""
    unquoted = F.regexp_replace(line, r'"[^"]*"', "")
    return F.when(unquoted.contains('"'), F.lit(-1)).otherwise(F.size(F.split(unquoted, ",")))


def parse_csv_files(files: DataFrame, sensors: list[str]) -> DataFrame:
    """CSV landing files, one row per file in `files`' `value` (Spark's text source with `wholetext`),
    into the columns `validate` takes: one row per line after the header (the file's first line that is not
    blank), its columns in canonical order (plant, timestamp, sensors, label) by position, as the replayer
    writes them; columns after the label (the replayer's attack_id, attacked_points) are ignored.

    A line whose number of fields differs from its file's header (a field added or lost: its values would
    be read into the wrong columns, or its label lost), or that has fewer fields than the canonical columns,
    is quarantined as `field_count` with its text. Spark's CSV source cannot tell: it ignores the header,
    and its corrupt-record column marks lines by the schema's length, which a file with the optional
    columns after the label exceeds on every line. Files are read whole: a landing file must fit in memory."""
    names = [PLANT, TIMESTAMP, *sensors, LABEL]
    lines = F.filter(F.split(F.col("value"), r"\r\n|\r|\n"), lambda line: ~line.rlike(_BLANK))
    # Columns are read by position, so the header must name them in canonical order (columns after the
    # label may follow). Any other header (columns swapped, one added or missing, unknown sensors, or no
    # header at all: a first line of data) makes every line of its file `header` with its text: read by
    # position, its values would land under the wrong sensors.
    header = F.transform(F.split(F.element_at(lines, 1), ","), lambda name: F.trim(F.regexp_replace(name, '"', "")))
    header_ok = F.slice(header, 1, len(names)) == F.array(*[F.lit(n) for n in names])
    per_file = files.select(
        F.when(header_ok, F.filter(lines, lambda _, i: i > 0)).otherwise(lines).alias("_tw_line"),
        F.when(header_ok, _csv_field_count(F.element_at(lines, 1))).otherwise(F.lit(-2)).alias("_tw_header_fields"),
    )
    # Each line paired with its header's field count before the explode: an expression of the whole file
    # left to after it would be evaluated again for every line.
    rows = per_file.select(F.inline(F.arrays_zip(
        "_tw_line", F.array_repeat("_tw_header_fields", F.size("_tw_line")).alias("_tw_header_fields"))))
    ddl = ", ".join(f"`{n.replace('`', '``')}` STRING" for n in names)
    parsed = rows.select("_tw_line", "_tw_header_fields", F.from_csv(F.col("_tw_line"), ddl).alias("_tw_csv"))
    count = _csv_field_count(F.col("_tw_line"))
    bad_header = F.col("_tw_header_fields") == F.lit(-2)
    bad = bad_header | (count != F.col("_tw_header_fields")) | (count < F.lit(len(names)))
    return parsed.select(
        *[F.col("_tw_csv").getField(n).alias(n) for n in names],
        F.when(bad, F.col("_tw_line")).alias(UNPARSED),
        F.when(bad_header, F.lit(HEADER)).when(bad, F.lit(FIELD_COUNT)).alias(UNPARSED_REASON),
    )


def parse_json(df: DataFrame, text_column: str, names: list[str]) -> DataFrame:
    """One row per row of `df`: the fields `names` (as strings) of the JSON object in `text_column` (text
    or UTF-8 bytes), and UNPARSED / UNPARSED_REASON. Fields are matched by name: a missing field is null
    (quarantined as missing:NAME), an extra one is ignored, a number or other JSON value read into a string
    field keeps its JSON text for validation to parse. A text that is not a JSON object (not JSON, an array,
    a bare string, number or null, empty) is `malformed:json` with the text kept; an object lacking fields
    ('{}') is a reading that lacks them."""
    schema = T.StructType([T.StructField(n, T.StringType(), True) for n in [*names, UNPARSED]])
    text = F.col(f"`{text_column}`").cast(T.StringType())
    parsed = df.select(
        text.alias("_tw_text"),
        F.from_json(text, schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": UNPARSED}).alias("_tw_json"),
    )
    # from_json fills the corrupt-record field for text it cannot read as an object, and gives no struct at
    # all for an empty or null text.
    unreadable = F.col("_tw_json").isNull() | F.col("_tw_json").getField(UNPARSED).isNotNull()
    return parsed.select(
        *[F.col("_tw_json").getField(n).alias(n) for n in names],
        F.when(unreadable, F.coalesce(F.col("_tw_text"), F.lit(""))).alias(UNPARSED),
        F.when(unreadable, F.lit(MALFORMED_JSON)).alias(UNPARSED_REASON),
    )


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
    reason = F.when(F.col("_tw_dup"), F.lit(REASON_DUPLICATE)).when(late, F.lit("out_of_order"))
    ranked = ranked.withColumn(REASON, reason)
    drop = [c for c in ("_tw_dup", "last_ts") if c in ranked.columns]
    kept = ranked.where(F.col(REASON).isNull()).drop(REASON, *drop)
    cols = [c for c in valid.columns if c != ROW_ID]
    quarantined = ranked.where(F.col(REASON).isNotNull()).select(
        PLANT, TIMESTAMP, REASON, F.to_json(F.struct(*[F.col(f"`{c}`") for c in cols])).alias("raw")
    )
    return kept, quarantined
