//! A Debezium envelope (`op`, `before`, `after`, `source`) → [`Decoded`]: a
//! [`ChangeEvent`] with the row images it needs, or a skip for `op: m`. Pure. Errors are
//! reasons (`String`) that [`super::decode`] puts after the stream and entry.

use serde_json::{Map, Value};

use super::event::{
    ChangeEvent, Declared, Decoded, Op, POSITION_FIELDS, Row, Skip, Source, TxBlock, scalar_text,
};
use super::{row_from, struct_fields};

/// Whether a value is a Debezium envelope. An envelope has `op` and `source` (or a row
/// image); a flattened row may well have columns named `op`, `status` or `id`.
pub(super) fn is_envelope(schema: Option<&Value>, payload: &Map<String, Value>) -> bool {
    is_envelope_by(
        schema,
        payload.get("source").is_some_and(Value::is_object),
        payload.contains_key("after"),
        payload.contains_key("before"),
    )
}

/// [`is_envelope`] by what the payload has: a `source` object, an `after` key, a
/// `before` key.
pub(super) fn is_envelope_by(
    schema: Option<&Value>,
    source_object: bool,
    has_after: bool,
    has_before: bool,
) -> bool {
    match schema.and_then(|s| s.get("name")).and_then(Value::as_str) {
        // With schemas, the name says it (`<topic>.Envelope`; logical decoding messages
        // are `…MessageValue`).
        Some(name) => name.ends_with("Envelope") || name.ends_with("MessageValue"),
        None => source_object || has_after || has_before,
    }
}

/// Decodes an envelope whose `op` is `op`; the key is parsed by `key` only once the op
/// is known to be a row change.
pub(super) fn envelope(
    op: &str,
    mut payload: Map<String, Value>,
    schema: Option<Value>,
    key: impl FnOnce() -> Result<Option<Row<'static>>, String>,
) -> Result<Decoded<'static>, String> {
    let op = match op {
        "c" => Op::Create,
        "u" => Op::Update,
        "d" => Op::Delete,
        "r" => Op::Read,
        "t" => Op::Truncate,
        "m" => return Ok(Decoded::Skip(Skip::Message)),
        other => {
            return Err(format!(
                "unknown op `{other}` (expected c, u, d, r, t or m)"
            ));
        }
    };
    let key = key()?;
    let row_schema = schema.as_ref().and_then(|s| envelope_row_schema(s));
    let before = image(&mut payload, "before", row_schema)?;
    let after = image(&mut payload, "after", row_schema)?;
    let transaction = tx_block(payload.get("transaction"))?;
    let source = match payload.get("source") {
        Some(Value::Object(s)) => source_from(s),
        _ => Source::default(),
    };
    match op {
        Op::Create | Op::Update | Op::Read if after.is_none() => {
            return Err(format!("op `{}` has no `after` row image", op.letter()));
        }
        Op::Delete if before.is_none() && key.is_none() => {
            return Err(
                "delete has neither a `before` image nor a message key: cannot tell which row"
                    .into(),
            );
        }
        _ => {}
    }
    Ok(Decoded::Change(ChangeEvent {
        op,
        key,
        before,
        after,
        source,
        declared: Declared::of(schema, false),
        bare: false,
        transaction,
    }))
}

/// The `transaction` block: null or absent → `None`; else `id` (a string) and
/// `total_order` (a whole number) are needed.
pub(super) fn tx_block(block: Option<&Value>) -> Result<Option<TxBlock>, String> {
    let block = match block {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(b)) => b,
        Some(other) => return Err(format!("`transaction` is not an object: {other}")),
    };
    let id = match block.get("id") {
        Some(Value::String(id)) if !id.is_empty() => {
            super::transaction::transaction_key(id).to_string()
        }
        other => {
            return Err(format!(
                "`transaction.id` is not a non-empty string: {}",
                other.map_or_else(|| "(absent)".to_string(), Value::to_string)
            ));
        }
    };
    let total_order = match block.get("total_order") {
        Some(v) => v
            .as_i64()
            .ok_or_else(|| format!("`transaction.total_order` is not a whole number: {v}"))?,
        None => 0,
    };
    Ok(Some(TxBlock { id, total_order }))
}

/// The row image `name` (`before` or `after`); `None` when absent or null.
fn image(
    payload: &mut Map<String, Value>,
    name: &str,
    row_schema: Option<&[Value]>,
) -> Result<Option<Row<'static>>, String> {
    match payload.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(row_from(map, row_schema))),
        Some(other) => Err(format!("`{name}` is not an object: {other}")),
    }
}

/// The row struct's fields inside an envelope schema (from `after`, else `before`).
pub(super) fn envelope_row_schema(schema: &Value) -> Option<&[Value]> {
    let fields = struct_fields(schema);
    ["after", "before"].iter().find_map(|name| {
        fields
            .iter()
            .find(|f| f.get("field").and_then(Value::as_str) == Some(name))
            .map(struct_fields)
    })
}

fn source_from(s: &Map<String, Value>) -> Source {
    let text = |k: &str| s.get(k).and_then(Value::as_str).map(str::to_string);
    Source {
        connector: text("connector"),
        db: text("db"),
        schema: text("schema"),
        table: text("table"),
        lsn: s.get("lsn").and_then(Value::as_u64),
        ts_ms: s.get("ts_ms").and_then(Value::as_i64),
        position: POSITION_FIELDS
            .iter()
            .filter_map(|(name, _)| Some((*name, scalar_text(s.get(*name)?)?)))
            .collect(),
    }
}
