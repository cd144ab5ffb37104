//! Numbers → Postgres text: integers (range-checked for the column), floats, and
//! Kafka Connect / Debezium decimals in all their JSON shapes (base64 unscaled values
//! with a scale from the schema or the column, `VariableScaleDecimal`, decimal strings),
//! which is also how `money` comes. Pure; errors are short phrases for the column.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use num_bigint::BigInt;
use serde_json::Value;

use super::{kind, short};

/// The largest numeric scale Postgres accepts: bounds what an event can make us allocate.
const MAX_SCALE: u32 = 1000;

pub(super) fn integer(value: &Value, ty: &str) -> Result<String, String> {
    let n: i128 = match value {
        Value::Number(n) => n
            .as_str()
            .parse()
            .map_err(|_| format!("{} is not a whole number", short(value)))?,
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{} is not a whole number", short(value)))?,
        other => return Err(format!("expected a whole number, got {}", kind(other))),
    };
    in_range(n, ty)?;
    Ok(n.to_string())
}

/// Whether `n` fits the integer type `ty` (`int2`, `int4`, `int8`, `oid`).
pub(super) fn in_range(n: i128, ty: &str) -> Result<(), String> {
    let (lo, hi) = match ty {
        "int2" => (i128::from(i16::MIN), i128::from(i16::MAX)),
        "int4" => (i128::from(i32::MIN), i128::from(i32::MAX)),
        "oid" => (0, i128::from(u32::MAX)),
        _ => (i128::from(i64::MIN), i128::from(i64::MAX)),
    };
    if n < lo || n > hi {
        return Err(format!("{n} is out of range for {ty}"));
    }
    Ok(())
}

pub(super) fn float(value: &Value) -> Result<String, String> {
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
    unscaled_bytes_to_text(&raw, scale)
}

/// Big-endian two's-complement unscaled value → decimal text.
fn unscaled_bytes_to_text(raw: &[u8], scale: i32) -> Result<String, String> {
    let (negative, digits) = unscaled_digits(raw);
    if scale.unsigned_abs() > MAX_SCALE {
        return Err(format!(
            "scale {scale} is larger than Postgres allows ({MAX_SCALE})"
        ));
    }
    let scale_len = scale.unsigned_abs() as usize;
    let mut text = String::with_capacity(digits.len() + scale_len + 3);
    if negative {
        text.push('-');
    }
    if scale <= 0 {
        // numeric(p,-s): the unscaled value counts tens, hundreds, …
        text.push_str(&digits);
        if digits != "0" {
            text.extend(std::iter::repeat_n('0', scale_len));
        }
    } else if digits.len() > scale_len {
        let (int, frac) = digits.split_at(digits.len() - scale_len);
        text.push_str(int);
        text.push('.');
        text.push_str(frac);
    } else {
        text.push_str("0.");
        text.extend(std::iter::repeat_n('0', scale_len - digits.len()));
        text.push_str(&digits);
    }
    Ok(text)
}

/// (negative, the magnitude's digits) of a big-endian two's-complement integer; up to
/// 16 bytes (every decimal of up to 38 digits) without a big integer.
fn unscaled_digits(raw: &[u8]) -> (bool, String) {
    if raw.len() <= 16 {
        let fill = if raw.first().is_some_and(|b| b & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut bytes = [fill; 16];
        bytes[16 - raw.len()..].copy_from_slice(raw);
        let n = i128::from_be_bytes(bytes);
        return (n < 0, n.unsigned_abs().to_string());
    }
    let unscaled = BigInt::from_signed_bytes_be(raw);
    (
        unscaled.sign() == num_bigint::Sign::Minus,
        unscaled.magnitude().to_string(),
    )
}

/// Kafka Connect / Debezium decimals in all their JSON shapes.
pub(super) fn decimal(value: &Value, scale: Option<i32>, base64: bool) -> Result<String, String> {
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
        Value::String(s) => match (BASE64.decode(s), scale) {
            (Err(_), _) if is_decimal_literal(s) => Ok(s.clone()),
            (Ok(raw), Some(scale)) => unscaled_bytes_to_text(&raw, scale),
            (Err(_), Some(scale)) => unscaled_to_text(s, scale),
            (_, None) => Err(format!(
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::decode::Logical;
    use crate::map::convert::testing::{conv, ty};
    use crate::map::convert::{Target, to_text};

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
    }

    #[test]
    fn decimal_strings_negative_and_variable_scales() {
        let num = ty("numeric", Some(2), None);
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
        let huge = json!({"scale": 4_000_000_000_u64, "value": "AQ=="});
        assert!(conv(huge, None, &ty("numeric", None, None)).is_err());
    }

    /// The text the BigInt-only version wrote.
    fn with_bigint(raw: &[u8], scale: i32) -> String {
        let unscaled = num_bigint::BigInt::from_signed_bytes_be(raw);
        let digits = unscaled.magnitude().to_string();
        let sign = if unscaled.sign() == num_bigint::Sign::Minus {
            "-"
        } else {
            ""
        };
        if scale <= 0 {
            let zeros = if digits == "0" {
                String::new()
            } else {
                "0".repeat(scale.unsigned_abs() as usize)
            };
            return format!("{sign}{digits}{zeros}");
        }
        let scale = scale.unsigned_abs() as usize;
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        format!("{sign}{int}.{frac}")
    }

    proptest::proptest! {
        /// Up to 16 bytes without a big integer: the same text as with one.
        #[test]
        fn unscaled_values_read_as_with_a_big_integer(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
            scale in -6_i32..45,
        ) {
            proptest::prop_assert_eq!(
                super::unscaled_bytes_to_text(&raw, scale).expect("in range"),
                with_bigint(&raw, scale)
            );
        }
    }

    #[test]
    fn edges_of_the_small_path() {
        for raw in [
            vec![],
            vec![0],
            vec![0x80],
            vec![0xff; 16],
            [vec![0x80], vec![0; 15]].concat(),
            [vec![0x7f], vec![0xff; 15]].concat(),
            [vec![0xff], vec![0x80], vec![0; 15]].concat(),
        ] {
            for scale in [-2, 0, 2, 40] {
                assert_eq!(
                    super::unscaled_bytes_to_text(&raw, scale).expect("in range"),
                    with_bigint(&raw, scale),
                    "{raw:?} {scale}"
                );
            }
        }
    }
}
