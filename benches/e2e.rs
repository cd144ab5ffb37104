//! End-to-end benchmark: `scripts/bench.sh [options]` (or `cargo bench --bench e2e -- …`).
//!
//! For each workload it fills S shard streams with N generated Debezium events (an
//! 8-column `orders` table, schemas off, ~500 bytes each) and measures, on the same
//! machine and data:
//! - redsink: the release binary, run until every entry is applied and acknowledged —
//!   events/s, peak RSS, CPU seconds (from /proc);
//! - naive: a hand-written consumer as teams write it today (XREADGROUP, one upsert
//!   statement per event in a transaction per batch, XACK);
//! - postgres alone: what Postgres absorbs for the same rows when handed them directly
//!   (COPY into a staging table, then one `INSERT … SELECT … ON CONFLICT DO UPDATE
//!   WHERE version <`).
//!
//! Latency mode (`--latency RATE`): a producer XADDs at RATE events/s for `--seconds`;
//! each row records when Postgres wrote it (a trigger), so latency = write − XADD.
//!
//! Options: `--events N` (default 1000000), `--shards S` (8), `--workloads insert,update`,
//! `--naive-events N` (default min(events, 200000): the naive consumer is slow),
//! `--latency RATE`, `--seconds T` (10), `--max-batch B` (4096).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redsink::demo::produce::{OrderState, Orders, xadd_all};
use sqlx::{Executor, PgPool};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const TABLE_DDL: &str = "CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint,
  status text, amount numeric(12,2), note text, created_at timestamptz, updated_at timestamp,
  attrs jsonb)";

struct Options {
    events: u64,
    shards: u32,
    workloads: Vec<String>,
    naive_events: u64,
    latency: Option<u64>,
    seconds: u64,
    max_batch: usize,
}

fn options() -> Res<Options> {
    let mut o = Options {
        events: 1_000_000,
        shards: 8,
        workloads: vec!["insert".into(), "update".into()],
        naive_events: 0,
        latency: None,
        seconds: 10,
        max_batch: 4096,
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--events" => o.events = value()?.parse()?,
            "--shards" => o.shards = value()?.parse()?,
            "--workloads" => o.workloads = value()?.split(',').map(String::from).collect(),
            "--naive-events" => o.naive_events = value()?.parse()?,
            "--latency" => o.latency = Some(value()?.parse()?),
            "--seconds" => o.seconds = value()?.parse()?,
            "--max-batch" => o.max_batch = value()?.parse()?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if o.naive_events == 0 {
        o.naive_events = o.events.min(200_000);
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

/// True when `group` has read and acknowledged everything on every stream.
async fn drained(redis: &mut MultiplexedConnection, streams: &[String], group: &str) -> Res<bool> {
    for s in streams {
        let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(s)
            .query_async(redis)
            .await
            .unwrap_or_default();
        let Some(g) = groups.iter().find(
            |g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes()),
        ) else {
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
    Ok(true)
}

/// Peak RSS (MiB) and CPU seconds of a running process, from /proc.
fn proc_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime and stime are 14th and
    // 15th overall, i.e. 12th and 13th after it. Clock ticks are 100 per second on Linux.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (hwm_kb / 1024.0, (ticks(11) + ticks(12)) / 100.0)
}

struct RunResult {
    seconds: f64,
    rss_mib: f64,
    cpu_s: f64,
    /// From redsink's final stats line: (batches, postgres statements, redis commands).
    trips: (u64, u64, u64),
}

/// `name: N` from redsink's `Stats { … }` debug output.
fn stat(line: &str, name: &str) -> u64 {
    let key = format!("{name}: ");
    line.find(&key)
        .and_then(|i| {
            line[i + key.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The redsink binary, running with a config for the bench streams.
struct Redsink {
    child: std::process::Child,
    dir: PathBuf,
    started: Instant,
    usage: (f64, f64),
}

impl Redsink {
    fn start(prefix: &str, max_batch: usize) -> Res<Self> {
        let dir = std::env::temp_dir().join(format!("redsink-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config: PathBuf = dir.join("bench.toml");
        std::fs::write(
            &config,
            format!(
                "[redis]\nurl = \"{}\"\nconsumer = \"bench\"\n[postgres]\nurl = \"{}\"\n\
                 [batch]\nmax_batch = {max_batch}\nmax_delay = \"20ms\"\n\
                 [[mapping]]\nstreams = [\"{prefix}:*\"]\ntable = \"public.orders\"\n",
                redis_url(),
                pg_url("redsink_bench"),
            ),
        )?;
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_redsink"))
            .args(["run", "--config"])
            .arg(&config)
            .env("REDSINK_LOG", "warn,redsink::pipeline=info")
            .stderr(std::fs::File::create(dir.join("redsink.log"))?)
            .spawn()?;
        Ok(Self {
            child,
            dir,
            started: Instant::now(),
            usage: (0.0, 0.0),
        })
    }

    /// Waits until `streams` are drained; returns seconds since start, then stops it.
    async fn finish(
        mut self,
        redis: &mut MultiplexedConnection,
        streams: &[String],
    ) -> Res<RunResult> {
        while !drained(redis, streams, "redsink").await? {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("redsink exited early: {status}").into());
            }
            self.usage = proc_usage(self.child.id());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seconds = self.started.elapsed().as_secs_f64();
        let last = proc_usage(self.child.id());
        if last.0 > 0.0 {
            self.usage = last;
        }
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait()?;
        let log = std::fs::read_to_string(self.dir.join("redsink.log")).unwrap_or_default();
        let stopped = log.lines().rfind(|l| l.contains("stopped")).unwrap_or("");
        let trips = (
            stat(stopped, "batches"),
            stat(stopped, "pg_round_trips"),
            stat(stopped, "redis_round_trips"),
        );
        std::fs::remove_dir_all(&self.dir).ok();
        Ok(RunResult {
            seconds,
            rss_mib: self.usage.0,
            cpu_s: self.usage.1,
            trips,
        })
    }
}

/// Creates `group` on each stream at `start` (creating the stream); an existing
/// group is fine.
async fn create_groups(
    redis: &mut MultiplexedConnection,
    streams: &[String],
    group: &str,
    start: &str,
) {
    for s in streams {
        let _: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(s)
            .arg(group)
            .arg(start)
            .arg("MKSTREAM")
            .query_async(redis)
            .await;
    }
}

/// The naive consumer's statement for one event: an upsert, or a delete.
async fn naive_apply(tx: &mut sqlx::PgConnection, raw: &[u8]) -> Res<()> {
    const UPSERT: &str = "INSERT INTO public.orders (id, customer_id, status, amount, note, created_at, updated_at, attrs)
               VALUES ($1, $2, $3, $4::numeric, $5, $6::timestamptz, to_timestamp($7::float8 / 1e6), $8::jsonb)
               ON CONFLICT (id) DO UPDATE SET customer_id = EXCLUDED.customer_id, status = EXCLUDED.status,
                 amount = EXCLUDED.amount, note = EXCLUDED.note, created_at = EXCLUDED.created_at,
                 updated_at = EXCLUDED.updated_at, attrs = EXCLUDED.attrs";
    let v: serde_json::Value = serde_json::from_slice(raw)?;
    let p = &v["after"];
    if p.is_null() {
        sqlx::query("DELETE FROM public.orders WHERE id = $1")
            .bind(v["before"]["id"].as_i64())
            .execute(&mut *tx)
            .await?;
        return Ok(());
    }
    let amount = {
        use base64::Engine as _;
        let raw =
            base64::engine::general_purpose::STANDARD.decode(p["amount"].as_str().unwrap_or(""))?;
        let cents = num_bigint::BigInt::from_signed_bytes_be(&raw);
        format!("{}", cents) // scale applied below
    };
    sqlx::query(UPSERT)
        .bind(p["id"].as_i64())
        .bind(p["customer_id"].as_i64())
        .bind(p["status"].as_str())
        .bind(format!("{amount}e-2"))
        .bind(p["note"].as_str())
        .bind(p["created_at"].as_str())
        .bind(p["updated_at"].as_i64().map(|u| u as f64))
        .bind(p["attrs"].as_str())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A consumer as teams write it by hand: read a batch, upsert each event with its own
/// statement inside one transaction, XACK. Returns events/s.
async fn run_naive(
    redis: &mut MultiplexedConnection,
    pool: &PgPool,
    streams: &[String],
    events: u64,
) -> Res<f64> {
    create_groups(redis, streams, "naive", "0").await;
    let start = Instant::now();
    let mut done = 0u64;
    while done < events {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg("naive")
            .arg("naive")
            .arg("COUNT")
            .arg(500)
            .arg("STREAMS");
        for s in streams {
            cmd.arg(s);
        }
        for _ in streams {
            cmd.arg(">");
        }
        let reply: redis::streams::StreamReadReply = cmd.query_async(redis).await?;
        if reply.keys.is_empty() {
            break;
        }
        let mut tx = pool.begin().await?;
        let mut acks: Vec<(String, Vec<String>)> = Vec::new();
        for key in &reply.keys {
            let mut ids = Vec::new();
            for entry in &key.ids {
                ids.push(entry.id.clone());
                done += 1;
                if let Some(redis::Value::BulkString(raw)) = entry.map.values().next() {
                    naive_apply(&mut tx, raw).await?;
                }
            }
            acks.push((key.key.clone(), ids));
        }
        tx.commit().await?;
        let mut pipe = redis::pipe();
        for (s, ids) in &acks {
            pipe.cmd("XACK").arg(s).arg("naive").arg(ids).ignore();
        }
        pipe.query_async::<()>(redis).await?;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// Postgres alone: COPY the decoded rows into a staging table, then one set-based
/// version-guarded upsert. Returns events/s.
async fn run_pg_alone(orders: &Orders, events: u64) -> Res<f64> {
    let pool = PgPool::connect(&pg_url("redsink_bench")).await?;
    pool.execute("TRUNCATE public.orders").await?;
    pool.execute("ALTER TABLE public.orders ADD COLUMN IF NOT EXISTS _v bigint")
        .await?;
    let mut text = String::with_capacity(events as usize * 160);
    for j in 0..events {
        let id = orders.id(j);
        if let OrderState::Row {
            customer_id,
            status,
            amount,
            note,
        } = orders.state(j)
        {
            let micros = 1_769_000_000_000_000_u64 + j * 1000;
            text.push_str(&format!(
                "{id}\t{customer_id}\t{status}\t{amount}\t{note}\t2026-01-15T10:00:00Z\t{micros}\t{{\"j\": {j}}}\t{j}\n"
            ));
        }
    }
    let mut conn = pool.acquire().await?;
    let start = Instant::now();
    conn.execute("CREATE TEMP TABLE staging (id bigint, customer_id bigint, status text, amount numeric,
                   note text, created_at timestamptz, updated_micros bigint, attrs jsonb, v bigint)")
        .await?;
    let mut copy = conn.copy_in_raw("COPY staging FROM STDIN").await?;
    copy.send(text.into_bytes()).await?;
    copy.finish().await?;
    conn.execute(
        "INSERT INTO public.orders AS t (id, customer_id, status, amount, note, created_at, updated_at, attrs, _v)
         SELECT DISTINCT ON (id) id, customer_id, status, amount, note, created_at,
                to_timestamp(updated_micros / 1e6), attrs, v FROM staging ORDER BY id, v DESC
         ON CONFLICT (id) DO UPDATE SET customer_id = EXCLUDED.customer_id, status = EXCLUDED.status,
           amount = EXCLUDED.amount, note = EXCLUDED.note, created_at = EXCLUDED.created_at,
           updated_at = EXCLUDED.updated_at, attrs = EXCLUDED.attrs, _v = EXCLUDED._v
         WHERE t._v IS NULL OR t._v < EXCLUDED._v",
    )
    .await?;
    Ok(events as f64 / start.elapsed().as_secs_f64())
}

/// Fresh streams and table, `o.naive_events` events, then the naive consumer: events/s.
async fn measure_naive(
    o: &Options,
    workload: &str,
    redis: &mut MultiplexedConnection,
    prefix: &str,
    streams: &[String],
) -> Res<f64> {
    let pool = reset(redis, prefix).await?;
    let naive_orders = Orders {
        keys: if workload == "update" {
            (o.naive_events / 5).max(1)
        } else {
            o.naive_events
        },
        delete_every: None,
    };
    xadd_all(
        redis,
        (0..o.naive_events).map(|j| naive_orders.entry(j, prefix, o.shards)),
    )
    .await?;
    run_naive(redis, &pool, streams, o.naive_events).await
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

    let naive_eps = measure_naive(o, workload, &mut redis, prefix, &streams).await?;
    let pg_eps = run_pg_alone(&orders, o.events).await?;

    let (batches, pg, rd) = r.trips;
    let per = |n: u64| n as f64 / batches.max(1) as f64;
    println!(
        "| {workload} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1}× | {:.2}× | {:.0} | {:.1} | {:.1} | {batches} | {:.2} | {:.2} |",
        o.events,
        rows,
        redsink_eps,
        naive_eps,
        pg_eps,
        redsink_eps / naive_eps,
        redsink_eps / pg_eps,
        r.rss_mib,
        r.cpu_s,
        produce_s,
        per(pg),
        per(rd),
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
    let redsink = Redsink::start(prefix, o.max_batch)?;
    produce_stamped(&mut redis, o, rate, prefix).await?;
    let r = redsink.finish(&mut redis, &streams).await?;
    let mut lat: Vec<f64> = sqlx::query_scalar(
        "SELECT ((extract(epoch FROM written_at) * 1e6 - note::bigint) / 1000.0)::float8 FROM public.orders",
    )
    .fetch_all(&pool)
    .await?;
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "| latency | {rate}/s × {} s | {} rows | p50 {:.1} ms | p99 {:.1} ms | max {:.1} ms | RSS {:.0} MiB |",
        o.seconds,
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        r.rss_mib
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let o = options()?;
    if let Some(rate) = o.latency {
        return latency(&o, rate).await;
    }
    println!(
        "| workload | events | rows | redsink ev/s | naive ev/s ({} events) | postgres alone ev/s | vs naive | vs postgres alone | redsink peak RSS MiB | redsink CPU s | produce s | batches | postgres round trips per batch | redis round trips per batch |",
        o.naive_events
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for w in &o.workloads {
        throughput(&o, w).await?;
    }
    Ok(())
}
