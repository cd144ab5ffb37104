//! Routing by hash slot: the slot of a key, the masters of a cluster, and pipelines
//! split per slot ([`pipeline_by_key`]) for connections that know whether they are
//! routed ([`Routed`]).

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline};

use super::Control;

/// A connection that knows whether its commands are routed by hash slot.
pub trait Routed: ConnectionLike + Clone + Send + 'static {
    fn is_cluster(&self) -> bool;
}

impl Routed for Control {
    fn is_cluster(&self) -> bool {
        Control::is_cluster(self)
    }
}

impl Routed for MultiplexedConnection {
    fn is_cluster(&self) -> bool {
        false
    }
}

impl Routed for ClusterConnection {
    fn is_cluster(&self) -> bool {
        true
    }
}

/// Sends `commands` (each with the key it is routed by) in as few round trips as the
/// deployment allows: one pipeline, or on a cluster one pipeline per hash slot, sent
/// concurrently. Returns the number of pipelines sent.
pub async fn pipeline_by_key<C: Routed>(
    conn: &mut C,
    commands: Vec<(Vec<u8>, Cmd)>,
) -> redis::RedisResult<usize> {
    if commands.is_empty() {
        return Ok(0);
    }
    if !conn.is_cluster() {
        let mut pipe = redis::pipe();
        for (_, cmd) in commands {
            pipe.add_command(cmd).ignore();
        }
        pipe.query_async::<()>(conn).await?;
        return Ok(1);
    }
    let mut by_slot: std::collections::BTreeMap<u16, Pipeline> = Default::default();
    for (key, cmd) in commands {
        by_slot
            .entry(slot(&key))
            .or_insert_with(redis::pipe)
            .add_command(cmd)
            .ignore();
    }
    let sent = by_slot.len();
    let results = join_all(by_slot.into_values().map(|pipe| {
        let mut conn = conn.clone();
        async move { pipe.query_async::<()>(&mut conn).await }
    }))
    .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(sent)
}

/// What one slot's pipeline of [`pipeline_per_slot`] came to.
pub struct SlotOutcome {
    pub slot: u16,
    /// The indices (in the caller's list) of the commands it carried.
    pub commands: Vec<usize>,
    /// `None`: no answer within the time allowed (the commands may still run).
    pub result: Option<redis::RedisResult<()>>,
}

/// Sends `commands` (each with the key it is routed by) on a cluster connection as one
/// pipeline per hash slot, concurrently, each given `within` to answer, and says how
/// each slot's pipeline went, so that a master that is away holds up only its own
/// slots. Slots in `skip` are not sent (their outcome is `None`).
pub async fn pipeline_per_slot(
    conn: &mut Control,
    commands: Vec<(Vec<u8>, Cmd)>,
    within: std::time::Duration,
    skip: impl Fn(u16) -> bool,
) -> Vec<SlotOutcome> {
    let mut by_slot: std::collections::BTreeMap<u16, (Vec<usize>, Pipeline)> = Default::default();
    for (i, (key, cmd)) in commands.into_iter().enumerate() {
        let (indices, pipe) = by_slot
            .entry(slot(&key))
            .or_insert_with(|| (Vec::new(), redis::pipe()));
        indices.push(i);
        pipe.add_command(cmd).ignore();
    }
    join_all(by_slot.into_iter().map(|(slot, (commands, pipe))| {
        let mut conn = conn.clone();
        let send = !skip(slot);
        async move {
            let result = if send {
                tokio::time::timeout(within, pipe.query_async::<()>(&mut conn))
                    .await
                    .ok()
            } else {
                None
            };
            SlotOutcome {
                slot,
                commands,
                result,
            }
        }
    }))
    .await
}

/// `<id> <addr> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges…>` lines of
/// `CLUSTER NODES` → the first slot of each master that serves slots.
pub(super) fn master_slots(text: &str) -> Vec<u16> {
    text.lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let flags = parts.get(2)?;
            if !flags.split(',').any(|f| f == "master") {
                return None;
            }
            // Ranges `a-b` or single slots; `[…]` are slots being migrated.
            parts.get(8..)?.iter().find_map(|range| {
                let first = range.split('-').next()?;
                first.parse::<u16>().ok()
            })
        })
        .collect()
}

/// The cluster hash slot of `key` (CRC16/XMODEM of the key or of its `{hash tag}`).
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"{}x"), slot(b"{}x"));
        assert_ne!(slot(b"{}x"), slot(b"x"));
        assert_eq!(slot(b"orders:{7}"), slot(b"7"));
    }

    #[test]
    fn finds_a_slot_of_each_master_in_cluster_nodes() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,host-b master - 0 0 2 connected 5461 5462-10922 [5461->-a1]
c3 127.0.0.1:7002@17002 master,fail - 0 0 3 connected
d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected
e5 127.0.0.1:7004@17004 master,fail? - 0 0 4 connected 10923-16383
";
        assert_eq!(master_slots(text), vec![0, 5461, 10923]);
    }
}
