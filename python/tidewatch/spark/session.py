"""SparkSession set-up shared by the jobs."""
from __future__ import annotations

import os
import sys


def local_defaults() -> None:
    """Environment a local run needs: loopback only, and workers on this interpreter (the venv's)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # libtorch's OpenMP threads spin while idle by default; locally they share cores with Spark's JVM
    # and the driver, and spinning made scoring several times slower on a 2-core machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def get_session(app_name: str, master: str | None = None, executor_threads: int | None = None, **conf: str):
    """The active session (spark-submit) or a new one; `master` defaults to local[*] outside spark-submit."""
    local_defaults()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    elif "PYSPARK_GATEWAY_PORT" not in os.environ:
        # Not under spark-submit (which brings its own master): run locally.
        builder = builder.master(os.environ.get("TIDEWATCH_SPARK_MASTER", "local[*]"))
    threads = str(executor_threads or os.environ.get("OMP_NUM_THREADS") or 1)
    defaults = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Constraint propagation over validation's per-sensor CASE expressions grows exponentially with
        # the number of sensors (minutes of planning for 51 SWaT columns); the plans gain nothing from it.
        "spark.sql.constraintPropagation.enabled": "false",
        # libtorch in each Python worker gets the executor's cores, not every core of the node.
        "spark.executorEnv.OMP_NUM_THREADS": threads,
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": os.environ.get("TIDEWATCH_SHUFFLE_PARTITIONS", "4"),
        "spark.driver.bindAddress": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        # Local mode runs everything in the driver JVM; Spark's 1g default is tight for 51-column plans.
        "spark.driver.memory": os.environ.get("TIDEWATCH_DRIVER_MEMORY", "2g"),
    }
    defaults.update(conf)
    for key, value in defaults.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("TIDEWATCH_SPARK_LOG_LEVEL", "WARN"))
    return spark
