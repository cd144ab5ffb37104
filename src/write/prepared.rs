//! A batch's statements as one simple query that runs statements prepared by name on
//! the server: `EXECUTE redsink_<n>(E'{…}', …)` per table and row shape, values as
//! literals ([`super::literal`]). Sent in one round trip, and Postgres plans each
//! statement once per connection (its generic plan), not once per batch: planning the
//! `UNNEST` upsert costs about as much as running it for a few rows, and a batch over
//! 200 tables has 200 of them. Pure apart from the process-wide table of names.
//!
//! Which statements a connection has prepared is known only to the server (sqlx gives a
//! connection no identity to remember it by): the writer sends its `EXECUTE`s, and only
//! when Postgres answers that one does not exist ([`is_missing`]) asks it which exist
//! and sends the missing `PREPARE`s in front of the batch ([`prelude`]). A connection
//! keeps at most [`PREPARED_MAX`] of them.
//!
//! The `PREPARE`s go inside a `DO` block, as PL/pgSQL `EXECUTE`s of their own text:
//! a statement prepared by SQL keeps a copy of the whole query string it came in, and
//! `EXECUTE` copies that again every time. Prepared in the batch's own query (a
//! megabyte for 200 tables), each keeps the megabyte, and a batch's 200 `EXECUTE`s
//! copied and measured 200 MB (a quarter of Postgres' time in that workload).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex, PoisonError};

use super::literal::{HasNul, push_quoted};
use super::sql::{self, Execute};
use super::{WriteError, writer};
use crate::batch::Batch;
use crate::map::RowChange;

/// Statements one connection keeps prepared by the writer. Each costs the server about
/// 100 KiB of backend memory (its plan source, query tree and generic plan, measured for
/// an 8-column upsert on PostgreSQL 15): at most ~50 MiB per connection, times
/// `postgres.pool_size`, and only with that many tables and row shapes in use. Beyond
/// it, the statements the batch at hand does not use are deallocated.
pub const PREPARED_MAX: usize = 512;

/// The prefix of the writer's statement names (never sqlx's `sqlx_s_`).
const PREFIX: &str = "redsink_w";

/// Statement text → its number. Process-wide, so that one name is one text on every
/// connection whichever writer (of any pool) prepared it. It grows with the distinct
/// statements (tables × row shapes) this process has written, like the server's share.
static NAMES: LazyLock<Mutex<HashMap<String, u64>>> = LazyLock::new(Mutex::default);

/// The name of a statement's text.
fn name_of(sql: &str) -> String {
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    let n = match names.get(sql) {
        Some(&n) => n,
        None => {
            let next = u64::try_from(names.len()).unwrap_or(u64::MAX);
            names.insert(sql.to_string(), next);
            next
        }
    };
    format!("{PREFIX}{n}")
}

/// A batch's statements for one simple query, and what to prepare when the connection
/// lacks some.
#[derive(Default)]
pub struct Plan {
    /// Every table's truncate (values as literals) and `EXECUTE`s, in the batch's order.
    pub statements: String,
    /// The statements it executes: name → `PREPARE name (types) AS sql` (quoted for
    /// PL/pgSQL's `EXECUTE` only when the connection lacks it: [`prelude`]).
    prepares: Vec<(String, String)>,
}

/// The batch's statements: per table, its truncate, then its groups of rows, in order.
/// Refused when a value holds a NUL (then the batch goes with bound parameters).
pub fn plan(batch: &Batch) -> Result<Plan, HasNul> {
    let mut plan = Plan::default();
    let mut seen = HashSet::new();
    for table in &batch.tables {
        if let Some(version) = &table.truncate {
            sql::push_truncate_inline(&mut plan.statements, &table.table, &version.0)?;
        }
        for group in writer::groups(&table.rows) {
            let changes: Vec<&RowChange> = group.iter().map(|(c, _)| *c).collect();
            let Some(Execute { sql, types, args }) = sql::group_execute(&table.table, &changes)?
            else {
                continue;
            };
            let name = name_of(&sql);
            let _ = writeln!(plan.statements, "EXECUTE {name}({args});");
            if seen.insert(name.clone()) {
                let prepare = format!("PREPARE {name} ({types}) AS {sql}");
                plan.prepares.push((name, prepare));
            }
        }
    }
    Ok(plan)
}

/// What to send before the batch on a connection that has prepared `have` (the names
/// `pg_prepared_statements` lists): the missing `PREPARE`s in one `DO` block, after
/// `DEALLOCATE`s of statements the batch does not use when the connection would keep
/// more than [`PREPARED_MAX`].
pub fn prelude(plan: &Plan, have: &[String]) -> String {
    let have: HashSet<&str> = have
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with(PREFIX))
        .collect();
    let needed: HashSet<&str> = plan.prepares.iter().map(|(n, _)| n.as_str()).collect();
    let missing: Vec<&str> = plan
        .prepares
        .iter()
        .filter(|(n, _)| !have.contains(n.as_str()))
        .map(|(_, p)| p.as_str())
        .collect();
    let mut out = String::new();
    if have.len() + missing.len() > PREPARED_MAX {
        let mut unused: Vec<&&str> = have.iter().filter(|n| !needed.contains(**n)).collect();
        unused.sort();
        for name in unused {
            let _ = writeln!(out, "DEALLOCATE {name};");
        }
    }
    if missing.is_empty() {
        return out;
    }
    let mut body = String::new();
    for prepare in missing {
        // Statement texts hold identifiers from the catalog, which cannot hold a NUL.
        body.push_str(" EXECUTE E'");
        let _ = push_quoted(&mut body, prepare);
        body.push_str("';");
    }
    // The block's dollar quote: a tag its body does not hold.
    let mut tag = String::from("$redsink$");
    while body.contains(&tag) {
        tag.insert(tag.len() - 1, '_');
    }
    let _ = writeln!(out, "DO {tag} BEGIN{body} END {tag};");
    out
}

/// The names of the writer's statements this connection has prepared (after the
/// `ROLLBACK` of the transaction that missed one).
pub const LIST_SQL: &str =
    "ROLLBACK; SELECT name FROM pg_prepared_statements WHERE name LIKE 'redsink\\_w%'";

/// Whether Postgres refused an `EXECUTE` of a statement this connection has not
/// prepared (SQLSTATE 26000, invalid_sql_statement_name).
pub fn is_missing(e: &WriteError) -> bool {
    match e {
        WriteError::Postgres {
            source: sqlx::Error::Database(db),
            ..
        } => db.code().as_deref() == Some("26000"),
        _ => false,
    }
}

/// Whether Postgres refused the statements prepared by name even after [`prelude`]:
/// one missing again (26000) or one prepared already (42P05, duplicate_prepared_statement),
/// or the `DO` block that prepares them (PL/pgSQL dropped from the database (42704) or
/// its use revoked (42501)).
pub fn is_unusable(e: &WriteError) -> bool {
    match e {
        WriteError::Postgres {
            source: sqlx::Error::Database(db),
            ..
        } => match db.code().as_deref() {
            Some("26000" | "42P05") => true,
            Some("42704" | "42501") => db.message().contains("plpgsql"),
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(names: &[&str]) -> Plan {
        Plan {
            statements: String::new(),
            prepares: names
                .iter()
                .map(|n| (n.to_string(), format!("PREPARE {n}")))
                .collect(),
        }
    }

    #[test]
    fn one_text_one_name() {
        let a = name_of("SELECT 'prepared::a'");
        assert_eq!(a, name_of("SELECT 'prepared::a'"));
        assert_ne!(a, name_of("SELECT 'prepared::b'"));
        assert!(a.starts_with(PREFIX));
    }

    #[test]
    fn only_missing_statements_are_prepared() {
        let plan = plan_of(&["redsink_w1", "redsink_w2"]);
        let have = vec!["redsink_w1".to_string(), "sqlx_s_1".to_string()];
        assert_eq!(
            prelude(&plan, &have),
            "DO $redsink$ BEGIN EXECUTE E'PREPARE redsink_w2'; END $redsink$;\n"
        );
        assert_eq!(
            prelude(&plan, &[]),
            "DO $redsink$ BEGIN EXECUTE E'PREPARE redsink_w1'; EXECUTE E'PREPARE redsink_w2'; END $redsink$;\n"
        );
        let have: Vec<String> = plan.prepares.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(prelude(&plan, &have), "");
    }

    #[test]
    fn a_full_connection_drops_what_the_batch_does_not_use() {
        let plan = plan_of(&["redsink_w0", "redsink_wnew"]);
        let have: Vec<String> = (0..PREPARED_MAX).map(|i| format!("redsink_w{i}")).collect();
        let sent = prelude(&plan, &have);
        assert!(
            !sent.contains("DEALLOCATE redsink_w0;"),
            "used by the batch"
        );
        assert!(sent.contains("DEALLOCATE redsink_w1;"));
        assert_eq!(sent.matches("DEALLOCATE").count(), PREPARED_MAX - 1);
        assert!(
            sent.ends_with("DO $redsink$ BEGIN EXECUTE E'PREPARE redsink_wnew'; END $redsink$;\n")
        );
    }

    #[test]
    fn the_block_quote_is_not_in_its_body() {
        let plan = Plan {
            statements: String::new(),
            prepares: vec![(
                "redsink_w7".into(),
                "PREPARE x AS SELECT 'it''s' AS \"$redsink$\"".into(),
            )],
        };
        let sent = prelude(&plan, &[]);
        assert!(sent.starts_with("DO $redsink_$ BEGIN"), "{sent}");
        assert!(sent.ends_with("END $redsink_$;\n"), "{sent}");
        assert!(
            sent.contains("EXECUTE E'PREPARE x AS SELECT ''it''''s'' AS"),
            "{sent}"
        );
    }
}
