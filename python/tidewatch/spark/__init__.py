"""Spark glue for the train and inference jobs. Importing this package imports pyspark;
the rest of tidewatch never does."""
