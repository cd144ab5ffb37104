//! End-to-end benchmark: `scripts/bench.sh [options]` (or `cargo bench --bench e2e -- …`).
//!
//! For each workload it fills S shard streams with N generated Debezium events (an
//! 8-column `orders` table, schemas off, ~500 bytes each) and measures, on the same
//! machine and data:
//! - redsink: the release binary, run until every entry is applied and acknowledged —
//!   events/s, peak RSS, CPU seconds (from /proc);
//! - competent: the consumer a good team writes (benches/e2e/competent.rs: XREADGROUP
//!   COUNT 500, newest version per key, one set-based guarded statement, pipelined XACK);
//! - naive: a hand-written consumer as teams often write it (XREADGROUP, one upsert
//!   statement per event in a transaction per batch, XACK);
//! - postgres alone: what Postgres absorbs for the same row versions when handed them
//!   directly: per round of distinct keys (round k = every key's k-th version), one COPY
//!   into a staging table and one `INSERT … SELECT … ON CONFLICT DO UPDATE WHERE
//!   version <` (peers.rs). Both sides report the row versions they wrote.
//!
//! Two more workloads: `tables200` (tables.rs: the same creates in one table and spread
//! over 200 tables × S shards) and `tx` (tx.rs: source transactions of an order and its
//! lines, redsink with and without `[transactions]`).
//!
//! Latency mode (`--latency RATE`): a producer XADDs at RATE events/s for `--seconds`;
//! each row records when Postgres wrote it (a trigger), so latency = write − XADD. With
//! `--workloads tx` (and no other) it measures both transaction-workload modes instead.
//!
//! Options: `--events N` (default 1000000), `--shards S` (8),
//! `--workloads insert,update,tables200,tx` (the default: all four),
//! `--naive-events N` (default min(events, 200000): the naive consumer is slow),
//! `--tables-events N` (default min(events, 100000)), `--tx-events N` (default
//! min(events, 300000)), `--latency RATE`, `--seconds T` (10), `--max-batch B` (default:
//! none, redsink runs its default config).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redsink::demo::produce::{OrderState, Orders, xadd_all};
use sqlx::{Executor, PgPool};

mod competent;
mod peers;
mod tables;
mod tx;
mod under_test;

use competent::run_competent;
use peers::{create_groups, measure_naive, run_pg_alone};
use under_test::{Probe, Redsink, RunResult, row_versions};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const TABLE_DDL: &str = "CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint,
  status text, amount numeric(12,2), note text, created_at timestamptz, updated_at timestamp,
  attrs jsonb)";

struct Options {
    events: u64,
    shards: u32,
    workloads: Vec<String>,
    naive_events: u64,
    tables_events: u64,
    tx_events: u64,
    latency: Option<u64>,
    seconds: u64,
    /// `[batch] max_batch` for redsink; `None`: its default config, as users run it.
    max_batch: Option<usize>,
}

fn options() -> Res<Options> {
    let mut o = Options {
        events: 1_000_000,
        shards: 8,
        workloads: ["insert", "update", "tables200", "tx"]
            .map(String::from)
            .to_vec(),
        naive_events: 0,
        tables_events: 0,
        tx_events: 0,
        latency: None,
        seconds: 10,
        max_batch: None,
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--events" => o.events = value()?.parse()?,
            "--shards" => o.shards = value()?.parse()?,
            "--workloads" => o.workloads = value()?.split(',').map(String::from).collect(),
            "--naive-events" => o.naive_events = value()?.parse()?,
            "--tables-events" => o.tables_events = value()?.parse()?,
            "--tx-events" => o.tx_events = value()?.parse()?,
            "--latency" => o.latency = Some(value()?.parse()?),
            "--seconds" => o.seconds = value()?.parse()?,
            "--max-batch" => o.max_batch = Some(value()?.parse()?),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if o.naive_events == 0 {
        o.naive_events = o.events.min(200_000);
    }
    if o.tables_events == 0 {
        o.tables_events = o.events.min(100_000);
    }
    if o.tx_events == 0 {
        o.tx_events = o.events.min(300_000);
    }
    Ok(o)
}

fn redis_url() -> String {
    std::env::var("REDSINK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn pg_admin_url() -> String {
    std::env::var("REDSINK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The bench database, without TLS: local Postgres often offers TLS (Debian turns it on),
/// and the default `sslmode=prefer` would then measure encryption too, on every side.
fn pg_url(db: &str) -> String {
    let admin = pg_admin_url();
    match admin.rsplit_once('/') {
        Some((head, _)) => format!("{head}/{db}?sslmode=disable"),
        None => admin,
    }
}

/// A fresh `redsink_bench` database with the orders table; fresh streams.
async fn reset(redis: &mut MultiplexedConnection, prefix: &str) -> Res<PgPool> {
    let admin = PgPool::connect(&pg_admin_url()).await?;
    admin
        .execute("DROP DATABASE IF EXISTS redsink_bench WITH (FORCE)")
        .await?;
    admin.execute("CREATE DATABASE redsink_bench").await?;
    admin.close().await;
    let pool = PgPool::connect(&pg_url("redsink_bench")).await?;
    pool.execute(TABLE_DDL).await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(redis)
        .await?;
    if !keys.is_empty() {
        let () = redis::cmd("DEL").arg(keys).query_async(redis).await?;
    }
    Ok(pool)
}

fn streams(prefix: &str, shards: u32) -> Vec<String> {
    (0..shards).map(|i| format!("{prefix}:{i}")).collect()
}

/// True when `group` has read and acknowledged everything on every stream (one pipeline
/// of `XINFO GROUPS`, a stream per command, in chunks of 500).
async fn drained(redis: &mut MultiplexedConnection, streams: &[String], group: &str) -> Res<bool> {
    for chunk in streams.chunks(500) {
        let mut pipe = redis::pipe();
        for s in chunk {
            pipe.cmd("XINFO").arg("GROUPS").arg(s);
        }
        let Ok(replies) = pipe
            .query_async::<Vec<Vec<HashMap<String, redis::Value>>>>(redis)
            .await
        else {
            return Ok(false);
        };
        for groups in &replies {
            let Some(g) = groups.iter().find(|g| {
                matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes())
            }) else {
                return Ok(false);
            };
            let int = |k: &str| match g.get(k) {
                Some(redis::Value::Int(n)) => Some(*n),
                _ => None,
            };
            if int("lag") != Some(0) || int("pending") != Some(0) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

async fn throughput(o: &Options, workload: &str) -> Res<()> {
    let mut redis = redis::Client::open(redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let prefix = "bench.orders";
    let keys = if workload == "update" {
        (o.events / 5).max(1)
    } else {
        o.events
    };
    let orders = Orders {
        keys,
        delete_every: None,
    };
    let streams = streams(prefix, o.shards);

    let pool = reset(&mut redis, prefix).await?;
    let t = Instant::now();
    xadd_all(
        &mut redis,
        (0..o.events).map(|j| orders.entry(j, prefix, o.shards)),
    )
    .await?;
    let produce_s = t.elapsed().as_secs_f64();
    let r = Redsink::start(prefix, o.max_batch)?
        .finish(&mut redis, &streams)
        .await?;
    let redsink_eps = o.events as f64 / r.seconds;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM public.orders")
        .fetch_one(&pool)
        .await?;
    // Counted by Postgres: redsink's connections have closed, so their counts are in.
    let redsink_versions = row_versions(&pool, &["public.orders"]).await?;

    // The same entries, still in the streams, through the competent consumer.
    pool.execute("TRUNCATE public.orders").await?;
    let competent_eps = run_competent(&mut redis, &pool, &streams, o.events).await?;
    let naive_eps = measure_naive(o, workload, &mut redis, prefix, &streams).await?;
    let pg = run_pg_alone(&orders, o.events).await?;
    let pg_vps = pg.row_versions as f64 / pg.seconds;
    let redsink_vps = redsink_versions as f64 / r.seconds;
    print_throughput(&ThroughputRow {
        workload,
        events: o.events,
        rows,
        versions: (redsink_versions, pg.row_versions),
        eps: (redsink_eps, competent_eps, naive_eps),
        pg_vps,
        vs_pg: redsink_vps / pg_vps,
        run: &r,
        produce_s,
    })
}

/// One line of the throughput table.
struct ThroughputRow<'a> {
    workload: &'a str,
    events: u64,
    rows: i64,
    /// Row versions written: (redsink, postgres alone).
    versions: (i64, u64),
    /// Events/s: (redsink, competent, naive).
    eps: (f64, f64, f64),
    /// Postgres alone, row versions/s.
    pg_vps: f64,
    /// redsink's row versions/s over Postgres alone's.
    vs_pg: f64,
    run: &'a RunResult,
    produce_s: f64,
}

fn throughput_header(o: &Options) {
    println!(
        "| workload | events | rows | row versions written: redsink / postgres alone | redsink ev/s | competent consumer ev/s | naive ev/s ({} events) | postgres alone row versions/s | vs competent | vs naive | vs postgres alone, per row version | redsink peak RSS MiB | redsink CPU s | redsink CPU µs/event | produce s | batches | postgres round trips per batch | redis round trips per batch |",
        o.naive_events
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
}

fn print_throughput(t: &ThroughputRow) -> Res<()> {
    let (redsink, competent, naive) = t.eps;
    let r = t.run;
    println!(
        "| {} | {} | {} | {} / {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}× | {:.1}× | {:.2}× | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.2} | {:.2} |",
        t.workload,
        t.events,
        t.rows,
        t.versions.0,
        t.versions.1,
        redsink,
        competent,
        naive,
        t.pg_vps,
        redsink / competent,
        redsink / naive,
        t.vs_pg,
        r.rss_mib,
        r.cpu_s,
        r.cpu_s * 1e6 / t.events.max(1) as f64,
        t.produce_s,
        r.trips.0,
        r.pg_per_batch(),
        r.redis_per_batch(),
    );
    std::io::stdout().flush()?;
    Ok(())
}

/// Produces at `rate` for `o.seconds`: every 10 ms, rate/100 events; each note
/// carries its XADD time (µs).
async fn produce_stamped(
    redis: &mut MultiplexedConnection,
    o: &Options,
    rate: u64,
    prefix: &str,
) -> Res<()> {
    let total = rate * o.seconds;
    let orders = Orders {
        keys: total,
        delete_every: None,
    };
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut j = 0;
    while j < total {
        tick.tick().await;
        let now_us = chrono::Utc::now().timestamp_micros();
        let batch: Vec<_> = (j..(j + per_tick).min(total))
            .map(|k| {
                let mut e = orders.entry(k, prefix, o.shards);
                e.fields[0].1 = e.fields[0]
                    .1
                    .replace(&format!("order note {k}"), &format!("{now_us}"));
                e
            })
            .collect();
        j += batch.len() as u64;
        xadd_all(redis, batch).await?;
    }
    Ok(())
}

async fn latency(o: &Options, rate: u64) -> Res<()> {
    let mut redis = redis::Client::open(redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let prefix = "bench.latency";
    let streams = streams(prefix, o.shards);
    let pool = reset(&mut redis, prefix).await?;
    pool.execute(
        "ALTER TABLE public.orders ADD COLUMN written_at timestamptz;
         CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN NEW.written_at := clock_timestamp(); RETURN NEW; END $$;
         CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON public.orders FOR EACH ROW EXECUTE FUNCTION stamp();",
    )
    .await?;
    // Create the groups first so redsink reads only what the producer sends from now on.
    create_groups(&mut redis, &streams, "redsink", "$").await;
    let mut redsink = Redsink::start(prefix, o.max_batch)?;
    redsink.ready(&mut redis, &streams[0]).await?;
    produce_stamped(&mut redis, o, rate, prefix).await?;
    let r = redsink.finish(&mut redis, &streams).await?;
    let lat: Vec<f64> = sqlx::query_scalar(
        "SELECT ((extract(epoch FROM written_at) * 1e6 - note::bigint) / 1000.0)::float8 FROM public.orders",
    )
    .fetch_all(&pool)
    .await?;
    print_latency("orders", rate, o.seconds, lat, r.rss_mib);
    Ok(())
}

/// One latency line: percentiles of `lat` (ms).
fn print_latency(what: &str, rate: u64, seconds: u64, mut lat: Vec<f64>, rss_mib: f64) {
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "| latency {what} | {rate}/s × {seconds} s | {} rows | p50 {:.1} ms | p99 {:.1} ms | max {:.1} ms | RSS {rss_mib:.0} MiB |",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN),
    );
}

#[tokio::main]
async fn main() -> Res<()> {
    let o = options()?;
    if let Some(rate) = o.latency {
        // Only when asked for: `--latency RATE` alone measures the orders table.
        if o.workloads == ["tx"] {
            return tx::tx_latency(&o, rate).await;
        }
        return latency(&o, rate).await;
    }
    let mut header = true;
    for w in &o.workloads {
        match w.as_str() {
            "insert" | "update" => {
                if std::mem::take(&mut header) {
                    throughput_header(&o);
                }
                throughput(&o, w).await?;
            }
            "tables200" => {
                println!();
                tables::tables200(&o).await?;
            }
            "tx" => {
                println!();
                tx::tx(&o).await?;
            }
            other => return Err(format!("unknown workload {other}").into()),
        }
    }
    Ok(())
}
