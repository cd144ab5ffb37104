//! The statements: one `UNNEST` statement per group of rows (one parameter per column,
//! whatever the row count), every identifier quoted, every value bound as text and
//! cast to the column's type by Postgres.

use std::fmt::Write as _;
use std::sync::Arc;

use sqlx::PgConnection;

use super::{VERSION_COLUMN, WriteError};
use crate::entry::EntryId;
use crate::map::{RowChange, RowOp, TableSchema};
use crate::table::quote_ident;

fn version_col() -> String {
    quote_ident(VERSION_COLUMN)
}

/// `INSERT … SELECT … FROM unnest(…) ON CONFLICT (key) DO UPDATE … WHERE older`.
pub fn upsert_sql(table: &TableSchema, key: &[usize], columns: &[usize]) -> String {
    let n = columns.len();
    let names: Vec<String> = columns
        .iter()
        .map(|&c| quote_ident(&table.columns[c].name))
        .collect();
    let casts: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("i.c{i}::{}", table.columns[c].sql_type))
        .collect();
    let params: Vec<String> = (1..=n).map(|p| format!("${p}::text[]")).collect();
    let aliases: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let conflict: Vec<String> = key
        .iter()
        .map(|&c| quote_ident(&table.columns[c].name))
        .collect();
    let mut sets: Vec<String> = columns
        .iter()
        .filter(|c| !key.contains(c))
        .map(|&c| {
            let q = quote_ident(&table.columns[c].name);
            format!("{q} = EXCLUDED.{q}")
        })
        .collect();
    let v = version_col();
    sets.push(format!("{v} = EXCLUDED.{v}"));
    format!(
        "INSERT INTO {table} AS t ({names}, {v}) \
         SELECT {casts}, i.v FROM unnest({params}, ${pv}::bytea[], ${pk}::text[]) AS i({aliases}, v, k) \
         WHERE NOT EXISTS (SELECT 1 FROM redsink.tombstones d \
           WHERE d.table_name = ${pt} AND d.key = i.k AND d.version >= i.v) \
         AND i.v > coalesce((SELECT tr.version FROM redsink.truncations tr \
           WHERE tr.table_name = ${pt}), ''::bytea) \
         ON CONFLICT ({conflict}) DO UPDATE SET {sets} \
         WHERE t.{v} IS NULL OR t.{v} < EXCLUDED.{v}",
        table = table.name.quoted(),
        names = names.join(", "),
        casts = casts.join(", "),
        params = params.join(", "),
        aliases = aliases.join(", "),
        pv = n + 1,
        pk = n + 2,
        pt = n + 3,
        conflict = conflict.join(", "),
        sets = sets.join(", "),
    )
}

/// Deletes rows older than the event and records the tombstone version.
pub fn delete_sql(table: &TableSchema, key: &[usize]) -> String {
    let m = key.len();
    let params: Vec<String> = (1..=m).map(|p| format!("${p}::text[]")).collect();
    let aliases: Vec<String> = (0..m).map(|i| format!("c{i}")).collect();
    let mut matches = String::new();
    for (i, &c) in key.iter().enumerate() {
        let col = &table.columns[c];
        let _ = write!(
            matches,
            "t.{} = i.c{i}::{} AND ",
            quote_ident(&col.name),
            col.sql_type
        );
    }
    let v = version_col();
    format!(
        "WITH i AS (SELECT * FROM unnest({params}, ${pv}::bytea[], ${pk}::text[]) AS i({aliases}, v, k)), \
         del AS (DELETE FROM {table} AS t USING i WHERE {matches}(t.{v} IS NULL OR t.{v} < i.v)) \
         INSERT INTO redsink.tombstones AS d (table_name, key, version) \
         SELECT ${pt}, i.k, i.v FROM i \
         ON CONFLICT (table_name, key) DO UPDATE SET version = EXCLUDED.version, deleted_at = now() \
         WHERE d.version < EXCLUDED.version",
        params = params.join(", "),
        aliases = aliases.join(", "),
        table = table.name.quoted(),
        pv = m + 1,
        pk = m + 2,
        pt = m + 3,
    )
}

/// Writes one group of rows of the same shape (same operation, key and column set)
/// with one statement.
pub async fn write_rows(
    conn: &mut PgConnection,
    table: &TableSchema,
    rows: &[&RowChange],
) -> Result<(), WriteError> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let key = &first.key_columns;
    let (sql, width, what) = match &first.op {
        RowOp::Upsert { columns, .. } => {
            (upsert_sql(table, key, columns), columns.len(), "upserting")
        }
        RowOp::Delete { .. } => (delete_sql(table, key), key.len(), "deleting"),
    };
    // Column-major: one text array per column, then the versions, the key texts and
    // the table name (for the tombstones).
    let mut cols: Vec<Vec<Option<&str>>> = vec![Vec::with_capacity(rows.len()); width];
    let mut versions: Vec<&[u8]> = Vec::with_capacity(rows.len());
    let mut keys: Vec<&str> = Vec::with_capacity(rows.len());
    for row in rows {
        match &row.op {
            RowOp::Upsert { values, .. } => {
                for (col, value) in cols.iter_mut().zip(values) {
                    col.push(value.as_deref());
                }
            }
            RowOp::Delete { key_values } => {
                for (col, value) in cols.iter_mut().zip(key_values) {
                    col.push(Some(value.as_str()));
                }
            }
        }
        versions.push(&row.version.0);
        keys.push(&row.key_text);
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for col in cols {
        query = query.bind(col);
    }
    query
        .bind(versions)
        .bind(keys)
        .bind(table.name.to_string())
        .execute(conn)
        .await
        .map_err(WriteError::pg(format!(
            "{what} {} rows of {}",
            rows.len(),
            table.name
        )))?;
    Ok(())
}

/// A truncate at version `$2`: deletes the rows older than it, records it (kept at the
/// maximum) so older events stay no-ops, and drops the tombstones it makes redundant.
pub async fn truncate(
    conn: &mut PgConnection,
    table: &TableSchema,
    version: &[u8],
) -> Result<(), WriteError> {
    let v = version_col();
    let sql = format!(
        "WITH tr AS (INSERT INTO redsink.truncations AS tr (table_name, version) VALUES ($1, $2) \
           ON CONFLICT (table_name) DO UPDATE SET version = EXCLUDED.version, truncated_at = now() \
           WHERE tr.version < EXCLUDED.version), \
         tomb AS (DELETE FROM redsink.tombstones WHERE table_name = $1 AND version < $2) \
         DELETE FROM {table} WHERE {v} IS NULL OR {v} < $2",
        table = table.name.quoted(),
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(table.name.to_string())
        .bind(version)
        .execute(conn)
        .await
        .map_err(WriteError::pg(format!("truncating {}", table.name)))?;
    Ok(())
}

/// A string literal Postgres reads back as `text` whatever `standard_conforming_strings`
/// says (the rule of Postgres' own `quote_literal`): quotes doubled, and with an
/// `E` prefix and backslashes doubled when there are backslashes. Postgres text cannot
/// hold NUL (and the protocol ends a query at one): refused.
pub fn quote_literal(text: &str) -> Result<String, WriteError> {
    if text.contains('\0') {
        return Err(WriteError::NulInName {
            stream: text.replace('\0', "\\0"),
        });
    }
    let mut out = String::with_capacity(text.len() + 3);
    if text.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Ok(out)
}

/// The simple query that opens a batch's transaction (one round trip): `BEGIN` at READ
/// COMMITTED (each statement then sees what committed before it started: the version
/// guard relies on it) and the advisory locks, in the given (sorted) order, as (ID,
/// shared). Only integers are interpolated.
pub fn begin_sql(locks: &[(i64, bool)]) -> String {
    let mut sql = String::from("BEGIN ISOLATION LEVEL READ COMMITTED");
    if locks.is_empty() {
        return sql;
    }
    // One row per lock, in array order: no limit on the number of locks.
    let (mut ids, mut shared) = (String::new(), String::new());
    for (i, (id, s)) in locks.iter().enumerate() {
        let comma = if i == 0 { "" } else { "," };
        let _ = write!(ids, "{comma}{id}");
        let _ = write!(shared, "{comma}{s}");
    }
    let _ = write!(
        sql,
        "; SELECT CASE WHEN s THEN pg_advisory_xact_lock_shared(k) ELSE pg_advisory_xact_lock(k) END \
         FROM unnest(ARRAY[{ids}]::int8[], ARRAY[{shared}]::bool[]) AS u(k, s)"
    );
    sql
}

/// The simple query that ends a batch's transaction (one round trip): each stream's
/// checkpoint moved forward (never back), then `COMMIT`. Only integers and quoted
/// literals are interpolated. The checkpoint rows are locked only from here to the
/// commit, so instances of one group do not queue on them for a whole transaction.
pub fn commit_sql(group: &str, checkpoints: &[(Arc<str>, EntryId)]) -> Result<String, WriteError> {
    if checkpoints.is_empty() {
        return Ok("COMMIT".into());
    }
    let mut sql = String::from(
        "INSERT INTO redsink.checkpoints AS c (consumer_group, stream, last_id, last_ms, last_seq) VALUES ",
    );
    let group = quote_literal(group)?;
    for (i, (stream, id)) in checkpoints.iter().enumerate() {
        // Entry IDs beyond i64 do not occur in practice (ms since 1970); saturate.
        let ms = i64::try_from(id.ms).unwrap_or(i64::MAX);
        let seq = i64::try_from(id.seq).unwrap_or(i64::MAX);
        let comma = if i == 0 { "" } else { ", " };
        let _ = write!(
            sql,
            "{comma}({group}, {}, '{id}', {ms}, {seq})",
            quote_literal(stream)?
        );
    }
    sql.push_str(
        " ON CONFLICT (consumer_group, stream) DO UPDATE SET last_id = EXCLUDED.last_id, \
         last_ms = EXCLUDED.last_ms, last_seq = EXCLUDED.last_seq, updated_at = now() \
         WHERE (c.last_ms, c.last_seq) < (EXCLUDED.last_ms, EXCLUDED.last_seq); COMMIT",
    );
    Ok(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(text: &str) -> String {
        quote_literal(text).unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn literals_survive_quotes_and_backslashes_and_refuse_nul() {
        assert_eq!(quoted("orders:1"), "'orders:1'");
        assert_eq!(quoted("it's"), "'it''s'");
        assert_eq!(quoted(r"a\'b"), r"E'a\\''b'");
        assert!(quoted("a\0b").contains("NUL byte"));
    }

    #[test]
    fn begin_keeps_lock_order_at_read_committed() {
        let sql = begin_sql(&[(-5, true), (7, false)]);
        assert!(sql.starts_with("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT CASE"));
        assert!(
            sql.contains("unnest(ARRAY[-5,7]::int8[], ARRAY[true,false]::bool[])"),
            "{sql}"
        );
        assert_eq!(begin_sql(&[]), "BEGIN ISOLATION LEVEL READ COMMITTED");
    }

    #[test]
    fn commit_moves_checkpoints_with_quoted_names() {
        let sql =
            commit_sql("g'1", &[(Arc::from("s'0"), EntryId { ms: 1, seq: 2 })]).unwrap_or_default();
        assert!(sql.contains("('g''1', 's''0', '1-2', 1, 2)"), "{sql}");
        assert!(sql.ends_with("; COMMIT"));
        assert_eq!(commit_sql("g", &[]).unwrap_or_default(), "COMMIT");
        assert!(commit_sql("g", &[(Arc::from("a\0"), EntryId::ZERO)]).is_err());
    }
}
