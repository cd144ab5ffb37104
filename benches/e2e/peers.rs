//! What redsink is compared with on the same rows: the hand-written consumer and
//! Postgres alone.

use super::*;

/// Creates `group` on each stream at `start` (creating the stream); an existing
/// group is fine.
pub(crate) async fn create_groups(
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
pub(crate) async fn naive_apply(tx: &mut sqlx::PgConnection, raw: &[u8]) -> Res<()> {
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
pub(crate) async fn run_naive(
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

/// What Postgres alone did: seconds, and row versions written (rows its statements
/// inserted or updated).
pub(crate) struct PgAlone {
    pub(crate) seconds: f64,
    pub(crate) row_versions: u64,
}

/// COPY text of round `k`: the rows of events `k·keys ..` (each key's k-th version).
fn round_text(orders: &Orders, events: std::ops::Range<u64>) -> String {
    let mut text = String::with_capacity((events.end - events.start) as usize * 160);
    for j in events {
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
    text
}

/// Postgres alone, applying EVERY row version of the events (so it compares like with
/// like with redsink, which writes every version it reads unless two land in one batch):
/// per round of distinct keys (round k = the k-th version of each key: events
/// `k·keys .. (k+1)·keys`), one transaction with one COPY into a staging table and ONE
/// version-guarded `INSERT … SELECT … ON CONFLICT DO UPDATE WHERE version <`. Insert-heavy
/// is one round. The COPY text is built before the clock starts.
pub(crate) async fn run_pg_alone(orders: &Orders, events: u64) -> Res<PgAlone> {
    let pool = PgPool::connect(&pg_url("redsink_bench")).await?;
    pool.execute("TRUNCATE public.orders").await?;
    pool.execute("ALTER TABLE public.orders ADD COLUMN IF NOT EXISTS _v bigint")
        .await?;
    let keys = orders.keys.max(1);
    let rounds: Vec<String> = (0..events.div_ceil(keys))
        .map(|k| round_text(orders, k * keys..((k + 1) * keys).min(events)))
        .collect();
    let mut conn = pool.acquire().await?;
    let start = Instant::now();
    conn.execute(
        "CREATE TEMP TABLE staging (id bigint, customer_id bigint, status text, amount numeric,
                   note text, created_at timestamptz, updated_micros bigint, attrs jsonb, v bigint)
                   ON COMMIT DELETE ROWS",
    )
    .await?;
    let mut row_versions = 0;
    for text in rounds {
        conn.execute("BEGIN").await?;
        let mut copy = conn.copy_in_raw("COPY staging FROM STDIN").await?;
        copy.send(text.into_bytes()).await?;
        copy.finish().await?;
        // The keys of a round are distinct, so no DISTINCT ON is needed.
        row_versions += conn
            .execute(
                "INSERT INTO public.orders AS t (id, customer_id, status, amount, note, created_at, updated_at, attrs, _v)
                 SELECT id, customer_id, status, amount, note, created_at,
                        to_timestamp(updated_micros / 1e6), attrs, v FROM staging
                 ON CONFLICT (id) DO UPDATE SET customer_id = EXCLUDED.customer_id, status = EXCLUDED.status,
                   amount = EXCLUDED.amount, note = EXCLUDED.note, created_at = EXCLUDED.created_at,
                   updated_at = EXCLUDED.updated_at, attrs = EXCLUDED.attrs, _v = EXCLUDED._v
                 WHERE t._v IS NULL OR t._v < EXCLUDED._v",
            )
            .await?
            .rows_affected();
        conn.execute("COMMIT").await?;
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(conn);
    pool.close().await;
    Ok(PgAlone {
        seconds,
        row_versions,
    })
}

/// Fresh streams and table, `o.naive_events` events, then the naive consumer: events/s.
pub(crate) async fn measure_naive(
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
