//! pyo3 bindings: conversions, GIL release and error mapping only. No logic lives here.
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::Error;

mod incidents;
mod kernels;
mod metrics;
mod model;
mod simulator;

create_exception!(_native, TidewatchError, PyException, "Base class of every tidewatch error.");
create_exception!(_native, SchemaError, TidewatchError, "The input's columns are missing, extra or of the wrong type.");
create_exception!(_native, InputError, TidewatchError, "A value or row of the input is unusable.");
create_exception!(_native, ModelError, TidewatchError, "A model artifact is missing, truncated, foreign or mismatched.");
create_exception!(_native, ConfigError, TidewatchError, "A configuration value is out of range or inconsistent.");
create_exception!(_native, TidewatchIOError, TidewatchError, "A file could not be read or written.");

/// Maps every core error to its Python exception; the message already names the culprit.
pub(crate) fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::Schema(_) => SchemaError::new_err(msg),
        Error::Input(_) => InputError::new_err(msg),
        Error::Model(_) => ModelError::new_err(msg),
        Error::Config(_) => ConfigError::new_err(msg),
        Error::Io { .. } => TidewatchIOError::new_err(msg),
        Error::Torch(_) => TidewatchError::new_err(msg),
    }
}

#[pyfunction]
fn cuda_available(py: Python<'_>) -> bool {
    py.detach(crate::cuda_available)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TidewatchError", py.get_type::<TidewatchError>())?;
    m.add("SchemaError", py.get_type::<SchemaError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("TidewatchIOError", py.get_type::<TidewatchIOError>())?;
    m.add_function(wrap_pyfunction!(cuda_available, m)?)?;
    incidents::register(m)?;
    kernels::register(m)?;
    metrics::register(m)?;
    model::register(m)?;
    simulator::register(m)?;
    Ok(())
}
