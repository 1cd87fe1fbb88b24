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
}

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

/// Checks that `n` held-out normal windows are enough to calibrate with `config`'s quantile levels.
pub fn check_calibration_size(n: usize, config: &ModelConfig) -> Result<()> {
    let need = windows_needed(config.threshold_level).max(windows_needed(config.sensor_threshold_level));
    if n < need {
        return Err(Error::Input(format!(
            "calibration has {n} normal windows; quantile levels threshold_level={} and sensor_threshold_level={} \
             need at least {need} (hold out more normal data or lower the levels)",
            config.threshold_level, config.sensor_threshold_level
        )));
    }
    Ok(())
}

/// Calibrates window and per-sensor thresholds on held-out normal windows.
pub fn calibrate(normal: &WindowScores, config: &ModelConfig) -> Result<Thresholds> {
    let n = normal.len();
    let f = normal.n_features;
    check_calibration_size(n, config)?;
    let mut sensors = Vec::with_capacity(f);
    for j in 0..f {
        let column = sorted_finite((0..n).map(|i| normal.sensor_errors[i * f + j]), &format!("sensor {j} errors"))?;
        sensors.push(quantile_sorted(&column, config.sensor_threshold_level));
    }
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
    };
    let mut scores = sorted_finite(normal.scores.iter().copied(), "window scores")?;
    if config.score_method != ScoreMethod::Mean {
        scores = (0..n).map(|i| thresholds.window_score(normal.scores[i], normal.sensor_errors_of(i))).collect();
        scores.sort_by(f64::total_cmp);
    }
    match config.threshold_method {
        ThresholdMethod::Quantile => thresholds.window = quantile_sorted(&scores, config.threshold_level),
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
        let cfg = ModelConfig { threshold_level: 0.99, sensor_threshold_level: 0.5, ..Default::default() };
        let t = calibrate(&normal, &cfg).unwrap();
        assert!((t.window - 0.98901).abs() < 1e-4, "{}", t.window);
        assert_eq!(t.sensors, vec![499.5, 0.0, 999.0]);
        assert!(t.is_anomalous(0.995) && !t.is_anomalous(0.5));
        assert_eq!(t.anomalous_sensors(&[600.0, 0.1, 10.0]), vec![0, 1]);
        t.check(3, "m").unwrap();
        assert!(t.check(4, "m").unwrap_err().to_string().contains("3 per-sensor thresholds for 4"));

        let pot = calibrate(&normal, &ModelConfig { threshold_method: ThresholdMethod::Pot, ..cfg.clone() }).unwrap();
        // sensor_max: scores are max_j error_j / max(threshold_j, floor); sensor 1 never errs (floor).
        let smax = calibrate(&normal, &ModelConfig { score_method: ScoreMethod::SensorMax, ..cfg.clone() }).unwrap();
        assert_eq!(smax.sensors, t.sensors);
        assert_eq!(smax.window_score(0.0, &[499.5, 0.0, 999.0]), 1.0);
        assert!((smax.window_score(0.0, &[0.0, 2e-6, 0.0]) - 2.0).abs() < 1e-6);
        assert!((smax.window - smax.normal_score_max * 0.99).abs() < 0.01 * smax.window, "{}", smax.window);
        assert!(pot.pot.is_some());
        assert!(pot.window > 0.98, "{}", pot.window);

        let tiny = WindowScores { scores: vec![0.1; 50], sensor_errors: vec![0.0; 150], n_features: 3 };
        let err = calibrate(&tiny, &cfg).unwrap_err().to_string();
        assert!(err.contains("50 normal windows") && err.contains("at least 100"), "{err}");
        let mut nan = normal.clone();
        nan.scores[3] = f32::NAN;
        assert!(calibrate(&nan, &cfg).unwrap_err().to_string().contains("value 3"));
    }
}
