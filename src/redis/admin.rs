//! The raw Redis commands of group, consumer and stream administration: leaving a
//! group, pruning consumers and trimming (Lua scripts, so each look-and-change is
//! atomic), XGROUP SETID, and XRANGE/XADD/XDEL of whole entries. Used by the pipeline's
//! chores and by the operator commands in `ops` (which own what a dead letter is).

use std::time::Duration;

use super::{Control, RedisError};
use crate::entry::EntryId;

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
) -> Result<bool, RedisError> {
    let dropped: i64 = redis::cmd("EVAL")
        .arg(LEAVE_SCRIPT)
        .arg(1)
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .query_async(conn)
        .await
        .map_err(RedisError::redis(format!(
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

/// Gives back a delivery: for each entry ID in ARGV[3..] still pending for consumer
/// ARGV[2] of group ARGV[1] on KEYS[1] and still in the stream, sets its delivery count
/// one lower (not below 0), keeping its owner and idle time (XCLAIM to the same consumer
/// with IDLE, RETRYCOUNT and JUSTID). An entry another consumer claimed meanwhile is
/// left alone; so is one deleted from the stream (XCLAIM would drop it from the PEL
/// silently, and its loss must reach the dead-letter stream). Returns how many changed.
const RELEASE_SCRIPT: &str = r"
local released = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #p == 1 and #redis.call('XRANGE', KEYS[1], id, id) == 1 then
    local count = math.max(tonumber(p[1][4]) - 1, 0)
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id,
      'IDLE', p[1][3], 'RETRYCOUNT', count, 'JUSTID')
    released = released + 1
  end
end
return released
";

/// Gives back one delivery of each of `ids` (see the script): entries this consumer read
/// but did not fail on, when it stops, so that restarts do not bring them nearer to
/// `max_deliveries`. Returns how many were released.
pub async fn release_entries(
    conn: &mut Control,
    stream: &str,
    group: &str,
    consumer: &str,
    ids: &[EntryId],
) -> Result<u64, RedisError> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(RELEASE_SCRIPT)
        .arg(1)
        .arg(stream)
        .arg(group)
        .arg(consumer);
    for id in ids {
        cmd.arg(id.to_string());
    }
    cmd.query_async(conn)
        .await
        .map_err(RedisError::redis(format!(
            "releasing {} entries of {stream}",
            ids.len()
        )))
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
) -> Result<Vec<String>, RedisError> {
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
        .map_err(RedisError::redis(format!(
            "pruning idle consumers of {group} on {stream}"
        )))
}

/// Trims stream KEYS[1] below the oldest entry some consumer group still needs (its
/// first pending entry, or the first after its last-delivered ID), in one script, so a
/// group created or reset meanwhile cannot lose entries between the look and the trim.
/// IDs are compared as decimal strings (their parts can exceed a Lua number's 2^53).
/// Returns how many entries went; a stream without groups is not trimmed.
const TRIM_ACKED_SCRIPT: &str = r"
local function cmp(x, y)
  if #x ~= #y then return #x < #y and -1 or 1 end
  if x == y then return 0 end
  return x < y and -1 or 1
end
local function less(a, b)
  local c = cmp(a[1], b[1])
  if c ~= 0 then return c < 0 end
  return cmp(a[2], b[2]) < 0
end
local function inc(s)
  local out, carry = {}, 1
  for j = #s, 1, -1 do
    local d = string.byte(s, j) - 48 + carry
    if d == 10 then d, carry = 0, 1 else carry = 0 end
    out[j] = string.char(d + 48)
  end
  local r = table.concat(out)
  if carry == 1 then r = '1' .. r end
  return r
end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return {ms, seq}
end
local oldest = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  local l = parse(last)
  local needed
  if l[2] == '18446744073709551615' then needed = {inc(l[1]), '0'} else needed = {l[1], inc(l[2])} end
  local p = redis.call('XPENDING', KEYS[1], name, '-', '+', 1)
  if #p > 0 then
    local first = parse(p[1][1])
    if less(first, needed) then needed = first end
  end
  if oldest == nil or less(needed, oldest) then oldest = needed end
end
if oldest == nil then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', '=', oldest[1] .. '-' .. oldest[2])
";

/// Trims what every consumer group on `stream` has acknowledged (see the script);
/// returns how many entries went.
pub async fn trim_acked(conn: &mut Control, stream: &str) -> Result<u64, RedisError> {
    redis::cmd("EVAL")
        .arg(TRIM_ACKED_SCRIPT)
        .arg(1)
        .arg(stream)
        .query_async(conn)
        .await
        .map_err(RedisError::redis(format!(
            "trimming what every group acknowledged on {stream}"
        )))
}

/// Trims `stream` below `min_id` (`XTRIM … MINID = …`, exact); returns how many went.
pub async fn trim_below(
    conn: &mut Control,
    stream: &str,
    min_id: EntryId,
) -> Result<u64, RedisError> {
    redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg("=")
        .arg(min_id.to_string())
        .query_async(conn)
        .await
        .map_err(RedisError::redis(format!("XTRIM {stream} MINID {min_id}")))
}

/// Trims `stream` to its newest `max_len` entries (`XTRIM … MAXLEN = …`); returns how
/// many went.
pub async fn trim_to_len(
    conn: &mut Control,
    stream: &str,
    max_len: u64,
) -> Result<u64, RedisError> {
    redis::cmd("XTRIM")
        .arg(stream)
        .arg("MAXLEN")
        .arg("=")
        .arg(max_len)
        .query_async(conn)
        .await
        .map_err(RedisError::redis(format!(
            "XTRIM {stream} MAXLEN {max_len}"
        )))
}

/// Moves the group's last-delivered ID (XGROUP SETID): entries after `id` will be
/// delivered (again). Entries already pending stay pending.
pub async fn set_group_id(
    conn: &mut Control,
    stream: &str,
    group: &str,
    id: &str,
) -> Result<(), RedisError> {
    redis::cmd("XGROUP")
        .arg("SETID")
        .arg(stream)
        .arg(group)
        .arg(id)
        .query_async::<()>(conn)
        .await
        .map_err(RedisError::redis(format!(
            "XGROUP SETID {stream} {group} {id}"
        )))
}

/// A field and its value, as bytes.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Up to `count` entries of `key` from `start` to `end` (XRANGE syntax), each as its ID
/// and its fields as bytes (binary values kept as they are, for moving them back).
pub async fn range_fields(
    conn: &mut Control,
    key: &str,
    (start, end): (&str, &str),
    count: usize,
) -> Result<Vec<(String, Vec<Pair>)>, RedisError> {
    redis::cmd("XRANGE")
        .arg(key)
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(i64::try_from(count).unwrap_or(i64::MAX))
        .query_async(conn)
        .await
        .map_err(RedisError::redis(format!("XRANGE {key}")))
}

/// Adds `fields` to stream `to` as a new entry and deletes entry `id` of `from`, in one
/// MULTI/EXEC; `context` names the move in an error. Returns the new entry's ID.
///
/// On a cluster, streams in different hash slots cannot share a transaction: then it
/// adds, then deletes, and a failure in between leaves the old entry in place (moving
/// it again adds the entry again).
pub async fn move_entry(
    conn: &mut Control,
    (from, id): (&str, &str),
    to: &str,
    fields: &[Pair],
    context: &str,
) -> Result<String, RedisError> {
    let mut xadd = redis::cmd("XADD");
    xadd.arg(to).arg("*");
    for (f, v) in fields {
        xadd.arg(f.as_slice()).arg(v.as_slice());
    }
    if conn.is_cluster() && super::slot(to.as_bytes()) != super::slot(from.as_bytes()) {
        let new_id: String = xadd
            .query_async(conn)
            .await
            .map_err(RedisError::redis(context))?;
        let _: i64 = redis::cmd("XDEL")
            .arg(from)
            .arg(id)
            .query_async(conn)
            .await
            .map_err(RedisError::redis(context))?;
        return Ok(new_id);
    }
    let (new_id, _): (String, i64) = redis::pipe()
        .atomic()
        .add_command(xadd)
        .cmd("XDEL")
        .arg(from)
        .arg(id)
        .query_async(conn)
        .await
        .map_err(RedisError::redis(context))?;
    Ok(new_id)
}

/// Deletes entries of `key` by ID (XDEL); returns how many existed.
pub async fn delete_entries(
    conn: &mut Control,
    key: &str,
    ids: &[String],
) -> Result<u64, RedisError> {
    if ids.is_empty() {
        return Ok(0);
    }
    redis::cmd("XDEL")
        .arg(key)
        .arg(ids)
        .query_async(conn)
        .await
        .map_err(RedisError::redis(format!("XDEL {key}")))
}
