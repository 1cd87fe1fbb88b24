//! tidewatch native core: Arrow batches in, windows, libtorch LSTM-VAE scoring, metrics.
//! Nothing in the core knows about Python or Spark; `python` (feature-gated) is the only binding layer.
pub mod error;
pub mod incidents;
pub mod matrix;
pub mod metrics;
pub mod model;
pub mod scaler;
pub mod sensors;
pub mod simulator;
pub mod windows;

pub use error::{Error, Result};

/// Whether libtorch in this process can reach a CUDA device.
pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

#[cfg(feature = "python")]
mod python;
