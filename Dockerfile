# tidewatch's Spark image: Python 3.11, a Java 17 runtime, Spark 4.0.1 (the pyspark wheel, pinned like
# everything else by requirements.lock), torch 2.11.0 and the tidewatch wheel, the jobs in /opt/tidewatch.
# The Spark operator starts drivers and executors through Spark's Kubernetes entrypoint (/opt/entrypoint.sh).
#
#   docker build -t tidewatch:0.1.0 .
#
# Checked without a container engine by `make validate` (pins, job paths) and tests/test_deployment.py
# (the wheel builds, installs into a fresh environment and runs the jobs).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUST_IMAGE=rust:1.95-slim-bookworm
# Only Spark's Kubernetes entrypoint scripts are taken from the official image (same Spark version).
ARG SPARK_IMAGE=spark:4.0.1-scala2.13-java17-ubuntu

# ---- the tidewatch wheel ------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS wheel
# Debian bookworm's python3 is 3.11; g++ compiles torch-sys's C++ glue.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv g++ \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /venv
# torch-sys links against the libtorch inside the torch wheel, found through the active venv's python.
ENV VIRTUAL_ENV=/venv PATH=/venv/bin:$PATH LIBTORCH_USE_PYTORCH=1
WORKDIR /src
COPY requirements.lock ./
RUN pip install --no-cache-dir -c requirements.lock torch maturin
COPY Cargo.toml Cargo.lock build.rs pyproject.toml README.md ./
COPY src ./src
COPY python ./python
# auditwheel = "skip" (pyproject.toml): the wheel links to the torch package's libtorch, never bundles it.
RUN maturin build --release --locked --out /dist

# ---- Spark's Kubernetes entrypoint -------------------------------------------------------------------
FROM ${SPARK_IMAGE} AS spark

# ---- runtime ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG spark_uid=185
RUN groupadd --system --gid=${spark_uid} spark \
 && useradd --system --uid=${spark_uid} --gid=spark -d /nonexistent spark
# The JRE's post-install wants man directories that slim images leave out. tini, gosu and nss_wrapper
# are what Spark's entrypoint runs drivers and executors with.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini gosu procps libnss-wrapper bash \
 && rm -rf /var/lib/apt/lists/*

# The wheel with its dependencies at the versions the project is tested with (requirements.lock):
# torch 2.11.0, pyspark 4.0.1, pyarrow, numpy, pandas<3; python-calamine reads SWaT's XLSX files,
# matplotlib draws the training report.
COPY requirements.lock /tmp/requirements.lock
COPY --from=wheel /dist/ /tmp/wheels/
RUN pip install --no-cache-dir -c /tmp/requirements.lock \
      "$(ls /tmp/wheels/tidewatch-*.whl)[spark,xlsx]" matplotlib \
 && rm -rf /tmp/wheels /tmp/requirements.lock

COPY --from=spark /opt/entrypoint.sh /opt/decom.sh /opt/
COPY train.py inference.py /opt/tidewatch/
COPY plants /opt/tidewatch/plants/

# Spark from the pyspark wheel; drivers and executors run Python workers on this interpreter.
ENV SPARK_HOME=/usr/local/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=/usr/local/bin/python3 \
    PYSPARK_DRIVER_PYTHON=/usr/local/bin/python3 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
ENV PATH=$SPARK_HOME/bin:$PATH

# Smoke test at build time: the extension loads against the installed libtorch and the jobs start.
RUN python -c "import tidewatch, tidewatch._native, pyspark; assert pyspark.__version__ == '4.0.1'" \
 && python /opt/tidewatch/train.py --help > /dev/null \
 && python /opt/tidewatch/inference.py --help > /dev/null

RUN mkdir -p /opt/spark/work-dir && chown spark:spark /opt/spark/work-dir && chmod g+w /opt/spark/work-dir
WORKDIR /opt/spark/work-dir
USER spark
# Metrics of the inference driver (Prometheus scrapes /metrics).
EXPOSE 8001
ENTRYPOINT ["/opt/entrypoint.sh"]
