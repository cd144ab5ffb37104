//! CPU micro-benchmark of the per-event hot path, no servers: decode → map → batch of
//! the e2e benchmark's `orders` events (Debezium PostgreSQL envelope, schemas off, the
//! JSON converter; `redsink::demo::produce::Orders`).
//!
//! `cargo bench --bench hot -- [--events N] [--rounds R] [--workload insert|update]`
//! prints ns per event (the best of R rounds: the machine is shared). For instruction
//! counts, which do not jitter:
//!
//! ```sh
//! valgrind --tool=callgrind --toggle-collect='hot::run' \
//!   target/release/deps/hot-<hash> --events 20000 --rounds 1
//! ```
//! then Ir / events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redsink::batch::Batcher;
use redsink::config::{DecodeConfig, MappingConfig};
use redsink::decode::{Decoded, decode};
use redsink::demo::produce::Orders;
use redsink::entry::{EntryId, StreamEntry};
use redsink::map::{Column, ColumnType, Mapping, TableSchema, map_event};
use redsink::table::TableName;

// As the binary: the allocator is part of the cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Entries per batch, as redsink's default `max_batch`.
const BATCH: usize = 4096;

/// The bench's `orders` table, as the catalog reads it.
fn orders_table() -> Res<Arc<TableSchema>> {
    let col = |name: &str, ty: &str, scale: Option<i32>, precision: Option<u32>| Column {
        name: name.into(),
        sql_type: ty.into(),
        ty: ColumnType {
            name: ty.into(),
            scale,
            precision,
        },
        is_array: false,
    };
    Ok(Arc::new(TableSchema {
        name: TableName::parse("public.orders")?,
        columns: vec![
            col("id", "int8", None, None),
            col("customer_id", "int8", None, None),
            col("status", "text", None, None),
            col("amount", "numeric", Some(2), None),
            col("note", "text", None, None),
            col("created_at", "timestamptz", None, Some(6)),
            col("updated_at", "timestamp", None, Some(6)),
            col("attrs", "jsonb", None, None),
        ],
        unique_keys: vec![vec![0]],
    }))
}

/// `events` entries of the workload, on 8 shard streams as the e2e benchmark writes them.
fn entries(events: u64, update: bool) -> Vec<StreamEntry> {
    // insert: every event creates its own order; update: 1,000 orders changed in turn.
    let orders = Orders {
        keys: if update { 1000 } else { events },
        delete_every: None,
    };
    let streams: Vec<Arc<str>> = (0..8)
        .map(|s| Arc::from(format!("bench.orders:{s}")))
        .collect();
    (0..events)
        .map(|j| {
            let (key, value) = orders.event(j);
            StreamEntry {
                stream: streams[usize::try_from(j % 8).unwrap_or(0)].clone(),
                id: EntryId {
                    ms: 1_000 + j,
                    seq: 0,
                },
                fields: Some(vec![(key.into_bytes(), value.into_bytes())]),
                deliveries: 0,
            }
        })
        .collect()
}

/// The measured loop: decode, map and batch every entry; returns rows batched.
#[inline(never)]
fn run(
    entries: Vec<StreamEntry>,
    decode_config: &DecodeConfig,
    mapping: &Mapping,
    table: &Arc<TableSchema>,
) -> Res<usize> {
    let mut batcher = Batcher::new(BATCH, Duration::from_secs(1));
    let now = Instant::now();
    let mut rows = 0;
    for entry in entries {
        let Decoded::Change(event) = decode(&entry, decode_config)? else {
            return Err("a skip".into());
        };
        let change = map_event(mapping, &event, entry.id, table)?;
        batcher.push_row(change, entry, now);
        if batcher.len() == BATCH {
            rows += batcher.take().row_count();
        }
    }
    rows += batcher.take().row_count();
    Ok(rows)
}

fn main() -> Res<()> {
    let (mut events, mut rounds, mut update) = (200_000_u64, 5_u32, false);
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--events" => events = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            "--workload" => update = value()? == "update",
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let config: MappingConfig =
        toml::from_str("streams = [\"bench.orders:*\"]\ntable = \"public.orders\"\n")?;
    let mapping = Mapping::compile(0, &config)?;
    let table = orders_table()?;
    let decode_config = DecodeConfig::default();
    let mut best = f64::INFINITY;
    for _ in 0..rounds.max(1) {
        let input = entries(events, update);
        let t = Instant::now();
        let rows = run(input, &decode_config, &mapping, &table)?;
        let ns = t.elapsed().as_secs_f64() * 1e9 / events as f64;
        best = best.min(ns);
        println!("round: {ns:.0} ns/event ({rows} rows)");
    }
    let workload = if update { "update" } else { "insert" };
    println!("hot {workload}: {events} events, best {best:.0} ns/event");
    Ok(())
}
