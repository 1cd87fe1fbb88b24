//! Thresholds calibrated once on held-out normal windows and stored with the model.
//!
//! Window threshold: a high quantile of the normal scores (default), or peaks-over-threshold (POT):
//! the scores above an initial high quantile t are fitted with a generalized Pareto distribution by
//! Grimshaw's method, as in SPOT (Siffer et al., "Anomaly Detection in Streams with Extreme Value
//! Theory", KDD 2017), and the threshold is the score exceeded with probability `risk` under that tail:
//!   z_q = t + σ/γ · ((q·n/N_t)^(-γ) − 1)      (z_q = t − σ·ln(q·n/N_t) when γ = 0).
//! POT extrapolates beyond the largest normal score, which a plain quantile cannot do for small risks.
//!
//! Per-sensor thresholds: a quantile of each sensor's per-window error on the same normal windows; a
//! flagged window names the sensors whose error is above their own threshold.
use serde::{Deserialize, Serialize};

use super::score::WindowScores;
use super::ModelConfig;
use crate::{Error, Result};

/// What a window's score is (see `ModelConfig::score_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreMethod {
    /// Mean squared reconstruction error over the window's W×F values.
    #[default]
    Mean,
    /// max over sensors of (the sensor's error / max(its threshold, SENSOR_FLOOR)).
    SensorMax,
    /// The mean of the `top_k` largest whitened per-sensor errors: each sensor's error divided by its
    /// normal scale (`scales`: the `sensor_threshold_level` quantile of its error on held-out normal
    /// windows, floored at WHITEN_FLOOR_SHARE of the median scale). A fault in one or two sensors is not
    /// diluted by the others, no single noisy sensor decides alone, and sensors constant in training
    /// (scale 0) are left out.
    Whitened,
}

/// Default smallest whitening scale, as a share of the median sensor scale (`ModelConfig::
/// whiten_floor_share`): a sensor reconstructed almost perfectly in normal data would otherwise turn
/// tiny deviations into huge whitened errors.
pub const WHITEN_FLOOR_SHARE: f64 = 0.05;
/// `whitened`: the score averages the largest ceil(F/10) whitened errors, at least 1 and at most this.
pub const MAX_TOP_K: usize = 5;
/// Fewest held-out normal windows a model can be calibrated on. Below a quantile level's own need
/// (1/(1-level) windows) the tail is extrapolated from a log-normal fit of the scores.
pub const MIN_CALIBRATION_WINDOWS: usize = 10;

/// Smallest per-sensor normaliser for `sensor_max`: a sensor reconstructed perfectly in normal data
/// (a constant one) would otherwise turn float noise into huge ratios. In scaled units, an MSE of 1e-6
/// is a deviation of a thousandth of the sensor's range.
pub const SENSOR_FLOOR: f64 = 1e-6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThresholdMethod {
    Quantile,
    Pot,
}

/// The generalized Pareto fit of a POT threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PotFit {
    pub initial_level: f64,
    /// The initial threshold t (the `initial_level` quantile of normal scores).
    pub initial_threshold: f64,
    pub risk: f64,
    /// γ (ξ): > 0 heavy tail, 0 exponential, < 0 bounded.
    pub shape: f64,
    /// σ
    pub scale: f64,
    pub exceedances: usize,
    pub log_likelihood: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// What the scores compared with `window` are.
    #[serde(default)]
    pub score_method: ScoreMethod,
    pub method: ThresholdMethod,
    /// A window is anomalous when its score is strictly above this.
    pub window: f64,
    /// The quantile level used (for `pot`: the initial level).
    pub window_level: f64,
    pub pot: Option<PotFit>,
    /// Per-sensor thresholds in model sensor order.
    pub sensors: Vec<f64>,
    pub sensor_level: f64,
    /// Normal windows the thresholds were calibrated on.
    pub calibration_windows: usize,
    /// Largest and median normal score seen in calibration, for reports.
    pub normal_score_max: f64,
    pub normal_score_median: f64,
    /// Per-sensor errors average over the window's last `focus_rows` steps (0: all; models before
    /// tidewatch 0.2 have 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub focus_rows: usize,
    /// `whitened`: each sensor's normal error scale (0: left out of the score, e.g. constant in training).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scales: Vec<f64>,
    /// `whitened`: how many of the largest whitened errors the score averages.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub top_k: usize,
    /// Sensors constant in training enter the network pinned at their training value (scaled 0), so
    /// their movement is reported by name (`novel_sensors`) instead of swamping the score. Models
    /// before 0.2: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pin_constant: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The mean of the `k` largest values of `z` (all of them when fewer), without allocating for k <= 8.
fn mean_of_top_k(z: impl Iterator<Item = f64>, k: usize) -> f64 {
    let mut top = [f64::NEG_INFINITY; MAX_TOP_K];
    let k = k.clamp(1, MAX_TOP_K);
    let mut seen = 0;
    for v in z {
        seen += 1;
        if v > top[k - 1] {
            let mut i = k - 1;
            while i > 0 && top[i - 1] < v {
                top[i] = top[i - 1];
                i -= 1;
            }
            top[i] = v;
        }
    }
    let n = seen.min(k);
    if n == 0 {
        return 0.0;
    }
    top[..n].iter().sum::<f64>() / n as f64
}

impl Thresholds {
    /// A window's score from its mean error and per-sensor errors, per `score_method`.
    #[inline]
    pub fn window_score(&self, mean_error: f32, sensor_errors: &[f32]) -> f64 {
        match self.score_method {
            ScoreMethod::Mean => f64::from(mean_error),
            ScoreMethod::SensorMax => sensor_errors
                .iter()
                .zip(&self.sensors)
                .map(|(&e, &t)| f64::from(e) / t.max(SENSOR_FLOOR))
                .fold(0.0, f64::max),
            ScoreMethod::Whitened => mean_of_top_k(
                sensor_errors
                    .iter()
                    .zip(&self.scales)
                    .filter(|(_, &s)| s > 0.0)
                    .map(|(&e, &s)| if e.is_nan() { f64::INFINITY } else { f64::from(e) / s }),
                self.top_k,
            ),
        }
    }

    pub fn is_anomalous(&self, score: f64) -> bool {
        score > self.window
    }

    /// Indices of sensors whose error is above their threshold.
    pub fn anomalous_sensors(&self, sensor_errors: &[f32]) -> Vec<usize> {
        sensor_errors
            .iter()
            .zip(&self.sensors)
            .enumerate()
            .filter(|(_, (e, t))| f64::from(**e) > **t)
            .map(|(j, _)| j)
            .collect()
    }

    /// Consistency checks for thresholds read from a file. `what` names the file.
    pub fn check(&self, n_features: usize, what: &str) -> Result<()> {
        if self.sensors.len() != n_features {
            return Err(Error::Model(format!(
                "{what}: {} per-sensor thresholds for {n_features} sensors",
                self.sensors.len()
            )));
        }
        let bad = |v: f64| !v.is_finite() || v < 0.0;
        if bad(self.window) {
            return Err(Error::Model(format!("{what}: window threshold {} is not a finite value >= 0", self.window)));
        }
        if let Some(j) = self.sensors.iter().position(|&v| bad(v)) {
            return Err(Error::Model(format!(
                "{what}: per-sensor threshold {j} is {}, not a finite value >= 0",
                self.sensors[j]
            )));
        }
        if self.method == ThresholdMethod::Pot && self.pot.is_none() {
            return Err(Error::Model(format!("{what}: method 'pot' without its fit")));
        }
        if self.score_method == ScoreMethod::Whitened {
            if self.scales.len() != n_features || self.scales.iter().any(|&v| bad(v)) || self.top_k == 0 {
                return Err(Error::Model(format!(
                    "{what}: score method 'whitened' needs {n_features} finite scales >= 0 and top_k >= 1 \
                     (got {} scales, top_k {})",
                    self.scales.len(),
                    self.top_k
                )));
            }
        }
        Ok(())
    }
}

/// Quantile of sorted values with linear interpolation between order statistics (NumPy's default).
pub fn quantile_sorted(sorted: &[f64], level: f64) -> f64 {
    assert!(!sorted.is_empty(), "quantile of no values");
    let h = (sorted.len() - 1) as f64 * level.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

fn sorted_finite(values: impl Iterator<Item = f32>, what: &str) -> Result<Vec<f64>> {
    let mut v = Vec::new();
    for (i, x) in values.enumerate() {
        if !x.is_finite() {
            return Err(Error::Input(format!("{what}: calibration value {i} is {x}, not finite")));
        }
        v.push(f64::from(x));
    }
    v.sort_by(f64::total_cmp);
    Ok(v)
}

/// Windows needed for a quantile `level` to be estimated from data rather than pinned to the maximum.
fn windows_needed(level: f64) -> usize {
    (1.0 / (1.0 - level)).ceil() as usize
}

/// Checks that `n` held-out normal windows are enough to calibrate: at least MIN_CALIBRATION_WINDOWS
/// (fewer than a level needs are extrapolated, see `tail_quantile`).
pub fn check_calibration_size(n: usize, _config: &ModelConfig) -> Result<()> {
    if n < MIN_CALIBRATION_WINDOWS {
        return Err(Error::Input(format!(
            "calibration has {n} normal windows; at least {MIN_CALIBRATION_WINDOWS} are needed (give more normal \
             rows, a smaller window, or a larger validation_fraction)"
        )));
    }
    Ok(())
}

/// The `level` quantile of sorted normal values. With fewer values than the level needs
/// (1/(1-level)), the empirical quantile is pinned near the maximum and says nothing about the tail:
/// then the quantile of a log-normal fitted to the values (their log mean and deviation), never below
/// the largest value seen.
pub fn tail_quantile(sorted: &[f64], level: f64) -> f64 {
    let empirical = quantile_sorted(sorted, level);
    if sorted.len() >= windows_needed(level) {
        return empirical;
    }
    let logs: Vec<f64> = sorted.iter().map(|&v| v.max(1e-12).ln()).collect();
    let n = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / n;
    let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let fitted = (mean + normal_quantile(level) * var.sqrt()).exp();
    fitted.max(*sorted.last().expect("non-empty"))
}

/// The standard normal quantile (Acklam's rational approximation; |error| < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.383577518672690e2, -3.066479806614716e1, 2.506628277459239];
    const B: [f64; 5] = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let low = 0.02425;
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5]) / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5]) / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// Calibrates window and per-sensor thresholds on held-out normal windows scored over the last
/// `focus_rows` steps (0: all). `constant[j]`: sensor j was constant in training (left out of a
/// `whitened` score; empty: none).
pub fn calibrate(normal: &WindowScores, config: &ModelConfig, focus_rows: usize, constant: &[bool]) -> Result<Thresholds> {
    let n = normal.len();
    let f = normal.n_features;
    check_calibration_size(n, config)?;
    let mut sensors = Vec::with_capacity(f);
    for j in 0..f {
        let column = sorted_finite((0..n).map(|i| normal.sensor_errors[i * f + j]), &format!("sensor {j} errors"))?;
        sensors.push(tail_quantile(&column, config.sensor_threshold_level));
    }
    let is_constant = |j: usize| constant.get(j).copied().unwrap_or(false);
    let (scales, top_k) = if config.score_method == ScoreMethod::Whitened {
        let mut active: Vec<f64> = (0..f).filter(|&j| !is_constant(j)).map(|j| sensors[j]).collect();
        if active.is_empty() {
            return Err(Error::Input("every sensor was constant in the training data: nothing to score".into()));
        }
        active.sort_by(f64::total_cmp);
        let floor = (quantile_sorted(&active, 0.5) * config.whiten_floor_share).max(SENSOR_FLOOR);
        let scales = (0..f).map(|j| if is_constant(j) { 0.0 } else { sensors[j].max(floor) }).collect();
        (scales, active.len().div_ceil(10).clamp(1, MAX_TOP_K))
    } else {
        (Vec::new(), 0)
    };
    let mut thresholds = Thresholds {
        score_method: config.score_method,
        method: config.threshold_method,
        window: f64::NAN,
        window_level: config.threshold_level,
        pot: None,
        sensors,
        sensor_level: config.sensor_threshold_level,
        calibration_windows: n,
        normal_score_max: f64::NAN,
        normal_score_median: f64::NAN,
        focus_rows,
        scales,
        top_k,
        pin_constant: true,
    };
    let mut scores = sorted_finite(normal.scores.iter().copied(), "window scores")?;
    if config.score_method != ScoreMethod::Mean {
        scores = (0..n).map(|i| thresholds.window_score(normal.scores[i], normal.sensor_errors_of(i))).collect();
        scores.sort_by(f64::total_cmp);
    }
    match config.threshold_method {
        ThresholdMethod::Quantile => thresholds.window = tail_quantile(&scores, config.threshold_level),
        ThresholdMethod::Pot => {
            let fit = pot_fit(&scores, config.pot_initial_level, config.pot_risk)?;
            thresholds.window = pot_threshold(&fit, n);
            thresholds.window_level = config.pot_initial_level;
            thresholds.pot = Some(fit);
        }
    }
    thresholds.normal_score_max = *scores.last().expect("n > 0");
    thresholds.normal_score_median = quantile_sorted(&scores, 0.5);
    Ok(thresholds)
}

/// Fits a generalized Pareto distribution to the excesses over the `initial_level` quantile of `sorted`.
pub fn pot_fit(sorted: &[f64], initial_level: f64, risk: f64) -> Result<PotFit> {
    const MIN_PEAKS: usize = 10;
    let t = quantile_sorted(sorted, initial_level);
    let peaks: Vec<f64> = sorted.iter().filter(|&&s| s > t).map(|s| s - t).collect();
    if peaks.len() < MIN_PEAKS {
        return Err(Error::Input(format!(
            "POT: {} of {} calibration scores exceed the initial threshold (pot_initial_level={initial_level}); \
             at least {MIN_PEAKS} are needed: lower pot_initial_level or hold out more normal data",
            peaks.len(),
            sorted.len()
        )));
    }
    let (shape, scale, log_likelihood) = grimshaw(&peaks);
    Ok(PotFit { initial_level, initial_threshold: t, risk, shape, scale, exceedances: peaks.len(), log_likelihood })
}

/// The POT threshold z_q for `n` calibration scores.
pub fn pot_threshold(fit: &PotFit, n: usize) -> f64 {
    let r = fit.risk * n as f64 / fit.exceedances as f64;
    if fit.shape.abs() < 1e-12 {
        fit.initial_threshold - fit.scale * r.ln()
    } else {
        fit.initial_threshold + fit.scale / fit.shape * (r.powf(-fit.shape) - 1.0)
    }
}

/// GPD log-likelihood of excesses `y` for shape γ and scale σ (−∞ outside the support).
pub fn gpd_log_likelihood(y: &[f64], shape: f64, scale: f64) -> f64 {
    if scale <= 0.0 {
        return f64::NEG_INFINITY;
    }
    let n = y.len() as f64;
    if shape.abs() < 1e-12 {
        return -n * scale.ln() - y.iter().sum::<f64>() / scale;
    }
    let mut acc = 0.0;
    for &v in y {
        let s = 1.0 + shape * v / scale;
        if s <= 0.0 {
            return f64::NEG_INFINITY;
        }
        acc += s.ln();
    }
    -n * scale.ln() - (1.0 + 1.0 / shape) * acc
}

/// Grimshaw's (1993) maximum-likelihood GPD fit, as implemented in SPOT: the MLE satisfies
/// w(x) = u(x)·v(x) − 1 = 0 with u(x) = mean(1/(1+x·Y)), v(x) = 1 + mean(ln(1+x·Y)), and then
/// γ = v(x) − 1, σ = γ/x. Roots are bracketed on grids over (−1/max Y, 0) and (0, 2(Ȳ−min Y)/min Y²]
/// (the bounds SPOT uses) and refined by bisection; the candidate with the highest likelihood wins, the exponential fit
/// (γ = 0, σ = Ȳ) included. Returns (γ, σ, log-likelihood).
pub fn grimshaw(peaks: &[f64]) -> (f64, f64, f64) {
    let n = peaks.len() as f64;
    let y_max = peaks.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let y_min = peaks.iter().cloned().fold(f64::INFINITY, f64::min);
    let y_mean = peaks.iter().sum::<f64>() / n;
    let w = |x: f64| {
        let (mut u, mut v) = (0.0, 0.0);
        for &y in peaks {
            let s = 1.0 + x * y;
            u += 1.0 / s;
            v += s.ln();
        }
        (u / n) * (1.0 + v / n) - 1.0
    };
    let params = |x: f64| {
        let gamma = peaks.iter().map(|&y| (1.0 + x * y).ln()).sum::<f64>() / n;
        (gamma, gamma / x)
    };

    let mut best = (0.0, y_mean, gpd_log_likelihood(peaks, 0.0, y_mean));
    let mut consider = |x: f64| {
        if x == 0.0 || !x.is_finite() {
            return;
        }
        let (g, s) = params(x);
        let ll = gpd_log_likelihood(peaks, g, s);
        if ll.is_finite() && ll > best.2 {
            best = (g, s, ll);
        }
    };

    // Candidate x on grids that are geometric toward 0 and toward the pole at −1/max Y, because
    // x = γ/σ lives on the scale 1/Ȳ and may sit anywhere over many orders of magnitude.
    const STEPS: usize = 600;
    const DECADES: f64 = 12.0;
    let decay = |i: usize| 10f64.powf(-DECADES * i as f64 / STEPS as f64);
    let a = -1.0 / y_max;
    let mut negative: Vec<f64> = (0..=STEPS).map(|i| a * decay(i)).collect(); // a … toward 0
    negative.extend((1..=STEPS).map(|i| a * (1.0 - decay(i)))); // toward the pole
    negative.retain(|&x| x > a && x < 0.0);
    negative.sort_by(f64::total_cmp);
    let mut positive = Vec::new();
    if y_min > 0.0 && y_mean > y_min {
        let c = 2.0 * (y_mean - y_min) / (y_min * y_min);
        let lo = 1e-9 / y_mean;
        if c.is_finite() && c > lo {
            let span = (c / lo).ln();
            positive = (0..=4 * STEPS).map(|i| lo * (span * i as f64 / (4 * STEPS) as f64).exp()).collect();
        }
    }
    for xs in [negative, positive] {
        if xs.len() < 2 {
            continue;
        }
        let mut prev = (xs[0], w(xs[0]));
        for &x in &xs[1..] {
            let cur = (x, w(x));
            if prev.1.is_finite() && cur.1.is_finite() && prev.1.signum() != cur.1.signum() {
                let (mut l, mut r, mut fl) = (prev.0, cur.0, prev.1);
                for _ in 0..100 {
                    let m = 0.5 * (l + r);
                    let fm = w(m);
                    if fm.signum() == fl.signum() {
                        l = m;
                        fl = fm;
                    } else {
                        r = m;
                    }
                }
                consider(0.5 * (l + r));
            }
            prev = cur;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_pcg::Pcg64;

    fn gpd_sample(n: usize, shape: f64, scale: f64, seed: u64) -> Vec<f64> {
        let mut rng = Pcg64::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let u: f64 = rng.random_range(1e-12..1.0);
                if shape.abs() < 1e-12 {
                    -scale * u.ln()
                } else {
                    scale / shape * (u.powf(-shape) - 1.0)
                }
            })
            .collect()
    }

    #[test]
    fn quantile_matches_numpy_linear() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.5), 2.5);
        assert_eq!(quantile_sorted(&v, 1.0), 4.0);
        assert_eq!(quantile_sorted(&v, 0.0), 1.0);
        assert!((quantile_sorted(&v, 0.9) - 3.7).abs() < 1e-12);
    }

    #[test]
    fn grimshaw_recovers_known_tails() {
        for (shape, scale) in [(0.3, 2.0), (-0.2, 1.0), (0.0, 0.5)] {
            let y = gpd_sample(20_000, shape, scale, 42);
            let (g, s, ll) = grimshaw(&y);
            assert!((g - shape).abs() < 0.05, "shape {shape}: got {g}");
            assert!((s - scale).abs() / scale < 0.06, "scale {scale}: got {s}");
            // It is a maximum: nearby parameters fit worse.
            for (dg, ds) in [(0.02, 0.0), (-0.02, 0.0), (0.0, 0.02 * s), (0.0, -0.02 * s)] {
                assert!(gpd_log_likelihood(&y, g + dg, s + ds) <= ll + 1e-9);
            }
        }
    }

    #[test]
    fn pot_threshold_extrapolates_an_exponential_tail() {
        // Exponential scores with rate 1: P(X > z) = e^-z, so the 1e-4 risk threshold is ln(1e4) ≈ 9.21,
        // beyond almost every one of the 20k calibration scores.
        let mut rng = Pcg64::seed_from_u64(7);
        let mut scores: Vec<f64> = (0..20_000).map(|_| -rng.random_range(1e-12..1.0f64).ln()).collect();
        scores.sort_by(f64::total_cmp);
        let fit = pot_fit(&scores, 0.98, 1e-4).unwrap();
        let z = pot_threshold(&fit, scores.len());
        assert!((z - 1e4f64.ln()).abs() < 1.0, "z = {z}");
        assert!(fit.exceedances >= 390 && fit.exceedances <= 410);
        let few = pot_fit(&scores[..100], 0.98, 1e-4).unwrap_err().to_string();
        assert!(few.contains("pot_initial_level"), "{few}");
    }

    #[test]
    fn calibrate_quantile_and_pot_and_sensor_thresholds() {
        let n = 1000;
        let f = 3;
        let scores: Vec<f32> = (0..n).map(|i| i as f32 / n as f32).collect();
        let sensor_errors: Vec<f32> = (0..n).flat_map(|i| [i as f32, 0.0, 2.0 * i as f32]).collect();
        let normal = WindowScores { scores, sensor_errors, n_features: f };
        let cfg = ModelConfig {
            threshold_level: 0.99,
            sensor_threshold_level: 0.5,
            score_method: ScoreMethod::Mean,
            ..Default::default()
        };
        let t = calibrate(&normal, &cfg, 0, &[]).unwrap();
        assert!((t.window - 0.98901).abs() < 1e-4, "{}", t.window);
        assert_eq!(t.sensors, vec![499.5, 0.0, 999.0]);
        assert!(t.is_anomalous(0.995) && !t.is_anomalous(0.5));
        assert_eq!(t.anomalous_sensors(&[600.0, 0.1, 10.0]), vec![0, 1]);
        t.check(3, "m").unwrap();
        assert!(t.check(4, "m").unwrap_err().to_string().contains("3 per-sensor thresholds for 4"));

        let pot = calibrate(&normal, &ModelConfig { threshold_method: ThresholdMethod::Pot, ..cfg.clone() }, 0, &[]).unwrap();
        // sensor_max: scores are max_j error_j / max(threshold_j, floor); sensor 1 never errs (floor).
        let smax = calibrate(&normal, &ModelConfig { score_method: ScoreMethod::SensorMax, ..cfg.clone() }, 0, &[]).unwrap();
        assert_eq!(smax.sensors, t.sensors);
        assert_eq!(smax.window_score(0.0, &[499.5, 0.0, 999.0]), 1.0);
        assert!((smax.window_score(0.0, &[0.0, 2e-6, 0.0]) - 2.0).abs() < 1e-6);
        assert!((smax.window - smax.normal_score_max * 0.99).abs() < 0.01 * smax.window, "{}", smax.window);
        assert!(pot.pot.is_some());
        assert!(pot.window > 0.98, "{}", pot.window);

        let tiny = WindowScores { scores: vec![0.1; 5], sensor_errors: vec![0.0; 15], n_features: 3 };
        let err = calibrate(&tiny, &cfg, 0, &[]).unwrap_err().to_string();
        assert!(err.contains("5 normal windows") && err.contains("at least 10"), "{err}");
        let mut nan = normal.clone();
        nan.scores[3] = f32::NAN;
        assert!(calibrate(&nan, &cfg, 0, &[]).unwrap_err().to_string().contains("value 3"));
    }

    #[test]
    fn few_windows_extrapolate_the_tail_above_the_largest_normal_score() {
        // 50 windows for a 0.99 level (which needs 100): a log-normal tail, never below the maximum.
        let scores: Vec<f32> = (0..50).map(|i| 1.0 + (i % 10) as f32 / 10.0).collect();
        let sorted: Vec<f64> = { let mut v: Vec<f64> = scores.iter().map(|&x| f64::from(x)).collect(); v.sort_by(f64::total_cmp); v };
        let q = tail_quantile(&sorted, 0.99);
        assert!(q >= 1.9 && q < 3.0, "{q}");
        assert_eq!(tail_quantile(&sorted, 0.5), quantile_sorted(&sorted, 0.5), "enough values: empirical");
        assert!((normal_quantile(0.975) - 1.959964).abs() < 1e-5);
        assert!((normal_quantile(0.5)).abs() < 1e-9);
        assert!((normal_quantile(0.001) + 3.090232).abs() < 1e-5);
    }

    #[test]
    fn whitened_scores_are_not_diluted_and_leave_constant_sensors_out() {
        let n = 400;
        let f = 12;
        // Normal errors: sensor j around (j + 1) / 100; sensor 11 constant in training.
        let sensor_errors: Vec<f32> =
            (0..n).flat_map(|i| (0..f).map(move |j| ((j + 1) as f32 / 100.0) * (1.0 + (i % 7) as f32 / 10.0))).collect();
        let scores = (0..n).map(|i| sensor_errors[i * f..(i + 1) * f].iter().sum::<f32>() / f as f32).collect();
        let normal = WindowScores { scores, sensor_errors, n_features: f };
        let cfg = ModelConfig { score_method: ScoreMethod::Whitened, threshold_level: 0.99, sensor_threshold_level: 0.99, ..Default::default() };
        let mut constant = vec![false; f];
        constant[11] = true;
        let t = calibrate(&normal, &cfg, 5, &constant).unwrap();
        assert_eq!((t.focus_rows, t.top_k), (5, 2), "ceil(11 / 10) = 2");
        assert_eq!(t.scales[11], 0.0);
        t.check(f, "m").unwrap();
        // One sensor 20x its normal scale lifts the score far above the threshold; the same total error
        // spread over all sensors (what the mean sees) does not.
        let mut one = vec![0.0f32; f];
        one[0] = (20.0 * t.scales[0]) as f32;
        assert!(t.window_score(0.0, &one) > 5.0 * t.window, "{} vs {}", t.window_score(0.0, &one), t.window);
        // The mean score of the same window stays below its own normal threshold: diluted by 11 others.
        let mean_cfg = ModelConfig { score_method: ScoreMethod::Mean, ..cfg.clone() };
        let tm = calibrate(&normal, &mean_cfg, 5, &constant).unwrap();
        let mean = one.iter().sum::<f32>() / f as f32;
        assert!(tm.window_score(mean, &one) < tm.window, "{} vs {}", tm.window_score(mean, &one), tm.window);
        // The constant sensor moving by any amount does not enter the score.
        let mut moved = vec![0.0f32; f];
        moved[11] = 75.0 * 75.0;
        assert_eq!(t.window_score(0.0, &moved), 0.0);
        let mut broken = t.clone();
        broken.scales.pop();
        assert!(broken.check(f, "m").unwrap_err().to_string().contains("whitened"));
        assert_eq!(mean_of_top_k([1.0, 5.0, 3.0, 4.0].into_iter(), 2), 4.5);
        assert_eq!(mean_of_top_k([2.0].into_iter(), 3), 2.0);
    }
}
