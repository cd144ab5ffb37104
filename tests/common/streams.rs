//! The test's streams in the shared Redis: XADD, and what the group and the dead-letter
//! stream hold (pending, lag, consumers), and cleaning up a prefix.

use redis::aio::MultiplexedConnection;

use super::redis;

/// Deletes every key that starts with `prefix` (the test's streams and DLQs).
pub async fn cleanup_streams(prefix: &str) {
    let mut conn = redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// XADD one compact-format entry; returns its ID.
pub async fn xadd(
    conn: &mut MultiplexedConnection,
    stream: &str,
    key: &str,
    value: &str,
) -> String {
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(key)
        .arg(value)
        .query_async(conn)
        .await
        .expect("XADD")
}

/// Number of entries pending in `group` on `stream`.
pub async fn pending<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> u64 {
    // No group yet counts as nothing pending.
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .unwrap_or(redis::Value::Nil);
    match reply {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        },
        _ => 0,
    }
}

/// Entries of `group` not yet delivered on `stream` (XINFO GROUPS `lag`).
pub async fn lag<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> Option<u64> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .ok()?;
    let g = groups.into_iter().find(
        |g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes()),
    )?;
    match g.get("lag") {
        Some(redis::Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// True when on every stream the group has read everything and acked it.
pub async fn drained<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    streams: &[String],
    group: &str,
) -> bool {
    for s in streams {
        if lag(conn, s, group).await != Some(0) || pending(conn, s, group).await != 0 {
            return false;
        }
    }
    true
}

/// The dead letters of `stream` (`<stream>:dlq`): (ID, fields), oldest first.
pub async fn dead_letters<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
) -> Vec<(String, std::collections::HashMap<String, String>)> {
    redis::cmd("XRANGE")
        .arg(format!("{stream}:dlq"))
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE of the dead-letter stream")
}

pub async fn xlen<C: redis::aio::ConnectionLike + Send>(conn: &mut C, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .expect("XLEN")
}

/// Consumer names of `group` on `stream`.
pub async fn consumers<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> Vec<String> {
    let list: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .unwrap_or_default();
    list.iter()
        .filter_map(|c| match c.get("name") {
            Some(redis::Value::BulkString(n)) => Some(String::from_utf8_lossy(n).into_owned()),
            _ => None,
        })
        .collect()
}
