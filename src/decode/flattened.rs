//! An event flattened by Debezium's `ExtractNewRecordState` (a value without `op`) →
//! [`Decoded`]: the row's fields, plus metadata fields with the `__` prefix (not written
//! to the table). Pure. Errors are reasons (`String`) that [`super::decode`] puts after
//! the stream and entry.
//!
//! `__deleted` true (rewrite mode) is a delete whose fields are the `before` image;
//! `__op` gives the operation (default: an upsert); `__lsn`/`__source_lsn`,
//! `__table`/`__source_table`, `__schema`, `__db`, `__source_ts_ms`/`__ts_ms` and
//! `__connector` fill `source`.

use serde_json::{Map, Value};

use super::event::{ChangeEvent, Declared, Decoded, Op, POSITION_FIELDS, Row, Source, scalar_text};
use super::{row_from, struct_fields};

/// The prefix `ExtractNewRecordState` gives the metadata it adds (`add.fields`,
/// `delete.handling.mode=rewrite`): `__op`, `__deleted`, `__lsn`, `__source_ts_ms`, ….
pub(super) const FLATTENED_PREFIX: &str = "__";

/// Decodes a flattened event (see the module doc).
pub(super) fn flattened(
    payload: Map<String, Value>,
    schema: Option<Value>,
    key: Option<Row<'static>>,
) -> Result<Decoded<'static>, String> {
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
    let (meta, fields) = split_meta(payload);
    let bare = schema.is_none() && meta.is_empty();
    if fields.is_empty() {
        return Err(
            "the value has no `op` field and no row fields: it is neither a Debezium change \
             event nor one flattened by ExtractNewRecordState"
                .into(),
        );
    }
    let op = op_of(&meta)?;
    check_lsn(&meta)?;
    let source = source_of(&meta);
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
        bare,
        transaction: None,
    }))
}

/// (metadata without its prefix, row fields).
fn split_meta(payload: Map<String, Value>) -> (Map<String, Value>, Map<String, Value>) {
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
    (meta, fields)
}

/// The first of `names` that the metadata has, as text.
fn text(meta: &Map<String, Value>, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| meta.get(*n).and_then(scalar_text))
}

/// `__deleted` true is a delete whatever `__op` says; no `__op` is an upsert.
fn op_of(meta: &Map<String, Value>) -> Result<Op, String> {
    let deleted = matches!(meta.get("deleted"), Some(Value::Bool(true)))
        || text(meta, &["deleted"]).as_deref() == Some("true");
    Ok(match text(meta, &["op"]).as_deref() {
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
    })
}

/// A null __lsn (incremental snapshot rows) would fall back to entry IDs and mix two
/// version schemes in one table.
fn check_lsn(meta: &Map<String, Value>) -> Result<(), String> {
    for name in ["lsn", "source_lsn"] {
        if meta.get(name).is_some_and(Value::is_null) {
            return Err(format!(
                "flattened event with a null __{name}: its version cannot be compared with \
                 the others of the table; set mapping.version = \"entry_id\" for these \
                 streams, or drop __{name} from add.fields"
            ));
        }
    }
    Ok(())
}

fn source_of(meta: &Map<String, Value>) -> Source {
    let text = |names: &[&str]| text(meta, names);
    Source {
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
    }
}
