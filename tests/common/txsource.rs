//! A transactional source for the transaction-mode tests: orders and their lines, changed
//! by source transactions that keep every order's `total` equal to the sum of its lines'
//! amounts and `n_lines` equal to their count; emitted as Debezium Server's Redis sink
//! does (BEGIN on `<prefix>.transaction`, each data event on its table's shard stream
//! `<prefix>.public.<table>:<FNV-1a-64(key) mod 4>`, then END with the counts per data
//! collection); and the replica it should produce. The tests in tests/it/transactions.rs
//! sample the replica's consistency while redsink applies.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redsink::demo::produce::{Entry, shard_stream, xadd_all};

use super::TestDb;

/// Shard streams per table.
pub const SHARDS: u32 = 4;

/// The replica tables; with `fk`, lines reference their order (NOT DEFERRABLE).
pub fn tables(fk: bool) -> String {
    let fk = if fk {
        " REFERENCES public.orders (id)"
    } else {
        ""
    };
    format!(
        "CREATE TABLE public.orders (id bigint PRIMARY KEY, total bigint NOT NULL, n_lines int NOT NULL);
         CREATE TABLE public.order_lines (order_id bigint NOT NULL{fk}, line_no int NOT NULL,
           amount bigint NOT NULL, PRIMARY KEY (order_id, line_no));"
    )
}

/// The two `[[mapping]]` blocks of the source's shard streams.
pub fn mappings(prefix: &str) -> String {
    let n = SHARDS - 1;
    format!(
        "[[mapping]]\nstreams = [\"{prefix}.public.orders:{{0..{n}}}\"]\ntable = \"public.orders\"\n\
         [[mapping]]\nstreams = [\"{prefix}.public.order_lines:{{0..{n}}}\"]\ntable = \"public.order_lines\"\n"
    )
}

/// The `[transactions]` section for the source's transaction stream, plus `extra` keys.
pub fn transactions(prefix: &str, extra: &str) -> String {
    format!("[transactions]\nstream = \"{prefix}.transaction\"\n{extra}\n")
}

/// Every data stream of the source (the transaction stream not included).
pub fn data_streams(prefix: &str) -> Vec<String> {
    ["orders", "order_lines"]
        .iter()
        .flat_map(|t| (0..SHARDS).map(move |k| format!("{prefix}.public.{t}:{k}")))
        .collect()
}

/// A seed from `REDSINK_TEST_SEED`, else a fresh one; printed so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("REDSINK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
    eprintln!("{test}: REDSINK_TEST_SEED={seed}");
    seed
}

#[derive(Default, Clone)]
struct Order {
    lines: BTreeMap<i32, i64>,
    next_line: i32,
}

impl Order {
    fn total(&self) -> i64 {
        self.lines.values().sum()
    }

    fn json(&self, id: i64) -> String {
        format!(
            r#"{{"id":{id},"total":{},"n_lines":{}}}"#,
            self.total(),
            self.lines.len()
        )
    }

    fn add(&mut self, amount: i64) -> i32 {
        self.next_line += 1;
        self.lines.insert(self.next_line, amount);
        self.next_line
    }
}

/// One change of a row: table ("orders" or "order_lines"), op, key JSON, before, after.
struct Change {
    table: &'static str,
    op: &'static str,
    key: String,
    before: String,
    after: String,
}

fn order_change(
    op: &'static str,
    id: i64,
    before: Option<&Order>,
    after: Option<&Order>,
) -> Change {
    Change {
        table: "orders",
        op,
        key: format!(r#"{{"id":{id}}}"#),
        before: before.map_or("null".into(), |o| o.json(id)),
        after: after.map_or("null".into(), |o| o.json(id)),
    }
}

fn line_change(
    op: &'static str,
    order: i64,
    line: i32,
    before: Option<i64>,
    after: Option<i64>,
) -> Change {
    let json = |a: i64| format!(r#"{{"order_id":{order},"line_no":{line},"amount":{a}}}"#);
    Change {
        table: "order_lines",
        op,
        key: format!(r#"{{"order_id":{order},"line_no":{line}}}"#),
        before: before.map_or("null".into(), json),
        after: after.map_or("null".into(), json),
    }
}

/// One source transaction as Debezium Server writes it: BEGIN, the data events, END.
pub struct Transaction {
    /// The transaction's key as redsink keys it: the source `txId`. Debezium's PostgreSQL
    /// connector writes `<txId>:<lsn>` with the LSN of the record carrying it: each data
    /// event its own, BEGIN its first event's, END its commit's (seen with the real engine).
    pub id: String,
    begin_id: String,
    end_id: String,
    /// The orders it touched.
    pub orders: Vec<i64>,
    prefix: String,
    /// (table, key JSON, value JSON) in total_order.
    events: Vec<(&'static str, String, String)>,
}

impl Transaction {
    /// The XADDs, in order; the END promises `missing` more order_lines events than sent.
    pub fn entries(&self, missing: u64) -> Vec<Entry> {
        let tx_stream = format!("{}.transaction", self.prefix);
        let (begin_key, end_key) = (
            format!(r#"{{"id":"{}"}}"#, self.begin_id),
            format!(r#"{{"id":"{}"}}"#, self.end_id),
        );
        let count = |t: &str| self.events.iter().filter(|e| e.0 == t).count() as u64;
        let (orders, lines) = (count("orders"), count("order_lines") + missing);
        let begin = format!(
            r#"{{"status":"BEGIN","id":"{}","ts_ms":1,"event_count":null,"data_collections":null}}"#,
            self.begin_id
        );
        let end = format!(
            r#"{{"status":"END","id":"{}","ts_ms":1,"event_count":{},"data_collections":[{{"data_collection":"public.orders","event_count":{orders}}},{{"data_collection":"public.order_lines","event_count":{lines}}}]}}"#,
            self.end_id,
            orders + lines
        );
        let entry = |stream: String, key: &str, value: String| Entry {
            stream,
            fields: vec![(key.to_string(), value)],
        };
        let mut out = vec![entry(tx_stream.clone(), &begin_key, begin)];
        for (table, k, v) in &self.events {
            let stream = shard_stream(&format!("{}.public.{table}", self.prefix), k, SHARDS);
            out.push(entry(stream, k, v.clone()));
        }
        out.push(entry(tx_stream, &end_key, end));
        out
    }
}

/// The source database: its orders, a seeded RNG, and its transaction ids and LSNs.
pub struct TxSource {
    prefix: String,
    rng: u64,
    orders: BTreeMap<i64, Order>,
    next_order: i64,
    tx_id: u64,
    lsn: u64,
}

impl TxSource {
    pub fn new(prefix: &str, seed: u64) -> Self {
        Self {
            prefix: prefix.to_string(),
            rng: seed,
            orders: BTreeMap::new(),
            next_order: 1,
            tx_id: 700,
            lsn: 10_000,
        }
    }

    /// splitmix64: 0..n.
    fn pick(&mut self, n: usize) -> usize {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n.max(1) as u64) as usize
    }

    fn amount(&mut self) -> i64 {
        1 + self.pick(1000) as i64
    }

    /// An existing order, chosen at random (there is one).
    fn some_order(&mut self) -> i64 {
        let n = self.pick(self.orders.len());
        *self.orders.keys().nth(n).expect("an order")
    }

    /// The next transaction of the workload: creates, updates, deletes and transfers.
    pub fn next_transaction(&mut self) -> Transaction {
        if self.orders.len() < 20 {
            return self.create_order();
        }
        match self.pick(100) {
            0..30 => self.create_order(),
            30..65 => {
                let id = self.some_order();
                self.update_order(id)
            }
            65..80 => {
                let id = self.some_order();
                self.delete_order(id)
            }
            _ => self.transfer(),
        }
    }

    /// A new order with 1–6 lines: the order first, then its lines.
    pub fn create_order(&mut self) -> Transaction {
        let id = self.next_order;
        self.next_order += 1;
        let mut order = Order::default();
        let mut lines = Vec::new();
        for _ in 0..=self.pick(6) {
            let amount = self.amount();
            let no = order.add(amount);
            lines.push(line_change("c", id, no, None, Some(amount)));
        }
        let mut changes = vec![order_change("c", id, None, Some(&order))];
        changes.extend(lines);
        self.orders.insert(id, order);
        self.finish(vec![id], changes)
    }

    /// 1–3 line changes (add, remove, change an amount) and the order's new header,
    /// written before or after its lines.
    pub fn update_order(&mut self, id: i64) -> Transaction {
        let mut order = self.orders[&id].clone();
        let mut changes = Vec::new();
        for _ in 0..=self.pick(3) {
            let (what, line) = (self.pick(3), self.pick(order.lines.len()));
            let line = *order.lines.keys().nth(line).expect("a line");
            if what == 0 && order.lines.len() < 8 {
                let amount = self.amount();
                let no = order.add(amount);
                changes.push(line_change("c", id, no, None, Some(amount)));
            } else if what == 1 && order.lines.len() > 1 {
                let old = order.lines.remove(&line);
                changes.push(line_change("d", id, line, old, None));
            } else {
                let amount = self.amount();
                order.lines.insert(line, amount);
                changes.push(line_change("u", id, line, None, Some(amount)));
            }
        }
        let header = order_change("u", id, None, Some(&order));
        if self.pick(2) == 0 {
            changes.insert(0, header);
        } else {
            changes.push(header);
        }
        self.orders.insert(id, order);
        self.finish(vec![id], changes)
    }

    /// The order's lines, then the order (as a source with a foreign key must).
    pub fn delete_order(&mut self, id: i64) -> Transaction {
        let order = self.orders.remove(&id).expect("the order exists");
        let mut changes: Vec<Change> = order
            .lines
            .iter()
            .map(|(&no, &a)| line_change("d", id, no, Some(a), None))
            .collect();
        changes.push(order_change("d", id, Some(&order), None));
        self.finish(vec![id], changes)
    }

    /// Moves an amount from a line of one order to lines of one or two others.
    fn transfer(&mut self) -> Transaction {
        let want = 2 + self.pick(2);
        let mut ids = vec![self.some_order()];
        for _ in 0..20 {
            let id = self.some_order();
            if ids.len() < want && !ids.contains(&id) {
                ids.push(id);
            }
        }
        let mut left = 0;
        let mut changes = Vec::new();
        for (n, &id) in ids.iter().enumerate() {
            let mut order = self.orders[&id].clone();
            let line = *order
                .lines
                .keys()
                .nth(self.pick(order.lines.len()))
                .expect("a line");
            let old = order.lines[&line];
            let new = if n == 0 {
                left = self.pick(old as usize + 1) as i64;
                old - left
            } else if n + 1 == ids.len() {
                old + left
            } else {
                let part = self.pick(left as usize + 1) as i64;
                left -= part;
                old + part
            };
            order.lines.insert(line, new);
            changes.push(line_change("u", id, line, None, Some(new)));
            changes.push(order_change("u", id, None, Some(&order)));
            self.orders.insert(id, order);
        }
        self.finish(ids, changes)
    }

    /// Numbers the changes (txId, LSNs, total_order, data_collection_order).
    fn finish(&mut self, orders: Vec<i64>, changes: Vec<Change>) -> Transaction {
        self.tx_id += 1;
        let tx = self.tx_id;
        let begin_id = format!("{tx}:{}", self.lsn + 8);
        let mut per_table: BTreeMap<&str, u64> = BTreeMap::new();
        let events = changes
            .into_iter()
            .enumerate()
            .map(|(n, c)| {
                self.lsn += 8;
                let dco = per_table.entry(c.table).or_default();
                *dco += 1;
                let value = format!(
                    r#"{{"before":{},"after":{},"source":{{"version":"3.6.0.Final","connector":"postgresql","name":"app","ts_ms":{tx},"snapshot":"false","db":"app","sequence":"[null,\"{lsn}\"]","schema":"public","table":"{table}","txId":{tx},"lsn":{lsn},"xmin":null}},"op":"{}","ts_ms":{tx},"transaction":{{"id":"{tx}:{lsn}","total_order":{},"data_collection_order":{dco}}}}}"#,
                    c.before,
                    c.after,
                    c.op,
                    n + 1,
                    lsn = self.lsn,
                    table = c.table,
                );
                (c.table, c.key, value)
            })
            .collect();
        self.lsn += 16;
        Transaction {
            id: tx.to_string(),
            begin_id,
            end_id: format!("{tx}:{}", self.lsn),
            orders,
            prefix: self.prefix.clone(),
            events,
        }
    }

    /// Where a transaction of `len` entries (BEGIN, events, END) is split between two
    /// writes of the sink, and the pause between them: one in three with two events or more.
    pub fn batch_boundary(&mut self, len: usize) -> Option<(usize, Duration)> {
        if len < 4 || self.pick(3) != 0 {
            return None;
        }
        let at = 2 + self.pick(len - 3);
        Some((at, Duration::from_millis(3 + self.pick(8) as u64)))
    }

    /// The orders table the source holds: (id, total, n_lines) by id.
    pub fn orders_rows(&self) -> Vec<(i64, i64, i32)> {
        self.orders
            .iter()
            .map(|(&id, o)| (id, o.total(), o.lines.len() as i32))
            .collect()
    }

    /// The order_lines table the source holds: (order_id, line_no, amount) by key.
    pub fn lines_rows(&self) -> Vec<(i64, i32, i64)> {
        self.orders
            .iter()
            .flat_map(|(&id, o)| o.lines.iter().map(move |(&no, &a)| (id, no, a)))
            .collect()
    }
}

/// XADDs one transaction's entries (one pipeline), as the Redis sink does.
pub async fn emit(conn: &mut redis::aio::MultiplexedConnection, entries: Vec<Entry>) {
    xadd_all(conn, entries).await.expect("XADD a transaction");
}

/// Emits `n` transactions of `source` at `per_second`; returns the source when done.
/// One in three is written in two pipelines 3–10 ms apart, as when a transaction
/// straddles two of Debezium Server's batches: a replica that applies what it has read
/// then shows the first part alone for a while.
pub fn spawn_producer(
    mut source: TxSource,
    n: u32,
    per_second: u32,
) -> tokio::task::JoinHandle<TxSource> {
    tokio::spawn(async move {
        let mut conn = super::redis().await;
        let start = tokio::time::Instant::now();
        for i in 0..n {
            let at = start + Duration::from_secs_f64(f64::from(i) / f64::from(per_second));
            tokio::time::sleep_until(at).await;
            let mut entries = source.next_transaction().entries(0);
            if let Some((at, pause)) = source.batch_boundary(entries.len()) {
                let rest = entries.split_off(at);
                emit(&mut conn, entries).await;
                tokio::time::sleep(pause).await;
                entries = rest;
            }
            emit(&mut conn, entries).await;
        }
        let took = start.elapsed().as_secs_f64();
        eprintln!(
            "produced {n} transactions in {took:.1} s ({:.0}/s)",
            f64::from(n) / took
        );
        source
    })
}

/// The replica: (orders, order_lines) ordered by key.
pub async fn replica(db: &TestDb) -> (Vec<(i64, i64, i32)>, Vec<(i64, i32, i64)>) {
    let orders = sqlx::query_as("SELECT id, total, n_lines FROM public.orders ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("select orders");
    let lines = sqlx::query_as(
        "SELECT order_id, line_no, amount FROM public.order_lines ORDER BY order_id, line_no",
    )
    .fetch_all(&db.pool)
    .await
    .expect("select order_lines");
    (orders, lines)
}

/// Waits until the replica equals the source; else the differences after `timeout`.
pub async fn wait_replica(db: &TestDb, source: &TxSource, timeout: Duration) -> Result<(), String> {
    let want = (source.orders_rows(), source.lines_rows());
    let start = Instant::now();
    loop {
        let got = replica(db).await;
        if got == want {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "the replica differs from the source after {timeout:?}: orders {}; lines {}",
                diff(&want.0, &got.0),
                diff(&want.1, &got.1)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn diff<T: Ord + std::fmt::Debug>(want: &[T], got: &[T]) -> String {
    let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(5).collect();
    let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(5).collect();
    format!(
        "{} vs {} rows, missing {missing:?}, unexpected {extra:?}",
        want.len(),
        got.len()
    )
}
