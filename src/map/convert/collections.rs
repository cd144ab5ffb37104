//! Composite values → Postgres text: JSON arrays → array literals (`{"a","b",NULL}`,
//! each element converted as the element type) and hstore (from JSON text or an object).
//! Pure; errors are short phrases for the column.

use serde_json::Value;

use super::{Target, check_text, kind, scalar, short};
use crate::decode::Logical;

/// hstore from Debezium's `hstore.handling.mode`: `json` (a JSON object as a string) or
/// `map` (an object) → `"k"=>"v", "k2"=>NULL`.
pub(super) fn hstore(value: &Value) -> Result<String, String> {
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
pub(super) fn array_literal(
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
    use serde_json::json;

    use super::*;
    use crate::map::convert::testing::{conv, ty};
    use crate::map::convert::to_text;

    #[test]
    fn json_and_arrays() {
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
