//! Which columns a plant has, in which order, and which process stage each belongs to.
//! SWaT A1 is built in; other plants bring a small YAML or JSON file.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// SWaT A1 (Dec 2015) sensors and actuators in the column order of the official exports, with their stage.
const SWAT_A1: [(&str, &str); 51] = [
    ("FIT101", "P1"), ("LIT101", "P1"), ("MV101", "P1"), ("P101", "P1"), ("P102", "P1"),
    ("AIT201", "P2"), ("AIT202", "P2"), ("AIT203", "P2"), ("FIT201", "P2"), ("MV201", "P2"),
    ("P201", "P2"), ("P202", "P2"), ("P203", "P2"), ("P204", "P2"), ("P205", "P2"), ("P206", "P2"),
    ("DPIT301", "P3"), ("FIT301", "P3"), ("LIT301", "P3"), ("MV301", "P3"), ("MV302", "P3"),
    ("MV303", "P3"), ("MV304", "P3"), ("P301", "P3"), ("P302", "P3"),
    ("AIT401", "P4"), ("AIT402", "P4"), ("FIT401", "P4"), ("LIT401", "P4"), ("P401", "P4"),
    ("P402", "P4"), ("P403", "P4"), ("P404", "P4"), ("UV401", "P4"),
    ("AIT501", "P5"), ("AIT502", "P5"), ("AIT503", "P5"), ("AIT504", "P5"), ("FIT501", "P5"),
    ("FIT502", "P5"), ("FIT503", "P5"), ("FIT504", "P5"), ("P501", "P5"), ("P502", "P5"),
    ("PIT501", "P5"), ("PIT502", "P5"), ("PIT503", "P5"),
    ("FIT601", "P6"), ("P601", "P6"), ("P602", "P6"), ("P603", "P6"),
];

/// The one stage of a plant described without stages.
pub const DEFAULT_STAGE: &str = "all";

/// The plant file as users write it. Unknown top-level keys are refused (a misspelt key would
/// otherwise be ignored silently), except `csv`, which belongs to the Python CSV reader.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlantFile {
    plant: String,
    sensors: Vec<String>,
    /// stage name -> its sensors; the file's order of stages is the process order. Optional: a plant
    /// without stages gets one, `DEFAULT_STAGE`.
    #[serde(default)]
    stages: serde_yaml_ng::Mapping,
    #[serde(default)]
    #[allow(dead_code)]
    csv: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SensorSetFields")]
pub struct SensorSet {
    plant: String,
    sensors: Vec<String>,
    /// Stage names in process order.
    stages: Vec<String>,
    /// For each sensor, the index of its stage in `stages`.
    stage_index: Vec<usize>,
}

/// A serialised sensor set as it arrives (from a manifest, an executor, a user): checked like a new one.
#[derive(Deserialize)]
struct SensorSetFields {
    plant: String,
    sensors: Vec<String>,
    stages: Vec<String>,
    stage_index: Vec<usize>,
}

impl TryFrom<SensorSetFields> for SensorSet {
    type Error = Error;
    fn try_from(f: SensorSetFields) -> Result<Self> {
        if f.stage_index.len() != f.sensors.len() {
            return Err(Error::Config(format!(
                "plant '{}': {} sensors but {} stage indices",
                f.plant,
                f.sensors.len(),
                f.stage_index.len()
            )));
        }
        let mut stages: Vec<(String, Vec<String>)> = f.stages.iter().map(|s| (s.clone(), Vec::new())).collect();
        for (sensor, &k) in f.sensors.iter().zip(&f.stage_index) {
            let Some(stage) = stages.get_mut(k) else {
                return Err(Error::Config(format!(
                    "plant '{}': sensor '{sensor}' has stage index {k}, but there are {} stages",
                    f.plant,
                    f.stages.len()
                )));
            };
            stage.1.push(sensor.clone());
        }
        SensorSet::new(&f.plant, f.sensors, stages)
    }
}

impl SensorSet {
    /// `stages` lists (stage, its sensors) in process order; every sensor must be in exactly one stage.
    /// No stages at all: every sensor is in one stage, `DEFAULT_STAGE`.
    pub fn new(plant: &str, sensors: Vec<String>, stages: Vec<(String, Vec<String>)>) -> Result<Self> {
        if sensors.is_empty() {
            return Err(Error::Config(format!("plant '{plant}': the sensor list is empty")));
        }
        let stages = if stages.is_empty() { vec![(DEFAULT_STAGE.to_string(), sensors.clone())] } else { stages };
        let mut position: HashMap<&str, usize> = HashMap::new();
        for (i, s) in sensors.iter().enumerate() {
            if position.insert(s.as_str(), i).is_some() {
                return Err(Error::Config(format!("plant '{plant}': sensor '{s}' is listed twice")));
            }
        }
        let mut stage_index = vec![usize::MAX; sensors.len()];
        let mut stage_names = Vec::with_capacity(stages.len());
        for (k, (stage, members)) in stages.iter().enumerate() {
            if stage_names.contains(stage) {
                return Err(Error::Config(format!("plant '{plant}': stage '{stage}' is listed twice")));
            }
            stage_names.push(stage.clone());
            for m in members {
                let Some(&i) = position.get(m.as_str()) else {
                    return Err(Error::Config(format!(
                        "plant '{plant}': stage '{stage}' names sensor '{m}', which is not in the sensor list"
                    )));
                };
                if stage_index[i] != usize::MAX {
                    return Err(Error::Config(format!(
                        "plant '{plant}': sensor '{m}' is in stages '{}' and '{stage}'",
                        stage_names[stage_index[i]]
                    )));
                }
                stage_index[i] = k;
            }
        }
        let unstaged: Vec<&str> = sensors
            .iter()
            .zip(&stage_index)
            .filter(|(_, &k)| k == usize::MAX)
            .map(|(s, _)| s.as_str())
            .collect();
        if !unstaged.is_empty() {
            return Err(Error::Config(format!(
                "plant '{plant}': sensors without a stage: {}",
                unstaged.join(", ")
            )));
        }
        Ok(SensorSet { plant: plant.to_string(), sensors, stages: stage_names, stage_index })
    }

    /// The SWaT A1 testbed: 51 columns, stages P1–P6.
    pub fn swat() -> Self {
        let mut stages: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (s, p) in SWAT_A1 {
            stages.entry(p).or_default().push(s.to_string());
        }
        let sensors = SWAT_A1.iter().map(|(s, _)| s.to_string()).collect();
        let stages = stages.into_iter().map(|(p, m)| (p.to_string(), m)).collect();
        SensorSet::new("swat", sensors, stages).expect("the built-in SWaT map is consistent")
    }

    /// Reads a plant file (`.yaml`, `.yml` or `.json`): `plant`, `sensors` in file order, `stages` mapping.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_text(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses a plant description in YAML (JSON is valid YAML).
    pub fn from_text(text: &str) -> Result<Self> {
        let file: PlantFile =
            serde_yaml_ng::from_str(text).map_err(|e| Error::Config(format!("not a valid plant file: {e}")))?;
        let mut stages = Vec::new();
        for (k, v) in file.stages {
            let name = k
                .as_str()
                .ok_or_else(|| Error::Config(format!("stage names must be strings, got {k:?}")))?
                .to_string();
            let members: Vec<String> = serde_yaml_ng::from_value(v)
                .map_err(|e| Error::Config(format!("stage '{name}' must list sensor names: {e}")))?;
            stages.push((name, members));
        }
        SensorSet::new(&file.plant, file.sensors, stages)
    }

    pub fn plant(&self) -> &str {
        &self.plant
    }
    pub fn sensors(&self) -> &[String] {
        &self.sensors
    }
    pub fn len(&self) -> usize {
        self.sensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.sensors.is_empty()
    }
    /// Stage names in process order.
    pub fn stages(&self) -> &[String] {
        &self.stages
    }
    /// Index into `stages()` of sensor `i`.
    pub fn stage_index(&self, sensor: usize) -> usize {
        self.stage_index[sensor]
    }
    pub fn stage_of(&self, sensor: &str) -> Option<&str> {
        self.index_of(sensor).map(|i| self.stages[self.stage_index[i]].as_str())
    }
    pub fn index_of(&self, sensor: &str) -> Option<usize> {
        self.sensors.iter().position(|s| s == sensor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swat_has_51_columns_in_six_stages_in_order() {
        let s = SensorSet::swat();
        assert_eq!(s.len(), 51);
        assert_eq!(s.stages(), ["P1", "P2", "P3", "P4", "P5", "P6"]);
        assert_eq!(s.sensors()[0], "FIT101");
        assert_eq!(s.sensors()[50], "P603");
        assert_eq!(s.stage_of("UV401"), Some("P4"));
        assert_eq!(s.stage_of("DPIT301"), Some("P3"));
        let per_stage: Vec<usize> =
            (0..6).map(|k| (0..51).filter(|&i| s.stage_index(i) == k).count()).collect();
        assert_eq!(per_stage, [5, 11, 9, 9, 13, 4]);
    }

    #[test]
    fn deserialising_checks_like_new() {
        let s = SensorSet::swat();
        let back: SensorSet = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let bad = r#"{"plant":"x","sensors":["a"],"stages":[],"stage_index":[5]}"#;
        let err = serde_json::from_str::<SensorSet>(bad).unwrap_err().to_string();
        assert!(err.contains("stage index 5"), "{err}");
        let dup = r#"{"plant":"x","sensors":["a","a"],"stages":["s"],"stage_index":[0,0]}"#;
        assert!(serde_json::from_str::<SensorSet>(dup).is_err());
    }

    #[test]
    fn plant_file_keeps_stage_order_and_rejects_mistakes() {
        let ok = "plant: rig\nsensors: [a, b, c]\nstages:\n  pump: [c]\n  valve: [a, b]\n";
        let s = SensorSet::from_text(ok).unwrap();
        assert_eq!(s.stages(), ["pump", "valve"]);
        assert_eq!(s.stage_of("a"), Some("valve"));

        let missing = "plant: rig\nsensors: [a, b]\nstages:\n  pump: [a]\n";
        let err = SensorSet::from_text(missing).unwrap_err().to_string();
        assert!(err.contains("without a stage: b"), "{err}");

        let unknown = "plant: rig\nsensors: [a]\nstages:\n  pump: [a, z]\n";
        assert!(SensorSet::from_text(unknown).unwrap_err().to_string().contains("'z'"));

        let typo = "plant: rig\nsensor: [a]\nstages:\n  pump: [a]\n";
        assert!(SensorSet::from_text(typo).unwrap_err().to_string().contains("sensor"));
    }
}
