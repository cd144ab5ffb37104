//! Replies of XREADGROUP, XRANGE and XAUTOCLAIM (RESP2 or RESP3) → [`StreamEntry`]s.
//! Malformed replies are errors, never panics.

use std::sync::Arc;

use redis::Value;

use super::RedisError;
use crate::entry::{EntryId, StreamEntry};

pub(crate) fn reply_err(command: &'static str, detail: impl Into<String>) -> RedisError {
    RedisError::Reply {
        command,
        detail: detail.into(),
    }
}

pub(crate) fn bytes(v: Value, command: &'static str) -> Result<Vec<u8>, RedisError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        other => Err(reply_err(
            command,
            format!("expected a string, got {other:?}"),
        )),
    }
}

/// `[[stream, [[id, [field, value, …] | nil], …]], …]` (RESP2) or a map (RESP3).
pub(crate) fn parse_read_reply(reply: Value) -> Result<Vec<StreamEntry>, RedisError> {
    const CMD: &str = "XREADGROUP";
    let streams: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let entries = pair.pop().unwrap_or(Value::Nil);
                    let name = pair.pop().unwrap_or(Value::Nil);
                    Ok((name, entries))
                }
                other => Err(reply_err(CMD, format!("bad stream item {other:?}"))),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(reply_err(CMD, format!("bad reply {other:?}"))),
    };
    let mut out = Vec::new();
    for (name, entries) in streams {
        let name = String::from_utf8(bytes(name, CMD)?)
            .map_err(|_| reply_err(CMD, "stream name is not UTF-8"))?;
        let stream: Arc<str> = Arc::from(name);
        parse_entries(&stream, entries, CMD, &mut out)?;
    }
    Ok(out)
}

pub(crate) fn parse_entries(
    stream: &Arc<str>,
    entries: Value,
    command: &'static str,
    out: &mut Vec<StreamEntry>,
) -> Result<(), RedisError> {
    let Value::Array(entries) = entries else {
        return Err(reply_err(command, "entries are not an array"));
    };
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            return Err(reply_err(command, "entry is not an array"));
        };
        if parts.len() != 2 {
            return Err(reply_err(command, "entry is not [id, fields]"));
        }
        let fields = parts.pop().unwrap_or(Value::Nil);
        let id_bytes = bytes(parts.pop().unwrap_or(Value::Nil), command)?;
        let id_text = std::str::from_utf8(&id_bytes)
            .map_err(|_| reply_err(command, "entry ID is not UTF-8"))?;
        let id = EntryId::parse(id_text)
            .ok_or_else(|| reply_err(command, format!("bad entry ID {id_text}")))?;
        let fields = match fields {
            // The entry was deleted (XDEL/XTRIM) while pending: its ID is all that is left.
            Value::Nil => None,
            Value::Array(flat) => {
                if flat.len() % 2 != 0 {
                    return Err(reply_err(command, "odd number of field items"));
                }
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(f), Some(v)) = (it.next(), it.next()) {
                    pairs.push((bytes(f, command)?, bytes(v, command)?));
                }
                Some(pairs)
            }
            Value::Map(map) => Some(
                map.into_iter()
                    .map(|(f, v)| Ok((bytes(f, command)?, bytes(v, command)?)))
                    .collect::<Result<_, RedisError>>()?,
            ),
            other => return Err(reply_err(command, format!("bad fields {other:?}"))),
        };
        out.push(StreamEntry {
            deliveries: 0,
            stream: stream.clone(),
            id,
            fields,
        });
    }
    Ok(())
}

/// `[next-cursor, [[id, fields], …], [deleted-id, …]]` → (next cursor, entries). The
/// deleted IDs (Redis ≥ 7) were removed from the PEL by XAUTOCLAIM itself; they are
/// returned as entries without fields so that their loss is reported, not silent.
pub(crate) fn parse_autoclaim_reply(
    stream: &Arc<str>,
    reply: Value,
) -> Result<(EntryId, Vec<StreamEntry>), RedisError> {
    const CMD: &str = "XAUTOCLAIM";
    let Value::Array(parts) = reply else {
        return Err(reply_err(CMD, "reply is not an array"));
    };
    let mut parts = parts.into_iter();
    let (Some(next), Some(claimed)) = (parts.next(), parts.next()) else {
        return Err(reply_err(CMD, "reply is too short"));
    };
    let next = String::from_utf8(bytes(next, CMD)?)
        .ok()
        .and_then(|t| EntryId::parse(&t))
        .ok_or_else(|| reply_err(CMD, "bad cursor"))?;
    let mut out = Vec::new();
    parse_entries(stream, claimed, CMD, &mut out)?;
    if let Some(Value::Array(deleted)) = parts.next() {
        for id in deleted {
            let text = String::from_utf8(bytes(id, CMD)?).map_err(|_| reply_err(CMD, "bad ID"))?;
            let id = EntryId::parse(&text).ok_or_else(|| reply_err(CMD, "bad ID"))?;
            out.push(StreamEntry {
                deliveries: 0,
                stream: stream.clone(),
                id,
                fields: None,
            });
        }
    }
    Ok((next, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_resp2_read_reply_with_deleted_entry() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s:0"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("5-1"),
                    Value::Array(vec![bulk("{\"id\":1}"), bulk("{}")]),
                ]),
                Value::Array(vec![bulk("6-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read_reply(reply).expect("parses");
        assert_eq!(entries.len(), 2);
        assert_eq!(&*entries[0].stream, "s:0");
        assert_eq!(entries[0].id, EntryId { ms: 5, seq: 1 });
        let fields = entries[0].fields.as_ref().expect("fields");
        assert_eq!(fields[0].0, b"{\"id\":1}");
        assert!(entries[1].fields.is_none());
        assert!(parse_read_reply(Value::Nil).expect("nil").is_empty());
    }

    #[test]
    fn parses_autoclaim_with_cursor_and_deleted_ids() {
        let reply = Value::Array(vec![
            bulk("7-0"),
            Value::Array(vec![Value::Array(vec![
                bulk("5-0"),
                Value::Array(vec![bulk("k"), bulk("v")]),
            ])]),
            Value::Array(vec![bulk("6-0")]),
        ]);
        let (next, entries) = parse_autoclaim_reply(&Arc::from("s"), reply).expect("parses");
        assert_eq!(next, EntryId { ms: 7, seq: 0 });
        assert_eq!(entries.len(), 2);
        assert!(entries[0].fields.is_some());
        assert_eq!(entries[1].id, EntryId { ms: 6, seq: 0 });
        assert!(entries[1].fields.is_none(), "deleted while pending");
    }

    #[test]
    fn rejects_malformed_replies_without_panicking() {
        for reply in [
            Value::Int(3),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![bulk("s"), Value::Int(1)])]),
            Value::Array(vec![Value::Array(vec![
                bulk("s"),
                Value::Array(vec![Value::Array(vec![bulk("x-y"), Value::Array(vec![])])]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                bulk("s"),
                Value::Array(vec![Value::Array(vec![
                    bulk("1-1"),
                    Value::Array(vec![bulk("f")]),
                ])]),
            ])]),
        ] {
            assert!(parse_read_reply(reply).is_err());
        }
    }
}
