//! The events side of `check`: the newest entry of every mapped stream decodes, maps
//! onto its table, and Postgres casts every value to its column's type.

use std::sync::Arc;

use sqlx::PgPool;

use super::Report;
use crate::config::{Config, DeleteMode};
use crate::decode::{self, Decoded};
use crate::map::{self, Mapping, RowOp};
use crate::redis::{Control, inspect, mapped_streams, range};
use crate::write;

/// Decodes and maps the newest entry of each mapped stream against its table and asks
/// Postgres to cast every value to its column's type.
pub(super) async fn check_samples(
    config: &Config,
    mappings: &[Mapping],
    mut control: Control,
    pool: &PgPool,
    report: &mut Report,
) {
    for m in mappings {
        // Each mapping's own streams (a stream two mappings name is sampled with each).
        let names = match mapped_streams(&mut control, &[&m.streams], &config.redis).await {
            Ok(n) => n,
            Err(e) => return report.problem(e.to_string()),
        };
        for (name, _) in names {
            let stream: Arc<str> = Arc::from(name.as_str());
            sample(config, m, &mut control, &stream, pool, report).await;
        }
    }
}

/// Decodes, maps and casts the newest entry of `stream` as mapping `m` says.
async fn sample(
    config: &Config,
    m: &Mapping,
    control: &mut Control,
    stream: &Arc<str>,
    pool: &PgPool,
    report: &mut Report,
) {
    let Ok(Some(last)) = inspect::last_entry(control, stream).await else {
        return;
    };
    let id = last.to_string();
    let Ok(entries) = range(control, stream, &id, &id, 1).await else {
        return;
    };
    let Some(entry) = entries.into_iter().next() else {
        return;
    };
    let at = format!("stream {stream} entry {id}");
    let event = match decode::decode(&entry, &config.decode) {
        Ok(Decoded::Change(event)) => event,
        Ok(Decoded::Skip(_)) => return,
        Err(e) => return report.problem(format!("{at}: would be dead-lettered: {}", e.reason)),
    };
    let name = match map::resolve_table(&m.table, &event, stream) {
        Ok(n) => n,
        Err(e) => return report.problem(format!("{at}: {e}")),
    };
    let (schema, _) = match write::inspect_table(pool, &name).await {
        Ok(found) => found,
        Err(e) => return report.problem(format!("{at}: {e}")),
    };
    if event.op == decode::Op::Truncate
        || (event.op == decode::Op::Delete && m.delete == DeleteMode::Ignore)
    {
        return;
    }
    let change = match map::map_event(m, &event, entry.id, &Arc::new(schema)) {
        Ok(c) => c,
        Err(e) => return report.problem(format!("{at}: would be dead-lettered: {e}")),
    };
    let RowOp::Upsert { columns, values } = &change.op else {
        return report.ok(format!("{at}: a delete of {name}: maps"));
    };
    let casts: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("${}::{}", i + 1, change.table.columns[c].sql_type))
        .collect();
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {}", casts.join(", "))));
    for v in values.iter() {
        query = query.bind(v);
    }
    match query.execute(pool).await {
        Ok(_) => report.ok(format!(
            "{at}: maps onto {name} and every value fits its column"
        )),
        Err(e) => report.problem(format!("{at}: a value does not fit {name}: {e}")),
    }
}
