//! The writer's one-round-trip query: the literals it puts in it (`src/write/literal.rs`)
//! round-trip arbitrary values through a real Postgres, sent as a simple query exactly
//! like the writer sends them, with `standard_conforming_strings` on and off; and the
//! writer's own batches over two tables.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use redsink::batch::Batcher;
use redsink::config::MappingConfig;
use redsink::map::Mapping;
use redsink::table::{TableName, quote_ident};
use redsink::write::literal::{self, HasNul};
use redsink::write::{self, Catalog, Writer};
use sqlx::Connection as _;

use crate::common::TestDb;
use crate::{ITEMS, compact_entry, event, to_change};

/// Texts that mean something to the SQL lexer or the array parser, mixed with arbitrary
/// unicode (NUL included: it must be refused, never sent).
fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\\\\"'{},; \t\r\nNUL$E\u{0}é𝄞]{0,12}",
        Just("NULL".to_string()),
        Just(String::new()),
        Just("'); DROP TABLE lit; --".to_string()),
        Just("\"}', E'\\\\".to_string()),
    ]
}

type Case = (Vec<Option<String>>, Vec<Vec<u8>>, String, bool);
/// What Postgres gives back: the texts, the byte strings, the text, the first bytes.
type Stored = (Vec<Option<String>>, Vec<Vec<u8>>, String, Vec<u8>);

fn arb_case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(proptest::option::weighted(0.8, arb_text()), 0..6),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 0..4),
        arb_text(),
        any::<bool>(),
    )
}

/// The statement for one case, or `None` when a text holds a NUL (then the literal
/// functions must say so).
fn statement(id: usize, (texts, bytes, text, _): &Case) -> Option<String> {
    let mut sql = format!("INSERT INTO lit (id, texts, bytes, one, one_bytes) VALUES ({id}, ");
    let texts_ok = literal::push_text_array(&mut sql, texts.iter().map(Option::as_deref));
    let has_nul = texts.iter().flatten().any(|t| t.contains('\0'));
    assert_eq!(texts_ok.is_err(), has_nul, "{texts:?}");
    sql.push_str("::text[], ");
    literal::push_bytea_array(&mut sql, bytes.iter().map(Vec::as_slice));
    sql.push_str("::bytea[], ");
    let text_ok = literal::push_text(&mut sql, text);
    assert_eq!(
        text_ok,
        if text.contains('\0') {
            Err(HasNul)
        } else {
            Ok(())
        }
    );
    sql.push_str(", ");
    literal::push_bytea(&mut sql, bytes.first().map_or(&[][..], Vec::as_slice));
    sql.push_str("::bytea)");
    (texts_ok.is_ok() && text_ok.is_ok()).then_some(sql)
}

#[test]
fn inline_literals_round_trip_through_postgres() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (db, conn) = rt.block_on(async {
        let db = TestDb::new().await;
        db.exec(
            "CREATE TABLE lit (id int PRIMARY KEY, texts text[], bytes bytea[], one text, \
             one_bytes bytea)",
        )
        .await;
        let conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
        (db, conn)
    });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    });
    // One connection for every case (the SET is the session's); proptest wants a Fn.
    let conn = std::cell::RefCell::new(conn);
    let next = std::cell::Cell::new(0);
    let result = runner.run(&arb_case(), |case| {
        let id = next.get() + 1;
        next.set(id);
        let Some(sql) = statement(id, &case) else {
            return Ok(());
        };
        // Its own query: Postgres lexes a whole simple query before running any of it.
        let conforming = if case.3 { "on" } else { "off" };
        let mut conn = conn.borrow_mut();
        let row: Stored = rt.block_on(async {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET standard_conforming_strings = {conforming}"
            )))
            .execute(&mut *conn)
            .await
            .expect("SET");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            sqlx::query_as("SELECT texts, bytes, one, one_bytes FROM lit WHERE id = $1")
                .bind(i32::try_from(id).expect("few cases"))
                .fetch_one(&mut *conn)
                .await
                .expect("select")
        });
        let (texts, bytes, text, _) = &case;
        prop_assert_eq!(&row.0, texts);
        prop_assert_eq!(&row.1, bytes);
        prop_assert_eq!(&row.2, text);
        prop_assert_eq!(row.3, bytes.first().cloned().unwrap_or_default());
        Ok(())
    });
    rt.block_on(async {
        let _ = conn.into_inner().close().await;
        drop(db);
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The writer's one-round-trip transaction (`src/write/once.rs`) on a batch over two
/// tables: the values that need escaping land as they are; once the connection has
/// prepared the statements, a batch is 1 round trip, and each prepared statement keeps
/// only its own text (not the whole query it was prepared in, which every `EXECUTE`
/// would copy again); a row Postgres rejects still becomes a dead letter (the batch is
/// written again row by row). (A NUL never gets this far: the map step refuses it.)
#[tokio::test]
async fn a_write_over_two_tables_is_one_round_trip_and_still_isolates_rejected_rows() {
    two_tables(true).await;
}

/// A role that may not use PL/pgSQL (`REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC`,
/// as hardened databases do), whose `DO` block prepares the statements: the writer
/// writes with bound parameters instead, and the same rows land.
#[tokio::test]
async fn without_plpgsql_the_writer_binds_its_values_instead() {
    two_tables(false).await;
}

/// The second table of the two-table case.
const OTHERS: &str = r#"o'th\er$redsink$"s"#;

/// The two-table case, as a role that may use PL/pgSQL (and so the statements are
/// prepared by name) or may not.
async fn two_tables(plpgsql: bool) {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    // The second table's name means something to SQL's quotes, to E'' strings and to
    // the dollar quote of the `DO` block that prepares its statement.
    db.exec(&format!(
        "CREATE TABLE public.{} (LIKE public.items INCLUDING ALL)",
        quote_ident(OTHERS)
    ))
    .await;
    write::migrate(&db.pool).await.expect("migrate");
    let role = crate::common::unique("r");
    let mut config = db.postgres(1);
    if !plpgsql {
        db.exec(&format!(
            "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA public, redsink TO {role}; \
             GRANT ALL ON ALL TABLES IN SCHEMA public, redsink TO {role}; \
             GRANT ALL ON ALL SEQUENCES IN SCHEMA redsink TO {role}; \
             REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC"
        ))
        .await;
        config.url = db.url.replacen("postgres@", &format!("{role}@"), 1);
        assert_ne!(
            config.url, db.url,
            "the test database URL names the postgres user"
        );
    }
    let pool = write::connect(&config).await.expect("pg");
    // The owner's catalog (it adds the version column); the role's writer.
    let mut catalog = Catalog::new(db.pool.clone());
    let writer = Writer::new(pool.clone(), "redsink");
    let mut targets = Vec::new();
    for name in ["public.items".to_string(), format!("public.{OTHERS}")] {
        let toml_name = name.replace('\\', "\\\\").replace('"', "\\\"");
        let config: MappingConfig =
            toml::from_str(&format!("streams = [\"s\"]\ntable = \"{toml_name}\""))
                .expect("mapping");
        let table = catalog
            .table(&TableName::parse(&name).expect("name"))
            .await
            .expect("table");
        targets.push((Mapping::compile(0, &config).expect("compiles"), table));
    }
    let names = ["it's", r"a\b", r#"{x,"y"}"#, "NULL", "", "é 𝄞"];
    let mut n = 0;
    let mut batch = |rows: &[(i64, &str)]| {
        let mut batcher = Batcher::new(1000, Duration::from_secs(60));
        for (mapping, table) in &targets {
            for (id, name) in rows {
                n += 1;
                let after = format!(
                    r#"{{"id":{id},"name":{},"qty":{id}}}"#,
                    serde_json::to_string(name).expect("json")
                );
                let entry = compact_entry(n, *id, &event("c", 100 + n, "null", &after));
                batcher.push_row(to_change(mapping, table, &entry), entry, Instant::now());
            }
        }
        batcher.take()
    };
    let rows: Vec<(i64, &str)> = names
        .iter()
        .enumerate()
        .map(|(i, s)| (i as i64 + 1, *s))
        .collect();
    // The first batch on a connection prepares its statements (3 round trips), the next one not.
    let first = batch(&rows);
    let again = batch(&rows);
    let _ = writer.write(&first).await.expect("write");
    // The pool's one connection is the writer's.
    let prepared: Vec<String> = sqlx::query_scalar(
        "SELECT statement FROM pg_prepared_statements WHERE name LIKE 'redsink\\_w%'",
    )
    .fetch_all(&pool)
    .await
    .expect("prepared statements");
    assert_eq!(prepared.len(), if plpgsql { 2 } else { 0 }, "{prepared:?}");
    for text in &prepared {
        assert!(
            text.starts_with("PREPARE redsink_w") && !text.contains("BEGIN"),
            "a prepared statement keeps more than its own text: {text}"
        );
    }
    let before = writer.round_trips();
    let committed = writer.write(&again).await.expect("write");
    if plpgsql {
        assert_eq!(writer.round_trips() - before, 1, "one round trip");
        // Statements dropped behind the writer's back (a pooler's `DISCARD ALL`): the
        // next batch finds them missing, lists what is left and prepares them again.
        sqlx::raw_sql("DEALLOCATE ALL")
            .execute(&pool)
            .await
            .expect("deallocate");
        let before = writer.round_trips();
        let committed = writer.write(&batch(&rows)).await.expect("write");
        assert!(committed.dead().is_empty());
        assert_eq!(
            writer.round_trips() - before,
            3,
            "missing, listed, sent again"
        );
    }
    assert!(committed.dead().is_empty());
    for table in ["items", OTHERS] {
        let stored: Vec<(i32, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, name FROM public.{} ORDER BY id",
            quote_ident(table)
        )))
        .fetch_all(&db.pool)
        .await
        .expect("select");
        let expected: Vec<(i32, Option<String>)> = rows
            .iter()
            .map(|(id, s)| (*id as i32, Some(s.to_string())))
            .collect();
        assert_eq!(stored, expected, "{table}");
    }
    // Too long for varchar(12): a dead letter per table, the rest applied.
    let bad = batch(&[(20, "far too long for twelve"), (21, "fine")]);
    let committed = writer.write(&bad).await.expect("write");
    assert_eq!(committed.dead().len(), 2, "{:?}", committed.dead());
    let fine: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT (SELECT count(*) FROM public.items WHERE id >= 20) + \
         (SELECT count(*) FROM public.{} WHERE id >= 20)",
        quote_ident(OTHERS)
    )))
    .fetch_one(&db.pool)
    .await
    .expect("count");
    assert_eq!(fine, 2);
    if !plpgsql {
        pool.close().await;
        crate::common::drop_role(db, &role).await;
    }
}
