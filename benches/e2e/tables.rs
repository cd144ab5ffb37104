//! Many tables (issue 14): the same create events spread over 200 tables × S shards
//! (`<prefix>.t000:0` … `<prefix>.t199:7`, 1,600 streams at 8 shards), event j in table
//! `j mod 200`, so consecutive events hit different tables as a source writes them,
//! against the same events in one table over S streams. redsink runs its default config
//! with one template mapping (`table = "public.${source.table}"`) in both runs, so the
//! number of tables and streams is the only difference.

use redsink::demo::produce::{Entry, shard_stream};

use super::*;

/// Tables of the many-tables run.
pub(crate) const TABLES: u64 = 200;

/// The table of event `j` when the events are spread over `tables` tables (one table:
/// `orders`, the generator's own).
fn table_of(j: u64, tables: u64) -> String {
    if tables <= 1 {
        "orders".into()
    } else {
        format!("t{:03}", j % tables)
    }
}

/// Event `j` of [`Orders`] with its `source.table` set to its table, on that table's
/// shard stream `<prefix>.<table>:<shard>`.
fn entry(orders: &Orders, j: u64, prefix: &str, shards: u32, tables: u64) -> Entry {
    let (key, value) = orders.event(j);
    let table = table_of(j, tables);
    let value = value.replacen("\"table\":\"orders\"", &format!("\"table\":\"{table}\""), 1);
    Entry {
        stream: shard_stream(&format!("{prefix}.{table}"), &key, shards),
        fields: vec![(key, value)],
    }
}

/// One run: `events` creates over `tables` tables × `o.shards` shards, drained by
/// redsink at its default config. Returns the run, rows written (from Postgres' own
/// counters) and seconds spent producing.
async fn run(o: &Options, events: u64, tables: u64) -> Res<(RunResult, i64, f64)> {
    let mut redis = redis::Client::open(redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let prefix = "bench.tables";
    let pool = reset(&mut redis, prefix).await?;
    let names: Vec<String> = (0..tables).map(|t| table_of(t, tables)).collect();
    if tables > 1 {
        let ddl: String = names
            .iter()
            .map(|t| format!("CREATE TABLE public.{t} (LIKE public.orders INCLUDING ALL);"))
            .collect();
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&pool)
            .await?;
    }
    let orders = Orders {
        keys: events,
        delete_every: None,
    };
    let t = Instant::now();
    xadd_all(
        &mut redis,
        (0..events).map(|j| entry(&orders, j, prefix, o.shards, tables)),
    )
    .await?;
    let produce_s = t.elapsed().as_secs_f64();
    let streams: Vec<String> = names
        .iter()
        .flat_map(|t| (0..o.shards).map(move |s| format!("{prefix}.{t}:{s}")))
        .collect();
    let mapping =
        format!("[[mapping]]\nstreams = [\"{prefix}.*\"]\ntable = \"public.${{source.table}}\"\n");
    let r = Redsink::start_with(&mapping, o.max_batch)?
        .finish(&mut redis, &streams)
        .await?;
    let qualified: Vec<String> = names.iter().map(|t| format!("public.{t}")).collect();
    let refs: Vec<&str> = qualified.iter().map(String::as_str).collect();
    let rows = row_versions(&pool, &refs).await?;
    pool.close().await;
    Ok((r, rows, produce_s))
}

/// The many-tables workload: the same `o.tables_events` creates in one table, then in
/// 200; prints both and the ratio.
pub(crate) async fn tables200(o: &Options) -> Res<()> {
    let events = o.tables_events;
    println!(
        "| workload | events | tables × shards (streams) | rows written | redsink ev/s | vs one table | batches | postgres round trips per batch | redis round trips per batch | redsink peak RSS MiB | redsink CPU s | produce s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut one = None;
    for tables in [1, TABLES] {
        let (r, rows, produce_s) = run(o, events, tables).await?;
        let eps = events as f64 / r.seconds;
        let base = *one.get_or_insert(eps);
        println!(
            "| tables200 | {events} | {tables} × {} ({}) | {rows} | {eps:.0} | {:.2}× | {} | {produce_s:.1} |",
            o.shards,
            tables * u64::from(o.shards),
            eps / base,
            r.cells(),
        );
        std::io::stdout().flush()?;
    }
    Ok(())
}
