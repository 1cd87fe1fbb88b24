//! One error type for the core. Every variant names what is at fault (column, row, file) so the
//! bindings can map it to a Python exception without adding context of their own.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input's shape is wrong: a column is missing, has a non-numeric type, or is unexpected.
    #[error("{0}")]
    Schema(String),
    /// A value is unusable: null, NaN or infinite, out of order, too few rows.
    #[error("{0}")]
    Input(String),
    /// A model artifact is missing, truncated, foreign or does not match the data.
    #[error("{0}")]
    Model(String),
    /// A configuration value is out of range or inconsistent.
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
