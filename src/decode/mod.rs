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

mod logical;

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::DecodeConfig;
use crate::entry::{EntryId, StreamEntry};
use crate::table::DeclaredColumn;

pub use logical::{Logical, sql_type};

/// The Debezium prefix of heartbeat topics (`topic.heartbeat.prefix`).
const HEARTBEAT_PREFIX: &str = "__debezium-heartbeat";

/// What an entry turned out to be.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per entry, moved once
pub enum Decoded {
    Change(ChangeEvent),
    /// Recognised, applied to nothing, acked.
    Skip(Skip),
}

/// Entries that are acknowledged without touching Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// A null value after a delete; the `op: d` event before it did the delete.
    Tombstone,
    /// `op: t` on a mapping with `truncate = "skip"`.
    Truncate,
    /// `op: d` on a mapping with `delete = "ignore"`.
    Delete,
    /// `op: m`, a logical decoding message.
    Message,
    Heartbeat,
    SchemaChange,
    TransactionMetadata,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Tombstone => "tombstone",
            Skip::Truncate => "truncate",
            Skip::Delete => "delete",
            Skip::Message => "message",
            Skip::Heartbeat => "heartbeat",
            Skip::SchemaChange => "schema_change",
            Skip::TransactionMetadata => "transaction_metadata",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
    /// A snapshot read (`op: r`): applied like a create.
    Read,
    /// `op: t`: every row of the table goes.
    Truncate,
}

impl Op {
    /// Debezium's letter for the operation (`op` of the envelope).
    pub fn letter(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }
}

/// One row change as Debezium described it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub op: Op,
    /// The message key's fields; `None` for a null key (a table without a key).
    pub key: Option<Row>,
    pub before: Option<Row>,
    pub after: Option<Row>,
    pub source: Source,
    /// The event's schema, for schema evolution: [`Declared::columns`].
    pub declared: Declared,
}

/// An event's value schema, kept (not copied) so that the columns it declares are
/// derived only when schema evolution asks for them, not for every event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Declared {
    schema: Option<Value>,
    /// The schema is the row struct itself (an ExtractNewRecordState event), not an
    /// envelope.
    flattened: bool,
}

impl Declared {
    fn of(schema: Option<Value>, flattened: bool) -> Self {
        Self { schema, flattened }
    }

    /// The row's columns as the schema declares them (empty without schemas).
    pub fn columns(&self) -> Vec<DeclaredColumn> {
        let fields = match &self.schema {
            None => None,
            Some(s) if self.flattened => Some(struct_fields(s)),
            Some(s) => envelope_row_schema(s),
        };
        declared(fields)
    }
}

/// The columns a row struct schema declares.
fn declared(fields: Option<&[Value]>) -> Vec<DeclaredColumn> {
    fields
        .unwrap_or(&[])
        .iter()
        .filter_map(|f| {
            let name = f.get("field").and_then(Value::as_str)?;
            if name.starts_with(FLATTENED_PREFIX) {
                return None;
            }
            Some(DeclaredColumn {
                name: name.to_string(),
                sql_type: sql_type(f)?,
                optional: f.get("optional").and_then(Value::as_bool).unwrap_or(true),
            })
        })
        .collect()
}

/// The parts of the `source` block redsink uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Source {
    pub connector: Option<String>,
    pub db: Option<String>,
    pub schema: Option<String>,
    pub table: Option<String>,
    pub lsn: Option<u64>,
    pub ts_ms: Option<i64>,
    /// The connector-specific position fields, as text (numbers as their digits):
    /// `sequence`, `file`, `pos`, `row`, `change_lsn`, `commit_lsn`, `event_serial_no`,
    /// `scn`, `commit_scn`, `ord`.
    pub position: Vec<(&'static str, String)>,
}

impl Source {
    /// A position field (see [`Source::position`]).
    pub fn position(&self, name: &str) -> Option<&str> {
        self.position
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The `source` fields that make up connectors' log positions, with their names in an
/// event flattened by ExtractNewRecordState (`add.fields` prefixes them with `source_`).
const POSITION_FIELDS: [(&str, &str); 10] = [
    ("sequence", "source_sequence"),
    ("file", "source_file"),
    ("pos", "source_pos"),
    ("row", "source_row"),
    ("change_lsn", "source_change_lsn"),
    ("commit_lsn", "source_commit_lsn"),
    ("event_serial_no", "source_event_serial_no"),
    ("scn", "source_scn"),
    ("commit_scn", "source_commit_scn"),
    ("ord", "source_ord"),
];

/// A string or a number as text (how Debezium's scalar metadata fields may come).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Fields of a row image or key, in event order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row(pub Vec<Field>);

impl Row {
    pub fn get(&self, name: &str) -> Option<&Field> {
        self.0.iter().find(|f| f.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub value: Value,
    /// From the event schema; `None` without schemas or for plain types.
    pub logical: Option<Logical>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("stream {stream} entry {id}: {reason}")]
pub struct DecodeError {
    pub stream: Arc<str>,
    pub id: EntryId,
    pub reason: String,
}

/// Decodes one entry.
pub fn decode(entry: &StreamEntry, config: &DecodeConfig) -> Result<Decoded, DecodeError> {
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
    let (key_text, value_text) = split_fields(fields).map_err(&fail)?;
    let key_text =
        std::str::from_utf8(key_text).map_err(|_| fail("the key is not valid UTF-8".into()))?;
    let value_text =
        std::str::from_utf8(value_text).map_err(|_| fail("the value is not valid UTF-8".into()))?;

    if value_text == config.null_value {
        return Ok(Decoded::Skip(Skip::Tombstone));
    }
    if entry.stream.starts_with(HEARTBEAT_PREFIX) {
        return Ok(Decoded::Skip(Skip::Heartbeat));
    }
    let value: Value = serde_json::from_str(value_text)
        .map_err(|e| fail(format!("the value is not JSON: {e}")))?;
    let (value_schema, payload) = split_schema(value);
    let Value::Object(mut payload) = payload else {
        return Err(fail(
            "the value is not a JSON object: expected a Debezium change event".into(),
        ));
    };

    let envelope_like = is_envelope(value_schema.as_ref(), &payload);
    let op = match payload.get("op") {
        Some(Value::String(op)) if envelope_like => op.clone(),
        Some(other) if envelope_like => {
            return Err(fail(format!("`op` is not a string: {other}")));
        }
        _ => {
            return match classify_without_op(&payload) {
                Some(skip) => Ok(Decoded::Skip(skip)),
                None => {
                    let key = parse_key(key_text, config).map_err(&fail)?;
                    flattened(payload, value_schema, key).map_err(fail)
                }
            };
        }
    };
    let op = match op.as_str() {
        "c" => Op::Create,
        "u" => Op::Update,
        "d" => Op::Delete,
        "r" => Op::Read,
        "t" => Op::Truncate,
        "m" => return Ok(Decoded::Skip(Skip::Message)),
        other => {
            return Err(fail(format!(
                "unknown op `{other}` (expected c, u, d, r, t or m)"
            )));
        }
    };

    let key = parse_key(key_text, config).map_err(&fail)?;

    let row_schema = value_schema.as_ref().and_then(|s| envelope_row_schema(s));
    let mut image = |name: &str| -> Result<Option<Row>, String> {
        match payload.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(row_from(map, row_schema))),
            Some(other) => Err(format!("`{name}` is not an object: {other}")),
        }
    };
    let before = image("before").map_err(&fail)?;
    let after = image("after").map_err(&fail)?;
    let source = match payload.get("source") {
        Some(Value::Object(s)) => source_from(s),
        _ => Source::default(),
    };

    match op {
        Op::Create | Op::Update | Op::Read if after.is_none() => {
            return Err(fail(format!(
                "op `{}` has no `after` row image",
                op.letter()
            )));
        }
        Op::Delete if before.is_none() && key.is_none() => {
            return Err(fail(
                "delete has neither a `before` image nor a message key: cannot tell which row"
                    .into(),
            ));
        }
        _ => {}
    }
    Ok(Decoded::Change(ChangeEvent {
        op,
        key,
        before,
        after,
        source,
        declared: Declared::of(value_schema, false),
    }))
}

/// The message key: `None` for the null-key placeholder or a null payload.
fn parse_key(key_text: &str, config: &DecodeConfig) -> Result<Option<Row>, String> {
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

/// Whether a value is a Debezium envelope. An envelope has `op` and `source` (or a row
/// image); a flattened row may well have columns named `op`, `status` or `id`.
fn is_envelope(schema: Option<&Value>, payload: &Map<String, Value>) -> bool {
    match schema.and_then(|s| s.get("name")).and_then(Value::as_str) {
        // With schemas, the name says it (`<topic>.Envelope`; logical decoding messages
        // are `…MessageValue`).
        Some(name) => name.ends_with("Envelope") || name.ends_with("MessageValue"),
        None => {
            payload.get("source").is_some_and(Value::is_object)
                || payload.contains_key("after")
                || payload.contains_key("before")
        }
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

/// The prefix `ExtractNewRecordState` gives the metadata it adds (`add.fields`,
/// `delete.handling.mode=rewrite`): `__op`, `__deleted`, `__lsn`, `__source_ts_ms`, ….
const FLATTENED_PREFIX: &str = "__";

/// An event flattened by Debezium's `ExtractNewRecordState`: the row's fields, plus
/// metadata fields with the `__` prefix (not written to the table). `__deleted` true
/// (rewrite mode) is a delete whose fields are the `before` image; `__op` gives the
/// operation (default: an upsert); `__lsn`/`__source_lsn`, `__table`/`__source_table`,
/// `__schema`, `__db`, `__source_ts_ms`/`__ts_ms` and `__connector` fill `source`.
fn flattened(
    payload: Map<String, Value>,
    schema: Option<Value>,
    key: Option<Row>,
) -> Result<Decoded, String> {
    // Without a schema naming it, a value with these fields is taken for an envelope
    // that lost its `op`.
    if schema.is_none()
        && ["before", "after", "source"]
            .iter()
            .any(|k| payload.contains_key(*k))
    {
        return Err(
            "the value has `before`/`after`/`source` but no `op` field: a malformed Debezium \
             envelope (a flattened ExtractNewRecordState event has none of them)"
                .into(),
        );
    }
    let mut meta = Map::new();
    let mut fields = Map::new();
    for (name, value) in payload {
        match name.strip_prefix(FLATTENED_PREFIX) {
            Some(meta_name) => {
                meta.insert(meta_name.to_string(), value);
            }
            None => {
                fields.insert(name, value);
            }
        }
    }
    if fields.is_empty() {
        return Err(
            "the value has no `op` field and no row fields: it is neither a Debezium change \
             event nor one flattened by ExtractNewRecordState"
                .into(),
        );
    }
    let text = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| meta.get(*n).and_then(scalar_text))
    };
    let deleted = matches!(meta.get("deleted"), Some(Value::Bool(true)))
        || text(&["deleted"]).as_deref() == Some("true");
    let op = match text(&["op"]).as_deref() {
        _ if deleted => Op::Delete,
        None | Some("c") => Op::Create,
        Some("u") => Op::Update,
        Some("r") => Op::Read,
        Some("d") => Op::Delete,
        Some(other) => {
            return Err(format!(
                "flattened event with unknown __op `{other}` (expected c, u, r or d)"
            ));
        }
    };
    // A null __lsn (incremental snapshot rows) would fall back to entry IDs and mix two
    // version schemes in one table.
    for name in ["lsn", "source_lsn"] {
        if meta.get(name).is_some_and(Value::is_null) {
            return Err(format!(
                "flattened event with a null __{name}: its version cannot be compared with \
                 the others of the table; set mapping.version = \"entry_id\" for these \
                 streams, or drop __{name} from add.fields"
            ));
        }
    }
    let source = Source {
        connector: text(&["connector", "source_connector"]),
        db: text(&["db", "source_db"]),
        schema: text(&["schema", "source_schema"]),
        table: text(&["table", "source_table"]),
        lsn: text(&["lsn", "source_lsn"]).and_then(|l| l.parse().ok()),
        ts_ms: text(&["source_ts_ms", "ts_ms"]).and_then(|t| t.parse().ok()),
        position: POSITION_FIELDS
            .iter()
            .filter_map(|(name, flat)| text(&[flat, name]).map(|v| (*name, v)))
            .collect(),
    };
    let row = row_from(fields, schema.as_ref().map(struct_fields));
    let (before, after) = if op == Op::Delete {
        (Some(row), None)
    } else {
        (None, Some(row))
    };
    Ok(Decoded::Change(ChangeEvent {
        op,
        key,
        before,
        after,
        source,
        declared: Declared::of(schema, true),
    }))
}

/// The `fields` of a struct schema.
fn struct_fields(schema: &Value) -> &[Value] {
    schema
        .get("fields")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The row struct's fields inside an envelope schema (from `after`, else `before`).
fn envelope_row_schema(schema: &Value) -> Option<&[Value]> {
    let fields = struct_fields(schema);
    ["after", "before"].iter().find_map(|name| {
        fields
            .iter()
            .find(|f| f.get("field").and_then(Value::as_str) == Some(name))
            .map(struct_fields)
    })
}

fn row_from(map: Map<String, Value>, schema: Option<&[Value]>) -> Row {
    Row(map
        .into_iter()
        .map(|(name, value)| {
            let logical = schema.and_then(|fields| {
                fields
                    .iter()
                    .find(|f| f.get("field").and_then(Value::as_str) == Some(name.as_str()))
                    .and_then(Logical::from_schema)
            });
            Field {
                name,
                value,
                logical,
            }
        })
        .collect())
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

#[cfg(test)]
mod tests;
