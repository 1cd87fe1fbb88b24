//! Bindings for the plant simulator (src/simulator/): argument conversion and GIL release only.
use pyo3::prelude::*;
use pyo3_arrow::{PyRecordBatch, PySchema};

use super::to_py;
use crate::simulator::{self, AttackRun, Schedule, SimConfig, Simulation, DEFAULT_START_US};
use crate::Error;

/// (attack id, first second, second after the last, whether the plant was ready), seconds from the start.
type RunTuple = (u32, u64, u64, bool);

fn run_tuples(runs: &[AttackRun]) -> Vec<RunTuple> {
    runs.iter().map(|r| (r.id, r.start_s, r.end_s, r.ready)).collect()
}

fn config(duration_s: u64, seed: u64, start_us: i64, attacks: Vec<u32>, timing: &str, plant: String) -> PyResult<SimConfig> {
    let schedule = match (timing, attacks.is_empty()) {
        ("spread" | "official", true) => Schedule::None,
        ("spread", false) => Schedule::Spread(attacks),
        ("official", false) => Schedule::Official(attacks),
        (other, _) => {
            return Err(to_py(Error::Config(format!("timing must be 'spread' or 'official', got {other:?}"))));
        }
    };
    Ok(SimConfig { plant, start_us, duration_s, seed, schedule })
}

/// Simulates `duration_s` seconds of the SWaT-shaped plant at once. Returns the rows as a
/// pyarrow.RecordBatch and the attacks that ran as (id, start_s, end_s, ready) tuples.
#[pyfunction]
#[pyo3(signature = (duration_s, *, seed=0, start_us=DEFAULT_START_US, attacks=Vec::new(), timing="spread", plant="swat".to_string()))]
fn simulate(
    py: Python<'_>,
    duration_s: u64,
    seed: u64,
    start_us: i64,
    attacks: Vec<u32>,
    timing: &str,
    plant: String,
) -> PyResult<(Py<PyAny>, Vec<RunTuple>)> {
    let config = config(duration_s, seed, start_us, attacks, timing, plant)?;
    let out = py.detach(|| simulator::simulate(config)).map_err(to_py)?;
    let runs = run_tuples(&out.runs);
    Ok((PyRecordBatch::new(out.batch).into_pyarrow(py)?.unbind(), runs))
}

/// A simulation that hands out its rows batch by batch (same rows as `simulate` for the same settings).
#[pyclass(name = "PlantSimulation", module = "tidewatch")]
pub struct PyPlantSimulation {
    inner: Simulation,
}

#[pymethods]
impl PyPlantSimulation {
    #[new]
    #[pyo3(signature = (duration_s, *, seed=0, start_us=DEFAULT_START_US, attacks=Vec::new(), timing="spread", plant="swat".to_string()))]
    fn new(
        py: Python<'_>,
        duration_s: u64,
        seed: u64,
        start_us: i64,
        attacks: Vec<u32>,
        timing: &str,
        plant: String,
    ) -> PyResult<Self> {
        let config = config(duration_s, seed, start_us, attacks, timing, plant)?;
        let inner = py.detach(|| Simulation::new(config)).map_err(to_py)?;
        Ok(Self { inner })
    }
    /// The next at most `max_rows` rows as a pyarrow.RecordBatch, or None when the simulation is over.
    fn next_batch(&mut self, py: Python<'_>, max_rows: usize) -> PyResult<Option<Py<PyAny>>> {
        let inner = &mut self.inner;
        match py.detach(|| inner.next_batch(max_rows)).map_err(to_py)? {
            Some(batch) => Ok(Some(PyRecordBatch::new(batch).into_pyarrow(py)?.unbind())),
            None => Ok(None),
        }
    }
    /// Rows still to come.
    #[getter]
    fn remaining(&self) -> u64 {
        self.inner.remaining()
    }
    /// Attacks launched so far: (id, start_s, end_s, ready).
    #[getter]
    fn runs(&self) -> Vec<RunTuple> {
        run_tuples(self.inner.runs())
    }
    #[getter]
    fn schema(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(PySchema::new(self.inner.schema()).into_pyarrow(py)?.unbind())
    }
}

/// Ids of the official attacks the simulator reproduces (those with a physical impact).
#[pyfunction]
fn simulated_attack_ids() -> Vec<u32> {
    simulator::physical_attack_ids()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(simulate, m)?)?;
    m.add_function(wrap_pyfunction!(simulated_attack_ids, m)?)?;
    m.add_class::<PyPlantSimulation>()?;
    Ok(())
}
