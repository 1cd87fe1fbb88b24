//! The Detector: a loaded model plus the window stream, scoring Arrow record batches row by row
//! (docs/scoring-contract.md).
//!
//! Row rule (src/windows.rs): a row is scored by the most recent window ending at or before it; with
//! stride 1, the W rows ending at it. The first W-1 rows of a stream are `warmup`. A row with a null,
//! NaN or infinite sensor (or a null plant or timestamp, or a timestamp earlier than its plant's
//! previous row: `out_of_order`; at the same time: `duplicate_timestamp`) is `quarantined` with a reason and does not enter the windows. Rows flagged
//! `_tw_context` only fill windows and are not output. Streams (one per plant) carry their last
//! rows across calls, so scoring a stream in any chunking gives bit-identical results to scoring it
//! at once (mini-batches are padded, see `score::MIN_FORWARD_BATCH`).
//!
//! Per scored row: `score` = its window's mean squared reconstruction error (scaled space; or, with
//! `score_method = "sensor_max"`, its largest per-sensor error relative to that sensor's threshold),
//! `flag` = score > threshold, `error_<S>` = the window's per-sensor errors, `top_sensors` = the three
//! largest errors, `anomalous_sensors` (flagged rows only) = sensors above their own threshold, by
//! decreasing error, or the top sensor when none is.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::{BooleanBuilder, Float64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use tch::{Device, Tensor};

use super::artifact::{resolve, ModelArtifact, MANIFEST_FILE, WEIGHTS_FILE};
use super::input::{context_column, plant_column, timestamp_column, timestamp_type, UTC};
use super::score::score_starts;
use super::{apply_threads, parse_device};
use crate::incidents::{Evidence, Incident, IncidentPolicy, IncidentTracker, Transition};
use crate::matrix::{InvalidRows, SensorMatrix};
use crate::metrics::BatchAggregate;
use crate::sensors::SensorSet;
use crate::windows::WindowStream;
use crate::{Error, Result};

/// Largest magnitude a scaled reading enters the network with. Min-max scaling puts normal readings in
/// about [0, 1]; an absurd finite reading (1e39, a spoofed or broken sensor) would overflow float32 and
/// turn its windows' scores into NaN, unflagged. Clamped, it still scores as the extreme anomaly it is
/// (squared errors up to ~1e12, far inside float32) and names its sensor.
pub const SCALED_INPUT_LIMIT: f64 = 1e6;

/// A scaled reading as the network's float32 input, clamped to ±SCALED_INPUT_LIMIT.
#[inline]
pub fn scaled_input(scaled: f64) -> f32 {
    scaled.clamp(-SCALED_INPUT_LIMIT, SCALED_INPUT_LIMIT) as f32
}

pub const STATUS_SCORED: &str = "scored";
pub const STATUS_WARMUP: &str = "warmup";
pub const STATUS_QUARANTINED: &str = "quarantined";
/// Quarantine reasons for a row earlier than its plant's previous row, and for one at the same time.
pub const REASON_OUT_OF_ORDER: &str = "out_of_order";
pub const REASON_DUPLICATE: &str = "duplicate_timestamp";
/// How many sensors `top_sensors` names.
pub const TOP_SENSORS: usize = 3;

/// Identity of what a model path points to: the resolved directory and its two files' sizes, times
/// and inodes. Cheap to take (one path resolution, two stats).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    dir: PathBuf,
    files: Vec<(u64, Option<std::time::SystemTime>, u64)>,
}

fn fingerprint_dir(dir: &Path) -> Result<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::with_capacity(2);
    for name in [MANIFEST_FILE, WEIGHTS_FILE] {
        let p = dir.join(name);
        let m = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
        files.push((m.len(), m.modified().ok(), m.ino()));
    }
    Ok(Fingerprint { dir: dir.to_path_buf(), files })
}

/// The scores of the latest window of a stream, kept for rows it scores in a later batch (stride > 1).
#[derive(Debug, Clone)]
struct LastWindow {
    k: u64,
    score: f32,
    errors: Vec<f32>,
}

/// What one `score` call produced.
#[derive(Debug, Clone)]
pub struct ScoreOutcome {
    /// One row per non-context input row, in input order (`Detector::output_schema`).
    pub batch: RecordBatch,
    /// Windows run through the model in this call (`ae_sequences_ready`).
    pub windows_scored: usize,
    pub rows_scored: usize,
    pub rows_warmup: usize,
    pub rows_quarantined: usize,
    pub rows_flagged: usize,
    /// Problems worth telling the user that do not stop scoring (e.g. a sample period unlike training's).
    pub warnings: Vec<String>,
}

/// A plant's rows must arrive this many times faster or slower than the training data's before a
/// warning is raised (windows then span a different stretch of time than the model learnt).
pub const PERIOD_TOLERANCE: f64 = 2.0;
/// Steps of a plant a call must hold before its sample period is judged.
pub const PERIOD_MIN_STEPS: usize = 10;

pub struct Detector {
    /// The user-facing model path (None: built in memory).
    path: Option<PathBuf>,
    device: Device,
    model: ModelArtifact,
    fingerprint: Option<Fingerprint>,
    stream: WindowStream,
    last_window: HashMap<String, LastWindow>,
    last_time: HashMap<String, i64>,
    threshold_override: Option<f64>,
    batch_size: usize,
    schema: SchemaRef,
    load_seconds: f64,
    reloads: u64,
    failed: Option<(Option<Fingerprint>, String)>,
    /// Flags grouped into incidents per plant (src/incidents.rs), and the transitions not yet taken.
    incidents: IncidentTracker,
    transitions: Vec<Transition>,
    /// Sensors constant in training that enter the network pinned (see `Thresholds::pin_constant`),
    /// with their training value.
    pinned: Vec<(usize, f64)>,
    /// Warnings not yet taken, and the plants warned about a sample period (once each until it recovers).
    warnings: Vec<String>,
    period_warned: std::collections::HashSet<String>,
}

/// Sensors the model pins: constant in training, for a model that pins them.
fn pinned_sensors(model: &ModelArtifact) -> Vec<(usize, f64)> {
    if !model.thresholds().pin_constant {
        return Vec::new();
    }
    let scaler = model.scaler();
    model
        .sensors
        .sensors()
        .iter()
        .enumerate()
        .filter(|(_, s)| scaler.constant_columns.contains(s))
        .map(|(j, _)| (j, scaler.offset[j]))
        .collect()
}

/// A warning per plant whose rows in this call arrive at a period unlike the training data's
/// (median step off by more than PERIOD_TOLERANCE times), once until the period recovers.
fn period_warnings(
    warned: &mut std::collections::HashSet<String>,
    trained: Option<f64>,
    window: usize,
    mut plants: Vec<(&str, Vec<i64>)>,
) -> Vec<String> {
    let Some(trained) = trained.filter(|p| *p > 0.0) else { return Vec::new() };
    let mut out = Vec::new();
    plants.sort_by(|a, b| a.0.cmp(b.0));
    for (plant, mut s) in plants {
        if s.len() < PERIOD_MIN_STEPS {
            continue;
        }
        let mid = s.len() / 2;
        let observed = *s.select_nth_unstable(mid).1 as f64 / 1e6;
        let ratio = observed / trained;
        let off = !(1.0 / PERIOD_TOLERANCE..=PERIOD_TOLERANCE).contains(&ratio);
        if off && warned.insert(plant.to_string()) {
            out.push(format!(
                "plant '{plant}': rows arrive every {observed} s (median step), the model was trained on rows every \
                 {trained} s: a window of {} rows spans {} s instead of {} s, so scores are not comparable with \
                 training; resample the data to {trained} s or train a model at this rate",
                window,
                observed * window as f64,
                trained * window as f64
            ));
        } else if !off {
            warned.remove(plant);
        }
    }
    out
}

/// Whether a pinned sensor's reading differs from its training value (beyond float noise).
#[inline]
fn moved(value: f64, trained: f64) -> bool {
    (value - trained).abs() > 1e-9 * trained.abs().max(1.0)
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("path", &self.path)
            .field("version", &self.model.version())
            .field("device", &self.device)
            .finish()
    }
}

fn output_schema(sensors: &SensorSet) -> SchemaRef {
    let mut fields = vec![
        Field::new("plant", DataType::Utf8, true),
        Field::new("timestamp", timestamp_type(), true),
        Field::new("status", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
        Field::new("flag", DataType::Boolean, true),
        Field::new("threshold", DataType::Float64, true),
        Field::new("top_sensors", DataType::Utf8, true),
        Field::new("anomalous_sensors", DataType::Utf8, true),
        Field::new("novel_sensors", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("model_version", DataType::Utf8, true),
    ];
    fields.extend(sensors.sensors().iter().map(|s| Field::new(format!("error_{s}"), DataType::Float64, true)));
    Arc::new(Schema::new(fields))
}

/// What happens to one input row.
#[derive(Clone)]
enum Outcome {
    Context,
    Quarantined(String),
    Warmup,
    /// Index into this call's window results, or the stream's cached last window.
    Scored(WindowRef),
}

#[derive(Clone)]
enum WindowRef {
    Fresh(usize),
    Cached(Arc<LastWindow>),
}

impl Detector {
    /// Loads the model at `path` (a published symlink or a model directory) onto `device`
    /// ("auto" | "cpu" | "cuda" | "cuda:N"), with libtorch using `threads` threads (see `apply_threads`).
    pub fn load(path: &Path, device: &str, threads: Option<usize>) -> Result<Self> {
        apply_threads(threads)?;
        let device = parse_device(device)?;
        let started = Instant::now();
        let model = ModelArtifact::load(path, device)?;
        let fingerprint = match &model.source {
            Some(dir) => Some(fingerprint_dir(dir)?),
            None => None,
        };
        let mut det = Self::from_artifact(model, device)?;
        det.path = Some(path.to_path_buf());
        det.fingerprint = fingerprint;
        det.load_seconds = started.elapsed().as_secs_f64();
        Ok(det)
    }

    /// A detector for an artifact in memory (just trained, say); it has no file to reload from.
    pub fn from_artifact(model: ModelArtifact, device: Device) -> Result<Self> {
        if model.vae.device() != device {
            return Err(Error::Config(format!(
                "the model's weights are on {:?}, the detector was asked for {device:?}",
                model.vae.device()
            )));
        }
        let spec = model.window_spec();
        let f = model.sensors.len();
        let policy = IncidentPolicy::for_period(model.manifest.training.sample_period_seconds.unwrap_or(1.0));
        let incidents = IncidentTracker::new(&model.sensors, policy)?;
        Ok(Detector {
            incidents,
            transitions: Vec::new(),
            pinned: pinned_sensors(&model),
            warnings: Vec::new(),
            period_warned: Default::default(),
            path: None,
            device,
            schema: output_schema(&model.sensors),
            batch_size: model.manifest.config.score_batch_for(device),
            model,
            fingerprint: None,
            stream: WindowStream::new(spec, f),
            last_window: HashMap::new(),
            last_time: HashMap::new(),
            threshold_override: None,
            load_seconds: 0.0,
            reloads: 0,
            failed: None,
        })
    }

    pub fn model(&self) -> &ModelArtifact {
        &self.model
    }
    pub fn version(&self) -> &str {
        self.model.version()
    }
    /// sha256 of the model's weights file.
    pub fn checksum(&self) -> &str {
        &self.model.manifest.weights.sha256
    }
    pub fn sensors(&self) -> &SensorSet {
        &self.model.sensors
    }
    pub fn device(&self) -> Device {
        self.device
    }
    /// Seconds the latest (re)load took.
    pub fn load_seconds(&self) -> f64 {
        self.load_seconds
    }
    /// Successful reloads since the first load.
    pub fn reloads(&self) -> u64 {
        self.reloads
    }
    /// The version directory the model was read from.
    pub fn resolved_path(&self) -> Option<&Path> {
        self.model.source.as_deref()
    }
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    /// The error of the latest failed reload, while the file that caused it is unchanged.
    pub fn last_reload_error(&self) -> Option<&str> {
        self.failed.as_ref().map(|f| f.1.as_str())
    }
    pub fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    pub fn rows_carried(&self) -> usize {
        self.stream.carried_rows()
    }

    /// The window threshold in use: the override if set, else the model's calibrated one.
    pub fn threshold(&self) -> f64 {
        self.threshold_override.unwrap_or(self.model.thresholds().window)
    }

    /// Overrides the model's window threshold (None restores it).
    pub fn set_threshold(&mut self, threshold: Option<f64>) -> Result<()> {
        if let Some(t) = threshold {
            if !t.is_finite() || t < 0.0 {
                return Err(Error::Config(format!("threshold must be a finite number >= 0, got {t}")));
            }
        }
        self.threshold_override = threshold;
        Ok(())
    }

    /// Windows per forward pass.
    pub fn set_batch_size(&mut self, windows: usize) -> Result<()> {
        if windows == 0 {
            return Err(Error::Config("score batch size must be at least 1".into()));
        }
        self.batch_size = windows;
        Ok(())
    }

    /// Forgets every stream's carried rows (the next rows of each plant start with a warm-up) and its
    /// incident state.
    pub fn reset_stream(&mut self) {
        self.stream = WindowStream::new(self.model.window_spec(), self.model.sensors.len());
        self.last_window.clear();
        self.last_time.clear();
        self.incidents.reset();
        self.transitions.clear();
    }

    /// The training data's sample period (median step, seconds), when it had timestamps.
    pub fn sample_period_seconds(&self) -> Option<f64> {
        self.model.manifest.training.sample_period_seconds
    }

    pub fn incident_policy(&self) -> IncidentPolicy {
        self.incidents.policy()
    }

    /// Replaces the incident rules; the incident state restarts.
    pub fn set_incident_policy(&mut self, policy: IncidentPolicy) -> Result<()> {
        self.incidents = IncidentTracker::new(&self.model.sensors, policy)?;
        self.transitions.clear();
        Ok(())
    }

    /// The incident transitions (opened / updated / closed) of the rows scored since the last call.
    pub fn take_incident_transitions(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.transitions)
    }

    /// Warnings of the calls since the last take (see `ScoreOutcome::warnings`).
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Incidents still open, per plant.
    pub fn open_incidents(&self) -> Vec<&Incident> {
        self.incidents.open_incidents()
    }

    pub fn incident_tracker(&self) -> &IncidentTracker {
        &self.incidents
    }

    /// Reloads the model when the path now points to other files. Returns whether it swapped models.
    /// A bad new file is an error, reported once; the current model keeps scoring, and the same bad
    /// file is not retried until it changes again. Streams carry over when the new model has the same
    /// sensors and window; otherwise they restart.
    pub fn reload_if_changed(&mut self) -> Result<bool> {
        let Some(path) = self.path.clone() else { return Ok(false) };
        let current = resolve(&path).and_then(|dir| fingerprint_dir(&dir));
        let fp = match current {
            Ok(fp) if Some(&fp) == self.fingerprint.as_ref() => return Ok(false),
            Ok(fp) => Some(fp),
            Err(e) => {
                if matches!(&self.failed, Some((None, _))) {
                    return Ok(false);
                }
                self.failed = Some((None, e.to_string()));
                return Err(e);
            }
        };
        if matches!(&self.failed, Some((Some(bad), _)) if Some(bad) == fp.as_ref()) {
            return Ok(false);
        }
        let started = Instant::now();
        match ModelArtifact::load(&path, self.device) {
            Ok(model) => {
                let fingerprint = match &model.source {
                    Some(dir) => Some(fingerprint_dir(dir)?),
                    None => None,
                };
                let same_stream = model.sensors == self.model.sensors && model.window_spec() == self.model.window_spec();
                self.schema = output_schema(&model.sensors);
                self.batch_size = model.manifest.config.score_batch_for(self.device);
                self.pinned = pinned_sensors(&model);
                self.model = model;
                self.fingerprint = fingerprint;
                if !same_stream {
                    let policy = self.incidents.policy();
                    self.incidents = IncidentTracker::new(&self.model.sensors, policy)?;
                    self.reset_stream();
                }
                self.load_seconds = started.elapsed().as_secs_f64();
                self.reloads += 1;
                self.failed = None;
                Ok(true)
            }
            Err(e) => {
                self.failed = Some((fp, e.to_string()));
                Err(e)
            }
        }
    }

    /// Scores a record batch (see the module documentation for the rules and docs/scoring-contract.md
    /// for the schemas).
    pub fn score(&mut self, batch: &RecordBatch) -> Result<ScoreOutcome> {
        self.score_into(batch, None)
    }

    /// `score`, also recording every output row (and the windows run) in `aggregate`, the partial
    /// metrics of this partition (src/metrics/aggregate.rs): scored rows with their flag, anomalous
    /// sensors, per-sensor errors, raw sensor values and event time; warm-up and quarantined rows.
    pub fn score_into(&mut self, batch: &RecordBatch, aggregate: Option<&mut BatchAggregate>) -> Result<ScoreOutcome> {
        if let Some(agg) = &aggregate {
            agg.check_same_sensors(&self.model.sensors)?;
        }
        let sensors = &self.model.sensors;
        let names = sensors.sensors();
        let f = sensors.len();
        let matrix = SensorMatrix::from_batch(batch, sensors, InvalidRows::Mask)?;
        let plants = plant_column(batch)?;
        let times = timestamp_column(batch)?;
        let context = context_column(batch)?;
        let n = batch.num_rows();
        let default_plant = sensors.plant().to_string();

        // 1. Sort rows into quarantined, context and per-plant streams, in input order.
        let mut outcome: Vec<Outcome> = vec![Outcome::Warmup; n];
        let mut problems = matrix.problems().iter().peekable();
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        let mut steps: Vec<Vec<i64>> = Vec::new(); // per group
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        for (i, slot) in outcome.iter_mut().enumerate() {
            let is_context = context.as_ref().is_some_and(|c| c.is_valid(i) && c.value(i));
            let mut reason = None;
            let mut step = None; // since the plant's previous row, for the sample-period check
            while problems.peek().is_some_and(|p| p.row < i) {
                problems.next();
            }
            if let Some(p) = problems.peek().filter(|p| p.row == i) {
                reason = Some(format!("{}:{}", p.problem.as_str(), names[p.column]));
            }
            let key: &str = match &plants {
                Some(p) if p.is_null(i) => {
                    reason.get_or_insert_with(|| "null:plant".into());
                    ""
                }
                Some(p) => p.value(i),
                None => default_plant.as_str(),
            };
            let time = match &times {
                Some(t) if t.is_null(i) => {
                    reason.get_or_insert_with(|| "null:timestamp".into());
                    None
                }
                Some(t) => Some(t.value(i)),
                None => None,
            };
            if reason.is_none() {
                if let Some(t) = time {
                    match self.last_time.get(key) {
                        // The same reasons as the Spark job's validation (spark/validate.py): the first
                        // row of a time is kept.
                        Some(&last) if t < last => reason = Some(REASON_OUT_OF_ORDER.into()),
                        Some(&last) if t == last => reason = Some(REASON_DUPLICATE.into()),
                        previous => {
                            step = previous.map(|&last| t - last);
                            self.last_time.insert(key.to_string(), t);
                        }
                    }
                }
            }
            if let Some(r) = reason {
                *slot = if is_context { Outcome::Context } else { Outcome::Quarantined(r) };
                continue;
            }
            if is_context {
                *slot = Outcome::Context;
            }
            let g = *group_of.entry(key).or_insert_with(|| {
                groups.push((key.to_string(), Vec::new()));
                steps.push(Vec::new());
                groups.len() - 1
            });
            groups[g].1.push(i);
            steps[g].extend(step);
        }

        let warnings = period_warnings(
            &mut self.period_warned,
            self.model.manifest.training.sample_period_seconds,
            self.model.window_spec().length,
            groups.iter().map(|(key, _)| key.as_str()).zip(steps).collect(),
        );

        // 2. Push each stream's rows; collect the windows that score an output row (and each stream's
        //    newest window, kept for later rows), over one scaled series for all streams.
        let scaler = self.model.scaler();
        let mut is_pinned = vec![false; f];
        for &(j, _) in &self.pinned {
            is_pinned[j] = true;
        }
        let get = |r: usize, j: usize| matrix.value(r, j);
        let mut series: Vec<f32> = Vec::new();
        let mut starts: Vec<i64> = Vec::new();
        // For each stream: (key, its newest window's slot in `starts`, and k).
        let mut newest: Vec<(String, usize, u64)> = Vec::new();
        let mut row_slots: Vec<(usize, u64, Option<usize>)> = Vec::new(); // (row, k, fresh slot)
        for (key, rows) in groups {
            let plan = self.stream.push(&key, rows, &get);
            if plan.windows.is_empty() && plan.row_window.iter().all(Option::is_none) {
                continue;
            }
            let base = (series.len() / f) as i64;
            let first_k = plan.windows.first().map(|w| w.0);
            let mut slot_of_k: HashMap<u64, usize> = HashMap::new();
            let mut need = |k: u64, starts: &mut Vec<i64>| -> usize {
                *slot_of_k.entry(k).or_insert_with(|| {
                    let pos = plan.windows[(k - first_k.expect("window completed in this push")) as usize].1;
                    starts.push(base + pos as i64);
                    starts.len() - 1
                })
            };
            for (idx, &row) in plan.rows.iter().enumerate() {
                let Some(k) = plan.row_window[idx] else { continue };
                if matches!(outcome[row], Outcome::Context) {
                    continue;
                }
                let fresh = first_k.is_some_and(|k0| k >= k0).then(|| need(k, &mut starts));
                row_slots.push((row, k, fresh));
            }
            if let Some(&(k, _)) = plan.windows.last() {
                let slot = need(k, &mut starts);
                newest.push((key.clone(), slot, k));
            }
            if !slot_of_k.is_empty() {
                // The combined rows (carried tail, then this push's rows), scaled, appended to the series.
                series.reserve(plan.combined_rows() * f);
                for pos in 0..plan.combined_rows() {
                    for j in 0..f {
                        let scaled = if is_pinned[j] { 0.0 } else { scaler.apply(plan.value(pos, j, &get), j) };
                        series.push(scaled_input(scaled));
                    }
                }
            }
        }

        // 3. One pass of the model over all needed windows, in mini-batches.
        let windows_scored = starts.len();
        let results = if starts.is_empty() {
            None
        } else {
            let rows = (series.len() / f) as i64;
            let tensor = Tensor::from_slice(&series).view([rows, f as i64]).to_device(self.device);
            drop(series);
            let focus = self.model.thresholds().focus_rows;
            Some(score_starts(&self.model.vae, &tensor, &starts, self.batch_size, focus)?)
        };
        for (row, k, fresh) in row_slots {
            outcome[row] = match fresh {
                Some(slot) => Outcome::Scored(WindowRef::Fresh(slot)),
                None => {
                    let key = match &plants {
                        Some(p) => p.value(row),
                        None => default_plant.as_str(),
                    };
                    match self.last_window.get(key) {
                        Some(w) if w.k == k => Outcome::Scored(WindowRef::Cached(Arc::new(w.clone()))),
                        _ => {
                            return Err(Error::Model(format!(
                                "internal: window {k} of plant '{key}' scoring row {row} is neither new nor the cached one"
                            )))
                        }
                    }
                }
            };
        }
        if let Some(res) = &results {
            for (key, slot, k) in newest {
                let errors = res.sensor_errors_of(slot).to_vec();
                self.last_window.insert(key, LastWindow { k, score: res.scores[slot], errors });
            }
        }

        // 4. The output batch.
        let mut aggregate = aggregate;
        if let Some(agg) = aggregate.as_deref_mut() {
            agg.add_windows(windows_scored as u64);
            for w in &warnings {
                agg.add_warning(w);
            }
        }
        let mut evidence = Evidence::default();
        let out = self.build_output(
            &outcome,
            results.as_ref(),
            plants.as_ref(),
            times.as_ref(),
            &matrix,
            aggregate.as_deref_mut(),
            &mut evidence,
        )?;
        if let Some(agg) = aggregate {
            agg.add_evidence(&evidence);
        }
        let version = self.model.version().to_string();
        let transitions = self.incidents.apply(&evidence, &version);
        self.transitions.extend(transitions);
        let mut counts = (0, 0, 0);
        for o in &outcome {
            match o {
                Outcome::Scored(_) => counts.0 += 1,
                Outcome::Warmup => counts.1 += 1,
                Outcome::Quarantined(_) => counts.2 += 1,
                Outcome::Context => {}
            }
        }
        self.warnings.extend(warnings.iter().cloned());
        Ok(ScoreOutcome {
            warnings,
            rows_flagged: out.1,
            batch: out.0,
            windows_scored,
            rows_scored: counts.0,
            rows_warmup: counts.1,
            rows_quarantined: counts.2,
        })
    }

    fn build_output(
        &self,
        outcome: &[Outcome],
        results: Option<&super::score::WindowScores>,
        plants: Option<&arrow_array::StringArray>,
        times: Option<&arrow_array::PrimitiveArray<arrow_array::types::TimestampMicrosecondType>>,
        matrix: &SensorMatrix,
        mut aggregate: Option<&mut BatchAggregate>,
        evidence: &mut Evidence,
    ) -> Result<(RecordBatch, usize)> {
        // Reused per row for the aggregate.
        let (mut row_errors, mut row_values, mut named) = (Vec::new(), Vec::new(), Vec::new());
        let names = self.model.sensors.sensors();
        let f = names.len();
        let rows = outcome.iter().filter(|o| !matches!(o, Outcome::Context)).count();
        let threshold = self.threshold();
        let thresholds = self.model.thresholds();
        let sensor_thresholds = &thresholds.sensors;
        let version = self.model.version();
        let mut plant_b = StringBuilder::with_capacity(rows, rows * 8);
        let mut time_b = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone(UTC);
        let mut status_b = StringBuilder::with_capacity(rows, rows * 8);
        let mut score_b = Float64Builder::with_capacity(rows);
        let mut flag_b = BooleanBuilder::with_capacity(rows);
        let mut thr_b = Float64Builder::with_capacity(rows);
        let mut top_b = StringBuilder::with_capacity(rows, rows * 24);
        let mut anom_b = StringBuilder::with_capacity(rows, rows * 4);
        let mut novel_b = StringBuilder::with_capacity(rows, 0);
        let mut reason_b = StringBuilder::new();
        let mut version_b = StringBuilder::with_capacity(rows, rows * version.len());
        let mut error_b: Vec<Float64Builder> = (0..f).map(|_| Float64Builder::with_capacity(rows)).collect();
        let mut flagged = 0;
        let mut order: Vec<usize> = (0..f).collect();
        let mut text = String::new();
        let default_plant = self.model.sensors.plant();

        for (i, o) in outcome.iter().enumerate() {
            if matches!(o, Outcome::Context) {
                continue;
            }
            let plant = match plants {
                Some(p) if p.is_null(i) => {
                    plant_b.append_null();
                    ""
                }
                Some(p) => {
                    plant_b.append_value(p.value(i));
                    p.value(i)
                }
                None => {
                    plant_b.append_value(default_plant);
                    default_plant
                }
            };
            let event_time_s = match times {
                Some(t) if t.is_valid(i) => {
                    time_b.append_value(t.value(i));
                    t.value(i) as f64 / 1e6
                }
                _ => {
                    time_b.append_null();
                    f64::NAN
                }
            };
            version_b.append_value(version);
            let (score, errors): (f32, &[f32]) = match o {
                Outcome::Scored(WindowRef::Fresh(slot)) => {
                    let r = results.expect("fresh windows were scored");
                    (r.scores[*slot], r.sensor_errors_of(*slot))
                }
                Outcome::Scored(WindowRef::Cached(w)) => (w.score, &w.errors[..]),
                Outcome::Warmup | Outcome::Quarantined(_) => {
                    status_b.append_value(if matches!(o, Outcome::Warmup) { STATUS_WARMUP } else { STATUS_QUARANTINED });
                    match o {
                        Outcome::Quarantined(r) => {
                            reason_b.append_value(r);
                            if let Some(agg) = aggregate.as_deref_mut() {
                                agg.record_quarantined(r);
                            }
                        }
                        _ => {
                            reason_b.append_null();
                            if let Some(agg) = aggregate.as_deref_mut() {
                                agg.record_warmup(event_time_s);
                            }
                        }
                    }
                    score_b.append_null();
                    flag_b.append_null();
                    thr_b.append_null();
                    top_b.append_null();
                    anom_b.append_null();
                    novel_b.append_null();
                    error_b.iter_mut().for_each(|b| b.append_null());
                    continue;
                }
                Outcome::Context => unreachable!(),
            };
            status_b.append_value(STATUS_SCORED);
            reason_b.append_null();
            let score = thresholds.window_score(score, errors);
            let flag = score > threshold;
            score_b.append_value(score);
            flag_b.append_value(flag);
            thr_b.append_value(threshold);
            for (b, &e) in error_b.iter_mut().zip(errors) {
                b.append_value(f64::from(e));
            }
            // Sensors by decreasing error (ties by model order), for the top list and the flagged list.
            order.sort_by(|&a, &b| errors[b].total_cmp(&errors[a]).then(a.cmp(&b)));
            text.clear();
            for (n, &j) in order.iter().take(TOP_SENSORS).enumerate() {
                if n > 0 {
                    text.push(',');
                }
                text.push_str(&names[j]);
            }
            top_b.append_value(&text);
            named.clear();
            if flag {
                flagged += 1;
                named.extend(order.iter().copied().filter(|&j| f64::from(errors[j]) > sensor_thresholds[j]));
                if named.is_empty() {
                    named.push(order[0]);
                }
                text.clear();
                for (n, &j) in named.iter().enumerate() {
                    if n > 0 {
                        text.push(',');
                    }
                    text.push_str(&names[j]);
                }
                anom_b.append_value(&text);
            } else {
                anom_b.append_value("");
            }
            // Sensors constant in training whose reading has moved: named, not scored.
            text.clear();
            for &(j, trained) in &self.pinned {
                if moved(matrix.value(i, j), trained) {
                    if !text.is_empty() {
                        text.push(',');
                    }
                    text.push_str(&names[j]);
                }
            }
            novel_b.append_value(&text);
            evidence.record(plant, event_time_s, flag, f64::from(score), &named);
            if let Some(agg) = aggregate.as_deref_mut() {
                agg.note_score(f64::from(score));
                row_errors.clear();
                row_errors.extend(errors.iter().map(|&e| f64::from(e)));
                row_values.clear();
                row_values.extend((0..f).map(|j| matrix.value(i, j)));
                agg.record_scored(flag, &named, &row_errors, &row_values, event_time_s);
            }
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(plant_b.finish()),
            Arc::new(time_b.finish()),
            Arc::new(status_b.finish()),
            Arc::new(score_b.finish()),
            Arc::new(flag_b.finish()),
            Arc::new(thr_b.finish()),
            Arc::new(top_b.finish()),
            Arc::new(anom_b.finish()),
            Arc::new(novel_b.finish()),
            Arc::new(reason_b.finish()),
            Arc::new(version_b.finish()),
        ];
        columns.extend(error_b.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        let out = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| Error::Schema(format!("building the scored batch: {e}")))?;
        Ok((out, flagged))
    }
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use arrow_array::cast::AsArray;
    use arrow_array::types::Float64Type;
    use arrow_array::{BooleanArray, Float64Array};

    use super::*;
    use crate::model::fit::fit;
    use crate::model::fit::tests::{toy_batch, toy_sensors};
    use crate::model::train::tests::{plant_series, small_config};
    use crate::model::ModelConfig;

    fn trained(cfg: &ModelConfig) -> ModelArtifact {
        let values = plant_series(1200, 11);
        fit(&[toy_batch(&values, 0, Some("toy"))], None, &toy_sensors(), None, cfg, |_| ControlFlow::Continue(()))
            .unwrap()
    }

    fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
        b.column_by_name(name).unwrap().as_string::<i32>().iter().map(|s| s.map(str::to_string)).collect()
    }

    fn floats(b: &RecordBatch, name: &str) -> Vec<Option<f64>> {
        b.column_by_name(name).unwrap().as_primitive::<Float64Type>().iter().collect()
    }

    /// Asserts that `parts`, in order, are exactly `whole` cut into pieces.
    fn assert_pieces_of(whole: &RecordBatch, parts: &[RecordBatch], what: &str) {
        let mut at = 0;
        for p in parts {
            assert_eq!(p, &whole.slice(at, p.num_rows()), "{what}: rows from {at}");
            at += p.num_rows();
        }
        assert_eq!(at, whole.num_rows(), "{what}");
    }

    /// (status, score, top_sensors) of the rows of `plant`, in order.
    fn rows_of(b: &RecordBatch, plant: &str) -> Vec<(Option<String>, Option<f64>, Option<String>)> {
        let (plants, status, score, top) = (strings(b, "plant"), strings(b, "status"), floats(b, "score"), strings(b, "top_sensors"));
        (0..b.num_rows())
            .filter(|&i| plants[i].as_deref() == Some(plant))
            .map(|i| (status[i].clone(), score[i], top[i].clone()))
            .collect()
    }

    /// Slices `b` into chunks of the given sizes.
    fn chunks(b: &RecordBatch, sizes: &[usize]) -> Vec<RecordBatch> {
        let mut at = 0;
        sizes
            .iter()
            .map(|&n| {
                let s = b.slice(at, n);
                at += n;
                s
            })
            .collect()
    }

    #[test]
    fn streaming_in_any_chunking_equals_one_shot_for_every_stride() {
        for stride in [1, 3] {
            // Levels low enough for the 240 held-out rows at stride 3 (80 windows).
            let cfg = ModelConfig {
                epochs: 2,
                stride,
                threshold_level: 0.98,
                sensor_threshold_level: 0.98,
                ..small_config()
            };
            let art = trained(&cfg);
            let dir = tempfile::tempdir().unwrap();
            art.publish(&dir.path().join("m")).unwrap();
            let test = toy_batch(&plant_series(400, 99), 10_000, Some("toy"));

            let mut det = Detector::load(&dir.path().join("m"), "cpu", None).unwrap();
            let whole = det.score(&test).unwrap();
            assert_eq!(whole.batch.num_rows(), 400);
            assert_eq!(whole.rows_warmup, cfg.window - 1);
            assert_eq!(whole.rows_scored, 400 - (cfg.window - 1));
            assert_eq!(whole.windows_scored, (400 - cfg.window) / stride + 1);
            for sizes in [vec![1; 400], vec![7, 0, 100, 3, 290], vec![15, 1, 384]] {
                det.reset_stream();
                let parts: Vec<RecordBatch> =
                    chunks(&test, &sizes).iter().map(|c| det.score(c).unwrap().batch).collect();
                assert_pieces_of(&whole.batch, &parts, &format!("stride {stride}, chunks {sizes:?}"));
            }
        }
    }

    #[test]
    fn rows_get_status_scores_flags_and_named_sensors() {
        let cfg = ModelConfig { epochs: 6, ..small_config() };
        let art = trained(&cfg);
        let version = art.version().to_string();
        let mut det = Detector::from_artifact(art, Device::Cpu).unwrap();
        let threshold = det.threshold();
        let mut values = plant_series(300, 42);
        for t in 150..220 {
            values[t * 5 + 4] += 0.6; // analyser AIT far out of its band
        }
        let mut test = toy_batch(&values, 0, Some("toy"));
        // Row 40 has a NaN in FIT: quarantined, and it does not enter the windows.
        let mut cols = test.columns().to_vec();
        let mut fit_col: Vec<f64> = cols[4].as_primitive::<Float64Type>().values().to_vec();
        fit_col[40] = f64::NAN;
        cols[4] = Arc::new(Float64Array::from(fit_col));
        test = RecordBatch::try_new(test.schema(), cols).unwrap();

        let out = det.score(&test).unwrap();
        let b = &out.batch;
        assert_eq!(b.schema(), det.output_schema());
        let status = strings(b, "status");
        assert_eq!(status[0].as_deref(), Some("warmup"));
        assert_eq!(status[15].as_deref(), Some("scored"));
        assert_eq!(status[40].as_deref(), Some("quarantined"));
        assert_eq!(strings(b, "reason")[40].as_deref(), Some("nan:FIT"));
        assert_eq!(out.rows_quarantined, 1);
        assert_eq!(out.rows_warmup, 15);
        assert!(strings(b, "model_version").iter().all(|v| v.as_deref() == Some(version.as_str())));
        // Row 41's window is rows 25..=41 without 40: 16 valid rows.
        assert!(floats(b, "score")[41].is_some());

        let scores = floats(b, "score");
        let flags: Vec<Option<bool>> = b.column_by_name("flag").unwrap().as_any().downcast_ref::<BooleanArray>().unwrap().iter().collect();
        for i in 0..300 {
            assert_eq!(flags[i], scores[i].map(|s| s > threshold), "row {i}");
        }
        let inside = 170..220; // windows fully inside the offset
        let flagged_inside = inside.clone().filter(|&i| flags[i] == Some(true)).count();
        assert!(flagged_inside >= 45, "{flagged_inside} of 50 anomalous rows flagged");
        let normal_flags = (15..140).filter(|&i| flags[i] == Some(true)).count();
        assert!(normal_flags <= 6, "{normal_flags} normal rows flagged");
        let anomalous = strings(b, "anomalous_sensors");
        let top = strings(b, "top_sensors");
        for i in inside.clone() {
            if flags[i] == Some(true) {
                assert!(anomalous[i].as_deref().unwrap().split(',').any(|s| s == "AIT"), "row {i}: {:?}", anomalous[i]);
            }
            assert_eq!(top[i].as_deref().unwrap().split(',').count(), 3);
        }
        assert_eq!(anomalous[20].as_deref(), if flags[20] == Some(true) { anomalous[20].as_deref() } else { Some("") });
        // The score is the thresholds' score of the per-sensor errors (mean: their mean).
        let errs: Vec<Vec<Option<f64>>> = toy_sensors().sensors().iter().map(|s| floats(b, &format!("error_{s}"))).collect();
        let row: Vec<f32> = errs.iter().map(|c| c[100].unwrap() as f32).collect();
        let mean = row.iter().sum::<f32>() / row.len() as f32;
        let want = det.model().thresholds().window_score(mean, &row);
        assert!((want - scores[100].unwrap()).abs() < 1e-6 * want, "{want} vs {:?}", scores[100]);

        // An override threshold applies to every scored row.
        det.set_threshold(Some(0.0)).unwrap();
        det.reset_stream();
        let all = det.score(&test).unwrap();
        assert_eq!(all.rows_flagged, all.rows_scored);
        assert!(det.set_threshold(Some(f64::NAN)).is_err());
    }

    #[test]
    fn the_aggregate_accounts_for_every_output_row() {
        let cfg = ModelConfig { epochs: 2, ..small_config() };
        let mut det = Detector::from_artifact(trained(&cfg), Device::Cpu).unwrap();
        det.set_threshold(Some(0.0)).unwrap(); // every scored row flagged, so every row names sensors
        let mut values = plant_series(60, 3);
        values[30 * 5 + 1] = f32::NAN;
        let test = toy_batch(&values, 100, Some("toy"));
        let mut agg = BatchAggregate::new(det.sensors());
        let out = det.score_into(&test, Some(&mut agg)).unwrap();
        assert_eq!(agg.rows_scored(), out.rows_scored as u64);
        assert_eq!(agg.rows_warmup(), 15);
        assert_eq!(agg.quarantined_by_reason().get("nan:P"), Some(&1));
        assert_eq!(agg.windows_ready(), out.windows_scored as u64);
        assert_eq!(agg.anomalies(), out.rows_flagged as u64);
        assert_eq!(agg.latest_event_time_s(), Some(159.0));
        let named: u64 = strings(&out.batch, "anomalous_sensors")
            .iter()
            .flatten()
            .map(|s| s.split(',').filter(|x| !x.is_empty()).count() as u64)
            .sum();
        assert_eq!(agg.anomalies_by_sensor().iter().sum::<u64>(), named);
        let other = SensorSet::from_text("plant: x\nsensors: [a]\nstages:\n  s: [a]\n").unwrap();
        assert!(det.score_into(&test, Some(&mut BatchAggregate::new(&other))).is_err());
    }

    #[test]
    fn context_rows_fill_windows_and_are_not_output() {
        let cfg = ModelConfig { epochs: 2, ..small_config() };
        let mut det = Detector::from_artifact(trained(&cfg), Device::Cpu).unwrap();
        let test = toy_batch(&plant_series(100, 7), 0, None);
        let whole = det.score(&test).unwrap().batch;

        // The second half scored alone after a reset, with the previous W-1 rows as context.
        det.reset_stream();
        let w = cfg.window;
        let tail = test.slice(50 - (w - 1), 100 - 50 + w - 1);
        let flags = BooleanArray::from((0..tail.num_rows()).map(|i| i < w - 1).collect::<Vec<_>>());
        let mut fields = tail.schema().fields().to_vec();
        fields.push(Arc::new(Field::new("_tw_context", DataType::Boolean, true)));
        let mut cols = tail.columns().to_vec();
        cols.push(Arc::new(flags));
        let with_context = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
        let out = det.score(&with_context).unwrap();
        assert_eq!(out.batch.num_rows(), 50);
        assert_eq!(out.windows_scored, 50, "windows ending at context rows are not computed");
        assert_eq!(out.batch, whole.slice(50, 50));
        // No plant column: rows belong to the model's plant.
        assert_eq!(strings(&out.batch, "plant")[0].as_deref(), Some("toy"));
    }

    #[test]
    fn plants_are_separate_streams_and_out_of_order_rows_are_quarantined() {
        let cfg = ModelConfig { epochs: 2, ..small_config() };
        let mut det = Detector::from_artifact(trained(&cfg), Device::Cpu).unwrap();
        let a = toy_batch(&plant_series(60, 1), 0, Some("a"));
        let b = toy_batch(&plant_series(60, 2), 0, Some("b"));
        let alone_a = det.score(&a).unwrap().batch;
        det.reset_stream();
        let alone_b = det.score(&b).unwrap().batch;
        det.reset_stream();
        // Interleaved: each plant still gets its own windows.
        let mixed = [a.slice(0, 30), b.slice(0, 30), a.slice(30, 30), b.slice(30, 30)];
        let outs: Vec<RecordBatch> = mixed.iter().map(|m| det.score(m).unwrap().batch).collect();
        let joined = |plant: &str| outs.iter().flat_map(|o| rows_of(o, plant)).collect::<Vec<_>>();
        assert_eq!(joined("a"), rows_of(&alone_a, "a"));
        assert_eq!(joined("b"), rows_of(&alone_b, "b"));

        // A row earlier than its plant's previous row is quarantined and skipped.
        let late = toy_batch(&plant_series(5, 3), 30, Some("a"));
        let out = det.score(&late).unwrap().batch;
        assert!(strings(&out, "reason").iter().all(|r| r.as_deref() == Some(REASON_OUT_OF_ORDER)));
        // A second row at the time of the previous one is a duplicate; the first is kept.
        let again = toy_batch(&plant_series(1, 4), 59, Some("a"));
        let out = det.score(&again).unwrap().batch;
        assert_eq!(strings(&out, "reason"), [Some(REASON_DUPLICATE.to_string())]);
    }

    #[test]
    fn reload_swaps_models_and_survives_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let cfg = ModelConfig { epochs: 1, ..small_config() };
        let first = trained(&cfg);
        first.publish(&path).unwrap();
        let mut det = Detector::load(&path, "cpu", None).unwrap();
        assert!(det.load_seconds() > 0.0);
        let test = toy_batch(&plant_series(40, 5), 0, Some("toy"));
        det.score(&test.slice(0, 20)).unwrap();
        assert!(!det.reload_if_changed().unwrap(), "nothing changed");

        // A new model: swapped in, the stream carries over (same sensors and window).
        let second = trained(&ModelConfig { seed: 9, ..cfg.clone() });
        second.publish(&path).unwrap();
        assert!(det.reload_if_changed().unwrap());
        assert_eq!(det.version(), second.version());
        assert_eq!(det.reloads(), 1);
        let after = det.score(&test.slice(20, 20)).unwrap();
        assert_eq!(after.rows_warmup, 0, "carried rows survive a reload");

        // A corrupt file behind the path: an error once, the old model keeps scoring.
        let real = std::fs::canonicalize(&path).unwrap();
        let bad_dir = dir.path().join("bad");
        std::fs::create_dir(&bad_dir).unwrap();
        for f in [MANIFEST_FILE, WEIGHTS_FILE] {
            std::fs::copy(real.join(f), bad_dir.join(f)).unwrap();
        }
        let mut bytes = std::fs::read(bad_dir.join(WEIGHTS_FILE)).unwrap();
        bytes.truncate(bytes.len() - 10);
        std::fs::write(bad_dir.join(WEIGHTS_FILE), bytes).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&bad_dir, &path).unwrap();
        let err = det.reload_if_changed().unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(det.last_reload_error().is_some());
        assert!(!det.reload_if_changed().unwrap(), "the same bad file is not retried");
        assert_eq!(det.version(), second.version());
        assert_eq!(det.score(&toy_batch(&plant_series(5, 6), 100, Some("toy"))).unwrap().rows_scored, 5);

        // Fixed: the next good model loads.
        first.publish(&path).unwrap();
        assert!(det.reload_if_changed().unwrap());
        assert_eq!(det.version(), first.version());
        assert!(det.last_reload_error().is_none());
    }

    #[test]
    fn schema_problems_are_errors_naming_the_column() {
        let cfg = ModelConfig { epochs: 1, ..small_config() };
        let mut det = Detector::from_artifact(trained(&cfg), Device::Cpu).unwrap();
        let test = toy_batch(&plant_series(5, 1), 0, Some("toy"));
        let cols: Vec<ArrayRef> = test.columns().iter().take(3).cloned().collect();
        let fields: Vec<_> = test.schema().fields().iter().take(3).cloned().collect();
        let missing = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
        let err = det.score(&missing).unwrap_err();
        assert!(matches!(err, Error::Schema(_)) && err.to_string().contains("P, FIT, MV, AIT"), "{err}");
        let mut cols = test.columns().to_vec();
        cols[0] = Arc::new(arrow_array::Int32Array::from(vec![1; 5]));
        let mut fields = test.schema().fields().to_vec();
        fields[0] = Arc::new(Field::new("plant", DataType::Int32, true));
        let numeric_plant = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
        // An integer plant column casts to strings; a struct would not.
        assert!(det.score(&numeric_plant).is_ok());
    }
}
