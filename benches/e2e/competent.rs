//! The consumer a good team writes in an afternoon: batched, pipelined and version
//! guarded. Per round: one `XREADGROUP COUNT 500` over every stream, the batch reduced
//! to the newest version per key, then ONE statement (implicit transaction: one round
//! trip) that deletes and upserts the whole batch from `unnest` arrays with a
//! `version <` guard, then one pipelined XACK. It keeps no tombstones (a delete followed
//! by an older upsert in a later batch brings the row back): a cost redsink pays and it
//! does not, so the comparison flatters it.

use super::*;

/// One round's rows as parallel arrays (the statement's parameters).
#[derive(Default)]
struct Arrays {
    id: Vec<i64>,
    customer_id: Vec<Option<i64>>,
    status: Vec<Option<String>>,
    amount: Vec<Option<String>>,
    note: Vec<Option<String>>,
    created_at: Vec<Option<String>>,
    updated_micros: Vec<Option<i64>>,
    attrs: Vec<Option<String>>,
    version: Vec<i64>,
    deleted: Vec<bool>,
}

const APPLY: &str = "WITH b AS (
    SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::numeric[], $5::text[],
                         $6::timestamptz[], $7::int8[], $8::jsonb[], $9::int8[], $10::bool[])
      AS b(id, customer_id, status, amount, note, created_at, updated_micros, attrs, v, del)),
  d AS (DELETE FROM public.orders o USING b
        WHERE b.del AND o.id = b.id AND (o._v IS NULL OR o._v < b.v))
INSERT INTO public.orders AS t (id, customer_id, status, amount, note, created_at, updated_at, attrs, _v)
SELECT id, customer_id, status, amount, note, created_at, to_timestamp(updated_micros / 1e6), attrs, v
FROM b WHERE NOT b.del
ON CONFLICT (id) DO UPDATE SET customer_id = EXCLUDED.customer_id, status = EXCLUDED.status,
  amount = EXCLUDED.amount, note = EXCLUDED.note, created_at = EXCLUDED.created_at,
  updated_at = EXCLUDED.updated_at, attrs = EXCLUDED.attrs, _v = EXCLUDED._v
WHERE t._v IS NULL OR t._v < EXCLUDED._v";

/// The newest change per key of one round's entries, as arrays.
fn arrays(reply: &redis::streams::StreamReadReply) -> Res<Arrays> {
    let mut newest: HashMap<i64, (i64, serde_json::Value)> = HashMap::new();
    for key in &reply.keys {
        for entry in &key.ids {
            let Some(redis::Value::BulkString(raw)) = entry.map.values().next() else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_slice(raw)?;
            let version = v["source"]["lsn"].as_i64().unwrap_or(0);
            let image = if v["after"].is_null() {
                &v["before"]
            } else {
                &v["after"]
            };
            let Some(id) = image["id"].as_i64() else {
                continue;
            };
            if newest.get(&id).is_none_or(|(old, _)| *old < version) {
                newest.insert(id, (version, v));
            }
        }
    }
    let mut a = Arrays::default();
    for (id, (version, v)) in newest {
        let p = &v["after"];
        a.id.push(id);
        a.version.push(version);
        a.deleted.push(p.is_null());
        a.customer_id.push(p["customer_id"].as_i64());
        a.status.push(p["status"].as_str().map(String::from));
        a.amount.push(match p["amount"].as_str() {
            Some(b64) => {
                use base64::Engine as _;
                let raw = base64::engine::general_purpose::STANDARD.decode(b64)?;
                Some(format!(
                    "{}e-2",
                    num_bigint::BigInt::from_signed_bytes_be(&raw)
                ))
            }
            None => None,
        });
        a.note.push(p["note"].as_str().map(String::from));
        a.created_at
            .push(p["created_at"].as_str().map(String::from));
        a.updated_micros.push(p["updated_at"].as_i64());
        a.attrs.push(p["attrs"].as_str().map(String::from));
    }
    Ok(a)
}

/// Runs the competent consumer over `streams` until `events` entries are acknowledged:
/// events/s.
pub(crate) async fn run_competent(
    redis: &mut MultiplexedConnection,
    pool: &PgPool,
    streams: &[String],
    events: u64,
) -> Res<f64> {
    pool.execute("ALTER TABLE public.orders ADD COLUMN IF NOT EXISTS _v bigint")
        .await?;
    create_groups(redis, streams, "competent", "0").await;
    let start = Instant::now();
    let mut done = 0u64;
    while done < events {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg("competent")
            .arg("c")
            .arg("COUNT")
            .arg(500);
        cmd.arg("BLOCK").arg(1000).arg("STREAMS").arg(streams);
        for _ in streams {
            cmd.arg(">");
        }
        let reply: redis::streams::StreamReadReply = cmd.query_async(redis).await?;
        if reply.keys.is_empty() {
            break;
        }
        let a = arrays(&reply)?;
        sqlx::query(APPLY)
            .bind(&a.id)
            .bind(&a.customer_id)
            .bind(&a.status)
            .bind(&a.amount)
            .bind(&a.note)
            .bind(&a.created_at)
            .bind(&a.updated_micros)
            .bind(&a.attrs)
            .bind(&a.version)
            .bind(&a.deleted)
            .execute(pool)
            .await?;
        let mut pipe = redis::pipe();
        for key in &reply.keys {
            let ids: Vec<&str> = key.ids.iter().map(|e| e.id.as_str()).collect();
            done += ids.len() as u64;
            pipe.cmd("XACK")
                .arg(&key.key)
                .arg("competent")
                .arg(ids)
                .ignore();
        }
        pipe.query_async::<()>(redis).await?;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}
