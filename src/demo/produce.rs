//! Produce: Debezium events → XADD, in Debezium Server's compact format (field name =
//! key JSON, value = value JSON), sharded over `<stream>:<i>` by a stable hash of the
//! key JSON. Used by `redsink produce`, the demo, the tests and the benchmark.
//!
//! Shard convention: `shard = FNV-1a-64(key JSON bytes) mod shards`. All changes of a
//! row then land, in order, in one stream.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use num_bigint::BigInt;

use crate::keyhash::fnv1a64;
use crate::redis::{Routed, pipeline_by_key};

/// Entries per pipelined XADD round trip.
const PIPELINE: usize = 1000;

/// The shard stream of a key: `<stream>:<FNV-1a-64(key) mod shards>`.
pub fn shard_stream(stream: &str, key_json: &str, shards: u32) -> String {
    let shard = fnv1a64(key_json.as_bytes()) % u64::from(shards.max(1));
    format!("{stream}:{shard}")
}

/// One entry to add: stream and field/value pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub stream: String,
    pub fields: Vec<(String, String)>,
}

/// XADDs entries in pipelined chunks (on a cluster, one pipeline per hash slot and
/// chunk); returns how many were added.
pub async fn xadd_all<C: Routed>(
    conn: &mut C,
    entries: impl IntoIterator<Item = Entry>,
) -> redis::RedisResult<usize> {
    let mut chunk = Vec::with_capacity(PIPELINE);
    let mut total = 0;
    for e in entries {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&e.stream).arg("*");
        for (f, v) in &e.fields {
            cmd.arg(f).arg(v);
        }
        chunk.push((e.stream.into_bytes(), cmd));
        if chunk.len() == PIPELINE {
            total += chunk.len();
            pipeline_by_key(conn, std::mem::take(&mut chunk)).await?;
        }
    }
    total += chunk.len();
    pipeline_by_key(conn, chunk).await?;
    Ok(total)
}

/// A synthetic `orders` workload: Debezium PostgreSQL events without schemas for
///
/// ```sql
/// CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint, status text,
///   amount numeric(12,2), note text, created_at timestamptz, updated_at timestamp,
///   attrs jsonb);
/// ```
///
/// Event `j` (0-based) changes order `j mod keys + 1`: the first event of an order is a
/// create, later ones updates, and with `delete_every = Some(m)` every m-th event is a
/// delete. `source.lsn` grows with `j`, so the newest event of an order is its last one.
#[derive(Debug, Clone, Copy)]
pub struct Orders {
    pub keys: u64,
    pub delete_every: Option<u64>,
}

/// What event `j` of [`Orders`] says about its order.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderState {
    Deleted,
    Row {
        customer_id: i64,
        status: String,
        amount: String,
        note: String,
    },
}

impl Orders {
    pub fn id(&self, j: u64) -> u64 {
        j % self.keys.max(1) + 1
    }

    fn is_delete(&self, j: u64) -> bool {
        self.delete_every
            .is_some_and(|m| m > 0 && (j + 1).is_multiple_of(m))
    }

    /// The state event `j` leaves its order in.
    pub fn state(&self, j: u64) -> OrderState {
        if self.is_delete(j) {
            return OrderState::Deleted;
        }
        let cents = (j * 7919) % 100_000_000;
        OrderState::Row {
            customer_id: i64::try_from(j % 9973).unwrap_or(0),
            status: ["new", "paid", "shipped", "delivered"][usize::try_from(j % 4).unwrap_or(0)]
                .to_string(),
            amount: format!("{}.{:02}", cents / 100, cents % 100),
            note: format!("order note {j}"),
        }
    }

    /// (key JSON, value JSON) of event `j`.
    pub fn event(&self, j: u64) -> (String, String) {
        let id = self.id(j);
        let key = format!("{{\"id\":{id}}}");
        let lsn = 100_000_000 + j * 64;
        let ts_ms = 1_769_000_000_000 + j;
        let source = format!(
            "{{\"version\":\"3.6.3.Final\",\"connector\":\"postgresql\",\"name\":\"shop\",\"ts_ms\":{ts_ms},\
             \"snapshot\":\"false\",\"db\":\"shop\",\"schema\":\"public\",\"table\":\"orders\",\
             \"txId\":{tx},\"lsn\":{lsn},\"xmin\":null}}",
            tx = 1000 + j
        );
        let row = |j: u64| match self.state(j) {
            OrderState::Deleted => "null".to_string(),
            OrderState::Row {
                customer_id,
                status,
                amount,
                note,
            } => {
                let cents: i64 = amount.replace('.', "").parse().unwrap_or(0);
                let amount_b64 = BASE64.encode(BigInt::from(cents).to_signed_bytes_be());
                format!(
                    "{{\"id\":{id},\"customer_id\":{customer_id},\"status\":\"{status}\",\
                     \"amount\":\"{amount_b64}\",\"note\":\"{note}\",\
                     \"created_at\":\"2026-01-15T10:00:00.000000Z\",\
                     \"updated_at\":{updated},\"attrs\":\"{{\\\"j\\\":{j}}}\"}}",
                    updated = 1_769_000_000_000_000_u64 + j * 1000
                )
            }
        };
        let first = j < self.keys;
        let (op, before, after) = if self.is_delete(j) {
            ("d", format!("{{\"id\":{id}}}"), "null".to_string())
        } else if first {
            ("c", "null".to_string(), row(j))
        } else {
            ("u", "null".to_string(), row(j))
        };
        let value = format!(
            "{{\"before\":{before},\"after\":{after},\"source\":{source},\"op\":\"{op}\",\
             \"ts_ms\":{ts_ms},\"transaction\":null}}"
        );
        (key, value)
    }

    /// Event `j` as a sharded compact-format entry.
    pub fn entry(&self, j: u64, stream: &str, shards: u32) -> Entry {
        let (key, value) = self.event(j);
        Entry {
            stream: shard_stream(stream, &key, shards),
            fields: vec![(key, value)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_events_are_valid_debezium_json() {
        let orders = Orders {
            keys: 3,
            delete_every: Some(5),
        };
        for j in 0..10 {
            let (key, value) = orders.event(j);
            let _: serde_json::Value = serde_json::from_str(&key).expect("key JSON");
            let v: serde_json::Value = serde_json::from_str(&value).expect("value JSON");
            let op = v["op"].as_str().expect("op");
            assert_eq!(op == "d", orders.state(j) == OrderState::Deleted, "{j}");
            assert_eq!(op == "c", j < 3 && op != "d");
        }
        let e = orders.entry(0, "shop.public.orders", 8);
        assert!(e.stream.starts_with("shop.public.orders:"));
    }
}
