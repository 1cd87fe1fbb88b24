//! Bindings for incidents (src/incidents.rs): conversions and error mapping only.
use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_arrow::PyRecordBatch;

use super::kernels::PySensorSet;
use super::metrics::{PyBatchAggregate, PyMetricsRegistry};
use super::model::to_json_value;
use super::to_py;
use crate::incidents::{transitions_batch, IncidentPolicy, IncidentTracker, Transition};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn policy_dict<'py>(py: Python<'py>, p: IncidentPolicy) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("min_duration_s", p.min_duration_s)?;
    d.set_item("gap_s", p.gap_s)?;
    d.set_item("quiet_s", p.quiet_s)?;
    Ok(d)
}

pub(crate) fn transitions_to_py<'py>(
    py: Python<'py>,
    transitions: &[Transition],
    sensors: &crate::sensors::SensorSet,
) -> PyResult<Bound<'py, PyAny>> {
    let batch = transitions_batch(transitions, sensors).map_err(to_py)?;
    PyRecordBatch::new(batch).into_pyarrow(py)
}

/// Groups the flagged rows of merged batch aggregates into incidents per plant (the Spark driver's
/// state; checkpoint it with `to_json`). Durations default from the sample period.
#[pyclass(name = "IncidentTracker", module = "tidewatch", frozen)]
pub struct PyIncidentTracker {
    inner: Mutex<IncidentTracker>,
    last: Mutex<Vec<Transition>>,
}

#[pymethods]
impl PyIncidentTracker {
    #[new]
    #[pyo3(signature = (sensors, sample_period_s = 1.0, min_duration_s = None, gap_s = None, quiet_s = None))]
    fn new(
        sensors: &PySensorSet,
        sample_period_s: f64,
        min_duration_s: Option<f64>,
        gap_s: Option<f64>,
        quiet_s: Option<f64>,
    ) -> PyResult<Self> {
        let policy = IncidentPolicy::for_period_with(sample_period_s, min_duration_s, gap_s, quiet_s);
        let inner = IncidentTracker::new(&sensors.0, policy).map_err(to_py)?;
        Ok(Self { inner: Mutex::new(inner), last: Mutex::new(Vec::new()) })
    }

    /// Applies a merged batch aggregate scored by `model_version`; returns the batch's transitions as a
    /// pyarrow RecordBatch (one row per opened / updated / closed incident).
    fn apply<'py>(&self, py: Python<'py>, aggregate: &PyBatchAggregate, model_version: &str) -> PyResult<Bound<'py, PyAny>> {
        let mut tracker = lock(&self.inner);
        let transitions = tracker.apply(aggregate.0.evidence(), model_version);
        let out = transitions_to_py(py, &transitions, tracker.sensors());
        *lock(&self.last) = transitions;
        out
    }

    /// Publishes the open incidents and the latest `apply`'s transitions on a metrics registry.
    fn publish(&self, registry: &PyMetricsRegistry) -> PyResult<()> {
        registry.0.apply_incidents(&lock(&self.inner), &lock(&self.last)).map_err(to_py)
    }

    /// The open incidents as dicts.
    fn open_incidents<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_json_value(py, &lock(&self.inner).open_incidents())
    }

    #[getter]
    fn opened_total(&self) -> u64 {
        lock(&self.inner).opened_total()
    }

    #[getter]
    fn policy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        policy_dict(py, lock(&self.inner).policy())
    }

    fn to_json(&self) -> String {
        lock(&self.inner).to_json()
    }

    /// A tracker saved by `to_json`, for `sensors` (InputError when it was saved for other sensors).
    #[staticmethod]
    fn from_json(text: &str, sensors: &PySensorSet) -> PyResult<Self> {
        let inner = IncidentTracker::from_json(text, &sensors.0).map_err(to_py)?;
        Ok(Self { inner: Mutex::new(inner), last: Mutex::new(Vec::new()) })
    }

    fn __repr__(&self) -> String {
        let t = lock(&self.inner);
        format!("IncidentTracker(plant={:?}, open={}, opened_total={})", t.sensors().plant(), t.open_incidents().len(), t.opened_total())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyIncidentTracker>()?;
    Ok(())
}
