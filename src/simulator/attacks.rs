//! The official SWaT A1 attack list (embedded), what each physical attack does to the simulated plant,
//! and when attacks happen (schedules).
//!
//! Every attack with a physical impact is reproduced by its action: a spoofed reading (the PLCs see it,
//! and it is what gets recorded, as in the official files; the physics carries on), a forced actuator
//! (recorded as it really is), or both, for the listed duration. `attacked_points` are the list's points.
use std::sync::OnceLock;

use super::plant::{act, ch, Plant, UfStep, UF_BACKWASH_EVERY_S};
use crate::{Error, Result};

const ATTACK_LIST_CSV: &str = include_str!("swat_a1_2015_attacks.csv");
/// The first second of the official attack file (local time); official timings are offsets from it.
const OFFICIAL_START: &str = "2015-12-28 10:00:00";

/// One row of the official list.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackInfo {
    pub id: u32,
    /// Seconds from the start of the official attack file (2015-12-28 10:00:00 local time).
    pub start_offset_s: u64,
    /// Rows the attack covers (its end is inclusive).
    pub duration_s: u64,
    /// `;`-separated, as in the list (empty for attacks without physical impact).
    pub points: String,
    pub stages: String,
    pub action: String,
    pub intent: String,
    pub physical_impact: bool,
}

/// How a spoofed reading is made.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SpoofKind {
    /// The reading is replaced by this value.
    Const(f64),
    /// The reading drifts away from the true one by `per_s` each second.
    Ramp { per_s: f64, elapsed: f64 },
    /// The reading is held at what it was when the attack began.
    Freeze(Option<f64>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spoof {
    pub channel: usize,
    pub kind: SpoofKind,
}

/// What an attack does: the readings it falsifies and the actuators it forces (on/open = true).
pub(crate) struct AttackModel {
    pub id: u32,
    pub spoofs: &'static [(usize, SpoofKind)],
    pub forces: &'static [(usize, bool)],
    /// When the attacker strikes in a spread schedule: the moment the action has its intended effect
    /// (e.g. a pump is running), waited for at most the schedule's slack.
    pub ready: fn(&Plant) -> bool,
}

const fn model(
    id: u32,
    spoofs: &'static [(usize, SpoofKind)],
    forces: &'static [(usize, bool)],
    ready: fn(&Plant) -> bool,
) -> AttackModel {
    AttackModel {
        id,
        spoofs,
        forces,
        ready,
    }
}

fn any(_: &Plant) -> bool {
    true
}
fn p101_on(p: &Plant) -> bool {
    p.on[act::P101] && p.q201 > 2.0
}
/// P101 runs and will for a while: T301 is well below H and being drawn from.
fn p101_on_for_long(p: &Plant) -> bool {
    p101_on(p) && p.t301 <= 900.0 && p.on[act::P302]
}
fn p302_filtering(p: &Plant) -> bool {
    p.uf == UfStep::Filtering && p.q301 > 2.0
}
fn ro_running(p: &Plant) -> bool {
    p.on[act::P501] && p.q501 > 1.5
}
fn ro_running_with_uv(p: &Plant) -> bool {
    ro_running(p) && p.on[act::UV401]
}
/// The UF will keep drawing from T301 for `secs` more seconds: no backwash due, room left in T401.
fn uf_runs_for(p: &Plant, secs: u32) -> bool {
    p302_filtering(p)
        && p.filter_s + secs <= UF_BACKWASH_EVERY_S
        && p.t401 + 0.15 * secs as f64 <= 990.0
}
/// A backwash is due within the next minute (attacks that block a backwash valve).
fn backwash_imminent(p: &Plant) -> bool {
    p302_filtering(p) && p.filter_s + 60 >= UF_BACKWASH_EVERY_S
}

/// The action of each of the 36 attacks with physical impact, read from the list's `action` column.
/// Values chosen where the list gives only a bound: "above HH" 1250 mm, "< L" 700 mm, "> H" 850 mm,
/// "< LL" 200 mm, "< 0.7" 0.6 m3/h, "> 40 kPa" 42 kPa, "< 10" 8 mV.
static MODELS: [AttackModel; 36] = [
    // Open MV-101 (was closed) -> tank overflow: strike while MV101 is closed and P101 stopped.
    model(1, &[], &[(act::MV101, true)], |p| {
        p.valves[act::MV101].is_closed() && !p.on[act::P101]
    }),
    // Turn on P-102 while P-101 runs -> pipe bursts (flow above design).
    model(2, &[], &[(act::P102, true)], p101_on),
    // LIT-101 reads +1 mm/s -> MV101 closes, P101 keeps pumping: T101 underflow.
    model(
        3,
        &[(
            ch::LIT101,
            SpoofKind::Ramp {
                per_s: 1.0,
                elapsed: 0.0,
            },
        )],
        &[],
        |p| p101_on_for_long(p) && p.valves[act::MV101].is_closed() && p.t101 <= 700.0,
    ),
    // Open MV-504 (hidden RO flush valve) -> RO feed bypasses the membranes.
    model(4, &[], &[(act::MV504, true)], ro_running),
    // AIT-202 reads 6 -> the PLC stops HCl dosing (P203): pH rises.
    model(6, &[(ch::AIT202, SpoofKind::Const(6.0))], &[], |p| {
        p101_on_for_long(p) && p.on[act::P203]
    }),
    // LIT-301 reads above HH -> P101 stops, P302 drains T301: underflow.
    model(7, &[(ch::LIT301, SpoofKind::Const(1250.0))], &[], |p| {
        uf_runs_for(p, 300)
    }),
    // DPIT-301 reads > 40 kPa -> backwash after backwash.
    model(8, &[(ch::DPIT301, SpoofKind::Const(42.0))], &[], any),
    // FIT-401 reads < 0.7 -> UV401 off; chlorine reaches the RO feed and P501 stops.
    model(
        10,
        &[(ch::FIT401, SpoofKind::Const(0.6))],
        &[],
        ro_running_with_uv,
    ),
    model(
        11,
        &[(ch::FIT401, SpoofKind::Const(0.0))],
        &[],
        ro_running_with_uv,
    ),
    // Close MV-304 -> the backwash sequence cannot drain the UF: stage 3 halts.
    model(13, &[], &[(act::MV304, false)], backwash_imminent),
    // Keep MV-303 closed -> the backwash sequence cannot start: stage 3 halts.
    model(14, &[], &[(act::MV303, false)], backwash_imminent),
    // LIT-301 reads -1 mm/s -> P101 keeps filling T301: overflow.
    model(
        16,
        &[(
            ch::LIT301,
            SpoofKind::Ramp {
                per_s: -1.0,
                elapsed: 0.0,
            },
        )],
        &[],
        |p| p101_on(p) && !p.on[act::P302] && p.t301 >= 900.0,
    ),
    model(17, &[], &[(act::MV303, false)], backwash_imminent),
    // AIT-504 reads high -> the RO shutdown timer runs (30 min).
    model(19, &[(ch::AIT504, SpoofKind::Const(16.0))], &[], ro_running),
    model(
        20,
        &[(ch::AIT504, SpoofKind::Const(255.0))],
        &[],
        ro_running,
    ),
    // Keep MV-101 open; LIT-101 held -> T101 overflow.
    model(
        21,
        &[(ch::LIT101, SpoofKind::Freeze(None))],
        &[(act::MV101, true)],
        |p| p.valves[act::MV101].is_open() && !p.on[act::P101] && p.t101 >= 650.0,
    ),
    // Stop UV-401 and P-501; AIT-502 reads a normal 150 -> RO without feed (damage).
    model(
        22,
        &[(ch::AIT502, SpoofKind::Const(150.0))],
        &[(act::UV401, false), (act::P501, false)],
        ro_running,
    ),
    // DPIT-301 > 0.4 bar; MV-302 kept open; P-602 kept off -> the backwash can never start: freeze.
    model(
        23,
        &[(ch::DPIT301, SpoofKind::Const(42.0))],
        &[(act::MV302, true), (act::P602, false)],
        p302_filtering,
    ),
    // Turn off P-203 and P-205 -> pH up, ORP down.
    model(
        24,
        &[],
        &[(act::P203, false), (act::P205, false)],
        p101_on_for_long,
    ),
    // LIT-401 reads 1000; P-402 kept on -> P302 stops, T401 drains: underflow.
    model(
        25,
        &[(ch::LIT401, SpoofKind::Const(1000.0))],
        &[(act::P402, true)],
        |p| p.on[act::P402] && p.q401 > 1.5 && p.t401 <= 950.0,
    ),
    // P-101 on continuously; LIT-301 held -> T301 overflow.
    model(
        26,
        &[(ch::LIT301, SpoofKind::Freeze(None))],
        &[(act::P101, true)],
        |p| p101_on(p) && (900.0..=985.0).contains(&p.t301),
    ),
    // P-302 kept on; LIT-401 held -> T401 overflow.
    model(
        27,
        &[(ch::LIT401, SpoofKind::Freeze(None))],
        &[(act::P302, true)],
        |p| p302_filtering(p) && p.t401 >= 900.0,
    ),
    // Close P-302 -> T401 gets no inflow.
    model(28, &[], &[(act::P302, false)], p302_filtering),
    // Turn on P-201/203/205 -> chemicals wasted (the flow-switch interlock lets them run only with flow).
    model(
        29,
        &[],
        &[(act::P201, true), (act::P203, true), (act::P205, true)],
        p101_on_for_long,
    ),
    // P-101 on; MV-101 and MV-201 open; LIT-101 held -> T301 overflow.
    model(
        30,
        &[(ch::LIT101, SpoofKind::Freeze(None))],
        &[(act::P101, true), (act::MV101, true), (act::MV201, true)],
        |p| p.t301 >= 900.0,
    ),
    // LIT-401 reads < L -> P302 keeps filling T401: overflow.
    model(31, &[(ch::LIT401, SpoofKind::Const(700.0))], &[], |p| {
        p302_filtering(p) && p.t401 >= 975.0 && p.filter_s + 400 <= UF_BACKWASH_EVERY_S
    }),
    // LIT-301 reads > HH -> P101 stops: T301 underflow.
    model(32, &[(ch::LIT301, SpoofKind::Const(1250.0))], &[], |p| {
        uf_runs_for(p, 300)
    }),
    // LIT-101 reads > H -> MV101 closes, P101 keeps pumping: T101 underflow.
    model(33, &[(ch::LIT101, SpoofKind::Const(850.0))], &[], |p| {
        p101_on(p) && p.t301 <= 900.0
    }),
    // Turn P-101 off -> no outflow from T101.
    model(34, &[], &[(act::P101, false)], p101_on),
    model(35, &[], &[(act::P101, false), (act::P102, false)], p101_on),
    // LIT-101 reads < LL -> MV101 opens, P101 stops: T101 overflow.
    model(36, &[(ch::LIT101, SpoofKind::Const(200.0))], &[], any),
    // Close P-501; FIT-502 reads a normal 1.29 -> no permeate.
    model(
        37,
        &[(ch::FIT502, SpoofKind::Const(1.29))],
        &[(act::P501, false)],
        ro_running,
    ),
    // AIT-402 and AIT-502 read 260 -> bisulphate overdosing, RO feed to drain.
    model(
        38,
        &[
            (ch::AIT402, SpoofKind::Const(260.0)),
            (ch::AIT502, SpoofKind::Const(260.0)),
        ],
        &[],
        ro_running,
    ),
    // FIT-401 reads 0.5, AIT-502 reads < 10 -> UV off, yet P501 keeps sending chlorinated water to the RO.
    model(
        39,
        &[
            (ch::FIT401, SpoofKind::Const(0.5)),
            (ch::AIT502, SpoofKind::Const(8.0)),
        ],
        &[],
        ro_running_with_uv,
    ),
    model(
        40,
        &[(ch::FIT401, SpoofKind::Const(0.0))],
        &[],
        ro_running_with_uv,
    ),
    // LIT-301 reads -0.5 mm/s -> P101 keeps filling T301: overflow.
    model(
        41,
        &[(
            ch::LIT301,
            SpoofKind::Ramp {
                per_s: -0.5,
                elapsed: 0.0,
            },
        )],
        &[],
        p101_on,
    ),
];

pub(crate) fn attack_model(id: u32) -> Option<&'static AttackModel> {
    MODELS.iter().find(|m| m.id == id)
}

/// The official attack list, parsed once from the embedded copy.
pub fn attack_list() -> &'static [AttackInfo] {
    static LIST: OnceLock<Vec<AttackInfo>> = OnceLock::new();
    LIST.get_or_init(|| {
        parse_attack_list(ATTACK_LIST_CSV).expect("the embedded attack list is well formed")
    })
}

/// Ids of the attacks the simulator reproduces (those with a physical impact), in list order.
pub fn physical_attack_ids() -> Vec<u32> {
    attack_list()
        .iter()
        .filter(|a| a.physical_impact)
        .map(|a| a.id)
        .collect()
}

/// Seconds since 1970-01-01 of a `YYYY-MM-DD HH:MM:SS` civil time (no zone).
fn civil_seconds(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

fn parse_attack_list(text: &str) -> Result<Vec<AttackInfo>> {
    const HEADER: &str =
        "attack_no,start,end,duration_s,attack_points,stages,action,intent,physical_impact";
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default().trim();
    if header != HEADER {
        return Err(Error::Schema(format!(
            "attack list: header must be {HEADER:?}, got {header:?}"
        )));
    }
    let origin = civil_seconds(OFFICIAL_START).expect("valid constant");
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let line_no = i + 2;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad =
            |what: &str| Error::Input(format!("attack list line {line_no}: {what}: {line:?}"));
        if f.len() != 9 {
            return Err(bad(&format!("expected 9 fields, found {}", f.len())));
        }
        let id: u32 = f[0].parse().map_err(|_| bad("attack_no is not a number"))?;
        let start = civil_seconds(f[1]).ok_or_else(|| bad("start is not YYYY-MM-DD HH:MM:SS"))?;
        let end = civil_seconds(f[2]).ok_or_else(|| bad("end is not YYYY-MM-DD HH:MM:SS"))?;
        let duration_s: u64 = f[3]
            .parse()
            .map_err(|_| bad("duration_s is not a number"))?;
        if start < origin || end < start || (end - start + 1) as u64 != duration_s {
            return Err(bad("start/end/duration_s disagree (end is inclusive)"));
        }
        let physical_impact = match f[8] {
            "1" => true,
            "0" => false,
            _ => return Err(bad("physical_impact must be 0 or 1")),
        };
        out.push(AttackInfo {
            id,
            start_offset_s: (start - origin) as u64,
            duration_s,
            points: f[4].to_string(),
            stages: f[5].to_string(),
            action: f[6].to_string(),
            intent: f[7].to_string(),
            physical_impact,
        });
    }
    Ok(out)
}

/// When the attacks of a simulation happen.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Normal operation only.
    None,
    /// These attacks, in the order given, spread evenly over the simulated time with normal operation
    /// before, between and after them (at least `MIN_SPREAD_GAP_S`); once its time has come, each waits
    /// for the moment it bites, at most until `MIN_SPREAD_GAP_S / 2` before the next one's time.
    Spread(Vec<u32>),
    /// These attacks at their official times, relative to the simulation's start standing for
    /// 2015-12-28 10:00:00; attacks beyond the simulated time do not happen, one running at its end is cut.
    Official(Vec<u32>),
    /// Attacks at chosen seconds from the start.
    At(Vec<PlannedAttack>),
}

/// One planned attack: launched at `start_s` or, once `start_s` is reached, as soon as the plant is
/// ready for it, waiting at most `max_wait_s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannedAttack {
    pub id: u32,
    pub start_s: u64,
    pub duration_s: u64,
    pub max_wait_s: u64,
}

/// Normal operation kept between two attacks of a spread schedule, at least.
pub const MIN_SPREAD_GAP_S: u64 = 600;

fn checked_ids(ids: &[u32]) -> Result<Vec<&'static AttackInfo>> {
    let mut seen = Vec::with_capacity(ids.len());
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let info = attack_list().iter().find(|a| a.id == id).ok_or_else(|| {
            Error::Config(format!(
                "attack {id} is not in the SWaT A1 attack list (ids 1 to {})",
                attack_list().len()
            ))
        })?;
        if !info.physical_impact {
            return Err(Error::Config(format!(
                "attack {id} has no physical impact in the official list (\"{}\"): there is nothing to simulate",
                info.action
            )));
        }
        if seen.contains(&id) {
            return Err(Error::Config(format!("attack {id} is listed twice")));
        }
        seen.push(id);
        out.push(info);
    }
    Ok(out)
}

impl Schedule {
    /// The planned attacks for a run of `duration_s` seconds, sorted by start.
    pub fn plan(&self, duration_s: u64) -> Result<Vec<PlannedAttack>> {
        let mut plan = match self {
            Schedule::None => Vec::new(),
            Schedule::Spread(ids) => {
                let infos = checked_ids(ids)?;
                let n = infos.len() as u64;
                let attacking: u64 = infos.iter().map(|a| a.duration_s).sum();
                let needed = attacking + (n + 1) * MIN_SPREAD_GAP_S;
                if n > 0 && duration_s < needed {
                    return Err(Error::Config(format!(
                        "{n} attacks last {attacking} s and need {} s of normal operation around them: simulate at \
                         least {needed} s (got {duration_s}), or choose fewer attacks",
                        (n + 1) * MIN_SPREAD_GAP_S
                    )));
                }
                let gap = if n == 0 {
                    0
                } else {
                    (duration_s - attacking) / (n + 1)
                };
                // Waiting for the plant may eat into the gap, but leaves half the minimum gap of normal
                // operation before the next attack's planned start.
                let wait = gap - MIN_SPREAD_GAP_S / 2;
                let mut t = 0;
                infos
                    .iter()
                    .map(|a| {
                        t += gap;
                        let planned = PlannedAttack {
                            id: a.id,
                            start_s: t,
                            duration_s: a.duration_s,
                            max_wait_s: wait,
                        };
                        t += a.duration_s;
                        planned
                    })
                    .collect()
            }
            Schedule::Official(ids) => checked_ids(ids)?
                .iter()
                .map(|a| PlannedAttack {
                    id: a.id,
                    start_s: a.start_offset_s,
                    duration_s: a.duration_s,
                    max_wait_s: 0,
                })
                .collect(),
            Schedule::At(list) => {
                let ids: Vec<u32> = list.iter().map(|p| p.id).collect();
                checked_ids(&ids)?;
                if let Some(p) = list.iter().find(|p| p.duration_s == 0) {
                    return Err(Error::Config(format!(
                        "attack {}: duration must be at least 1 s",
                        p.id
                    )));
                }
                list.clone()
            }
        };
        plan.sort_by_key(|p| p.start_s);
        Ok(plan)
    }
}

/// An attack under way.
pub(crate) struct ActiveAttack {
    pub id: u32,
    /// First second after the attack.
    pub end_s: u64,
    pub spoofs: Vec<Spoof>,
    pub forces: &'static [(usize, bool)],
}

impl ActiveAttack {
    pub fn launch(id: u32, end_s: u64) -> Self {
        let m =
            attack_model(id).expect("scheduled attacks have a model (checked by Schedule::plan)");
        ActiveAttack {
            id,
            end_s,
            spoofs: m
                .spoofs
                .iter()
                .map(|(channel, kind)| Spoof {
                    channel: *channel,
                    kind: kind.clone(),
                })
                .collect(),
            forces: m.forces,
        }
    }
}

/// What happened: an attack that ran, from `start_s` (inclusive) to `end_s` (exclusive), seconds since
/// the start of the simulation; `ready` says whether the plant was in the state the attack waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttackRun {
    pub id: u32,
    pub start_s: u64,
    pub end_s: u64,
    pub ready: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_has_41_attacks_36_physical_each_with_a_model() {
        let list = attack_list();
        assert_eq!(list.len(), 41);
        assert_eq!(
            list.iter().map(|a| a.id).collect::<Vec<_>>(),
            (1..=41).collect::<Vec<_>>()
        );
        let physical = physical_attack_ids();
        assert_eq!(physical.len(), 36);
        for id in [5, 9, 12, 15, 18] {
            assert!(!physical.contains(&id));
        }
        for id in &physical {
            assert!(attack_model(*id).is_some(), "attack {id} has no model");
        }
        assert_eq!(MODELS.len(), 36);
        let first = &list[0];
        assert_eq!(
            (
                first.start_offset_s,
                first.duration_s,
                first.points.as_str()
            ),
            (29 * 60 + 14, 940, "MV101")
        );
        // 2016-01-02 13:13:02 is 5 days 3 h 13 min 2 s after 2015-12-28 10:00:00.
        assert_eq!(list[40].start_offset_s, 5 * 86_400 + 3 * 3600 + 13 * 60 + 2);
        assert_eq!(list[20].points, "MV101;LIT101");
    }

    #[test]
    fn every_model_acts_on_something() {
        for m in MODELS.iter() {
            assert!(
                !m.spoofs.is_empty() || !m.forces.is_empty(),
                "attack {} does nothing",
                m.id
            );
        }
    }

    #[test]
    fn civil_time_parsing() {
        assert_eq!(civil_seconds("1970-01-01 00:00:00"), Some(0));
        assert_eq!(civil_seconds("2015-12-28 10:00:00"), Some(1_451_296_800));
        assert_eq!(civil_seconds("2016-02-29 00:00:01"), Some(1_456_704_001));
        assert_eq!(civil_seconds("2015-13-28 10:00:00"), None);
        assert_eq!(civil_seconds("28/12/2015 10:00"), None);
    }

    #[test]
    fn malformed_lists_are_refused_with_the_line() {
        let head =
            "attack_no,start,end,duration_s,attack_points,stages,action,intent,physical_impact\n";
        let err = parse_attack_list(&format!(
            "{head}1,2015-12-28 10:29:14,2015-12-28 10:44:53,941,MV101,P1,a,b,1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2") && err.contains("disagree"), "{err}");
        let err = parse_attack_list(&format!("{head}1,2015-12-28,x,1,MV101,P1,a,b,1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("start"), "{err}");
        assert!(parse_attack_list("id,start\n").is_err());
    }

    #[test]
    fn spread_schedule_keeps_gaps_and_refuses_too_short_runs() {
        let plan = Schedule::Spread(vec![1, 2]).plan(10_000).unwrap();
        let gap = (10_000 - 940 - 443) / 3;
        assert_eq!(
            plan[0],
            PlannedAttack {
                id: 1,
                start_s: gap,
                duration_s: 940,
                max_wait_s: gap - 300
            }
        );
        assert_eq!(plan[1].start_s, 2 * gap + 940);
        let err = Schedule::Spread(vec![1, 2])
            .plan(2000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 3183 s"), "{err}");
        let all = Schedule::Spread(physical_attack_ids())
            .plan(86_400)
            .unwrap();
        assert_eq!(all.len(), 36);
        assert!(
            all.last()
                .map(|p| p.start_s + p.duration_s + p.max_wait_s)
                .unwrap()
                + 300
                < 86_400
        );
        for w in all.windows(2) {
            assert!(w[0].start_s + w[0].max_wait_s + w[0].duration_s + 300 <= w[1].start_s);
        }
    }

    #[test]
    fn unknown_duplicate_and_inert_attacks_are_config_errors() {
        for (ids, needle) in [
            (vec![42], "not in"),
            (vec![1, 1], "twice"),
            (vec![5], "no physical impact"),
        ] {
            match Schedule::Spread(ids).plan(1_000_000) {
                Err(Error::Config(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn official_schedule_uses_list_offsets() {
        let plan = Schedule::Official(vec![2, 1]).plan(86_400).unwrap();
        assert_eq!(
            plan.iter().map(|p| (p.id, p.start_s)).collect::<Vec<_>>(),
            vec![(1, 1754), (2, 3068)]
        );
    }
}
