//! Transaction mode against the real Debezium engine: `tests/e2e/debezium_capture.py
//! --transaction-metadata` (`provide.transaction.metadata=true`) writes Debezium's BEGIN/END
//! records to `<prefix>.<variant>.dbz.transaction` and the data events, each carrying its
//! `transaction` block, sharded over two streams per table, in all four Redis-sink formats.
//! Source transactions span `orders` and `order_lines`, whose lines reference their order
//! (`NOT DEFERRABLE`, in the source and in every replica). One redsink pipeline per
//! variant, with `[transactions]`, applies them to a replica database of its own. Each
//! replica ends equal to the source without a dead letter, and an observer reading each
//! replica all along never sees a state between two source transactions: in the source
//! every transaction leaves each order's total equal to the sum of its lines.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;

use crate::common::{self, PgServer, TestDb};
use crate::debezium::{create_source, debezium_python, exec, start_capture};

/// The Redis-sink formats the capture writes (stream infix).
const VARIANTS: [&str; 4] = [
    "compact.plain",
    "compact.schemas",
    "extended.plain",
    "extended.schemas",
];

/// The variant whose pipeline applies transactions larger than `SPLIT_MAX_EVENTS` in
/// pieces (the others apply every transaction whole).
const SPLIT_VARIANT: &str = "extended.plain";
const SPLIT_MAX_EVENTS: usize = 50;
/// The order of the transactions larger than `SPLIT_MAX_EVENTS`: between their pieces
/// its total may differ from its lines, in `SPLIT_VARIANT` only.
const BIG_ORDER: i32 = 30;
/// The last source transaction creates this order.
const MARKER: i32 = 999_999;

/// The mapped tables, in the source and in each replica.
const TABLES: &str = "
CREATE TABLE public.orders (
  id int PRIMARY KEY, customer text NOT NULL, total numeric(12,2) NOT NULL, status text NOT NULL);
CREATE TABLE public.order_lines (
  order_id int NOT NULL REFERENCES public.orders (id) NOT DEFERRABLE, line int NOT NULL,
  sku text NOT NULL, qty int NOT NULL, price numeric(12,2) NOT NULL,
  PRIMARY KEY (order_id, line));
";

/// Captured but mapped by no pipeline: the ENDs list it, redsink must not wait for it.
const AUDIT: &str = "CREATE TABLE public.audit (id serial PRIMARY KEY, what text NOT NULL)";

/// Each row of a table as canonical JSON, ordered by key.
const CANONICAL: [(&str, &str); 2] = [
    (
        "orders",
        "SELECT to_jsonb(q)::text FROM (SELECT id, customer, total, status FROM public.orders) q \
         ORDER BY (q.id)",
    ),
    (
        "order_lines",
        "SELECT to_jsonb(q)::text FROM (SELECT order_id, line, sku, qty, price \
         FROM public.order_lines) q ORDER BY (q.order_id, q.line)",
    ),
];

/// Orders whose total differs from the sum of their lines: one line each,
/// `order <id>: total <t>, lines <sum>`.
const UNBALANCED: &str = "SELECT format('order %s: total %s, lines %s', o.id, o.total, \
  coalesce(sum(l.qty * l.price), 0)) FROM public.orders o \
  LEFT JOIN public.order_lines l ON l.order_id = o.id WHERE o.id <> ALL($1) \
  GROUP BY o.id, o.total HAVING o.total <> coalesce(sum(l.qty * l.price), 0)";

/// Sets the totals of orders `ids` (SQL list) to the sum of their lines.
fn retotal(ids: &str) -> String {
    format!(
        "UPDATE public.orders o SET total = (SELECT coalesce(sum(l.qty * l.price), 0) \
         FROM public.order_lines l WHERE l.order_id = o.id) WHERE o.id IN ({ids});"
    )
}

/// The source transactions, in commit order (each one SQL text).
fn workload() -> Vec<String> {
    let mut txs = Vec::new();
    // New orders: the order, then its lines, then its total (the order row changes twice).
    for o in 10..16 {
        txs.push(format!(
            "BEGIN; INSERT INTO public.orders VALUES ({o}, 'c{o}', 0, 'new'); \
             INSERT INTO public.order_lines SELECT {o}, l, 'sku' || l, l, 2.50 * l \
             FROM generate_series(1, 3) l; {} \
             INSERT INTO public.audit (what) VALUES ('order {o}'); COMMIT;",
            retotal(&o.to_string())
        ));
    }
    // Lines for an order of the snapshot.
    txs.push(format!(
        "BEGIN; INSERT INTO public.order_lines VALUES (1, 1, 'a', 2, 9.99), (1, 2, 'b', 1, 0.01); \
         {} UPDATE public.orders SET status = 'open' WHERE id = 1; COMMIT;",
        retotal("1")
    ));
    // Lines updated and deleted, totals follow.
    txs.push(format!(
        "BEGIN; UPDATE public.order_lines SET qty = qty + 1 WHERE order_id IN (10, 11); \
         DELETE FROM public.order_lines WHERE order_id = 11 AND line = 3; {} COMMIT;",
        retotal("10, 11")
    ));
    // The lines deleted, then their order.
    txs.push(
        "BEGIN; DELETE FROM public.order_lines WHERE order_id = 12; \
         DELETE FROM public.orders WHERE id = 12; COMMIT;"
            .into(),
    );
    // An order deleted and created again with other lines, in one transaction ...
    txs.push(format!(
        "BEGIN; DELETE FROM public.order_lines WHERE order_id = 13; \
         DELETE FROM public.orders WHERE id = 13; \
         INSERT INTO public.orders VALUES (13, 'again', 0, 'new'); \
         INSERT INTO public.order_lines VALUES (13, 7, 'z', 1, 4.00); {} COMMIT;",
        retotal("13")
    ));
    // ... and in two consecutive ones.
    txs.push(
        "BEGIN; DELETE FROM public.order_lines WHERE order_id = 14; \
         DELETE FROM public.orders WHERE id = 14; COMMIT;"
            .into(),
    );
    txs.push(format!(
        "BEGIN; INSERT INTO public.orders VALUES (14, 'back', 0, 'new'); \
         INSERT INTO public.order_lines VALUES (14, 1, 'y', 3, 1.00); {} COMMIT;",
        retotal("14")
    ));
    // A line moves to another order: a key change (delete, tombstone, create).
    txs.push(format!(
        "BEGIN; UPDATE public.order_lines SET order_id = 15, line = 9 \
         WHERE order_id = 10 AND line = 1; {} COMMIT;",
        retotal("10, 15")
    ));
    // A transaction of an unmapped table only.
    txs.push("INSERT INTO public.audit (what) VALUES ('alone')".into());
    // A savepoint rolled back: its line is not in the transaction.
    txs.push(format!(
        "BEGIN; INSERT INTO public.orders VALUES (20, 'sp', 0, 'new'); SAVEPOINT s; \
         INSERT INTO public.order_lines VALUES (20, 1, 'gone', 1, 1.00); ROLLBACK TO SAVEPOINT s; \
         INSERT INTO public.order_lines VALUES (20, 2, 'kept', 2, 1.00); {} COMMIT;",
        retotal("20")
    ));
    // One statement (autocommit).
    txs.push("INSERT INTO public.orders VALUES (21, 'single', 0, 'new')".into());
    // Bigger than SPLIT_MAX_EVENTS: created with 120 lines, all updated, all deleted.
    let big = BIG_ORDER;
    txs.push(format!(
        "BEGIN; INSERT INTO public.orders VALUES ({big}, 'big', 0, 'new'); \
         INSERT INTO public.order_lines SELECT {big}, l, 'bulk', 1, 1.00 \
         FROM generate_series(1, 120) l; {} COMMIT;",
        retotal(&big.to_string())
    ));
    txs.push(format!(
        "BEGIN; UPDATE public.order_lines SET qty = 2 WHERE order_id = {big}; {} COMMIT;",
        retotal(&big.to_string())
    ));
    txs.push(format!(
        "BEGIN; DELETE FROM public.order_lines WHERE order_id = {big} AND line > 1; {} \
         UPDATE public.orders SET status = 'trimmed' WHERE id = {big}; COMMIT;",
        retotal(&big.to_string())
    ));
    txs
}

/// Two transactions that overlap in time: the one that started first commits last, so
/// Debezium emits it last (commit order), its events' LSNs below the other's.
async fn overlapping(source: &PgPool) {
    let mut first = source.acquire().await.expect("connection");
    let mut second = source.acquire().await.expect("connection");
    for sql in [
        "BEGIN",
        "INSERT INTO public.orders VALUES (40, 'first', 0, 'new')",
        "INSERT INTO public.order_lines VALUES (40, 1, 'f', 1, 7.00)",
        "UPDATE public.orders SET total = 3.00 WHERE id = 15",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *first)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; INSERT INTO public.orders VALUES (41, 'second', 0, 'new'); \
         INSERT INTO public.order_lines VALUES (41, 1, 's', 2, 3.00); {} COMMIT;",
        retotal("41")
    )))
    .execute(&mut *second)
    .await
    .expect("the second transaction");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{} COMMIT", retotal("15, 40"))))
        .execute(&mut *first)
        .await
        .expect("the first transaction");
}

/// Reads `pool` until `stop`: (successful reads, every unbalanced order seen, as
/// [`UNBALANCED`] words it). Orders `exempt` are not checked.
async fn observe(pool: PgPool, exempt: Vec<i32>, stop: Arc<AtomicBool>) -> (u64, Vec<String>) {
    let mut reads = 0;
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // An error (the table locked while redsink adds its version column) is no read.
        if let Ok(rows) = sqlx::query_scalar::<_, String>(UNBALANCED)
            .bind(&exempt)
            .fetch_all(&pool)
            .await
        {
            reads += 1;
            seen.extend(rows);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (reads, seen)
}

async fn canonical(pool: &PgPool) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    for (table, query) in CANONICAL {
        let rows: Vec<String> = sqlx::query_scalar(query)
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        out.push((table, rows));
    }
    out
}

/// The `[transactions]` section and the sharded mappings of one variant.
fn variant_config(prefix: &str, variant: &str) -> String {
    let max_events = if variant == SPLIT_VARIANT {
        format!("max_events = {SPLIT_MAX_EVENTS}\n")
    } else {
        String::new()
    };
    let mut text =
        format!("[transactions]\nstream = \"{prefix}.{variant}.dbz.transaction\"\n{max_events}");
    for table in ["orders", "order_lines"] {
        text.push_str(&format!(
            "[[mapping]]\nstreams = [\"{prefix}.{variant}.dbz.public.{table}:{{0..1}}\"]\n\
             table = \"public.{table}\"\n"
        ));
    }
    text
}

/// The mapped streams of `variant`.
fn data_streams(prefix: &str, variant: &str) -> Vec<String> {
    let mut streams = Vec::new();
    for table in ["orders", "order_lines"] {
        for shard in 0..2 {
            streams.push(format!("{prefix}.{variant}.dbz.public.{table}:{shard}"));
        }
    }
    streams
}

/// One replica: its database, pipeline and observer.
struct Replica {
    variant: &'static str,
    db: TestDb,
    running: common::Running,
    observer: tokio::task::JoinHandle<(u64, Vec<String>)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_debezium_capture_with_transaction_metadata_lands_whole_transactions() {
    let python = debezium_python();
    let pg = PgServer::start_logical();
    let source = create_source(&pg).await;
    exec(&source, TABLES).await;
    exec(&source, AUDIT).await;
    // The snapshot: orders without lines (events without a transaction, applied directly).
    exec(
        &source,
        "INSERT INTO public.orders VALUES (1, 'snap1', 0, 'new'), (2, 'snap2', 0, 'new'), \
         (3, 'snap3', 0, 'new')",
    )
    .await;

    let prefix = common::unique("dbztx");
    let stop = Arc::new(AtomicBool::new(false));
    let mut replicas = Vec::new();
    for variant in VARIANTS {
        let db = TestDb::new().await;
        db.exec(TABLES).await;
        let exempt = if variant == SPLIT_VARIANT {
            vec![BIG_ORDER]
        } else {
            Vec::new()
        };
        let observer = tokio::spawn(observe(db.pool.clone(), exempt, stop.clone()));
        let config = common::config(&db, "c1", &variant_config(&prefix, variant));
        replicas.push(Replica {
            variant,
            db,
            running: common::Running::start(config),
            observer,
        });
    }

    let capture = start_capture(
        &python,
        &pg,
        &prefix,
        "public.orders,public.order_lines,public.audit",
        &["--transaction-metadata"],
    );
    for sql in workload() {
        exec(&source, &sql).await;
    }
    overlapping(&source).await;
    exec(
        &source,
        &format!(
            "BEGIN; INSERT INTO public.orders VALUES ({MARKER}, 'marker', 5.00, 'new'); \
             INSERT INTO public.order_lines VALUES ({MARKER}, 1, 'm', 1, 5.00); COMMIT;"
        ),
    )
    .await;

    let started = Instant::now();
    for replica in &replicas {
        loop {
            let marker: Option<i32> =
                sqlx::query_scalar("SELECT order_id FROM public.order_lines WHERE order_id = $1")
                    .bind(MARKER)
                    .fetch_optional(&replica.db.pool)
                    .await
                    .expect("marker");
            if marker.is_some() {
                break;
            }
            assert!(
                !replica.running.is_finished(),
                "{}: redsink stopped",
                replica.variant
            );
            if started.elapsed() > Duration::from_secs(180) {
                panic!(
                    "{}: the marker transaction was not applied within 180 s; {}",
                    replica.variant,
                    transaction_state(&replica.db.pool).await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(capture);

    let expected = canonical(&source).await;
    assert_eq!(
        expected[0].1.len(),
        14,
        "orders in the source: 3 of the snapshot, 10..=15 but 12, 20, 21, 30, 40, 41, marker"
    );
    check_capture(&prefix).await;
    let mut r = common::redis().await;
    for replica in replicas {
        let variant = replica.variant;
        let stats = replica.running.stop().await.expect("a clean stop");
        let (reads, unbalanced) = replica.observer.await.expect("observer");
        let actual = canonical(&replica.db.pool).await;
        for ((table, want), (_, got)) in expected.iter().zip(&actual) {
            assert_eq!(got, want, "{variant}: {table} differs from the source");
        }
        assert!(reads > 10, "{variant}: the observer read {reads} times");
        assert!(
            unbalanced.is_empty(),
            "{variant}: the replica showed states no source transaction left: {unbalanced:?}"
        );
        assert_eq!(stats.dead_lettered, 0, "{variant}: {stats:?}");
        let tx_stream = format!("{prefix}.{variant}.dbz.transaction");
        for stream in data_streams(&prefix, variant)
            .into_iter()
            .chain([tx_stream])
        {
            assert_eq!(
                common::pending(&mut r, &stream, "redsink").await,
                0,
                "{variant}: pending on {stream}"
            );
            assert!(
                common::dead_letters(&mut r, &stream).await.is_empty(),
                "{variant}: dead letters on {stream}"
            );
        }
        let staged: i64 = sqlx::query_scalar("SELECT count(*) FROM redsink.tx_events")
            .fetch_one(&replica.db.pool)
            .await
            .expect("redsink.tx_events");
        assert_eq!(staged, 0, "{variant}: events still staged");
    }
    source.close().await;
    common::cleanup_streams(&prefix).await;
}

/// What redsink's transaction tables hold: for a failure message.
async fn transaction_state(pool: &PgPool) -> String {
    let staged: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tx_id, count(*) FROM redsink.tx_events GROUP BY tx_id ORDER BY min(staged_at) LIMIT 12",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let progress: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT stream, end_id, applied FROM redsink.tx_progress")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let late: Vec<String> = sqlx::query_scalar("SELECT tx_id FROM redsink.tx_late LIMIT 12")
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    format!(
        "staged (tx_id, events): {staged:?}; progress (stream, end_id, applied): {progress:?}; late: {late:?}"
    )
}

/// What the capture wrote (compact, plain): every streamed event carries a `transaction`
/// block of its source transaction, every snapshot event none, and the ENDs count exactly
/// the streamed events of each table.
async fn check_capture(prefix: &str) {
    let mut r = common::redis().await;
    let base = format!("{prefix}.compact.plain.dbz");
    let mut streamed: BTreeMap<String, u64> = BTreeMap::new();
    for table in ["orders", "order_lines", "audit"] {
        for shard in 0..2 {
            for value in values(&mut r, &format!("{base}.public.{table}:{shard}")).await {
                let Some(event) = value else { continue }; // a tombstone
                let tx = &event["transaction"];
                if event["op"] == "r" {
                    assert!(tx.is_null(), "a snapshot event in a transaction: {event}");
                    continue;
                }
                let id = tx["id"].as_str().unwrap_or_default();
                let tx_id = event["source"]["txId"].to_string();
                assert!(
                    id.split(':').next() == Some(tx_id.as_str()),
                    "transaction {id} of an event of txId {tx_id}"
                );
                *streamed.entry(format!("public.{table}")).or_default() += 1;
            }
        }
    }
    let mut ended: BTreeMap<String, u64> = BTreeMap::new();
    let (mut begins, mut ends) = (0, 0);
    for record in values(&mut r, &format!("{base}.transaction")).await {
        let record = record.expect("a transaction record has a value");
        match record["status"].as_str() {
            Some("BEGIN") => begins += 1,
            Some("END") => {
                ends += 1;
                let collections = record["data_collections"]
                    .as_array()
                    .unwrap_or_else(|| panic!("an END without data_collections: {record}"));
                for c in collections {
                    let name = c["data_collection"].as_str().expect("data_collection");
                    let n = c["event_count"].as_u64().expect("event_count");
                    *ended.entry(name.to_string()).or_default() += n;
                }
            }
            _ => panic!("not a BEGIN or END: {record}"),
        }
    }
    assert_eq!(begins, ends, "every BEGIN has its END");
    assert!(ends >= 20, "{ends} transactions");
    assert_eq!(ended, streamed, "events per table: the ENDs vs the streams");
}

/// The values of a compact-format stream: `None` for a tombstone (`default`).
async fn values(r: &mut redis::aio::MultiplexedConnection, stream: &str) -> Vec<Option<Value>> {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(r)
        .await
        .expect("XRANGE");
    entries
        .into_iter()
        .map(|(id, fields)| {
            let value = fields
                .into_values()
                .next()
                .unwrap_or_else(|| panic!("{stream} {id}: no field"));
            (value != "default").then(|| {
                serde_json::from_str(&value)
                    .unwrap_or_else(|e| panic!("{stream} {id}: {e}: {value}"))
            })
        })
        .collect()
}
