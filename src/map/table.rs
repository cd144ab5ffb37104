//! Target tables: names, name templates and the catalog facts mapping needs.

use std::fmt;

use super::MapError;
use crate::decode::ChangeEvent;

/// `schema.table`, as the catalog spells it (no case folding).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// `schema.table`, or `table` in `public`. A name with more dots keeps the rest in
    /// the table part (`a.b.c` → schema `a`, table `b.c`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (schema, name) = match text.split_once('.') {
            Some((s, n)) => (s, n),
            None => ("public", text),
        };
        if schema.is_empty() || name.is_empty() {
            return Err(format!("`{text}` is not a table name: write schema.table"));
        }
        Ok(Self {
            schema: schema.to_string(),
            name: name.to_string(),
        })
    }

    /// The quoted SQL identifier `"schema"."table"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Quotes an SQL identifier: wrap in `"`, double any inner `"`. Used for every
/// identifier redsink puts into SQL (sqlx has no identifier quoting).
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A table name with `${…}` placeholders, resolved per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    SourceDb,
    SourceSchema,
    SourceTable,
    Stream,
}

impl TableTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let Some(end) = rest[start..].find('}') else {
                return Err(format!("`{text}` has an unclosed `${{`"));
            };
            let var = &rest[start + 2..start + end];
            parts.push(match var {
                "source.db" => Part::SourceDb,
                "source.schema" => Part::SourceSchema,
                "source.table" => Part::SourceTable,
                "stream" => Part::Stream,
                other => {
                    return Err(format!(
                        "unknown placeholder `${{{other}}}`: use ${{source.db}}, \
                         ${{source.schema}}, ${{source.table}} or ${{stream}}"
                    ));
                }
            });
            rest = &rest[start + end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        let template = Self { parts };
        if let Some(fixed) = template.fixed() {
            fixed?;
        }
        Ok(template)
    }

    /// Whether the name comes from the event (the template has placeholders).
    pub fn is_templated(&self) -> bool {
        self.parts.iter().any(|p| !matches!(p, Part::Literal(_)))
    }

    /// The table, when the template has no placeholders.
    pub fn fixed(&self) -> Option<Result<TableName, String>> {
        match self.parts.as_slice() {
            [] => Some(Err("the table name is empty".into())),
            [Part::Literal(text)] => Some(TableName::parse(text)),
            _ => None,
        }
    }

    /// The table for one event.
    pub fn resolve(&self, event: &ChangeEvent, stream: &str) -> Result<TableName, MapError> {
        let mut out = String::new();
        for part in &self.parts {
            let value = match part {
                Part::Literal(text) => Some(text.as_str()),
                Part::SourceDb => event.source.db.as_deref(),
                Part::SourceSchema => event.source.schema.as_deref(),
                Part::SourceTable => event.source.table.as_deref(),
                Part::Stream => Some(stream),
            };
            let Some(value) = value else {
                return Err(MapError::event(format!(
                    "the table template needs a `source` field the event does not have ({part:?})"
                )));
            };
            // A value from the event cannot move the name into another schema.
            if !matches!(part, Part::Literal(_) | Part::Stream) && value.contains(['.', '\0']) {
                return Err(MapError::event(format!(
                    "the table template's {part:?} is {value:?}: a '.' (or NUL) from an event \
                     could name a table outside the mapping"
                )));
            }
            out.push_str(value);
        }
        let name = TableName::parse(&out).map_err(MapError::event)?;
        if self.parts.len() > 1 && RESERVED_SCHEMAS.contains(&name.schema.as_str()) {
            return Err(MapError::event(format!(
                "the table template resolves to {name}: redsink never writes to the schema {}",
                name.schema
            )));
        }
        Ok(name)
    }
}

/// Schemas a templated table name may never resolve into.
const RESERVED_SCHEMAS: [&str; 4] = ["pg_catalog", "information_schema", "pg_toast", "redsink"];

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
    /// Fractional second digits of `time`/`timestamp(p)`.
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
        let mut wanted = idx.clone();
        wanted.sort_unstable();
        let matches = self.unique_keys.iter().any(|k| {
            let mut k = k.clone();
            k.sort_unstable();
            k == wanted
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{ChangeEvent, Op, Source};

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        let t = TableName::parse("My.Ta\"ble").expect("valid");
        assert_eq!(t.quoted(), "\"My\".\"Ta\"\"ble\"");
        assert_eq!(TableName::parse("orders").expect("valid").schema, "public");
        assert!(TableName::parse(".x").is_err());
    }

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
        };
        assert_eq!(
            t.resolve(&event, "s").expect("resolves").to_string(),
            "replica.orders"
        );
        assert!(t.is_templated());
        assert!(
            !TableTemplate::parse("public.orders")
                .expect("valid")
                .is_templated()
        );
        let t = TableTemplate::parse("${source.schema}.x").expect("valid");
        assert!(t.resolve(&event, "s").is_err());
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
        };
        let t = TableTemplate::parse("${source.table}").expect("valid");
        let err = t.resolve(&event("public", "pg_catalog.pg_authid"), "s");
        assert!(err.is_err_and(|e| e.to_string().contains("outside the mapping")));
        let t = TableTemplate::parse("${source.schema}.${source.table}").expect("valid");
        for schema in ["pg_catalog", "redsink", "information_schema"] {
            let err = t.resolve(&event(schema, "t"), "s");
            assert!(
                err.is_err_and(|e| e.to_string().contains("never writes")),
                "{schema}"
            );
        }
        assert!(t.resolve(&event("inventory", "t"), "s").is_ok());
    }
}
