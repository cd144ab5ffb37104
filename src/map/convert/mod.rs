//! One JSON value → the Postgres text form of the target column's type.
//!
//! The writer binds every value as text and casts it to the column type in SQL, so
//! Postgres' own input functions do the final parsing. This step turns Debezium
//! encodings that Postgres cannot parse (epoch days/µs, base64 decimals and bytes)
//! into text it can, and rejects values that cannot fit the column with a message
//! that names the column and the value.
//!
//! | logical type (schema) or column type (no schema) | JSON | text |
//! |---|---|---|
//! | `Decimal` / numeric(p,s) | base64 big-endian unscaled | `19.99` |
//! | `VariableScaleDecimal` / numeric | `{"scale":s,"value":b64}` | `12.3456789` |
//! | `Date` / date | days since epoch | `2026-01-15` |
//! | `Time`, `MicroTime`, `NanoTime` / time(p) | ms (p ≤ 3), µs, ns past midnight | `17:45:00.500000` |
//! | `Timestamp`, `MicroTimestamp`, `NanoTimestamp` / timestamp(p) | ms (p ≤ 3), µs, ns since epoch | `2026-02-01 08:30:00.000000` |
//! | `MicroDuration` / interval | µs | `183600000000 microseconds` |
//! | bytes / bytea | base64 | `\xdeadbeef` |
//! | `Bits` / bit(n), varbit(n) | base64 little-endian, shortest (`""` = 0); boolean for 1 bit | `00000000` |
//! | arrays | JSON array | `{"a","b"}` |
//! | anything else | string, number, bool, JSON | as is (JSON compact) |
//!
//! Pure. Errors are short phrases that map puts after the table and column.
//! Here: the dispatch by logical type, else column type, and the shared helpers;
//! `numeric`, `time`, `bytes` and `collections` convert by concern.

mod bytes;
mod collections;
mod numeric;
mod time;

use serde_json::Value;

use super::table::ColumnType;
use crate::decode::{FieldValue, Logical};
use bytes::{bit_column, bits, bytes, geometry};
use collections::{array_literal, hstore};
use numeric::{decimal, float, in_range, integer};
use time::{date, duration, time, time_nanos, timestamp, timestamp_nanos};

/// How a column is typed, for conversion.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub ty: &'a ColumnType,
    pub is_array: bool,
    /// Without a schema, whether a decimal string is base64 (`decimal.handling.mode=precise`).
    pub base64_decimals: bool,
}

/// [`to_text`] of a field's value, appended to `out`; `Ok(false)` is SQL NULL (nothing
/// appended). A scalar the decode fast path kept as read whose text is already the
/// column's (a string into a text-like column, a whole number into an integer or
/// text-like one) is written without a `Value`; anything else goes through
/// [`to_text`], which gives the same.
pub fn field_text_into(
    value: &FieldValue<'_>,
    logical: Option<&Logical>,
    target: Target<'_>,
    out: &mut String,
) -> Result<bool, String> {
    if let Some(written) = scalar_text(value, logical, target, out) {
        return written;
    }
    Ok(match to_text(&value.json(), logical, target)? {
        Some(text) => {
            out.push_str(&text);
            true
        }
        None => false,
    })
}

/// The fast part of [`field_text_into`]; `None` where [`to_text`] must decide.
fn scalar_text(
    value: &FieldValue<'_>,
    logical: Option<&Logical>,
    target: Target<'_>,
    out: &mut String,
) -> Option<Result<bool, String>> {
    if target.is_array || !matches!(logical, None | Some(Logical::Plain | Logical::Text)) {
        return None;
    }
    let ty = target.ty.name.as_str();
    let n = match *value {
        FieldValue::Json(_) => return None,
        // `scalar`'s types that take a string as it is (`plain`).
        FieldValue::Str(s) => {
            return takes_string_as_is(ty).then(|| {
                out.push_str(check_text(s)?);
                Ok(true)
            });
        }
        FieldValue::U64(n) => i128::from(n),
        FieldValue::I64(n) => i128::from(n),
    };
    // As `integer` (range checked), or as `plain`: serde_json writes a whole number's
    // digits. Formatted as the u64 or i64 it is, not as an i128 (several times slower).
    let int = matches!(ty, "int2" | "int4" | "int8" | "oid");
    if !int && !takes_number_as_is(ty) {
        return None;
    }
    if int && let Err(e) = in_range(n, ty) {
        return Some(Err(e));
    }
    let mut digits = itoa::Buffer::new();
    out.push_str(match *value {
        FieldValue::U64(m) => digits.format(m),
        FieldValue::I64(m) => digits.format(m),
        FieldValue::Json(_) | FieldValue::Str(_) => "",
    });
    Some(Ok(true))
}

/// Column types whose text `scalar` takes from a JSON string unchanged.
fn takes_string_as_is(ty: &str) -> bool {
    !matches!(
        ty,
        "int2"
            | "int4"
            | "int8"
            | "oid"
            | "float4"
            | "float8"
            | "numeric"
            | "money"
            | "bool"
            | "bytea"
            | "geometry"
            | "geography"
            | "hstore"
            | "bit"
            | "varbit"
    )
}

/// Column types whose text `scalar` takes from a JSON number unchanged.
fn takes_number_as_is(ty: &str) -> bool {
    takes_string_as_is(ty)
        && !matches!(
            ty,
            "date" | "timestamp" | "timestamptz" | "time" | "timetz" | "interval"
        )
}

/// Converts one value; `Ok(None)` is SQL NULL. Errors are short phrases that the caller
/// puts after the column name.
pub fn to_text(
    value: &Value,
    logical: Option<&Logical>,
    target: Target<'_>,
) -> Result<Option<String>, String> {
    if value.is_null() {
        return Ok(None);
    }
    let element_logical = match logical {
        Some(Logical::Array(inner)) => Some(inner.as_ref()),
        _ => None,
    };
    if target.is_array || element_logical.is_some() {
        return match value {
            Value::Array(items) => array_literal(items, element_logical, target).map(Some),
            // Already an array literal, e.g. from a string-typed schema.
            Value::String(s) => Ok(Some(check_text(s)?.to_string())),
            other => Err(format!("expected an array, got {}", kind(other))),
        };
    }
    scalar(value, logical, target).map(Some)
}

/// One value that is not an array: by its logical type when the schema gives one that
/// decides, else by the column type. A column type that gets a branch of its own here
/// goes into `takes_string_as_is` / `takes_number_as_is` too (and the field tests'
/// `TYPES`), or the fast path would take its values as they are.
fn scalar(value: &Value, logical: Option<&Logical>, target: Target<'_>) -> Result<String, String> {
    let (ty, base64) = (target.ty, target.base64_decimals);
    match logical {
        Some(Logical::Decimal { scale }) => return decimal(value, Some(*scale), true),
        Some(Logical::VariableScaleDecimal) => return decimal(value, None, true),
        Some(Logical::Date) => return date(value),
        Some(Logical::TimeMillis) => return time(value, 1_000),
        Some(Logical::TimeMicros) => return time(value, 1),
        Some(Logical::TimeNanos) => return time_nanos(value),
        Some(Logical::TimestampMillis) => return timestamp(value, 1_000),
        Some(Logical::TimestampMicros) => return timestamp(value, 1),
        Some(Logical::TimestampNanos) => return timestamp_nanos(value),
        Some(Logical::DurationMicros) => return duration(value),
        Some(Logical::Bytes) if ty.name == "bytea" => return bytes(value),
        Some(Logical::Bits { length }) => return bits(value, length.or(ty.precision)),
        Some(Logical::Array(_)) => {
            return Err(format!("expected an array, got {}", kind(value)));
        }
        Some(Logical::Bytes | Logical::Text | Logical::Plain) | None => {}
    }
    let millis_precision = ty.precision.is_some_and(|p| p <= 3);
    match ty.name.as_str() {
        "int2" | "int4" | "int8" | "oid" => integer(value, &ty.name),
        "float4" | "float8" => float(value),
        // With a schema, a plain string is a decimal string; without, it depends on the
        // source's decimal.handling.mode.
        "numeric" => decimal(value, ty.scale, logical.is_none() && base64),
        // Debezium sends money as a decimal with `money.fraction.digits` (2) digits.
        "money" => decimal(value, Some(2), logical.is_none() && base64),
        "bool" => boolean(value),
        "date" => match value {
            Value::Number(_) => date(value),
            _ => plain(value),
        },
        "timestamp" | "timestamptz" => match value {
            Value::Number(_) if millis_precision => timestamp(value, 1_000),
            Value::Number(_) => timestamp(value, 1),
            _ => plain(value),
        },
        "time" | "timetz" => match value {
            Value::Number(_) if millis_precision => time(value, 1_000),
            Value::Number(_) => time(value, 1),
            _ => plain(value),
        },
        "interval" => match value {
            Value::Number(_) => duration(value),
            _ => plain(value),
        },
        "bytea" => match value {
            // io.debezium.data.geometry.* without PostGIS: the WKB.
            Value::Object(map) if map.contains_key("wkb") => geometry(value, false),
            _ => bytes(value),
        },
        "geometry" | "geography" => geometry(value, true),
        "hstore" => hstore(value),
        "bit" | "varbit" => bit_column(value, ty.precision),
        _ => plain(value),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_text(s: &str) -> Result<&str, String> {
    if s.contains('\0') {
        return Err("the text contains a NUL character, which Postgres cannot store".into());
    }
    Ok(s)
}

/// Strings as they are; numbers and booleans as written; objects and arrays as JSON.
fn plain(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(check_text(s)?.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Ok(check_text(&other.to_string())?.to_string()),
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 64 {
        let cut = (0..=64)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}…", &text[..cut])
    } else {
        text
    }
}

fn boolean(value: &Value) -> Result<String, String> {
    match value {
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) if n.as_u64() == Some(0) => Ok("false".into()),
        Value::Number(n) if n.as_u64() == Some(1) => Ok("true".into()),
        Value::String(s)
            if matches!(
                s.to_ascii_lowercase().as_str(),
                "t" | "f" | "true" | "false" | "yes" | "no" | "on" | "off" | "1" | "0"
            ) =>
        {
            Ok(s.clone())
        }
        other => Err(format!("{} is not a boolean", short(other))),
    }
}

/// The helpers the convert tests share.
#[cfg(test)]
mod testing {
    use serde_json::Value;

    use super::{ColumnType, Logical, Target, to_text};

    pub(super) fn ty(name: &str, scale: Option<i32>, precision: Option<u32>) -> ColumnType {
        ColumnType {
            name: name.into(),
            scale,
            precision,
        }
    }

    pub(super) fn conv(
        value: Value,
        logical: Option<Logical>,
        t: &ColumnType,
    ) -> Result<Option<String>, String> {
        to_text(
            &value,
            logical.as_ref(),
            Target {
                ty: t,
                is_array: false,
                base64_decimals: true,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::testing::{conv, ty};

    #[test]
    fn type_mismatches_are_errors() {
        let int4 = ty("int4", None, None);
        assert!(conv(json!("abc"), None, &int4).is_err());
        assert!(conv(json!(1.5), None, &int4).is_err());
        assert!(conv(json!(3_000_000_000_i64), None, &int4).is_err());
        assert!(conv(json!({"a":1}), None, &int4).is_err());
        assert_eq!(
            conv(json!("42"), None, &int4).expect("ok").as_deref(),
            Some("42")
        );
        assert!(conv(json!("maybe"), None, &ty("bool", None, None)).is_err());
        assert!(conv(json!("***"), None, &ty("bytea", None, None)).is_err());
        assert!(conv(json!("a\u{0}b"), None, &ty("text", None, None)).is_err());
        assert!(conv(json!("x"), None, &ty("float8", None, None)).is_err());
        assert_eq!(conv(json!(null), None, &int4).expect("ok"), None);
    }
}

#[cfg(test)]
mod field_tests {
    use proptest::prelude::*;

    use super::testing::ty;
    use super::{FieldValue, Logical, Target, field_text_into, to_text};

    fn field_text(
        value: &FieldValue<'_>,
        logical: Option<&Logical>,
        target: Target<'_>,
    ) -> Result<Option<String>, String> {
        let mut out = String::new();
        Ok(field_text_into(value, logical, target, &mut out)?.then_some(out))
    }

    /// Every column type `scalar` dispatches on, and one it does not.
    const TYPES: [&str; 25] = [
        "int2",
        "int4",
        "int8",
        "oid",
        "float4",
        "float8",
        "numeric",
        "money",
        "bool",
        "date",
        "timestamp",
        "timestamptz",
        "time",
        "timetz",
        "interval",
        "bytea",
        "geometry",
        "geography",
        "hstore",
        "bit",
        "varbit",
        "text",
        "jsonb",
        "uuid",
        "varchar",
    ];

    fn scalar() -> impl Strategy<Value = FieldValue<'static>> {
        prop_oneof![
            any::<u64>().prop_map(FieldValue::U64),
            any::<i64>().prop_map(FieldValue::I64),
            (0_u64..70_000).prop_map(FieldValue::U64),
            (-70_000_i64..0).prop_map(FieldValue::I64),
            prop::sample::select(vec![
                "",
                "abc",
                "42",
                " 7 ",
                "-3",
                "1.5",
                "true",
                "t",
                "NaN",
                "a\0b",
                "AQID",
                "2026-01-15",
                "12:00:00",
                "{1,2}",
                "é",
            ])
            .prop_map(FieldValue::Str),
        ]
    }

    proptest! {
        /// A scalar kept as read converts exactly as its `Value` does, for every
        /// column type, with and without the logical types that leave it to the type.
        #[test]
        fn a_kept_scalar_converts_as_its_value(
            value in scalar(),
            name in prop::sample::select(TYPES.to_vec()),
            logical in prop::sample::select(vec![None, Some(Logical::Plain), Some(Logical::Text)]),
            precision in prop::option::of(0_u32..7),
            is_array in any::<bool>(),
        ) {
            let t = ty(name, Some(2), precision);
            let target = Target { ty: &t, is_array, base64_decimals: true };
            prop_assert_eq!(
                field_text(&value, logical.as_ref(), target),
                to_text(&value.json(), logical.as_ref(), target)
            );
        }
    }
}
