//! What Redis says about a stream and its groups, for `redsink status` and the metrics.

use std::collections::HashMap;

use redis::Value;
use serde::Serialize;

use super::{Control, RedisError};
use crate::entry::EntryId;

/// A stream, its groups and its dead-letter stream.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamStatus {
    pub stream: String,
    pub length: u64,
    pub last_entry: Option<String>,
    pub groups: Vec<GroupStatus>,
    pub dlq_length: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupStatus {
    pub group: String,
    /// Entries not yet delivered to the group (Redis ≥ 7; `None` when Redis cannot tell).
    pub lag: Option<u64>,
    /// Delivered, not yet acknowledged.
    pub pending: u64,
    pub last_delivered: String,
    /// How long the oldest pending entry has waited since it was last delivered.
    pub oldest_pending_idle_ms: Option<u64>,
    pub consumers: Vec<ConsumerStatus>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConsumerStatus {
    pub name: String,
    pub pending: u64,
    /// Since its last read or claim attempt.
    pub idle_ms: u64,
}

/// The ID of the newest entry of `stream`, if it has any.
pub async fn last_entry(conn: &mut Control, stream: &str) -> Result<Option<EntryId>, RedisError> {
    let reply: Vec<(String, Value)> = query(
        conn,
        redis::cmd("XREVRANGE")
            .arg(stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1),
        "XREVRANGE",
        stream,
    )
    .await?;
    Ok(reply.first().and_then(|(id, _)| EntryId::parse(id)))
}

/// XLEN of `stream` (0 when it does not exist).
pub async fn length(conn: &mut Control, stream: &str) -> Result<u64, RedisError> {
    query(conn, redis::cmd("XLEN").arg(stream), "XLEN", stream).await
}

/// Counts one page of entries from `ARGV[1]` to `ARGV[2]` (XRANGE syntax) server-side:
/// the entries stay in Redis, only their number and the last ID come back.
const COUNT_PAGE_SCRIPT: &str = r"
local r = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
if #r == 0 then return {0, ''} end
return {#r, r[#r][1]}
";

/// Entries counted per script call: each call holds Redis for a few milliseconds at most.
const COUNT_PAGE: u64 = 10_000;

/// How many entries `stream` holds from `start` to `end` (inclusive entry IDs). Redis
/// has no range count: this walks the range in pages of [`COUNT_PAGE`] in a script, so
/// it costs a round trip per page but sends no entry over the network.
pub async fn count_range(
    conn: &mut Control,
    stream: &str,
    start: EntryId,
    end: EntryId,
) -> Result<u64, RedisError> {
    let mut from = start.to_string();
    let mut total = 0;
    loop {
        let (n, last): (u64, String) = redis::cmd("EVAL")
            .arg(COUNT_PAGE_SCRIPT)
            .arg(1)
            .arg(stream)
            .arg(&from)
            .arg(end.to_string())
            .arg(COUNT_PAGE)
            .query_async(conn)
            .await
            .map_err(RedisError::redis(format!(
                "counting the entries of {stream}"
            )))?;
        total += n;
        if n < COUNT_PAGE {
            return Ok(total);
        }
        from = format!("({last}");
    }
}

/// XLEN, XINFO GROUPS, XINFO CONSUMERS and XPENDING of `stream`; `None` if it does not
/// exist.
pub async fn stream_status(
    conn: &mut Control,
    stream: &str,
    dlq: &str,
) -> Result<Option<StreamStatus>, RedisError> {
    let exists: bool = redis::cmd("EXISTS")
        .arg(stream)
        .query_async(conn)
        .await
        .map_err(RedisError::redis(format!("EXISTS {stream}")))?;
    if !exists {
        return Ok(None);
    }
    let length: u64 = query(conn, redis::cmd("XLEN").arg(stream), "XLEN", stream).await?;
    let last = last_entry(conn, stream).await?;
    let dlq_length: u64 = query(conn, redis::cmd("XLEN").arg(dlq), "XLEN", dlq).await?;
    let infos: Vec<HashMap<String, Value>> = query(
        conn,
        redis::cmd("XINFO").arg("GROUPS").arg(stream),
        "XINFO GROUPS",
        stream,
    )
    .await?;
    let mut groups = Vec::new();
    for info in infos {
        groups.push(group_status(conn, stream, &info).await?);
    }
    Ok(Some(StreamStatus {
        stream: stream.to_string(),
        length,
        last_entry: last.map(|id| id.to_string()),
        groups,
        dlq_length,
    }))
}

/// What the metrics need of a stream: each group's counts and the length of its
/// dead-letter stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamGauges {
    pub groups: Vec<GroupCounts>,
    pub dlq_length: u64,
}

/// A group's counts, as XINFO GROUPS gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupCounts {
    pub group: String,
    /// Entries not yet delivered (Redis ≥ 7; `None` when Redis cannot tell).
    pub lag: Option<u64>,
    pub pending: u64,
    pub consumers: u64,
}

/// Each stream's [`StreamGauges`] (`None`: it does not exist), as [`gauges`] answers.
pub type Gauges = Vec<(
    std::sync::Arc<str>,
    Result<Option<StreamGauges>, RedisError>,
)>;

/// The [`StreamGauges`] of each `(stream, dead-letter stream)`, `None` for a stream that
/// does not exist: two commands a stream (XINFO GROUPS, XLEN), for many streams at once
/// ([`super::at_once`]), so that 1,600 streams take a few round trips, not 16,000 one
/// after the other.
pub async fn gauges(conn: &Control, streams: Vec<(std::sync::Arc<str>, String)>) -> Gauges {
    let asks: Vec<_> = streams
        .into_iter()
        .map(|(stream, dlq)| {
            let (mut a, mut b) = (conn.clone(), conn.clone());
            async move {
                let info = redis::cmd("XINFO").arg("GROUPS").arg(&*stream).to_owned();
                let len = redis::cmd("XLEN").arg(&dlq).to_owned();
                let (infos, dlq_length) = tokio::join!(
                    info.query_async::<Vec<HashMap<String, Value>>>(&mut a),
                    len.query_async::<u64>(&mut b)
                );
                let outcome = match infos {
                    Err(e) if e.to_string().contains("no such key") => Ok(None),
                    Err(e) => Err(RedisError::redis(format!("XINFO GROUPS {stream}"))(e)),
                    Ok(infos) => dlq_length
                        .map_err(RedisError::redis(format!("XLEN {dlq}")))
                        .map(|dlq_length| {
                            Some(StreamGauges {
                                groups: infos.iter().map(group_counts).collect(),
                                dlq_length,
                            })
                        }),
                };
                (stream, outcome)
            }
        })
        .collect();
    super::at_once(asks).await
}

/// A group's counts from its XINFO GROUPS reply.
fn group_counts(info: &HashMap<String, Value>) -> GroupCounts {
    GroupCounts {
        group: text(info.get("name")),
        lag: number(info.get("lag")),
        pending: number(info.get("pending")).unwrap_or(0),
        consumers: number(info.get("consumers")).unwrap_or(0),
    }
}

/// A group of `stream` (`info`: its XINFO GROUPS reply), with XINFO CONSUMERS and the
/// oldest entry of XPENDING.
async fn group_status(
    conn: &mut Control,
    stream: &str,
    info: &HashMap<String, Value>,
) -> Result<GroupStatus, RedisError> {
    let group = text(info.get("name"));
    let consumers = consumers(conn, stream, &group).await?;
    let oldest: Vec<(String, String, u64, u64)> = query(
        conn,
        redis::cmd("XPENDING")
            .arg(stream)
            .arg(&group)
            .arg("-")
            .arg("+")
            .arg(1),
        "XPENDING",
        stream,
    )
    .await?;
    Ok(GroupStatus {
        lag: number(info.get("lag")),
        pending: number(info.get("pending")).unwrap_or(0),
        last_delivered: text(info.get("last-delivered-id")),
        oldest_pending_idle_ms: oldest.first().map(|(_, _, idle, _)| *idle),
        consumers,
        group,
    })
}

/// The consumers of `group` on `stream` (XINFO CONSUMERS).
pub async fn consumers(
    conn: &mut Control,
    stream: &str,
    group: &str,
) -> Result<Vec<ConsumerStatus>, RedisError> {
    let consumers: Vec<HashMap<String, Value>> = query(
        conn,
        redis::cmd("XINFO").arg("CONSUMERS").arg(stream).arg(group),
        "XINFO CONSUMERS",
        stream,
    )
    .await?;
    Ok(consumers
        .iter()
        .map(|c| ConsumerStatus {
            name: text(c.get("name")),
            pending: number(c.get("pending")).unwrap_or(0),
            idle_ms: number(c.get("idle")).unwrap_or(0),
        })
        .collect())
}

async fn query<T: redis::FromRedisValue>(
    conn: &mut Control,
    cmd: &redis::Cmd,
    name: &str,
    stream: &str,
) -> Result<T, RedisError> {
    cmd.query_async(conn)
        .await
        .map_err(RedisError::redis(format!("{name} {stream}")))
}

/// A reply field as text (empty when absent).
pub(super) fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(i)) => i.to_string(),
        _ => String::new(),
    }
}

fn number(v: Option<&Value>) -> Option<u64> {
    match v {
        Some(Value::Int(i)) => u64::try_from(*i).ok(),
        Some(Value::BulkString(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// How long ago (seconds) each client named `name` sent its last command, from CLIENT
/// LIST; `None` when the server refuses CLIENT LIST (an ACL without `client|list`).
pub async fn named_clients(conn: &mut Control, name: &str) -> Result<Option<Vec<u64>>, RedisError> {
    let list: redis::RedisResult<String> = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("normal")
        .query_async(conn)
        .await;
    let list = match list {
        Ok(list) => list,
        Err(e) if e.code() == Some("NOPERM") => return Ok(None),
        Err(e) => return Err(RedisError::redis("CLIENT LIST".to_string())(e)),
    };
    let wanted = format!("name={name}");
    Ok(Some(
        list.lines()
            .filter(|line| line.split(' ').any(|f| f == wanted))
            .map(|line| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix("idle="))
                    .and_then(|i| i.parse().ok())
                    .unwrap_or(0)
            })
            .collect(),
    ))
}

/// Whether an entry of `stream` at or before `upto` may still reach `group`'s
/// consumers: one not yet delivered to the group, or one delivered and still pending.
/// `false` for a stream or group that does not exist.
pub async fn on_the_way(
    conn: &mut Control,
    stream: &str,
    group: &str,
    upto: EntryId,
) -> Result<bool, RedisError> {
    let infos: Vec<HashMap<String, Value>> = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
    {
        Ok(infos) => infos,
        // No such stream.
        Err(e) if e.code() == Some("ERR") => return Ok(false),
        Err(e) => return Err(RedisError::redis(format!("XINFO GROUPS {stream}"))(e)),
    };
    let Some(info) = infos.iter().find(|i| text(i.get("name")) == group) else {
        return Ok(false);
    };
    let delivered = EntryId::parse(&text(info.get("last-delivered-id"))).unwrap_or(EntryId::ZERO);
    if delivered < upto {
        let next: Vec<(String, Value)> = query(
            conn,
            redis::cmd("XRANGE")
                .arg(stream)
                .arg(format!("({delivered}"))
                .arg(upto.to_string())
                .arg("COUNT")
                .arg(1),
            "XRANGE",
            stream,
        )
        .await?;
        if !next.is_empty() {
            return Ok(true);
        }
    }
    let pending: Vec<(String, String, u64, u64)> = query(
        conn,
        redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .arg("-")
            .arg(upto.to_string())
            .arg(1),
        "XPENDING",
        stream,
    )
    .await?;
    Ok(!pending.is_empty())
}
