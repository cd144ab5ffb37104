//! The catalog facts mapping needs, and a table template resolved for one event.

use super::MapError;
use crate::decode::ChangeEvent;
use crate::table::{TableName, TableTemplate, TemplateSource};

/// The table of one event: the template's placeholders filled from its `source`.
pub fn resolve_table(
    template: &TableTemplate,
    event: &ChangeEvent,
    stream: &str,
) -> Result<TableName, MapError> {
    let source = TemplateSource {
        db: event.source.db.as_deref(),
        schema: event.source.schema.as_deref(),
        table: event.source.table.as_deref(),
    };
    template.resolve(&source, stream).map_err(MapError::event)
}

/// One column of a target table, as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type(atttypid, -1)`: the type without its modifier, what values are
    /// cast to. The modifier (`varchar(12)`, `numeric(10,2)`) is then enforced by the
    /// assignment to the column, which rejects a value that does not fit instead of
    /// truncating it as an explicit cast to `varchar(12)` would.
    pub sql_type: String,
    pub ty: ColumnType,
    pub is_array: bool,
}

/// The base (or array element) type of a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnType {
    /// `pg_type.typname`: `int4`, `numeric`, `timestamptz`, …
    pub name: String,
    /// `numeric(p,s)`: `s`.
    /// Negative for `numeric(p,-s)` (Postgres 15+): rounded to tens, hundreds, …
    pub scale: Option<i32>,
    /// Fractional second digits of `time`/`timestamp(p)`; the length of `bit(n)` and
    /// `varbit(n)`, which restores the leading zeros Debezium leaves out.
    pub precision: Option<u32>,
}

/// What mapping needs to know about a target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub name: TableName,
    pub columns: Vec<Column>,
    /// Column indices of the primary key and each unique index without predicate.
    pub unique_keys: Vec<Vec<usize>>,
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The column indices of `names`, when they form a unique key of the table.
    pub fn conflict_key(&self, names: &[&str]) -> Result<Vec<usize>, MapError> {
        let mut idx = Vec::with_capacity(names.len());
        for n in names {
            idx.push(self.column(n).ok_or_else(|| {
                MapError::table(
                    &self.name,
                    format!(
                        "key column `{n}` does not exist in the table: add it or set mapping.key"
                    ),
                )
            })?);
        }
        let matches = self.unique_keys.iter().any(|k| same_columns(k, &idx));
        if !matches {
            let cols = names.join(", ");
            return Err(MapError::table(
                &self.name,
                format!(
                    "no primary key or unique index on ({cols}): add one, for example \
                     ALTER TABLE {} ADD PRIMARY KEY ({cols}), or set mapping.key",
                    self.name
                ),
            ));
        }
        Ok(idx)
    }
}

/// Whether two lists of column indices hold the same columns (as multisets), without
/// allocating for keys of up to 8 columns (this runs for every event).
fn same_columns(a: &[usize], b: &[usize]) -> bool {
    const SMALL: usize = 8;
    if a.len() != b.len() {
        return false;
    }
    if a.len() <= SMALL {
        let (mut x, mut y) = ([0; SMALL], [0; SMALL]);
        x[..a.len()].copy_from_slice(a);
        y[..b.len()].copy_from_slice(b);
        x[..a.len()].sort_unstable();
        y[..b.len()].sort_unstable();
        return x[..a.len()] == y[..b.len()];
    }
    let (mut x, mut y) = (a.to_vec(), b.to_vec());
    x.sort_unstable();
    y.sort_unstable();
    x == y
}

#[cfg(test)]
impl TableSchema {
    /// A table of `text` columns keyed by the first one, for the tests of the steps
    /// that take a table (batch, write).
    pub(crate) fn of_text(name: &str, columns: &[&str]) -> std::sync::Arc<Self> {
        let col = |n: &str| Column {
            name: n.into(),
            sql_type: "text".into(),
            ty: ColumnType {
                name: "text".into(),
                scale: None,
                precision: None,
            },
            is_array: false,
        };
        std::sync::Arc::new(Self {
            name: TableName::parse(name).expect("a valid test table name"),
            columns: columns.iter().map(|c| col(c)).collect(),
            unique_keys: vec![vec![0]],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{ChangeEvent, Op, Source};

    #[test]
    fn resolves_templates() {
        let t = TableTemplate::parse("replica.${source.table}").expect("valid");
        let event = ChangeEvent {
            op: Op::Create,
            key: None,
            before: None,
            after: None,
            source: Source {
                table: Some("orders".into()),
                ..Source::default()
            },
            declared: Default::default(),
            bare: false,
            transaction: None,
        };
        assert_eq!(
            resolve_table(&t, &event, "s")
                .expect("resolves")
                .to_string(),
            "replica.orders"
        );
        assert!(t.is_templated());
        assert!(
            !TableTemplate::parse("public.orders")
                .expect("valid")
                .is_templated()
        );
        let t = TableTemplate::parse("${source.schema}.x").expect("valid");
        assert!(resolve_table(&t, &event, "s").is_err());
        assert!(TableTemplate::parse("a.${nope}").is_err());
        assert!(TableTemplate::parse("a.${source.table").is_err());
        assert!(TableTemplate::parse("").is_err());
    }

    #[test]
    fn events_cannot_steer_a_template_out_of_its_mapping() {
        let event = |schema: &str, table: &str| ChangeEvent {
            op: Op::Create,
            key: None,
            before: None,
            after: None,
            source: Source {
                schema: Some(schema.into()),
                table: Some(table.into()),
                ..Source::default()
            },
            declared: Default::default(),
            bare: false,
            transaction: None,
        };
        let t = TableTemplate::parse("${source.table}").expect("valid");
        let err = resolve_table(&t, &event("public", "pg_catalog.pg_authid"), "s");
        assert!(err.is_err_and(|e| e.to_string().contains("outside the mapping")));
        let t = TableTemplate::parse("${source.schema}.${source.table}").expect("valid");
        for schema in ["pg_catalog", "redsink", "information_schema"] {
            let err = resolve_table(&t, &event(schema, "t"), "s");
            assert!(
                err.is_err_and(|e| e.to_string().contains("never writes")),
                "{schema}"
            );
        }
        assert!(resolve_table(&t, &event("inventory", "t"), "s").is_ok());
    }

    #[test]
    fn key_columns_match_in_any_order_and_as_many_times() {
        assert!(same_columns(&[2, 0], &[0, 2]));
        assert!(!same_columns(&[0, 0, 1], &[0, 1, 1]));
        assert!(!same_columns(&[0], &[0, 1]));
        let long: Vec<usize> = (0..12).collect();
        let mut rev = long.clone();
        rev.reverse();
        assert!(same_columns(&long, &rev));
        rev[0] = 0;
        assert!(!same_columns(&long, &rev));
    }
}
