//! A SWaT-shaped plant simulator with the official SWaT A1 attacks.
//!
//! Six stages with coupled physics at 1 Hz (`plant`): tank levels integrate their in- and outflows,
//! PLCs drive pumps and valves from the level set points with hysteresis, flows exist only where pumps
//! and valves allow, analysers drift slowly with noise, RO pressures follow the RO pump. Actuators use
//! SWaT's encodings (MV 0 transition / 1 closed / 2 open; pumps and UV 1 off / 2 on). The 36 attacks
//! with physical impact act as the official list says (`attacks`): what the PLCs see is what is recorded.
//!
//! Output: Arrow record batches in the canonical schema (`plant`, `timestamp` µs UTC, the 51 SWaT
//! sensors as float64 in official order, `label`, `attack_id`, `attacked_points`). The same seed and
//! settings give the same rows, whether generated at once or in batches.
mod attacks;
mod plant;

use std::sync::Arc;

use arrow_array::{
    ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rand::{Rng, RngCore, SeedableRng};
use rand_pcg::Pcg64Mcg;

pub use attacks::{
    attack_list, physical_attack_ids, AttackInfo, AttackRun, PlannedAttack, Schedule,
    MIN_SPREAD_GAP_S,
};
use attacks::{attack_model, ActiveAttack};
use plant::{ch, Plant, NZ};

use crate::sensors::SensorSet;
use crate::{Error, Result};

/// 2015-12-28 10:00:00 UTC in microseconds: the default first timestamp.
pub const DEFAULT_START_US: i64 = 1_451_296_800_000_000;
/// The plant runs this long, unrecorded, before the first row, so that the phase of its cycles at the
/// first row depends on the seed rather than on the initial state.
const WARMUP_S: u64 = 7200;

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Value of the `plant` column.
    pub plant: String,
    /// Timestamp of the first row, microseconds since the epoch (UTC).
    pub start_us: i64,
    /// Rows (seconds) to generate.
    pub duration_s: u64,
    pub seed: u64,
    pub schedule: Schedule,
}

impl SimConfig {
    /// Normal operation of plant "swat" from 2015-12-28 10:00:00 UTC.
    pub fn new(duration_s: u64, seed: u64) -> Self {
        SimConfig {
            plant: "swat".into(),
            start_us: DEFAULT_START_US,
            duration_s,
            seed,
            schedule: Schedule::None,
        }
    }
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }
}

/// The canonical schema of simulated SWaT rows (every field nullable, as Spark emits them).
pub fn output_schema() -> SchemaRef {
    let swat = SensorSet::swat();
    let mut fields = Vec::with_capacity(swat.len() + 5);
    fields.push(Field::new("plant", DataType::Utf8, true));
    fields.push(Field::new(
        "timestamp",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    ));
    fields.extend(
        swat.sensors()
            .iter()
            .map(|s| Field::new(s, DataType::Float64, true)),
    );
    fields.push(Field::new("label", DataType::Int32, true));
    fields.push(Field::new("attack_id", DataType::Int32, true));
    fields.push(Field::new("attacked_points", DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// Receives each generated row (the recorded values) with the plant's true state.
trait Sink {
    fn push(&mut self, row: &[f64; ch::N], attack_id: u32, points: &[u8], plant: &Plant);
}

/// Column buffers of one batch. The 51 sensor columns share one column-major allocation, which the
/// Arrow arrays then slice without copying.
struct Columns {
    rows: usize,
    filled: usize,
    values: Vec<f64>,
    attack_id: Vec<i32>,
    point_offsets: Vec<i32>,
    point_bytes: Vec<u8>,
}

impl Columns {
    fn with_capacity(rows: usize) -> Self {
        let mut point_offsets = Vec::with_capacity(rows + 1);
        point_offsets.push(0);
        Columns {
            rows,
            filled: 0,
            values: vec![0.0; rows * ch::N],
            attack_id: Vec::with_capacity(rows),
            point_offsets,
            point_bytes: Vec::new(),
        }
    }
}

impl Sink for Columns {
    #[inline]
    fn push(&mut self, row: &[f64; ch::N], attack_id: u32, points: &[u8], _plant: &Plant) {
        let i = self.filled;
        for (column, &v) in self.values.chunks_exact_mut(self.rows).zip(row.iter()) {
            column[i] = v;
        }
        self.filled += 1;
        self.attack_id.push(attack_id as i32);
        if !points.is_empty() {
            self.point_bytes.extend_from_slice(points);
        }
        // Offsets fit: a batch is refused up front if its strings could pass i32::MAX bytes.
        self.point_offsets.push(self.point_bytes.len() as i32);
    }
}

/// A running simulation; rows come out in batches, continuing where the last batch stopped.
pub struct Simulation {
    plant_name: String,
    start_us: i64,
    duration_s: u64,
    /// Seconds generated so far (the next row's offset from the start).
    t: u64,
    plant: Plant,
    rng: Pcg64Mcg,
    plan: Vec<PlannedAttack>,
    next_planned: usize,
    active: Vec<ActiveAttack>,
    runs: Vec<AttackRun>,
    /// Label columns of the current second: the latest active attack and the points of all active ones.
    current_id: u32,
    current_points: Vec<u8>,
    schema: SchemaRef,
}

/// Longest `;`-joined attacked-points text of any row (all points of all attacks at once), bounding the
/// string bytes of a batch.
fn max_points_len() -> usize {
    attack_list().iter().map(|a| a.points.len() + 1).sum()
}

impl Simulation {
    pub fn new(config: SimConfig) -> Result<Self> {
        if config.duration_s == 0 {
            return Err(Error::Config("duration must be at least 1 s".into()));
        }
        if config.plant.is_empty() {
            return Err(Error::Config("the plant name must not be empty".into()));
        }
        let end_us = i64::try_from(config.duration_s)
            .ok()
            .and_then(|d| d.checked_mul(1_000_000))
            .and_then(|d| config.start_us.checked_add(d));
        if end_us.is_none() {
            return Err(Error::Config(format!(
                "start {} µs plus {} s is beyond the range of timestamps",
                config.start_us, config.duration_s
            )));
        }
        let plan = config.schedule.plan(config.duration_s)?;
        let mut rng = Pcg64Mcg::seed_from_u64(config.seed);
        let plant = Plant::new(
            rng.random_range(550.0..750.0),
            rng.random_range(850.0..950.0),
            rng.random_range(850.0..950.0),
        );
        let mut sim = Simulation {
            plant_name: config.plant,
            start_us: config.start_us,
            duration_s: config.duration_s,
            t: 0,
            plant,
            rng,
            plan,
            next_planned: 0,
            active: Vec::new(),
            runs: Vec::new(),
            current_id: 0,
            current_points: Vec::new(),
            schema: output_schema(),
        };
        let mut row = [0.0; ch::N];
        for _ in 0..WARMUP_S {
            let z = sim.noise();
            sim.plant.step(&z, &mut [], &mut row);
        }
        Ok(sim)
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    /// Rows still to come.
    pub fn remaining(&self) -> u64 {
        self.duration_s - self.t
    }
    /// Attacks launched so far, in launch order.
    pub fn runs(&self) -> &[AttackRun] {
        &self.runs
    }

    /// The next at most `max_rows` rows, or `None` when the simulation is over.
    pub fn next_batch(&mut self, max_rows: usize) -> Result<Option<RecordBatch>> {
        if max_rows == 0 {
            return Err(Error::Config("a batch needs at least 1 row".into()));
        }
        let rows = (max_rows as u64).min(self.remaining()) as usize;
        if rows == 0 {
            return Ok(None);
        }
        let widest = self.plant_name.len().max(max_points_len());
        if rows
            .checked_mul(widest)
            .is_none_or(|b| b > i32::MAX as usize)
        {
            return Err(Error::Config(format!(
                "{rows} rows do not fit one Arrow batch of strings; ask for at most {} rows per batch",
                i32::MAX as usize / widest
            )));
        }
        let first = self.t;
        let mut columns = Columns::with_capacity(rows);
        self.advance(rows as u64, &mut columns);
        self.finish(first, columns).map(Some)
    }

    /// This second's random numbers: measurement noise and the drivers of the slow drifts.
    #[inline]
    fn noise(&mut self) -> [f64; NZ] {
        let mut z = [0.0; NZ];
        for v in z.iter_mut() {
            *v = bit_normal(self.rng.next_u64());
        }
        z
    }

    fn refresh_labels(&mut self) {
        self.current_id = self.active.last().map_or(0, |a| a.id);
        let mut points: Vec<&str> = Vec::new();
        for a in &self.active {
            let info = attack_list()
                .iter()
                .find(|i| i.id == a.id)
                .expect("active attacks are listed");
            for p in info.points.split(';').filter(|p| !p.is_empty()) {
                if !points.contains(&p) {
                    points.push(p);
                }
            }
        }
        self.current_points = points.join(";").into_bytes();
    }

    fn advance<S: Sink>(&mut self, rows: u64, sink: &mut S) {
        let mut row = [0.0; ch::N];
        for _ in 0..rows {
            let t = self.t;
            if self.active.iter().any(|a| a.end_s <= t) {
                self.active.retain(|a| a.end_s > t);
                self.refresh_labels();
            }
            while let Some(p) = self.plan.get(self.next_planned).copied() {
                if p.start_s > t {
                    break;
                }
                let ready = (attack_model(p.id)
                    .expect("planned attacks have a model")
                    .ready)(&self.plant);
                if !ready && t < p.start_s + p.max_wait_s {
                    break;
                }
                let end_s = (t + p.duration_s).min(self.duration_s);
                self.active.push(ActiveAttack::launch(p.id, end_s));
                self.runs.push(AttackRun {
                    id: p.id,
                    start_s: t,
                    end_s,
                    ready,
                });
                self.next_planned += 1;
                self.refresh_labels();
            }
            let z = self.noise();
            self.plant.step(&z, &mut self.active, &mut row);
            sink.push(&row, self.current_id, &self.current_points, &self.plant);
            self.t += 1;
        }
    }

    fn finish(&self, first: u64, columns: Columns) -> Result<RecordBatch> {
        let rows = columns.attack_id.len();
        let name = self.plant_name.as_bytes();
        let plant_offsets: Vec<i32> = (0..=rows).map(|i| (i * name.len()) as i32).collect();
        let plant_bytes = name.repeat(rows);
        let plant = StringArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(plant_offsets)),
            Buffer::from_vec(plant_bytes),
            None,
        )
        .map_err(|e| Error::Input(format!("plant column: {e}")))?;
        let t0 = self.start_us + first as i64 * 1_000_000;
        let timestamps: Vec<i64> = (0..rows as i64).map(|i| t0 + i * 1_000_000).collect();
        let labels: Vec<i32> = columns
            .attack_id
            .iter()
            .map(|&id| (id != 0) as i32)
            .collect();
        let points = StringArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(columns.point_offsets)),
            Buffer::from_vec(columns.point_bytes),
            None,
        )
        .map_err(|e| Error::Input(format!("attacked_points column: {e}")))?;
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(ch::N + 5);
        arrays.push(Arc::new(plant));
        arrays.push(Arc::new(
            TimestampMicrosecondArray::from(timestamps).with_timezone("UTC"),
        ));
        let values = Buffer::from_vec(columns.values);
        arrays.extend((0..ch::N).map(|c| {
            Arc::new(Float64Array::new(
                ScalarBuffer::new(values.clone(), c * rows, rows),
                None,
            )) as ArrayRef
        }));
        arrays.push(Arc::new(Int32Array::from(labels)));
        arrays.push(Arc::new(Int32Array::from(columns.attack_id)));
        arrays.push(Arc::new(points));
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| Error::Schema(format!("simulated batch: {e}")))
    }
}

/// Approximately standard normal from one 64-bit draw: the count of ones among 48 fair bits (binomial,
/// mean 24, variance 12) plus a uniform from the other 16 bits filling the gaps between its values.
/// Bounded at ±7.2σ with excess kurtosis -0.04: plenty for measurement noise and slow drifts, and several
/// times cheaper than `rand_distr`'s ziggurat here (measured: the ziggurat alone took a third of the run
/// time), which keeps generation well above a million rows per second.
#[inline]
fn bit_normal(bits: u64) -> f64 {
    // Variance of the sum: 12 (binomial) + 1/12 (uniform).
    const INV_SD: f64 = 1.0 / plant::const_sqrt(12.0 + 1.0 / 12.0);
    let ones = (bits >> 16).count_ones() as f64;
    let jitter = (bits & 0xFFFF) as f64 * (1.0 / 65536.0);
    (ones + jitter - 24.5) * INV_SD
}

/// A finished simulation: every row in one batch, and the attacks that ran.
#[derive(Debug, Clone)]
pub struct SimOutput {
    pub batch: RecordBatch,
    pub runs: Vec<AttackRun>,
}

/// Simulates `config.duration_s` seconds at once.
pub fn simulate(config: SimConfig) -> Result<SimOutput> {
    let rows = config.duration_s;
    let mut sim = Simulation::new(config)?;
    let batch = sim
        .next_batch(usize::try_from(rows).unwrap_or(usize::MAX))?
        .expect("duration is at least 1 s");
    Ok(SimOutput {
        batch,
        runs: sim.runs,
    })
}

#[cfg(test)]
mod tests;
