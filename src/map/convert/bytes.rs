//! Binary values → Postgres text: base64 bytes → `\\x…` bytea, Debezium's `Bits` →
//! `1010`, geometries (`{"wkb", "srid"}`) → hex EWKB for PostGIS or the WKB as bytea.
//! Pure; errors are short phrases for the column.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use super::{kind, short};

/// The longest bit string we build (Postgres allows 83,886,080; events are far smaller).
const MAX_BITS: usize = 1 << 20;

/// A value for a `bit(n)`/`varbit(n)` column (`length` = n) that no schema describes.
///
/// | JSON | read as |
/// |---|---|
/// | boolean | one bit: Debezium's encoding of `bit(1)` and `varbit(1)` |
/// | base64 of at most ⌈n/8⌉ bytes, `""` included | Debezium's `Bits`: padded to n bits |
/// | other 0s and 1s | bit text, as is (Postgres checks its length) |
///
/// Debezium sends the shortest bytes of the value, so zero is `""`: the column's length
/// restores the leading zeros. A string of 0s and 1s can also be base64 (`"0101"` is 3
/// bytes); it is read as base64 only when those bytes fit the column, which a bit(n)
/// text of n digits never does.
pub(super) fn bit_column(value: &Value, length: Option<u32>) -> Result<String, String> {
    match value {
        Value::Bool(b) => match length {
            None | Some(1) => Ok(if *b { "1" } else { "0" }.into()),
            Some(n) => Err(format!(
                "a boolean fits a bit(1) or varbit(1) column, not one of {n} bits"
            )),
        },
        Value::String(s) if is_bit_text(s, length) => Ok(s.clone()),
        _ => bits(value, length),
    }
}

/// Whether `s` is bit text (`1010`) rather than base64 of at most `length` bits.
fn is_bit_text(s: &str, length: Option<u32>) -> bool {
    if s.is_empty() || !s.bytes().all(|b| b == b'0' || b == b'1') {
        return false;
    }
    let Some(n) = length else {
        return true;
    };
    let max_bytes = usize::try_from(n.div_ceil(8)).unwrap_or(usize::MAX);
    BASE64.decode(s).map_or(true, |raw| raw.len() > max_bytes)
}

/// `io.debezium.data.Bits`: base64 of the bits as a little-endian integer → `1010`.
pub(super) fn bits(value: &Value, length: Option<u32>) -> Result<String, String> {
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

pub(super) fn bytes(value: &Value) -> Result<String, String> {
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
pub(super) fn geometry(value: &Value, ewkb: bool) -> Result<String, String> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::decode::Logical;
    use crate::map::convert::testing::{conv, ty};

    #[test]
    fn bytes_and_bits() {
        assert_eq!(
            conv(json!("3q2+7w=="), None, &ty("bytea", None, None))
                .expect("ok")
                .as_deref(),
            Some("\\xdeadbeef")
        );
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

    /// Debezium without schemas, as captured from 3.6: a bit string is the shortest
    /// little-endian bytes of its value (`""` for zero), base64; the column gives the length.
    #[test]
    fn schemaless_bits_are_padded_to_the_column_length() {
        let cases = [
            ("bit", 8, "", "00000000"),
            ("bit", 8, "gA==", "10000000"),
            ("bit", 8, "/w==", "11111111"),
            ("bit", 8, "AQ==", "00000001"),
            ("bit", 12, "", "000000000000"),
            ("bit", 12, "AAg=", "100000000000"),
            ("bit", 12, "AQ==", "000000000001"),
            ("bit", 12, "/w8=", "111111111111"),
            ("bit", 64, "AQ==", &format!("{:0>64}", "1")),
            ("bit", 64, "AAAAAAAAAIA=", &format!("{:0<64}", "1")),
            ("varbit", 8, "", "00000000"),
            ("varbit", 12, "AQg=", "100000000001"),
            ("varbit", 12, "CA==", "000000001000"),
            // A string of 0s and 1s that cannot be base64 of the column's bits is text.
            ("bit", 4, "1010", "1010"),
            ("varbit", 8, "101", "101"),
            ("varbit", 8, "1", "1"),
        ];
        for (name, n, json, want) in cases {
            let got = conv(json!(json), None, &ty(name, None, Some(n)));
            assert_eq!(got, Ok(Some(want.to_string())), "{name}({n}) {json:?}");
        }
    }

    #[test]
    fn bits_longer_than_the_column_are_errors() {
        let bit8 = ty("bit", None, Some(8));
        // 0x0100: bit 8 is set, one more than bit(8) holds.
        let err = conv(json!("AAE="), None, &bit8).expect_err("too long");
        assert!(err.contains("more than 8 bits"), "{err}");
        assert!(conv(json!("AAE="), None, &ty("varbit", None, Some(8))).is_err());
        // bit(12): the high byte may only use its low 4 bits.
        assert!(conv(json!("/x8="), None, &ty("bit", None, Some(12))).is_err());
        assert!(conv(json!("not base64!"), None, &bit8).is_err());
    }

    /// Debezium sends `bit(1)` and `varbit(1)` as a boolean, with and without schemas.
    #[test]
    fn booleans_are_single_bits() {
        for name in ["bit", "varbit"] {
            let one = ty(name, None, Some(1));
            assert_eq!(conv(json!(true), None, &one), Ok(Some("1".to_string())));
            assert_eq!(conv(json!(false), None, &one), Ok(Some("0".to_string())));
            let plain = Some(Logical::Plain);
            assert_eq!(conv(json!(true), plain, &one), Ok(Some("1".to_string())));
        }
        let err = conv(json!(true), None, &ty("bit", None, Some(8))).expect_err("8 bits");
        assert!(err.contains("bit(1)"), "{err}");
    }

    /// With schemas, `io.debezium.data.Bits` carries the length.
    #[test]
    fn bits_with_a_schema_length() {
        let bits = |length| {
            Some(Logical::Bits {
                length: Some(length),
            })
        };
        let varbit = ty("varbit", None, None);
        assert_eq!(
            conv(json!(""), bits(8), &varbit),
            Ok(Some("00000000".to_string()))
        );
        assert_eq!(
            conv(json!("AAg="), bits(12), &varbit),
            Ok(Some("100000000000".to_string()))
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
}
