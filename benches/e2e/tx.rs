//! Transaction mode (issue 15): source transactions of one order and 3–5 lines (5 events
//! on average) over two tables, as Debezium's Redis sink writes them: BEGIN on
//! `<prefix>.transaction`, each data event (with its `transaction` block) on its table's
//! shard stream `<prefix>.public.orders:<i>` / `<prefix>.public.order_lines:<i>`, then
//! END with the counts per data collection. redsink at its default config with
//! `[transactions] stream = "<prefix>.transaction"` is compared with the same events
//! without the section (per-event mode: each event applied as it comes).
//!
//! A run counts as finished when the data streams are drained AND the last transaction's
//! rows are in both tables: in transaction mode an entry is acknowledged once staged, and
//! transactions are applied in commit order, so the last one present means all are.

use base64::Engine as _;
use num_bigint::BigInt;
use redsink::demo::produce::{Entry, shard_stream};

use super::*;

const LINES_DDL: &str = "CREATE TABLE public.order_lines (id bigint PRIMARY KEY,
  order_id bigint NOT NULL, sku text, qty integer, price numeric(12,2), note text)";

const PREFIX: &str = "bench.tx";

/// The two modes compared.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    PerEvent,
    Transactions,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::PerEvent => "per-event (no [transactions])",
            Mode::Transactions => "[transactions]",
        }
    }

    /// redsink's config body: the two mappings, and the section in transaction mode.
    fn config(self, shards: u32) -> String {
        let last = shards.max(1) - 1;
        let section = match self {
            Mode::PerEvent => String::new(),
            Mode::Transactions => format!("[transactions]\nstream = \"{PREFIX}.transaction\"\n"),
        };
        format!(
            "{section}[[mapping]]\nstreams = [\"{PREFIX}.public.orders:{{0..{last}}}\"]\ntable = \"public.orders\"\n\
             [[mapping]]\nstreams = [\"{PREFIX}.public.order_lines:{{0..{last}}}\"]\ntable = \"public.order_lines\"\n"
        )
    }
}

/// The data streams of both tables.
fn data_streams(shards: u32) -> Vec<String> {
    ["orders", "order_lines"]
        .iter()
        .flat_map(|t| (0..shards).map(move |s| format!("{PREFIX}.public.{t}:{s}")))
        .collect()
}

fn b64_cents(cents: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(BigInt::from(cents).to_signed_bytes_be())
}

/// The generator's position: transactions, lines and change events so far.
#[derive(Default)]
pub(crate) struct Shop {
    pub(crate) transactions: u64,
    pub(crate) lines: u64,
    /// Data events (not BEGIN/END); also the LSN sequence.
    pub(crate) events: u64,
}

/// The source transaction an event belongs to.
struct Tx {
    /// Debezium's transaction id, `txId:lsn`.
    id: String,
    tx_id: u64,
    ts_ms: u64,
}

impl Tx {
    /// BEGIN (`counts` = None) or END with the event counts of (orders, lines), on the
    /// transaction stream.
    fn marker(&self, counts: Option<(u64, u64)>) -> Entry {
        let Tx { id, ts_ms, .. } = self;
        let value = match counts {
            None => format!(
                "{{\"status\":\"BEGIN\",\"id\":\"{id}\",\"ts_ms\":{ts_ms},\"event_count\":null,\"data_collections\":null}}"
            ),
            Some((orders, lines)) => format!(
                "{{\"status\":\"END\",\"id\":\"{id}\",\"ts_ms\":{ts_ms},\"event_count\":{n},\"data_collections\":[\
                 {{\"data_collection\":\"public.orders\",\"event_count\":{orders}}},\
                 {{\"data_collection\":\"public.order_lines\",\"event_count\":{lines}}}]}}",
                n = orders + lines
            ),
        };
        Entry {
            stream: format!("{PREFIX}.transaction"),
            fields: vec![(format!("{{\"id\":\"{id}\"}}"), value)],
        }
    }
}

impl Shop {
    /// The next transaction's entries: BEGIN, order `t+1`, its 3–5 lines, END. `stamp`
    /// (µs since the epoch) replaces every note, for the latency probe.
    pub(crate) fn next(&mut self, shards: u32, stamp: Option<i64>) -> Vec<Entry> {
        let t = self.transactions;
        self.transactions += 1;
        let lines = 3 + t % 3;
        let tx = Tx {
            id: format!("{}:{}", 5000 + t, 200_000_000 + self.events * 64),
            tx_id: 5000 + t,
            ts_ms: 1_769_000_000_000 + t,
        };
        let note = |n: String| stamp.map_or(n, |s| s.to_string());
        let order = format!(
            "{{\"id\":{o},\"customer_id\":{c},\"status\":\"new\",\"amount\":\"{a}\",\"note\":\"{n}\",\
             \"created_at\":\"2026-01-15T10:00:00.000000Z\",\"updated_at\":{u},\"attrs\":\"{{\\\"t\\\":{t}}}\"}}",
            o = t + 1,
            c = t % 9973,
            a = b64_cents((t * 7919) % 100_000_000),
            n = note(format!("order note {t}")),
            u = 1_769_000_000_000_000_u64 + t * 1000,
        );
        let mut out = vec![tx.marker(None)];
        out.push(self.data(&tx, "orders", t + 1, order, (1, 1), shards));
        for l in 0..lines {
            self.lines += 1;
            let line_id = self.lines;
            let row = format!(
                "{{\"id\":{line_id},\"order_id\":{o},\"sku\":\"sku-{s}\",\"qty\":{q},\"price\":\"{p}\",\"note\":\"{n}\"}}",
                o = t + 1,
                s = line_id % 1000,
                q = line_id % 7 + 1,
                p = b64_cents((line_id * 104_729) % 1_000_000),
                n = note(format!("line {line_id}")),
            );
            out.push(self.data(&tx, "order_lines", line_id, row, (l + 2, l + 1), shards));
        }
        out.push(tx.marker(Some((1, lines))));
        out
    }

    /// One create event of `table` in `tx`, at position `(total_order,
    /// data_collection_order)`, on its shard stream.
    fn data(
        &mut self,
        tx: &Tx,
        table: &str,
        key: u64,
        after: String,
        (total, in_collection): (u64, u64),
        shards: u32,
    ) -> Entry {
        let Tx { id, tx_id, ts_ms } = tx;
        let lsn = 200_000_000 + self.events * 64;
        self.events += 1;
        let key = format!("{{\"id\":{key}}}");
        let value = format!(
            "{{\"before\":null,\"after\":{after},\"source\":{{\"version\":\"3.6.0.Final\",\"connector\":\"postgresql\",\
             \"name\":\"bench\",\"ts_ms\":{ts_ms},\"snapshot\":\"false\",\"db\":\"shop\",\"sequence\":\"[null,\\\"{lsn}\\\"]\",\
             \"schema\":\"public\",\"table\":\"{table}\",\"txId\":{tx_id},\"lsn\":{lsn},\"xmin\":null}},\"op\":\"c\",\
             \"ts_ms\":{ts_ms},\"transaction\":{{\"id\":\"{id}\",\"total_order\":{total},\
             \"data_collection_order\":{in_collection}}}}}"
        );
        Entry {
            stream: shard_stream(&format!("{PREFIX}.public.{table}"), &key, shards),
            fields: vec![(key, value)],
        }
    }

    /// Postgres holds the newest transaction's rows (the order and its last line).
    fn probe(&self) -> String {
        format!(
            "SELECT EXISTS (SELECT 1 FROM public.orders WHERE id = {})
                AND EXISTS (SELECT 1 FROM public.order_lines WHERE id = {})",
            self.transactions, self.lines
        )
    }
}

/// A fresh database with both tables, fresh streams.
async fn reset_shop(redis: &mut MultiplexedConnection) -> Res<PgPool> {
    let pool = reset(redis, PREFIX).await?;
    pool.execute(LINES_DDL).await?;
    Ok(pool)
}

/// One throughput run in `mode` over at least `events` data events: the run, the shop
/// produced, rows written (Postgres' counters) and seconds spent producing.
async fn run(o: &Options, mode: Mode, events: u64) -> Res<(RunResult, Shop, i64, f64)> {
    let mut redis = redis::Client::open(redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let pool = reset_shop(&mut redis).await?;
    let mut shop = Shop::default();
    let t = Instant::now();
    while shop.events < events {
        let chunk: Vec<Entry> = (0..200).flat_map(|_| shop.next(o.shards, None)).collect();
        xadd_all(&mut redis, chunk).await?;
    }
    let produce_s = t.elapsed().as_secs_f64();
    let probe = Probe {
        pool: &pool,
        sql: shop.probe(),
    };
    let r = Redsink::start_with(&mode.config(o.shards), o.max_batch)?
        .finish_when(&mut redis, &data_streams(o.shards), Some(probe))
        .await?;
    let rows = row_versions(&pool, &["public.orders", "public.order_lines"]).await?;
    pool.close().await;
    Ok((r, shop, rows, produce_s))
}

/// The transaction workload: per-event mode, then transaction mode, on the same events.
pub(crate) async fn tx(o: &Options) -> Res<()> {
    println!(
        "| workload | mode | events | transactions | rows written | redsink ev/s | vs per-event | batches | postgres round trips per batch | redis round trips per batch | redsink peak RSS MiB | redsink CPU s | produce s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut base = None;
    for mode in [Mode::PerEvent, Mode::Transactions] {
        let (r, shop, rows, produce_s) = run(o, mode, o.tx_events).await?;
        let eps = shop.events as f64 / r.seconds;
        let base = *base.get_or_insert(eps);
        println!(
            "| tx | {} | {} | {} | {rows} | {eps:.0} | {:.2}× | {} | {produce_s:.1} |",
            mode.name(),
            shop.events,
            shop.transactions,
            eps / base,
            r.cells(),
        );
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// [`reset_shop`] with a `written_at` column on both tables that a trigger stamps.
async fn latency_shop(redis: &mut MultiplexedConnection) -> Res<PgPool> {
    let pool = reset_shop(redis).await?;
    for table in ["orders", "order_lines"] {
        let sql = format!("ALTER TABLE public.{table} ADD COLUMN written_at timestamptz");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await?;
    }
    pool.execute(
        "CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN NEW.written_at := clock_timestamp(); RETURN NEW; END $$;
         CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON public.orders FOR EACH ROW EXECUTE FUNCTION stamp();
         CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON public.order_lines FOR EACH ROW EXECUTE FUNCTION stamp();",
    )
    .await?;
    Ok(pool)
}

/// Latency of both modes: transactions produced at `rate` data events/s for
/// `o.seconds` (every 10 ms, rate/100 events' worth of whole transactions), every note
/// carrying its XADD time; latency = when the trigger stamped the row − that time.
pub(crate) async fn tx_latency(o: &Options, rate: u64) -> Res<()> {
    for mode in [Mode::PerEvent, Mode::Transactions] {
        let mut redis = redis::Client::open(redis_url())?
            .get_multiplexed_async_connection()
            .await?;
        let pool = latency_shop(&mut redis).await?;
        let streams = data_streams(o.shards);
        create_groups(&mut redis, &streams, "redsink", "$").await;
        let mut redsink = Redsink::start_with(&mode.config(o.shards), o.max_batch)?;
        redsink.ready(&mut redis, &streams[0]).await?;
        let mut shop = Shop::default();
        let total = rate * o.seconds;
        let per_tick = (rate / 100).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while shop.events < total {
            tick.tick().await;
            let now_us = chrono::Utc::now().timestamp_micros();
            let goal = (shop.events + per_tick).min(total);
            let mut batch = Vec::new();
            while shop.events < goal {
                batch.extend(shop.next(o.shards, Some(now_us)));
            }
            xadd_all(&mut redis, batch).await?;
        }
        let probe = Probe {
            pool: &pool,
            sql: shop.probe(),
        };
        let r = redsink
            .finish_when(&mut redis, &streams, Some(probe))
            .await?;
        let lat: Vec<f64> = sqlx::query_scalar(
            "SELECT ((extract(epoch FROM written_at) * 1e6 - note::bigint) / 1000.0)::float8
             FROM (SELECT written_at, note FROM public.orders
                   UNION ALL SELECT written_at, note FROM public.order_lines) w",
        )
        .fetch_all(&pool)
        .await?;
        print_latency(
            &format!("tx {}", mode.name()),
            rate,
            o.seconds,
            lat,
            r.rss_mib,
        );
        pool.close().await;
    }
    Ok(())
}
