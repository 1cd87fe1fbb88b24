//! The SWaT-shaped plant: physical state of the six stages, the PLC logic that drives it, and one
//! 1-second step of both. Everything the PLCs decide is decided on what they *see* (the recorded row,
//! spoofed readings included); the physics always runs on the true state.
//!
//! Water path: raw water (MV101) → T101 → P101 → dosing (P2) → MV201 → T301 → P302 → UF → MV302 → T401
//! → P402 → UV401 → P501 → RO; UF backwash from the hidden tank T602 by P602 through MV301, out by MV303;
//! UF drain MV304. Flows are in m3/h, levels in mm, pressures in kPa, as in the official exports.
use super::attacks::{ActiveAttack, SpoofKind};

/// Sensor columns, in the official file order (indices into a row).
pub(crate) mod ch {
    pub const FIT101: usize = 0;
    pub const LIT101: usize = 1;
    pub const MV101: usize = 2;
    pub const P101: usize = 3;
    pub const P102: usize = 4;
    pub const AIT201: usize = 5;
    pub const AIT202: usize = 6;
    pub const AIT203: usize = 7;
    pub const FIT201: usize = 8;
    pub const MV201: usize = 9;
    pub const P201: usize = 10;
    pub const P202: usize = 11;
    pub const P203: usize = 12;
    pub const P204: usize = 13;
    pub const P205: usize = 14;
    pub const P206: usize = 15;
    pub const DPIT301: usize = 16;
    pub const FIT301: usize = 17;
    pub const LIT301: usize = 18;
    pub const MV301: usize = 19;
    pub const MV302: usize = 20;
    pub const MV303: usize = 21;
    pub const MV304: usize = 22;
    pub const P301: usize = 23;
    pub const P302: usize = 24;
    pub const AIT401: usize = 25;
    pub const AIT402: usize = 26;
    pub const FIT401: usize = 27;
    pub const LIT401: usize = 28;
    pub const P401: usize = 29;
    pub const P402: usize = 30;
    pub const P403: usize = 31;
    pub const P404: usize = 32;
    pub const UV401: usize = 33;
    pub const AIT501: usize = 34;
    pub const AIT502: usize = 35;
    pub const AIT503: usize = 36;
    pub const AIT504: usize = 37;
    pub const FIT501: usize = 38;
    pub const FIT502: usize = 39;
    pub const FIT503: usize = 40;
    pub const FIT504: usize = 41;
    pub const P501: usize = 42;
    pub const P502: usize = 43;
    pub const PIT501: usize = 44;
    pub const PIT502: usize = 45;
    pub const PIT503: usize = 46;
    pub const FIT601: usize = 47;
    pub const P601: usize = 48;
    pub const P602: usize = 49;
    pub const P603: usize = 50;
    pub const N: usize = 51;
}

/// Actuators, recorded or not. The first `N_VALVES` are motorised valves, the rest pumps and UV401.
pub(crate) mod act {
    pub const MV101: usize = 0;
    pub const MV201: usize = 1;
    pub const MV301: usize = 2;
    pub const MV302: usize = 3;
    pub const MV303: usize = 4;
    pub const MV304: usize = 5;
    /// RO flush/drain valve; not a recorded channel in SWaT A1 (attack 4 acts on it).
    pub const MV504: usize = 6;
    pub const N_VALVES: usize = 7;
    pub const P101: usize = 7;
    pub const P102: usize = 8;
    pub const P201: usize = 9;
    pub const P202: usize = 10;
    pub const P203: usize = 11;
    pub const P204: usize = 12;
    pub const P205: usize = 13;
    pub const P206: usize = 14;
    pub const P301: usize = 15;
    pub const P302: usize = 16;
    pub const P401: usize = 17;
    pub const P402: usize = 18;
    pub const P403: usize = 19;
    pub const P404: usize = 20;
    pub const UV401: usize = 21;
    pub const P501: usize = 22;
    pub const P502: usize = 23;
    pub const P601: usize = 24;
    pub const P602: usize = 25;
    pub const P603: usize = 26;
    pub const N: usize = 27;
}

/// Recorded pumps and UV401: (actuator, column). Valves are recorded with their transition state.
const RECORDED_PUMPS: [(usize, usize); 20] = [
    (act::P101, ch::P101),
    (act::P102, ch::P102),
    (act::P201, ch::P201),
    (act::P202, ch::P202),
    (act::P203, ch::P203),
    (act::P204, ch::P204),
    (act::P205, ch::P205),
    (act::P206, ch::P206),
    (act::P301, ch::P301),
    (act::P302, ch::P302),
    (act::P401, ch::P401),
    (act::P402, ch::P402),
    (act::P403, ch::P403),
    (act::P404, ch::P404),
    (act::UV401, ch::UV401),
    (act::P501, ch::P501),
    (act::P502, ch::P502),
    (act::P601, ch::P601),
    (act::P602, ch::P602),
    (act::P603, ch::P603),
];

/// Recorded valves: (actuator, column).
const RECORDED_VALVES: [(usize, usize); 6] = [
    (act::MV101, ch::MV101),
    (act::MV201, ch::MV201),
    (act::MV301, ch::MV301),
    (act::MV302, ch::MV302),
    (act::MV303, ch::MV303),
    (act::MV304, ch::MV304),
];

// ---- set points (mm), from the SWaT A1 facts ----
pub const LIT101_LL: f64 = 250.0;
pub const LIT101_L: f64 = 500.0;
pub const LIT101_H: f64 = 800.0;
#[allow(dead_code)] // the HH alarm: no PLC logic acts on it, tests check levels stay below it
pub const LIT101_HH: f64 = 1200.0;
pub const LIT301_LL: f64 = 250.0;
pub const LIT301_L: f64 = 800.0;
pub const LIT301_H: f64 = 1000.0;
#[allow(dead_code)] // the HH alarm: no PLC logic acts on it, tests check levels stay below it
pub const LIT301_HH: f64 = 1200.0;
pub const LIT401_LL: f64 = 250.0;
pub const LIT401_L: f64 = 800.0;
pub const LIT401_H: f64 = 1000.0;
#[allow(dead_code)] // the HH alarm: no PLC logic acts on it, tests check levels stay below it
pub const LIT401_HH: f64 = 1200.0;
/// Tank height: above it water spills (overflow), so a true level never exceeds it.
pub const TANK_TOP_MM: f64 = 1300.0;
/// Cross-section of T101, T301 and T401: 1 m3/h moves a level by 1/3.6 mm/s.
const MM_PER_S_PER_M3H: f64 = 1000.0 / 3600.0 / 1.0;
/// Below this level a pump loses suction and delivers proportionally less (dry running).
const SUCTION_MM: f64 = 20.0;

// ---- hydraulics (m3/h) ----
const SUPPLY_M3H: f64 = 2.6;
const P101_M3H: f64 = 2.5;
const P302_M3H: f64 = 2.15;
const P402_M3H: f64 = 1.7;
const P501_M3H: f64 = 1.72;
const P602_M3H: f64 = 1.75;
/// Two pumps in parallel on one line deliver this much more than one.
const PARALLEL_GAIN: f64 = 1.35;
/// First-order response of a flow to its pump or valve, per second (time constant ~2 s).
const FLOW_LAG: f64 = 0.4;
/// A flow this small is no flow: flow meters read exactly 0 then, as in the official files.
const NO_FLOW_M3H: f64 = 0.01;
pub const VALVE_TRAVEL_S: u8 = 6;

// ---- PLC constants ----
pub const UF_BACKWASH_EVERY_S: u32 = 1800;
pub const UF_BACKWASH_S: u32 = 60;
pub const UF_DRAIN_S: u32 = 30;
pub const DPIT_BACKWASH_KPA: f64 = 40.0;
const DPIT_CONFIRM_S: u32 = 3;
pub const UV_MIN_FLOW_M3H: f64 = 0.7;
/// FIT201 reading the dosing pumps need (PLC), and the true flow their flow switch needs (interlock).
const DOSING_FLOW_PLC: f64 = 0.5;
const DOSING_FLOW_SWITCH: f64 = 0.3;
pub const PH_LOW_OFF: f64 = 7.0;
const PH_LOW_ON: f64 = 7.2;
const ORP203_HIGH_ON: f64 = 420.0;
const ORP203_HIGH_OFF: f64 = 400.0;
const COND_LOW_ON: f64 = 240.0;
const COND_LOW_OFF: f64 = 250.0;
pub const ORP402_DOSE_ON: f64 = 240.0;
const ORP402_DOSE_OFF: f64 = 220.0;
pub const ORP502_BLOCK_ON: f64 = 250.0;
const ORP502_BLOCK_OFF: f64 = 230.0;
pub const PERMEATE_LIMIT_US: f64 = 15.0;
pub const RO_SHUTDOWN_AFTER_S: u32 = 1800;
const RO_RESTART_AFTER_S: u32 = 60;

// ---- noise: one standard normal per slot, drawn every step whatever the state, so that runs with and
// without an attack share their randomness ----
pub(crate) const NZ: usize = 33;
const Z_LIT101: usize = 0;
const Z_LIT301: usize = 1;
const Z_LIT401: usize = 2;
const Z_FIT101: usize = 3;
const Z_FIT201: usize = 4;
const Z_FIT301: usize = 5;
const Z_FIT401: usize = 6;
const Z_FIT501: usize = 7;
const Z_FIT502: usize = 8;
const Z_FIT503: usize = 9;
const Z_FIT504: usize = 10;
const Z_FIT601: usize = 11;
const Z_AIT201: usize = 12;
const Z_AIT202: usize = 13;
const Z_AIT203: usize = 14;
const Z_AIT401: usize = 15;
const Z_AIT402: usize = 16;
const Z_AIT501: usize = 17;
const Z_AIT502: usize = 18;
const Z_AIT503: usize = 19;
const Z_AIT504: usize = 20;
const Z_DPIT301: usize = 21;
const Z_PIT501: usize = 22;
const Z_PIT502: usize = 23;
const Z_PIT503: usize = 24;
const W_SUPPLY: usize = 25;
const W_COND: usize = 26;
const W_PH: usize = 27;
const W_ORP: usize = 28;
const W_HARD: usize = 29;
const W_ORP402: usize = 30;
const W_PH501: usize = 31;
const W_PERMEATE: usize = 32;

/// A slowly drifting quantity: Ornstein–Uhlenbeck around `mean` with stationary spread `sd` and time
/// constant `tau` seconds, stepped by 1 s.
#[derive(Debug, Clone, Copy)]
struct Drift {
    mean: f64,
    decay: f64,
    kick: f64,
}

impl Drift {
    const fn new(mean: f64, sd: f64, tau: f64) -> Self {
        Drift {
            mean,
            decay: 1.0 / tau,
            kick: sd * const_sqrt(2.0 / tau),
        }
    }
    #[inline]
    fn step(&self, x: f64, w: f64) -> f64 {
        x + (self.mean - x) * self.decay + self.kick * w
    }
}

/// Newton's method, for the constants above (const fn sqrt is not stable).
pub(crate) const fn const_sqrt(v: f64) -> f64 {
    let mut x = if v > 1.0 { v } else { 1.0 };
    let mut i = 0;
    while i < 60 {
        x = 0.5 * (x + v / x);
        i += 1;
    }
    x
}

const SUPPLY_DRIFT: Drift = Drift::new(SUPPLY_M3H, 0.03, 900.0);
const COND_DRIFT: Drift = Drift::new(257.0, 4.0, 7200.0);
const PH_DRIFT: Drift = Drift::new(8.85, 0.05, 3600.0);
const ORP_DRIFT: Drift = Drift::new(250.0, 5.0, 3600.0);
const HARD_DRIFT: Drift = Drift::new(148.0, 0.4, 3600.0);
const ORP402_DRIFT: Drift = Drift::new(170.0, 4.0, 3600.0);
const PH501_DRIFT: Drift = Drift::new(0.0, 0.03, 3600.0);
const PERMEATE_DRIFT: Drift = Drift::new(0.0, 0.3, 1800.0);

/// A motorised valve: settled position, target, and seconds of travel left (reported as 0 = transition).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Valve {
    pub open: bool,
    pub target: bool,
    pub moving: u8,
}

impl Valve {
    const fn at(open: bool) -> Self {
        Valve {
            open,
            target: open,
            moving: 0,
        }
    }
    #[inline]
    fn command(&mut self, open: bool) {
        if open != self.target {
            self.target = open;
            self.moving = VALVE_TRAVEL_S;
        }
    }
    #[inline]
    fn tick(&mut self) {
        if self.moving > 0 {
            self.moving -= 1;
            if self.moving == 0 {
                self.open = self.target;
            }
        }
    }
    /// SWaT encoding: 0 transition, 1 closed, 2 open.
    #[inline]
    pub fn code(&self) -> f64 {
        if self.moving > 0 {
            0.0
        } else if self.open {
            2.0
        } else {
            1.0
        }
    }
    /// Fraction of the full flow the valve lets through.
    #[inline]
    pub fn passage(&self) -> f64 {
        if self.moving > 0 {
            0.5
        } else if self.open {
            1.0
        } else {
            0.0
        }
    }
    #[inline]
    pub fn is_open(&self) -> bool {
        self.moving == 0 && self.open
    }
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.moving == 0 && !self.open
    }
}

/// The UF (stage 3) sequence of PLC3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UfStep {
    Idle,
    /// Opening MV302 before the feed pump starts.
    Starting,
    Filtering,
    /// Feed stopped; waiting for MV302 closed and MV301/MV303 open. A valve that never gets there halts it.
    BwPrepare,
    /// P602 pushes water back through the membrane.
    Backwash,
    /// MV301/MV303 closed, MV304 open: the UF drains.
    BwDrain,
    /// Waiting for MV304 closed.
    BwFinish,
}

/// The whole plant: true physical state, actuator states and PLC memory.
#[derive(Debug, Clone)]
pub(crate) struct Plant {
    // true levels (mm)
    pub t101: f64,
    pub t301: f64,
    pub t401: f64,
    // true flows (m3/h), lagged towards what pumps and valves allow
    pub q101: f64,
    pub q201: f64,
    pub q301: f64,
    /// Part of q301 that reaches T401 (the rest goes to drain through MV304).
    pub q301_to_t401: f64,
    pub q401: f64,
    pub q501: f64,
    pub q601: f64,
    supply: f64,
    // analysers, true values
    pub cond201: f64,
    pub ph202: f64,
    pub orp203: f64,
    pub hard401: f64,
    pub orp402: f64,
    pub ph501: f64,
    pub orp502: f64,
    pub cond503: f64,
    pub cond504: f64,
    cond_base: f64,
    ph_raw: f64,
    orp_raw: f64,
    orp402_base: f64,
    ph501_dev: f64,
    permeate_dev: f64,
    // pressures (kPa) and UF fouling
    pub dpit301: f64,
    pub pit501: f64,
    pub pit502: f64,
    pub pit503: f64,
    pub fouling: f64,
    // actuators
    pub valves: [Valve; act::N_VALVES],
    pub on: [bool; act::N],
    // PLC memory
    pub t301_request: bool,
    pub p1_lock: bool,
    ph_low: bool,
    orp203_high: bool,
    cond_low: bool,
    pub uf_request: bool,
    pub p3_lock: bool,
    dpit_high_s: u32,
    pub filter_s: u32,
    pub uf: UfStep,
    uf_timer: u32,
    pub p4_lock: bool,
    orp402_high: bool,
    pub orp502_block: bool,
    pub ro_bad_s: u32,
    ro_ok_s: u32,
    pub ro_shutdown: bool,
    /// Backwashes started (P602 commanded on from off), for tests and the record of events.
    pub backwashes: u64,
}

#[inline]
fn measured_flow(q: f64, z: f64) -> f64 {
    if q < NO_FLOW_M3H {
        0.0
    } else {
        (q * (1.0 + 0.004 * z)).max(0.0)
    }
}

#[inline]
fn lag_flow(q: f64, target: f64) -> f64 {
    let next = q + (target - q) * FLOW_LAG;
    if target == 0.0 && next < NO_FLOW_M3H {
        0.0
    } else {
        next
    }
}

#[inline]
fn hysteresis(state: &mut bool, value: f64, on_at_or_below: f64, off_at_or_above: f64) {
    if value <= on_at_or_below {
        *state = true;
    } else if value >= off_at_or_above {
        *state = false;
    }
}

#[inline]
fn code(on: bool) -> f64 {
    if on {
        2.0
    } else {
        1.0
    }
}

impl Plant {
    /// A plausible running state; the simulator then runs it unrecorded for a while so that the phase
    /// of the cycles at the first recorded second depends on the seed.
    pub fn new(t101: f64, t301: f64, t401: f64) -> Self {
        let mut valves = [Valve::at(false); act::N_VALVES];
        valves[act::MV201] = Valve::at(true);
        let mut on = [false; act::N];
        on[act::P101] = true;
        on[act::P402] = true;
        on[act::UV401] = true;
        on[act::P501] = true;
        Plant {
            t101,
            t301,
            t401,
            q101: 0.0,
            q201: P101_M3H,
            q301: 0.0,
            q301_to_t401: 0.0,
            q401: P402_M3H,
            q501: P501_M3H,
            q601: 0.0,
            supply: SUPPLY_M3H,
            cond201: 257.0,
            ph202: 8.4,
            orp203: 330.0,
            hard401: 148.0,
            orp402: 170.0,
            ph501: 7.9,
            orp502: 145.0,
            cond503: 267.0,
            cond504: 12.0,
            cond_base: 257.0,
            ph_raw: 8.85,
            orp_raw: 250.0,
            orp402_base: 170.0,
            ph501_dev: 0.0,
            permeate_dev: 0.0,
            dpit301: 2.5,
            pit501: 250.0,
            pit502: 1.3,
            pit503: 190.0,
            fouling: 0.0,
            valves,
            on,
            t301_request: true,
            p1_lock: false,
            ph_low: false,
            orp203_high: false,
            cond_low: false,
            uf_request: false,
            p3_lock: false,
            dpit_high_s: 0,
            filter_s: 0,
            uf: UfStep::Idle,
            uf_timer: 0,
            p4_lock: false,
            orp402_high: false,
            orp502_block: false,
            ro_bad_s: 0,
            ro_ok_s: 0,
            ro_shutdown: false,
            backwashes: 0,
        }
    }

    /// Sensor readings from the true state, with measurement noise.
    #[inline]
    fn measure(&self, z: &[f64; NZ], row: &mut [f64; ch::N]) {
        row[ch::FIT101] = measured_flow(self.q101, z[Z_FIT101]);
        row[ch::LIT101] = (self.t101 + 0.4 * z[Z_LIT101]).max(0.0);
        row[ch::AIT201] = self.cond201 + 0.15 * z[Z_AIT201];
        row[ch::AIT202] = self.ph202 + 0.004 * z[Z_AIT202];
        row[ch::AIT203] = self.orp203 + 0.3 * z[Z_AIT203];
        row[ch::FIT201] = measured_flow(self.q201, z[Z_FIT201]);
        row[ch::DPIT301] = (self.dpit301 + 0.05 * z[Z_DPIT301]).max(0.0);
        row[ch::FIT301] = measured_flow(self.q301, z[Z_FIT301]);
        row[ch::LIT301] = (self.t301 + 0.4 * z[Z_LIT301]).max(0.0);
        row[ch::AIT401] = self.hard401 + 0.02 * z[Z_AIT401];
        row[ch::AIT402] = self.orp402 + 0.3 * z[Z_AIT402];
        row[ch::FIT401] = measured_flow(self.q401, z[Z_FIT401]);
        row[ch::LIT401] = (self.t401 + 0.4 * z[Z_LIT401]).max(0.0);
        row[ch::AIT501] = self.ph501 + 0.003 * z[Z_AIT501];
        row[ch::AIT502] = self.orp502 + 0.3 * z[Z_AIT502];
        row[ch::AIT503] = self.cond503 + 0.2 * z[Z_AIT503];
        row[ch::AIT504] = (self.cond504 + 0.05 * z[Z_AIT504]).max(0.0);
        let mv504 = self.valves[act::MV504].passage();
        row[ch::FIT501] = measured_flow(self.q501, z[Z_FIT501]);
        row[ch::FIT502] = measured_flow(self.q501 * 0.74 * (1.0 - 0.5 * mv504), z[Z_FIT502]);
        row[ch::FIT503] = measured_flow(self.q501 * 0.42 * (1.0 + 0.6 * mv504), z[Z_FIT503]);
        row[ch::FIT504] = measured_flow(self.q501 * 0.18, z[Z_FIT504]);
        row[ch::PIT501] = (self.pit501 + 0.3 * z[Z_PIT501]).max(0.0);
        row[ch::PIT502] = (self.pit502 + 0.02 * z[Z_PIT502]).max(0.0);
        row[ch::PIT503] = (self.pit503 + 0.3 * z[Z_PIT503]).max(0.0);
        row[ch::FIT601] = measured_flow(self.q601, z[Z_FIT601]);
    }

    /// One second: measure, let the attacks falsify what the PLCs see, run the PLCs, let the attacks
    /// force actuators, move the actuators, record, then advance the physics. `row` receives the record.
    #[inline]
    pub fn step(&mut self, z: &[f64; NZ], attacks: &mut [ActiveAttack], row: &mut [f64; ch::N]) {
        self.measure(z, row);
        for a in attacks.iter_mut() {
            for s in a.spoofs.iter_mut() {
                let measured = row[s.channel];
                row[s.channel] = match &mut s.kind {
                    SpoofKind::Const(v) => *v,
                    SpoofKind::Ramp { per_s, elapsed } => {
                        *elapsed += 1.0;
                        measured + *per_s * *elapsed
                    }
                    SpoofKind::Freeze(held) => *held.get_or_insert(measured),
                };
            }
        }

        let mut cmd = self.plc(row);
        for a in attacks.iter() {
            for &(actuator, state) in a.forces {
                cmd[actuator] = state;
            }
        }
        self.actuate(&cmd);
        for &(a, c) in RECORDED_PUMPS.iter() {
            row[c] = code(self.on[a]);
        }
        for &(a, c) in RECORDED_VALVES.iter() {
            row[c] = self.valves[a].code();
        }
        self.physics(z);
    }

    /// The six PLCs' scan on the readings they see. Returns the command of every actuator
    /// (valves: open; pumps: on).
    #[inline]
    fn plc(&mut self, seen: &[f64; ch::N]) -> [bool; act::N] {
        let mut cmd = [false; act::N];

        // PLC1: inlet valve by T101 level; feed pump protected against a dry tank.
        let lit101 = seen[ch::LIT101];
        let mut mv101 = self.valves[act::MV101].target;
        hysteresis(&mut mv101, lit101, LIT101_L, LIT101_H);
        cmd[act::MV101] = mv101;
        if lit101 <= LIT101_LL {
            self.p1_lock = true;
        } else if lit101 >= LIT101_L {
            self.p1_lock = false;
        }

        // PLC2: T301 asks for water below L and is satisfied at H; P101 runs once MV201 is open.
        hysteresis(&mut self.t301_request, seen[ch::LIT301], LIT301_L, LIT301_H);
        cmd[act::MV201] = self.t301_request;
        cmd[act::P101] = self.t301_request && !self.p1_lock && self.valves[act::MV201].is_open();
        let dosing = seen[ch::FIT201] >= DOSING_FLOW_PLC;
        // HCl lowers pH: stop dosing if the pH reads low.
        if seen[ch::AIT202] <= PH_LOW_OFF {
            self.ph_low = true;
        } else if seen[ch::AIT202] >= PH_LOW_ON {
            self.ph_low = false;
        }
        if seen[ch::AIT203] >= ORP203_HIGH_ON {
            self.orp203_high = true;
        } else if seen[ch::AIT203] <= ORP203_HIGH_OFF {
            self.orp203_high = false;
        }
        hysteresis(
            &mut self.cond_low,
            seen[ch::AIT201],
            COND_LOW_ON,
            COND_LOW_OFF,
        );
        cmd[act::P201] = dosing && self.cond_low;
        cmd[act::P203] = dosing && !self.ph_low;
        cmd[act::P205] = dosing && !self.orp203_high;

        // PLC3: UF feed by T401 level, pump protected by T301 level, backwash every 30 min of
        // filtration or on high membrane differential pressure.
        hysteresis(&mut self.uf_request, seen[ch::LIT401], LIT401_L, LIT401_H);
        if seen[ch::LIT301] <= LIT301_LL {
            self.p3_lock = true;
        } else if seen[ch::LIT301] >= LIT301_LL + 100.0 {
            self.p3_lock = false;
        }
        self.dpit_high_s = if seen[ch::DPIT301] >= DPIT_BACKWASH_KPA {
            self.dpit_high_s + 1
        } else {
            0
        };
        let due = self.filter_s >= UF_BACKWASH_EVERY_S || self.dpit_high_s >= DPIT_CONFIRM_S;
        let run = self.uf_request && !self.p3_lock;
        let v = &self.valves;
        let next = match self.uf {
            UfStep::Idle if due => UfStep::BwPrepare,
            UfStep::Idle if run => UfStep::Starting,
            UfStep::Starting if due => UfStep::BwPrepare,
            UfStep::Starting if !run => UfStep::Idle,
            UfStep::Starting if v[act::MV302].is_open() => UfStep::Filtering,
            UfStep::Filtering if due => UfStep::BwPrepare,
            UfStep::Filtering if !run => UfStep::Idle,
            UfStep::BwPrepare
                if v[act::MV302].is_closed()
                    && v[act::MV301].is_open()
                    && v[act::MV303].is_open() =>
            {
                UfStep::Backwash
            }
            UfStep::Backwash if self.uf_timer >= UF_BACKWASH_S => UfStep::BwDrain,
            UfStep::BwDrain if self.uf_timer >= UF_DRAIN_S => UfStep::BwFinish,
            UfStep::BwFinish if v[act::MV304].is_closed() => UfStep::Idle,
            same => same,
        };
        if next != self.uf {
            if self.uf == UfStep::BwFinish {
                self.filter_s = 0;
                self.dpit_high_s = 0;
            }
            if next == UfStep::Backwash {
                self.backwashes += 1;
            }
            self.uf = next;
            self.uf_timer = 0;
        }
        match self.uf {
            UfStep::Filtering if seen[ch::FIT301] > 1.0 => self.filter_s += 1,
            UfStep::Backwash => self.uf_timer += 1,
            UfStep::BwDrain
                if v[act::MV304].is_open()
                    && v[act::MV301].is_closed()
                    && v[act::MV303].is_closed() =>
            {
                self.uf_timer += 1
            }
            _ => {}
        }
        let uf = self.uf;
        cmd[act::P302] = uf == UfStep::Filtering;
        cmd[act::MV302] = matches!(uf, UfStep::Starting | UfStep::Filtering);
        cmd[act::MV301] = matches!(uf, UfStep::BwPrepare | UfStep::Backwash);
        cmd[act::MV303] = matches!(uf, UfStep::BwPrepare | UfStep::Backwash);
        cmd[act::MV304] = uf == UfStep::BwDrain;
        cmd[act::P602] = uf == UfStep::Backwash;

        // PLC4: RO feed pump by T401 level; UV needs a minimum flow; bisulphate on high ORP.
        if seen[ch::LIT401] <= LIT401_LL {
            self.p4_lock = true;
        } else if seen[ch::LIT401] >= LIT401_L {
            self.p4_lock = false;
        }
        // PLC5: RO shuts down after 30 min of permeate conductivity above its limit, restarts after
        // a minute below it; the RO pump is held off while the feed ORP says chlorine is present.
        self.ro_bad_s = if seen[ch::AIT504] > PERMEATE_LIMIT_US {
            self.ro_bad_s + 1
        } else {
            0
        };
        if self.ro_bad_s >= RO_SHUTDOWN_AFTER_S {
            self.ro_shutdown = true;
        }
        if self.ro_shutdown {
            self.ro_ok_s = if seen[ch::AIT504] <= PERMEATE_LIMIT_US {
                self.ro_ok_s + 1
            } else {
                0
            };
            if self.ro_ok_s >= RO_RESTART_AFTER_S {
                self.ro_shutdown = false;
                self.ro_ok_s = 0;
            }
        }
        let p402 = !self.p4_lock && !self.ro_shutdown;
        cmd[act::P402] = p402;
        cmd[act::UV401] = p402 && seen[ch::FIT401] >= UV_MIN_FLOW_M3H;
        if seen[ch::AIT402] >= ORP402_DOSE_ON {
            self.orp402_high = true;
        } else if seen[ch::AIT402] <= ORP402_DOSE_OFF {
            self.orp402_high = false;
        }
        cmd[act::P403] = p402 && self.orp402_high;
        if seen[ch::AIT502] >= ORP502_BLOCK_ON {
            self.orp502_block = true;
        } else if seen[ch::AIT502] <= ORP502_BLOCK_OFF {
            self.orp502_block = false;
        }
        cmd[act::P501] = p402 && !self.orp502_block;
        // Standby and unused pumps (P102, P202, P204, P206, P301, P401, P404, P502, P601, P603) and
        // MV504 stay off/closed: `cmd` starts all false.
        cmd
    }

    /// Commands become actuator states; dosing pumps have a hardware flow switch (attack 29's interlock).
    #[inline]
    fn actuate(&mut self, cmd: &[bool; act::N]) {
        for (valve, &open) in self.valves.iter_mut().zip(cmd.iter()) {
            valve.command(open);
        }
        self.on[act::N_VALVES..].copy_from_slice(&cmd[act::N_VALVES..]);
        let flowing = self.q201 >= DOSING_FLOW_SWITCH;
        for p in [
            act::P201,
            act::P202,
            act::P203,
            act::P204,
            act::P205,
            act::P206,
        ] {
            self.on[p] &= flowing;
        }
    }

    /// The physics of one second.
    #[inline]
    fn physics(&mut self, z: &[f64; NZ]) {
        let on = &self.on;
        let v = &self.valves;
        // P1: raw water in through MV101, out by P101/P102 through MV201 into T301.
        self.supply = SUPPLY_DRIFT.step(self.supply, z[W_SUPPLY]);
        self.q101 = lag_flow(self.q101, self.supply * v[act::MV101].passage());
        let p1_pumps = on[act::P101] as u8 + on[act::P102] as u8;
        let p1_capacity = match p1_pumps {
            0 => 0.0,
            1 => P101_M3H,
            _ => P101_M3H * PARALLEL_GAIN,
        };
        let suction101 = (self.t101 / SUCTION_MM).min(1.0);
        self.q201 = lag_flow(
            self.q201,
            p1_capacity * v[act::MV201].passage() * suction101,
        );

        // P3: UF feed to T401 through MV302, or to drain through MV304.
        let p3_pumps = on[act::P301] as u8 + on[act::P302] as u8;
        let p3_capacity = match p3_pumps {
            0 => 0.0,
            1 => P302_M3H,
            _ => P302_M3H * PARALLEL_GAIN,
        };
        let to_t401 = v[act::MV302].passage();
        let to_drain = v[act::MV304].passage();
        let path = to_t401.max(to_drain);
        let suction301 = (self.t301 / SUCTION_MM).min(1.0);
        self.q301 = lag_flow(self.q301, p3_capacity * path * suction301);
        self.q301_to_t401 = if path > 0.0 {
            self.q301 * to_t401 / (to_t401 + to_drain)
        } else {
            0.0
        };

        // P4: T401 to UV and the RO (or to drain when the RO pump is held off).
        let p4_pumps = on[act::P401] as u8 + on[act::P402] as u8;
        let p4_capacity = match p4_pumps {
            0 => 0.0,
            1 => P402_M3H,
            _ => P402_M3H * PARALLEL_GAIN,
        };
        let suction401 = (self.t401 / SUCTION_MM).min(1.0);
        self.q401 = lag_flow(self.q401, p4_capacity * suction401);

        // P5: the RO pump can only move what P4 delivers.
        let p5_on = on[act::P501] || on[act::P502];
        let feed = (self.q401 / (0.9 * P402_M3H)).min(1.0);
        self.q501 = lag_flow(self.q501, if p5_on { P501_M3H * feed } else { 0.0 });
        // P6: UF backwash through MV301.
        self.q601 = lag_flow(
            self.q601,
            if on[act::P602] {
                P602_M3H * v[act::MV301].passage()
            } else {
                0.0
            },
        );

        // Tanks integrate in- and outflows; above the top they spill.
        let k = MM_PER_S_PER_M3H;
        self.t101 = (self.t101 + (self.q101 - self.q201) * k).clamp(0.0, TANK_TOP_MM);
        self.t301 = (self.t301 + (self.q201 - self.q301) * k).clamp(0.0, TANK_TOP_MM);
        self.t401 = (self.t401 + (self.q301_to_t401 - self.q401) * k).clamp(0.0, TANK_TOP_MM);

        // Stage 2 water quality follows dosing while water flows; standing water keeps its values.
        self.cond_base = COND_DRIFT.step(self.cond_base, z[W_COND]);
        self.ph_raw = PH_DRIFT.step(self.ph_raw, z[W_PH]);
        self.orp_raw = ORP_DRIFT.step(self.orp_raw, z[W_ORP]);
        if self.q201 >= DOSING_FLOW_SWITCH {
            let dosed = |p: usize| if on[p] { 1.0 } else { 0.0 };
            self.cond201 += (self.cond_base + 28.0 * dosed(act::P201) - self.cond201) / 120.0;
            self.ph202 += (self.ph_raw - 0.45 * dosed(act::P203) - self.ph202) / 90.0;
            self.orp203 += (self.orp_raw + 80.0 * dosed(act::P205) - self.orp203) / 90.0;
        }
        // Stage 4: hardness barely moves; bisulphate lowers the ORP of T401's water.
        self.hard401 = HARD_DRIFT.step(self.hard401, z[W_HARD]);
        self.orp402_base = ORP402_DRIFT.step(self.orp402_base, z[W_ORP402]);
        let bisulphate = if on[act::P403] || on[act::P404] {
            60.0
        } else {
            0.0
        };
        self.orp402 += (self.orp402_base - bisulphate - self.orp402) / 120.0;
        // Stage 5: the UV destroys the chlorine; without it the RO feed carries stage 2's ORP.
        if self.q401 >= DOSING_FLOW_SWITCH {
            let target = if on[act::UV401] {
                self.orp402 - 25.0
            } else {
                self.orp203
            };
            self.orp502 += (target - self.orp502) / 30.0;
        }
        self.ph501_dev = PH501_DRIFT.step(self.ph501_dev, z[W_PH501]);
        self.ph501 += (self.ph202 - 0.5 + self.ph501_dev - self.ph501) / 600.0;
        self.cond503 += (self.cond201 + 10.0 - self.cond503) / 900.0;
        self.permeate_dev = PERMEATE_DRIFT.step(self.permeate_dev, z[W_PERMEATE]);
        if self.q501 >= DOSING_FLOW_SWITCH {
            let bypass = 1.0 + 0.3 * v[act::MV504].passage();
            self.cond504 +=
                (0.045 * self.cond503 * bypass + self.permeate_dev - self.cond504) / 60.0;
        }

        // UF: fouling grows with filtered water and is washed off by backwash flow.
        let filtering = self.q301_to_t401 >= DOSING_FLOW_SWITCH;
        if filtering {
            self.fouling += 0.003 * self.q301_to_t401 / P302_M3H;
        }
        self.fouling *= 1.0 - 0.05 * self.q601 / P602_M3H;
        let dpit_target = if self.q601 >= DOSING_FLOW_SWITCH {
            6.0
        } else if filtering {
            2.5 + (16.5 + self.fouling) * self.q301_to_t401 / P302_M3H
        } else {
            2.5
        };
        self.dpit301 += (dpit_target - self.dpit301) / 3.0;
        // RO pressures follow the RO pump; an open MV504 bypasses the membranes.
        let frac = self.q501 / P501_M3H;
        let bypass = v[act::MV504].passage();
        self.pit501 += (10.0 + 240.0 * frac * (1.0 - 0.4 * bypass) - self.pit501) / 3.0;
        self.pit502 += (0.2 + 1.1 * frac * (1.0 - 0.5 * bypass) - self.pit502) / 3.0;
        self.pit503 += (8.0 + 182.0 * frac * (1.0 - 0.6 * bypass) - self.pit503) / 3.0;

        for valve in self.valves.iter_mut() {
            valve.tick();
        }
    }
}
