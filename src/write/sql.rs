//! The statements: one `UNNEST` statement per group of rows (one parameter per column,
//! whatever the row count), every identifier quoted, every value bound as text and
//! cast to the column's type by Postgres.

use std::fmt::Write as _;
use std::sync::Arc;

use sqlx::PgConnection;

use super::binary::{self, BinaryArray};
use super::literal::{self, HasNul};
use super::{VERSION_COLUMN, WriteError};
use crate::entry::EntryId;
use crate::map::{Column, RowChange, RowOp, TableSchema};
use crate::table::quote_ident;

fn version_col() -> String {
    quote_ident(VERSION_COLUMN)
}

/// The rows of a statement's arrays, `i(c0, c1, …, v, k)`: its value columns sent as
/// `arrays` (`$1::text[]`, `$2::int8[]`, …: [`TEXT`] or a [`binary`] array's type), then
/// the versions (`bytea[]`) and the key texts (`text[]`); the table name (for the
/// tombstones and truncations) is `$width+3`. One `unnest` per array in a select list:
/// Postgres walks them together, row by row, where `FROM unnest(a, b, …)` first copies
/// each array's elements into a tuple store of its own (4,096 rows of the benchmark's
/// `orders`, pgbench: 25–28 ms against 32–37).
fn unnest_rows(arrays: &[&str]) -> String {
    let mut rows = String::from("(SELECT ");
    for (i, array) in arrays.iter().enumerate() {
        let _ = write!(rows, "unnest(${}::{array}) AS c{i}, ", i + 1);
    }
    let width = arrays.len();
    let _ = write!(
        rows,
        "unnest(${}::bytea[]) AS v, unnest(${}::text[]) AS k) AS i",
        width + 1,
        width + 2
    );
    rows
}

/// The array type of a value column sent as text.
pub const TEXT: &str = "text[]";

/// `INSERT … SELECT … FROM unnest(…) ON CONFLICT (key) DO UPDATE … WHERE older`, the
/// values of `columns` sent as `arrays` (each cast to its column's type, a no-op where
/// the array has it already), the rows' lowest version as `$width+4` ([`min_version`]).
///
/// A row is not written when a tombstone of its key is as new as it. That probe (an
/// index lookup per row: ~12 % of the statement for 4,096 rows into a table without
/// tombstones) is skipped when the table has no tombstone as new as the batch's oldest
/// row (one lookup in `tombstones_by_version`): then no row has one. Both read the same
/// snapshot, so the result is the same either way.
pub fn upsert_sql(
    table: &TableSchema,
    key: &[usize],
    columns: &[usize],
    arrays: &[&str],
) -> String {
    let names: Vec<String> = columns
        .iter()
        .map(|&c| quote_ident(&table.columns[c].name))
        .collect();
    let casts: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("i.c{i}::{}", table.columns[c].sql_type))
        .collect();
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
         SELECT {casts}, i.v FROM {rows} \
         WHERE (NOT EXISTS (SELECT 1 FROM redsink.tombstones d0 \
             WHERE d0.table_name = ${pt} AND d0.version >= ${pm}) \
           OR NOT EXISTS (SELECT 1 FROM redsink.tombstones d \
             WHERE d.table_name = ${pt} AND d.key = i.k AND d.version >= i.v)) \
         AND i.v > coalesce((SELECT tr.version FROM redsink.truncations tr \
           WHERE tr.table_name = ${pt}), ''::bytea) \
         ON CONFLICT ({conflict}) DO UPDATE SET {sets} \
         WHERE t.{v} IS NULL OR t.{v} < EXCLUDED.{v}",
        table = table.name.quoted(),
        names = names.join(", "),
        casts = casts.join(", "),
        rows = unnest_rows(arrays),
        pt = columns.len() + 3,
        pm = columns.len() + 4,
        conflict = conflict.join(", "),
        sets = sets.join(", "),
    )
}

/// Deletes rows older than the event and records the tombstone version; the key values
/// sent as `arrays`.
pub fn delete_sql(table: &TableSchema, key: &[usize], arrays: &[&str]) -> String {
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
        "WITH i AS (SELECT * FROM {rows}), \
         del AS (DELETE FROM {table} AS t USING i WHERE {matches}(t.{v} IS NULL OR t.{v} < i.v)) \
         INSERT INTO redsink.tombstones AS d (table_name, key, version) \
         SELECT ${pt}, i.k, i.v FROM i \
         ON CONFLICT (table_name, key) DO UPDATE SET version = EXCLUDED.version, deleted_at = now() \
         WHERE d.version < EXCLUDED.version",
        rows = unnest_rows(arrays),
        table = table.name.quoted(),
        pt = key.len() + 3,
    )
}

/// The upsert's last parameter ([`upsert_sql`]): the lowest version among `rows`
/// (bytea's order is the bytes' order, as `[u8]`'s); `None` for a delete, whose
/// statement has no such parameter.
fn min_version<'a>(rows: &[&'a RowChange]) -> Option<&'a [u8]> {
    if !matches!(rows.first()?.op, RowOp::Upsert { .. }) {
        return None;
    }
    rows.iter().map(|r| r.version.0.as_slice()).min()
}

/// The width of a group's value arrays (its first row's columns, or key columns for a
/// delete) and what its statement does (for its error).
fn shape(first: &RowChange) -> (usize, &'static str) {
    match &first.op {
        RowOp::Upsert { columns, .. } => (columns.len(), "upserting"),
        RowOp::Delete { .. } => (first.key_columns.len(), "deleting"),
    }
}

/// A group's statement, its values as parameters sent as `arrays`: same operation, key
/// and column set as its first row.
fn group_sql(table: &TableSchema, first: &RowChange, arrays: &[&str]) -> String {
    let key = &first.key_columns;
    match &first.op {
        RowOp::Upsert { columns, .. } => upsert_sql(table, key, columns, arrays),
        RowOp::Delete { .. } => delete_sql(table, key, arrays),
    }
}

/// The table column of the `c`-th value of a group whose first row is `first`.
fn column_of<'t>(table: &'t TableSchema, first: &RowChange, c: usize) -> Option<&'t Column> {
    let index = match &first.op {
        RowOp::Upsert { columns, .. } => columns.get(c),
        RowOp::Delete { .. } => first.key_columns.get(c),
    };
    table.columns.get(*index?)
}

/// A row's value of column `c` of its group's arrays.
fn value(row: &RowChange, c: usize) -> Option<&str> {
    match &row.op {
        RowOp::Upsert { values, .. } => values.get(c),
        RowOp::Delete { key_values } => key_values.get(c).map(String::as_str),
    }
}

/// A group's statement to prepare by name and its arguments as literals, for `EXECUTE`
/// in a simple query.
pub struct Execute {
    /// The statement with its values as parameters ([`group_sql`]): the same text
    /// for every group of the same table and shape.
    pub sql: String,
    /// The parameters' types, for `PREPARE name (types) AS sql`.
    pub types: String,
    /// The values, `E'{…}', …`, in the parameters' order.
    pub args: String,
}

/// One group of rows of the same shape as an [`Execute`]; `None` for no rows, an error
/// when a value holds a NUL.
pub fn group_execute(table: &TableSchema, rows: &[&RowChange]) -> Result<Option<Execute>, HasNul> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let (width, _) = shape(first);
    let mut args = String::new();
    for c in 0..width {
        literal::push_text_array(&mut args, rows.iter().map(|r| value(r, c)))?;
        args.push_str(", ");
    }
    literal::push_bytea_array(&mut args, rows.iter().map(|r| r.version.0.as_slice()));
    args.push_str(", ");
    literal::push_text_array(&mut args, rows.iter().map(|r| Some(r.key_text.as_str())))?;
    args.push_str(", ");
    literal::push_text(&mut args, &table.name.to_string())?;
    let mut types = format!("{}bytea[], text[], text", "text[], ".repeat(width));
    if let Some(min) = min_version(rows) {
        args.push_str(", ");
        literal::push_bytea(&mut args, min);
        types.push_str(", bytea");
    }
    Ok(Some(Execute {
        sql: group_sql(table, first, &vec![TEXT; width]),
        types,
        args,
    }))
}

/// A value column's parameter: a binary array of its type, or texts.
enum Param<'a> {
    Binary(BinaryArray),
    Text(Vec<Option<&'a str>>),
}

impl Param<'_> {
    fn cast(&self) -> &str {
        match self {
            Param::Binary(array) => array.cast,
            Param::Text(_) => TEXT,
        }
    }
}

/// Writes one group of rows of the same shape (same operation, key and column set)
/// with one statement, its values bound as parameters.
pub async fn write_rows(
    conn: &mut PgConnection,
    table: &TableSchema,
    rows: &[&RowChange],
) -> Result<(), WriteError> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let (width, what) = shape(first);
    // Column-major: one array per column (binary where every value allows, else text),
    // then the versions, the key texts and the table name (for the tombstones).
    let params: Vec<Param<'_>> = (0..width)
        .map(|c| {
            let values = rows.iter().map(|r| value(r, c));
            column_of(table, first, c)
                .and_then(|column| binary::column_array(column, values.clone()))
                .map_or_else(|| Param::Text(values.collect()), Param::Binary)
        })
        .collect();
    let arrays: Vec<&str> = params.iter().map(Param::cast).collect();
    let mut query = sqlx::query(sqlx::AssertSqlSafe(group_sql(table, first, &arrays)));
    for param in params {
        query = match param {
            Param::Binary(array) => query.bind(array),
            Param::Text(texts) => query.bind(texts),
        };
    }
    let versions: Vec<&[u8]> = rows.iter().map(|r| r.version.0.as_slice()).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.key_text.as_str()).collect();
    query = query.bind(versions).bind(keys).bind(table.name.to_string());
    if let Some(min) = min_version(rows) {
        query = query.bind(min);
    }
    query.execute(conn).await.map_err(WriteError::pg(format!(
        "{what} {} rows of {}",
        rows.len(),
        table.name
    )))?;
    Ok(())
}

/// A truncate at version `version` of the table named `name` (SQL expressions: bound
/// parameters or literals): deletes the rows older than it, records it (kept at the
/// maximum) so older events stay no-ops, and drops the tombstones it makes redundant.
fn truncate_sql(table: &TableSchema, name: &str, version: &str) -> String {
    let v = version_col();
    format!(
        "WITH tr AS (INSERT INTO redsink.truncations AS tr (table_name, version) \
           VALUES ({name}, {version}) \
           ON CONFLICT (table_name) DO UPDATE SET version = EXCLUDED.version, truncated_at = now() \
           WHERE tr.version < EXCLUDED.version), \
         tomb AS (DELETE FROM redsink.tombstones WHERE table_name = {name} AND version < {version}) \
         DELETE FROM {table} WHERE {v} IS NULL OR {v} < {version}",
        table = table.name.quoted(),
    )
}

/// A table's truncate ([`truncate_sql`]) with its values bound as parameters.
pub async fn truncate(
    conn: &mut PgConnection,
    table: &TableSchema,
    version: &[u8],
) -> Result<(), WriteError> {
    let sql = truncate_sql(table, "$1", "$2::bytea");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(table.name.to_string())
        .bind(version)
        .execute(conn)
        .await
        .map_err(WriteError::pg(format!("truncating {}", table.name)))?;
    Ok(())
}

/// Appends to `out` a table's truncate ([`truncate_sql`]) and `;`, with its values as
/// literals; `out` is left as it was when the table's name holds a NUL.
pub fn push_truncate_inline(
    out: &mut String,
    table: &TableSchema,
    version: &[u8],
) -> Result<(), HasNul> {
    let mut name = String::new();
    literal::push_text(&mut name, &table.name.to_string())?;
    let mut bytes = String::new();
    literal::push_bytea(&mut bytes, version);
    bytes.push_str("::bytea");
    out.push_str(&truncate_sql(table, &name, &bytes));
    out.push_str(";\n");
    Ok(())
}

/// A string literal Postgres reads back as `text` whatever `standard_conforming_strings`
/// says (the rule of Postgres' own `quote_literal`): quotes doubled, and with an
/// `E` prefix and backslashes doubled when there are backslashes. Postgres text cannot
/// hold NUL (and the protocol ends a query at one): refused.
pub fn quote_literal(text: &str) -> Result<String, WriteError> {
    let mut out = String::with_capacity(text.len() + 3);
    if text.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    literal::push_quoted(&mut out, text).map_err(|_| WriteError::NulInName {
        stream: text.replace('\0', "\\0"),
    })?;
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
/// checkpoint moved forward (never back), then `COMMIT`. The checkpoints go as arrays
/// (one `unnest`), not a `VALUES` row each: Postgres parses and plans a list of 1,000
/// rows in ~8 ms and the arrays in ~5 (a batch over 1,600 streams). Only integers and
/// quoted literals are interpolated. The checkpoint rows are locked only from here to
/// the commit, so instances of one group do not queue on them for a whole transaction.
pub fn commit_sql(group: &str, checkpoints: &[(Arc<str>, EntryId)]) -> Result<String, WriteError> {
    if checkpoints.is_empty() {
        return Ok("COMMIT".into());
    }
    let streams = checkpoints.iter().map(|(s, _)| Some(&**s));
    let mut names = String::new();
    literal::push_text_array(&mut names, streams).map_err(|_| {
        let bad = checkpoints.iter().find(|(s, _)| s.contains('\0'));
        WriteError::NulInName {
            stream: bad.map_or(String::new(), |(s, _)| s.replace('\0', "\\0")),
        }
    })?;
    let mut sql = format!(
        "INSERT INTO redsink.checkpoints AS c (consumer_group, stream, last_id, last_ms, last_seq) \
         SELECT {}, s, m::text || '-' || q::text, m, q FROM unnest({names}::text[]",
        quote_literal(group)?
    );
    // Entry IDs beyond i64 do not occur in practice (ms since 1970); saturate.
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    for part in [0, 1] {
        sql.push_str(", '{");
        for (i, (_, id)) in checkpoints.iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            let n = if part == 0 { id.ms } else { id.seq };
            let _ = write!(sql, "{comma}{}", int(n));
        }
        sql.push_str("}'::int8[]");
    }
    sql.push_str(
        ") AS u(s, m, q) \
         ON CONFLICT (consumer_group, stream) DO UPDATE SET last_id = EXCLUDED.last_id, \
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
        assert!(
            sql.contains("SELECT 'g''1', s, m::text || '-' || q::text, m, q"),
            "{sql}"
        );
        assert!(
            sql.contains(r#"unnest(E'{"s''0"}'::text[], '{1}'::int8[], '{2}'::int8[])"#),
            "{sql}"
        );
        assert!(sql.ends_with("; COMMIT"));
        assert_eq!(commit_sql("g", &[]).unwrap_or_default(), "COMMIT");
        assert!(commit_sql("g", &[(Arc::from("a\0"), EntryId::ZERO)]).is_err());
    }
}
