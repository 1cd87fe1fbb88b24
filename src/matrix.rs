//! Arrow record batch -> the plant's sensor columns, selected by name, as f64 slices.
//! Float64 columns are borrowed in place (zero copy); other numeric types are cast once.
use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch};
use arrow_schema::DataType;

use crate::sensors::SensorSet;
use crate::{Error, Result};

/// What to do with a row holding a null, NaN or infinite sensor value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidRows {
    /// Fail on the first such row, naming row and column.
    Error,
    /// Keep going; mark the row invalid and record why.
    Mask,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    Null,
    NaN,
    Infinite,
}

impl Problem {
    pub fn as_str(&self) -> &'static str {
        match self {
            Problem::Null => "null",
            Problem::NaN => "nan",
            Problem::Infinite => "infinite",
        }
    }
}

/// Why a row is unusable: the first bad column found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    pub row: usize,
    pub column: usize,
    pub problem: Problem,
}

#[derive(Debug, Clone)]
pub struct SensorMatrix {
    columns: Vec<Float64Array>,
    rows: usize,
    /// `valid[i]`: every sensor of row i is present and finite.
    valid: Vec<bool>,
    problems: Vec<RowProblem>,
}

impl SensorMatrix {
    /// Selects `sensors` from `batch` by name, in the sensor set's order.
    pub fn from_batch(batch: &RecordBatch, sensors: &SensorSet, policy: InvalidRows) -> Result<Self> {
        let schema = batch.schema();
        let missing: Vec<&str> = sensors
            .sensors()
            .iter()
            .filter(|name| schema.index_of(name).is_err())
            .map(|s| s.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Error::Schema(format!(
                "input lacks {} sensor column(s) of plant '{}': {}",
                missing.len(),
                sensors.plant(),
                missing.join(", ")
            )));
        }
        let mut columns = Vec::with_capacity(sensors.len());
        for name in sensors.sensors() {
            let array = batch.column(schema.index_of(name).expect("checked above"));
            columns.push(as_f64(name, array)?);
        }
        let rows = batch.num_rows();
        let mut valid = vec![true; rows];
        let mut problems = Vec::new();
        for (j, col) in columns.iter().enumerate() {
            let values = col.values();
            let nulls = col.nulls();
            for i in 0..rows {
                let problem = if nulls.is_some_and(|n| n.is_null(i)) {
                    Problem::Null
                } else if values[i].is_nan() {
                    Problem::NaN
                } else if values[i].is_infinite() {
                    Problem::Infinite
                } else {
                    continue;
                };
                if policy == InvalidRows::Error {
                    return Err(Error::Input(format!(
                        "row {i}, column '{}': value is {}",
                        sensors.sensors()[j],
                        problem.as_str()
                    )));
                }
                if valid[i] {
                    valid[i] = false;
                    problems.push(RowProblem { row: i, column: j, problem });
                }
            }
        }
        problems.sort_by_key(|p| p.row);
        Ok(SensorMatrix { columns, rows, valid, problems })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn n_columns(&self) -> usize {
        self.columns.len()
    }
    /// Column j's values (null slots hold arbitrary numbers; check `valid`).
    pub fn column(&self, j: usize) -> &[f64] {
        self.columns[j].values()
    }
    pub fn columns(&self) -> Vec<&[f64]> {
        self.columns.iter().map(|c| c.values().as_ref()).collect()
    }
    #[inline]
    pub fn value(&self, row: usize, column: usize) -> f64 {
        self.columns[column].values()[row]
    }
    pub fn valid(&self) -> &[bool] {
        &self.valid
    }
    pub fn all_valid(&self) -> bool {
        self.problems.is_empty()
    }
    /// One entry per invalid row, in row order.
    pub fn problems(&self) -> &[RowProblem] {
        &self.problems
    }
}

fn as_f64(name: &str, array: &ArrayRef) -> Result<Float64Array> {
    let dt = array.data_type();
    if let Some(f) = array.as_any().downcast_ref::<Float64Array>() {
        return Ok(f.clone()); // shares the Arrow buffer
    }
    if !dt.is_numeric() || matches!(dt, DataType::Decimal256(..)) {
        return Err(Error::Schema(format!("column '{name}' has type {dt}, expected a numeric type")));
    }
    let cast = arrow_cast::cast(array, &DataType::Float64)
        .map_err(|e| Error::Schema(format!("column '{name}' ({dt}) cannot be read as float64: {e}")))?;
    Ok(cast.as_any().downcast_ref::<Float64Array>().expect("cast to Float64").clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int32Array, StringArray};
    use arrow_schema::{Field, Schema};
    use std::sync::Arc;

    fn plant() -> SensorSet {
        SensorSet::from_text("plant: t\nsensors: [a, b]\nstages:\n  s: [a, b]\n").unwrap()
    }

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> =
            cols.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols.into_iter().map(|(_, a)| a).collect()).unwrap()
    }

    #[test]
    fn selects_by_name_casts_ints_and_borrows_floats() {
        let b_values = Arc::new(Float64Array::from(vec![1.5, 2.5])) as ArrayRef;
        let rb = batch(vec![
            ("extra", Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef),
            ("b", b_values.clone()),
            ("a", Arc::new(Int32Array::from(vec![3, 4])) as ArrayRef),
        ]);
        let m = SensorMatrix::from_batch(&rb, &plant(), InvalidRows::Error).unwrap();
        assert_eq!(m.column(0), &[3.0, 4.0]);
        assert_eq!(m.column(1), &[1.5, 2.5]);
        let original = b_values.as_any().downcast_ref::<Float64Array>().unwrap().values().as_ptr();
        assert_eq!(m.column(1).as_ptr(), original, "float64 column must not be copied");
    }

    #[test]
    fn missing_and_non_numeric_columns_are_schema_errors() {
        let rb = batch(vec![("a", Arc::new(StringArray::from(vec!["1"])) as ArrayRef)]);
        let err = SensorMatrix::from_batch(&rb, &plant(), InvalidRows::Mask).unwrap_err();
        assert!(matches!(err, Error::Schema(ref m) if m.contains(": b")), "{err}");
        let rb = batch(vec![
            ("a", Arc::new(StringArray::from(vec!["1"])) as ArrayRef),
            ("b", Arc::new(Float64Array::from(vec![1.0])) as ArrayRef),
        ]);
        let err = SensorMatrix::from_batch(&rb, &plant(), InvalidRows::Mask).unwrap_err();
        assert!(matches!(err, Error::Schema(ref m) if m.contains("'a'") && m.contains("Utf8")), "{err}");
    }

    #[test]
    fn bad_values_error_or_mask() {
        let rb = batch(vec![
            ("a", Arc::new(Float64Array::from(vec![Some(1.0), None, Some(3.0), Some(4.0)])) as ArrayRef),
            ("b", Arc::new(Float64Array::from(vec![1.0, f64::NAN, f64::INFINITY, 0.0])) as ArrayRef),
        ]);
        let err = SensorMatrix::from_batch(&rb, &plant(), InvalidRows::Error).unwrap_err().to_string();
        assert_eq!(err, "row 1, column 'a': value is null");
        let m = SensorMatrix::from_batch(&rb, &plant(), InvalidRows::Mask).unwrap();
        assert_eq!(m.valid(), &[true, false, false, true]);
        assert_eq!(
            m.problems(),
            &[
                RowProblem { row: 1, column: 0, problem: Problem::Null },
                RowProblem { row: 2, column: 1, problem: Problem::Infinite },
            ]
        );
    }
}
