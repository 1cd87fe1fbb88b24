//! `BatchAggregate`: the metrics of one partition (or one micro-batch, once merged), built row by
//! row while scoring, sent to the driver as JSON and merged there.
//!
//! Definitions (what the registry exports is exactly these counts):
//! - a **row** is counted once under its status: `scored`, `warmup` (no full window behind it yet) or
//!   `quarantined` (with its reason). Context rows, already counted in an earlier batch, are not recorded.
//! - an **anomaly** is a flagged scored row. It counts once in `anomalies`, once for each distinct
//!   anomalous sensor it names (`anomalies_by_sensor`), and once for each distinct stage that holds at
//!   least one of its anomalous sensors (`anomalies_by_stage`): a row with two anomalous P1 sensors and one
//!   P3 sensor adds 1 to P1 and 1 to P3. A flagged row that names no sensor counts in `anomalies` only.
//!   Sensors listed for an unflagged row are ignored (the contract names sensors only for flagged rows).
//! - `ae_reconstruction_error`: every scored row adds each sensor's reconstruction error to that sensor's
//!   histogram (Prometheus `le` buckets: a value equal to a bound falls in that bound's bucket). A NaN or
//!   infinite error falls in the +Inf bucket only and is left out of the sum, so the sum stays finite.
//! - the **flagged value** of a sensor is its value on the latest (by event time) flagged row that names
//!   it anomalous; equal times keep the larger value, so merging is order-independent.
//! - the **latest event time** is the largest event time of any scored or warm-up row.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::json_f64;
use crate::incidents::Evidence;
use crate::sensors::SensorSet;
use crate::{Error, Result};

/// Upper bounds of the `ae_reconstruction_error` buckets, fixed by the operators' dashboards.
pub const ERROR_BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 50.0];
/// Buckets per sensor in an aggregate: the 8 bounds plus +Inf.
pub const ERROR_SLOTS: usize = ERROR_BUCKETS.len() + 1;

/// Index of the (non-cumulative) bucket holding `value`: the first bound with `value <= bound`, or the
/// +Inf slot (also for NaN). Counting the bounds that hold the value needs no branches.
#[inline]
pub fn error_bucket(value: f64) -> usize {
    let mut holding = 0;
    for bound in ERROR_BUCKETS {
        holding += (value <= bound) as usize;
    }
    ERROR_BUCKETS.len() - holding
}

/// A sensor's value on the latest flagged row that named it, and that row's event time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FlaggedValue {
    #[serde(with = "json_f64")]
    pub time_s: f64,
    #[serde(with = "json_f64")]
    pub value: f64,
}

impl FlaggedValue {
    /// Whether `self` replaces `other` as the latest: later time, or the same time and a larger value.
    fn supersedes(&self, other: &FlaggedValue) -> bool {
        self.time_s > other.time_s || (self.time_s == other.time_s && self.value > other.value)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchAggregate {
    sensors: SensorSet,
    rows_scored: u64,
    rows_warmup: u64,
    rows_quarantined: u64,
    quarantined_by_reason: BTreeMap<String, u64>,
    windows_ready: u64,
    anomalies: u64,
    anomalies_by_sensor: Vec<u64>,
    anomalies_by_stage: Vec<u64>,
    /// Per sensor, non-cumulative counts: slot b holds values in (bound[b-1], bound[b]], the last slot the rest.
    error_buckets: Vec<[u64; ERROR_SLOTS]>,
    #[serde(with = "json_f64::vec")]
    error_sum: Vec<f64>,
    flagged_values: Vec<Option<FlaggedValue>>,
    #[serde(with = "json_f64::option")]
    latest_event_time_s: Option<f64>,
    /// The largest score of a scored row (finite scores only).
    #[serde(default, with = "json_f64::option")]
    max_score: Option<f64>,
    /// Per plant, the flagged rows and latest scored time, for the incident tracker (src/incidents.rs).
    #[serde(default)]
    evidence: Evidence,
    /// Warnings raised while scoring (distinct, sorted), for the driver to log.
    #[serde(default)]
    warnings: Vec<String>,
}

impl BatchAggregate {
    pub fn new(sensors: &SensorSet) -> Self {
        let n = sensors.len();
        BatchAggregate {
            sensors: sensors.clone(),
            rows_scored: 0,
            rows_warmup: 0,
            rows_quarantined: 0,
            quarantined_by_reason: BTreeMap::new(),
            windows_ready: 0,
            anomalies: 0,
            anomalies_by_sensor: vec![0; n],
            anomalies_by_stage: vec![0; sensors.stages().len()],
            error_buckets: vec![[0; ERROR_SLOTS]; n],
            error_sum: vec![0.0; n],
            flagged_values: vec![None; n],
            latest_event_time_s: None,
            max_score: None,
            evidence: Evidence::default(),
            warnings: Vec::new(),
        }
    }

    /// A warning raised while scoring; kept once.
    pub fn add_warning(&mut self, warning: &str) {
        if let Err(at) = self.warnings.binary_search_by(|w| w.as_str().cmp(warning)) {
            self.warnings.insert(at, warning.to_string());
        }
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// A scored row's incident evidence and score: `plant`, event time, flag, score and the sensors it
    /// names anomalous (indices). Called beside `record_scored`.
    pub fn record_evidence(&mut self, plant: &str, event_time_s: f64, flagged: bool, score: f64, anomalous: &[usize]) {
        self.note_score(score);
        self.evidence.record(plant, event_time_s, flagged, score, anomalous);
    }

    /// A scored row's score, for the batch's largest (finite scores only).
    pub fn note_score(&mut self, score: f64) {
        if score.is_finite() && self.max_score.is_none_or(|m| score > m) {
            self.max_score = Some(score);
        }
    }

    /// Evidence recorded elsewhere (the Detector's, for its own tracker) added to this aggregate's.
    pub fn add_evidence(&mut self, evidence: &Evidence) {
        self.evidence.merge(evidence);
    }

    /// One scored row. `per_sensor_error` and `values` are in the sensor set's order (one per sensor);
    /// `anomalous` holds sensor indices (meaningful only when `flagged`). Allocation-free.
    ///
    /// Panics when the slices do not have one entry per sensor or an index is out of range: that is a
    /// bug in the caller, not bad data (bad data is quarantined before scoring).
    pub fn record_scored(
        &mut self,
        flagged: bool,
        anomalous: &[usize],
        per_sensor_error: &[f64],
        values: &[f64],
        event_time_s: f64,
    ) {
        let n = self.error_buckets.len();
        assert_eq!(per_sensor_error.len(), n, "record_scored: {} errors for {n} sensors", per_sensor_error.len());
        assert_eq!(values.len(), n, "record_scored: {} values for {n} sensors", values.len());
        self.rows_scored += 1;
        for ((slots, sum), &e) in self.error_buckets.iter_mut().zip(self.error_sum.iter_mut()).zip(per_sensor_error) {
            slots[error_bucket(e)] += 1;
            if e.is_finite() {
                *sum += e;
            }
        }
        self.note_event_time(event_time_s);
        if !flagged {
            return;
        }
        self.anomalies += 1;
        for (j, &s) in anomalous.iter().enumerate() {
            let earlier = &anomalous[..j];
            if earlier.contains(&s) {
                continue; // a sensor named twice counts once
            }
            self.anomalies_by_sensor[s] += 1;
            let stage = self.sensors.stage_index(s);
            if !earlier.iter().any(|&p| self.sensors.stage_index(p) == stage) {
                self.anomalies_by_stage[stage] += 1;
            }
            let candidate = FlaggedValue { time_s: event_time_s, value: values[s] };
            match &mut self.flagged_values[s] {
                Some(current) if !candidate.supersedes(current) => {}
                slot => *slot = Some(candidate),
            }
        }
    }

    /// One row that arrived before its plant had a full window behind it.
    pub fn record_warmup(&mut self, event_time_s: f64) {
        self.rows_warmup += 1;
        self.note_event_time(event_time_s);
    }

    /// One quarantined row and its reason (e.g. `nan:LIT101`).
    pub fn record_quarantined(&mut self, reason: &str) {
        self.add_quarantined(reason, 1);
    }

    /// `count` quarantined rows with the same reason (the driver's validation counts them in bulk).
    pub fn add_quarantined(&mut self, reason: &str, count: u64) {
        if count == 0 {
            return;
        }
        self.rows_quarantined += count;
        match self.quarantined_by_reason.get_mut(reason) {
            Some(c) => *c += count,
            None => {
                self.quarantined_by_reason.insert(reason.to_string(), count);
            }
        }
    }

    /// `n` more windows ready for inference in this batch.
    pub fn add_windows(&mut self, n: u64) {
        self.windows_ready += n;
    }

    fn note_event_time(&mut self, t: f64) {
        if t.is_nan() {
            return; // no time to report; the row is counted all the same
        }
        match self.latest_event_time_s {
            Some(latest) if latest >= t => {}
            _ => self.latest_event_time_s = Some(t),
        }
    }

    /// Adds `other` into `self`. Both must describe the same sensors and stages (the plant name may
    /// differ: one model scores several plants). Merging is associative and commutative.
    pub fn merge(&mut self, other: &BatchAggregate) -> Result<()> {
        self.check_same_sensors(&other.sensors)?;
        self.rows_scored += other.rows_scored;
        self.rows_warmup += other.rows_warmup;
        self.rows_quarantined += other.rows_quarantined;
        for (reason, &count) in &other.quarantined_by_reason {
            *self.quarantined_by_reason.entry(reason.clone()).or_insert(0) += count;
        }
        self.windows_ready += other.windows_ready;
        self.anomalies += other.anomalies;
        add_into(&mut self.anomalies_by_sensor, &other.anomalies_by_sensor);
        add_into(&mut self.anomalies_by_stage, &other.anomalies_by_stage);
        for (mine, theirs) in self.error_buckets.iter_mut().zip(&other.error_buckets) {
            add_into(mine, theirs);
        }
        for (mine, theirs) in self.error_sum.iter_mut().zip(&other.error_sum) {
            *mine += theirs;
        }
        for (mine, theirs) in self.flagged_values.iter_mut().zip(&other.flagged_values) {
            if let Some(t) = theirs {
                match mine {
                    Some(m) if !t.supersedes(m) => {}
                    slot => *slot = Some(*t),
                }
            }
        }
        if let Some(t) = other.latest_event_time_s {
            self.note_event_time(t);
        }
        if let Some(m) = other.max_score {
            self.note_score(m);
        }
        self.evidence.merge(&other.evidence);
        for w in &other.warnings {
            self.add_warning(w);
        }
        Ok(())
    }

    /// Fails unless `sensors` has the same sensors, in the same order, in the same stages.
    pub fn check_same_sensors(&self, sensors: &SensorSet) -> Result<()> {
        let mine = &self.sensors;
        let same = mine.sensors() == sensors.sensors()
            && mine.stages() == sensors.stages()
            && (0..mine.len()).all(|i| mine.stage_index(i) == sensors.stage_index(i));
        if same {
            return Ok(());
        }
        Err(Error::Input(format!(
            "metrics aggregate for plant '{}' ({} sensors, stages {:?}) cannot be combined with plant '{}' \
             ({} sensors, stages {:?}): the sensor sets differ",
            mine.plant(),
            mine.len(),
            mine.stages(),
            sensors.plant(),
            sensors.len(),
            sensors.stages()
        )))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an aggregate serialises: every float goes through json_f64")
    }

    /// Parses and checks an aggregate written by `to_json` (every per-sensor and per-stage list must
    /// match the sensor set it carries).
    pub fn from_json(text: &str) -> Result<Self> {
        let agg: BatchAggregate =
            serde_json::from_str(text).map_err(|e| Error::Input(format!("not a metrics aggregate: {e}")))?;
        let n = agg.sensors.len();
        let stages = agg.sensors.stages().len();
        for (field, len, want) in [
            ("anomalies_by_sensor", agg.anomalies_by_sensor.len(), n),
            ("error_buckets", agg.error_buckets.len(), n),
            ("error_sum", agg.error_sum.len(), n),
            ("flagged_values", agg.flagged_values.len(), n),
            ("anomalies_by_stage", agg.anomalies_by_stage.len(), stages),
        ] {
            if len != want {
                return Err(Error::Input(format!(
                    "metrics aggregate: '{field}' has {len} entries, its sensor set needs {want}"
                )));
            }
        }
        let by_reason: u64 = agg.quarantined_by_reason.values().sum();
        if by_reason != agg.rows_quarantined {
            return Err(Error::Input(format!(
                "metrics aggregate: {} quarantined rows but {by_reason} counted by reason",
                agg.rows_quarantined
            )));
        }
        Ok(agg)
    }

    pub fn sensors(&self) -> &SensorSet {
        &self.sensors
    }
    pub fn rows_scored(&self) -> u64 {
        self.rows_scored
    }
    pub fn rows_warmup(&self) -> u64 {
        self.rows_warmup
    }
    pub fn rows_quarantined(&self) -> u64 {
        self.rows_quarantined
    }
    /// Every row the batch took in: scored + warm-up + quarantined (context rows excluded).
    pub fn rows_in(&self) -> u64 {
        self.rows_scored + self.rows_warmup + self.rows_quarantined
    }
    pub fn quarantined_by_reason(&self) -> &BTreeMap<String, u64> {
        &self.quarantined_by_reason
    }
    pub fn windows_ready(&self) -> u64 {
        self.windows_ready
    }
    /// Flagged rows.
    pub fn anomalies(&self) -> u64 {
        self.anomalies
    }
    /// Per sensor, in the sensor set's order.
    pub fn anomalies_by_sensor(&self) -> &[u64] {
        &self.anomalies_by_sensor
    }
    /// Per stage, in `sensors().stages()` order.
    pub fn anomalies_by_stage(&self) -> &[u64] {
        &self.anomalies_by_stage
    }
    /// Per sensor, non-cumulative counts for the bounds of `ERROR_BUCKETS` then +Inf.
    pub fn error_buckets(&self) -> &[[u64; ERROR_SLOTS]] {
        &self.error_buckets
    }
    /// Per sensor, the sum of the finite errors.
    pub fn error_sum(&self) -> &[f64] {
        &self.error_sum
    }
    /// Per sensor, its value on the latest flagged row that named it, if any.
    pub fn flagged_values(&self) -> &[Option<FlaggedValue>] {
        &self.flagged_values
    }
    pub fn latest_event_time_s(&self) -> Option<f64> {
        self.latest_event_time_s
    }
    /// The largest finite score of the batch's scored rows.
    pub fn max_score(&self) -> Option<f64> {
        self.max_score
    }
    pub fn evidence(&self) -> &Evidence {
        &self.evidence
    }
}

fn add_into(into: &mut [u64], from: &[u64]) {
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rig() -> SensorSet {
        // stages out of sensor order on purpose: stage index != position
        SensorSet::new(
            "rig",
            vec!["a".into(), "b".into(), "c".into(), "d".into()],
            vec![("S1".into(), vec!["a".into(), "c".into()]), ("S2".into(), vec!["b".into()]), ("S3".into(), vec!["d".into()])],
        )
        .unwrap()
    }

    #[test]
    fn bucket_edges_are_inclusive_upper_bounds() {
        assert_eq!(error_bucket(0.0), 0);
        assert_eq!(error_bucket(-1.0), 0);
        assert_eq!(error_bucket(0.01), 0);
        assert_eq!(error_bucket(0.010000000000000002), 1);
        assert_eq!(error_bucket(0.05), 1);
        assert_eq!(error_bucket(0.1), 2);
        assert_eq!(error_bucket(0.5), 3);
        assert_eq!(error_bucket(0.5000001), 4);
        assert_eq!(error_bucket(1.0), 4);
        assert_eq!(error_bucket(5.0), 5);
        assert_eq!(error_bucket(10.0), 6);
        assert_eq!(error_bucket(50.0), 7);
        assert_eq!(error_bucket(50.000001), 8);
        assert_eq!(error_bucket(f64::INFINITY), 8);
        assert_eq!(error_bucket(f64::NAN), 8);
        assert_eq!(error_bucket(f64::NEG_INFINITY), 0);
        for (b, bound) in ERROR_BUCKETS.iter().enumerate() {
            assert_eq!(error_bucket(*bound), b, "bound {bound}");
            assert_eq!(error_bucket(bound.next_up()), b + 1, "just above {bound}");
        }
    }

    #[test]
    fn rows_anomalies_and_stages_are_counted_as_documented() {
        let s = rig();
        let mut agg = BatchAggregate::new(&s);
        agg.record_warmup(1.0);
        agg.record_scored(false, &[], &[0.01, 0.02, 0.3, 100.0], &[1.0, 2.0, 3.0, 4.0], 2.0);
        // flagged: a and c are both in S1 (stage counted once), b in S2; a named twice counts once
        agg.record_scored(true, &[0, 2, 1, 0], &[0.5, 1.0, f64::NAN, 0.0], &[10.0, 20.0, 30.0, 40.0], 3.0);
        // flagged without named sensors: counts in anomalies only
        agg.record_scored(true, &[], &[0.0; 4], &[0.0; 4], 2.5);
        // unflagged rows' sensors are ignored
        agg.record_scored(false, &[3], &[0.0; 4], &[0.0; 4], 2.0);
        agg.record_quarantined("nan:a");
        agg.add_quarantined("nan:a", 2);
        agg.add_quarantined("out_of_order:timestamp", 1);
        agg.add_quarantined("nothing", 0);
        agg.add_windows(4);

        assert_eq!((agg.rows_scored(), agg.rows_warmup(), agg.rows_quarantined(), agg.rows_in()), (4, 1, 4, 9));
        assert_eq!(agg.quarantined_by_reason().len(), 2);
        assert_eq!(agg.quarantined_by_reason()["nan:a"], 3);
        assert_eq!(agg.windows_ready(), 4);
        assert_eq!(agg.anomalies(), 2);
        assert_eq!(agg.anomalies_by_sensor(), [1, 1, 1, 0]);
        assert_eq!(agg.anomalies_by_stage(), [1, 1, 0]);
        assert_eq!(agg.latest_event_time_s(), Some(3.0));
        // sensor c: errors 0.3, NaN, 0, 0 -> slots 3, +Inf, 0, 0; NaN left out of the sum
        assert_eq!(agg.error_buckets()[2], [2, 0, 0, 1, 0, 0, 0, 0, 1]);
        assert!((agg.error_sum()[2] - 0.3).abs() < 1e-12);
        // sensor d: 100 lands in +Inf and is summed
        assert_eq!(agg.error_buckets()[3][8], 1);
        assert_eq!(agg.error_sum()[3], 100.0);
        let flagged: Vec<Option<f64>> = agg.flagged_values().iter().map(|v| v.map(|f| f.value)).collect();
        assert_eq!(flagged, [Some(10.0), Some(20.0), Some(30.0), None]);
    }

    #[test]
    fn flagged_value_is_the_latest_by_event_time() {
        let s = rig();
        let mut agg = BatchAggregate::new(&s);
        agg.record_scored(true, &[0], &[0.0; 4], &[5.0, 0.0, 0.0, 0.0], 10.0);
        agg.record_scored(true, &[0], &[0.0; 4], &[7.0, 0.0, 0.0, 0.0], 9.0); // earlier: ignored
        assert_eq!(agg.flagged_values()[0].unwrap().value, 5.0);
        agg.record_scored(true, &[0], &[0.0; 4], &[-1.0, 0.0, 0.0, 0.0], 11.0);
        assert_eq!(agg.flagged_values()[0], Some(FlaggedValue { time_s: 11.0, value: -1.0 }));
    }

    /// A deterministic mix of rows of every kind, as a kernel would record them.
    fn record_rows(agg: &mut BatchAggregate, rows: std::ops::Range<usize>) {
        for r in rows {
            let t = 1000.0 + (r % 37) as f64; // times out of order across partitions
            match r % 7 {
                0 => agg.record_warmup(t),
                1 => agg.record_quarantined(if r % 2 == 0 { "nan:b" } else { "infinite:d" }),
                _ => {
                    let errors: Vec<f64> = (0..4).map(|i| ((r * 7 + i * 13) % 97) as f64 * 0.37).collect();
                    let values: Vec<f64> = (0..4).map(|i| (r * 10 + i) as f64).collect();
                    let flagged = r % 3 == 0;
                    let anomalous: Vec<usize> = (0..4).filter(|i| (r + i) % 2 == 0).collect();
                    agg.record_scored(flagged, &anomalous, &errors, &values, t);
                    agg.add_windows(1);
                }
            }
        }
    }

    #[test]
    fn merged_partitions_equal_one_aggregate() {
        let s = rig();
        let mut whole = BatchAggregate::new(&s);
        record_rows(&mut whole, 0..500);

        let cuts = [0, 13, 14, 200, 333, 500];
        let parts: Vec<BatchAggregate> = cuts
            .windows(2)
            .map(|c| {
                let mut p = BatchAggregate::new(&s);
                record_rows(&mut p, c[0]..c[1]);
                p
            })
            .collect();
        // merge in reverse order through JSON, as the driver receives them
        let mut merged = BatchAggregate::new(&s);
        for p in parts.iter().rev() {
            merged.merge(&BatchAggregate::from_json(&p.to_json()).unwrap()).unwrap();
        }
        assert_eq!(merged.rows_in(), 500);
        // sums of the same terms in another order may differ in the last bits
        for (m, w) in merged.error_sum().iter().zip(whole.error_sum()) {
            assert!((m - w).abs() <= 1e-9 * w.abs().max(1.0), "{m} vs {w}");
        }
        merged.error_sum.clone_from(&whole.error_sum);
        assert_eq!(merged, whole);
    }

    #[test]
    fn json_round_trip_is_exact_and_keeps_non_finite_values() {
        let s = rig();
        let mut agg = BatchAggregate::new(&s);
        record_rows(&mut agg, 0..50);
        agg.record_scored(true, &[3], &[0.1, 0.2, 0.3, 0.123456789012345678], &[0.0, 0.0, 0.0, f64::INFINITY], 1e6 + 0.1 + 0.2);
        agg.error_sum[1] = f64::INFINITY; // an overflowed sum must survive the trip
        let text = agg.to_json();
        let back = BatchAggregate::from_json(&text).unwrap();
        assert_eq!(back, agg);
        assert_eq!(back.to_json(), text);
        assert_eq!(back.flagged_values()[3].unwrap().value, f64::INFINITY);
    }

    #[test]
    fn merge_and_from_json_refuse_mismatches() {
        let s = rig();
        let other = SensorSet::new("rig", vec!["a".into(), "b".into()], vec![("S1".into(), vec!["a".into(), "b".into()])])
            .unwrap();
        let mut agg = BatchAggregate::new(&s);
        let err = agg.merge(&BatchAggregate::new(&other)).unwrap_err().to_string();
        assert!(err.contains("sensor sets differ"), "{err}");
        // the same sensors in the same stages under another plant name merge fine
        let renamed = SensorSet::from_text(
            "plant: rig2\nsensors: [a, b, c, d]\nstages:\n  S1: [a, c]\n  S2: [b]\n  S3: [d]\n",
        )
        .unwrap();
        agg.merge(&BatchAggregate::new(&renamed)).unwrap();

        let mut value: serde_json::Value = serde_json::from_str(&agg.to_json()).unwrap();
        value["error_sum"] = serde_json::json!([0.0]);
        let err = BatchAggregate::from_json(&value.to_string()).unwrap_err().to_string();
        assert!(err.contains("'error_sum' has 1 entries"), "{err}");

        agg.record_quarantined("nan:a");
        let mut value: serde_json::Value = serde_json::from_str(&agg.to_json()).unwrap();
        value["rows_quarantined"] = serde_json::json!(5);
        let err = BatchAggregate::from_json(&value.to_string()).unwrap_err().to_string();
        assert!(err.contains("5 quarantined rows but 1"), "{err}");

        assert!(BatchAggregate::from_json("{}").unwrap_err().to_string().contains("not a metrics aggregate"));
    }

    #[test]
    #[should_panic(expected = "3 errors for 4 sensors")]
    fn record_scored_refuses_short_rows() {
        let mut agg = BatchAggregate::new(&rig());
        agg.record_scored(false, &[], &[0.0; 3], &[0.0; 4], 0.0);
    }
}
