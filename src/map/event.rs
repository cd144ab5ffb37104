//! One [`ChangeEvent`] of a mapping → a [`RowChange`] for its table (an upsert of
//! column values as Postgres text, or a delete by key), or a truncate → a [`Truncate`].
//! Pure. Errors: [`MapError::Event`] and [`MapError::UnknownColumn`] dead-letter the
//! entry; [`MapError::Table`] (no unique key on the configured key columns, a missing
//! soft-delete or mapped column, a table without any unique key) stops the pipeline when
//! the table is fixed. Key columns taken from the message key that fit none of the
//! table's unique keys are the event's problem (`Event`).

use std::sync::Arc;

use crate::config::{DecimalHandling, DeleteMode};
use crate::decode::{ChangeEvent, Field, NOT_DEBEZIUM, Op, Row};
use crate::entry::EntryId;

use super::texts::{Builder, Texts};
use super::{MapError, Mapping, TableSchema, UNAVAILABLE_VALUE, Version, columns, convert};

/// What to do with one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOp {
    /// Insert or update these columns (indices into the table's columns, ascending);
    /// columns not listed keep their value (or get their default on insert).
    Upsert { columns: Vec<usize>, values: Texts },
    /// Delete the row; the values are the key columns', in key order.
    Delete { key_values: Vec<String> },
}

/// One row change, ready to batch and write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    pub table: Arc<TableSchema>,
    /// Indices of the key columns (the ON CONFLICT target), in key order.
    pub key_columns: Vec<usize>,
    /// The key values as a JSON array of text, one string per row.
    pub key_text: String,
    pub version: Version,
    pub op: RowOp,
}

/// A truncate of a table at a version: rows older than it go, and events older than
/// it are no-ops from then on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub table: Arc<TableSchema>,
    pub version: Version,
}

/// Turns a truncate event (`op: t`) into a [`Truncate`] of `table`.
pub fn map_truncate(
    mapping: &Mapping,
    event: &ChangeEvent,
    id: EntryId,
    table: &Arc<TableSchema>,
) -> Result<Truncate, MapError> {
    // A truncate compares with every row of the table, and entry IDs of different
    // streams (shards, sources) are not comparable.
    if mapping.versions_by_entry_id(event) {
        return Err(MapError::event(
            "a truncate needs a source log position as its version (the PostgreSQL \
             connector's source.lsn); with stream entry IDs it cannot be ordered against \
             rows from other streams: set mapping.truncate = \"skip\" for this mapping",
        ));
    }
    Ok(Truncate {
        table: table.clone(),
        version: mapping.version(event, id, Version::OP_DELETE)?,
    })
}

/// Turns one row event (c, u, d, r) into a row change for `table`.
pub fn map_event(
    mapping: &Mapping,
    event: &ChangeEvent,
    id: EntryId,
    table: &Arc<TableSchema>,
) -> Result<RowChange, MapError> {
    map_change(mapping, event, id, table).map_err(|e| match e {
        // A bare value's fields are a row only if it was one: say it may not be.
        MapError::UnknownColumn(reason) if event.bare => {
            MapError::UnknownColumn(format!("{NOT_DEBEZIUM}: {reason}"))
        }
        other => other,
    })
}

fn map_change(
    mapping: &Mapping,
    event: &ChangeEvent,
    id: EntryId,
    table: &Arc<TableSchema>,
) -> Result<RowChange, MapError> {
    let key_names = mapping.key_names(event)?;
    let key_columns = table.conflict_key(&key_names).map_err(|e| {
        // A configured key, or a table without any unique key (no event fits it), is
        // the table's problem; a message key that fits none of its keys, the event's.
        if mapping.key.is_some() || table.unique_keys.is_empty() {
            e
        } else {
            e.of_message_key()
        }
    })?;
    let op_byte = if event.op == Op::Delete {
        Version::OP_DELETE
    } else {
        Version::OP_UPSERT
    };
    let version = mapping.version(event, id, op_byte)?;
    let op = match (event.op, mapping.delete) {
        (Op::Create | Op::Update | Op::Read, _) => {
            upsert_op(mapping, event, id, table, &key_columns, &key_names)?
        }
        (Op::Delete, DeleteMode::Hard) => {
            delete_op(mapping, event, table, &key_columns, &key_names)?
        }
        (Op::Delete, DeleteMode::Soft) => {
            soft_delete_op(mapping, event, id, table, &key_columns, &key_names)?
        }
        (Op::Delete, DeleteMode::Ignore) => {
            return Err(MapError::event(
                "deletes are ignored by this mapping (delete = \"ignore\")",
            ));
        }
        (Op::Truncate, _) => {
            return Err(MapError::event("a truncate is not a row change"));
        }
    };
    let key_text = key_text(&op, &key_columns)?;
    Ok(RowChange {
        table: table.clone(),
        key_columns,
        key_text,
        version,
        op,
    })
}

/// A create, update or snapshot read: an upsert of the `after` image.
fn upsert_op(
    mapping: &Mapping,
    event: &ChangeEvent,
    id: EntryId,
    table: &TableSchema,
    key_columns: &[usize],
    key_names: &[&str],
) -> Result<RowOp, MapError> {
    let mut pairs = row_pairs(
        mapping,
        event,
        id,
        table,
        key_columns,
        key_names,
        event.after.as_ref(),
    )?;
    if let Some(col) = soft_column(mapping, table)? {
        // A row created (again) is not deleted: clear the flag.
        if !pairs.has(col) {
            pairs.push(col, None);
        }
    }
    pairs_op(table, key_columns, pairs)
}

/// A delete with `delete = "soft"`: an upsert that sets the soft-delete column to the
/// time of the delete.
fn soft_delete_op(
    mapping: &Mapping,
    event: &ChangeEvent,
    id: EntryId,
    table: &TableSchema,
    key_columns: &[usize],
    key_names: &[&str],
) -> Result<RowOp, MapError> {
    // With REPLICA IDENTITY FULL, `before` is the row as it was deleted: write it
    // (so the result does not depend on arrival order). With the default
    // identity it holds only the key (nulls elsewhere): then only the key and
    // the flag, and the other columns keep what the replica has.
    let full = event.before.as_ref().is_some_and(|b| {
        b.0.iter()
            .any(|f| !f.value.is_null() && !key_names.contains(&mapping.columns.renamed(&f.name)))
    });
    let image = if full { event.before.as_ref() } else { None };
    let mut pairs = row_pairs(mapping, event, id, table, key_columns, key_names, image)?;
    if let Some(col) = soft_column(mapping, table)? {
        let ms = event
            .source
            .ts_ms
            .unwrap_or_else(|| i64::try_from(id.ms).unwrap_or(i64::MAX));
        let text = columns::time_text(ms, &table.columns[col].ty.name)
            .map_err(|e| MapError::table(&table.name, e))?;
        pairs.remove(col);
        pairs.push(col, Some(&text));
    }
    pairs_op(table, key_columns, pairs)
}

/// A field's value for column `col`, appended to `out`; `Ok(false)`: NULL.
fn convert_field(
    mapping: &Mapping,
    table: &TableSchema,
    field: &Field,
    col: usize,
    out: &mut String,
) -> Result<bool, MapError> {
    let column = &table.columns[col];
    let target = convert::Target {
        ty: &column.ty,
        is_array: column.is_array,
        base64_decimals: mapping.decimal_handling == DecimalHandling::Precise,
    };
    convert::field_text_into(&field.value, field.logical.as_ref(), target, out)
        .map_err(|e| MapError::column(&table.name, &column.name, e))
}

/// The soft-delete column's index, with `delete = "soft"`.
pub(super) fn soft_column(
    mapping: &Mapping,
    table: &TableSchema,
) -> Result<Option<usize>, MapError> {
    if mapping.delete != DeleteMode::Soft {
        return Ok(None);
    }
    let Some(name) = &mapping.soft_delete_column else {
        return Ok(None);
    };
    table.column(name).map(Some).ok_or_else(|| {
        MapError::table(
            &table.name,
            format!("soft_delete_column `{name}` does not exist in the table: add it"),
        )
    })
}

/// The columns of a row image (less unchanged TOASTed ones and fields the column
/// mapping leaves out), plus key columns from the key, plus the `fixed` and
/// `from_event` columns, as (column, text).
fn row_pairs(
    mapping: &Mapping,
    event: &ChangeEvent,
    id: EntryId,
    table: &TableSchema,
    key_columns: &[usize],
    key_names: &[&str],
    image: Option<&Row>,
) -> Result<Builder, MapError> {
    let fields = image.map_or(&[][..], |r| r.0.as_slice());
    let mut pairs = Builder::with_capacity(fields.len() + 2);
    for field in fields {
        let Some(name) = mapping.columns.column_of(&field.name) else {
            continue;
        };
        if mapping.columns.is_extra(name) {
            continue;
        }
        let Some(col) = table.column(name) else {
            if mapping.ignore_unknown_columns {
                continue;
            }
            return Err(MapError::UnknownColumn(format!(
                "table {} column {name}: the event has this field but the table has no such \
                 column: add the column, map the field elsewhere (columns.rename) or leave it \
                 out (columns.exclude, or ignore_unknown_columns = true)",
                table.name
            )));
        };
        if field.value.as_str() == Some(UNAVAILABLE_VALUE) {
            // Unchanged TOASTed value: keep what the row has.
            continue;
        }
        pairs.push_with(col, |out| convert_field(mapping, table, field, col, out))?;
    }
    // Key columns missing from the image (excluded by the source) come from the key.
    for (&col, name) in key_columns.iter().zip(key_names) {
        if !pairs.has(col) {
            let field = mapping
                .columns
                .field_for(event.key.as_ref(), name)
                .or_else(|| mapping.columns.field_for(image, name))
                .ok_or_else(|| {
                    MapError::column(
                        &table.name,
                        name,
                        "the key column has no value in the event",
                    )
                })?;
            pairs.push_with(col, |out| convert_field(mapping, table, field, col, out))?;
        }
    }
    for (col, value) in mapping.columns.extra(event, id, table)? {
        pairs.push(col, value.as_deref());
    }
    Ok(pairs)
}

/// An upsert of these (column, text) pairs; every key column must have a value.
fn pairs_op(table: &TableSchema, key_columns: &[usize], pairs: Builder) -> Result<RowOp, MapError> {
    let (columns, values) = pairs.finish();
    for &k in key_columns {
        let at = columns.iter().position(|c| *c == k);
        if at.and_then(|i| values.get(i)).is_none() {
            return Err(MapError::column(
                &table.name,
                &table.columns[k].name,
                "the key column is null",
            ));
        }
    }
    Ok(RowOp::Upsert { columns, values })
}

/// The key values of a delete: from the message key, else from `before`.
fn delete_op(
    mapping: &Mapping,
    event: &ChangeEvent,
    table: &TableSchema,
    key_columns: &[usize],
    key_names: &[&str],
) -> Result<RowOp, MapError> {
    let mut key_values = Vec::with_capacity(key_columns.len());
    for (&col, name) in key_columns.iter().zip(key_names) {
        let field = mapping
            .columns
            .field_for(event.key.as_ref(), name)
            .or_else(|| mapping.columns.field_for(event.before.as_ref(), name))
            .ok_or_else(|| {
                MapError::column(
                    &table.name,
                    name,
                    "the delete carries no value for this key column (neither in the \
                     message key nor in `before`)",
                )
            })?;
        let mut value = String::new();
        if !convert_field(mapping, table, field, col, &mut value)? {
            return Err(MapError::column(
                &table.name,
                name,
                "the key column is null",
            ));
        }
        key_values.push(value);
    }
    Ok(RowOp::Delete { key_values })
}

/// The key values as one JSON array of text: the same row gives the same text
/// whether it comes from an upsert or a delete.
fn key_text(op: &RowOp, key_columns: &[usize]) -> Result<String, MapError> {
    let values: Vec<Option<&str>> = match op {
        RowOp::Upsert { columns, values } => key_columns
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .position(|c| c == k)
                    .and_then(|p| values.get(p))
            })
            .collect(),
        RowOp::Delete { key_values } => key_values.iter().map(|v| Some(v.as_str())).collect(),
    };
    serde_json::to_string(&values).map_err(|e| MapError::event(e.to_string()))
}
