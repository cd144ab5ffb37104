//! The catalog: what the target tables look like, read from Postgres' catalog and
//! cached per table ([`Catalog`]), the per-row version column redsink keeps in each of
//! them, and schema evolution (creating a table or adding the columns it lacks).
//! I/O: catalog queries and DDL on the pool; no transaction of its own.
//! Errors: [`WriteError`]: `TableMissing` and `VersionColumn` name the fix, `Evolve`
//! a table that cannot be created; the rest as the statement's SQLSTATE says.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};

use super::WriteError;
use crate::map::{Column, ColumnType, TableSchema};
use crate::table::{DeclaredColumn, TableName, quote_ident};

/// The column redsink adds to each target table: the version of the change the row holds.
pub const VERSION_COLUMN: &str = "_redsink_version";

/// A table's oid, its columns (a JSON array of `[name, SQL type, type name, is array,
/// typmod]`) and its unique keys (a JSON array of column name arrays, the primary key
/// first), in one statement: a template mapping over 200 tables reads 200 catalogs as
/// its first events arrive, and three statements each took 3× as long.
const CATALOG_SQL: &str = "
SELECT r.oid::int8,
  (SELECT coalesce(json_agg(json_build_array(
            a.attname::text,
            -- The type without its modifier; bit without one would mean bit(1), so varbit.
            CASE WHEN coalesce(et.typname, t.typname) = 'bit'
                 THEN 'bit varying' || CASE WHEN et.oid IS NOT NULL THEN '[]' ELSE '' END
                 ELSE format_type(a.atttypid, -1) END,
            coalesce(et.typname, t.typname)::text,
            et.oid IS NOT NULL,
            a.atttypmod) ORDER BY a.attnum), '[]')::text
   FROM pg_attribute a
   JOIN pg_type t ON t.oid = a.atttypid
   LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
   WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT coalesce(json_agg(u.names ORDER BY u.is_primary DESC, u.indexrelid), '[]')::text
   FROM (SELECT array_agg(a.attname::text ORDER BY k.ord) AS names,
                i.indisprimary AS is_primary, i.indexrelid
         FROM pg_index i
         CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = r.oid AND i.indisunique AND i.indpred IS NULL
           AND i.indexprs IS NULL
         GROUP BY i.indexrelid, i.indisprimary) u)
FROM (SELECT to_regclass($1)::oid AS oid) r";

/// A column as [`CATALOG_SQL`] gives it: (name, SQL type, type name, is array, typmod).
type ColumnRow = (String, String, String, bool, i32);

/// The catalog facts of each target table, read once and cached; schema evolution.
pub struct Catalog {
    pool: PgPool,
    /// Looked up for every event: foldhash, not std's SipHash.
    tables: foldhash::HashMap<TableName, Arc<TableSchema>>,
    /// When each table's catalog was last read again by [`Catalog::reload`].
    loaded_at: HashMap<TableName, Instant>,
}

/// The least time between two reloads of one table's catalog.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

impl Catalog {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            tables: foldhash::HashMap::default(),
            loaded_at: HashMap::new(),
        }
    }

    /// The catalog facts of a table, read once and cached.
    pub async fn table(&mut self, name: &TableName) -> Result<Arc<TableSchema>, WriteError> {
        if let Some(t) = self.tables.get(name) {
            return Ok(t.clone());
        }
        let schema = Arc::new(load(&self.pool, name).await?);
        self.tables.insert(name.clone(), schema.clone());
        Ok(schema)
    }

    /// Whether the catalog of `name` is cached (read already).
    pub fn knows(&self, name: &TableName) -> bool {
        self.tables.contains_key(name)
    }

    /// Reads a table's catalog facts again (a column may have been added), unless that
    /// was done less than `RELOAD_EVERY` (5 s) ago.
    pub async fn reload(&mut self, name: &TableName) -> Result<Arc<TableSchema>, WriteError> {
        let now = Instant::now();
        if let (Some(t), Some(at)) = (self.tables.get(name), self.loaded_at.get(name))
            && now.duration_since(*at) < RELOAD_EVERY
        {
            return Ok(t.clone());
        }
        self.tables.remove(name);
        let table = self.table(name).await?;
        self.loaded_at.insert(name.clone(), now);
        Ok(table)
    }

    /// Schema evolution (`basic`): creates `name` with `columns` and a primary key on
    /// `key` when it does not exist, else adds the columns it lacks (nullable). Never
    /// drops or alters anything. Forgets the cached catalog of the table.
    pub async fn evolve(
        &mut self,
        name: &TableName,
        columns: &[DeclaredColumn],
        key: &[String],
    ) -> Result<(), WriteError> {
        let statement = match load_with(&self.pool, name, false).await {
            Err(WriteError::TableMissing { .. }) => Some(create_table_sql(name, columns, key)?),
            Err(e) => return Err(e),
            Ok((schema, _)) => add_columns_sql(name, &schema, columns),
        };
        if let Some(sql) = statement {
            self.run_evolution(name, columns, sql).await?;
        }
        self.tables.remove(name);
        self.loaded_at.remove(name);
        Ok(())
    }

    /// Runs a schema evolution statement; an error is fine when the table has every
    /// column now.
    async fn run_evolution(
        &self,
        name: &TableName,
        columns: &[DeclaredColumn],
        sql: String,
    ) -> Result<(), WriteError> {
        let done = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&self.pool)
            .await;
        if let Err(e) = done {
            // Another instance may have created or extended it at the same moment
            // (a unique violation in the catalog): fine if it is there now.
            let now = load_with(&self.pool, name, false).await;
            let complete = now
                .is_ok_and(|(schema, _)| columns.iter().all(|c| schema.column(&c.name).is_some()));
            if !complete {
                return Err(WriteError::pg(format!("schema evolution: {sql}"))(e));
            }
        } else {
            tracing::info!(table = %name, statement = %sql, "schema evolution");
        }
        Ok(())
    }
}

/// `CREATE TABLE` with the declared columns (`NOT NULL` unless optional and not in the
/// key), the version column and the primary key; an error when the event's schema does
/// not declare every key column.
fn create_table_sql(
    name: &TableName,
    columns: &[DeclaredColumn],
    key: &[String],
) -> Result<String, WriteError> {
    if key.is_empty() || !key.iter().all(|k| columns.iter().any(|c| &c.name == k)) {
        return Err(WriteError::Evolve(format!(
            "cannot create table {name}: the event's schema does not declare its key columns {key:?}"
        )));
    }
    let mut defs: Vec<String> = columns
        .iter()
        .map(|c| {
            let null = if c.optional && !key.contains(&c.name) {
                ""
            } else {
                " NOT NULL"
            };
            format!("{} {}{null}", quote_ident(&c.name), c.sql_type)
        })
        .collect();
    defs.push(format!("{} bytea", quote_ident(VERSION_COLUMN)));
    let keys: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    defs.push(format!("PRIMARY KEY ({})", keys.join(", ")));
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        name.quoted(),
        defs.join(", ")
    ))
}

/// `ALTER TABLE … ADD COLUMN` for the declared columns the table lacks; `None` when it
/// has them all.
fn add_columns_sql(
    name: &TableName,
    schema: &TableSchema,
    columns: &[DeclaredColumn],
) -> Option<String> {
    let missing: Vec<String> = columns
        .iter()
        .filter(|c| schema.column(&c.name).is_none())
        .map(|c| {
            format!(
                "ADD COLUMN IF NOT EXISTS {} {}",
                quote_ident(&c.name),
                c.sql_type
            )
        })
        .collect();
    (!missing.is_empty()).then(|| format!("ALTER TABLE {} {}", name.quoted(), missing.join(", ")))
}

/// A table's catalog facts as `redsink check` sees them, without changing anything:
/// the schema (minus the version column) and whether the version column is there.
pub async fn inspect_table(
    pool: &PgPool,
    name: &TableName,
) -> Result<(TableSchema, bool), WriteError> {
    load_with(pool, name, false).await
}

/// Reads a table's columns and unique keys, adding the version column when it is missing.
async fn load(pool: &PgPool, name: &TableName) -> Result<TableSchema, WriteError> {
    load_with(pool, name, true).await.map(|(schema, _)| schema)
}

/// [`load`], adding the version column only with `add_version`; also says whether the
/// table had it.
async fn load_with(
    pool: &PgPool,
    name: &TableName,
    add_version: bool,
) -> Result<(TableSchema, bool), WriteError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(WriteError::pg(format!("looking up table {name}")))?;
    let (oid, columns, keys): (Option<i64>, Option<String>, Option<String>) =
        sqlx::query_as(CATALOG_SQL)
            .bind(name.quoted())
            .fetch_one(&mut *conn)
            .await
            .map_err(WriteError::pg(format!(
                "reading the catalog of table {name}"
            )))?;
    if oid.is_none() {
        return Err(WriteError::TableMissing {
            table: name.to_string(),
        });
    }
    let mut rows: Vec<ColumnRow> = catalog_json(name, columns)?;
    let keys: Vec<Vec<String>> = catalog_json(name, keys)?;
    let had_version = rows.iter().any(|r| r.0 == VERSION_COLUMN);
    if !had_version && add_version {
        add_version_column(&mut conn, name).await?;
    }
    rows.retain(|r| r.0 != VERSION_COLUMN);
    let columns = columns_of(rows);
    let unique_keys = keys
        .into_iter()
        .filter_map(|names| {
            names
                .iter()
                .map(|n| columns.iter().position(|c| &c.name == n))
                .collect::<Option<Vec<usize>>>()
        })
        .collect();
    Ok((
        TableSchema {
            name: name.clone(),
            columns,
            unique_keys,
        },
        had_version,
    ))
}

/// One of [`CATALOG_SQL`]'s JSON columns (Postgres built it: an error is unexpected).
fn catalog_json<T: serde::de::DeserializeOwned>(
    name: &TableName,
    json: Option<String>,
) -> Result<T, WriteError> {
    serde_json::from_str(json.as_deref().unwrap_or("[]")).map_err(|e| WriteError::Postgres {
        context: format!("reading the catalog of table {name}"),
        source: sqlx::Error::Decode(Box::new(e)),
    })
}

/// The columns from [`CATALOG_SQL`]'s rows.
fn columns_of(rows: Vec<ColumnRow>) -> Vec<Column> {
    rows.into_iter()
        .map(|(col, sql_type, type_name, is_array, typmod)| {
            let (scale, precision) = modifiers(&type_name, typmod);
            Column {
                name: col,
                sql_type,
                ty: ColumnType {
                    name: type_name,
                    scale,
                    precision,
                },
                is_array,
            }
        })
        .collect()
}

async fn add_version_column(conn: &mut PgConnection, name: &TableName) -> Result<(), WriteError> {
    let sql = format!(
        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS \"{VERSION_COLUMN}\" bytea",
        name.quoted()
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map_err(|source| WriteError::VersionColumn {
            table: name.to_string(),
            source,
        })?;
    tracing::info!(table = %name, column = VERSION_COLUMN, "added the version column");
    Ok(())
}

/// `numeric(p,s)` → scale (signed); `time(p)`/`timestamp(p)` → fractional digits;
/// `bit(n)`/`varbit(n)` → n (the typmod is the length itself).
fn modifiers(type_name: &str, typmod: i32) -> (Option<i32>, Option<u32>) {
    if typmod < 0 {
        return (None, None);
    }
    let typmod = u32::try_from(typmod).unwrap_or(0);
    match type_name {
        // The scale is an 11-bit signed field (negative scales since Postgres 15).
        "numeric" => {
            let raw = i32::try_from(typmod.saturating_sub(4) & 0x7ff).unwrap_or(0);
            (Some(if raw & 0x400 != 0 { raw - 0x800 } else { raw }), None)
        }
        "time" | "timetz" | "timestamp" | "timestamptz" | "bit" | "varbit" => (None, Some(typmod)),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_type_modifiers() {
        // numeric(10,2): ((10 << 16) | 2) + 4
        assert_eq!(modifiers("numeric", (10 << 16 | 2) + 4), (Some(2), None));
        assert_eq!(modifiers("numeric", -1), (None, None));
        // numeric(5,-3): scale 0x7fd in the low 11 bits.
        assert_eq!(
            modifiers("numeric", (5 << 16 | 0x7fd) + 4),
            (Some(-3), None)
        );
        assert_eq!(modifiers("timestamp", 3), (None, Some(3)));
        assert_eq!(modifiers("int4", -1), (None, None));
        assert_eq!(modifiers("bit", 12), (None, Some(12)));
        assert_eq!(modifiers("varbit", 8), (None, Some(8)));
        assert_eq!(modifiers("varbit", -1), (None, None));
    }
}
