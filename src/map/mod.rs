//! Map: [`ChangeEvent`] + its table's [`TableSchema`] → [`RowChange`].
//! Input: a decoded event and the catalog facts of the table it routes to; output: the
//! row's key, version and column values as Postgres text.
//! Pure: no I/O (the catalog is looked up by the pipeline and passed in).
//! Errors: [`MapError`]; `Event` errors dead-letter the entry, `Table` errors stop
//! the pipeline (a table-wide problem would otherwise dead-letter every event).
//!
//! The version decides which change of a row wins (see [`Version`]).

mod columns;
pub mod convert;
mod table;

use std::fmt;
use std::sync::Arc;

use crate::config::StreamPattern;
use crate::config::{DecimalHandling, DeleteMode, MappingConfig, TruncateMode, VersionSource};
use crate::decode::{ChangeEvent, Field, Op, Row};
use crate::entry::EntryId;
use crate::table::{TableName, TableTemplate};

pub use columns::Columns;
pub use table::{Column, ColumnType, TableSchema, resolve_table};

/// Debezium's placeholder for an unchanged TOASTed column (`unavailable.value.placeholder`).
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// This event cannot be applied; others can.
    #[error("{0}")]
    Event(String),
    /// The event has a field the table has no column for (maybe not yet: the catalog
    /// is worth reading again).
    #[error("{0}")]
    UnknownColumn(String),
    /// No event for this table can be applied until the table or config is fixed.
    #[error("table {table}: {reason}")]
    Table { table: String, reason: String },
}

impl MapError {
    pub fn event(reason: impl Into<String>) -> Self {
        Self::Event(reason.into())
    }
    pub fn table(table: &TableName, reason: impl Into<String>) -> Self {
        Self::Table {
            table: table.to_string(),
            reason: reason.into(),
        }
    }
    fn column(table: &TableName, column: &str, reason: impl fmt::Display) -> Self {
        Self::Event(format!("table {table} column {column}: {reason}"))
    }
}

/// A per-row version: bytes that compare (as Postgres compares `bytea`) in the order
/// the source applied the changes. Fixed-width big-endian integers, so byte order is
/// numeric order, then one byte for the operation.
///
/// | source | bytes |
/// |---|---|
/// | PostgreSQL `source.lsn` | lsn as u64, op |
/// | stream entry ID | ms as u64, seq as u64, op |
///
/// The op byte (delete or truncate 0, upsert 1) orders a delete and an upsert of one
/// row at one position (a primary-key change mapped onto another unique key) the way
/// the source emits them: the delete first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub Vec<u8>);

impl Version {
    pub const OP_DELETE: u8 = 0;
    pub const OP_UPSERT: u8 = 1;

    pub fn from_lsn(lsn: u64, op: u8) -> Self {
        Self::from_parts(&[lsn], op)
    }
    /// Big-endian numbers, then the op byte: byte order is the numbers' order.
    pub fn from_parts(parts: &[u64], op: u8) -> Self {
        let mut v = Vec::with_capacity(parts.len() * 8 + 1);
        for p in parts {
            v.extend_from_slice(&p.to_be_bytes());
        }
        v.push(op);
        Self(v)
    }
    pub fn from_entry_id(id: EntryId, op: u8) -> Self {
        let mut v = id.ms.to_be_bytes().to_vec();
        v.extend_from_slice(&id.seq.to_be_bytes());
        v.push(op);
        Self(v)
    }
}

/// A configured mapping, compiled.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub index: usize,
    pub streams: Vec<StreamPattern>,
    pub table: TableTemplate,
    pub key: Option<Vec<String>>,
    pub version: VersionSource,
    pub ignore_unknown_columns: bool,
    pub truncate: TruncateMode,
    pub decimal_handling: DecimalHandling,
    pub delete: DeleteMode,
    pub soft_delete_column: Option<String>,
    pub columns: Columns,
    pub schema_evolution: crate::config::SchemaEvolution,
}

impl Mapping {
    /// Compiles a validated [`MappingConfig`].
    pub fn compile(index: usize, config: &MappingConfig) -> Result<Self, String> {
        if config.trim == crate::config::TrimMode::Off
            && (config.trim_max_age.is_some() || config.trim_max_len.is_some())
        {
            return Err(
                "trim_max_age and trim_max_len are ceilings of trimming: set trim = \"acked\" too"
                    .into(),
            );
        }
        let mut streams = Vec::new();
        for s in &config.streams {
            streams.extend(StreamPattern::parse(s)?);
        }
        Ok(Self {
            index,
            streams,
            table: TableTemplate::parse(&config.table)?,
            key: config.key.clone(),
            version: config.version,
            ignore_unknown_columns: config.ignore_unknown_columns,
            truncate: config.truncate,
            decimal_handling: config.decimal_handling,
            delete: config.delete,
            soft_delete_column: match (config.delete, &config.soft_delete_column) {
                (DeleteMode::Soft, None) => {
                    return Err(
                        "delete = \"soft\" needs soft_delete_column (e.g. \"deleted_at\")".into(),
                    );
                }
                (_, column) => column.clone(),
            },
            columns: Columns::compile(&config.columns)?,
            schema_evolution: config.schema_evolution,
        })
    }

    /// Does this mapping cover `stream`?
    pub fn covers(&self, stream: &str) -> bool {
        self.streams.iter().any(|p| match p {
            StreamPattern::Exact(name) => name == stream,
            StreamPattern::Glob(glob) => glob_match(glob.as_bytes(), stream.as_bytes()),
        })
    }

    /// For schema evolution: the event's declared columns under their column names
    /// (the column mapping applied) and the key columns; `None` without schemas.
    pub fn evolution(
        &self,
        event: &ChangeEvent,
    ) -> Option<(Vec<crate::table::DeclaredColumn>, Vec<String>)> {
        if self.schema_evolution != crate::config::SchemaEvolution::Basic {
            return None;
        }
        let declared = event.declared.columns();
        if declared.is_empty() {
            return None;
        }
        let columns = declared
            .iter()
            .filter_map(|d| {
                let name = self.columns.column_of(&d.name)?;
                Some(crate::table::DeclaredColumn {
                    name: name.to_string(),
                    ..d.clone()
                })
            })
            .collect();
        let key = self
            .key_names(event)
            .ok()?
            .into_iter()
            .map(str::to_string)
            .collect();
        Some((columns, key))
    }

    /// The key column names for this event: configured, or the message key's fields.
    fn key_names<'a>(&'a self, event: &'a ChangeEvent) -> Result<Vec<&'a str>, MapError> {
        if let Some(key) = &self.key {
            return Ok(key.iter().map(String::as_str).collect());
        }
        match &event.key {
            Some(key) if !key.0.is_empty() => Ok(key
                .0
                .iter()
                .map(|f| self.columns.renamed(&f.name))
                .collect()),
            _ => Err(MapError::event(
                "the event has a null message key (a source table without a primary key): \
                 set mapping.key to the columns that identify a row",
            )),
        }
    }

    /// The version scheme of this event: the configured one; with `"auto"`, `source.lsn`
    /// for PostgreSQL and the entry ID for anything else. Other connectors' positions
    /// are opt-in: versions of different schemes do not compare, so changing the scheme
    /// of a table that has rows needs its versions cleared (docs/TYPES.md).
    fn scheme(&self, event: &ChangeEvent) -> VersionSource {
        match self.version {
            VersionSource::Auto => match event.source.connector.as_deref() {
                Some("postgresql") => VersionSource::SourceLsn,
                Some(_) => VersionSource::EntryId,
                // A flattened event (ExtractNewRecordState) names no connector: its
                // __lsn, when present, is the PostgreSQL connector's.
                None if event.source.lsn.is_some() => VersionSource::SourceLsn,
                None => VersionSource::EntryId,
            },
            other => other,
        }
    }

    /// Whether this event's version is the stream entry ID (not a source position).
    fn versions_by_entry_id(&self, event: &ChangeEvent) -> bool {
        self.scheme(event) == VersionSource::EntryId
    }

    fn version(&self, event: &ChangeEvent, id: EntryId, op: u8) -> Result<Version, MapError> {
        let scheme = self.scheme(event);
        if scheme == VersionSource::EntryId {
            return Ok(Version::from_entry_id(id, op));
        }
        position_parts(scheme, &event.source)
            .map(|parts| Version::from_parts(&parts, op))
            .map_err(|missing| {
                MapError::event(format!(
                    "the event has no usable source.{missing} for mapping.version {scheme:?}: \
                     set mapping.version to the connector's position (see docs/TYPES.md) or \
                     \"entry_id\" if this source has none"
                ))
            })
    }
}

/// The numbers whose order is the order of changes, for each position scheme; `Err`
/// names the missing or malformed `source` field.
fn position_parts(
    scheme: VersionSource,
    s: &crate::decode::Source,
) -> Result<Vec<u64>, &'static str> {
    let num = |name: &'static str| -> Result<u64, &'static str> {
        s.position(name).and_then(|v| v.parse().ok()).ok_or(name)
    };
    // SQL Server LSNs: "0000003a:00002f50:0002" (8:8:4 hex digits) → two numbers that
    // order like it. A snapshot row has no change_lsn: lowest.
    let mssql = |name: &'static str, required: bool| -> Result<[u64; 2], &'static str> {
        let Some(text) = s.position(name) else {
            return if required { Err(name) } else { Ok([0, 0]) };
        };
        let parts: Vec<&str> = text.split(':').collect();
        let widths_ok =
            parts.len() == 3 && parts[0].len() == 8 && parts[1].len() == 8 && parts[2].len() == 4;
        let nums: Vec<u64> = parts
            .iter()
            .map(|p| u64::from_str_radix(p, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| name)?;
        match nums.as_slice() {
            [a, b, c] if widths_ok => Ok([(a << 32) | b, *c]),
            _ => Err(name),
        }
    };
    Ok(match scheme {
        VersionSource::SourceLsn | VersionSource::Auto | VersionSource::EntryId => {
            vec![s.lsn.ok_or("lsn")?]
        }
        VersionSource::SourceSequence => {
            // `["<last commit lsn>","<lsn>"]`, either may be null (lowest).
            let text = s.position("sequence").ok_or("sequence")?;
            let parsed: Vec<Option<String>> = serde_json::from_str(text).map_err(|_| "sequence")?;
            let n = |i: usize| {
                parsed
                    .get(i)
                    .cloned()
                    .flatten()
                    .and_then(|v| v.parse().ok())
            };
            vec![n(0).unwrap_or(0), n(1).or(s.lsn).unwrap_or(0)]
        }
        VersionSource::MysqlBinlog => {
            let file = s.position("file").ok_or("file")?;
            let number = file
                .rsplit('.')
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or("file")?;
            vec![number, num("pos")?, num("row").unwrap_or(0)]
        }
        VersionSource::SqlServerLsn => {
            let commit = mssql("commit_lsn", true)?;
            let change = mssql("change_lsn", false)?;
            vec![
                commit[0],
                commit[1],
                change[0],
                change[1],
                num("event_serial_no").unwrap_or(0),
            ]
        }
        VersionSource::OracleScn => {
            let scn = num("scn")?;
            vec![num("commit_scn").unwrap_or(scn), scn]
        }
        VersionSource::MongodbOrd => {
            let ts = s.ts_ms.and_then(|t| u64::try_from(t).ok()).ok_or("ts_ms")?;
            vec![ts, num("ord")?]
        }
    })
}

/// Redis `stringmatchlen` semantics for `*`, `?`, `[...]` (with `^` and ranges) and `\`.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_match(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob_match(rest, &text[1..]),
        Some((b'[', rest)) => {
            let Some((&c, text_rest)) = text.split_first() else {
                return false;
            };
            let Some(close) = rest.iter().position(|&b| b == b']') else {
                return false;
            };
            let (class, after) = (&rest[..close], &rest[close + 1..]);
            let (negate, class) = match class.split_first() {
                Some((b'^', tail)) => (true, tail),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    let (lo, hi) = (class[i].min(class[i + 2]), class[i].max(class[i + 2]));
                    hit |= (lo..=hi).contains(&c);
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob_match(after, text_rest)
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            text.first() == Some(&rest[0]) && glob_match(&rest[1..], &text[1..])
        }
        Some((&p, rest)) => text.first() == Some(&p) && glob_match(rest, &text[1..]),
    }
}

/// What to do with one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOp {
    /// Insert or update these columns (indices into the table's columns, ascending);
    /// columns not listed keep their value (or get their default on insert).
    Upsert {
        columns: Vec<usize>,
        values: Vec<Option<String>>,
    },
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
    let key_names = mapping.key_names(event)?;
    let key_columns = table.conflict_key(&key_names)?;
    let op_byte = if event.op == Op::Delete {
        Version::OP_DELETE
    } else {
        Version::OP_UPSERT
    };
    let version = mapping.version(event, id, op_byte)?;
    let op = match (event.op, mapping.delete) {
        (Op::Create | Op::Update | Op::Read, _) => {
            let mut pairs = row_pairs(
                mapping,
                event,
                id,
                table,
                &key_columns,
                &key_names,
                event.after.as_ref(),
            )?;
            if let Some(col) = soft_column(mapping, table)? {
                // A row created (again) is not deleted: clear the flag.
                if !pairs.iter().any(|(c, _)| *c == col) {
                    pairs.push((col, None));
                }
            }
            pairs_op(table, &key_columns, pairs)?
        }
        (Op::Delete, DeleteMode::Hard) => {
            delete_op(mapping, event, table, &key_columns, &key_names)?
        }
        (Op::Delete, DeleteMode::Soft) => {
            // With REPLICA IDENTITY FULL, `before` is the row as it was deleted: write it
            // (so the result does not depend on arrival order). With the default
            // identity it holds only the key (nulls elsewhere): then only the key and
            // the flag, and the other columns keep what the replica has.
            let full = event.before.as_ref().is_some_and(|b| {
                b.0.iter().any(|f| {
                    !f.value.is_null() && !key_names.contains(&mapping.columns.renamed(&f.name))
                })
            });
            let image = if full { event.before.as_ref() } else { None };
            let mut pairs = row_pairs(mapping, event, id, table, &key_columns, &key_names, image)?;
            if let Some(col) = soft_column(mapping, table)? {
                let ms = event
                    .source
                    .ts_ms
                    .unwrap_or_else(|| i64::try_from(id.ms).unwrap_or(i64::MAX));
                let text = columns::time_text(ms, &table.columns[col].ty.name)
                    .map_err(|e| MapError::table(&table.name, e))?;
                pairs.retain(|(c, _)| *c != col);
                pairs.push((col, Some(text)));
            }
            pairs_op(table, &key_columns, pairs)?
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

fn convert_field(
    mapping: &Mapping,
    table: &TableSchema,
    field: &Field,
    col: usize,
) -> Result<Option<String>, MapError> {
    let column = &table.columns[col];
    let target = convert::Target {
        ty: &column.ty,
        is_array: column.is_array,
        base64_decimals: mapping.decimal_handling == DecimalHandling::Precise,
    };
    convert::to_text(&field.value, field.logical.as_ref(), target)
        .map_err(|e| MapError::column(&table.name, &column.name, e))
}

/// The soft-delete column's index, with `delete = "soft"`.
fn soft_column(mapping: &Mapping, table: &TableSchema) -> Result<Option<usize>, MapError> {
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
) -> Result<Vec<(usize, Option<String>)>, MapError> {
    let fields = image.map_or(&[][..], |r| r.0.as_slice());
    let mut pairs: Vec<(usize, Option<String>)> = Vec::with_capacity(fields.len() + 2);
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
        pairs.push((col, convert_field(mapping, table, field, col)?));
    }
    // Key columns missing from the image (excluded by the source) come from the key.
    for (&col, name) in key_columns.iter().zip(key_names) {
        if !pairs.iter().any(|(c, _)| *c == col) {
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
            pairs.push((col, convert_field(mapping, table, field, col)?));
        }
    }
    pairs.extend(mapping.columns.extra(event, id, table)?);
    Ok(pairs)
}

/// An upsert of these (column, text) pairs; every key column must have a value.
fn pairs_op(
    table: &TableSchema,
    key_columns: &[usize],
    mut pairs: Vec<(usize, Option<String>)>,
) -> Result<RowOp, MapError> {
    pairs.sort_by_key(|(c, _)| *c);
    pairs.dedup_by_key(|(c, _)| *c);
    for &k in key_columns {
        if !pairs.iter().any(|(c, v)| *c == k && v.is_some()) {
            return Err(MapError::column(
                &table.name,
                &table.columns[k].name,
                "the key column is null",
            ));
        }
    }
    let (columns, values) = pairs.into_iter().unzip();
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
        let value = convert_field(mapping, table, field, col)?
            .ok_or_else(|| MapError::column(&table.name, name, "the key column is null"))?;
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
                    .and_then(|p| values[p].as_deref())
            })
            .collect(),
        RowOp::Delete { key_values } => key_values.iter().map(|v| Some(v.as_str())).collect(),
    };
    serde_json::to_string(&values).map_err(|e| MapError::event(e.to_string()))
}

#[cfg(test)]
mod tests;
