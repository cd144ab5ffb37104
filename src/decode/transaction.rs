//! The records of Debezium's transaction metadata stream (`<topic.prefix>.transaction`,
//! with `provide.transaction.metadata=true`): `BEGIN` and `END`, whose
//! `data_collections` say how many events each table has in the transaction. Pure.

use serde_json::Value;

use super::{DecodeError, split_fields, split_schema};
use crate::entry::StreamEntry;

/// One record of the transaction stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxRecord {
    Begin { id: String },
    End(TxEnd),
}

/// A transaction's END: its events per data collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxEnd {
    pub id: String,
    /// `event_count`: the transaction's events in every table.
    pub event_count: u64,
    /// (`data_collection`, `event_count`), as the record lists them.
    pub collections: Vec<(String, u64)>,
}

/// Decodes one entry of the transaction stream.
pub fn tx_record(entry: &StreamEntry) -> Result<TxRecord, DecodeError> {
    let fail = |reason: String| DecodeError {
        stream: entry.stream.clone(),
        id: entry.id,
        reason,
    };
    let Some(fields) = &entry.fields else {
        return Err(fail(
            "the entry was deleted from the stream before it was read".into(),
        ));
    };
    record(fields).map_err(fail)
}

fn record(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<TxRecord, String> {
    let (_, value) = split_fields(fields)?;
    let value: Value = serde_json::from_slice(value)
        .map_err(|e| format!("a transaction record's value is not JSON: {e}"))?;
    let (_, payload) = split_schema(value);
    let text = |k: &str| payload.get(k).and_then(Value::as_str);
    let id = text("id")
        .filter(|id| !id.is_empty())
        .ok_or("a transaction record has no `id` string")?
        .to_string();
    match text("status") {
        Some("BEGIN") => Ok(TxRecord::Begin { id }),
        Some("END") => {
            let collections = match payload.get("data_collections") {
                Some(Value::Array(list)) => list
                    .iter()
                    .map(collection)
                    .collect::<Result<Vec<_>, String>>()?,
                other => {
                    return Err(format!(
                        "transaction {id}: END has no `data_collections` list: {}",
                        other.map_or_else(|| "(absent)".to_string(), Value::to_string)
                    ));
                }
            };
            let event_count = payload
                .get("event_count")
                .and_then(Value::as_u64)
                .unwrap_or_else(|| collections.iter().map(|(_, n)| n).sum());
            Ok(TxRecord::End(TxEnd {
                id,
                event_count,
                collections,
            }))
        }
        other => Err(format!(
            "transaction {id}: `status` is {}, expected BEGIN or END",
            other.unwrap_or("(absent)")
        )),
    }
}

/// One `{"data_collection": …, "event_count": …}`.
fn collection(v: &Value) -> Result<(String, u64), String> {
    let name = v.get("data_collection").and_then(Value::as_str);
    let count = v.get("event_count").and_then(Value::as_u64);
    match (name, count) {
        (Some(name), Some(count)) => Ok((name.to_string(), count)),
        _ => Err(format!(
            "an END's data_collections entry is not {{data_collection, event_count}}: {v}"
        )),
    }
}

/// The `transaction.id` of an entry's value, if it has one: for the dead letter of an
/// event that could not be decoded otherwise.
pub fn transaction_id(entry: &StreamEntry) -> Option<String> {
    let (_, value) = split_fields(entry.fields.as_deref()?).ok()?;
    let value: Value = serde_json::from_slice(value).ok()?;
    let (_, payload) = split_schema(value);
    let id = payload.get("transaction")?.get("id")?.as_str()?;
    Some(id.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::entry::EntryId;

    fn entry(key: &str, value: &str) -> StreamEntry {
        StreamEntry {
            stream: Arc::from("app.transaction"),
            id: EntryId { ms: 1, seq: 0 },
            fields: Some(vec![(key.as_bytes().to_vec(), value.as_bytes().to_vec())]),
            deliveries: 0,
        }
    }

    #[test]
    fn begin_and_end_are_read() {
        let begin = entry(
            r#"{"id":"771:1"}"#,
            r#"{"status":"BEGIN","id":"771:1","ts_ms":1,"event_count":null,"data_collections":null}"#,
        );
        assert_eq!(
            tx_record(&begin).expect("a BEGIN"),
            TxRecord::Begin { id: "771:1".into() }
        );
        let end = entry(
            r#"{"id":"771:1"}"#,
            r#"{"schema":{},"payload":{"status":"END","id":"771:1","ts_ms":1,"event_count":5,"data_collections":[{"data_collection":"public.orders","event_count":1},{"data_collection":"public.order_lines","event_count":4}]}}"#,
        );
        assert_eq!(
            tx_record(&end).expect("an END"),
            TxRecord::End(TxEnd {
                id: "771:1".into(),
                event_count: 5,
                collections: vec![
                    ("public.orders".into(), 1),
                    ("public.order_lines".into(), 4)
                ],
            })
        );
    }

    #[test]
    fn bad_records_say_what_is_wrong() {
        for (value, says) in [
            ("[]", "no `id`"),
            (r#"{"id":"1","status":"COMMIT"}"#, "expected BEGIN or END"),
            (r#"{"id":"1","status":"END"}"#, "no `data_collections`"),
            (
                r#"{"id":"1","status":"END","data_collections":[{"data_collection":"a"}]}"#,
                "not {data_collection, event_count}",
            ),
            ("{", "not JSON"),
        ] {
            let e = tx_record(&entry("{}", value)).expect_err("refused");
            assert!(e.reason.contains(says), "{value}: {e}");
            assert!(e.to_string().contains("app.transaction"), "{e}");
        }
    }

    #[test]
    fn an_events_transaction_id_is_found_even_when_it_does_not_decode() {
        let e = entry(
            "{}",
            r#"{"op":"x","transaction":{"id":"9:9","total_order":1}}"#,
        );
        assert_eq!(transaction_id(&e).as_deref(), Some("9:9"));
        assert_eq!(transaction_id(&entry("{}", "nope")), None);
    }
}
