//! The vocabulary decode produces: a [`Decoded`] entry is a [`ChangeEvent`] (an [`Op`],
//! row images of [`Field`]s, the [`Source`] block, the [`Declared`] schema) or a
//! [`Skip`]. Plain data: building it is [`super::decode`]'s job; map consumes it.

use std::borrow::Cow;

use serde_json::Value;

use super::envelope::envelope_row_schema;
use super::flattened::FLATTENED_PREFIX;
use super::logical::{Logical, sql_type};
use super::struct_fields;
use crate::table::DeclaredColumn;

/// What an entry turned out to be.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per entry, moved once
pub enum Decoded<'a> {
    Change(ChangeEvent<'a>),
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

/// One row change as Debezium described it; its fields may borrow the entry's text.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent<'a> {
    pub op: Op,
    /// The message key's fields; `None` for a null key (a table without a key).
    pub key: Option<Row<'a>>,
    pub before: Option<Row<'a>>,
    pub after: Option<Row<'a>>,
    pub source: Source,
    /// The event's schema, for schema evolution: [`Declared::columns`].
    pub declared: Declared,
    /// A bare value: no `op`, `before`, `after` or `source` (no envelope), no `__`
    /// metadata fields and no schema. ExtractNewRecordState with its default settings
    /// writes rows like that, so it is taken for one; but any other JSON object looks
    /// the same, so when its fields do not fit the table the reason says it may be no
    /// Debezium event at all.
    pub bare: bool,
    /// The source transaction it belongs to (`transaction`, with Debezium's
    /// `provide.transaction.metadata`); `None` when null or absent.
    pub transaction: Option<TxBlock>,
}

/// An event's `transaction` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxBlock {
    /// Opaque (the PostgreSQL connector writes `<txId>:<lsn>`).
    pub id: String,
    /// The event's place in its transaction, from 1.
    pub total_order: i64,
}

/// What a bare value whose fields do not fit the table may be.
pub const NOT_DEBEZIUM: &str = "the value is neither a Debezium envelope (no `op`, `after`, \
     `before`) nor a flattened event (no `__op`/`__deleted`); read as a row flattened by \
     ExtractNewRecordState without metadata fields, it does not fit the table";

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
    pub(super) fn of(schema: Option<Value>, flattened: bool) -> Self {
        Self { schema, flattened }
    }

    /// The row's columns as the schema declares them, of the fields `wanted` (empty
    /// without schemas); an error (the reason) names a wanted field whose schema type has
    /// no PostgreSQL type.
    pub fn columns(&self, wanted: impl Fn(&str) -> bool) -> Result<Vec<DeclaredColumn>, String> {
        let fields = match &self.schema {
            None => None,
            Some(s) if self.flattened => Some(struct_fields(s)),
            Some(s) => envelope_row_schema(s),
        };
        declared(fields, wanted)
    }
}

/// The columns a row struct schema declares. A field whose type has no PostgreSQL type
/// is an error, not a column left out: the table would be created without it and every
/// event would then fail on "no such column".
fn declared(
    fields: Option<&[Value]>,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<DeclaredColumn>, String> {
    fields
        .unwrap_or(&[])
        .iter()
        .filter_map(|f| {
            let name = f.get("field").and_then(Value::as_str)?;
            if name.starts_with(FLATTENED_PREFIX) || !wanted(name) {
                return None;
            }
            let Some(sql_type) = sql_type(f) else {
                return Some(Err(format!(
                    "schema evolution: column {name}: its schema type {} has no PostgreSQL \
                     type (expected a Kafka Connect type: int8, int16, int32, int64, float32, \
                     float64, boolean, string, bytes, map, struct, or an array of one of \
                     them): fix the schema the producer sends, or create the column yourself \
                     with schema_evolution = \"none\"",
                    type_text(f)
                )));
            };
            Some(Ok(DeclaredColumn {
                name: name.to_string(),
                sql_type,
                optional: f.get("optional").and_then(Value::as_bool).unwrap_or(true),
            }))
        })
        .collect()
}

/// A field schema's type as the event wrote it: `type`, its logical `name`, an array's
/// `items`.
fn type_text(schema: &Value) -> String {
    let ty = match schema.get("type") {
        Some(Value::String(t)) => format!("`{t}`"),
        Some(other) => format!("`{other}`"),
        None => "(none)".into(),
    };
    let name = schema
        .get("name")
        .and_then(Value::as_str)
        .map(|n| format!(" named `{n}`"))
        .unwrap_or_default();
    let items = schema
        .get("items")
        .map(|i| format!(" of {}", type_text(i)))
        .unwrap_or_default();
    format!("{ty}{name}{items}")
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
pub(super) const POSITION_FIELDS: [(&str, &str); 10] = [
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
pub(super) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Fields of a row image or key, in event order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row<'a>(pub Vec<Field<'a>>);

impl<'a> Row<'a> {
    pub fn get(&self, name: &str) -> Option<&Field<'a>> {
        self.0.iter().find(|f| f.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field<'a> {
    /// Borrowed from the entry when it has no escapes (the fast path).
    pub name: Cow<'a, str>,
    pub value: FieldValue<'a>,
    /// From the event schema; `None` without schemas or for plain types.
    pub logical: Option<Logical>,
}

/// A field's JSON value: parsed, or (the fast path) a scalar as read, without a
/// `Value` for it: a string without escapes borrowed from the entry, a whole number
/// that serde_json reads as a u64 or an i64.
#[derive(Debug, Clone)]
pub enum FieldValue<'a> {
    Json(Value),
    Str(&'a str),
    U64(u64),
    I64(i64),
}

impl FieldValue<'_> {
    pub fn is_null(&self) -> bool {
        matches!(self, FieldValue::Json(Value::Null))
    }

    /// The string, as `Value::as_str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::Json(v) => v.as_str(),
            FieldValue::Str(s) => Some(s),
            FieldValue::U64(_) | FieldValue::I64(_) => None,
        }
    }

    /// `Value::as_u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            FieldValue::Json(v) => v.as_u64(),
            FieldValue::U64(n) => Some(*n),
            FieldValue::Str(_) | FieldValue::I64(_) => None,
        }
    }

    /// `Value::as_i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            FieldValue::Json(v) => v.as_i64(),
            FieldValue::U64(n) => i64::try_from(*n).ok(),
            FieldValue::I64(n) => Some(*n),
            FieldValue::Str(_) => None,
        }
    }

    /// [`scalar_text`] of the value.
    pub(super) fn scalar_text(&self) -> Option<String> {
        match self {
            FieldValue::Json(v) => scalar_text(v),
            FieldValue::Str(s) => Some((*s).to_owned()),
            FieldValue::U64(n) => Some(n.to_string()),
            FieldValue::I64(n) => Some(n.to_string()),
        }
    }

    /// The value as a `Value`.
    pub fn json(&self) -> Cow<'_, Value> {
        match self {
            FieldValue::Json(v) => Cow::Borrowed(v),
            FieldValue::Str(s) => Cow::Owned(Value::String((*s).to_owned())),
            FieldValue::U64(n) => Cow::Owned(Value::from(*n)),
            FieldValue::I64(n) => Cow::Owned(Value::from(*n)),
        }
    }
}

#[cfg(test)]
impl ChangeEvent<'_> {
    /// The event without borrows (tests keep events past their entries).
    pub(crate) fn into_owned(self) -> ChangeEvent<'static> {
        let owned = |row: Option<Row<'_>>| {
            row.map(|r| {
                Row(r
                    .0
                    .into_iter()
                    .map(|f| Field {
                        name: Cow::Owned(f.name.into_owned()),
                        value: FieldValue::Json(f.value.json().into_owned()),
                        logical: f.logical,
                    })
                    .collect())
            })
        };
        ChangeEvent {
            op: self.op,
            key: owned(self.key),
            before: owned(self.before),
            after: owned(self.after),
            source: self.source,
            declared: self.declared,
            bare: self.bare,
            transaction: self.transaction,
        }
    }
}

/// Equal as JSON values, however each is held.
impl PartialEq for FieldValue<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}
