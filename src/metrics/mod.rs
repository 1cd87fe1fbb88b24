//! Metrics: per-partition partial aggregates built while scoring (`aggregate`), the one Prometheus
//! registry on the driver that they are applied to (`registry`), and its HTTP endpoint (`server`).
//!
//! Executors record rows into a `BatchAggregate` and ship it as JSON; the driver merges the partition
//! aggregates of a micro-batch and calls `MetricsRegistry::apply_batch` once; `MetricsServer` serves
//! `GET /metrics` (text format 0.0.4) and `GET /healthz` on a fixed pool of threads.
pub mod aggregate;
pub mod registry;
pub mod server;

pub use aggregate::{error_bucket, BatchAggregate, FlaggedValue, ERROR_BUCKETS, ERROR_SLOTS};
pub use registry::MetricsRegistry;
pub use server::MetricsServer;

/// JSON for f64 that keeps NaN and ±infinity (serde_json writes them as `null` and cannot read that
/// back): finite values are plain numbers, the others the strings "NaN", "+Inf", "-Inf".
pub(crate) mod json_f64 {
    use serde::de::{self, Deserializer, Visitor};
    use serde::ser::Serializer;
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Copy)]
    struct JsonF64(f64);

    impl Serialize for JsonF64 {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let v = self.0;
            if v.is_finite() {
                s.serialize_f64(v)
            } else if v.is_nan() {
                s.serialize_str("NaN")
            } else if v > 0.0 {
                s.serialize_str("+Inf")
            } else {
                s.serialize_str("-Inf")
            }
        }
    }

    impl<'de> Deserialize<'de> for JsonF64 {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = JsonF64;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a number or one of \"NaN\", \"+Inf\", \"-Inf\"")
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsonF64, E> {
                    Ok(JsonF64(v))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonF64, E> {
                    Ok(JsonF64(v as f64))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonF64, E> {
                    Ok(JsonF64(v as f64))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonF64, E> {
                    match v {
                        "NaN" => Ok(JsonF64(f64::NAN)),
                        "+Inf" => Ok(JsonF64(f64::INFINITY)),
                        "-Inf" => Ok(JsonF64(f64::NEG_INFINITY)),
                        other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                    }
                }
            }
            d.deserialize_any(V)
        }
    }

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        JsonF64(*v).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        JsonF64::deserialize(d).map(|v| v.0)
    }

    pub mod vec {
        use super::*;
        pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|&x| JsonF64(x)))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
            Vec::<JsonF64>::deserialize(d).map(|v| v.into_iter().map(|x| x.0).collect())
        }
    }

    pub mod option {
        use super::*;
        pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            v.map(JsonF64).serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Option::<JsonF64>::deserialize(d).map(|v| v.map(|x| x.0))
        }
    }
}
