"""Kafka source for the inference job: the `ics-sensor-data` topic operators already publish, each
message value a JSON object whose fields are all strings (`Timestamp`, the sensors by name,
`Normal_Attack`). Needs the Spark Kafka connector on the classpath, matching this Spark and Scala:
  spark-submit --packages org.apache.spark:spark-sql-kafka-0-10_2.13:4.0.1 inference.py --source kafka ...
The connection is not exercised by the test suite (no broker here); the message parsing below is
(tests/test_bad_input.py), and the file source shares everything after parsing.
"""
from __future__ import annotations


def kafka_stream(spark, bootstrap_servers: str, topic: str, sensors: list[str], default_plant: str):
    from pyspark.sql import functions as F

    from tidewatch.spark.validate import UNPARSED, UNPARSED_REASON, parse_json

    raw = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", "latest")
        .option("failOnDataLoss", "false")
        .load()
    )
    # A value that is not a JSON object (not JSON, an array, a bare string or number, empty, a tombstone)
    # is quarantined as malformed:json with the message text as its raw, not as a row of nulls.
    parsed = parse_json(raw, "value", ["Timestamp", *sensors, "Normal_Attack", "plant"])
    return parsed.select(
        # Operators' messages carry no plant field: they are all the one plant the model knows.
        F.coalesce(F.col("plant"), F.lit(default_plant)).alias("plant"),
        F.col("Timestamp").alias("timestamp"),
        *[F.col(f"`{s}`") for s in sensors],
        F.col("Normal_Attack").alias("label"),
        UNPARSED,
        UNPARSED_REASON,
    )
