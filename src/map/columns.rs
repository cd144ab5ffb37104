//! Column mapping of a mapping (`[mapping.columns]`): which event fields are written,
//! under which column names, plus columns filled from constants or event attributes.

use std::collections::HashSet;

use crate::config::ColumnsConfig;
use crate::decode::{ChangeEvent, Field, Row};
use crate::entry::EntryId;

use super::{MapError, TableSchema};

/// An attribute of the event (not of the row) that a column can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAttr {
    SourceTsMs,
    SourceLsn,
    SourceDb,
    SourceSchema,
    SourceTable,
    Op,
    EntryId,
}

impl EventAttr {
    fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "source.ts_ms" => Self::SourceTsMs,
            "source.lsn" => Self::SourceLsn,
            "source.db" => Self::SourceDb,
            "source.schema" => Self::SourceSchema,
            "source.table" => Self::SourceTable,
            "op" => Self::Op,
            "entry_id" => Self::EntryId,
            other => {
                return Err(format!(
                    "columns.from_event: unknown attribute `{other}` (use source.ts_ms, \
                     source.lsn, source.db, source.schema, source.table, op or entry_id)"
                ));
            }
        })
    }
}

/// A compiled [`ColumnsConfig`].
#[derive(Debug, Clone, Default)]
pub struct Columns {
    // Looked up for every field of every event: foldhash, not std's SipHash.
    include: Option<foldhash::HashSet<String>>,
    exclude: foldhash::HashSet<String>,
    rename: foldhash::HashMap<String, String>,
    fixed: Vec<(String, String)>,
    from_event: Vec<(String, EventAttr)>,
}

impl Columns {
    pub fn compile(config: &ColumnsConfig) -> Result<Self, String> {
        let from_event = config
            .from_event
            .iter()
            .map(|(col, attr)| EventAttr::parse(attr).map(|a| (col.clone(), a)))
            .collect::<Result<Vec<_>, _>>()?;
        for col in config.fixed.keys() {
            if config.from_event.contains_key(col) {
                return Err(format!(
                    "column `{col}` is in both columns.fixed and columns.from_event"
                ));
            }
        }
        let mut targets = HashSet::new();
        for (field, col) in &config.rename {
            if !targets.insert(col) {
                return Err(format!(
                    "columns.rename sends two fields to column `{col}` (one of them `{field}`)"
                ));
            }
            if config.fixed.contains_key(col) || config.from_event.contains_key(col) {
                return Err(format!(
                    "columns.rename sends `{field}` to column `{col}`, which columns.fixed or \
                     columns.from_event already fills"
                ));
            }
        }
        Ok(Self {
            include: config.include.as_ref().map(|i| i.iter().cloned().collect()),
            exclude: config.exclude.iter().cloned().collect(),
            rename: config.rename.clone().into_iter().collect(),
            fixed: config
                .fixed
                .iter()
                .map(|(c, v)| (c.clone(), v.clone()))
                .collect(),
            from_event,
        })
    }

    /// The column an event field goes to; `None` when the field is not written.
    pub fn column_of<'a>(&'a self, field: &'a str) -> Option<&'a str> {
        if self.exclude.contains(field) || self.include.as_ref().is_some_and(|i| !i.contains(field))
        {
            return None;
        }
        Some(self.renamed(field))
    }

    /// The column name of an event field (renamed, whether written or not).
    pub fn renamed<'a>(&'a self, field: &'a str) -> &'a str {
        self.rename.get(field).map_or(field, String::as_str)
    }

    /// The event field that identifies `column` in `row` (a key), if it is not null.
    pub fn field_for<'a, 'e>(
        &self,
        row: Option<&'a Row<'e>>,
        column: &str,
    ) -> Option<&'a Field<'e>> {
        row?.0
            .iter()
            .find(|f| self.renamed(&f.name) == column && !f.value.is_null())
    }

    /// Whether a column is filled by `fixed` or `from_event` (not by event fields).
    pub fn is_extra(&self, column: &str) -> bool {
        self.fixed.iter().any(|(c, _)| c == column)
            || self.from_event.iter().any(|(c, _)| c == column)
    }

    /// The `fixed` and `from_event` columns of an upsert, as (column, text).
    pub fn extra(
        &self,
        event: &ChangeEvent,
        id: EntryId,
        table: &TableSchema,
    ) -> Result<Vec<(usize, Option<String>)>, MapError> {
        let mut out = Vec::with_capacity(self.fixed.len() + self.from_event.len());
        let index = |col: &str| extra_column(table, col);
        for (col, value) in &self.fixed {
            out.push((index(col)?, Some(value.clone())));
        }
        for (col, attr) in &self.from_event {
            let c = index(col)?;
            let text = match attr {
                EventAttr::SourceTsMs => match event.source.ts_ms {
                    Some(ms) => Some(
                        time_text(ms, &table.columns[c].ty.name)
                            .map_err(|e| MapError::column(&table.name, col, e))?,
                    ),
                    None => None,
                },
                EventAttr::SourceLsn => event.source.lsn.map(|l| l.to_string()),
                EventAttr::SourceDb => event.source.db.clone(),
                EventAttr::SourceSchema => event.source.schema.clone(),
                EventAttr::SourceTable => event.source.table.clone(),
                EventAttr::Op => Some(event.op.letter().to_string()),
                EventAttr::EntryId => Some(id.to_string()),
            };
            out.push((c, text));
        }
        Ok(out)
    }

    /// Checks that `table` has every `fixed` and `from_event` column.
    pub fn check(&self, table: &TableSchema) -> Result<(), MapError> {
        let names = self.fixed.iter().map(|(c, _)| c);
        for col in names.chain(self.from_event.iter().map(|(c, _)| c)) {
            extra_column(table, col)?;
        }
        Ok(())
    }
}

/// The index of a `fixed` or `from_event` column: the table lacking it is a table-wide
/// problem.
fn extra_column(table: &TableSchema, col: &str) -> Result<usize, MapError> {
    table.column(col).ok_or_else(|| {
        MapError::table(
            &table.name,
            format!("columns mapping names column `{col}`, which the table does not have"),
        )
    })
}

/// A time in milliseconds since the epoch as text for a column of type `type_name`:
/// timestamps and dates as ISO 8601 (UTC), numbers as the milliseconds, a boolean as
/// `true` (for soft-delete flags).
pub fn time_text(ms: i64, type_name: &str) -> Result<String, String> {
    let at = || {
        chrono::DateTime::from_timestamp_millis(ms)
            .ok_or_else(|| format!("{ms} ms is not a representable time"))
    };
    Ok(match type_name {
        "timestamptz" | "timestamp" => at()?.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "date" => at()?.format("%Y-%m-%d").to_string(),
        "bool" => "true".into(),
        "int8" | "numeric" | "text" | "varchar" => ms.to_string(),
        other => {
            return Err(format!(
                "a time cannot be written to a column of type {other}: use timestamptz, \
                 timestamp, date, bool, bigint or text"
            ));
        }
    })
}
