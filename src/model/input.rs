//! The non-sensor columns the model reads from a record batch: `plant` (stream key), `timestamp`,
//! and `_tw_context` (rows present only to fill windows).
use arrow_array::cast::AsArray;
use arrow_array::types::{
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{Array, ArrayRef, BooleanArray, PrimitiveArray, RecordBatch, StringArray};
use arrow_schema::{DataType, TimeUnit};

use crate::{Error, Result};

pub const PLANT: &str = "plant";
pub const TIMESTAMP: &str = "timestamp";
pub const CONTEXT: &str = "_tw_context";
/// The output timestamp type: microseconds, UTC.
pub const UTC: &str = "UTC";

pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a ArrayRef> {
    batch.schema().index_of(name).ok().map(|i| batch.column(i))
}

/// The `plant` column as strings (cast from any string or dictionary type), or None when absent.
pub fn plant_column(batch: &RecordBatch) -> Result<Option<StringArray>> {
    let Some(col) = column(batch, PLANT) else { return Ok(None) };
    let cast = arrow_cast::cast(col, &DataType::Utf8).map_err(|e| {
        Error::Schema(format!("column '{PLANT}' has type {}, expected strings: {e}", col.data_type()))
    })?;
    Ok(Some(cast.as_string::<i32>().clone()))
}

/// The `timestamp` column as microseconds since the epoch, or None when absent. Arrow stores
/// zone-aware timestamps as UTC instants, so only the unit changes; zone-naive ones are taken as UTC.
pub fn timestamp_column(batch: &RecordBatch) -> Result<Option<PrimitiveArray<TimestampMicrosecondType>>> {
    let Some(col) = column(batch, TIMESTAMP) else { return Ok(None) };
    let micros = match col.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            col.as_primitive::<TimestampSecondType>().unary(|v| v.saturating_mul(1_000_000))
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            col.as_primitive::<TimestampMillisecondType>().unary(|v| v.saturating_mul(1_000))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => col.as_primitive::<TimestampMicrosecondType>().clone(),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            col.as_primitive::<TimestampNanosecondType>().unary(|v| v.div_euclid(1_000))
        }
        other => {
            return Err(Error::Schema(format!("column '{TIMESTAMP}' has type {other}, expected a timestamp")))
        }
    };
    Ok(Some(micros))
}

/// The `_tw_context` flags (null counts as false), or None when absent.
pub fn context_column(batch: &RecordBatch) -> Result<Option<BooleanArray>> {
    let Some(col) = column(batch, CONTEXT) else { return Ok(None) };
    col.as_any().downcast_ref::<BooleanArray>().cloned().map(Some).ok_or_else(|| {
        Error::Schema(format!("column '{CONTEXT}' has type {}, expected boolean", col.data_type()))
    })
}

/// Microseconds since the epoch as RFC 3339 UTC with microseconds.
pub fn format_micros(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, TimestampSecondArray};
    use arrow_schema::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn columns_are_found_cast_and_checked() {
        let ts = TimestampSecondArray::from(vec![1_451_606_400, 1_451_606_401]);
        let rb = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new(PLANT, DataType::LargeUtf8, true),
                Field::new(TIMESTAMP, ts.data_type().clone(), true),
                Field::new(CONTEXT, DataType::Int64, true),
            ])),
            vec![
                Arc::new(arrow_array::LargeStringArray::from(vec!["swat", "swat"])),
                Arc::new(ts),
                Arc::new(Int64Array::from(vec![0, 1])),
            ],
        )
        .unwrap();
        assert_eq!(plant_column(&rb).unwrap().unwrap().value(1), "swat");
        let t = timestamp_column(&rb).unwrap().unwrap();
        assert_eq!(t.value(1), 1_451_606_401_000_000);
        assert_eq!(format_micros(t.value(1)), "2016-01-01T00:00:01.000000Z");
        assert!(context_column(&rb).unwrap_err().to_string().contains("'_tw_context'"));
        let bad = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(TIMESTAMP, DataType::Int64, true)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        assert!(timestamp_column(&bad).unwrap_err().to_string().contains("expected a timestamp"));
        let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
        assert!(plant_column(&empty).unwrap().is_none() && timestamp_column(&empty).unwrap().is_none());
    }
}
