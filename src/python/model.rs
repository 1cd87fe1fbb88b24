//! Bindings for the model: configuration, training, the trained model, the Detector.
//! Conversions, GIL release and error mapping only; the logic is in src/model/.
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use numpy::PyReadonlyArrayDyn;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_arrow::input::AnyRecordBatch;
use pyo3_arrow::{PyRecordBatch, PySchema, PyTable};

use tch::Tensor;

use super::kernels::{PyScaler, PySensorSet};
use super::metrics::PyBatchAggregate;
use super::to_py;
use crate::metrics::BatchAggregate;
use crate::model::{self, Detector, ModelArtifact, ModelConfig};
use crate::Error;

/// JSON text -> Python object (dicts, lists, numbers), through the standard library's parser.
fn from_json<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (text,))
}

pub(crate) fn to_json_value<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| to_py(Error::Config(format!("cannot serialise: {e}"))))?;
    from_json(py, &text)
}

fn py_to_json(value: &Bound<'_, PyAny>) -> PyResult<String> {
    value.py().import("json")?.call_method1("dumps", (value,))?.extract()
}

/// Issues each warning as a Python `UserWarning`.
fn warn_all(py: Python<'_>, warnings: &[String]) -> PyResult<()> {
    for w in warnings {
        let text = std::ffi::CString::new(w.replace('\0', " ")).expect("NULs replaced");
        PyErr::warn(py, &py.get_type::<pyo3::exceptions::PyUserWarning>(), &text, 1)?;
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the value consistent enough to keep using (no partial writes
    // outside libtorch calls), so a poisoned lock is not fatal.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Model and training settings (see src/model/config.rs for each field's meaning and default).
/// `ModelConfig(epochs=10, device="cpu")`; attributes read and write like a dataclass; assignments are
/// checked at once and name the field at fault.
#[pyclass(name = "ModelConfig", module = "tidewatch")]
#[derive(Clone)]
pub struct PyModelConfig(pub ModelConfig);

impl PyModelConfig {
    fn field_names() -> Vec<String> {
        match serde_json::to_value(ModelConfig::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }
}

#[pymethods]
impl PyModelConfig {
    #[new]
    #[pyo3(signature = (**fields))]
    fn new(fields: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let text = match fields {
            Some(d) => py_to_json(d.as_any())?,
            None => "{}".into(),
        };
        ModelConfig::from_json(&text).map(Self).map_err(to_py)
    }

    fn __getattr__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let value = serde_json::to_value(&self.0).expect("a config serialises");
        match value.get(name) {
            Some(v) => from_json(py, &v.to_string()),
            None => Err(pyo3::exceptions::PyAttributeError::new_err(format!("ModelConfig has no field '{name}'"))),
        }
    }

    fn __setattr__(&mut self, name: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut fields = serde_json::to_value(&self.0).expect("a config serialises");
        if fields.get(name).is_none() {
            return Err(pyo3::exceptions::PyAttributeError::new_err(format!("ModelConfig has no field '{name}'")));
        }
        let new: serde_json::Value = serde_json::from_str(&py_to_json(value)?)
            .map_err(|e| to_py(Error::Config(format!("model config field '{name}': {e}"))))?;
        fields[name] = new;
        self.0 = ModelConfig::from_json(&fields.to_string()).map_err(to_py)?;
        Ok(())
    }

    fn __dir__(&self) -> Vec<String> {
        let mut names = Self::field_names();
        names.extend(["to_dict", "to_json", "from_json", "fields"].map(String::from));
        names
    }

    /// Field names in declaration order.
    #[staticmethod]
    fn fields() -> Vec<String> {
        Self::field_names()
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_json_value(py, &self.0)
    }

    fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("a config serialises")
    }

    #[staticmethod]
    fn from_json(text: &str) -> PyResult<Self> {
        ModelConfig::from_json(text).map(Self).map_err(to_py)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.extract::<PyRef<'_, PyModelConfig>>().is_ok_and(|o| o.0 == self.0)
    }

    fn __repr__(&self) -> String {
        let value = serde_json::to_value(&self.0).expect("a config serialises");
        let default = serde_json::to_value(ModelConfig::default()).expect("a config serialises");
        let changed: Vec<String> = value
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| default.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("ModelConfig({})", changed.join(", "))
    }
}

/// A trained model: its manifest (thresholds, history, ...) and network, in memory until saved.
#[pyclass(name = "Model", module = "tidewatch", frozen)]
pub struct PyModel {
    inner: Mutex<ModelArtifact>,
}

#[pymethods]
impl PyModel {
    /// Publishes the model at `path` atomically (a symlink to `.tidewatch-models/<version>/` beside it).
    /// Returns the model version.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<String> {
        let inner = &self.inner;
        py.detach(|| lock(inner).publish(&path).map(|r| r.model_version)).map_err(to_py)
    }

    /// A Detector over this model (no file needed), on `device`.
    #[pyo3(signature = (device = "auto", threads = None))]
    fn detector(&self, py: Python<'_>, device: &str, threads: Option<usize>) -> PyResult<PyDetector> {
        let inner = &self.inner;
        let det = py
            .detach(|| -> crate::Result<Detector> {
                model::apply_threads(threads)?;
                let device = model::parse_device(device)?;
                Detector::from_artifact(lock(inner).to_device(device)?, device)
            })
            .map_err(to_py)?;
        Ok(PyDetector::new(det))
    }

    #[getter]
    fn version(&self) -> String {
        lock(&self.inner).version().to_string()
    }

    /// The window threshold calibrated on held-out normal windows.
    #[getter]
    fn threshold(&self) -> f64 {
        lock(&self.inner).thresholds().window
    }

    /// All thresholds (window, per sensor, method, POT fit) as a dict.
    #[getter]
    fn thresholds<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_json_value(py, lock(&self.inner).thresholds())
    }

    /// One dict per epoch: epoch, epochs, beta, train_loss, train_recon, train_kl, val_loss, val_recon,
    /// val_kl, improved, seconds.
    #[getter]
    fn history<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_json_value(py, &lock(&self.inner).manifest.training.history)
    }

    /// The manifest that `save` writes, as a dict.
    #[getter]
    fn manifest<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_json_value(py, &lock(&self.inner).manifest)
    }

    #[getter]
    fn config(&self) -> PyModelConfig {
        PyModelConfig(lock(&self.inner).manifest.config.clone())
    }

    #[getter]
    fn sensors(&self) -> PySensorSet {
        PySensorSet(lock(&self.inner).sensors.clone())
    }

    #[getter]
    fn scaler(&self) -> PyScaler {
        PyScaler(lock(&self.inner).scaler().clone())
    }

    fn __repr__(&self) -> String {
        let m = lock(&self.inner);
        format!(
            "Model(version={:?}, plant={:?}, sensors={}, threshold={:.6}, epochs={})",
            m.version(),
            m.manifest.plant,
            m.sensors.len(),
            m.thresholds().window,
            m.manifest.training.epochs_run
        )
    }
}

/// Trains on record batches of normal operation; see `tidewatch.train` for the Python-side wrapper.
/// `progress(epoch_dict)` is called after every epoch with the GIL held; an exception in it (Ctrl-C
/// included) stops training and is raised here.
#[pyfunction]
#[pyo3(signature = (batches, config, sensors, validation = None, scaler = None, progress = None))]
fn train_model(
    py: Python<'_>,
    batches: Vec<PyRecordBatch>,
    config: &PyModelConfig,
    sensors: &PySensorSet,
    validation: Option<Vec<PyRecordBatch>>,
    scaler: Option<PyRef<'_, PyScaler>>,
    progress: Option<Py<PyAny>>,
) -> PyResult<PyModel> {
    let data: Vec<_> = batches.into_iter().map(PyRecordBatch::into_inner).collect();
    let validation: Option<Vec<_>> = validation.map(|v| v.into_iter().map(PyRecordBatch::into_inner).collect());
    let config = config.0.clone();
    let sensors = sensors.0.clone();
    let scaler = scaler.map(|s| s.0.clone());
    let mut callback_error: Option<PyErr> = None;
    let result = py.detach(|| {
        model::fit(&data, validation.as_deref(), &sensors, scaler, &config, |report| {
            Python::attach(|py| -> PyResult<()> {
                py.check_signals()?;
                if let Some(cb) = &progress {
                    cb.call1(py, (to_json_value(py, report)?,))?;
                }
                Ok(())
            })
            .map_or_else(
                |e| {
                    callback_error = Some(e);
                    ControlFlow::Break(())
                },
                |_| ControlFlow::Continue(()),
            )
        })
    });
    if let Some(e) = callback_error {
        return Err(e);
    }
    let artifact = result.map_err(to_py)?;
    Ok(PyModel { inner: Mutex::new(artifact) })
}

/// Builds a model from existing weights (name -> float32 array, tidewatch's names and shapes) and
/// calibrates its thresholds on `batches` of normal operation. For the legacy importer.
#[pyfunction]
#[pyo3(signature = (weights, batches, config, sensors, scaler = None, source = "import"))]
fn import_weights(
    py: Python<'_>,
    weights: BTreeMap<String, PyReadonlyArrayDyn<'_, f32>>,
    batches: Vec<PyRecordBatch>,
    config: &PyModelConfig,
    sensors: &PySensorSet,
    scaler: Option<PyRef<'_, PyScaler>>,
    source: &str,
) -> PyResult<PyModel> {
    let tensors: BTreeMap<String, Tensor> = weights
        .into_iter()
        .map(|(name, array)| {
            let a = array.as_array();
            let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
            let values: Vec<f32> = a.iter().copied().collect(); // logical (C) order whatever the strides
            (name, Tensor::from_slice(&values).view(shape.as_slice()))
        })
        .collect();
    let data: Vec<_> = batches.into_iter().map(PyRecordBatch::into_inner).collect();
    let (config, sensors, scaler) = (config.0.clone(), sensors.0.clone(), scaler.map(|s| s.0.clone()));
    let artifact = py
        .detach(move || model::import_weights(&tensors, &data, &sensors, scaler, &config, source))
        .map_err(to_py)?;
    Ok(PyModel { inner: Mutex::new(artifact) })
}

/// Scores record batches with a model: per row a score, a flag, per-sensor errors and the sensors to
/// blame (docs/scoring-contract.md). Keeps each plant's last rows between calls.
#[pyclass(name = "Detector", module = "tidewatch", frozen)]
pub struct PyDetector {
    inner: Mutex<Detector>,
    last: Mutex<Option<model::ScoreOutcome>>,
}

impl PyDetector {
    fn new(det: Detector) -> Self {
        PyDetector { inner: Mutex::new(det), last: Mutex::new(None) }
    }
}

#[pymethods]
impl PyDetector {
    /// Loads a model directory or published symlink. `device`: "auto" | "cpu" | "cuda" | "cuda:N";
    /// `threads`: libtorch threads (default: TIDEWATCH_THREADS, then OMP_NUM_THREADS, then libtorch's).
    #[staticmethod]
    #[pyo3(signature = (path, device = "auto", threads = None))]
    fn load(py: Python<'_>, path: PathBuf, device: &str, threads: Option<usize>) -> PyResult<Self> {
        py.detach(|| Detector::load(&path, device, threads)).map(Self::new).map_err(to_py)
    }

    /// Scores a pyarrow RecordBatch (or any object with `__arrow_c_array__`) and returns a RecordBatch
    /// with the schema `output_schema`, one row per input row not flagged `_tw_context`. A Table (or any
    /// `__arrow_c_stream__`) is scored batch after batch, in order, and gives a Table. With `aggregate`
    /// (a BatchAggregate of the same sensors), every output row and the windows run are recorded in it.
    /// Calls continue each plant's stream (windows, incidents); `reset=True` starts them afresh first, for
    /// data unrelated to the previous call (another file, a re-run).
    #[pyo3(signature = (batch, aggregate = None, reset = false))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        batch: AnyRecordBatch,
        mut aggregate: Option<PyRefMut<'py, PyBatchAggregate>>,
        reset: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let inner = &self.inner;
        if reset {
            lock(inner).reset_stream();
        }
        let mut agg: Option<&mut BatchAggregate> = aggregate.as_deref_mut().map(|a| &mut a.0);
        match batch {
            AnyRecordBatch::RecordBatch(b) => {
                let b = b.into_inner();
                let outcome = py.detach(|| lock(inner).score_into(&b, agg)).map_err(to_py)?;
                let out = outcome.batch.clone();
                warn_all(py, &outcome.warnings)?;
                *lock(&self.last) = Some(outcome);
                PyRecordBatch::new(out).into_pyarrow(py)
            }
            AnyRecordBatch::Stream(stream) => {
                let reader = stream.into_reader()?;
                let (outs, last) = py
                    .detach(|| -> crate::Result<_> {
                        let mut det = lock(inner);
                        let mut outs = Vec::new();
                        let mut total: Option<model::ScoreOutcome> = None;
                        for b in reader {
                            let b = b.map_err(|e| Error::Input(format!("reading the input stream: {e}")))?;
                            let o = det.score_into(&b, agg.as_deref_mut())?;
                            outs.push(o.batch.clone());
                            total = Some(match total {
                                None => o,
                                Some(t) => model::ScoreOutcome {
                                    batch: o.batch,
                                    windows_scored: t.windows_scored + o.windows_scored,
                                    rows_scored: t.rows_scored + o.rows_scored,
                                    rows_warmup: t.rows_warmup + o.rows_warmup,
                                    rows_quarantined: t.rows_quarantined + o.rows_quarantined,
                                    rows_flagged: t.rows_flagged + o.rows_flagged,
                                    warnings: [t.warnings, o.warnings].concat(),
                                },
                            });
                        }
                        Ok((outs, total))
                    })
                    .map_err(to_py)?;
                if let Some(o) = &last {
                    warn_all(py, &o.warnings)?;
                }
                *lock(&self.last) = last;
                let schema = lock(inner).output_schema();
                PyTable::try_new(outs, schema)?.into_pyarrow(py)
            }
        }
    }

    /// Counts of the latest `score` call (summed over a Table's batches): windows_scored, rows_scored, rows_warmup, rows_quarantined,
    /// rows_flagged (None before the first call).
    #[getter]
    fn last_counts<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let last = lock(&self.last);
        let Some(o) = last.as_ref() else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("windows_scored", o.windows_scored)?;
        d.set_item("rows_scored", o.rows_scored)?;
        d.set_item("rows_warmup", o.rows_warmup)?;
        d.set_item("rows_quarantined", o.rows_quarantined)?;
        d.set_item("rows_flagged", o.rows_flagged)?;
        Ok(Some(d))
    }

    /// Forgets carried rows and incident state: each plant's next rows start with a warm-up.
    fn reset_stream(&self) {
        lock(&self.inner).reset_stream()
    }

    /// The incident transitions (opened / updated / closed) caused by the rows scored since the last
    /// call, as a pyarrow RecordBatch.
    fn incident_transitions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mut d = lock(&self.inner);
        let transitions = d.take_incident_transitions();
        super::incidents::transitions_to_py(py, &transitions, d.sensors())
    }

    /// Warnings raised by the calls since the last take (e.g. rows arriving at a sample period unlike
    /// the training data's), oldest first. Each is also issued as a Python `UserWarning` by `score`.
    fn take_warnings(&self) -> Vec<String> {
        lock(&self.inner).take_warnings()
    }

    /// The incidents still open, as dicts.
    fn open_incidents<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_json_value(py, &lock(&self.inner).open_incidents())
    }

    /// The incident rules: min_duration_s, gap_s, quiet_s (defaults from the sample period).
    #[getter]
    fn incident_policy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        super::incidents::policy_dict(py, lock(&self.inner).incident_policy())
    }

    /// Replaces the incident rules (unset durations: the defaults for the model's sample period); the
    /// incident state restarts.
    #[pyo3(signature = (min_duration_s = None, gap_s = None, quiet_s = None))]
    fn set_incident_policy(&self, min_duration_s: Option<f64>, gap_s: Option<f64>, quiet_s: Option<f64>) -> PyResult<()> {
        let mut d = lock(&self.inner);
        let period = d.sample_period_seconds().unwrap_or(1.0);
        let policy = crate::incidents::IncidentPolicy::for_period_with(period, min_duration_s, gap_s, quiet_s);
        d.set_incident_policy(policy).map_err(to_py)
    }

    /// The training data's sample period in seconds (median step), None when it had no timestamps.
    #[getter]
    fn sample_period_seconds(&self) -> Option<f64> {
        lock(&self.inner).sample_period_seconds()
    }

    /// Reloads when the model path points to new files; True when the model was swapped. A bad new
    /// file raises ModelError once and the current model stays in use.
    fn reload_if_changed(&self, py: Python<'_>) -> PyResult<bool> {
        let inner = &self.inner;
        py.detach(|| lock(inner).reload_if_changed()).map_err(to_py)
    }

    /// Overrides the calibrated window threshold (None restores it).
    #[pyo3(signature = (threshold))]
    fn set_threshold(&self, threshold: Option<f64>) -> PyResult<()> {
        lock(&self.inner).set_threshold(threshold).map_err(to_py)
    }

    /// Windows per forward pass (default: 512 on CPU, 32768 on CUDA, or the model's score_batch_size).
    fn set_batch_size(&self, windows: usize) -> PyResult<()> {
        lock(&self.inner).set_batch_size(windows).map_err(to_py)
    }

    #[getter]
    fn version(&self) -> String {
        lock(&self.inner).version().to_string()
    }
    /// sha256 of the model's weights file.
    #[getter]
    fn checksum(&self) -> String {
        lock(&self.inner).checksum().to_string()
    }
    #[getter]
    fn threshold(&self) -> f64 {
        lock(&self.inner).threshold()
    }
    /// Per-sensor thresholds, in sensor order.
    #[getter]
    fn sensor_thresholds(&self) -> Vec<f64> {
        lock(&self.inner).model().thresholds().sensors.clone()
    }
    #[getter]
    fn window(&self) -> usize {
        lock(&self.inner).model().window_spec().length
    }
    #[getter]
    fn stride(&self) -> usize {
        lock(&self.inner).model().window_spec().stride
    }
    #[getter]
    fn sensors(&self) -> PySensorSet {
        PySensorSet(lock(&self.inner).sensors().clone())
    }
    #[getter]
    fn scaler(&self) -> PyScaler {
        PyScaler(lock(&self.inner).model().scaler().clone())
    }
    /// Seconds the latest (re)load took.
    #[getter]
    fn load_seconds(&self) -> f64 {
        lock(&self.inner).load_seconds()
    }
    /// Successful reloads since the first load.
    #[getter]
    fn reloads(&self) -> u64 {
        lock(&self.inner).reloads()
    }
    /// The version directory the model was read from (None for a detector built from a Model).
    #[getter]
    fn resolved_path(&self) -> Option<String> {
        lock(&self.inner).resolved_path().map(|p| p.display().to_string())
    }
    #[getter]
    fn path(&self) -> Option<String> {
        lock(&self.inner).path().map(|p| p.display().to_string())
    }
    #[getter]
    fn device(&self) -> String {
        model::device_name(lock(&self.inner).device())
    }
    #[getter]
    fn last_reload_error(&self) -> Option<String> {
        lock(&self.inner).last_reload_error().map(str::to_string)
    }
    /// Rows held for windows that the next batches will complete, over all plants.
    #[getter]
    fn rows_carried(&self) -> usize {
        lock(&self.inner).rows_carried()
    }
    #[getter]
    fn manifest<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_json_value(py, &lock(&self.inner).model().manifest)
    }
    /// The pyarrow schema of `score`'s output.
    #[getter]
    fn output_schema<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PySchema::new(lock(&self.inner).output_schema()).into_pyarrow(py)
    }

    fn __repr__(&self) -> String {
        let d = lock(&self.inner);
        format!(
            "Detector(version={:?}, plant={:?}, device={:?}, threshold={:.6})",
            d.version(),
            d.sensors().plant(),
            model::device_name(d.device()),
            d.threshold()
        )
    }
}

/// The libtorch version the extension runs on.
#[pyfunction]
fn torch_version() -> &'static str {
    model::LIBTORCH_VERSION
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModelConfig>()?;
    m.add_class::<PyModel>()?;
    m.add_class::<PyDetector>()?;
    m.add_function(wrap_pyfunction!(train_model, m)?)?;
    m.add_function(wrap_pyfunction!(import_weights, m)?)?;
    m.add_function(wrap_pyfunction!(torch_version, m)?)?;
    Ok(())
}
