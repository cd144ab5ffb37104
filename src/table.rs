//! Target-table names (a leaf, shared by config and the steps): `schema.table`
//! names, SQL identifier quoting, and the grammar of a mapping's `table` template
//! (its placeholders are filled per event by `map`), and a column as an event's
//! schema declares it.

use std::fmt;

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

/// A column as an event's schema declares it: what schema evolution creates or adds
/// (decode derives it, map renames it, write creates it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredColumn {
    pub name: String,
    /// The PostgreSQL type for it (decode's `sql_type`).
    pub sql_type: String,
    pub optional: bool,
}

/// The values a template's placeholders take from an event's `source` block.
#[derive(Debug, Clone, Copy, Default)]
pub struct TemplateSource<'a> {
    pub db: Option<&'a str>,
    pub schema: Option<&'a str>,
    pub table: Option<&'a str>,
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

    /// The table for one event, from its `source` fields and the stream it came
    /// from; the error says what is wrong with the event.
    pub fn resolve(&self, source: &TemplateSource<'_>, stream: &str) -> Result<TableName, String> {
        let mut out = String::new();
        for part in &self.parts {
            let value = match part {
                Part::Literal(text) => Some(text.as_str()),
                Part::SourceDb => source.db,
                Part::SourceSchema => source.schema,
                Part::SourceTable => source.table,
                Part::Stream => Some(stream),
            };
            let Some(value) = value else {
                return Err(format!(
                    "the table template needs a `source` field the event does not have ({part:?})"
                ));
            };
            // A value from the event cannot move the name into another schema.
            if !matches!(part, Part::Literal(_) | Part::Stream) && value.contains(['.', '\0']) {
                return Err(format!(
                    "the table template's {part:?} is {value:?}: a '.' (or NUL) from an event \
                     could name a table outside the mapping"
                ));
            }
            out.push_str(value);
        }
        let name = TableName::parse(&out)?;
        if self.parts.len() > 1 && RESERVED_SCHEMAS.contains(&name.schema.as_str()) {
            return Err(format!(
                "the table template resolves to {name}: redsink never writes to the schema {}",
                name.schema
            ));
        }
        Ok(name)
    }
}

/// Schemas a templated table name may never resolve into.
const RESERVED_SCHEMAS: [&str; 4] = ["pg_catalog", "information_schema", "pg_toast", "redsink"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        let t = TableName::parse("My.Ta\"ble").expect("valid");
        assert_eq!(t.quoted(), "\"My\".\"Ta\"\"ble\"");
        assert_eq!(TableName::parse("orders").expect("valid").schema, "public");
        assert!(TableName::parse(".x").is_err());
    }
}
