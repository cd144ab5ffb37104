//! Map: [`ChangeEvent`](crate::decode::ChangeEvent) + its table's [`TableSchema`] → [`RowChange`].
//! Input: a decoded event and the catalog facts of the table it routes to; output: the
//! row's key, version and column values as Postgres text.
//! Pure: no I/O (the catalog is looked up by the pipeline and passed in).
//! Errors: [`MapError`]; `Event` errors dead-letter the entry, `Table` errors stop
//! the pipeline (a table-wide problem would otherwise dead-letter every event) unless
//! the event chose the table (a template) — what derives from an event's own content
//! (its key fields, its table name) is that event's dead letter.
//!
//! The version decides which change of a row wins (see [`Version`]).
//!
//! Here: the error type; `mapping` compiles a `[[mapping]]`, `event` maps one event
//! ([`map_event`], [`map_truncate`]), `version` orders changes, `columns` applies the
//! column mapping, `table` holds the catalog facts, [`convert`] turns one value into
//! Postgres text.

mod columns;
pub mod convert;
mod event;
mod mapping;
mod table;
mod texts;
mod version;

use std::fmt;

use crate::table::TableName;

pub use columns::Columns;
pub use event::{RowChange, RowOp, Truncate, map_event, map_truncate};
pub use mapping::Mapping;
pub use table::{Column, ColumnType, TableSchema, resolve_table};
pub use texts::Texts;
pub use version::Version;

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

/// Where the key columns of an event come from: the event's message key makes a key
/// that does not fit the table that event's problem, not the table's.
const FROM_MESSAGE_KEY: &str = "the key columns are the message key's fields";

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
    /// The same problem, caused by the event's message key (its fields name the key
    /// columns): only this event is affected.
    fn of_message_key(self) -> Self {
        match self {
            Self::Table { table, reason } => {
                Self::Event(format!("table {table}: {reason} ({FROM_MESSAGE_KEY})"))
            }
            other => other,
        }
    }
    fn column(table: &TableName, column: &str, reason: impl fmt::Display) -> Self {
        Self::Event(format!("table {table} column {column}: {reason}"))
    }
}

#[cfg(test)]
mod tests;
