//! A configured `[[mapping]]` → a compiled [`Mapping`]: its stream patterns, table
//! template, key, version scheme, delete and truncate modes and column mapping; and what
//! it says of one event (the key column names, the declared columns for schema
//! evolution). Pure. A config the mapping cannot compile is an error string for config
//! validation; an event without a usable key is a [`MapError::Event`].

use crate::config::{
    DecimalHandling, DeleteMode, MappingConfig, SchemaEvolution, StreamPattern, TrimMode,
    TruncateMode, VersionSource,
};
use crate::decode::ChangeEvent;
use crate::table::{DeclaredColumn, TableTemplate};

use super::{Columns, MapError, TableSchema};

/// What schema evolution creates for an event: its declared columns and its key columns.
pub type Evolution = (Vec<DeclaredColumn>, Vec<String>);

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
    pub schema_evolution: SchemaEvolution,
}

impl Mapping {
    /// Compiles a validated [`MappingConfig`].
    pub fn compile(index: usize, config: &MappingConfig) -> Result<Self, String> {
        if config.trim == TrimMode::Off
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

    /// For schema evolution: the event's declared columns under their column names
    /// (the column mapping applied) and the key columns; `None` without schemas. An
    /// error: a declared column has no PostgreSQL type (this event's problem).
    pub fn evolution(&self, event: &ChangeEvent) -> Result<Option<Evolution>, MapError> {
        if self.schema_evolution != SchemaEvolution::Basic {
            return Ok(None);
        }
        // Only the fields that become columns: an excluded one needs no type.
        let declared = event
            .declared
            .columns(|field| self.columns.column_of(field).is_some())
            .map_err(MapError::Event)?;
        if declared.is_empty() {
            return Ok(None);
        }
        let columns = declared
            .iter()
            .filter_map(|d| {
                let name = self.columns.column_of(&d.name)?;
                Some(DeclaredColumn {
                    name: name.to_string(),
                    ..d.clone()
                })
            })
            .collect();
        // Without key columns no table can be created; map says why (or it exists).
        let Ok(key) = self.key_names(event) else {
            return Ok(None);
        };
        let key = key.into_iter().map(str::to_string).collect();
        Ok(Some((columns, key)))
    }

    /// What this mapping's config says of a fixed target table, checked against its
    /// catalog facts before anything is read: the configured `key` is its primary key or
    /// a unique index, and the soft-delete, `fixed` and `from_event` columns exist. A
    /// failure is a config problem, fatal at start ([`MapError::Table`], with the fix).
    pub fn check_table(&self, table: &TableSchema) -> Result<(), MapError> {
        if let Some(key) = &self.key {
            let names: Vec<&str> = key.iter().map(String::as_str).collect();
            table.conflict_key(&names)?;
        }
        if let Some(col) = super::event::soft_column(self, table)? {
            // Its type must take a time (any time will do to find out).
            super::columns::time_text(0, &table.columns[col].ty.name)
                .map_err(|e| MapError::table(&table.name, e))?;
        }
        self.columns.check(table)
    }

    /// The key column names for this event: configured, or the message key's fields.
    pub(super) fn key_names<'a>(
        &'a self,
        event: &'a ChangeEvent,
    ) -> Result<Vec<&'a str>, MapError> {
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
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{ID, event, mapping, table};
    use crate::decode::Op;
    use crate::map::{MapError, map_event};

    #[test]
    fn a_message_key_that_fits_no_unique_key_is_the_events_problem() {
        let keyed_by_name = event(Op::Create, Some(json!({"name": "a"})), None, None);
        let err = map_event(&mapping(""), &keyed_by_name, ID, &table()).expect_err("not unique");
        assert!(
            matches!(&err, MapError::Event(r) if r.contains("public.items") && r.contains("(name)")),
            "{err}"
        );
        // The same key configured: the table's (the config's) problem.
        let err = map_event(&mapping("key = [\"name\"]"), &keyed_by_name, ID, &table());
        assert!(matches!(err, Err(MapError::Table { .. })), "{err:?}");
    }

    #[test]
    fn the_config_is_checked_against_a_fixed_table() {
        assert!(mapping("key = [\"id\"]").check_table(&table()).is_ok());
        let named = |extra: &str, what: &str| {
            mapping(extra)
                .check_table(&table())
                .is_err_and(|e| e.to_string().contains(what))
        };
        assert!(named(
            "key = [\"name\"]",
            "no primary key or unique index on (name)"
        ));
        assert!(named(
            "delete = \"soft\"\nsoft_delete_column = \"gone\"",
            "`gone`"
        ));
        assert!(named("columns.fixed = { origin = \"x\" }", "`origin`"));
    }
}
