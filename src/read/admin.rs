//! Group and dead-letter administration for the operator commands (`group reset`,
//! `consumers prune`, `dlq …`) and for the pipeline's own consumer pruning.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;
use serde::Serialize;

use super::{Control, EntryId, ReadError};

/// Fields redsink adds to a dead letter; everything else is the original entry.
pub const DLQ_FIELDS: [&str; 4] = [
    "redsink.error",
    "redsink.stream",
    "redsink.entry_id",
    "redsink.group",
];

/// Removes consumer ARGV[2] of group ARGV[1] from stream KEYS[1] if it has nothing
/// pending, in one script (nothing can be delivered to it between the check and the
/// removal). Returns -1 when it has entries pending, else what DELCONSUMER returns.
const LEAVE_SCRIPT: &str = r"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then
  return -1
end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
";

/// Removes `consumer` from `group` on `stream` if nothing of it is pending: `false` when
/// it stays (entries pending).
pub async fn leave_group(
    conn: &mut Control,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Result<bool, ReadError> {
    let dropped: i64 = redis::cmd("EVAL")
        .arg(LEAVE_SCRIPT)
        .arg(1)
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .query_async(conn)
        .await
        .map_err(ReadError::redis(format!(
            "leaving group {group} on {stream}"
        )))?;
    if dropped > 0 {
        // Cannot happen (checked in the same script); said loudly if it ever does.
        tracing::error!(
            stream,
            group,
            consumer,
            dropped,
            "leaving the group dropped pending entries"
        );
    }
    Ok(dropped >= 0)
}

/// Lists the consumers and removes the idle ones with nothing pending in one script, so
/// that nothing can be delivered to a consumer between the check and its removal.
const PRUNE_SCRIPT: &str = r"
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[3] and f['pending'] == 0 and f['idle'] >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed[#removed + 1] = f['name']
  end
end
return removed
";

/// Removes the consumers of `group` on `stream` that have nothing pending and have been
/// idle for at least `min_idle`, except `keep`, atomically; returns their names.
pub async fn prune_consumers(
    conn: &mut Control,
    stream: &str,
    group: &str,
    keep: Option<&str>,
    min_idle: Duration,
) -> Result<Vec<String>, ReadError> {
    let idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
    redis::cmd("EVAL")
        .arg(PRUNE_SCRIPT)
        .arg(1)
        .arg(stream)
        .arg(group)
        .arg(idle_ms)
        // A name no consumer has, when there is none to keep.
        .arg(keep.unwrap_or("\u{0}"))
        .query_async(conn)
        .await
        .map_err(ReadError::redis(format!(
            "pruning idle consumers of {group} on {stream}"
        )))
}

/// The oldest entry some consumer group on `stream` still needs (pending, or not yet
/// delivered): everything before it is acknowledged by every group. `None` when the
/// stream has no group (nothing may be trimmed then).
pub async fn oldest_needed(conn: &mut Control, stream: &str) -> Result<Option<EntryId>, ReadError> {
    let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .map_err(ReadError::redis(format!("XINFO GROUPS {stream}")))?;
    let mut oldest: Option<EntryId> = None;
    for g in groups {
        let name = super::inspect::text(g.get("name"));
        if name.is_empty() {
            continue;
        }
        let last = EntryId::parse(&super::inspect::text(g.get("last-delivered-id")))
            .unwrap_or(EntryId::ZERO);
        // The first entry after the last delivered one has not been read yet.
        let mut needed = if last.seq == u64::MAX {
            EntryId {
                ms: last.ms.saturating_add(1),
                seq: 0,
            }
        } else {
            EntryId {
                ms: last.ms,
                seq: last.seq + 1,
            }
        };
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(&name)
            .arg("-")
            .arg("+")
            .arg(1)
            .query_async(conn)
            .await
            .map_err(ReadError::redis(format!("XPENDING {stream} {name}")))?;
        if let Some(first) = pending.first().and_then(|p| EntryId::parse(&p.0)) {
            needed = needed.min(first);
        }
        oldest = Some(oldest.map_or(needed, |o| o.min(needed)));
    }
    Ok(oldest)
}

/// Trims `stream` below `min_id` (`XTRIM … MINID = …`, exact); returns how many went.
pub async fn trim_below(
    conn: &mut Control,
    stream: &str,
    min_id: EntryId,
) -> Result<u64, ReadError> {
    redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg("=")
        .arg(min_id.to_string())
        .query_async(conn)
        .await
        .map_err(ReadError::redis(format!("XTRIM {stream} MINID {min_id}")))
}

/// Trims `stream` to its newest `max_len` entries (`XTRIM … MAXLEN = …`); returns how
/// many went.
pub async fn trim_to_len(conn: &mut Control, stream: &str, max_len: u64) -> Result<u64, ReadError> {
    redis::cmd("XTRIM")
        .arg(stream)
        .arg("MAXLEN")
        .arg("=")
        .arg(max_len)
        .query_async(conn)
        .await
        .map_err(ReadError::redis(format!("XTRIM {stream} MAXLEN {max_len}")))
}

/// Moves the group's last-delivered ID (XGROUP SETID): entries after `id` will be
/// delivered (again). Entries already pending stay pending.
pub async fn set_group_id(
    conn: &mut Control,
    stream: &str,
    group: &str,
    id: &str,
) -> Result<(), ReadError> {
    redis::cmd("XGROUP")
        .arg("SETID")
        .arg(stream)
        .arg(group)
        .arg(id)
        .query_async::<()>(conn)
        .await
        .map_err(ReadError::redis(format!(
            "XGROUP SETID {stream} {group} {id}"
        )))
}

/// A field and its value, as bytes.
type Pair = (Vec<u8>, Vec<u8>);

/// One entry of a dead-letter stream.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetterEntry {
    /// Its ID in the dead-letter stream.
    pub id: String,
    pub error: String,
    /// Where it came from.
    pub stream: String,
    pub entry_id: String,
    pub group: String,
    /// The original fields (shown as text, lossily for binary values).
    pub fields: Vec<(String, String)>,
    #[serde(skip)]
    raw: Vec<Pair>,
}

/// Up to `count` dead letters of `dlq` from `start` (an ID, `(ID` for after it, or `-`).
pub async fn dead_letters(
    conn: &mut Control,
    dlq: &str,
    start: &str,
    end: &str,
    count: usize,
) -> Result<Vec<DeadLetterEntry>, ReadError> {
    let entries: Vec<(String, Vec<Pair>)> = redis::cmd("XRANGE")
        .arg(dlq)
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(i64::try_from(count).unwrap_or(i64::MAX))
        .query_async(conn)
        .await
        .map_err(ReadError::redis(format!("XRANGE {dlq}")))?;
    Ok(entries
        .into_iter()
        .map(|(id, pairs)| {
            let get = |name: &str| {
                pairs
                    .iter()
                    .find(|(f, _)| f == name.as_bytes())
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let raw: Vec<Pair> = pairs
                .iter()
                .filter(|(f, _)| !DLQ_FIELDS.iter().any(|d| f == d.as_bytes()))
                .cloned()
                .collect();
            DeadLetterEntry {
                error: get("redsink.error"),
                stream: get("redsink.stream"),
                entry_id: get("redsink.entry_id"),
                group: get("redsink.group"),
                fields: raw
                    .iter()
                    .map(|(f, v)| {
                        (
                            String::from_utf8_lossy(f).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        )
                    })
                    .collect(),
                raw,
                id,
            }
        })
        .collect())
}

/// Puts a dead letter's original fields back on its source stream (a new entry, read
/// by the group like any other) and deletes it from `dlq`, in one MULTI/EXEC.
/// Returns the new entry's ID.
pub async fn retry_dead_letter(
    conn: &mut Control,
    dlq: &str,
    letter: &DeadLetterEntry,
) -> Result<String, ReadError> {
    if letter.stream.is_empty() || letter.raw.is_empty() {
        return Err(ReadError::Invalid(format!(
            "dead letter {} of {dlq} has no source stream or no original fields: nothing to retry",
            letter.id
        )));
    }
    let mut xadd = redis::cmd("XADD");
    xadd.arg(&letter.stream).arg("*");
    for (f, v) in &letter.raw {
        xadd.arg(f.as_slice()).arg(v.as_slice());
    }
    let context = || {
        format!(
            "moving dead letter {} of {dlq} back to {}",
            letter.id, letter.stream
        )
    };
    if conn.is_cluster()
        && super::conn::slot(letter.stream.as_bytes()) != super::conn::slot(dlq.as_bytes())
    {
        // Different hash slots cannot share a transaction: add, then delete. A failure
        // in between leaves the dead letter in place (a retry adds the entry again,
        // which the version guard makes harmless).
        let new_id: String = xadd
            .query_async(conn)
            .await
            .map_err(ReadError::redis(context()))?;
        let _: i64 = redis::cmd("XDEL")
            .arg(dlq)
            .arg(&letter.id)
            .query_async(conn)
            .await
            .map_err(ReadError::redis(context()))?;
        return Ok(new_id);
    }
    let (new_id, _): (String, i64) = redis::pipe()
        .atomic()
        .add_command(xadd)
        .cmd("XDEL")
        .arg(dlq)
        .arg(&letter.id)
        .query_async(conn)
        .await
        .map_err(ReadError::redis(context()))?;
    Ok(new_id)
}

/// Deletes dead letters by ID; returns how many existed.
pub async fn purge_dead_letters(
    conn: &mut Control,
    dlq: &str,
    ids: &[String],
) -> Result<u64, ReadError> {
    if ids.is_empty() {
        return Ok(0);
    }
    redis::cmd("XDEL")
        .arg(dlq)
        .arg(ids)
        .query_async(conn)
        .await
        .map_err(ReadError::redis(format!("XDEL {dlq}")))
}
