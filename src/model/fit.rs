//! Training from Arrow record batches: rows of normal operation in, a calibrated model artifact out.
//!
//! Rows are cut into segments (a window never crosses one) where the plant changes, where a row is
//! unusable (null/NaN/infinite sensor, null plant or timestamp: counted in `rows_excluded`), and where
//! the time step jumps to more than `GAP_FACTOR` times the data's median step (a hole in the data).
//! Without an explicit validation set, the last `validation_fraction` of every segment is held out.
//! The scaler is fitted on the training part only, unless one is given (e.g. fitted by Spark).
//! Thresholds are calibrated on the held-out windows at the scoring stride.
use std::collections::BTreeMap;
use std::ops::{ControlFlow, Range};

use arrow_array::{Array, RecordBatch};
use sha2::{Digest, Sha256};
use tch::Tensor;

use super::artifact::{ModelArtifact, TrainingSummary};
use super::input::{format_micros, plant_column, timestamp_column};
use super::score::score_window_set;
use super::threshold::{calibrate, check_calibration_size};
use super::train::{train, EpochReport, TrainingSeries};
use super::vae::{Architecture, LstmVae};
use super::{apply_threads, parse_device, ModelConfig};
use crate::matrix::{InvalidRows, SensorMatrix};
use crate::scaler::{Scaler, ScalerKind, ScalerStats};
use crate::sensors::SensorSet;
use crate::{Error, Result};

/// A time step larger than this many median steps starts a new segment.
pub const GAP_FACTOR: i64 = 10;

/// Usable rows of some batches, as (batch, row) references in order, cut into segments.
#[derive(Debug)]
struct Rows {
    matrices: Vec<SensorMatrix>,
    refs: Vec<(u32, u32)>,
    segments: Vec<Range<usize>>,
    excluded: u64,
    time_range: Option<(i64, i64)>,
    /// Median step between consecutive rows of a plant (microseconds).
    median_step_us: Option<i64>,
}

impl Rows {
    fn read(batches: &[RecordBatch], sensors: &SensorSet, what: &str) -> Result<Rows> {
        let mut matrices = Vec::with_capacity(batches.len());
        let mut plants = Vec::with_capacity(batches.len());
        let mut times = Vec::with_capacity(batches.len());
        for (b, batch) in batches.iter().enumerate() {
            let ctx = |e: Error| match e {
                Error::Schema(m) => Error::Schema(format!("{what}, batch {b}: {m}")),
                other => other,
            };
            matrices.push(SensorMatrix::from_batch(batch, sensors, InvalidRows::Mask).map_err(ctx)?);
            plants.push(plant_column(batch).map_err(ctx)?);
            times.push(timestamp_column(batch).map_err(ctx)?);
        }
        // A row's key and time, or None when the row is unusable.
        let row_key = |b: usize, i: usize| -> Option<(&str, Option<i64>)> {
            if !matrices[b].valid()[i] {
                return None;
            }
            let key = match &plants[b] {
                Some(p) if p.is_null(i) => return None,
                Some(p) => p.value(i),
                None => "",
            };
            let time = match &times[b] {
                Some(t) if t.is_null(i) => return None,
                Some(t) => Some(t.value(i)),
                None => None,
            };
            Some((key, time))
        };

        // The typical step between consecutive rows of one plant.
        let mut steps = Vec::new();
        let mut prev: Option<(&str, i64)> = None;
        for (b, m) in matrices.iter().enumerate() {
            for i in 0..m.rows() {
                match row_key(b, i) {
                    Some((k, Some(t))) => {
                        if let Some((pk, pt)) = prev {
                            if pk == k && t > pt {
                                steps.push(t - pt);
                            }
                        }
                        prev = Some((k, t));
                    }
                    _ => prev = None,
                }
            }
        }
        let median_step_us = if steps.is_empty() {
            None
        } else {
            let mid = steps.len() / 2;
            Some(*steps.select_nth_unstable(mid).1)
        };
        let max_gap = median_step_us.map_or(i64::MAX, |m| m.saturating_mul(GAP_FACTOR));

        let mut refs = Vec::new();
        let mut segments = Vec::new();
        let mut excluded = 0u64;
        let mut time_range: Option<(i64, i64)> = None;
        let mut start = 0usize;
        let mut prev: Option<(&str, Option<i64>)> = None;
        for (b, m) in matrices.iter().enumerate() {
            for i in 0..m.rows() {
                let Some((key, time)) = row_key(b, i) else {
                    excluded += 1;
                    prev = None;
                    if refs.len() > start {
                        segments.push(start..refs.len());
                    }
                    start = refs.len();
                    continue;
                };
                let breaks = match prev {
                    None => false,
                    Some((pk, _)) if pk != key => true,
                    Some((_, pt)) => match (pt, time) {
                        (Some(pt), Some(t)) if t < pt => {
                            return Err(Error::Input(format!(
                                "{what}: rows of plant '{key}' are not in time order: batch {b}, row {i} ({}) is earlier \
                                 than the row before it ({}); sort by plant and timestamp",
                                format_micros(t),
                                format_micros(pt)
                            )))
                        }
                        (Some(pt), Some(t)) => t - pt > max_gap,
                        _ => false,
                    },
                };
                if breaks && refs.len() > start {
                    segments.push(start..refs.len());
                    start = refs.len();
                }
                if let Some(t) = time {
                    time_range = Some(time_range.map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t))));
                }
                refs.push((b as u32, i as u32));
                prev = Some((key, time));
            }
        }
        if refs.len() > start {
            segments.push(start..refs.len());
        }
        Ok(Rows { matrices, refs, segments, excluded, time_range, median_step_us })
    }

    /// A min-max scaler fitted on the rows in `ranges`.
    fn fit_min_max(&self, ranges: &[Range<usize>], sensors: &SensorSet) -> Result<Scaler> {
        let f = sensors.len();
        let mut stats = ScalerStats::new(f);
        let mut row = vec![0.0; f];
        for r in ranges.iter().flat_map(|r| r.clone()) {
            row.iter_mut().enumerate().for_each(|(j, v)| *v = self.value(r, j));
            stats.push_row(&row);
        }
        stats.finish(ScalerKind::MinMax, sensors.sensors())
    }

    #[inline]
    fn value(&self, r: usize, j: usize) -> f64 {
        let (b, i) = self.refs[r];
        self.matrices[b as usize].value(i as usize, j)
    }

    /// Scaled values of the rows in `ranges`, row-major, with the ranges' lengths; hashes the raw values.
    fn scaled(&self, ranges: &[Range<usize>], scaler: &Scaler, hash: &mut Sha256) -> (Vec<f32>, Vec<usize>) {
        let f = scaler.len();
        let rows: usize = ranges.iter().map(|r| r.len()).sum();
        let mut out = Vec::with_capacity(rows * f);
        for range in ranges {
            for r in range.clone() {
                for j in 0..f {
                    let v = self.value(r, j);
                    hash.update(v.to_le_bytes());
                    out.push(scaler.apply(v, j) as f32);
                }
            }
        }
        (out, ranges.iter().map(|r| r.len()).collect())
    }
}

/// Trains, calibrates and assembles a model from record batches of normal operation.
///
/// Per sensor: whether it was constant in the training data (the scaler's report).
pub fn constant_flags(scaler: &Scaler, sensors: &SensorSet) -> Vec<bool> {
    sensors.sensors().iter().map(|s| scaler.constant_columns.contains(s)).collect()
}

/// `data`: rows in time order per plant (columns: the sensors by name; optional `plant`, `timestamp`).
/// `validation`: held-out normal rows; when None, the end of every segment of `data` is held out.
/// `scaler`: fitted on training data by the caller; when None, a min-max scaler is fitted here on the
/// training part.
pub fn fit(
    data: &[RecordBatch],
    validation: Option<&[RecordBatch]>,
    sensors: &SensorSet,
    scaler: Option<Scaler>,
    config: &ModelConfig,
    progress: impl FnMut(&EpochReport) -> ControlFlow<()>,
) -> Result<ModelArtifact> {
    config.validate()?;
    let f = sensors.len();
    if let Some(s) = &scaler {
        if s.len() != f {
            return Err(Error::Config(format!("the scaler has {} columns, plant '{}' has {f} sensors", s.len(), sensors.plant())));
        }
    }
    let w = config.window;
    let rows = Rows::read(data, sensors, "training data")?;
    let (train_rows, train_ranges, val_rows, val_ranges) = match validation {
        Some(v) => {
            let val = Rows::read(v, sensors, "validation data")?;
            let (tr, va) = (rows.segments.clone(), val.segments.clone());
            (rows, tr, Some(val), va)
        }
        None => {
            let (mut tr, mut va) = (Vec::new(), Vec::new());
            for seg in &rows.segments {
                let n = seg.len();
                let n_val = (n as f64 * config.validation_fraction).round() as usize;
                if n_val >= w && n - n_val >= w {
                    tr.push(seg.start..seg.end - n_val);
                    va.push(seg.end - n_val..seg.end);
                } else {
                    tr.push(seg.clone());
                }
            }
            (rows, tr, None, va)
        }
    };
    let val_source = val_rows.as_ref().unwrap_or(&train_rows);
    let count = |ranges: &[Range<usize>]| ranges.iter().map(|r| r.len()).sum::<usize>();
    if count(&train_ranges) < w {
        return Err(Error::Input(format!(
            "training data has {} usable rows in {} segment(s) ({} rows excluded as unusable); a window needs {w}",
            count(&train_ranges),
            train_ranges.len(),
            train_rows.excluded
        )));
    }
    if val_ranges.iter().all(|r| r.len() < w) {
        return Err(Error::Input(format!(
            "no held-out window: the validation part has {} usable rows in {} segment(s), a window needs {w} \
             (supply more data, validation data, or a larger validation_fraction)",
            count(&val_ranges),
            val_ranges.len()
        )));
    }

    let scaler = match scaler {
        Some(s) => s,
        None => train_rows.fit_min_max(&train_ranges, sensors)?,
    };

    let mut hash = Sha256::new();
    let (train_values, train_lengths) = train_rows.scaled(&train_ranges, &scaler, &mut hash);
    let (val_values, val_lengths) = val_source.scaled(&val_ranges, &scaler, &mut hash);
    let data_sha256: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let train_series = TrainingSeries::new(&train_values, f, &train_lengths)?;
    drop(train_values);
    let val_series = TrainingSeries::new(&val_values, f, &val_lengths)?;
    drop(val_values);

    let train_windows = train_series.windows(w, config.train_stride);
    let stopping_windows = val_series.windows(w, config.train_stride);
    let calibration_windows = val_series.windows(w, config.stride);
    // Before the long part: enough held-out windows for the thresholds?
    check_calibration_size(calibration_windows.len(), config)?;
    let trained = train(config, &train_windows, &stopping_windows, progress)?;
    let device = parse_device(&config.device)?;
    let normal = score_window_set(&trained.vae, &calibration_windows, config.score_batch_for(device), config.focus_rows())?;
    let thresholds = calibrate(&normal, config, config.focus_rows(), &constant_flags(&scaler, sensors))?;

    let time_range = [train_rows.time_range, val_rows.as_ref().and_then(|v| v.time_range)]
        .into_iter()
        .flatten()
        .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)))
        .map(|(lo, hi)| (format_micros(lo), format_micros(hi)));
    let summary = TrainingSummary {
        source: "tidewatch.train".into(),
        rows: (count(&train_ranges) + count(&val_ranges)) as u64,
        rows_excluded: train_rows.excluded + val_rows.as_ref().map_or(0, |v| v.excluded),
        segments: train_ranges.len() + val_ranges.len(),
        train_windows: train_windows.len(),
        validation_windows: calibration_windows.len(),
        data_sha256,
        time_range,
        sample_period_seconds: train_rows.median_step_us.map(|us| us as f64 / 1e6),
        epochs_run: trained.history.len(),
        best_epoch: trained.best_epoch,
        best_val_loss: trained.best_val_loss,
        stop: Some(trained.stop),
        device: trained.device.clone(),
        seconds: trained.seconds,
        history: trained.history,
    };
    ModelArtifact::new(sensors.clone(), scaler, thresholds, config.clone(), summary, trained.vae)
}

/// Builds a model from existing weights (a legacy PyTorch state dict mapped onto tidewatch's parameter
/// names by the caller): no training; the thresholds are calibrated on every window of `data`, which must
/// be normal operation the weights were not trained on. `config` must describe the weights' architecture
/// (hidden_size, latent_size, layers) and the window they expect. `source` says where they came from.
pub fn import_weights(
    weights: &BTreeMap<String, Tensor>,
    data: &[RecordBatch],
    sensors: &SensorSet,
    scaler: Option<Scaler>,
    config: &ModelConfig,
    source: &str,
) -> Result<ModelArtifact> {
    config.validate()?;
    let f = sensors.len();
    if let Some(s) = &scaler {
        if s.len() != f {
            return Err(Error::Config(format!("the scaler has {} columns, plant '{}' has {f} sensors", s.len(), sensors.plant())));
        }
    }
    apply_threads(config.threads)?;
    let device = parse_device(&config.device)?;
    let started = std::time::Instant::now();
    let vae = LstmVae::zeroed(Architecture::new(config, f)?, device)?;
    vae.load_parameters(weights, source)?;

    let rows = Rows::read(data, sensors, "calibration data")?;
    let scaler = match scaler {
        Some(s) => s,
        None => rows.fit_min_max(&rows.segments, sensors)?,
    };
    let mut hash = Sha256::new();
    let (values, lengths) = rows.scaled(&rows.segments, &scaler, &mut hash);
    let series = TrainingSeries::new(&values, f, &lengths)?;
    drop(values);
    let windows = series.windows(config.window, config.stride);
    check_calibration_size(windows.len(), config)?;
    // Imported weights score as the code that trained them did: over the whole window, unless the
    // config asks for a focus.
    let focus = if config.score_focus == 0 { config.window } else { config.focus_rows() };
    let normal = score_window_set(&vae, &windows, config.score_batch_for(device), focus)?;
    let mut thresholds = calibrate(&normal, config, focus, &constant_flags(&scaler, sensors))?;
    thresholds.pin_constant = false; // the legacy network saw such columns move
    let summary = TrainingSummary {
        source: source.to_string(),
        rows: rows.refs.len() as u64,
        rows_excluded: rows.excluded,
        segments: rows.segments.len(),
        train_windows: 0,
        validation_windows: windows.len(),
        data_sha256: hash.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        time_range: rows.time_range.map(|(lo, hi)| (format_micros(lo), format_micros(hi))),
        sample_period_seconds: rows.median_step_us.map(|us| us as f64 / 1e6),
        device: super::device_name(device),
        seconds: started.elapsed().as_secs_f64(),
        ..Default::default()
    };
    ModelArtifact::new(sensors.clone(), scaler, thresholds, config.clone(), summary, vae)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;
    use crate::model::input::{timestamp_type, PLANT, TIMESTAMP};
    use crate::model::train::tests::{plant_series, small_config, PLANT_SENSORS};

    pub(crate) fn toy_sensors() -> SensorSet {
        SensorSet::from_text(
            "plant: toy\nsensors: [LIT, P, FIT, MV, AIT]\nstages:\n  S1: [LIT, P, FIT]\n  S2: [MV, AIT]\n",
        )
        .unwrap()
    }

    /// Record batch of the toy plant: `values` row-major, 1 s steps from `t0` seconds.
    pub(crate) fn toy_batch(values: &[f32], t0: i64, plant: Option<&str>) -> RecordBatch {
        let f = PLANT_SENSORS;
        let rows = values.len() / f;
        let sensors = toy_sensors();
        let mut fields = Vec::new();
        let mut cols: Vec<ArrayRef> = Vec::new();
        if let Some(p) = plant {
            fields.push(Field::new(PLANT, DataType::Utf8, true));
            cols.push(Arc::new(StringArray::from(vec![p; rows])));
        }
        fields.push(Field::new(TIMESTAMP, timestamp_type(), true));
        cols.push(Arc::new(
            TimestampMicrosecondArray::from((0..rows as i64).map(|i| (t0 + i) * 1_000_000).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ));
        for (j, name) in sensors.sensors().iter().enumerate() {
            fields.push(Field::new(name, DataType::Float64, true));
            cols.push(Arc::new(Float64Array::from((0..rows).map(|r| f64::from(values[r * f + j])).collect::<Vec<_>>())));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
    }

    #[test]
    fn segments_break_at_bad_rows_plants_and_gaps_and_order_is_checked() {
        let values = plant_series(100, 1);
        let mut a = toy_batch(&values[..50 * 5], 0, Some("x"));
        let b = toy_batch(&values[50 * 5..], 50, Some("x"));
        let c = toy_batch(&values[..20 * 5], 1000, Some("x")); // a gap of 900 s
        let d = toy_batch(&values[..10 * 5], 0, Some("y")); // another plant
        // Row 10 of `a` gets a NaN.
        let mut cols = a.columns().to_vec();
        let mut lit: Vec<f64> = cols[2].as_any().downcast_ref::<Float64Array>().unwrap().values().to_vec();
        lit[10] = f64::NAN;
        cols[2] = Arc::new(Float64Array::from(lit));
        a = RecordBatch::try_new(a.schema(), cols).unwrap();
        let rows = Rows::read(&[a, b, c, d], &toy_sensors(), "t").unwrap();
        assert_eq!(rows.excluded, 1);
        assert_eq!(rows.segments, vec![0..10, 10..99, 99..119, 119..129]);

        let late = toy_batch(&values[..5 * 5], 10, Some("x"));
        let early = toy_batch(&values[..5 * 5], 0, Some("x"));
        let err = Rows::read(&[late, early], &toy_sensors(), "training data").unwrap_err().to_string();
        assert!(err.contains("not in time order") && err.contains("batch 1, row 0"), "{err}");
    }

    #[test]
    fn fit_from_batches_calibrates_and_is_deterministic() {
        let cfg = ModelConfig { epochs: 6, ..small_config() };
        let values = plant_series(1200, 11);
        let batches = [toy_batch(&values[..600 * 5], 0, Some("toy")), toy_batch(&values[600 * 5..], 600, Some("toy"))];
        let mut epochs = 0;
        let art = fit(&batches, None, &toy_sensors(), None, &cfg, |_| {
            epochs += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
        let m = &art.manifest;
        assert_eq!(epochs, m.training.epochs_run);
        assert_eq!(m.training.rows, 1200);
        assert_eq!(m.training.segments, 2, "one training and one held-out part");
        assert_eq!(m.training.validation_windows, 240 - 16 + 1);
        assert_eq!(m.training.time_range.as_ref().unwrap().0, "1970-01-01T00:00:00.000000Z");
        assert_eq!(m.scaler.kind, ScalerKind::MinMax);
        assert!(m.thresholds.window > m.thresholds.normal_score_median);
        assert_eq!(m.thresholds.sensors.len(), 5);
        // The scaler is fitted on the training part only (the first 960 rows).
        let first_960: Vec<f32> = values[..960 * 5].to_vec();
        let lit_max = first_960.iter().step_by(5).fold(f32::MIN, |a, &b| a.max(b)) as f64;
        assert!((m.scaler.offset[0] + m.scaler.scale[0] - lit_max).abs() < 1e-6);

        let again = fit(&batches, None, &toy_sensors(), None, &cfg, |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(again.version(), art.version(), "same data and seed, same model version");
        assert_eq!(again.manifest.training.data_sha256, m.training.data_sha256);

        // An explicit validation set and a given scaler are used as given.
        let val = [toy_batch(&plant_series(300, 5), 5000, Some("toy"))];
        let given = fit(&batches, Some(&val), &toy_sensors(), Some(m.scaler.clone()), &cfg, |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(given.manifest.scaler, m.scaler);
        assert_eq!(given.manifest.training.validation_windows, 300 - 16 + 1);
        assert_eq!(given.manifest.training.rows, 1500);
    }

    #[test]
    fn imported_weights_score_like_the_original_and_mismatches_are_refused() {
        let cfg = ModelConfig { epochs: 3, ..small_config() };
        let values = plant_series(1200, 11);
        let batches = [toy_batch(&values, 0, Some("toy"))];
        let art = fit(&batches, None, &toy_sensors(), None, &cfg, |_| ControlFlow::Continue(())).unwrap();
        let weights = art.vae.parameters_to_cpu();
        let normal = [toy_batch(&plant_series(600, 8), 0, Some("toy"))];
        let imported = import_weights(&weights, &normal, &toy_sensors(), Some(art.scaler().clone()), &cfg, "legacy import of test.pth")
            .unwrap();
        assert_eq!(imported.manifest.weights.sha256, art.manifest.weights.sha256, "same weights, same file");
        assert_eq!(imported.manifest.training.source, "legacy import of test.pth");
        assert_eq!(imported.manifest.training.validation_windows, 600 - 16 + 1);
        assert!(imported.thresholds().window > 0.0);

        let mut wrong = art.vae.parameters_to_cpu();
        wrong.remove("fc_mu.bias");
        let err = import_weights(&wrong, &normal, &toy_sensors(), None, &cfg, "old.pth").unwrap_err().to_string();
        assert!(err.contains("old.pth") && err.contains("missing: [fc_mu.bias]"), "{err}");
        let bigger = ModelConfig { hidden_size: 32, ..cfg };
        let err = import_weights(&weights, &normal, &toy_sensors(), None, &bigger, "old.pth").unwrap_err().to_string();
        assert!(err.contains("shape"), "{err}");
    }

    #[test]
    fn too_little_data_is_explained() {
        let cfg = small_config();
        let values = plant_series(30, 1);
        let err = fit(&[toy_batch(&values, 0, None)], None, &toy_sensors(), None, &cfg, |_| ControlFlow::Continue(()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no held-out window"), "{err}");
        let err = fit(&[toy_batch(&values[..10 * 5], 0, None)], None, &toy_sensors(), None, &cfg, |_| {
            ControlFlow::Continue(())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("10 usable rows"), "{err}");
    }
}
