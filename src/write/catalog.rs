//! What the target tables look like, read from the Postgres catalog, and the
//! per-row version column redsink keeps in each of them.

use sqlx::PgPool;

use super::WriteError;
use crate::map::{Column, ColumnType, TableSchema};
use crate::table::TableName;

/// The column redsink adds to each target table: the version of the change the row holds.
pub const VERSION_COLUMN: &str = "_redsink_version";

const COLUMNS_SQL: &str = "
SELECT a.attname::text,
       -- The type without its modifier; bit without one would mean bit(1), so varbit.
       CASE WHEN coalesce(et.typname, t.typname) = 'bit'
            THEN 'bit varying' || CASE WHEN et.oid IS NOT NULL THEN '[]' ELSE '' END
            ELSE format_type(a.atttypid, -1) END,
       coalesce(et.typname, t.typname)::text,
       et.oid IS NOT NULL,
       a.atttypmod
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

const UNIQUE_KEYS_SQL: &str = "
SELECT array_agg(a.attname::text ORDER BY k.ord)
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = $1::oid AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
GROUP BY i.indexrelid, i.indisprimary
ORDER BY i.indisprimary DESC, i.indexrelid";

/// Reads a table's columns and unique keys, adding the version column when it is missing.
pub async fn load(pool: &PgPool, name: &TableName) -> Result<TableSchema, WriteError> {
    load_with(pool, name, true).await.map(|(schema, _)| schema)
}

/// [`load`], adding the version column only with `add_version`; also says whether the
/// table had it.
pub async fn load_with(
    pool: &PgPool,
    name: &TableName,
    add_version: bool,
) -> Result<(TableSchema, bool), WriteError> {
    let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::int8")
        .bind(name.quoted())
        .fetch_one(pool)
        .await
        .map_err(WriteError::pg(format!("looking up table {name}")))?;
    let Some(oid) = oid else {
        return Err(WriteError::TableMissing {
            table: name.to_string(),
        });
    };
    let mut rows: Vec<(String, String, String, bool, i32)> = sqlx::query_as(COLUMNS_SQL)
        .bind(oid)
        .fetch_all(pool)
        .await
        .map_err(WriteError::pg(format!("reading the columns of {name}")))?;
    let had_version = rows.iter().any(|r| r.0 == VERSION_COLUMN);
    if !had_version && add_version {
        add_version_column(pool, name).await?;
    }
    rows.retain(|r| r.0 != VERSION_COLUMN);
    let columns: Vec<Column> = rows
        .into_iter()
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
        .collect();
    let keys: Vec<Vec<String>> = sqlx::query_scalar(UNIQUE_KEYS_SQL)
        .bind(oid)
        .fetch_all(pool)
        .await
        .map_err(WriteError::pg(format!("reading the unique keys of {name}")))?;
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

async fn add_version_column(pool: &PgPool, name: &TableName) -> Result<(), WriteError> {
    let sql = format!(
        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS \"{VERSION_COLUMN}\" bytea",
        name.quoted()
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .map_err(|source| WriteError::VersionColumn {
            table: name.to_string(),
            source,
        })?;
    tracing::info!(table = %name, column = VERSION_COLUMN, "added the version column");
    Ok(())
}

/// `numeric(p,s)` → scale (signed); `time(p)`/`timestamp(p)` → fractional digits.
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
    }
}
