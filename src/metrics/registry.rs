//! The driver's Prometheus registry: exactly the metrics of the contract (DESIGN.md), plus a few more
//! for operators, every sensor and stage series created up front so dashboards and alerts see them
//! from the first scrape.
//!
//! What each batch moves (`apply_batch`):
//! - `ae_rows_processed_total` += every row the batch took in: scored + warm-up + quarantined (context
//!   rows carried from the previous batch were counted then, and are not counted again);
//!   `ae_rows_warmup_total` and `ae_rows_quarantined_total{reason}` count their part of it.
//! - `ae_anomalies_last_batch` = flagged rows; `ae_anomalies_in_batch{stage}` = flagged rows with an
//!   anomalous sensor in that stage (a row counts once per stage), every stage set (0 where none);
//!   `ae_anomalies_total{sensor,stage}` += flagged rows naming that sensor.
//! - `anomalous_sensor_event{sensor}` = the sensor's value on the latest flagged row of the batch that
//!   named it, else 0, for every sensor.
//! - `ae_reconstruction_error{sensor}` absorbs the batch's bucket counts (a histogram built from
//!   pre-bucketed counts, see `ErrorHistogram`).
//! - `ae_sequences_ready` = windows ready in the batch; `ae_last_event_timestamp_seconds` = the latest
//!   event time seen so far (a batch without rows leaves it).
//!
//! Consistency: one batch's updates are applied under a write lock and a scrape gathers under a read
//! lock, so a scrape never sees half a batch; both hold it for microseconds.
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use super::aggregate::{BatchAggregate, ERROR_BUCKETS, ERROR_SLOTS};
use crate::incidents::{IncidentTracker, Transition, TransitionKind};
use crate::sensors::SensorSet;
use crate::{Error, Result};

/// Buckets of `ae_batch_processing_seconds` (not fixed by the contract): micro-batches take from tens
/// of milliseconds to minutes.
pub const BATCH_SECONDS_BUCKETS: [f64; 12] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Buckets of `ae_incident_duration_seconds`: incidents last from seconds to hours.
pub const INCIDENT_DURATION_BUCKETS: [f64; 10] = [10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0];

/// Distinct `reason` label values kept for `ae_rows_quarantined_total`; rows with further reasons are
/// counted under `reason="other"` so that free-text reasons cannot grow the series without bound.
pub const MAX_QUARANTINE_REASONS: usize = 256;
pub const OTHER_REASON: &str = "other";

/// `ae_reconstruction_error{sensor}` built from cumulative per-sensor bucket counts: the prometheus
/// crate's `Histogram` only takes single observations, and the executors send counts.
struct ErrorHistogram {
    desc: Desc,
    sensors: Vec<String>,
    state: Mutex<ErrorHistogramState>,
}

struct ErrorHistogramState {
    slots: Vec<[u64; ERROR_SLOTS]>,
    sum: Vec<f64>,
}

impl ErrorHistogram {
    const NAME: &'static str = "ae_reconstruction_error";

    fn new(sensors: &SensorSet) -> Result<Self> {
        let desc = Desc::new(
            Self::NAME.into(),
            "Per-sensor reconstruction error of scored rows (mean squared error over the window, scaled space)".into(),
            vec!["sensor".into()],
            Default::default(),
        )
        .map_err(prom_err)?;
        let n = sensors.len();
        Ok(ErrorHistogram {
            desc,
            sensors: sensors.sensors().to_vec(),
            state: Mutex::new(ErrorHistogramState { slots: vec![[0; ERROR_SLOTS]; n], sum: vec![0.0; n] }),
        })
    }

    fn absorb(&self, agg: &BatchAggregate) {
        let mut state = lock(&self.state);
        let ErrorHistogramState { slots, sum } = &mut *state;
        for ((mine, theirs), (s, add)) in
            slots.iter_mut().zip(agg.error_buckets()).zip(sum.iter_mut().zip(agg.error_sum()))
        {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
            *s += add;
        }
    }
}

impl Collector for ErrorHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (slots, sums) = {
            let state = lock(&self.state);
            (state.slots.clone(), state.sum.clone())
        };
        let metrics = self
            .sensors
            .iter()
            .zip(slots.iter().zip(&sums))
            .map(|(sensor, (counts, &sum))| {
                let mut cumulative = 0;
                let buckets = ERROR_BUCKETS
                    .iter()
                    .zip(counts)
                    .map(|(&bound, &c)| {
                        cumulative += c;
                        let mut b = proto::Bucket::default();
                        b.set_upper_bound(bound);
                        b.set_cumulative_count(cumulative);
                        b
                    })
                    .collect();
                let mut h = proto::Histogram::default();
                h.set_bucket(buckets); // the encoder writes +Inf from the sample count
                h.set_sample_count(counts.iter().sum());
                h.set_sample_sum(sum);
                let mut label = proto::LabelPair::default();
                label.set_name("sensor".into());
                label.set_value(sensor.clone());
                let mut m = proto::Metric::from_label(vec![label]);
                m.set_histogram(h);
                m
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(Self::NAME.into());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        family.set_metric(metrics);
        vec![family]
    }
}

/// What the write lock guards besides the metrics themselves.
struct State {
    reasons: HashSet<String>,
    model_info: Option<(String, String)>,
    latest_event_time_s: Option<f64>,
}

pub struct MetricsRegistry {
    sensors: SensorSet,
    registry: Registry,
    state: RwLock<State>,
    /// Bumped under the write lock by every change; a scrape with nothing new reuses the last text
    /// (between batches a scrape storm costs a copy, not a render).
    generation: AtomicU64,
    rendered: Mutex<Option<(u64, String)>>,
    // contract metrics
    anomalous_sensor_event: Vec<Gauge>,
    reconstruction_error: Arc<ErrorHistogram>,
    anomalies_in_batch: Vec<IntGauge>,
    anomalies_total: Vec<IntCounter>,
    anomalies_last_batch: IntGauge,
    batches_processed: IntCounter,
    batch_seconds: Histogram,
    model_reloads: IntCounter,
    model_load_duration: Gauge,
    rows_processed: IntCounter,
    sequences_ready: IntGauge,
    // additions
    rows_quarantined: IntCounterVec,
    rows_warmup: IntCounter,
    model_load_failures: IntCounter,
    model_info: GaugeVec,
    last_event_timestamp: Gauge,
    rows_carried: IntGauge,
    threshold: Gauge,
    score_max_last_batch: Gauge,
    last_row_timestamp: Gauge,
    // incidents
    incidents_open: IntGauge,
    incident_active: Vec<IntGauge>,
    incident_sensor_active: Vec<IntGauge>,
    incident_open_seconds: Gauge,
    incidents_total: Vec<IntCounter>,
    incident_duration: Histogram,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRegistry").field("plant", &self.sensors.plant()).finish_non_exhaustive()
    }
}

impl MetricsRegistry {
    pub fn new(sensors: &SensorSet) -> Result<Self> {
        let registry = Registry::new();
        let stage_names = sensors.stages();

        let sensor_event = GaugeVec::new(
            Opts::new("anomalous_sensor_event", "The sensor's value when it is flagged anomalous in the latest batch, else 0"),
            &["sensor"],
        )
        .map_err(prom_err)?;
        let anomalous_sensor_event = sensors.sensors().iter().map(|s| sensor_event.with_label_values(&[s])).collect();

        let reconstruction_error = Arc::new(ErrorHistogram::new(sensors)?);

        let in_batch = IntGaugeVec::new(
            Opts::new("ae_anomalies_in_batch", "Anomalous rows in the latest batch, per stage (a row counts once per stage)"),
            &["stage"],
        )
        .map_err(prom_err)?;
        let anomalies_in_batch = stage_names.iter().map(|p| in_batch.with_label_values(&[p])).collect();

        let total = IntCounterVec::new(
            Opts::new("ae_anomalies_total", "Anomalous rows naming this sensor, cumulative"),
            &["sensor", "stage"],
        )
        .map_err(prom_err)?;
        let anomalies_total = (0..sensors.len())
            .map(|i| total.with_label_values(&[&sensors.sensors()[i], &stage_names[sensors.stage_index(i)]]))
            .collect();

        let int_gauge = |name: &str, help: &str| IntGauge::new(name, help).map_err(prom_err);
        let gauge = |name: &str, help: &str| Gauge::new(name, help).map_err(prom_err);
        let counter = |name: &str, help: &str| IntCounter::new(name, help).map_err(prom_err);

        let anomalies_last_batch = int_gauge("ae_anomalies_last_batch", "Anomalous rows in the latest batch")?;
        let batches_processed = counter("ae_batches_processed_total", "Micro-batches processed")?;
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new("ae_batch_processing_seconds", "Time per batch, preprocessing and inference included")
                .buckets(BATCH_SECONDS_BUCKETS.to_vec()),
        )
        .map_err(prom_err)?;
        let model_reloads = counter("ae_model_reloads_total", "Times the model file was (re)loaded")?;
        let model_load_duration = gauge("ae_model_load_duration_seconds", "Duration of the latest model load")?;
        let rows_processed =
            counter("ae_rows_processed_total", "Rows processed: scored, warm-up and quarantined rows the batches took in")?;
        let sequences_ready =
            int_gauge("ae_sequences_ready", "Windows ready for inference in the latest batch")?;
        let rows_quarantined = IntCounterVec::new(
            Opts::new("ae_rows_quarantined_total", "Rows quarantined (not scored), by reason"),
            &["reason"],
        )
        .map_err(prom_err)?;
        let rows_warmup =
            counter("ae_rows_warmup_total", "Rows that arrived before their plant had a full window (not scored)")?;
        let model_load_failures =
            counter("ae_model_load_failures_total", "Model files rejected (the previous model kept scoring)")?;
        let model_info = GaugeVec::new(
            Opts::new("ae_model_info", "The model in use: 1 for its version and checksum"),
            &["version", "checksum"],
        )
        .map_err(prom_err)?;
        let last_event_timestamp =
            gauge("ae_last_event_timestamp_seconds", "Event time of the latest row processed (Unix seconds)")?;
        let rows_carried =
            int_gauge("ae_rows_carried", "Rows carried to the next batch to complete windows (last W-1 rows per plant)")?;
        let threshold = gauge("ae_threshold", "Window score above which a row is flagged")?;
        let score_max_last_batch = gauge("ae_score_max_last_batch", "Largest score of a row in the latest batch (0 without scored rows)")?;
        let last_row_timestamp = gauge(
            "ae_last_row_timestamp_seconds",
            "Wall-clock time (Unix seconds) the job last processed a batch with rows: data freshness",
        )?;
        let incidents_open = int_gauge("ae_incidents_open", "Incidents open now (all plants)")?;
        let active = IntGaugeVec::new(Opts::new("ae_incident_active", "1 while an open incident involves the stage"), &["stage"])
            .map_err(prom_err)?;
        let incident_active = stage_names.iter().map(|p| active.with_label_values(&[p])).collect();
        let sensor_active = IntGaugeVec::new(
            Opts::new("ae_incident_sensor_active", "1 while an open incident involves the sensor"),
            &["sensor", "stage"],
        )
        .map_err(prom_err)?;
        let incident_sensor_active = (0..sensors.len())
            .map(|i| sensor_active.with_label_values(&[&sensors.sensors()[i], &stage_names[sensors.stage_index(i)]]))
            .collect();
        let incident_open_seconds =
            gauge("ae_incident_open_seconds", "Event-time duration so far of the longest open incident (0 when none)")?;
        let inc_total = IntCounterVec::new(
            Opts::new("ae_incidents_total", "Incidents opened that involve the stage (one spanning two stages counts in each)"),
            &["stage"],
        )
        .map_err(prom_err)?;
        let incidents_total = stage_names.iter().map(|p| inc_total.with_label_values(&[p])).collect();
        let incident_duration = Histogram::with_opts(
            HistogramOpts::new("ae_incident_duration_seconds", "Duration of closed incidents, first to last flag")
                .buckets(INCIDENT_DURATION_BUCKETS.to_vec()),
        )
        .map_err(prom_err)?;

        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(sensor_event),
            Box::new(ArcCollector(reconstruction_error.clone())),
            Box::new(in_batch),
            Box::new(total),
            Box::new(anomalies_last_batch.clone()),
            Box::new(batches_processed.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(model_reloads.clone()),
            Box::new(model_load_duration.clone()),
            Box::new(rows_processed.clone()),
            Box::new(sequences_ready.clone()),
            Box::new(rows_quarantined.clone()),
            Box::new(rows_warmup.clone()),
            Box::new(model_load_failures.clone()),
            Box::new(model_info.clone()),
            Box::new(last_event_timestamp.clone()),
            Box::new(rows_carried.clone()),
            Box::new(threshold.clone()),
            Box::new(score_max_last_batch.clone()),
            Box::new(last_row_timestamp.clone()),
            Box::new(incidents_open.clone()),
            Box::new(active),
            Box::new(sensor_active),
            Box::new(incident_open_seconds.clone()),
            Box::new(inc_total),
            Box::new(incident_duration.clone()),
        ];
        for c in collectors {
            registry.register(c).map_err(prom_err)?;
        }

        Ok(MetricsRegistry {
            sensors: sensors.clone(),
            registry,
            state: RwLock::new(State { reasons: HashSet::new(), model_info: None, latest_event_time_s: None }),
            generation: AtomicU64::new(0),
            rendered: Mutex::new(None),
            anomalous_sensor_event,
            reconstruction_error,
            anomalies_in_batch,
            anomalies_total,
            anomalies_last_batch,
            batches_processed,
            batch_seconds,
            model_reloads,
            model_load_duration,
            rows_processed,
            sequences_ready,
            rows_quarantined,
            rows_warmup,
            model_load_failures,
            model_info,
            last_event_timestamp,
            rows_carried,
            threshold,
            score_max_last_batch,
            last_row_timestamp,
            incidents_open,
            incident_active,
            incident_sensor_active,
            incident_open_seconds,
            incidents_total,
            incident_duration,
        })
    }

    pub fn sensors(&self) -> &SensorSet {
        &self.sensors
    }

    /// Applies one micro-batch's merged aggregate; `batch_seconds` is its wall time, preprocessing and
    /// inference included. Checks come first: on error nothing has moved.
    pub fn apply_batch(&self, agg: &BatchAggregate, batch_seconds: f64) -> Result<()> {
        agg.check_same_sensors(&self.sensors)?;
        if !(batch_seconds.is_finite() && batch_seconds >= 0.0) {
            return Err(Error::Input(format!("batch duration must be a finite number of seconds >= 0, got {batch_seconds}")));
        }
        let mut state = self.change();

        self.batches_processed.inc();
        self.batch_seconds.observe(batch_seconds);
        self.rows_processed.inc_by(agg.rows_in());
        self.rows_warmup.inc_by(agg.rows_warmup());
        for (reason, &count) in agg.quarantined_by_reason() {
            let label = if state.reasons.contains(reason) {
                reason.as_str()
            } else if state.reasons.len() < MAX_QUARANTINE_REASONS {
                state.reasons.insert(reason.clone());
                reason.as_str()
            } else {
                OTHER_REASON
            };
            self.rows_quarantined.with_label_values(&[label]).inc_by(count);
        }
        self.sequences_ready.set(saturating_i64(agg.windows_ready()));
        self.anomalies_last_batch.set(saturating_i64(agg.anomalies()));
        for (gauge, &n) in self.anomalies_in_batch.iter().zip(agg.anomalies_by_stage()) {
            gauge.set(saturating_i64(n));
        }
        for (counter, &n) in self.anomalies_total.iter().zip(agg.anomalies_by_sensor()) {
            counter.inc_by(n);
        }
        for (gauge, flagged) in self.anomalous_sensor_event.iter().zip(agg.flagged_values()) {
            gauge.set(flagged.map_or(0.0, |f| f.value));
        }
        self.reconstruction_error.absorb(agg);
        self.score_max_last_batch.set(agg.max_score().unwrap_or(0.0));
        if agg.rows_in() > 0 {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            self.last_row_timestamp.set(now);
        }
        if let Some(t) = agg.latest_event_time_s() {
            if state.latest_event_time_s.is_none_or(|latest| t > latest) {
                state.latest_event_time_s = Some(t);
                self.last_event_timestamp.set(t);
            }
        }
        Ok(())
    }

    /// Publishes the incident state after a batch: which stages and sensors open incidents involve, how
    /// long the longest has lasted, and the batch's transitions (incidents opened per stage, durations
    /// of those closed). The tracker must be for this registry's sensors.
    pub fn apply_incidents(&self, tracker: &IncidentTracker, transitions: &[Transition]) -> Result<()> {
        if tracker.sensors().sensors() != self.sensors.sensors() || tracker.sensors().stages() != self.sensors.stages() {
            return Err(Error::Input("incident tracker and metrics registry are for different sensor sets".into()));
        }
        let _state = self.change();
        let open = tracker.open_incidents();
        self.incidents_open.set(open.len() as i64);
        let mut stage_on = vec![false; self.incident_active.len()];
        let mut sensor_on = vec![false; self.incident_sensor_active.len()];
        for inc in &open {
            for j in inc.involved_sensors() {
                sensor_on[j] = true;
                stage_on[self.sensors.stage_index(j)] = true;
            }
        }
        for (g, on) in self.incident_active.iter().zip(stage_on) {
            g.set(on as i64);
        }
        for (g, on) in self.incident_sensor_active.iter().zip(sensor_on) {
            g.set(on as i64);
        }
        self.incident_open_seconds.set(tracker.longest_open_s());
        for tr in transitions {
            match tr.kind {
                TransitionKind::Opened => {
                    for s in tr.incident.involved_stages(&self.sensors) {
                        self.incidents_total[s].inc();
                    }
                }
                TransitionKind::Closed => self.incident_duration.observe(tr.incident.duration_s()),
                TransitionKind::Updated => {}
            }
        }
        Ok(())
    }

    /// A model was loaded (at start or on hot reload): counts it, records its load time, and makes
    /// `ae_model_info{version,checksum}` 1 for it alone.
    pub fn model_loaded(&self, version: &str, checksum: &str, load_seconds: f64) {
        let mut state = self.change();
        self.model_reloads.inc();
        self.model_load_duration.set(load_seconds);
        let current = (version.to_string(), checksum.to_string());
        if let Some((old_version, old_checksum)) = state.model_info.take() {
            if (old_version.as_str(), old_checksum.as_str()) != (version, checksum) {
                // it exists: it was created when it became current
                let _ = self.model_info.remove_label_values(&[&old_version, &old_checksum]);
            }
        }
        self.model_info.with_label_values(&[version, checksum]).set(1.0);
        state.model_info = Some(current);
    }

    /// A new model file was rejected; the current model keeps scoring.
    pub fn model_load_failed(&self) {
        let _state = self.change();
        self.model_load_failures.inc();
    }

    pub fn set_carried_rows(&self, rows: u64) {
        let _state = self.change();
        self.rows_carried.set(saturating_i64(rows));
    }

    pub fn set_threshold(&self, threshold: f64) {
        let _state = self.change();
        self.threshold.set(threshold);
    }

    /// The write lock, for a change: scrapes wait for it to finish, and the next one renders anew.
    fn change(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        let state = write(&self.state);
        self.generation.fetch_add(1, Ordering::Release);
        state
    }

    /// The text exposition format 0.0.4 of every metric.
    pub fn render(&self) -> String {
        let (generation, families) = {
            let _state = read(&self.state);
            let generation = self.generation.load(Ordering::Acquire);
            if let Some((g, text)) = &*lock(&self.rendered) {
                if *g == generation {
                    return text.clone();
                }
            }
            (generation, self.registry.gather())
        };
        let text = TextEncoder::new()
            .encode_to_string(&families)
            .expect("every family has metrics and a valid name (gather drops empty ones)");
        let mut cached = lock(&self.rendered);
        if cached.as_ref().is_none_or(|(g, _)| *g < generation) {
            *cached = Some((generation, text.clone()));
        }
        text
    }
}

/// Registers a shared collector (the registry takes ownership of what it is given).
struct ArcCollector(Arc<ErrorHistogram>);

impl Collector for ArcCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

fn prom_err(e: prometheus::Error) -> Error {
    Error::Config(format!("metrics registry: {e}"))
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// A panic while holding a lock cannot leave a metric half-written (each update is one atomic), so a
// poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The samples of an exposition text: `name{labels}` -> value, and the `# TYPE` of each family.
    fn parse(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    "NaN" => f64::NAN,
                    v => v.parse().unwrap(),
                };
                assert!(samples.insert(series.to_string(), value).is_none(), "duplicate series {series}");
            }
        }
        (samples, types)
    }

    fn rig() -> SensorSet {
        SensorSet::from_text("plant: rig\nsensors: [a, b, c]\nstages:\n  S1: [a, c]\n  S2: [b]\n  S3: []\n").unwrap()
    }

    #[test]
    fn every_series_exists_before_the_first_batch() {
        let reg = MetricsRegistry::new(&SensorSet::swat()).unwrap();
        let (samples, types) = parse(&reg.render());
        for (name, kind) in [
            ("anomalous_sensor_event", "gauge"),
            ("ae_reconstruction_error", "histogram"),
            ("ae_anomalies_in_batch", "gauge"),
            ("ae_anomalies_total", "counter"),
            ("ae_anomalies_last_batch", "gauge"),
            ("ae_batches_processed_total", "counter"),
            ("ae_batch_processing_seconds", "histogram"),
            ("ae_model_reloads_total", "counter"),
            ("ae_model_load_duration_seconds", "gauge"),
            ("ae_rows_processed_total", "counter"),
            ("ae_sequences_ready", "gauge"),
            ("ae_rows_warmup_total", "counter"),
            ("ae_model_load_failures_total", "counter"),
            ("ae_last_event_timestamp_seconds", "gauge"),
            ("ae_rows_carried", "gauge"),
            ("ae_threshold", "gauge"),
        ] {
            assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
        }
        assert_eq!(samples["anomalous_sensor_event{sensor=\"UV401\"}"], 0.0);
        assert_eq!(samples["ae_anomalies_total{sensor=\"UV401\",stage=\"P4\"}"], 0.0);
        for p in ["P1", "P2", "P3", "P4", "P5", "P6"] {
            assert_eq!(samples[&format!("ae_anomalies_in_batch{{stage=\"{p}\"}}")], 0.0);
        }
        let bounds: Vec<String> = samples
            .keys()
            .filter_map(|k| k.strip_prefix("ae_reconstruction_error_bucket{sensor=\"FIT101\",le=\""))
            .map(|s| s.trim_end_matches("\"}").to_string())
            .collect();
        let mut want = ["0.01", "0.05", "0.1", "0.5", "1", "5", "10", "50", "+Inf"].map(String::from).to_vec();
        want.sort();
        assert_eq!(bounds, want);
        assert_eq!(samples.keys().filter(|k| k.starts_with("ae_reconstruction_error_count{")).count(), 51);
        assert_eq!(samples.keys().filter(|k| k.starts_with("ae_anomalies_total{")).count(), 51);
    }

    #[test]
    fn a_batch_moves_the_metrics_as_documented() {
        let s = rig();
        let reg = MetricsRegistry::new(&s).unwrap();
        let mut agg = BatchAggregate::new(&s);
        agg.record_warmup(100.0);
        agg.record_scored(false, &[], &[0.01, 0.02, 60.0], &[1.0, 2.0, 3.0], 101.0);
        agg.record_scored(true, &[0, 2], &[0.5, 0.05, 1.0], &[4.0, 5.0, 6.0], 102.0);
        agg.record_quarantined("nan:b");
        agg.add_windows(2);
        reg.apply_batch(&agg, 0.3).unwrap();
        reg.set_carried_rows(2);
        reg.set_threshold(0.75);
        let (m, _) = parse(&reg.render());
        assert_eq!(m["ae_batches_processed_total"], 1.0);
        assert_eq!(m["ae_rows_processed_total"], 4.0);
        assert_eq!(m["ae_rows_warmup_total"], 1.0);
        assert_eq!(m["ae_rows_quarantined_total{reason=\"nan:b\"}"], 1.0);
        assert_eq!(m["ae_sequences_ready"], 2.0);
        assert_eq!(m["ae_anomalies_last_batch"], 1.0);
        assert_eq!(m["ae_anomalies_in_batch{stage=\"S1\"}"], 1.0); // a and c: one row, one stage
        assert_eq!(m["ae_anomalies_in_batch{stage=\"S2\"}"], 0.0);
        assert_eq!(m["ae_anomalies_in_batch{stage=\"S3\"}"], 0.0);
        assert_eq!(m["ae_anomalies_total{sensor=\"a\",stage=\"S1\"}"], 1.0);
        assert_eq!(m["ae_anomalies_total{sensor=\"b\",stage=\"S2\"}"], 0.0);
        assert_eq!(m["anomalous_sensor_event{sensor=\"a\"}"], 4.0);
        assert_eq!(m["anomalous_sensor_event{sensor=\"b\"}"], 0.0);
        assert_eq!(m["anomalous_sensor_event{sensor=\"c\"}"], 6.0);
        assert_eq!(m["ae_reconstruction_error_bucket{sensor=\"a\",le=\"0.01\"}"], 1.0);
        assert_eq!(m["ae_reconstruction_error_bucket{sensor=\"a\",le=\"0.5\"}"], 2.0);
        assert_eq!(m["ae_reconstruction_error_bucket{sensor=\"c\",le=\"50\"}"], 1.0);
        assert_eq!(m["ae_reconstruction_error_bucket{sensor=\"c\",le=\"+Inf\"}"], 2.0);
        assert_eq!(m["ae_reconstruction_error_count{sensor=\"c\"}"], 2.0);
        assert_eq!(m["ae_reconstruction_error_sum{sensor=\"c\"}"], 61.0);
        assert_eq!(m["ae_batch_processing_seconds_count"], 1.0);
        assert_eq!(m["ae_batch_processing_seconds_bucket{le=\"0.5\"}"], 1.0);
        assert_eq!(m["ae_batch_processing_seconds_bucket{le=\"0.25\"}"], 0.0);
        assert_eq!(m["ae_last_event_timestamp_seconds"], 102.0);
        assert_eq!(m["ae_rows_carried"], 2.0);
        assert_eq!(m["ae_threshold"], 0.75);

        // the next batch: gauges follow it, counters and the histogram accumulate
        let mut next = BatchAggregate::new(&s);
        next.record_scored(true, &[1], &[0.0, 7.0, 0.0], &[0.0, 9.5, 0.0], 50.0);
        reg.apply_batch(&next, 1.0).unwrap();
        let (m, _) = parse(&reg.render());
        assert_eq!(m["ae_batches_processed_total"], 2.0);
        assert_eq!(m["ae_rows_processed_total"], 5.0);
        assert_eq!(m["ae_anomalies_in_batch{stage=\"S1\"}"], 0.0);
        assert_eq!(m["ae_anomalies_in_batch{stage=\"S2\"}"], 1.0);
        assert_eq!(m["anomalous_sensor_event{sensor=\"a\"}"], 0.0);
        assert_eq!(m["anomalous_sensor_event{sensor=\"b\"}"], 9.5);
        assert_eq!(m["ae_anomalies_total{sensor=\"a\",stage=\"S1\"}"], 1.0);
        assert_eq!(m["ae_anomalies_total{sensor=\"b\",stage=\"S2\"}"], 1.0);
        assert_eq!(m["ae_sequences_ready"], 0.0);
        assert_eq!(m["ae_reconstruction_error_count{sensor=\"b\"}"], 3.0);
        assert_eq!(m["ae_reconstruction_error_bucket{sensor=\"b\",le=\"10\"}"], 3.0);
        assert_eq!(m["ae_reconstruction_error_bucket{sensor=\"b\",le=\"5\"}"], 2.0);
        // an older event time does not move the latest one back
        assert_eq!(m["ae_last_event_timestamp_seconds"], 102.0);
    }

    #[test]
    fn a_scrape_with_nothing_new_reuses_the_text_and_every_change_renders_anew() {
        let s = rig();
        let reg = MetricsRegistry::new(&s).unwrap();
        let first = reg.render();
        assert_eq!(reg.render(), first);
        assert_eq!(reg.generation.load(Ordering::Relaxed), 0);
        let changes: [&dyn Fn(&MetricsRegistry); 5] = [
            &|r| r.set_threshold(0.5),
            &|r| r.set_carried_rows(7),
            &|r| r.model_loaded("v", "c", 1.0),
            &|r| r.model_load_failed(),
            &|r| r.apply_batch(&BatchAggregate::new(&rig()), 0.1).unwrap(),
        ];
        let mut previous = first;
        for (i, change) in changes.iter().enumerate() {
            change(&reg);
            let text = reg.render();
            assert_ne!(text, previous, "change {i} not rendered");
            assert_eq!(reg.render(), text);
            previous = text;
        }
        assert!(previous.contains("ae_threshold 0.5\n") && previous.contains("ae_batches_processed_total 1\n"));
    }

    #[test]
    fn model_info_names_only_the_current_model() {
        let reg = MetricsRegistry::new(&rig()).unwrap();
        reg.model_loaded("v1", "abc", 0.5);
        reg.model_loaded("v1", "abc", 0.25); // same model loaded again: one series
        reg.model_loaded("v2", "def", 1.5);
        reg.model_load_failed();
        let (m, _) = parse(&reg.render());
        assert_eq!(m["ae_model_reloads_total"], 3.0);
        assert_eq!(m["ae_model_load_duration_seconds"], 1.5);
        assert_eq!(m["ae_model_load_failures_total"], 1.0);
        assert_eq!(m["ae_model_info{checksum=\"def\",version=\"v2\"}"], 1.0);
        assert_eq!(m.keys().filter(|k| k.starts_with("ae_model_info")).count(), 1);
    }

    #[test]
    fn quarantine_reasons_are_capped_not_dropped() {
        let s = rig();
        let reg = MetricsRegistry::new(&s).unwrap();
        let mut agg = BatchAggregate::new(&s);
        for i in 0..MAX_QUARANTINE_REASONS + 10 {
            agg.record_quarantined(&format!("weird:{i:04}"));
        }
        reg.apply_batch(&agg, 0.0).unwrap();
        let (m, _) = parse(&reg.render());
        let series: Vec<(&String, &f64)> = m.iter().filter(|(k, _)| k.starts_with("ae_rows_quarantined_total")).collect();
        assert_eq!(series.len(), MAX_QUARANTINE_REASONS + 1);
        assert_eq!(series.iter().map(|(_, v)| **v).sum::<f64>(), (MAX_QUARANTINE_REASONS + 10) as f64);
        assert_eq!(m["ae_rows_quarantined_total{reason=\"other\"}"], 10.0);
        assert_eq!(m["ae_rows_processed_total"], (MAX_QUARANTINE_REASONS + 10) as f64);
    }

    #[test]
    fn mismatched_or_bad_batches_move_nothing() {
        let reg = MetricsRegistry::new(&rig()).unwrap();
        let err = reg.apply_batch(&BatchAggregate::new(&SensorSet::swat()), 0.1).unwrap_err().to_string();
        assert!(err.contains("sensor sets differ"), "{err}");
        let err = reg.apply_batch(&BatchAggregate::new(&rig()), f64::NAN).unwrap_err().to_string();
        assert!(err.contains("batch duration"), "{err}");
        let (m, _) = parse(&reg.render());
        assert_eq!(m["ae_batches_processed_total"], 0.0);
    }

    #[test]
    fn label_values_are_escaped() {
        let odd = vec!["a\"b".to_string(), "c\\d".to_string()];
        let s = SensorSet::new("odd", odd.clone(), vec![("P\n1".into(), odd)]).unwrap();
        let reg = MetricsRegistry::new(&s).unwrap();
        let text = reg.render();
        assert!(text.contains(r#"anomalous_sensor_event{sensor="a\"b"} 0"#), "{text}");
        assert!(text.contains(r#"anomalous_sensor_event{sensor="c\\d"} 0"#), "{text}");
        assert!(text.contains(r#"ae_anomalies_in_batch{stage="P\n1"} 0"#), "{text}");
    }
}
