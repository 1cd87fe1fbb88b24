//! Per-sensor scaling fitted from mergeable partial statistics, so Spark partitions fit in
//! parallel and the driver merges them into exactly what one pass over all rows would give.
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScalerKind {
    /// (x - min) / (max - min): values of normal operation land in [0, 1].
    MinMax,
    /// (x - mean) / std.
    Standard,
}

impl std::str::FromStr for ScalerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "minmax" => Ok(ScalerKind::MinMax),
            "standard" => Ok(ScalerKind::Standard),
            other => Err(Error::Config(format!("scaler kind must be 'minmax' or 'standard', got '{other}'"))),
        }
    }
}

/// Running statistics of one column (Welford), mergeable with Chan et al.'s parallel formula.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    pub count: u64,
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
    pub min: f64,
    pub max: f64,
}

impl Default for ColumnStats {
    /// Empty statistics. The extremes start at the largest finite values, not ±infinity, because the
    /// partials travel as JSON (from Spark executors), which has no infinity.
    fn default() -> Self {
        ColumnStats { count: 0, mean: 0.0, m2: 0.0, min: f64::MAX, max: f64::MIN }
    }
}

impl ColumnStats {
    pub fn push(&mut self, x: f64) {
        self.count += 1;
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    pub fn merge(&mut self, other: &ColumnStats) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let n = self.count + other.count;
        let delta = other.mean - self.mean;
        let (na, nb) = (self.count as f64, other.count as f64);
        self.mean += delta * nb / n as f64;
        self.m2 += other.m2 + delta * delta * na * nb / n as f64;
        self.count = n;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Population standard deviation.
    pub fn std(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.m2 / self.count as f64).sqrt()
        }
    }
}

/// Partial statistics for every sensor column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalerStats {
    pub columns: Vec<ColumnStats>,
}

impl ScalerStats {
    pub fn new(n_columns: usize) -> Self {
        ScalerStats { columns: vec![ColumnStats::default(); n_columns] }
    }

    /// Adds one row; the caller passes only valid (finite) rows.
    pub fn push_row(&mut self, row: &[f64]) {
        for (c, &x) in self.columns.iter_mut().zip(row) {
            c.push(x);
        }
    }

    /// Adds a column-major block: `columns[j][i]` is row i of sensor j; `valid` selects rows.
    pub fn push_columns(&mut self, columns: &[&[f64]], valid: Option<&[bool]>) {
        for (stats, col) in self.columns.iter_mut().zip(columns) {
            match valid {
                None => col.iter().for_each(|&x| stats.push(x)),
                Some(v) => col.iter().zip(v).filter(|(_, &ok)| ok).for_each(|(&x, _)| stats.push(x)),
            }
        }
    }

    pub fn merge(&mut self, other: &ScalerStats) -> Result<()> {
        if other.columns.len() != self.columns.len() {
            return Err(Error::Input(format!(
                "cannot merge scaler statistics of {} columns into {} columns",
                other.columns.len(),
                self.columns.len()
            )));
        }
        self.columns.iter_mut().zip(&other.columns).for_each(|(a, b)| a.merge(b));
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.columns.first().map_or(0, |c| c.count)
    }

    /// Fits the scaler. `names` label the columns in errors and in the constant-column report.
    pub fn finish(&self, kind: ScalerKind, names: &[String]) -> Result<Scaler> {
        if self.rows() == 0 {
            return Err(Error::Input("cannot fit a scaler on zero rows".into()));
        }
        let mut offset = Vec::with_capacity(self.columns.len());
        let mut scale = Vec::with_capacity(self.columns.len());
        let mut constant = Vec::new();
        for (j, c) in self.columns.iter().enumerate() {
            let (o, spread) = match kind {
                ScalerKind::MinMax => (c.min, c.max - c.min),
                ScalerKind::Standard => (c.mean, c.std()),
            };
            offset.push(o);
            // A column that never moved in training (a standby pump, say) would divide by zero;
            // it keeps unit scale, so any later movement shows as a deviation in its own units.
            if spread > f64::EPSILON * o.abs().max(1.0) {
                scale.push(spread);
            } else {
                scale.push(1.0);
                constant.push(names.get(j).cloned().unwrap_or_else(|| format!("column {j}")));
            }
        }
        Ok(Scaler { kind, offset, scale, constant_columns: constant })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ScalerFields")]
pub struct Scaler {
    pub kind: ScalerKind,
    pub offset: Vec<f64>,
    pub scale: Vec<f64>,
    /// Sensors that were constant in the training data (scaled with unit scale).
    pub constant_columns: Vec<String>,
}

/// A serialised scaler as it arrives (from a manifest or a user): checked before use.
#[derive(Deserialize)]
struct ScalerFields {
    kind: ScalerKind,
    offset: Vec<f64>,
    scale: Vec<f64>,
    #[serde(default)]
    constant_columns: Vec<String>,
}

impl TryFrom<ScalerFields> for Scaler {
    type Error = Error;
    fn try_from(f: ScalerFields) -> Result<Self> {
        if f.offset.len() != f.scale.len() {
            return Err(Error::Config(format!(
                "scaler has {} offsets but {} scales",
                f.offset.len(),
                f.scale.len()
            )));
        }
        if let Some(j) = f.offset.iter().position(|x| !x.is_finite()) {
            return Err(Error::Config(format!("scaler offset of column {j} is not finite")));
        }
        if let Some(j) = f.scale.iter().position(|x| !(x.is_finite() && *x > 0.0)) {
            return Err(Error::Config(format!("scaler scale of column {j} must be finite and positive")));
        }
        Ok(Scaler { kind: f.kind, offset: f.offset, scale: f.scale, constant_columns: f.constant_columns })
    }
}

impl Scaler {
    #[inline]
    pub fn apply(&self, value: f64, column: usize) -> f64 {
        (value - self.offset[column]) / self.scale[column]
    }

    #[inline]
    pub fn invert(&self, scaled: f64, column: usize) -> f64 {
        scaled * self.scale[column] + self.offset[column]
    }

    pub fn len(&self) -> usize {
        self.offset.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offset.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    #[test]
    fn merged_partials_equal_one_pass() {
        let rows: Vec<[f64; 3]> =
            (0..1000).map(|i| [i as f64 * 0.5, ((i * 7919) % 101) as f64, 4.0]).collect();
        let mut whole = ScalerStats::new(3);
        rows.iter().for_each(|r| whole.push_row(r));

        let mut merged = ScalerStats::new(3);
        for chunk in rows.chunks(137) {
            let mut part = ScalerStats::new(3);
            chunk.iter().for_each(|r| part.push_row(r));
            merged.merge(&part).unwrap();
        }
        for kind in [ScalerKind::MinMax, ScalerKind::Standard] {
            let a = whole.finish(kind, &names(3)).unwrap();
            let b = merged.finish(kind, &names(3)).unwrap();
            for j in 0..3 {
                assert!((a.offset[j] - b.offset[j]).abs() < 1e-9);
                assert!((a.scale[j] - b.scale[j]).abs() < 1e-9);
            }
            assert_eq!(a.constant_columns, vec!["s2".to_string()]);
        }
    }

    #[test]
    fn deserialised_scalers_are_checked() {
        let bad = r#"{"kind":"minmax","offset":[0,0],"scale":[1],"constant_columns":[]}"#;
        assert!(serde_json::from_str::<Scaler>(bad).unwrap_err().to_string().contains("2 offsets but 1 scales"));
        let zero = r#"{"kind":"minmax","offset":[0],"scale":[0],"constant_columns":[]}"#;
        assert!(serde_json::from_str::<Scaler>(zero).is_err());
        let ok = r#"{"kind":"standard","offset":[1.5],"scale":[2],"constant_columns":[]}"#;
        assert_eq!(serde_json::from_str::<Scaler>(ok).unwrap().apply(3.5, 0), 1.0);
    }

    #[test]
    fn empty_partials_survive_json_and_merge() {
        let empty = ScalerStats::new(2);
        let back: ScalerStats = serde_json::from_str(&serde_json::to_string(&empty).unwrap()).unwrap();
        assert_eq!(back, empty);
        let mut full = ScalerStats::new(2);
        full.push_row(&[1.0, -3.0]);
        let mut merged = back.clone();
        merged.merge(&full).unwrap();
        full.merge(&back).unwrap();
        assert_eq!(merged, full);
        assert_eq!((merged.columns[1].min, merged.columns[1].max), (-3.0, -3.0));
    }

    #[test]
    fn constant_column_does_not_divide_by_zero() {
        let mut s = ScalerStats::new(1);
        (0..10).for_each(|_| s.push_row(&[2.0]));
        let sc = s.finish(ScalerKind::Standard, &names(1)).unwrap();
        assert_eq!(sc.apply(2.0, 0), 0.0);
        assert_eq!(sc.apply(3.0, 0), 1.0);
        assert!(ScalerStats::new(1).finish(ScalerKind::MinMax, &names(1)).is_err());
    }
}
