//! Model and training configuration, with defaults chosen for 1 Hz SWaT data.
//!
//! Every field has a default, so a configuration file (or a Python dict) only names what it changes;
//! unknown fields are refused, because a misspelt key would otherwise be ignored silently.
use serde::{Deserialize, Serialize};

use super::threshold::{ScoreMethod, ThresholdMethod, WHITEN_FLOOR_SHARE};
use crate::windows::WindowSpec;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Window length W in rows. 30 rows = 30 s at 1 Hz: the operators' existing convention, long enough
    /// to hold a valve transition (an MV takes about 10 s to travel) and a pump start together with the
    /// flow and level response that follows, short enough that a row is flagged within seconds.
    pub window: usize,
    /// Scoring stride S: window k covers rows [k·S, k·S+W). 1 gives every row its own window (the W rows
    /// ending at it), so a flag arrives one second after the row.
    pub stride: usize,
    /// Stride between the windows the model is *fitted* on. At 1 Hz neighbouring windows share 29 of 30
    /// rows and add almost nothing; every 5th window still covers each row 6 times and makes an epoch over
    /// SWaT's normal week 5× cheaper. Validation and calibration windows use `stride`.
    pub train_stride: usize,
    /// LSTM hidden units (encoder and decoder). SWaT has 51 columns, 26 of them on/off actuators that
    /// move rarely; 64 units hold the plant's state over 30 s without memorising noise.
    pub hidden_size: usize,
    /// Latent dimensions. Normal operation of the six stages is a handful of regimes (fill/drain
    /// cycles, backwash); 16 dimensions encode them with room to spare.
    pub latent_size: usize,
    /// Stacked LSTM layers in the encoder and in the decoder.
    pub layers: usize,
    /// Final weight β of the KL term. The loss is MSE + β·KL/(W·F): with β = 1 that is the evidence
    /// lower bound per element for a Gaussian likelihood of fixed variance ½. A smaller β lets the
    /// decoder reconstruct normal windows more sharply, which is what the anomaly score relies on,
    /// while still keeping the latent space smooth.
    pub beta_max: f64,
    /// Epochs over which β rises linearly from 0 to `beta_max` (β = 0 in the first epoch), so the
    /// encoder learns to carry information before the KL term pulls the posterior to the prior
    /// (avoids posterior collapse). 0: `beta_max` from the start.
    pub beta_anneal_epochs: usize,
    /// Upper bound on epochs; early stopping usually ends training sooner.
    pub epochs: usize,
    /// Windows per optimisation step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Clip the global gradient L2 norm to this value (0 disables). LSTMs on long flat stretches of
    /// sensor data occasionally see gradient spikes when a pump switches.
    pub grad_clip_norm: f64,
    /// Stop after this many epochs without a better validation loss (0 disables); the best weights are kept.
    /// Counting starts once β has reached `beta_max`, when validation losses become comparable.
    pub patience: usize,
    /// Fraction of every training segment, taken from its END, held out for early stopping and for
    /// calibrating thresholds. A chronological split, not a random one: overlapping windows would leak.
    pub validation_fraction: f64,
    /// Seed for weight initialisation, shuffling and the reparameterisation noise (all drawn from
    /// tidewatch's own generator, so two runs on CPU give bit-identical weights).
    pub seed: u64,
    /// "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    pub device: String,
    /// libtorch intra-op threads; unset: `TIDEWATCH_THREADS`, then `OMP_NUM_THREADS`, then libtorch's default.
    pub threads: Option<usize>,
    /// Windows per forward pass when scoring; unset: 512 on CPU (the LSTM's per-step work stays in
    /// cache: measured 1.5-2x faster than 4096 at SWaT width), 32768 on CUDA (enough to fill the device).
    pub score_batch_size: Option<usize>,
    /// What a window's score is. `mean` (default): the mean of the per-sensor errors (each over the
    /// window's last `score_focus` steps). `whitened`: the mean of the few largest per-sensor errors,
    /// each divided by that sensor's normal error scale (see `ScoreMethod::Whitened`); it ranks
    /// one-sensor faults better but amplifies slow normal drift (measured by `make bench-detect`: 17 %
    /// of a 48 h drift run flagged against 0.5 % for `mean`). `sensor_max`: the largest per-sensor error divided by that
    /// sensor's threshold, so one sensor leaving its normal band is not diluted by the F-1 others
    /// (on SKAB's valve experiments this lifts point-wise ROC AUC from about 0.64 to 0.94-0.98).
    pub score_method: ScoreMethod,
    /// Per-sensor errors average over the window's last `score_focus` steps; 0 (default): ceil(W/6).
    /// The whole window would keep a row flagged W-1 rows after an anomaly ended.
    pub score_focus: usize,
    /// `whitened`: a sensor's error scale is at least this share of the median sensor scale, so a sensor
    /// reconstructed almost perfectly in normal data cannot turn a slow harmless drift into a huge score.
    pub whiten_floor_share: f64,
    /// How the window threshold is derived from held-out normal window scores.
    pub threshold_method: ThresholdMethod,
    /// `quantile`: the threshold is this quantile of held-out normal scores (0.995: about one normal
    /// window in 200 exceeds it before the per-row smoothing of an alert pipeline).
    pub threshold_level: f64,
    /// `pot`: exceedances over this quantile are fitted with a generalized Pareto distribution.
    pub pot_initial_level: f64,
    /// `pot`: the threshold is the score exceeded with this probability under the fitted tail (SPOT's q).
    pub pot_risk: f64,
    /// Quantile of each sensor's per-window error on held-out normal windows; a flagged window names the
    /// sensors above their own threshold.
    pub sensor_threshold_level: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            window: 30,
            stride: 1,
            train_stride: 5,
            hidden_size: 64,
            latent_size: 16,
            layers: 1,
            beta_max: 0.1,
            beta_anneal_epochs: 5,
            epochs: 50,
            batch_size: 256,
            learning_rate: 1e-3,
            grad_clip_norm: 5.0,
            patience: 5,
            validation_fraction: 0.2,
            seed: 0,
            device: "auto".into(),
            threads: None,
            score_batch_size: None,
            score_method: ScoreMethod::Mean,
            score_focus: 0,
            whiten_floor_share: WHITEN_FLOOR_SHARE,
            threshold_method: ThresholdMethod::Quantile,
            threshold_level: 0.995,
            pot_initial_level: 0.98,
            pot_risk: 1e-4,
            sensor_threshold_level: 0.99,
        }
    }
}

fn field_err(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("model config field '{field}': {msg}"))
}

impl ModelConfig {
    /// Parses a JSON object (e.g. from Python) over the defaults.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: ModelConfig =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("model config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn window_spec(&self) -> Result<WindowSpec> {
        WindowSpec::new(self.window, self.stride).map_err(|e| field_err("stride", e))
    }

    /// Checks every value; the error names the field at fault.
    pub fn validate(&self) -> Result<()> {
        let positive = |field: &str, v: usize| {
            if v == 0 {
                Err(field_err(field, "must be at least 1, got 0"))
            } else {
                Ok(())
            }
        };
        positive("window", self.window)?;
        if !(self.whiten_floor_share.is_finite() && self.whiten_floor_share >= 0.0) {
            return Err(field_err("whiten_floor_share", format!("must be a finite number >= 0, got {}", self.whiten_floor_share)));
        }
        if self.stride == 0 || self.stride > self.window {
            return Err(field_err(
                "stride",
                format!("must be between 1 and the window length {}, got {}", self.window, self.stride),
            ));
        }
        positive("train_stride", self.train_stride)?;
        positive("hidden_size", self.hidden_size)?;
        positive("latent_size", self.latent_size)?;
        positive("layers", self.layers)?;
        if self.layers > 8 {
            return Err(field_err("layers", format!("at most 8 stacked layers, got {}", self.layers)));
        }
        positive("epochs", self.epochs)?;
        positive("batch_size", self.batch_size)?;
        if !(self.beta_max.is_finite() && self.beta_max >= 0.0) {
            return Err(field_err("beta_max", format!("must be a finite number >= 0, got {}", self.beta_max)));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(field_err("learning_rate", format!("must be > 0, got {}", self.learning_rate)));
        }
        if !(self.grad_clip_norm.is_finite() && self.grad_clip_norm >= 0.0) {
            return Err(field_err("grad_clip_norm", format!("must be >= 0 (0 disables), got {}", self.grad_clip_norm)));
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction <= 0.5) {
            return Err(field_err(
                "validation_fraction",
                format!(
                    "must be in (0, 0.5]: held-out normal data is needed for early stopping and thresholds, got {}",
                    self.validation_fraction
                ),
            ));
        }
        super::parse_device(&self.device).map_err(|e| field_err("device", e))?;
        if self.threads == Some(0) {
            return Err(field_err("threads", "must be at least 1 when set"));
        }
        if self.score_batch_size == Some(0) {
            return Err(field_err("score_batch_size", "must be at least 1 when set"));
        }
        let level = |field: &str, v: f64| {
            if v > 0.0 && v < 1.0 {
                Ok(())
            } else {
                Err(field_err(field, format!("must be strictly between 0 and 1, got {v}")))
            }
        };
        level("threshold_level", self.threshold_level)?;
        level("pot_initial_level", self.pot_initial_level)?;
        level("sensor_threshold_level", self.sensor_threshold_level)?;
        if !(self.pot_risk > 0.0 && self.pot_risk < 1.0 - self.pot_initial_level) {
            return Err(field_err(
                "pot_risk",
                format!(
                    "must be in (0, 1 - pot_initial_level = {}): the threshold must lie beyond the initial one, got {}",
                    1.0 - self.pot_initial_level,
                    self.pot_risk
                ),
            ));
        }
        Ok(())
    }

    /// β for a 0-based epoch: linear from 0 to `beta_max` over `beta_anneal_epochs`.
    pub fn beta_at(&self, epoch: usize) -> f64 {
        if self.beta_anneal_epochs == 0 {
            self.beta_max
        } else {
            self.beta_max * (epoch as f64 / self.beta_anneal_epochs as f64).min(1.0)
        }
    }

    /// Scoring mini-batch size for a device.
    /// The steps per-sensor errors average over (`score_focus`, or ceil(W/6) when 0; at most W).
    pub fn focus_rows(&self) -> usize {
        if self.score_focus == 0 {
            self.window.div_ceil(6).max(1)
        } else {
            self.score_focus.min(self.window)
        }
    }

    pub fn score_batch_for(&self, device: tch::Device) -> usize {
        self.score_batch_size.unwrap_or(if device.is_cuda() { 32768 } else { 512 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let cfg = ModelConfig::default();
        cfg.validate().unwrap();
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(ModelConfig::from_json(&text).unwrap(), cfg);
        let partial = ModelConfig::from_json(r#"{"epochs": 3, "threshold_method": "pot"}"#).unwrap();
        assert_eq!(partial.epochs, 3);
        assert_eq!(partial.threshold_method, ThresholdMethod::Pot);
        assert_eq!(partial.window, 30);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"window": 0}"#, "'window'"),
            (r#"{"stride": 31}"#, "'stride'"),
            (r#"{"learning_rate": -1}"#, "'learning_rate'"),
            (r#"{"validation_fraction": 0}"#, "'validation_fraction'"),
            (r#"{"device": "tpu"}"#, "'device'"),
            (r#"{"threshold_level": 1.0}"#, "'threshold_level'"),
            (r#"{"pot_risk": 0.5}"#, "'pot_risk'"),
            (r#"{"hiden_size": 3}"#, "hiden_size"),
            (r#"{"threshold_method": "magic"}"#, "magic"),
        ];
        for (json, needle) in cases {
            let err = ModelConfig::from_json(json).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{json}: {err}");
            assert!(err.to_string().contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn beta_anneals_from_zero() {
        let cfg = ModelConfig { beta_max: 1.0, beta_anneal_epochs: 4, ..Default::default() };
        let betas: Vec<f64> = (0..6).map(|e| cfg.beta_at(e)).collect();
        assert_eq!(betas, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
        let flat = ModelConfig { beta_anneal_epochs: 0, beta_max: 0.3, ..Default::default() };
        assert_eq!(flat.beta_at(0), 0.3);
    }
}
