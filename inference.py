"""spark-submit inference.py: stream-score plant readings with tidewatch; metrics on :8001.

  spark-submit inference.py --landing-dir /data/landing --model /weights/tidewatch
  python inference.py --help
"""
import sys

from tidewatch.spark.inference import main

if __name__ == "__main__":
    sys.exit(main())
