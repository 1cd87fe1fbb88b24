"""spark-submit train.py: train tidewatch's LSTM-VAE from plant history and publish the model.

  spark-submit train.py --input SWaT_Dataset_Normal_v1.xlsx --format swat --model-out /weights/tidewatch
  python train.py --help
"""
import sys

from tidewatch.spark.train import main

if __name__ == "__main__":
    sys.exit(main())
