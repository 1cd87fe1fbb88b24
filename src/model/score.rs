//! Deterministic scoring of windows.
//!
//! The reconstruction comes from the latent MEAN (no sampling), so a window's score depends only on
//! the window and the weights: reproducible, and the same whichever mini-batch the window lands in.
//! Per window: per-sensor error = mean over the window's last `focus` steps (all W when `focus` is 0 or
//! W) of that sensor's squared error (scaled space); score = the mean of the per-sensor errors. A short
//! focus scores a row by how well the rows just before it are reconstructed, so a flag does not linger
//! W-1 rows after an anomaly has left the window's end.
use tch::{Device, Kind, Tensor};

use super::train::{gather_windows, WindowSet};
use super::vae::LstmVae;
use crate::{Error, Result};

/// Scores of N windows, on the host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowScores {
    /// [N]
    pub scores: Vec<f32>,
    /// [N, F] row-major.
    pub sensor_errors: Vec<f32>,
    pub n_features: usize,
}

impl WindowScores {
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// Per-sensor errors of window i.
    pub fn sensor_errors_of(&self, i: usize) -> &[f32] {
        &self.sensor_errors[i * self.n_features..(i + 1) * self.n_features]
    }

    fn append(&mut self, scores: &Tensor, sensors: &Tensor) -> Result<()> {
        let scores = scores.to_device(Device::Cpu);
        let sensors = sensors.to_device(Device::Cpu).contiguous().view([-1]);
        self.scores.extend(Vec::<f32>::try_from(&scores)?);
        self.sensor_errors.extend(Vec::<f32>::try_from(&sensors)?);
        Ok(())
    }
}

/// Mini-batches smaller than this are padded (with copies of their last window) before the forward
/// pass. libtorch's CPU matrix kernels take other code paths for one or two rows, whose results differ
/// in the last bits; with padding, a window's score is bit-identical whichever mini-batch it lands in,
/// so streaming in any chunking reproduces one-shot scores exactly (checked by the tests below).
pub const MIN_FORWARD_BATCH: i64 = 8;

/// The steps a per-sensor error averages over: the last `focus` of W (0 or more than W: all W).
pub fn focus_steps(focus: usize, window: usize) -> usize {
    if focus == 0 || focus > window {
        window
    } else {
        focus
    }
}

/// Score [B] and per-sensor errors [B, F] of one mini-batch x [B, W, F] already on the model's device,
/// over the last `focus` steps (see `focus_steps`). Call under `tch::no_grad`.
pub fn score_batch(vae: &LstmVae, x: &Tensor, focus: usize) -> (Tensor, Tensor) {
    let b = x.size()[0];
    let padded;
    let input = if b > 0 && b < MIN_FORWARD_BATCH {
        let last = x.narrow(0, b - 1, 1);
        let fill = last.expand([MIN_FORWARD_BATCH - b, x.size()[1], x.size()[2]], false);
        padded = Tensor::cat(&[x, &fill], 0);
        &padded
    } else {
        x
    };
    let out = vae.forward(input, None);
    let w = x.size()[1];
    let steps = focus_steps(focus, w as usize) as i64;
    let squared = (&out.reconstruction - input).square();
    let squared = if steps < w { squared.narrow(1, w - steps, steps) } else { squared };
    let per_sensor = squared.mean_dim(1, false, Kind::Float).narrow(0, 0, b);
    let score = per_sensor.mean_dim(1, false, Kind::Float);
    (score, per_sensor)
}

fn check_shape(vae: &LstmVae, size: &[i64], what: &str) -> Result<()> {
    let arch = vae.architecture();
    let expected = [arch.window as i64, arch.n_features as i64];
    if size.len() != 3 || size[1..] != expected {
        return Err(Error::Input(format!(
            "{what}: expected windows of shape [N, {}, {}] (window, sensors), got {size:?}",
            arch.window, arch.n_features
        )));
    }
    Ok(())
}

/// Scores windows [N, W, F] (f32, on any device) in mini-batches of `batch_size` on the model's device.
pub fn score_windows(vae: &LstmVae, windows: &Tensor, batch_size: usize, focus: usize) -> Result<WindowScores> {
    check_shape(vae, &windows.size(), "score_windows")?;
    if windows.kind() != Kind::Float {
        return Err(Error::Input(format!("score_windows: windows must be float32, got {:?}", windows.kind())));
    }
    let n = windows.size()[0];
    let mut out = WindowScores { n_features: vae.architecture().n_features, ..Default::default() };
    out.scores.reserve(n as usize);
    out.sensor_errors.reserve(n as usize * out.n_features);
    let batch = batch_size.max(1) as i64;
    tch::no_grad(|| -> Result<()> {
        let mut from = 0;
        while from < n {
            let len = batch.min(n - from);
            let x = windows.narrow(0, from, len).to_device(vae.device());
            let (s, e) = score_batch(vae, &x, focus);
            out.append(&s, &e)?;
            from += len;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Scores every window of a set (e.g. held-out normal windows for calibration).
pub fn score_window_set(vae: &LstmVae, set: &WindowSet, batch_size: usize, focus: usize) -> Result<WindowScores> {
    check_shape(vae, &[0, set.window() as i64, set.n_features() as i64], "score_window_set")?;
    score_starts(vae, &set.series_on(vae.device()), set.starts(), batch_size, focus)
}

/// Scores the windows of `series` [T, F] (on the model's device) that start at the rows `starts`,
/// gathering each mini-batch on the device.
pub fn score_starts(vae: &LstmVae, series: &Tensor, starts: &[i64], batch_size: usize, focus: usize) -> Result<WindowScores> {
    let arch = vae.architecture();
    check_shape(vae, &[0, arch.window as i64, series.size()[1]], "score_starts")?;
    let n = starts.len() as i64;
    let mut out = WindowScores { n_features: arch.n_features, ..Default::default() };
    out.scores.reserve(starts.len());
    out.sensor_errors.reserve(starts.len() * arch.n_features);
    if n == 0 {
        return Ok(out);
    }
    let starts = Tensor::from_slice(starts).to_device(series.device());
    let batch = batch_size.max(1) as i64;
    tch::no_grad(|| -> Result<()> {
        let mut from = 0;
        while from < n {
            let len = batch.min(n - from);
            let x = gather_windows(series, &starts.narrow(0, from, len), arch.window);
            let (s, e) = score_batch(vae, &x, focus);
            out.append(&s, &e)?;
            from += len;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Area under the ROC curve of `scores` for `labels` (true = anomalous), ties counted as ½.
pub fn roc_auc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut pairs: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut positives) = (0.0f64, 0usize);
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let mid_rank = (i + j + 1) as f64 / 2.0; // 1-based average rank of the tie group
        for p in &pairs[i..j] {
            if p.1 {
                rank_sum += mid_rank;
                positives += 1;
            }
        }
        i = j;
    }
    let negatives = pairs.len() - positives;
    if positives == 0 || negatives == 0 {
        return f64::NAN;
    }
    (rank_sum - (positives * (positives + 1)) as f64 / 2.0) / (positives * negatives) as f64
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use super::*;
    use crate::model::train::tests::{plant_series, small_config, PLANT_SENSORS};
    use crate::model::train::{train, TrainingSeries};
    use crate::model::threshold::calibrate;
    use crate::model::vae::Architecture;
    use crate::model::ModelConfig;

    #[test]
    fn auc_counts_ties_and_orders() {
        assert_eq!(roc_auc(&[0.1, 0.2, 0.9, 0.8], &[false, false, true, true]), 1.0);
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), 0.5);
        assert!(roc_auc(&[0.1], &[true]).is_nan());
    }

    #[test]
    fn scores_are_deterministic_and_independent_of_batching() {
        let cfg = small_config();
        let f = PLANT_SENSORS;
        let arch = Architecture::new(&cfg, f).unwrap();
        let vae = LstmVae::new(arch, Device::Cpu, 5).unwrap();
        let values = plant_series(300, 1);
        let set = TrainingSeries::new(&values, f, &[300]).unwrap().windows(cfg.window, 1);
        let windows = set.materialise(0, set.len());
        let whole = score_windows(&vae, &windows, 4096, 0).unwrap();
        assert_eq!(whole.len(), 285);
        assert_eq!(whole.sensor_errors.len(), 285 * f);
        for batch in [1, 7, 64] {
            assert_eq!(score_windows(&vae, &windows, batch, 0).unwrap(), whole, "batch {batch}");
        }
        assert_eq!(score_window_set(&vae, &set, 100, 0).unwrap(), whole);
        // score = mean of the per-sensor errors
        for i in [0, 100, 284] {
            let mean: f32 = whole.sensor_errors_of(i).iter().sum::<f32>() / f as f32;
            assert!((mean - whole.scores[i]).abs() <= 1e-6 * mean.max(1e-6));
        }
        let wrong = Tensor::zeros([2, 5, 5], (Kind::Float, Device::Cpu));
        let err = score_windows(&vae, &wrong, 10, 0).unwrap_err().to_string();
        assert!(err.contains("[N, 16, 5]"), "{err}");
    }

    #[test]
    fn swat_sized_scores_are_bit_identical_in_any_batching() {
        let cfg = ModelConfig::default();
        let f = 51;
        let vae = LstmVae::new(Architecture::new(&cfg, f).unwrap(), Device::Cpu, 9).unwrap();
        let n = 1500;
        let windows = Tensor::rand([n, cfg.window as i64, f as i64], (Kind::Float, Device::Cpu));
        let whole = score_windows(&vae, &windows, 4096, 0).unwrap();
        for batch in [1, 2, 3, 8, 31, 64, 255, 256, 1000, 1499] {
            let chunked = score_windows(&vae, &windows, batch, 0).unwrap();
            assert_eq!(chunked, whole, "scores in mini-batches of {batch} differ from one batch");
        }
    }

    #[test]
    fn planted_anomaly_scores_above_normal_windows() {
        let cfg = small_config();
        let f = PLANT_SENSORS;
        let values = plant_series(1200, 11);
        let series = TrainingSeries::new(&values, f, &[1200]).unwrap();
        let (tr, va) = series.split(cfg.validation_fraction, cfg.window);
        let validation = va.windows(cfg.window, 1);
        let model =
            train(&cfg, &tr.windows(cfg.window, cfg.train_stride), &validation, |_| ControlFlow::Continue(()))
                .unwrap();
        let thresholds = calibrate(&score_window_set(&model.vae, &validation, 4096, 0).unwrap(), &cfg, 0, &[]).unwrap();

        // Scores a fresh stretch of the same plant with rows 200..260 altered by `plant`; returns the
        // AUC of normal windows (no altered row) against windows at least half inside the anomaly
        // (windows touching it with a few rows are ambiguous and left out), and for each window fully
        // inside it, the sensor with the largest error relative to its per-sensor threshold (a sensor
        // that is hard to reconstruct in normal operation, like a switching valve, has a high one).
        let planted = |plant: &dyn Fn(&mut [f32])| {
            let (a0, a1) = (200, 260);
            let mut test = plant_series(500, 99);
            for t in a0..a1 {
                plant(&mut test[t * f..(t + 1) * f]);
            }
            let set = TrainingSeries::new(&test, f, &[500]).unwrap().windows(cfg.window, 1);
            let scores = score_window_set(&model.vae, &set, 4096, 0).unwrap();
            let (mut picked, mut labels, mut top) = (Vec::new(), Vec::new(), Vec::new());
            for (i, &s) in set.starts().iter().enumerate() {
                let (s, e) = (s as usize, s as usize + cfg.window);
                let overlap = e.min(a1).saturating_sub(s.max(a0));
                if overlap == 0 || 2 * overlap >= cfg.window {
                    picked.push(scores.scores[i]);
                    labels.push(overlap > 0);
                }
                if overlap == cfg.window {
                    let e = scores.sensor_errors_of(i);
                    let ratio = |j: usize| f64::from(e[j]) / thresholds.sensors[j];
                    top.push((0..f).max_by(|&a, &b| ratio(a).total_cmp(&ratio(b))).unwrap());
                }
            }
            (roc_auc(&picked, &labels), top)
        };
        let share = |top: &[usize], sensors: &[usize]| {
            top.iter().filter(|s| sensors.contains(s)).count() as f64 / top.len() as f64
        };

        // False-data injection: the flow sensor (2) reads flow while the pump (1) is off and none while
        // it runs. The detector sees the broken pump–flow relation; it cannot know which of the two lies.
        let (auc, top) = planted(&|row| row[2] = 0.6 - row[2]);
        assert!(auc > 0.95, "AUC of the spoofed flow is {auc}");
        assert!(share(&top, &[1, 2]) >= 0.8, "the pump or the flow is named: {top:?}");

        // The analyser (4) drifts out of its normal band: it alone is to blame.
        let (auc, top) = planted(&|row| row[4] += 0.3);
        // Lower bar: normal windows holding a pump switch are reconstructed less well by this small
        // model and overlap the offset windows' scores.
        assert!(auc > 0.8, "AUC of the analyser offset is {auc}");
        assert!(share(&top, &[4]) >= 0.9, "the analyser is named: {top:?}");
    }
}
