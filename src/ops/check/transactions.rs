//! Transaction mode's part of `check`: the transaction stream exists, can be read, holds
//! Debezium's BEGIN/END records, and which data collections of its newest END redsink
//! reads (so a mapping that misses a table shows before transactions wait for it).

use std::sync::Arc;

use super::Report;
use crate::config::Config;
use crate::decode::{TxEnd, TxRecord, tx_record};
use crate::redis::Control;

/// Records looked at from the end of the transaction stream for an END.
const LOOK_BACK: usize = 64;

pub(super) async fn check_transactions(config: &Config, mut conn: Control, report: &mut Report) {
    let Some(t) = &config.transactions else {
        return;
    };
    let end = match newest_end(&t.stream, &mut conn).await {
        Ok(end) => end,
        Err(problem) => {
            report.problem(problem);
            return;
        }
    };
    let stream = &t.stream;
    let Some(end) = end else {
        report.ok(format!(
            "transactions: {stream} is readable (no END record yet)"
        ));
        return;
    };
    let (ours, others): (Vec<&str>, Vec<&str>) = end
        .collections
        .iter()
        .map(|(c, _)| c.as_str())
        .partition(|c| config.reads_collection(c));
    report.ok(format!(
        "transactions: {stream} is readable; its newest END (transaction {}) names {} \
         (read by redsink: waited for) and {} (not mapped: ignored){}",
        end.id,
        list(&ours),
        list(&others),
        if t.collections.is_empty() {
            "; if a mapped table is among the ignored, set transactions.collections"
        } else {
            ""
        }
    ));
}

/// The newest END among the last records of the transaction stream (`None`: none
/// yet); the problem when the stream is missing, unreadable or not Debezium's.
async fn newest_end(stream: &str, conn: &mut Control) -> Result<Option<TxEnd>, String> {
    let exists: bool = redis::cmd("EXISTS")
        .arg(stream)
        .query_async(conn)
        .await
        .map_err(|e| format!("transactions.stream {stream}: EXISTS failed: {e}"))?;
    if !exists {
        return Err(format!(
            "transactions.stream {stream} does not exist: set \
             debezium.source.provide.transaction.metadata=true in Debezium Server (its \
             records go to <topic.prefix>.transaction), or fix the name; transactions \
             wait until it has their END"
        ));
    }
    let reply: redis::Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(LOOK_BACK)
        .query_async(conn)
        .await
        .map_err(|e| {
            format!(
                "transactions.stream {stream} cannot be read (XREVRANGE: {e}): apply the ACL rule below"
            )
        })?;
    let key: Arc<str> = Arc::from(stream);
    let mut records = Vec::new();
    crate::redis::reply::parse_entries(&key, reply, "XREVRANGE", &mut records)
        .map_err(|e| format!("transactions.stream {stream}: {e}"))?;
    for entry in &records {
        match tx_record(entry) {
            Ok(TxRecord::End(e)) => return Ok(Some(e)),
            Ok(TxRecord::Begin { .. }) => {}
            Err(e) => {
                return Err(format!(
                    "transactions.stream {stream} holds an entry that is not a Debezium \
                     transaction record ({e}): is it the right stream?"
                ));
            }
        }
    }
    Ok(None)
}

fn list(items: &[&str]) -> String {
    if items.is_empty() {
        "nothing".into()
    } else {
        items.join(", ")
    }
}
