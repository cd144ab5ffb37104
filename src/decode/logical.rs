//! A field's Debezium / Kafka Connect schema → its [`Logical`] type (how map reads the
//! JSON value) and, for schema evolution, a PostgreSQL type ([`sql_type`]). Pure; a schema
//! it does not know gives `None` or [`Logical::Plain`], never an error.

use serde_json::Value;

/// How a field's JSON value is to be read, when its schema says more than the JSON does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logical {
    /// `org.apache.kafka.connect.data.Decimal`: base64 big-endian unscaled value.
    Decimal { scale: i32 },
    /// `io.debezium.data.VariableScaleDecimal`: `{"scale":…,"value":base64}`.
    VariableScaleDecimal,
    /// Days since the epoch (`io.debezium.time.Date`, Kafka Connect `Date`).
    Date,
    /// Milliseconds past midnight (`io.debezium.time.Time`, Kafka Connect `Time`).
    TimeMillis,
    /// `io.debezium.time.MicroTime`.
    TimeMicros,
    /// `io.debezium.time.NanoTime`.
    TimeNanos,
    /// Milliseconds since the epoch (`io.debezium.time.Timestamp`, Kafka Connect `Timestamp`).
    TimestampMillis,
    /// `io.debezium.time.MicroTimestamp`.
    TimestampMicros,
    /// `io.debezium.time.NanoTimestamp`.
    TimestampNanos,
    /// `io.debezium.time.MicroDuration`: microseconds.
    DurationMicros,
    /// A plain `bytes` field: base64 in JSON.
    Bytes,
    /// `io.debezium.data.Bits`: base64 of little-endian bytes; `length` bits.
    Bits { length: Option<u32> },
    /// An array whose elements have a logical type.
    Array(Box<Logical>),
    /// A string that Postgres parses itself (`ZonedTimestamp`, `Json`, `Uuid`, `Enum`, …).
    Text,
    /// The schema names no logical type: the JSON value is what it says (a decimal
    /// sent as a string is `decimal.handling.mode=string`, not base64).
    Plain,
}

impl Logical {
    /// Reads a Kafka Connect field schema (`{"type":…,"name":…,"parameters":…}`).
    pub fn from_schema(schema: &Value) -> Option<Logical> {
        let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
        let name = schema.get("name").and_then(Value::as_str);
        match name {
            Some("org.apache.kafka.connect.data.Decimal") => {
                let scale = schema
                    .get("parameters")
                    .and_then(|p| p.get("scale"))
                    .and_then(|s| match s {
                        Value::String(s) => s.parse().ok(),
                        other => other.as_i64().and_then(|n| i32::try_from(n).ok()),
                    })
                    .unwrap_or(0);
                Some(Logical::Decimal { scale })
            }
            Some("io.debezium.data.VariableScaleDecimal") => Some(Logical::VariableScaleDecimal),
            Some("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date") => {
                Some(Logical::Date)
            }
            Some("io.debezium.time.Time" | "org.apache.kafka.connect.data.Time") => {
                Some(Logical::TimeMillis)
            }
            Some("io.debezium.time.MicroTime") => Some(Logical::TimeMicros),
            Some("io.debezium.time.NanoTime") => Some(Logical::TimeNanos),
            Some("io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp") => {
                Some(Logical::TimestampMillis)
            }
            Some("io.debezium.time.MicroTimestamp") => Some(Logical::TimestampMicros),
            Some("io.debezium.time.NanoTimestamp") => Some(Logical::TimestampNanos),
            Some("io.debezium.time.MicroDuration") => Some(Logical::DurationMicros),
            Some("io.debezium.data.Bits") => Some(Logical::Bits {
                length: schema
                    .get("parameters")
                    .and_then(|p| p.get("length"))
                    .and_then(Value::as_str)
                    .and_then(|l| l.parse().ok()),
            }),
            Some(_) if ty == "string" => Some(Logical::Text),
            _ if ty == "bytes" => Some(Logical::Bytes),
            _ if ty == "array" => schema
                .get("items")
                .and_then(Logical::from_schema)
                .map(|l| Logical::Array(Box::new(l))),
            _ if !ty.is_empty() => Some(Logical::Plain),
            _ => None,
        }
    }
}

/// The PostgreSQL type for a field of this Debezium / Kafka Connect schema, for schema
/// evolution (creating a missing table or column); `None` when there is no good one.
pub fn sql_type(schema: &Value) -> Option<String> {
    if let Some(named) = named_sql_type(schema) {
        return Some(named);
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    Some(
        match ty {
            "int8" | "int16" => "smallint",
            "int32" => "integer",
            "int64" => "bigint",
            "float32" => "real",
            "float64" => "double precision",
            "boolean" => "boolean",
            "string" => "text",
            "bytes" => "bytea",
            "map" | "struct" => "jsonb",
            "array" => {
                let elem = sql_type(schema.get("items")?)?;
                return (!elem.ends_with("[]")).then(|| format!("{elem}[]"));
            }
            _ => return None,
        }
        .into(),
    )
}

/// The PostgreSQL type of a schema's logical type (its `name`); `None` for a name not
/// listed or no name, where the plain `type` decides.
fn named_sql_type(schema: &Value) -> Option<String> {
    let named = match schema.get("name").and_then(Value::as_str)? {
        "org.apache.kafka.connect.data.Decimal" => {
            match (
                param(schema, "connect.decimal.precision"),
                param(schema, "scale"),
            ) {
                (Some(p), Some(s)) if p > 0 && p <= 1000 && s <= p => format!("numeric({p},{s})"),
                _ => "numeric".into(),
            }
        }
        "io.debezium.data.VariableScaleDecimal" => "numeric".into(),
        "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date" => "date".into(),
        "io.debezium.time.Time"
        | "io.debezium.time.MicroTime"
        | "io.debezium.time.NanoTime"
        | "org.apache.kafka.connect.data.Time" => "time".into(),
        "io.debezium.time.Timestamp"
        | "io.debezium.time.MicroTimestamp"
        | "io.debezium.time.NanoTimestamp"
        | "org.apache.kafka.connect.data.Timestamp" => "timestamp".into(),
        "io.debezium.time.ZonedTimestamp" => "timestamptz".into(),
        "io.debezium.time.ZonedTime" => "timetz".into(),
        "io.debezium.time.MicroDuration" | "io.debezium.time.Interval" => "interval".into(),
        "io.debezium.time.Year" => "integer".into(),
        "io.debezium.data.Json" => "jsonb".into(),
        "io.debezium.data.Uuid" => "uuid".into(),
        "io.debezium.data.Xml" => "xml".into(),
        "io.debezium.data.Bits" => "varbit".into(),
        "io.debezium.data.Enum" | "io.debezium.data.EnumSet" => "text".into(),
        n if n.starts_with("io.debezium.data.geometry.") => "bytea".into(),
        _ => return None,
    };
    Some(named)
}

/// A numeric schema parameter (Kafka Connect writes them as strings).
fn param(schema: &Value, name: &str) -> Option<u32> {
    schema
        .get("parameters")
        .and_then(|p| p.get(name))
        .and_then(|v| match v {
            Value::String(s) => s.parse::<u32>().ok(),
            other => other.as_u64().and_then(|n| u32::try_from(n).ok()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_suggest_postgres_types() {
        let t = |v: serde_json::Value| sql_type(&v);
        assert_eq!(
            t(serde_json::json!({"type":"int64"})).as_deref(),
            Some("bigint")
        );
        assert_eq!(
            t(
                serde_json::json!({"type":"bytes","name":"org.apache.kafka.connect.data.Decimal",
                "parameters":{"scale":"2","connect.decimal.precision":"12"}})
            )
            .as_deref(),
            Some("numeric(12,2)")
        );
        assert_eq!(
            t(serde_json::json!({"type":"string","name":"io.debezium.time.ZonedTimestamp"}))
                .as_deref(),
            Some("timestamptz")
        );
        assert_eq!(
            t(serde_json::json!({"type":"array","items":{"type":"string"}})).as_deref(),
            Some("text[]")
        );
        assert_eq!(
            t(
                serde_json::json!({"type":"array","items":{"type":"array","items":{"type":"int32"}}})
            ),
            None
        );
        assert_eq!(t(serde_json::json!({})), None);
    }
    use serde_json::json;

    #[test]
    fn reads_schema_names() {
        let dec = json!({"type":"bytes","name":"org.apache.kafka.connect.data.Decimal",
                         "parameters":{"scale":"2","connect.decimal.precision":"10"}});
        assert_eq!(
            Logical::from_schema(&dec),
            Some(Logical::Decimal { scale: 2 })
        );
        let ts = json!({"type":"int64","name":"io.debezium.time.MicroTimestamp"});
        assert_eq!(Logical::from_schema(&ts), Some(Logical::TimestampMicros));
        let arr = json!({"type":"array","items":{"type":"int32","name":"io.debezium.time.Date"}});
        assert_eq!(
            Logical::from_schema(&arr),
            Some(Logical::Array(Box::new(Logical::Date)))
        );
        assert_eq!(
            Logical::from_schema(&json!({"type":"bytes"})),
            Some(Logical::Bytes)
        );
        assert_eq!(
            Logical::from_schema(&json!({"type":"int32"})),
            Some(Logical::Plain)
        );
        assert_eq!(Logical::from_schema(&json!({"field":"x"})), None);
        assert_eq!(
            Logical::from_schema(&json!({"type":"string","name":"io.debezium.data.Json"})),
            Some(Logical::Text)
        );
    }
}
