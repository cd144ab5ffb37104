//! Integration tests against real Redis and PostgreSQL servers (see tests/common).
#![allow(
    clippy::too_many_lines,
    reason = "a scenario (XADD, run until drained, assert the rows and the Redis state) reads \
              best top to bottom in one function; the helpers in tests/common keep the limit"
)]

#[path = "../common/mod.rs"]
mod common;

mod binary;
mod chaos;
mod cli;
mod cluster;
mod consumers;
mod convergence;
mod crash;
mod debezium;
mod debezium_tx;
mod deploy;
mod evolution;
mod failover;
mod first_contact;
mod fixtures;
mod literals;
mod load;
mod locks;
mod mapping;
mod migrations;
mod ops;
mod outage;
mod poison;
mod privilege;
mod race;
mod replay;
mod secrets;
mod sentinel;
mod serve;
mod sockets;
mod sync;
mod tls;
mod tombstones;
mod transactions;
mod trim;
mod unusable_key;
mod versions;

/// A Debezium PostgreSQL change event value without schemas.
pub fn event(op: &str, lsn: u64, before: &str, after: &str) -> String {
    format!(
        r#"{{"before":{before},"after":{after},"source":{{"version":"3.6.3.Final","connector":"postgresql","name":"t","ts_ms":1,"snapshot":"false","db":"t","schema":"public","table":"items","txId":1,"lsn":{lsn}}},"op":"{op}","ts_ms":1}}"#
    )
}

/// The key JSON of item `id`.
pub fn key(id: i64) -> String {
    format!(r#"{{"id":{id}}}"#)
}

/// An `after` image of the items table.
pub fn item(id: i64, name: &str, price_b64: &str) -> String {
    format!(r#"{{"id":{id},"name":"{name}","price":"{price_b64}","qty":{id}}}"#)
}

/// Base64 Debezium decimals for numeric(10,2): 19.99 and 24.50.
pub const P_19_99: &str = "B88=";
pub const P_24_50: &str = "CZI=";

/// The table most tests write to.
pub const ITEMS: &str = "CREATE TABLE public.items (id int PRIMARY KEY, name varchar(12), price numeric(10,2), qty int)";

/// A `[[mapping]]` of `<prefix>:items` to public.items.
pub fn items_mapping(prefix: &str) -> String {
    format!("[[mapping]]\nstreams = [\"{prefix}:items\"]\ntable = \"public.items\"\n")
}

/// (id, name, price as text, qty) ordered by id.
pub async fn items(db: &common::TestDb) -> Vec<(i32, Option<String>, Option<String>, Option<i32>)> {
    sqlx::query_as("SELECT id, name, price::text, qty FROM public.items ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("select items")
}

/// Version and xmin of each item: an unchanged xmin proves no write happened.
pub async fn fingerprint(db: &common::TestDb) -> Vec<(i32, Vec<u8>, String)> {
    sqlx::query_as("SELECT id, _redsink_version, xmin::text FROM public.items ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("fingerprint")
}

/// XADDs a change of the item with key `id` (compact format: [`key`] → [`event`]);
/// returns the entry ID.
pub async fn add_change(
    r: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    id: i64,
    op: &str,
    lsn: u64,
    before: &str,
    after: &str,
) -> String {
    common::xadd(r, stream, &key(id), &event(op, lsn, before, after)).await
}

/// Creates items 1..=n at LSNs 11.. on `stream`.
pub async fn add_items(stream: &str, n: i64) {
    add_items_to(&mut common::redis().await, stream, n).await;
}

/// [`add_items`] through the connection `r` (another Redis than the shared one).
pub async fn add_items_to(r: &mut redis::aio::MultiplexedConnection, stream: &str, n: i64) {
    for id in 1..=n {
        add_change(
            r,
            stream,
            id,
            "c",
            10 + id as u64,
            "null",
            &item(id, "x", "B88="),
        )
        .await;
    }
}

/// The `n`-th entry (ID `n-0`) of stream `s` in compact format for item `id`.
pub fn compact_entry(n: u64, id: i64, value: &str) -> redsink::entry::StreamEntry {
    redsink::entry::StreamEntry {
        deliveries: 0,
        stream: std::sync::Arc::from("s"),
        id: redsink::entry::EntryId { ms: n, seq: 0 },
        fields: Some(vec![(key(id).into_bytes(), value.as_bytes().to_vec())]),
    }
}

/// An entry through the real decode and map steps, as the pipeline does it.
pub fn to_change(
    mapping: &redsink::map::Mapping,
    table: &std::sync::Arc<redsink::map::TableSchema>,
    entry: &redsink::entry::StreamEntry,
) -> redsink::map::RowChange {
    let Ok(redsink::decode::Decoded::Change(ev)) =
        redsink::decode::decode(entry, &Default::default())
    else {
        panic!("entry {} decodes to a change", entry.id);
    };
    redsink::map::map_event(mapping, &ev, entry.id, table).expect("maps")
}
