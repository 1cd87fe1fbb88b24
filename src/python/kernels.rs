//! Bindings for the core kernels: sensor sets, sensor matrix, scaler, windows.
use numpy::ndarray::{Array1, Array2, Array3};
use numpy::{PyArray1, PyArray2, PyArray3, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3_arrow::PyRecordBatch;

use super::to_py;
use crate::matrix::{InvalidRows, SensorMatrix};
use crate::scaler::{Scaler, ScalerKind, ScalerStats};
use crate::sensors::SensorSet;
use crate::windows::{fill_windows, WindowSpec, WindowStream};
use crate::Error;

fn config_err(msg: String) -> PyErr {
    to_py(Error::Config(msg))
}

/// A plant's sensors in column order and the process stage of each.
#[pyclass(name = "SensorSet", module = "tidewatch", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct PySensorSet(pub SensorSet);

#[pymethods]
impl PySensorSet {
    /// `stages` lists (stage name, its sensors) in process order; without it every sensor is in one
    /// stage, "all". `SensorSet("skab", ["a", "b"])`.
    #[new]
    #[pyo3(signature = (plant, sensors, stages = None))]
    fn new(plant: &str, sensors: Vec<String>, stages: Option<Vec<(String, Vec<String>)>>) -> PyResult<Self> {
        SensorSet::new(plant, sensors, stages.unwrap_or_default()).map(Self).map_err(to_py)
    }
    /// The built-in SWaT A1 map: 51 columns, stages P1–P6.
    #[staticmethod]
    fn swat() -> Self {
        Self(SensorSet::swat())
    }
    /// Reads a plant file (YAML or JSON): `plant`, `sensors`, `stages`.
    #[staticmethod]
    fn load(path: std::path::PathBuf) -> PyResult<Self> {
        SensorSet::from_file(&path).map(Self).map_err(to_py)
    }
    #[staticmethod]
    fn from_text(text: &str) -> PyResult<Self> {
        SensorSet::from_text(text).map(Self).map_err(to_py)
    }
    #[getter]
    fn plant(&self) -> String {
        self.0.plant().to_string()
    }
    #[getter]
    fn sensors(&self) -> Vec<String> {
        self.0.sensors().to_vec()
    }
    /// The stage of each sensor, aligned with `sensors`.
    #[getter]
    fn stages(&self) -> Vec<String> {
        (0..self.0.len()).map(|i| self.0.stages()[self.0.stage_index(i)].clone()).collect()
    }
    /// Stage names in process order.
    #[getter]
    fn stage_names(&self) -> Vec<String> {
        self.0.stages().to_vec()
    }
    fn stage_of(&self, sensor: &str) -> Option<String> {
        self.0.stage_of(sensor).map(str::to_string)
    }
    fn __len__(&self) -> usize {
        self.0.len()
    }
    fn __repr__(&self) -> String {
        format!("SensorSet(plant={:?}, {} sensors, stages={:?})", self.0.plant(), self.0.len(), self.0.stages())
    }
    fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("a sensor set serialises")
    }
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<Self> {
        serde_json::from_str(text).map(Self).map_err(|e| config_err(format!("not a sensor set: {e}")))
    }
}

fn invalid_policy(invalid: &str) -> PyResult<InvalidRows> {
    match invalid {
        "error" => Ok(InvalidRows::Error),
        "mask" => Ok(InvalidRows::Mask),
        other => Err(config_err(format!("invalid must be 'error' or 'mask', got '{other}'"))),
    }
}

/// Selects the sensor columns of `batch` by name. Returns (values [rows, F] float64, valid [rows] bool,
/// problems as (row, sensor, reason) for each invalid row). `invalid="error"` raises on the first bad value.
#[pyfunction]
#[pyo3(signature = (batch, sensors, invalid = "error"))]
#[allow(clippy::type_complexity)]
fn sensor_matrix<'py>(
    py: Python<'py>,
    batch: PyRecordBatch,
    sensors: &PySensorSet,
    invalid: &str,
) -> PyResult<(Bound<'py, PyArray2<f64>>, Bound<'py, PyArray1<bool>>, Vec<(usize, String, String)>)> {
    let policy = invalid_policy(invalid)?;
    let batch = batch.into_inner();
    let set = &sensors.0;
    let (values, valid, problems) = py
        .detach(|| -> crate::Result<_> {
            let m = SensorMatrix::from_batch(&batch, set, policy)?;
            let values = Array2::from_shape_fn((m.rows(), m.n_columns()), |(i, j)| m.value(i, j));
            let problems = m
                .problems()
                .iter()
                .map(|p| (p.row, set.sensors()[p.column].clone(), p.problem.as_str().to_string()))
                .collect::<Vec<_>>();
            Ok((values, Array1::from(m.valid().to_vec()), problems))
        })
        .map_err(to_py)?;
    Ok((PyArray2::from_owned_array(py, values), PyArray1::from_owned_array(py, valid), problems))
}

/// Mergeable per-sensor statistics; `finish()` turns them into a Scaler.
#[pyclass(name = "ScalerStats", module = "tidewatch")]
#[derive(Clone)]
pub struct PyScalerStats(pub ScalerStats);

#[pymethods]
impl PyScalerStats {
    #[new]
    fn new(n_columns: usize) -> Self {
        Self(ScalerStats::new(n_columns))
    }
    /// Adds the valid rows of a record batch (rows with a null/NaN/inf sensor are skipped and counted).
    /// Returns the number of rows skipped.
    fn update_batch(&mut self, py: Python<'_>, batch: PyRecordBatch, sensors: &PySensorSet) -> PyResult<usize> {
        let batch = batch.into_inner();
        let stats = &mut self.0;
        py.detach(|| -> crate::Result<usize> {
            let m = SensorMatrix::from_batch(&batch, &sensors.0, InvalidRows::Mask)?;
            if stats.columns.len() != m.n_columns() {
                return Err(Error::Input(format!(
                    "statistics have {} columns, the batch has {}",
                    stats.columns.len(),
                    m.n_columns()
                )));
            }
            let valid = (!m.all_valid()).then(|| m.valid());
            stats.push_columns(&m.columns(), valid);
            Ok(m.problems().len())
        })
        .map_err(to_py)
    }
    /// Adds rows of a [rows, F] float64 array (all must be finite).
    fn update(&mut self, values: PyReadonlyArray2<f64>) -> PyResult<()> {
        let a = values.as_array();
        if a.ncols() != self.0.columns.len() {
            return Err(to_py(Error::Input(format!(
                "statistics have {} columns, the array has {}",
                self.0.columns.len(),
                a.ncols()
            ))));
        }
        for (i, row) in a.rows().into_iter().enumerate() {
            if let Some(j) = row.iter().position(|x| !x.is_finite()) {
                return Err(to_py(Error::Input(format!("row {i}, column {j}: value is not finite"))));
            }
            self.0.push_row(&row.to_vec());
        }
        Ok(())
    }
    fn merge(&mut self, other: &PyScalerStats) -> PyResult<()> {
        self.0.merge(&other.0).map_err(to_py)
    }
    #[getter]
    fn rows(&self) -> u64 {
        self.0.rows()
    }
    /// Fits the scaler: `kind` is "minmax" or "standard"; `names` label constant columns.
    fn finish(&self, kind: &str, names: Vec<String>) -> PyResult<PyScaler> {
        let kind: ScalerKind = kind.parse().map_err(to_py)?;
        self.0.finish(kind, &names).map(PyScaler).map_err(to_py)
    }
    fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("statistics serialise")
    }
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<Self> {
        serde_json::from_str(text).map(Self).map_err(|e| to_py(Error::Input(format!("not scaler statistics: {e}"))))
    }
}

#[pyclass(name = "Scaler", module = "tidewatch", frozen)]
#[derive(Clone)]
pub struct PyScaler(pub Scaler);

#[pymethods]
impl PyScaler {
    #[getter]
    fn kind(&self) -> &'static str {
        match self.0.kind {
            ScalerKind::MinMax => "minmax",
            ScalerKind::Standard => "standard",
        }
    }
    #[getter]
    fn offset(&self) -> Vec<f64> {
        self.0.offset.clone()
    }
    #[getter]
    fn scale(&self) -> Vec<f64> {
        self.0.scale.clone()
    }
    /// Sensors that were constant in training (kept at unit scale).
    #[getter]
    fn constant_columns(&self) -> Vec<String> {
        self.0.constant_columns.clone()
    }
    /// Scales a [rows, F] float64 array.
    fn transform<'py>(&self, py: Python<'py>, values: PyReadonlyArray2<f64>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let a = values.as_array();
        if a.ncols() != self.0.len() {
            return Err(to_py(Error::Input(format!("scaler has {} columns, the array has {}", self.0.len(), a.ncols()))));
        }
        let out = Array2::from_shape_fn(a.dim(), |(i, j)| self.0.apply(a[(i, j)], j));
        Ok(PyArray2::from_owned_array(py, out))
    }
    fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("a scaler serialises")
    }
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<Self> {
        serde_json::from_str(text).map(Self).map_err(|e| to_py(Error::Model(format!("not a scaler: {e}"))))
    }
}

/// Sliding windows over interleaved keyed streams, carried across pushes (see src/windows.rs).
#[pyclass(name = "WindowStream", module = "tidewatch")]
pub struct PyWindowStream {
    inner: WindowStream,
    n_features: usize,
}

#[pymethods]
impl PyWindowStream {
    #[new]
    #[pyo3(signature = (length, stride, n_features))]
    fn new(length: usize, stride: usize, n_features: usize) -> PyResult<Self> {
        let spec = WindowSpec::new(length, stride).map_err(to_py)?;
        Ok(Self { inner: WindowStream::new(spec, n_features), n_features })
    }
    /// Appends rows [n, F] to stream `key`. Returns (windows [k, W, F] float32, window index per window,
    /// scoring window per new row with -1 for warm-up rows).
    #[allow(clippy::type_complexity)]
    fn push<'py>(
        &mut self,
        py: Python<'py>,
        key: &str,
        values: PyReadonlyArray2<'py, f64>,
    ) -> PyResult<(Bound<'py, PyArray3<f32>>, Bound<'py, PyArray1<u64>>, Bound<'py, PyArray1<i64>>)> {
        let a = values.as_array();
        if a.ncols() != self.n_features {
            return Err(to_py(Error::Input(format!(
                "stream has {} features, the array has {}",
                self.n_features,
                a.ncols()
            ))));
        }
        let get = |r: usize, j: usize| a[(r, j)];
        let plan = self.inner.push(key, (0..a.nrows()).collect(), &get);
        let w = self.inner.spec().length;
        let starts: Vec<usize> = plan.windows.iter().map(|x| x.1).collect();
        let mut buf = vec![0f32; starts.len() * w * self.n_features];
        fill_windows(&plan, &starts, w, None, &get, &mut buf);
        let windows = Array3::from_shape_vec((starts.len(), w, self.n_features), buf).expect("buffer sized above");
        let index: Vec<u64> = plan.windows.iter().map(|x| x.0).collect();
        let row_window: Vec<i64> = plan.row_window.iter().map(|k| k.map_or(-1, |k| k as i64)).collect();
        Ok((
            PyArray3::from_owned_array(py, windows),
            PyArray1::from_vec(py, index),
            PyArray1::from_vec(py, row_window),
        ))
    }
    #[getter]
    fn carried_rows(&self) -> usize {
        self.inner.carried_rows()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySensorSet>()?;
    m.add_class::<PyScalerStats>()?;
    m.add_class::<PyScaler>()?;
    m.add_class::<PyWindowStream>()?;
    m.add_function(wrap_pyfunction!(sensor_matrix, m)?)?;
    Ok(())
}
