//! Incidents: flagged rows grouped into events an operator acts on, per plant stream, causally.
//!
//! Rules (times are event times in seconds; `P` is the model's sample period):
//! - A flagged row starts a *candidate*. Later flags extend it while each comes within `gap_s` of the
//!   previous one; a longer gap drops the candidate (a blip, never reported).
//! - A candidate whose flags span at least `min_duration_s` becomes an *open incident*, starting at its
//!   first flag.
//! - An open incident takes every flag that comes within `quiet_s` of its latest flag. It *closes* once
//!   the plant's stream has run `quiet_s` past the latest flag without another (known when a later flag
//!   or a later scored row arrives); its end is its latest flag.
//! - Defaults (`IncidentPolicy::for_period`): `min_duration_s` = max(10 s, 10 P), `gap_s` = max(5 s, 5 P),
//!   `quiet_s` = max(60 s, 30 P).
//!
//! The tracker's state is small (per plant: at most one candidate and one open incident) and
//! serialisable, so it is checkpointed beside the window tails: the same rows give the same incidents
//! in any chunking, and across a restart from the checkpoint. An incident's id is its plant and start
//! time, so a replayed batch produces the same ids.
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::sensors::SensorSet;
use crate::{Error, Result};

/// A sensor counts as involved in an incident when it is named anomalous at least this share as often
/// as the most named sensor (a weak model names many sensors on each flagged row; the operator needs
/// the few that stand out).
pub const SENSOR_SHARE: f64 = 0.5;
/// At most this many sensors are named per incident.
pub const MAX_INVOLVED_SENSORS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentPolicy {
    /// Flags must persist this long (first to latest flag) before an incident opens.
    pub min_duration_s: f64,
    /// Before opening, a gap between flags longer than this drops the candidate.
    pub gap_s: f64,
    /// An open incident closes after this long without a flag.
    pub quiet_s: f64,
}

impl IncidentPolicy {
    /// The defaults for data sampled every `period_s` seconds (1 s when unknown or not positive).
    pub fn for_period(period_s: f64) -> Self {
        let p = if period_s.is_finite() && period_s > 0.0 { period_s } else { 1.0 };
        IncidentPolicy { min_duration_s: (10.0 * p).max(10.0), gap_s: (5.0 * p).max(5.0), quiet_s: (30.0 * p).max(60.0) }
    }

    /// `for_period(period_s)` with any of its three durations given instead.
    pub fn for_period_with(period_s: f64, min_duration_s: Option<f64>, gap_s: Option<f64>, quiet_s: Option<f64>) -> Self {
        let d = Self::for_period(period_s);
        IncidentPolicy {
            min_duration_s: min_duration_s.unwrap_or(d.min_duration_s),
            gap_s: gap_s.unwrap_or(d.gap_s),
            quiet_s: quiet_s.unwrap_or(d.quiet_s),
        }
    }

    pub fn check(&self) -> Result<()> {
        for (name, v) in [("min_duration_s", self.min_duration_s), ("gap_s", self.gap_s), ("quiet_s", self.quiet_s)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Config(format!("incident policy: {name} must be a finite number of seconds >= 0, got {v}")));
            }
        }
        Ok(())
    }
}

/// One flagged row: its event time, score and the sensors it names anomalous (indices).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    pub t: f64,
    pub score: f64,
    pub sensors: Vec<u32>,
}

/// One plant's evidence from a batch: its flagged rows and the latest event time it scored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlantEvidence {
    pub flags: Vec<Flag>,
    pub latest_scored_s: Option<f64>,
}

/// What a batch (or a partition of it) says about each plant's incidents. Mergeable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Evidence {
    pub plants: BTreeMap<String, PlantEvidence>,
}

impl Evidence {
    /// One scored row of `plant` at `t` (seconds; NaN: no time, not evidence).
    pub fn record(&mut self, plant: &str, t: f64, flagged: bool, score: f64, sensors: &[usize]) {
        if t.is_nan() {
            return;
        }
        let e = match self.plants.get_mut(plant) {
            Some(e) => e,
            None => self.plants.entry(plant.to_string()).or_default(),
        };
        if e.latest_scored_s.is_none_or(|l| t > l) {
            e.latest_scored_s = Some(t);
        }
        if flagged {
            e.flags.push(Flag { t, score, sensors: sensors.iter().map(|&s| s as u32).collect() });
        }
    }

    /// Adds `other`'s evidence; flags stay in time order per plant whatever the merge order.
    pub fn merge(&mut self, other: &Evidence) {
        for (plant, theirs) in &other.plants {
            let mine = self.plants.entry(plant.clone()).or_default();
            mine.flags.extend(theirs.flags.iter().cloned());
            mine.flags.sort_by(|a, b| a.t.total_cmp(&b.t).then(b.score.total_cmp(&a.score)).then(a.sensors.cmp(&b.sensors)));
            if let Some(t) = theirs.latest_scored_s {
                if mine.latest_scored_s.is_none_or(|l| t > l) {
                    mine.latest_scored_s = Some(t);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.plants.is_empty()
    }

    pub fn flags(&self) -> usize {
        self.plants.values().map(|e| e.flags.len()).sum()
    }
}

/// An incident (or a candidate for one) as it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incident {
    pub id: String,
    pub plant: String,
    pub start_s: f64,
    /// The latest flag's time.
    pub last_flag_s: f64,
    /// Set once closed: the latest flag's time.
    pub end_s: Option<f64>,
    pub peak_score: f64,
    pub rows_flagged: u64,
    /// Per sensor (the tracker's sensor order): flagged rows naming it.
    pub sensor_counts: Vec<u64>,
    pub model_version: String,
}

impl Incident {
    fn new(plant: &str, flag: &Flag, n_sensors: usize, version: &str) -> Self {
        let mut inc = Incident {
            id: format!("{plant}-{}", (flag.t * 1e6).round() as i64),
            plant: plant.to_string(),
            start_s: flag.t,
            last_flag_s: flag.t,
            end_s: None,
            peak_score: f64::NEG_INFINITY,
            rows_flagged: 0,
            sensor_counts: vec![0; n_sensors],
            model_version: version.to_string(),
        };
        inc.absorb(flag);
        inc
    }

    fn absorb(&mut self, flag: &Flag) {
        self.last_flag_s = self.last_flag_s.max(flag.t);
        if flag.score > self.peak_score || self.rows_flagged == 0 {
            self.peak_score = flag.score;
        }
        self.rows_flagged += 1;
        let mut seen: Vec<u32> = Vec::with_capacity(flag.sensors.len());
        for &s in &flag.sensors {
            if (s as usize) < self.sensor_counts.len() && !seen.contains(&s) {
                self.sensor_counts[s as usize] += 1;
                seen.push(s);
            }
        }
    }

    /// Duration in seconds: first to latest flag.
    pub fn duration_s(&self) -> f64 {
        self.last_flag_s - self.start_s
    }

    /// Sensors involved, most named first (ties in sensor order): named at least SENSOR_SHARE as often
    /// as the most named one, at most MAX_INVOLVED_SENSORS.
    pub fn involved_sensors(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.sensor_counts.len()).filter(|&j| self.sensor_counts[j] > 0).collect();
        order.sort_by(|&a, &b| self.sensor_counts[b].cmp(&self.sensor_counts[a]).then(a.cmp(&b)));
        let Some(&top) = order.first() else { return order };
        let floor = self.sensor_counts[top] as f64 * SENSOR_SHARE;
        order.into_iter().filter(|&j| self.sensor_counts[j] as f64 >= floor).take(MAX_INVOLVED_SENSORS).collect()
    }

    /// Stages of the involved sensors, by their most named sensor (ties in stage order).
    pub fn involved_stages(&self, sensors: &SensorSet) -> Vec<usize> {
        let mut weight: BTreeMap<usize, u64> = BTreeMap::new();
        for j in self.involved_sensors() {
            let w = weight.entry(sensors.stage_index(j)).or_insert(0);
            *w = (*w).max(self.sensor_counts[j]);
        }
        let mut stages: Vec<(usize, u64)> = weight.into_iter().collect();
        stages.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        stages.into_iter().map(|(s, _)| s).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransitionKind {
    Opened,
    Updated,
    Closed,
}

impl TransitionKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TransitionKind::Opened => "opened",
            TransitionKind::Updated => "updated",
            TransitionKind::Closed => "closed",
        }
    }
}

/// A change to an incident, with the incident as it stood then.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub kind: TransitionKind,
    pub incident: Incident,
    /// Event time at which the change became known: the opening flag, the latest flag, or the latest
    /// flag + quiet period for a close.
    pub observed_at_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlantState {
    candidate: Option<Incident>,
    open: Option<Incident>,
    latest_scored_s: Option<f64>,
}

/// Per-plant incident state machines (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentTracker {
    sensors: SensorSet,
    policy: IncidentPolicy,
    plants: BTreeMap<String, PlantState>,
    opened_total: u64,
}

impl IncidentTracker {
    pub fn new(sensors: &SensorSet, policy: IncidentPolicy) -> Result<Self> {
        policy.check()?;
        Ok(IncidentTracker { sensors: sensors.clone(), policy, plants: BTreeMap::new(), opened_total: 0 })
    }

    pub fn policy(&self) -> IncidentPolicy {
        self.policy
    }
    pub fn sensors(&self) -> &SensorSet {
        &self.sensors
    }
    /// Incidents opened since the tracker was created (checkpointed with it).
    pub fn opened_total(&self) -> u64 {
        self.opened_total
    }

    /// Forgets every plant's state.
    pub fn reset(&mut self) {
        self.plants.clear();
    }

    /// Applies a batch's evidence (scored by model `version`); returns the transitions it caused, per
    /// plant in time order.
    pub fn apply(&mut self, evidence: &Evidence, version: &str) -> Vec<Transition> {
        let n = self.sensors.len();
        let policy = self.policy;
        let mut out = Vec::new();
        for (plant, ev) in &evidence.plants {
            let state = self.plants.entry(plant.clone()).or_default();
            let mut touched_after_open = false;
            // Rows older than what earlier batches brought cannot change the past (the stream is causal;
            // the jobs quarantine such rows before scoring).
            let seen_until = state.latest_scored_s;
            for flag in &ev.flags {
                if seen_until.is_some_and(|l| flag.t < l) {
                    continue;
                }
                close_if_quiet(state, flag.t, policy, &mut out, &mut touched_after_open);
                if let Some(open) = &mut state.open {
                    open.absorb(flag);
                    touched_after_open = true;
                } else {
                    match &mut state.candidate {
                        Some(c) if flag.t - c.last_flag_s <= policy.gap_s => c.absorb(flag),
                        slot => *slot = Some(Incident::new(plant, flag, n, version)),
                    }
                    let c = state.candidate.as_ref().expect("set above");
                    if c.duration_s() >= policy.min_duration_s {
                        let opened = state.candidate.take().expect("set above");
                        out.push(Transition { kind: TransitionKind::Opened, observed_at_s: flag.t, incident: opened.clone() });
                        self.opened_total += 1;
                        state.open = Some(opened);
                        touched_after_open = false;
                    }
                }
                if state.latest_scored_s.is_none_or(|l| flag.t > l) {
                    state.latest_scored_s = Some(flag.t);
                }
            }
            if let Some(t) = ev.latest_scored_s {
                if state.latest_scored_s.is_none_or(|l| t > l) {
                    state.latest_scored_s = Some(t);
                }
            }
            if let Some(now) = state.latest_scored_s {
                close_if_quiet(state, now, policy, &mut out, &mut touched_after_open);
                // A candidate that can no longer open is dropped.
                if state.candidate.as_ref().is_some_and(|c| now - c.last_flag_s > policy.gap_s) {
                    state.candidate = None;
                }
            }
            if touched_after_open {
                if let Some(open) = &state.open {
                    out.push(Transition { kind: TransitionKind::Updated, observed_at_s: open.last_flag_s, incident: open.clone() });
                }
            }
        }
        out
    }

    /// The open incidents, by plant.
    pub fn open_incidents(&self) -> Vec<&Incident> {
        self.plants.values().filter_map(|s| s.open.as_ref()).collect()
    }

    /// Seconds (event time) the longest open incident has lasted so far, up to its plant's latest row.
    pub fn longest_open_s(&self) -> f64 {
        self.plants
            .values()
            .filter_map(|s| s.open.as_ref().map(|o| s.latest_scored_s.unwrap_or(o.last_flag_s) - o.start_s))
            .fold(0.0, f64::max)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the tracker serialises")
    }

    /// A tracker saved by `to_json`; it must be for `sensors` (the model may have been swapped for one
    /// with other sensors: then the saved state does not apply and this is an error).
    pub fn from_json(text: &str, sensors: &SensorSet) -> Result<Self> {
        let t: IncidentTracker =
            serde_json::from_str(text).map_err(|e| Error::Input(format!("not a saved incident tracker: {e}")))?;
        if t.sensors.sensors() != sensors.sensors() {
            return Err(Error::Input(format!(
                "saved incident tracker is for sensors {:?}, not the model's {:?}",
                t.sensors.sensors(),
                sensors.sensors()
            )));
        }
        t.policy.check()?;
        Ok(t)
    }
}

fn close_if_quiet(state: &mut PlantState, now: f64, policy: IncidentPolicy, out: &mut Vec<Transition>, touched: &mut bool) {
    let quiet = state.open.as_ref().is_some_and(|o| now - o.last_flag_s >= policy.quiet_s);
    if quiet {
        let mut closed = state.open.take().expect("checked above");
        closed.end_s = Some(closed.last_flag_s);
        if *touched {
            out.push(Transition { kind: TransitionKind::Updated, observed_at_s: closed.last_flag_s, incident: Incident { end_s: None, ..closed.clone() } });
            *touched = false;
        }
        out.push(Transition { kind: TransitionKind::Closed, observed_at_s: closed.last_flag_s + policy.quiet_s, incident: closed });
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The incidents sink's schema: one row per transition.
pub fn transition_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("plant", DataType::Utf8, false),
        Field::new("incident_id", DataType::Utf8, false),
        Field::new("transition", DataType::Utf8, false),
        Field::new("start", ts_type(), false),
        Field::new("end", ts_type(), true),
        Field::new("duration_seconds", DataType::Float64, false),
        Field::new("peak_score", DataType::Float64, false),
        Field::new("rows_flagged", DataType::UInt64, false),
        Field::new("sensors", DataType::Utf8, false),
        Field::new("stages", DataType::Utf8, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("observed_at", ts_type(), false),
    ]))
}

fn micros(t: f64) -> i64 {
    (t * 1e6).round() as i64
}

/// Transitions as a record batch of `transition_schema()`; sensors and stages are comma-separated,
/// most involved first.
pub fn transitions_batch(transitions: &[Transition], sensors: &SensorSet) -> Result<RecordBatch> {
    let n = transitions.len();
    let mut plant = StringBuilder::new();
    let mut id = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut start = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut end = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut duration = Float64Builder::with_capacity(n);
    let mut peak = Float64Builder::with_capacity(n);
    let mut rows = UInt64Builder::with_capacity(n);
    let mut names = StringBuilder::new();
    let mut stages = StringBuilder::new();
    let mut version = StringBuilder::new();
    let mut observed = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    for tr in transitions {
        let inc = &tr.incident;
        plant.append_value(&inc.plant);
        id.append_value(&inc.id);
        kind.append_value(tr.kind.as_str());
        start.append_value(micros(inc.start_s));
        end.append_option(inc.end_s.map(micros));
        duration.append_value(inc.duration_s());
        peak.append_value(inc.peak_score);
        rows.append_value(inc.rows_flagged);
        let s: Vec<&str> = inc.involved_sensors().into_iter().map(|j| sensors.sensors()[j].as_str()).collect();
        names.append_value(s.join(","));
        let st: Vec<&str> = inc.involved_stages(sensors).into_iter().map(|j| sensors.stages()[j].as_str()).collect();
        stages.append_value(st.join(","));
        version.append_value(&inc.model_version);
        observed.append_value(micros(tr.observed_at_s));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(plant.finish()),
        Arc::new(id.finish()),
        Arc::new(kind.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(duration.finish()),
        Arc::new(peak.finish()),
        Arc::new(rows.finish()),
        Arc::new(names.finish()),
        Arc::new(stages.finish()),
        Arc::new(version.finish()),
        Arc::new(observed.finish()),
    ];
    RecordBatch::try_new(transition_schema(), columns).map_err(|e| Error::Schema(format!("building the incidents batch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sensors() -> SensorSet {
        SensorSet::from_text("plant: p\nsensors: [A, B, C]\nstages:\n  S1: [A, B]\n  S2: [C]\n").unwrap()
    }

    fn policy() -> IncidentPolicy {
        IncidentPolicy::for_period(1.0)
    }

    /// Evidence of one plant: rows at 1 s from `from` to `to` (exclusive), flagged where `flagged(t)`.
    fn rows(from: i64, to: i64, flagged: impl Fn(i64) -> Option<Vec<usize>>) -> Evidence {
        let mut e = Evidence::default();
        for t in from..to {
            let f = flagged(t);
            e.record("p", t as f64, f.is_some(), t as f64 / 100.0, f.as_deref().unwrap_or(&[]));
        }
        e
    }

    #[test]
    fn defaults_follow_the_sample_period() {
        assert_eq!(IncidentPolicy::for_period(1.0), IncidentPolicy { min_duration_s: 10.0, gap_s: 5.0, quiet_s: 60.0 });
        assert_eq!(IncidentPolicy::for_period(60.0), IncidentPolicy { min_duration_s: 600.0, gap_s: 300.0, quiet_s: 1800.0 });
        assert_eq!(IncidentPolicy::for_period(f64::NAN), IncidentPolicy::for_period(1.0));
        assert_eq!(
            IncidentPolicy::for_period_with(60.0, None, Some(7.0), None),
            IncidentPolicy { min_duration_s: 600.0, gap_s: 7.0, quiet_s: 1800.0 }
        );
        assert!(IncidentTracker::new(&sensors(), IncidentPolicy { quiet_s: f64::NAN, ..policy() }).is_err());
    }

    #[test]
    fn a_blip_is_not_an_incident_and_a_persistent_fault_is_one() {
        let mut tr = IncidentTracker::new(&sensors(), policy()).unwrap();
        // 5 flagged rows (4 s): below the 10 s minimum.
        let out = tr.apply(&rows(0, 200, |t| (100..105).contains(&t).then(|| vec![0])), "v1");
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(tr.opened_total(), 0);
        // 30 s of flags on A (and C on a few rows), with a 3-row gap: one incident, opened at 10 s in.
        let out = tr.apply(
            &rows(200, 400, |t| match t {
                300..=314 | 318..=329 => Some(if t % 2 == 0 { vec![0, 2] } else { vec![0] }),
                _ => None,
            }),
            "v1",
        );
        let kinds: Vec<_> = out.iter().map(|t| t.kind).collect();
        assert_eq!(kinds, [TransitionKind::Opened, TransitionKind::Updated, TransitionKind::Closed], "{out:?}");
        assert_eq!(out[0].observed_at_s, 310.0);
        let closed = &out[2].incident;
        assert_eq!((closed.start_s, closed.end_s), (300.0, Some(329.0)));
        assert_eq!(closed.id, "p-300000000");
        assert_eq!(closed.rows_flagged, 27);
        assert_eq!(closed.peak_score, 3.29);
        assert_eq!(out[2].observed_at_s, 389.0);
        // C on 14 of 27 rows (A on all 27) is involved, second; B never named.
        assert_eq!(closed.involved_sensors(), vec![0, 2]);
        assert_eq!(closed.involved_stages(&sensors()), vec![0, 1]);
        let batch = transitions_batch(&out, &sensors()).unwrap();
        assert_eq!(batch.num_rows(), 3);
        assert!(tr.open_incidents().is_empty());
    }

    #[test]
    fn an_open_incident_stays_open_through_gaps_shorter_than_the_quiet_period() {
        let mut tr = IncidentTracker::new(&sensors(), policy()).unwrap();
        let flagged = |t: i64| ((0..20).contains(&t) || (70..90).contains(&t)).then(|| vec![1]);
        let out = tr.apply(&rows(0, 100, flagged), "v1");
        assert_eq!(out.iter().map(|t| t.kind).collect::<Vec<_>>(), [TransitionKind::Opened, TransitionKind::Updated]);
        assert_eq!(tr.open_incidents().len(), 1);
        assert_eq!(tr.longest_open_s(), 99.0);
        // 50 s gap (< 60 s quiet): same incident. Then quiet: closed at the last flag.
        let out = tr.apply(&rows(100, 200, |_| None), "v1");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].incident.end_s, Some(89.0));
        assert_eq!(out[0].incident.rows_flagged, 40);
    }

    #[test]
    fn any_chunking_and_a_restart_from_json_give_the_same_incidents() {
        let flagged = |t: i64| {
            let phase = (t / 37) % 5;
            (phase == 1 || (phase == 3 && t % 3 != 0)).then(|| vec![(t % 3) as usize])
        };
        let whole = rows(0, 2000, flagged);
        let closed_of = |ts: &[Transition]| -> Vec<Incident> {
            ts.iter().filter(|t| t.kind == TransitionKind::Closed).map(|t| t.incident.clone()).collect()
        };
        let mut one = IncidentTracker::new(&sensors(), policy()).unwrap();
        let reference = closed_of(&one.apply(&whole, "v"));
        assert!(reference.len() >= 5, "{}", reference.len());
        for chunk in [1, 7, 123, 999] {
            let mut tr = IncidentTracker::new(&sensors(), policy()).unwrap();
            let mut got = Vec::new();
            let mut from = 0;
            while from < 2000 {
                let to = (from + chunk).min(2000);
                // A restart between every chunk: the state goes through JSON.
                tr = IncidentTracker::from_json(&tr.to_json(), &sensors()).unwrap();
                got.extend(closed_of(&tr.apply(&rows(from, to, flagged), "v")));
                from = to;
            }
            assert_eq!(got, reference, "chunks of {chunk}");
            assert_eq!(tr.open_incidents(), one.open_incidents(), "chunks of {chunk}");
        }
        let other = SensorSet::from_text("plant: p\nsensors: [X]\nstages:\n  S1: [X]\n").unwrap();
        assert!(IncidentTracker::from_json(&one.to_json(), &other).is_err());
        assert!(IncidentTracker::from_json("{\"nope\": 1}", &sensors()).is_err());
    }

    #[test]
    fn merged_partitions_equal_one_evidence_and_plants_are_separate() {
        let mut a = rows(0, 50, |t| (t >= 10).then(|| vec![0]));
        let mut b = Evidence::default();
        for t in 0..50 {
            b.record("q", t as f64, t < 30, 1.0, &[2]);
        }
        let mut merged = b.clone();
        merged.merge(&a);
        a.merge(&b);
        assert_eq!(merged, a);
        let mut tr = IncidentTracker::new(&sensors(), policy()).unwrap();
        let out = tr.apply(&merged, "v");
        let plants: Vec<&str> = out.iter().filter(|t| t.kind == TransitionKind::Opened).map(|t| t.incident.plant.as_str()).collect();
        assert_eq!(plants, ["p", "q"]);
        assert_eq!(tr.open_incidents().len(), 2);
    }
}
