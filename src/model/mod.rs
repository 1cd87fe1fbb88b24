//! The LSTM variational autoencoder on libtorch: configuration, network, training, scoring,
//! threshold calibration and the on-disk artifact.
//!
//! Everything here works on tensors of already-scaled windows, [N, W, F] f32, or on a scaled series
//! [T, F] with window start offsets (`train::WindowSet`), so no window is materialised twice.
pub mod artifact;
pub mod config;
pub mod detector;
pub mod fit;
pub mod input;
pub mod score;
pub mod threshold;
pub mod train;
pub mod vae;

pub use artifact::{Manifest, ModelArtifact, PublishReport, TrainingSummary};
pub use config::ModelConfig;
pub use detector::{Detector, ScoreOutcome};
pub use fit::{fit, import_weights};
pub use score::{score_window_set, score_windows, WindowScores};
pub use threshold::{ThresholdMethod, Thresholds};
pub use train::{train, EpochReport, StopReason, TrainedModel, TrainingSeries, WindowSet};
pub use vae::{Architecture, LstmVae};

use tch::Device;

use crate::{Error, Result};

/// The libtorch version this build runs on: torch-sys 0.24 refuses to build against any other, and the
/// Python `torch` pin moves with it.
pub const LIBTORCH_VERSION: &str = "2.11.0";

/// Parses "auto" | "cpu" | "cuda" | "cuda:N". "auto" takes CUDA device 0 when libtorch can reach one.
/// Asking for CUDA where there is none is an error rather than a silent fall-back to CPU.
pub fn parse_device(spec: &str) -> Result<Device> {
    let cuda = |index: usize| {
        if !tch::Cuda::is_available() {
            return Err(Error::Config(format!("device '{spec}': CUDA is not available to libtorch in this process")));
        }
        let count = tch::Cuda::device_count() as usize;
        if index >= count {
            return Err(Error::Config(format!("device '{spec}': only {count} CUDA device(s) present")));
        }
        Ok(Device::Cuda(index))
    };
    match spec.trim() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(Error::Config(format!("device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got '{spec}'"))),
        },
    }
}

/// A device's name as recorded in manifests and reports ("cpu", "cuda:0").
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Cpu => "cpu".into(),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
    }
}

/// Sets libtorch's intra-op thread count: `threads` if given, else `TIDEWATCH_THREADS`, else
/// `OMP_NUM_THREADS`, else libtorch's own default is left alone. Called when work starts (training,
/// loading a detector), never at import, because PySpark forks its workers after import.
pub fn apply_threads(threads: Option<usize>) -> Result<()> {
    let from_env = |name: &str| -> Result<Option<usize>> {
        match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(Error::Config(format!("environment variable {name} must be a positive integer, got '{v}'"))),
            },
            _ => Ok(None),
        }
    };
    let wanted = match threads {
        Some(n) => Some(n),
        None => match from_env("TIDEWATCH_THREADS")? {
            Some(n) => Some(n),
            None => from_env("OMP_NUM_THREADS")?,
        },
    };
    if let Some(n) = wanted {
        if tch::get_num_threads() != n as i32 {
            tch::set_num_threads(n as i32);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_cuda_absence_is_an_error() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        if !tch::Cuda::is_available() {
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
            let err = parse_device("cuda").unwrap_err().to_string();
            assert!(err.contains("not available"), "{err}");
        } else {
            assert!(parse_device("auto").unwrap().is_cuda());
        }
        assert_eq!(device_name(Device::Cuda(1)), "cuda:1");
    }
}
