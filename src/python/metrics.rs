//! Bindings for the metrics layer (src/metrics/): conversions, GIL release and error mapping only.
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::kernels::PySensorSet;
use super::to_py;
use crate::metrics::{BatchAggregate, MetricsRegistry, MetricsServer};
use crate::Error;

fn input_err(msg: String) -> PyErr {
    to_py(Error::Input(msg))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One partition's (or one merged micro-batch's) metrics: rows by status, anomalies per sensor and
/// stage, reconstruction-error buckets, flagged values, latest event time. Ships as JSON.
#[pyclass(name = "BatchAggregate", module = "tidewatch")]
#[derive(Clone)]
pub struct PyBatchAggregate(pub BatchAggregate);

#[pymethods]
impl PyBatchAggregate {
    #[new]
    fn new(sensors: &PySensorSet) -> Self {
        Self(BatchAggregate::new(&sensors.0))
    }

    /// One scored row: `anomalous` are sensor indices (used when `flagged`), `per_sensor_error` and
    /// `values` one per sensor in the sensor set's order, `event_time_s` Unix seconds.
    fn record_scored(
        &mut self,
        flagged: bool,
        anomalous: Vec<usize>,
        per_sensor_error: Vec<f64>,
        values: Vec<f64>,
        event_time_s: f64,
    ) -> PyResult<()> {
        let n = self.0.sensors().len();
        if per_sensor_error.len() != n || values.len() != n {
            return Err(input_err(format!(
                "record_scored: {} errors and {} values given, the sensor set has {n} sensors",
                per_sensor_error.len(),
                values.len()
            )));
        }
        if let Some(&bad) = anomalous.iter().find(|&&i| i >= n) {
            return Err(input_err(format!("record_scored: anomalous sensor index {bad} is out of range (0..{n})")));
        }
        self.0.record_scored(flagged, &anomalous, &per_sensor_error, &values, event_time_s);
        Ok(())
    }

    /// A scored row's incident evidence: its plant, event time (Unix seconds), flag, score and the
    /// sensor indices it names anomalous.
    #[pyo3(signature = (plant, event_time_s, flagged, score, anomalous = Vec::new()))]
    fn record_evidence(&mut self, plant: &str, event_time_s: f64, flagged: bool, score: f64, anomalous: Vec<usize>) -> PyResult<()> {
        let n = self.0.sensors().len();
        if let Some(&bad) = anomalous.iter().find(|&&j| j >= n) {
            return Err(input_err(format!("record_evidence: anomalous sensor index {bad} is out of range (0..{n})")));
        }
        self.0.record_evidence(plant, event_time_s, flagged, score, &anomalous);
        Ok(())
    }

    fn record_warmup(&mut self, event_time_s: f64) {
        self.0.record_warmup(event_time_s);
    }

    #[pyo3(signature = (reason, count = 1))]
    fn record_quarantined(&mut self, reason: &str, count: u64) {
        self.0.add_quarantined(reason, count);
    }

    fn add_windows(&mut self, n: u64) {
        self.0.add_windows(n);
    }

    fn merge(&mut self, other: &PyBatchAggregate) -> PyResult<()> {
        self.0.merge(&other.0).map_err(to_py)
    }

    fn to_json(&self) -> String {
        self.0.to_json()
    }

    #[staticmethod]
    fn from_json(text: &str) -> PyResult<Self> {
        BatchAggregate::from_json(text).map(Self).map_err(to_py)
    }

    /// `{"scored", "warmup", "quarantined", "rows_in", "anomalies", "windows"}` as ints.
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let a = &self.0;
        let d = PyDict::new(py);
        d.set_item("scored", a.rows_scored())?;
        d.set_item("warmup", a.rows_warmup())?;
        d.set_item("quarantined", a.rows_quarantined())?;
        d.set_item("rows_in", a.rows_in())?;
        d.set_item("anomalies", a.anomalies())?;
        d.set_item("windows", a.windows_ready())?;
        Ok(d)
    }

    #[getter]
    fn sensors(&self) -> PySensorSet {
        PySensorSet(self.0.sensors().clone())
    }

    #[getter]
    fn quarantined_by_reason<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (reason, count) in self.0.quarantined_by_reason() {
            d.set_item(reason, count)?;
        }
        Ok(d)
    }

    /// sensor -> flagged rows naming it, in sensor order.
    #[getter]
    fn anomalies_by_sensor<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (s, n) in self.0.sensors().sensors().iter().zip(self.0.anomalies_by_sensor()) {
            d.set_item(s, n)?;
        }
        Ok(d)
    }

    /// stage -> flagged rows with an anomalous sensor in it, in process order.
    #[getter]
    fn anomalies_by_stage<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (p, n) in self.0.sensors().stages().iter().zip(self.0.anomalies_by_stage()) {
            d.set_item(p, n)?;
        }
        Ok(d)
    }

    /// sensor -> its value on the latest flagged row naming it (flagged sensors only).
    #[getter]
    fn flagged_values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (s, v) in self.0.sensors().sensors().iter().zip(self.0.flagged_values()) {
            if let Some(v) = v {
                d.set_item(s, v.value)?;
            }
        }
        Ok(d)
    }

    /// sensor -> non-cumulative counts for the buckets 0.01 0.05 0.1 0.5 1 5 10 50 and +Inf.
    #[getter]
    fn error_buckets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (s, b) in self.0.sensors().sensors().iter().zip(self.0.error_buckets()) {
            d.set_item(s, b.to_vec())?;
        }
        Ok(d)
    }

    /// Warnings raised while scoring the rows of this aggregate (distinct, sorted).
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.0.warnings().to_vec()
    }

    #[getter]
    fn latest_event_time_s(&self) -> Option<f64> {
        self.0.latest_event_time_s()
    }

    fn __repr__(&self) -> String {
        let a = &self.0;
        format!(
            "BatchAggregate(plant={:?}, scored={}, warmup={}, quarantined={}, anomalies={}, windows={})",
            a.sensors().plant(),
            a.rows_scored(),
            a.rows_warmup(),
            a.rows_quarantined(),
            a.anomalies(),
            a.windows_ready()
        )
    }
}

/// `apply_batch` takes the aggregate itself or its JSON.
#[derive(FromPyObject)]
enum AggregateArg<'py> {
    Object(PyRef<'py, PyBatchAggregate>),
    Json(String),
}

/// The driver's Prometheus registry: the contract metrics, every sensor and stage series from the start.
#[pyclass(name = "MetricsRegistry", module = "tidewatch", frozen)]
pub struct PyMetricsRegistry(pub Arc<MetricsRegistry>);

#[pymethods]
impl PyMetricsRegistry {
    #[new]
    fn new(sensors: &PySensorSet) -> PyResult<Self> {
        MetricsRegistry::new(&sensors.0).map(|r| Self(Arc::new(r))).map_err(to_py)
    }

    /// Applies one micro-batch's merged aggregate (a BatchAggregate or its JSON) and its wall time.
    fn apply_batch(&self, py: Python<'_>, aggregate: AggregateArg<'_>, batch_seconds: f64) -> PyResult<()> {
        let registry = &self.0;
        match aggregate {
            AggregateArg::Object(agg) => {
                let agg = &agg.0;
                py.detach(|| registry.apply_batch(agg, batch_seconds))
            }
            AggregateArg::Json(text) => py.detach(|| {
                let agg = BatchAggregate::from_json(&text)?;
                registry.apply_batch(&agg, batch_seconds)
            }),
        }
        .map_err(to_py)
    }

    fn model_loaded(&self, version: &str, checksum: &str, load_seconds: f64) {
        self.0.model_loaded(version, checksum, load_seconds);
    }

    fn model_load_failed(&self) {
        self.0.model_load_failed();
    }

    fn set_carried_rows(&self, rows: u64) {
        self.0.set_carried_rows(rows);
    }

    fn set_threshold(&self, threshold: f64) {
        self.0.set_threshold(threshold);
    }

    /// Prometheus text exposition format 0.0.4.
    fn render(&self, py: Python<'_>) -> String {
        py.detach(|| self.0.render())
    }

    #[getter]
    fn sensors(&self) -> PySensorSet {
        PySensorSet(self.0.sensors().clone())
    }
}

/// Serves a registry on `GET /metrics` and `GET /healthz` from background threads until `stop()`.
#[pyclass(name = "MetricsServer", module = "tidewatch", frozen)]
pub struct PyMetricsServer {
    inner: Mutex<MetricsServer>,
    host: String,
    port: u16,
    url: String,
}

#[pymethods]
impl PyMetricsServer {
    /// Binds `host:port` (0: a free port, read it from `.port`); a port in use raises ConfigError.
    #[new]
    #[pyo3(signature = (registry, host = "0.0.0.0", port = 8001))]
    fn new(py: Python<'_>, registry: &PyMetricsRegistry, host: &str, port: u16) -> PyResult<Self> {
        let registry = registry.0.clone();
        let server = py.detach(|| MetricsServer::start(registry, host, port)).map_err(to_py)?;
        let (port, url) = (server.port(), server.url());
        Ok(Self { inner: Mutex::new(server), host: host.to_string(), port, url })
    }

    /// Stops answering and frees the port. Idempotent.
    fn stop(&self, py: Python<'_>) {
        py.detach(|| lock(&self.inner).stop());
    }

    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    #[getter]
    fn host(&self) -> String {
        self.host.clone()
    }

    /// `http://host:port/metrics` (a wildcard host written as 127.0.0.1, where a local client reaches it).
    #[getter]
    fn url(&self) -> String {
        self.url.clone()
    }

    #[getter]
    fn running(&self) -> bool {
        lock(&self.inner).is_running()
    }

    /// Requests answered so far.
    #[getter]
    fn requests(&self) -> u64 {
        lock(&self.inner).requests()
    }

    /// Times the listener was bound again after its accept loop died (e.g. out of file descriptors).
    #[getter]
    fn listener_restarts(&self) -> u64 {
        lock(&self.inner).listener_restarts()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) {
        self.stop(py);
    }

    fn __repr__(&self) -> String {
        format!("MetricsServer(host={:?}, port={}, running={})", self.host, self.port, self.running())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBatchAggregate>()?;
    m.add_class::<PyMetricsRegistry>()?;
    m.add_class::<PyMetricsServer>()?;
    Ok(())
}
