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
//! | arrays | JSON array | `{"a","b"}` |
//! | anything else | string, number, bool, JSON | as is (JSON compact) |

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, NaiveDate, NaiveTime};
use num_bigint::BigInt;
use serde_json::Value;

use super::table::ColumnType;
use crate::decode::Logical;

/// The epoch as days from 0001-01-01 (chrono's "days from CE").
const EPOCH_DAYS_FROM_CE: i64 = 719_163;
/// The largest numeric scale Postgres accepts: bounds what an event can make us allocate.
const MAX_SCALE: u32 = 1000;
/// The longest bit string we build (Postgres allows 83,886,080; events are far smaller).
const MAX_BITS: usize = 1 << 20;
/// Debezium's encodings of PostgreSQL `infinity` / `-infinity` timestamps (µs modes).
const POS_INFINITY_MICROS: i64 = 9_223_372_036_825_200_000;
const NEG_INFINITY_MICROS: i64 = -9_223_372_036_832_400_000;

/// How a column is typed, for conversion.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub ty: &'a ColumnType,
    pub is_array: bool,
    /// Without a schema, whether a decimal string is base64 (`decimal.handling.mode=precise`).
    pub base64_decimals: bool,
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
        "bit" | "varbit" => match value {
            Value::String(s) if !s.bytes().all(|b| b == b'0' || b == b'1') => {
                bits(value, ty.precision)
            }
            _ => plain(value),
        },
        _ => plain(value),
    }
}

/// `io.debezium.data.Bits`: base64 of the bits as a little-endian integer → `1010`.
fn bits(value: &Value, length: Option<u32>) -> Result<String, String> {
    let Value::String(s) = value else {
        return Err(format!("expected base64 bits, got {}", kind(value)));
    };
    let raw = BASE64
        .decode(s)
        .map_err(|_| format!("{} is not base64 bits", short(value)))?;
    let mut out = String::new();
    for byte in raw.iter().rev() {
        out.push_str(&format!("{byte:08b}"));
    }
    let width = length.map_or(out.trim_start_matches('0').len().max(1), |l| l as usize);
    if width > MAX_BITS {
        return Err(format!("a bit string of {width} bits is too long"));
    }
    if out.len() > width {
        let (extra, kept) = out.split_at(out.len() - width);
        if extra.contains('1') {
            return Err(format!("{} has more than {width} bits", short(value)));
        }
        return Ok(kept.to_string());
    }
    Ok(format!("{out:0>width$}"))
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

fn integer(value: &Value, ty: &str) -> Result<String, String> {
    let n: i128 = match value {
        Value::Number(n) => n
            .to_string()
            .parse()
            .map_err(|_| format!("{} is not a whole number", short(value)))?,
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{} is not a whole number", short(value)))?,
        other => return Err(format!("expected a whole number, got {}", kind(other))),
    };
    let (lo, hi) = match ty {
        "int2" => (i128::from(i16::MIN), i128::from(i16::MAX)),
        "int4" => (i128::from(i32::MIN), i128::from(i32::MAX)),
        "oid" => (0, i128::from(u32::MAX)),
        _ => (i128::from(i64::MIN), i128::from(i64::MAX)),
    };
    if n < lo || n > hi {
        return Err(format!("{n} is out of range for {ty}"));
    }
    Ok(n.to_string())
}

fn float(value: &Value) -> Result<String, String> {
    match value {
        Value::Number(n) => Ok(n.to_string()),
        Value::String(s) => {
            let t = s.trim();
            if matches!(t, "NaN" | "Infinity" | "-Infinity") || t.parse::<f64>().is_ok() {
                Ok(t.to_string())
            } else {
                Err(format!("{} is not a floating-point number", short(value)))
            }
        }
        other => Err(format!("expected a number, got {}", kind(other))),
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

/// A plain decimal literal (`-12.50`, `1e3`, `NaN`): Postgres parses it.
fn is_decimal_literal(s: &str) -> bool {
    if matches!(s, "NaN" | "Infinity" | "-Infinity") {
        return true;
    }
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let digits_ok = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((i, f)) => {
            (i.is_empty() || digits_ok(i))
                && (f.is_empty() || digits_ok(f))
                && (i.len() + f.len() > 0)
        }
        None => digits_ok(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits_ok(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

/// Base64 big-endian two's-complement unscaled value → decimal text.
fn unscaled_to_text(b64: &str, scale: i32) -> Result<String, String> {
    let raw = BASE64
        .decode(b64)
        .map_err(|_| format!("\"{b64}\" is neither a decimal nor base64"))?;
    let unscaled = BigInt::from_signed_bytes_be(&raw);
    let digits = unscaled.magnitude().to_string();
    let sign = if unscaled.sign() == num_bigint::Sign::Minus {
        "-"
    } else {
        ""
    };
    if scale.unsigned_abs() > MAX_SCALE {
        return Err(format!(
            "scale {scale} is larger than Postgres allows ({MAX_SCALE})"
        ));
    }
    if scale <= 0 {
        // numeric(p,-s): the unscaled value counts tens, hundreds, …
        let zeros = if digits == "0" {
            String::new()
        } else {
            "0".repeat(scale.unsigned_abs() as usize)
        };
        return Ok(format!("{sign}{digits}{zeros}"));
    }
    let scale = scale.unsigned_abs() as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    Ok(format!("{sign}{int}.{frac}"))
}

/// Kafka Connect / Debezium decimals in all their JSON shapes.
fn decimal(value: &Value, scale: Option<i32>, base64: bool) -> Result<String, String> {
    match value {
        Value::Number(n) => Ok(n.to_string()),
        // A decimal string (`decimal.handling.mode=string`, or a plain string schema).
        Value::String(s) if !base64 => {
            if is_decimal_literal(s) {
                Ok(s.clone())
            } else {
                Err(format!("{} is not a decimal number", short(value)))
            }
        }
        // Base64 of the unscaled value (`decimal.handling.mode=precise`), with the scale
        // from the schema or the column's numeric(p,s).
        // A string that is not base64 but a decimal literal is unambiguous: taken as is.
        Value::String(s) if BASE64.decode(s).is_err() && is_decimal_literal(s) => Ok(s.clone()),
        Value::String(s) => match scale {
            Some(scale) => unscaled_to_text(s, scale),
            None => Err(format!(
                "{} is base64 but the column has no scale: declare it numeric(p,s), \
                 send events with schemas, or set the mapping's decimal_handling",
                short(value)
            )),
        },
        Value::Object(map) => {
            // io.debezium.data.VariableScaleDecimal
            let scale = map
                .get("scale")
                .and_then(Value::as_i64)
                .and_then(|s| i32::try_from(s).ok())
                .ok_or_else(|| format!("{} has no whole-number `scale`", short(value)))?;
            let Some(Value::String(b64)) = map.get("value") else {
                return Err(format!("{} has no base64 `value`", short(value)));
            };
            unscaled_to_text(b64, scale)
        }
        other => Err(format!("expected a decimal, got {}", kind(other))),
    }
}

fn whole(value: &Value) -> Result<i64, String> {
    value
        .as_i64()
        .ok_or_else(|| format!("expected a whole number, got {}", short(value)))
}

fn date(value: &Value) -> Result<String, String> {
    let days = whole(value)?;
    days.checked_add(EPOCH_DAYS_FROM_CE)
        .and_then(|d| i32::try_from(d).ok())
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .ok_or_else(|| format!("{days} days from the epoch is out of range for a date"))
}

/// `unit_micros` = microseconds per unit of the value (1000 for ms, 1 for µs).
fn time(value: &Value, unit_micros: i64) -> Result<String, String> {
    let n = whole(value)?;
    let micros = n
        .checked_mul(unit_micros)
        .ok_or_else(|| format!("{n} is out of range for a time"))?;
    time_from_micros(micros)
}

fn time_nanos(value: &Value) -> Result<String, String> {
    time_from_micros(whole(value)? / 1_000)
}

fn time_from_micros(micros: i64) -> Result<String, String> {
    const DAY: i64 = 86_400_000_000;
    if micros == DAY {
        return Ok("24:00:00".into());
    }
    if !(0..DAY).contains(&micros) {
        return Err(format!("{micros} µs is not a time of day"));
    }
    let secs = u32::try_from(micros / 1_000_000).map_err(|e| e.to_string())?;
    let nanos = u32::try_from(micros % 1_000_000 * 1_000).map_err(|e| e.to_string())?;
    NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
        .map(|t| t.format("%H:%M:%S%.6f").to_string())
        .ok_or_else(|| format!("{micros} µs is not a time of day"))
}

fn timestamp(value: &Value, unit_micros: i64) -> Result<String, String> {
    let n = whole(value)?;
    if unit_micros == 1 {
        if n >= POS_INFINITY_MICROS {
            return Ok("infinity".into());
        }
        if n <= NEG_INFINITY_MICROS {
            return Ok("-infinity".into());
        }
    }
    let micros = n
        .checked_mul(unit_micros)
        .ok_or_else(|| format!("{n} is out of range for a timestamp"))?;
    timestamp_from_micros(micros)
}

fn timestamp_nanos(value: &Value) -> Result<String, String> {
    let n = whole(value)?;
    if n == i64::MAX {
        return Ok("infinity".into());
    }
    if n == i64::MIN {
        return Ok("-infinity".into());
    }
    timestamp_from_micros(n.div_euclid(1_000))
}

fn timestamp_from_micros(micros: i64) -> Result<String, String> {
    DateTime::from_timestamp_micros(micros)
        .map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string())
        .ok_or_else(|| format!("{micros} µs from the epoch is out of range for a timestamp"))
}

fn duration(value: &Value) -> Result<String, String> {
    Ok(format!("{} microseconds", whole(value)?))
}

fn bytes(value: &Value) -> Result<String, String> {
    let Value::String(s) = value else {
        return Err(format!("expected base64 bytes, got {}", kind(value)));
    };
    let raw = BASE64
        .decode(s)
        .map_err(|_| format!("{} is not base64", short(value)))?;
    let mut out = String::with_capacity(2 + raw.len() * 2);
    out.push_str("\\x");
    for b in raw {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

/// `io.debezium.data.geometry.Geometry`/`Geography`/`Point`: `{"wkb": base64, "srid": n}`.
/// For PostGIS (`ewkb`): hex EWKB with the SRID in it, which PostGIS parses as text;
/// for bytea: the WKB.
fn geometry(value: &Value, ewkb: bool) -> Result<String, String> {
    let Value::Object(map) = value else {
        return Err(format!(
            "expected a geometry {{\"wkb\", \"srid\"}}, got {}",
            kind(value)
        ));
    };
    let wkb = match map.get("wkb") {
        Some(Value::String(s)) => BASE64
            .decode(s)
            .map_err(|_| "the geometry's wkb is not base64".to_string())?,
        _ => return Err("the geometry has no wkb".into()),
    };
    let srid = map
        .get("srid")
        .and_then(Value::as_u64)
        .and_then(|s| u32::try_from(s).ok());
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02X}")).collect::<String>();
    if !ewkb {
        return Ok(format!("\\x{}", hex(&wkb).to_lowercase()));
    }
    let (Some(srid), Some(&order), Some(ty)) = (srid, wkb.first(), wkb.get(1..5)) else {
        return Ok(hex(&wkb));
    };
    // EWKB: the geometry type gets the SRID flag, and the SRID follows it, in the
    // WKB's own byte order.
    let little = order == 1;
    let ty: [u8; 4] = ty
        .try_into()
        .map_err(|_| "the geometry's wkb is too short".to_string())?;
    let ty = if little {
        u32::from_le_bytes(ty)
    } else {
        u32::from_be_bytes(ty)
    };
    // Debezium's PostgreSQL connector already sends EWKB (SRID inside).
    if ty & 0x2000_0000 != 0 {
        return Ok(hex(&wkb));
    }
    let ty = ty | 0x2000_0000;
    let (ty, srid) = if little {
        (ty.to_le_bytes(), srid.to_le_bytes())
    } else {
        (ty.to_be_bytes(), srid.to_be_bytes())
    };
    let mut out = vec![order];
    out.extend_from_slice(&ty);
    out.extend_from_slice(&srid);
    out.extend_from_slice(&wkb[5..]);
    Ok(hex(&out))
}

/// hstore from Debezium's `hstore.handling.mode`: `json` (a JSON object as a string) or
/// `map` (an object) → `"k"=>"v", "k2"=>NULL`.
fn hstore(value: &Value) -> Result<String, String> {
    let parsed;
    let map = match value {
        Value::Object(map) => map,
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s)
                .map_err(|_| format!("{} is not an hstore as JSON", short(value)))?;
            match &parsed {
                Value::Object(map) => map,
                _ => return Err(format!("{} is not an hstore as JSON", short(value))),
            }
        }
        other => return Err(format!("expected an hstore, got {}", kind(other))),
    };
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut pairs = Vec::with_capacity(map.len());
    for (k, v) in map {
        let v = match v {
            Value::Null => "NULL".to_string(),
            Value::String(s) => quote(check_text(s)?),
            other => quote(&other.to_string()),
        };
        pairs.push(format!("{}=>{v}", quote(check_text(k)?)));
    }
    Ok(pairs.join(", "))
}

/// `{"a","b",NULL}` with each element converted as the element type.
fn array_literal(
    items: &[Value],
    logical: Option<&Logical>,
    target: Target<'_>,
) -> Result<String, String> {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Null => out.push_str("NULL"),
            // A nested array: one level down, in the schema too when it says so.
            Value::Array(inner) => {
                let inner_logical = match logical {
                    Some(Logical::Array(l)) => Some(l.as_ref()),
                    other => other,
                };
                out.push_str(&array_literal(inner, inner_logical, target)?);
            }
            _ => {
                let text = scalar(item, logical, target)?;
                out.push('"');
                for c in text.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ty(name: &str, scale: Option<i32>, precision: Option<u32>) -> ColumnType {
        ColumnType {
            name: name.into(),
            scale,
            precision,
        }
    }

    fn conv(
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

    #[test]
    fn decimals_from_every_shape() {
        assert_eq!(
            conv(json!("AeJA"), None, &ty("money", None, None)).ok(),
            Some(Some("1234.56".to_string())),
            "money without schemas: base64 with 2 digits"
        );
        let num = ty("numeric", Some(2), None);
        // Test vectors from shared/fixtures/debezium/EXTERNAL_SOURCES.md.
        for (b64, scale, want) in [
            ("ASs=", 2, "2.99"),
            ("AfM=", 2, "4.99"),
            ("CcM=", 2, "24.99"),
            ("dzWUAA==", 4, "200000.0000"),
            ("AYag", 4, "10.0000"),
            ("B88=", 2, "19.99"),
            ("/w==", 2, "-0.01"),
            ("", 0, "0"),
        ] {
            let got = conv(json!(b64), Some(Logical::Decimal { scale }), &num).expect("valid");
            assert_eq!(got.as_deref(), Some(want), "{b64}");
        }
        // Without a schema the column's scale applies.
        assert_eq!(
            conv(json!("B88="), None, &num).expect("ok").as_deref(),
            Some("19.99")
        );
        assert_eq!(
            conv(json!(12.5), None, &num).expect("ok").as_deref(),
            Some("12.5")
        );
        assert_eq!(
            conv(json!("12.50"), None, &num).expect("ok").as_deref(),
            Some("12.50")
        );
        // decimal.handling.mode=string: a digit string that happens to be base64 stays
        // a number, with a schema (Plain) or when the mapping says so.
        assert_eq!(
            conv(json!("1000"), Some(Logical::Plain), &num)
                .expect("ok")
                .as_deref(),
            Some("1000")
        );
        let as_string = Target {
            ty: &num,
            is_array: false,
            base64_decimals: false,
        };
        assert_eq!(
            to_text(&json!("1000"), None, as_string)
                .expect("ok")
                .as_deref(),
            Some("1000")
        );
        assert!(to_text(&json!("B88="), None, as_string).is_err());
        // numeric(5,-3): 12 thousands.
        assert_eq!(
            conv(json!("DA=="), None, &ty("numeric", Some(-3), None))
                .expect("ok")
                .as_deref(),
            Some("12000")
        );
        let vsd = json!({"scale": 7, "value": "B1vNFQ=="});
        assert_eq!(
            conv(vsd, None, &ty("numeric", None, None))
                .expect("ok")
                .as_deref(),
            Some("12.3456789")
        );
        let err = conv(json!("B88="), None, &ty("numeric", None, None)).expect_err("no scale");
        assert!(err.contains("no scale"), "{err}");
    }

    #[test]
    fn times_and_dates() {
        let d = ty("date", None, None);
        assert_eq!(
            conv(json!(20468), None, &d).expect("ok").as_deref(),
            Some("2026-01-15")
        );
        let ts = ty("timestamp", None, Some(6));
        assert_eq!(
            conv(json!(1_179_150_269_996_577_i64), None, &ts)
                .expect("ok")
                .as_deref(),
            Some("2007-05-14 13:44:29.996577")
        );
        assert_eq!(
            conv(
                json!(1_562_630_400_000_i64),
                Some(Logical::TimestampMillis),
                &ts
            )
            .expect("ok")
            .as_deref(),
            Some("2019-07-09 00:00:00.000000")
        );
        let ts3 = ty("timestamp", None, Some(3));
        assert_eq!(
            conv(json!(1_627_377_701_000_i64), None, &ts3)
                .expect("ok")
                .as_deref(),
            Some("2021-07-27 09:21:41.000000")
        );
        assert_eq!(
            conv(json!(POS_INFINITY_MICROS), None, &ts)
                .expect("ok")
                .as_deref(),
            Some("infinity")
        );
        let t = ty("time", None, Some(6));
        assert_eq!(
            conv(json!(63_900_500_000_i64), None, &t)
                .expect("ok")
                .as_deref(),
            Some("17:45:00.500000")
        );
        assert!(conv(json!(-1), None, &t).is_err());
        let tz = ty("timestamptz", None, Some(6));
        assert_eq!(
            conv(
                json!("2026-01-15T01:00:00.123456Z"),
                Some(Logical::Text),
                &tz
            )
            .expect("ok")
            .as_deref(),
            Some("2026-01-15T01:00:00.123456Z")
        );
        let iv = ty("interval", None, None);
        assert_eq!(
            conv(json!(183_600_000_000_i64), None, &iv)
                .expect("ok")
                .as_deref(),
            Some("183600000000 microseconds")
        );
    }

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

    #[test]
    fn bytes_json_and_arrays() {
        assert_eq!(
            conv(json!("3q2+7w=="), None, &ty("bytea", None, None))
                .expect("ok")
                .as_deref(),
            Some("\\xdeadbeef")
        );
        assert_eq!(
            conv(json!({"color":"red"}), None, &ty("jsonb", None, None))
                .expect("ok")
                .as_deref(),
            Some("{\"color\":\"red\"}")
        );
        let text = ty("text", None, None);
        let got = to_text(
            &json!(["toy", "out\"door", null]),
            None,
            Target {
                ty: &text,
                is_array: true,
                base64_decimals: true,
            },
        )
        .expect("ok");
        assert_eq!(got.as_deref(), Some("{\"toy\",\"out\\\"door\",NULL}"));
        let dates = to_text(
            &json!([20468]),
            Some(&Logical::Array(Box::new(Logical::Date))),
            Target {
                ty: &ty("date", None, None),
                is_array: true,
                base64_decimals: true,
            },
        )
        .expect("ok");
        assert_eq!(dates.as_deref(), Some("{\"2026-01-15\"}"));
        let bit4 = ty("bit", None, Some(4));
        assert_eq!(
            conv(json!("Cg=="), None, &bit4).expect("ok").as_deref(),
            Some("1010")
        );
        assert_eq!(
            conv(json!("1010"), None, &bit4).expect("ok").as_deref(),
            Some("1010")
        );
        assert!(conv(json!("/w=="), None, &bit4).is_err());
        // Schema and value disagree about nesting: errors, not panics.
        let nested = Logical::Array(Box::new(Logical::Array(Box::new(Logical::Date))));
        let int_arr = Target {
            ty: &ty("int4", None, None),
            is_array: true,
            base64_decimals: true,
        };
        assert!(to_text(&json!([1]), Some(&nested), int_arr).is_err());
        assert_eq!(
            to_text(&json!([[20468]]), Some(&nested), int_arr)
                .expect("ok")
                .as_deref(),
            Some("{{\"2026-01-15\"}}")
        );
        let huge = json!({"scale": 4_000_000_000_u64, "value": "AQ=="});
        assert!(conv(huge, None, &ty("numeric", None, None)).is_err());
        assert!(
            conv(
                json!("AQ=="),
                Some(Logical::Bits {
                    length: Some(u32::MAX)
                }),
                &bit4
            )
            .is_err()
        );
    }

    #[test]
    fn geometries_become_ewkb_for_postgis_and_wkb_for_bytea() {
        // POINT(1 2), little-endian WKB.
        let wkb = [
            1u8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0, 0, 0, 0, 0, 0, 0, 0x40,
        ];
        let value = json!({"wkb": BASE64.encode(wkb), "srid": 4326});
        assert_eq!(
            conv(value.clone(), None, &ty("geometry", None, None))
                .ok()
                .flatten()
                .as_deref(),
            Some("0101000020E6100000000000000000F03F0000000000000040")
        );
        assert_eq!(
            conv(value, None, &ty("bytea", None, None))
                .ok()
                .flatten()
                .as_deref(),
            Some("\\x0101000000000000000000f03f0000000000000040")
        );
        // Already EWKB (as Debezium's PostgreSQL connector sends it): unchanged.
        let ewkb = [
            1u8, 1, 0, 0, 0x20, 0xe6, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0, 0, 0, 0, 0, 0,
            0, 0x40,
        ];
        assert_eq!(
            conv(
                json!({"wkb": BASE64.encode(ewkb), "srid": 4326}),
                None,
                &ty("geometry", None, None)
            )
            .ok()
            .flatten()
            .as_deref(),
            Some("0101000020E6100000000000000000F03F0000000000000040")
        );
        assert!(conv(json!({"srid": 1}), None, &ty("geometry", None, None)).is_err());
    }

    #[test]
    fn hstore_from_json_text_or_map() {
        let want = r#""a"=>"1", "b"=>NULL, "q\"t"=>"x\\y""#;
        let text = json!(r#"{"a":"1","b":null,"q\"t":"x\\y"}"#);
        assert_eq!(
            conv(text, None, &ty("hstore", None, None))
                .ok()
                .flatten()
                .as_deref(),
            Some(want)
        );
        let map = json!({"a": "1", "b": null, "q\"t": "x\\y"});
        assert_eq!(
            conv(map, None, &ty("hstore", None, None))
                .ok()
                .flatten()
                .as_deref(),
            Some(want)
        );
        assert!(conv(json!("[1]"), None, &ty("hstore", None, None)).is_err());
    }
}
