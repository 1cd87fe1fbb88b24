//! Training: loss = reconstruction MSE + β·KL/(W·F) with β annealed from 0, Adam, global gradient-norm
//! clipping, early stopping on a chronological validation split with the best weights kept.
//!
//! Training data is a scaled series [T, F] cut into segments (a window never crosses a segment
//! boundary: a gap in the data, another plant, another file). Mini-batches are gathered from the
//! series by window start offsets on the device, so the windows (W times the data) never exist in memory
//! all at once.
//!
//! Determinism: initial weights, the per-epoch shuffle and the reparameterisation noise all come
//! from a PCG generator seeded by `config.seed` (never from libtorch's global generator), so two runs on
//! the CPU with the same thread count give bit-identical weights.
use std::ops::{ControlFlow, Range};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use super::vae::{loss_terms, Architecture, LstmVae};
use super::{apply_threads, device_name, parse_device, ModelConfig};
use crate::{Error, Result};

/// A scaled series [T, F] (f32, on the CPU) and the row ranges that are contiguous in time.
#[derive(Debug)]
pub struct TrainingSeries {
    series: Tensor,
    segments: Vec<Range<usize>>,
    n_features: usize,
}

impl TrainingSeries {
    /// `values` is row-major [T, F]; `segment_lengths` split its rows into contiguous stretches
    /// (they must add up to T).
    pub fn new(values: &[f32], n_features: usize, segment_lengths: &[usize]) -> Result<Self> {
        if n_features == 0 || !values.len().is_multiple_of(n_features) {
            return Err(Error::Input(format!(
                "training values hold {} numbers, not a whole number of rows of {n_features} sensors",
                values.len()
            )));
        }
        let rows = values.len() / n_features;
        let total: usize = segment_lengths.iter().sum();
        if total != rows {
            return Err(Error::Input(format!("segment lengths add up to {total} rows, the series has {rows}")));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!(
                "training row {}, sensor {}: value is not finite",
                i / n_features,
                i % n_features
            )));
        }
        let mut segments = Vec::with_capacity(segment_lengths.len());
        let mut at = 0;
        for &n in segment_lengths {
            segments.push(at..at + n);
            at += n;
        }
        let series = Tensor::from_slice(values).view([rows as i64, n_features as i64]);
        Ok(TrainingSeries { series, segments, n_features })
    }

    pub fn rows(&self) -> usize {
        self.segments.last().map_or(0, |s| s.end)
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }

    pub fn segments(&self) -> &[Range<usize>] {
        &self.segments
    }

    /// The series tensor [T, F] (CPU).
    pub fn tensor(&self) -> &Tensor {
        &self.series
    }

    /// Splits every segment chronologically: its last `fraction` of rows go to validation when both
    /// parts can hold at least one window; a segment too short for that stays whole in training.
    pub fn split(&self, fraction: f64, window: usize) -> (TrainingSeries, TrainingSeries) {
        let mut train = Vec::new();
        let mut val = Vec::new();
        for seg in &self.segments {
            let n = seg.len();
            let n_val = (n as f64 * fraction).round() as usize;
            if n_val >= window && n - n_val >= window {
                train.push(seg.start..seg.end - n_val);
                val.push(seg.end - n_val..seg.end);
            } else {
                train.push(seg.clone());
            }
        }
        let part = |segments| TrainingSeries {
            series: self.series.shallow_clone(),
            segments,
            n_features: self.n_features,
        };
        (part(train), part(val))
    }

    /// Windows of length `window` every `stride` rows inside each segment.
    pub fn windows(&self, window: usize, stride: usize) -> WindowSet {
        let mut starts = Vec::new();
        for seg in &self.segments {
            if seg.len() >= window {
                starts.extend((seg.start..=seg.end - window).step_by(stride.max(1)).map(|s| s as i64));
            }
        }
        WindowSet { series: self.series.shallow_clone(), starts, window, n_features: self.n_features }
    }
}

/// Windows [B, W, F] of `series` [T, F] starting at the rows in `starts` (i64, on the series' device):
/// one gather on the device, the only place a window's W×F block is materialised.
pub fn gather_windows(series: &Tensor, starts: &Tensor, window: usize) -> Tensor {
    let w = window as i64;
    let f = series.size()[1];
    let offsets = Tensor::arange(w, (Kind::Int64, starts.device()));
    let rows = (starts.unsqueeze(1) + offsets.unsqueeze(0)).view([-1]);
    series.index_select(0, &rows).view([-1, w, f])
}

/// Windows over a series, as start offsets (no copy of the data).
#[derive(Debug)]
pub struct WindowSet {
    series: Tensor,
    starts: Vec<i64>,
    window: usize,
    n_features: usize,
}

impl WindowSet {
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    pub fn window(&self) -> usize {
        self.window
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }

    pub fn starts(&self) -> &[i64] {
        &self.starts
    }

    /// The series moved to `device` once; pass it to `gather`.
    pub fn series_on(&self, device: Device) -> Tensor {
        self.series.to_device(device)
    }

    /// Windows [B, W, F] for the start offsets in `starts` (an i64 tensor on the series' device).
    pub fn gather(&self, series: &Tensor, starts: &Tensor) -> Tensor {
        gather_windows(series, starts, self.window)
    }

    /// Windows [n, W, F] from position `from` (CPU tensor), for tests and small sets.
    pub fn materialise(&self, from: usize, n: usize) -> Tensor {
        let starts = Tensor::from_slice(&self.starts[from..from + n]);
        self.gather(&self.series, &starts)
    }
}

/// One epoch's figures, handed to the progress callback and kept in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    pub epochs: usize,
    pub beta: f64,
    /// Mean over training windows of MSE + β·KL/(W·F) at this epoch's β (with sampled z).
    pub train_loss: f64,
    pub train_recon: f64,
    /// KL divergence in nats per window.
    pub train_kl: f64,
    /// Validation objective at β = beta_max (so epochs compare), with z = μ for the reconstruction.
    pub val_loss: f64,
    pub val_recon: f64,
    pub val_kl: f64,
    /// Whether this epoch's weights are the best so far (the ones kept).
    pub improved: bool,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// All configured epochs ran.
    Completed,
    /// `patience` epochs without improvement.
    EarlyStopped,
    /// The progress callback asked to stop.
    Cancelled,
}

#[derive(Debug)]
pub struct TrainedModel {
    /// The network with the best validation weights restored.
    pub vae: LstmVae,
    pub history: Vec<EpochReport>,
    /// 1-based epoch whose weights were kept.
    pub best_epoch: usize,
    pub best_val_loss: f64,
    pub stop: StopReason,
    /// The device trained on ("cpu", "cuda:0").
    pub device: String,
    pub seconds: f64,
}

/// Relative improvement of the validation loss that counts as better (guards against noise-level gains).
const MIN_RELATIVE_IMPROVEMENT: f64 = 1e-4;

/// Trains a fresh network on `train` windows, early-stopping on `validation` windows.
/// `progress` sees every epoch; returning `ControlFlow::Break(())` stops training (best weights kept).
pub fn train(
    config: &ModelConfig,
    train: &WindowSet,
    validation: &WindowSet,
    mut progress: impl FnMut(&EpochReport) -> ControlFlow<()>,
) -> Result<TrainedModel> {
    config.validate()?;
    if train.window != config.window || validation.window != config.window {
        return Err(Error::Config(format!(
            "model config field 'window' is {}, the windows given are {} rows long",
            config.window, train.window
        )));
    }
    if train.is_empty() {
        return Err(Error::Input(format!(
            "no training windows: every segment is shorter than the window of {} rows",
            config.window
        )));
    }
    if validation.is_empty() {
        return Err(Error::Input(
            "no validation windows: the held-out part of the data is shorter than one window".into(),
        ));
    }
    if train.n_features != validation.n_features {
        return Err(Error::Input("training and validation windows have different sensor counts".into()));
    }
    apply_threads(config.threads)?;
    let device = parse_device(&config.device)?;
    let started = Instant::now();
    let arch = Architecture::new(config, train.n_features)?;
    let vae = LstmVae::new(arch, device, config.seed)?;
    let mut opt = nn::Adam::default().build(vae.var_store(), config.learning_rate)?;
    let params = vae.trainable_variables();
    let elements = (config.window * train.n_features) as f64;

    let train_series = train.series_on(device);
    let val_series = validation.series_on(device);
    let val_starts = Tensor::from_slice(&validation.starts).to_device(device);
    let mut rng = Pcg64::seed_from_u64(config.seed ^ 0x7469_6465_7761_7463); // "tidewatc"
    let mut order: Vec<i64> = train.starts.clone();
    let batch = config.batch_size as i64;
    let latent = config.latent_size;

    let mut history = Vec::with_capacity(config.epochs);
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    let mut since_best = 0usize;
    let mut stop = StopReason::Completed;

    for epoch in 0..config.epochs {
        let t0 = Instant::now();
        let beta = config.beta_at(epoch);
        order.shuffle(&mut rng);
        let n = order.len();
        let noise: Vec<f32> = (0..n * latent).map(|_| StandardNormal.sample(&mut rng)).collect();
        let epoch_starts = Tensor::from_slice(&order).to_device(device);
        let epoch_noise = Tensor::from_slice(&noise).view([n as i64, latent as i64]).to_device(device);
        // Sums stay on the device: no host synchronisation inside the epoch.
        let mut sum_recon = Tensor::zeros([], (Kind::Float, device));
        let mut sum_kl = Tensor::zeros([], (Kind::Float, device));
        let mut from = 0i64;
        while from < n as i64 {
            let len = batch.min(n as i64 - from);
            let x = train.gather(&train_series, &epoch_starts.narrow(0, from, len));
            let eps = epoch_noise.narrow(0, from, len);
            let out = vae.forward(&x, Some(&eps));
            let (recon, kl) = loss_terms(&out, &x);
            let loss = &recon + &kl * (beta / elements);
            opt.zero_grad();
            loss.backward();
            if config.grad_clip_norm > 0.0 {
                clip_grad_norm(&params, config.grad_clip_norm);
            }
            opt.step();
            tch::no_grad(|| {
                sum_recon += recon.detach() * len as f64;
                sum_kl += kl.detach() * len as f64;
            });
            from += len;
        }
        let train_recon = sum_recon.double_value(&[]) / n as f64;
        let train_kl = sum_kl.double_value(&[]) / n as f64;
        let train_loss = train_recon + beta * train_kl / elements;
        if !train_loss.is_finite() {
            return Err(Error::Model(format!(
                "training diverged in epoch {}: the loss is {train_loss}; lower 'learning_rate' or 'grad_clip_norm', \
                 or check the scaling of the input",
                epoch + 1
            )));
        }

        let (val_recon, val_kl) =
            evaluate(&vae, validation, &val_series, &val_starts, config.score_batch_for(device) as i64);
        let val_loss = val_recon + config.beta_max * val_kl / elements;
        let annealed = epoch + 1 >= config.beta_anneal_epochs;
        let improved = match &best {
            None => true,
            Some((b, _, _)) => val_loss < b - MIN_RELATIVE_IMPROVEMENT * b.abs(),
        };
        if improved && val_loss.is_finite() {
            let snapshot = tch::no_grad(|| params.iter().map(|p| p.detach().copy()).collect());
            best = Some((val_loss, epoch + 1, snapshot));
            since_best = 0;
        } else if annealed {
            since_best += 1;
        }
        let report = EpochReport {
            epoch: epoch + 1,
            epochs: config.epochs,
            beta,
            train_loss,
            train_recon,
            train_kl,
            val_loss,
            val_recon,
            val_kl,
            improved,
            seconds: t0.elapsed().as_secs_f64(),
        };
        history.push(report.clone());
        if progress(&report).is_break() {
            stop = StopReason::Cancelled;
            break;
        }
        if config.patience > 0 && since_best >= config.patience {
            stop = StopReason::EarlyStopped;
            break;
        }
    }

    let (best_val_loss, best_epoch, snapshot) =
        best.ok_or_else(|| Error::Model("training produced no finite validation loss".into()))?;
    tch::no_grad(|| -> Result<()> {
        for (p, s) in params.iter().zip(&snapshot) {
            p.shallow_clone().f_copy_(s)?;
        }
        Ok(())
    })?;
    Ok(TrainedModel {
        vae,
        history,
        best_epoch,
        best_val_loss,
        stop,
        device: device_name(device),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Mean reconstruction MSE and mean KL (nats per window) over `set`, with z = μ, without gradients.
fn evaluate(vae: &LstmVae, set: &WindowSet, series: &Tensor, starts: &Tensor, batch: i64) -> (f64, f64) {
    tch::no_grad(|| {
        let n = set.len() as i64;
        let mut sum_recon = Tensor::zeros([], (Kind::Float, series.device()));
        let mut sum_kl = Tensor::zeros([], (Kind::Float, series.device()));
        let mut from = 0;
        while from < n {
            let len = batch.min(n - from);
            let x = set.gather(series, &starts.narrow(0, from, len));
            let out = vae.forward(&x, None);
            let (recon, kl) = loss_terms(&out, &x);
            sum_recon += recon * len as f64;
            sum_kl += kl * len as f64;
            from += len;
        }
        (sum_recon.double_value(&[]) / n as f64, sum_kl.double_value(&[]) / n as f64)
    })
}

/// Scales all gradients so their global L2 norm is at most `max`, like `torch.nn.utils.clip_grad_norm_`,
/// without copying the norm to the host (no device synchronisation per step).
fn clip_grad_norm(params: &[Tensor], max: f64) {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).filter(|g| g.defined()).collect();
        if grads.is_empty() {
            return;
        }
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
        let total = Tensor::stack(&norms, 0).norm();
        let coef = (max / (total + 1e-6)).clamp_max(1.0);
        for g in &grads {
            let _ = g.shallow_clone().g_mul_(&coef);
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Sensors of a toy plant stage, row-major [rows, 5], values in about [0, 1]: a tank level that
    /// fills and drains between set points (period 300 rows), the inlet pump (on while filling), the
    /// inlet flow (follows the pump), an outlet valve (open above half level) and a slowly drifting
    /// analyser, each with Gaussian noise σ = 0.01. Like SWaT, the sensors are tied to one another.
    pub(crate) const PLANT_SENSORS: usize = 5;
    pub(crate) fn plant_series(rows: usize, seed: u64) -> Vec<f32> {
        let mut rng = Pcg64::seed_from_u64(seed);
        let noise = rand_distr::Normal::new(0.0f64, 0.01).unwrap();
        let mut out = Vec::with_capacity(rows * PLANT_SENSORS);
        for t in 0..rows {
            let phase = (t % 300) as f64 / 300.0;
            let filling = phase < 0.5;
            let level = if filling { 0.2 + 1.2 * phase } else { 0.2 + 1.2 * (1.0 - phase) };
            let pump = if filling { 1.0 } else { 0.0 };
            let valve = if level > 0.5 { 1.0 } else { 0.0 };
            let analyser = 0.5 + 0.1 * (2.0 * std::f64::consts::PI * t as f64 / 97.0).sin();
            for v in [level, pump, 0.6 * pump, valve, analyser] {
                out.push((v + noise.sample(&mut rng)) as f32);
            }
        }
        out
    }

    pub(crate) fn small_config() -> ModelConfig {
        ModelConfig {
            window: 16,
            stride: 1,
            train_stride: 2,
            hidden_size: 24,
            latent_size: 6,
            layers: 1,
            beta_max: 0.1,
            beta_anneal_epochs: 3,
            epochs: 12,
            batch_size: 32,
            learning_rate: 5e-3,
            patience: 4,
            device: "cpu".into(),
            seed: 3,
            ..Default::default()
        }
    }

    pub(crate) fn small_data(cfg: &ModelConfig) -> (WindowSet, WindowSet, TrainingSeries) {
        let f = PLANT_SENSORS;
        let values = plant_series(1200, 11);
        let series = TrainingSeries::new(&values, f, &[700, 500]).unwrap();
        let (tr, va) = series.split(cfg.validation_fraction, cfg.window);
        (tr.windows(cfg.window, cfg.train_stride), va.windows(cfg.window, cfg.stride), series)
    }

    #[test]
    fn split_is_chronological_per_segment_and_windows_stay_inside() {
        let values = vec![0f32; 2 * 100];
        let s = TrainingSeries::new(&values, 2, &[60, 30, 10]).unwrap();
        let (tr, va) = s.split(0.2, 5);
        assert_eq!(tr.segments(), &[0..48, 60..84, 90..100]);
        assert_eq!(va.segments(), &[48..60, 84..90]);
        let w = tr.windows(5, 2);
        assert!(w.starts().iter().all(|&st| (st < 44) || (60..=79).contains(&st) || (90..=95).contains(&st)));
        assert_eq!(w.starts()[..3], [0, 2, 4]);
        let vw = va.windows(5, 1);
        assert_eq!(vw.len(), 8 + 2);
        assert_eq!(vw.materialise(0, 3).size(), [3, 5, 2]);
        assert!(TrainingSeries::new(&values, 2, &[50]).is_err());
        let mut bad = values.clone();
        bad[7] = f32::NAN;
        let err = TrainingSeries::new(&bad, 2, &[100]).unwrap_err().to_string();
        assert!(err.contains("row 3, sensor 1"), "{err}");
    }

    #[test]
    fn gather_builds_the_right_windows() {
        let values: Vec<f32> = (0..20).map(|v| v as f32).collect(); // 10 rows × 2
        let s = TrainingSeries::new(&values, 2, &[10]).unwrap();
        let w = s.windows(3, 4);
        assert_eq!(w.starts(), &[0, 4]);
        let x = w.materialise(0, 2);
        let got: Vec<f32> = Vec::try_from(x.view([-1])).unwrap();
        assert_eq!(got, [0., 1., 2., 3., 4., 5., 8., 9., 10., 11., 12., 13.]);
    }

    #[test]
    fn loss_decreases_and_best_weights_are_kept() {
        let cfg = small_config();
        let (tr, va, _) = small_data(&cfg);
        let mut seen = Vec::new();
        let model = train(&cfg, &tr, &va, |r| {
            seen.push(r.epoch);
            ControlFlow::Continue(())
        })
        .unwrap();
        let h = &model.history;
        assert_eq!(seen, (1..=h.len()).collect::<Vec<_>>());
        assert_eq!(h[0].beta, 0.0, "β starts at 0");
        assert!((h.last().unwrap().beta - cfg.beta_max).abs() < 1e-12 || h.len() < 4);
        let first = h[0].train_recon;
        let last = h.last().unwrap().train_recon;
        assert!(last < first * 0.3, "reconstruction loss should fall: {first} -> {last}");
        let best = h.iter().map(|r| r.val_loss).fold(f64::INFINITY, f64::min);
        assert_eq!(model.best_val_loss, best);
        assert!(h[model.best_epoch - 1].improved);
        // The kept weights are the best epoch's: re-evaluating gives its validation loss.
        let series = va.series_on(Device::Cpu);
        let starts = Tensor::from_slice(va.starts());
        let (recon, kl) = evaluate(&model.vae, &va, &series, &starts, 4096);
        let again = recon + cfg.beta_max * kl / (cfg.window * PLANT_SENSORS) as f64;
        assert!((again - best).abs() <= 1e-6 * best, "{again} vs {best}");
    }

    #[test]
    fn early_stopping_ends_a_plateau_and_counts_only_after_annealing() {
        let cfg = ModelConfig { epochs: 60, patience: 2, beta_anneal_epochs: 3, ..small_config() };
        let (tr, va, _) = small_data(&cfg);
        let model = train(&cfg, &tr, &va, |_| ControlFlow::Continue(())).unwrap();
        let h = &model.history;
        assert_eq!(model.stop, StopReason::EarlyStopped, "{} epochs ran", h.len());
        assert!(h.len() < 60);
        // The last `patience` epochs did not improve, and the kept epoch is the best one.
        assert!(h[h.len() - 2..].iter().all(|r| !r.improved));
        assert_eq!(model.best_epoch, h.iter().rposition(|r| r.improved).unwrap() + 1);
        assert!(h.len() >= cfg.beta_anneal_epochs + cfg.patience);
    }

    #[test]
    fn same_seed_gives_bit_identical_weights() {
        let cfg = ModelConfig { epochs: 3, patience: 0, ..small_config() };
        let (tr, va, _) = small_data(&cfg);
        let a = train(&cfg, &tr, &va, |_| ControlFlow::Continue(())).unwrap();
        let b = train(&cfg, &tr, &va, |_| ControlFlow::Continue(())).unwrap();
        let (pa, pb) = (a.vae.named_parameters(), b.vae.named_parameters());
        for (name, t) in &pa {
            assert!(t.equal(&pb[name]), "parameter {name} differs between two runs with one seed");
        }
        assert_eq!(a.history.iter().map(|r| r.train_loss).collect::<Vec<_>>(),
                   b.history.iter().map(|r| r.train_loss).collect::<Vec<_>>());
        let c = train(&ModelConfig { seed: 4, ..cfg.clone() }, &tr, &va, |_| ControlFlow::Continue(())).unwrap();
        assert!(!c.vae.named_parameters().iter().all(|(n, t)| t.equal(&pa[n])), "another seed, other weights");
    }

    #[test]
    fn callback_can_stop_and_bad_inputs_are_refused() {
        let cfg = small_config();
        let (tr, va, series) = small_data(&cfg);
        let model = train(&cfg, &tr, &va, |r| if r.epoch == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
            .unwrap();
        assert_eq!(model.stop, StopReason::Cancelled);
        assert_eq!(model.history.len(), 2);

        let empty = series.split(0.2, 16).1.windows(5000, 1);
        let err = train(&cfg, &tr, &empty, |_| ControlFlow::Continue(())).unwrap_err().to_string();
        assert!(err.contains("'window'") || err.contains("validation"), "{err}");
        let bad = ModelConfig { learning_rate: 0.0, ..cfg };
        let err = train(&bad, &tr, &va, |_| ControlFlow::Continue(())).unwrap_err();
        assert!(err.to_string().contains("learning_rate"), "{err}");
    }
}
