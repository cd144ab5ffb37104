//! Decode: [`StreamEntry`] → [`Decoded`] (a [`ChangeEvent`] or a recognised skip).
//! Input: the raw fields as Debezium Server's Redis sink writes them; output: the
//! envelope with each field's logical type when the event carries a schema.
//! Pure: no I/O, no clock.
//! Errors: [`DecodeError`] names the stream and entry; the pipeline dead-letters it.
//!
//! Entry formats (`debezium.sink.redis.message.format`):
//! - compact (default): one field, name = key JSON (or the `null.key` placeholder),
//!   value = value JSON (or the `null.value` placeholder, a tombstone);
//! - extended: fields `key` and `value`, then upper-cased record headers.
//!
//! Both with the JSON converter's schemas (`{"schema":…,"payload":…}`) and without.
//!
//! Here: the entry's fields, the key, and events without `op` that are skipped;
//! `fast` decodes the common case (an envelope) without a `Value` tree and leaves
//! anything else to the `Value` path: `envelope` decodes a Debezium envelope,
//! `flattened` an event flattened by `ExtractNewRecordState`, `logical` reads field
//! schemas; `event` holds the types.

mod envelope;
mod event;
mod fast;
mod flattened;
mod logical;
mod transaction;

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::DecodeConfig;
use crate::entry::{EntryId, StreamEntry};

pub use event::TxBlock;
pub use event::{
    ChangeEvent, Declared, Decoded, Field, FieldValue, NOT_DEBEZIUM, Op, Row, Skip, Source,
};
pub use logical::{Logical, sql_type};
pub use transaction::{TxEnd, TxRecord, transaction_id, transaction_key, tx_record};

/// The Debezium prefix of heartbeat topics (`topic.heartbeat.prefix`).
const HEARTBEAT_PREFIX: &str = "__debezium-heartbeat";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("stream {stream} entry {id}: {reason}")]
pub struct DecodeError {
    pub stream: Arc<str>,
    pub id: EntryId,
    pub reason: String,
}

/// Decodes one entry.
pub fn decode<'a>(
    entry: &'a StreamEntry,
    config: &DecodeConfig,
) -> Result<Decoded<'a>, DecodeError> {
    let fail = |reason: String| DecodeError {
        stream: entry.stream.clone(),
        id: entry.id,
        reason,
    };
    let Some(fields) = &entry.fields else {
        return Err(fail(
            "the entry was deleted from the stream (XDEL, XTRIM or MAXLEN) before it was \
             applied: its content is lost; only its ID is left"
                .into(),
        ));
    };
    decode_fields(fields, &entry.stream, config).map_err(fail)
}

/// Decodes the fields of an entry of `stream`; an error is the reason only.
fn decode_fields<'a>(
    fields: &'a [(Vec<u8>, Vec<u8>)],
    stream: &str,
    config: &DecodeConfig,
) -> Result<Decoded<'a>, String> {
    let (key_text, value_text) = split_fields(fields)?;
    let key_text = std::str::from_utf8(key_text).map_err(|_| "the key is not valid UTF-8")?;
    let value_text = std::str::from_utf8(value_text).map_err(|_| "the value is not valid UTF-8")?;

    if value_text == config.null_value {
        return Ok(Decoded::Skip(Skip::Tombstone));
    }
    if stream.starts_with(HEARTBEAT_PREFIX) {
        return Ok(Decoded::Skip(Skip::Heartbeat));
    }
    if let Some(decoded) = fast::decode(key_text, value_text, config) {
        return Ok(decoded);
    }
    decode_value(key_text, value_text, config)
}

/// The `Value` path of [`decode_fields`]: the whole value as a `serde_json::Value`,
/// for what the fast path is not sure of (and every error).
fn decode_value(
    key_text: &str,
    value_text: &str,
    config: &DecodeConfig,
) -> Result<Decoded<'static>, String> {
    let value: Value =
        serde_json::from_str(value_text).map_err(|e| format!("the value is not JSON: {e}"))?;
    let (value_schema, payload) = split_schema(value);
    let Value::Object(payload) = payload else {
        return Err("the value is not a JSON object: expected a Debezium change event".into());
    };

    let envelope_like = envelope::is_envelope(value_schema.as_ref(), &payload);
    match payload.get("op") {
        Some(Value::String(op)) if envelope_like => {
            let op = op.clone();
            envelope::envelope(&op, payload, value_schema, || parse_key(key_text, config))
        }
        Some(other) if envelope_like => Err(format!("`op` is not a string: {other}")),
        _ => match classify_without_op(&payload) {
            Some(skip) => Ok(Decoded::Skip(skip)),
            None => {
                let key = parse_key(key_text, config)?;
                flattened::flattened(payload, value_schema, key)
            }
        },
    }
}

/// The message key: `None` for the null-key placeholder or a null payload.
fn parse_key(key_text: &str, config: &DecodeConfig) -> Result<Option<Row<'static>>, String> {
    if key_text == config.null_key {
        return Ok(None);
    }
    let key: Value =
        serde_json::from_str(key_text).map_err(|e| format!("the key is not JSON: {e}"))?;
    let (key_schema, key_payload) = split_schema(key);
    match key_payload {
        Value::Null => Ok(None),
        Value::Object(map) => Ok(Some(row_from(map, key_schema.as_ref().map(struct_fields)))),
        other => Err(format!(
            "the key is not a JSON object of key columns: {other}"
        )),
    }
}

/// Compact: one field (name = key, value = value). Extended: `key`, `value`, headers.
fn split_fields(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<(&[u8], &[u8]), String> {
    if let [(key, value)] = fields {
        return Ok((key, value));
    }
    let find = |name: &[u8]| fields.iter().find(|(f, _)| f == name).map(|(_, v)| v);
    match (find(b"key"), find(b"value")) {
        (Some(k), Some(v)) => Ok((k, v)),
        _ if fields.is_empty() => Err("the entry has no fields".into()),
        _ => Err(format!(
            "the entry has {} fields but no `key` and `value`: expected Debezium Server's \
             compact format (one field) or extended format (`key`, `value`, headers)",
            fields.len()
        )),
    }
}

/// `{"schema":…,"payload":…}` → (schema, payload); anything else is a bare payload.
fn split_schema(value: Value) -> (Option<Value>, Value) {
    match value {
        Value::Object(mut map)
            if map.len() == 2 && map.contains_key("schema") && map.contains_key("payload") =>
        {
            let payload = map.remove("payload").unwrap_or(Value::Null);
            let schema = map.remove("schema").filter(|s| !s.is_null());
            (schema, payload)
        }
        other => (None, other),
    }
}

/// Debezium events without an `op`: heartbeats, schema changes, transaction markers;
/// `None` for anything else (a flattened row).
fn classify_without_op(payload: &Map<String, Value>) -> Option<Skip> {
    // Schema change events: `source`, `ddl`, `tableChanges` (and the database name).
    if payload.contains_key("ddl")
        && payload.contains_key("tableChanges")
        && payload.get("source").is_some_and(Value::is_object)
    {
        return Some(Skip::SchemaChange);
    }
    // Transaction markers: `status` BEGIN or END, `id`, `event_count`, `data_collections`.
    let status = payload.get("status").and_then(Value::as_str);
    if matches!(status, Some("BEGIN" | "END"))
        && payload.contains_key("id")
        && payload.contains_key("data_collections")
    {
        return Some(Skip::TransactionMetadata);
    }
    if payload.keys().all(|k| k == "ts_ms") && !payload.is_empty() {
        return Some(Skip::Heartbeat);
    }
    None
}

/// The `fields` of a struct schema.
fn struct_fields(schema: &Value) -> &[Value] {
    schema
        .get("fields")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A row image or key: its fields in event order, each with the logical type its field
/// schema gives.
fn row_from(map: Map<String, Value>, schema: Option<&[Value]>) -> Row<'static> {
    Row(map
        .into_iter()
        .map(|(name, value)| {
            let logical = schema.and_then(|fields| logical_of(fields, &name));
            Field {
                name: name.into(),
                value: FieldValue::Json(value),
                logical,
            }
        })
        .collect())
}

/// The logical type of field `name` by the row struct's field schemas.
fn logical_of(fields: &[Value], name: &str) -> Option<Logical> {
    fields
        .iter()
        .find(|f| f.get("field").and_then(Value::as_str) == Some(name))
        .and_then(Logical::from_schema)
}

#[cfg(test)]
mod tests;
