//! The Redis side of `check`: the ACL rule the config needs (key patterns of the mapped
//! streams, their dead-letter streams and hashes of last errors; every command redsink
//! sends) and one harmless probe per command and key, which Redis refuses with NOPERM
//! when the user lacks it.

use redis::Pipeline;

use super::Report;
use crate::config::{Config, RedisMode, StreamPattern};
use crate::map::Mapping;
use crate::redis::{Control, discover};

/// What redsink sends to Redis (subcommands as ACL spells them).
pub const REDIS_COMMANDS: [&str; 25] = [
    "ping",
    "exists",
    "scan",
    "xreadgroup",
    "xack",
    "xautoclaim",
    "xpending",
    "xgroup|create",
    "xgroup|delconsumer",
    "xgroup|setid",
    "xinfo|groups",
    "xinfo|consumers",
    "xrange",
    "xrevrange",
    "xlen",
    "xadd",
    "xdel",
    "xtrim",
    "eval",
    "multi",
    "exec",
    "hset",
    "hget",
    "hdel",
    "expire",
];

/// Commands the client library sends in one deployment mode only (cluster: the slot map
/// and the masters for SCAN; sentinel: the master's role check), with a harmless call.
fn mode_commands(mode: RedisMode) -> &'static [(&'static str, &'static [&'static str])] {
    match mode {
        RedisMode::Standalone => &[],
        RedisMode::Cluster => &[
            ("cluster|slots", &["CLUSTER", "SLOTS"]),
            ("cluster|nodes", &["CLUSTER", "NODES"]),
        ],
        RedisMode::Sentinel => &[("role", &["ROLE"])],
    }
}

/// `~pattern` key patterns of the mapped streams, their dead-letter streams and those
/// streams' hashes of last errors.
fn key_patterns(config: &Config, mappings: &[Mapping]) -> Vec<String> {
    let escape = |s: &str| {
        s.chars()
            .flat_map(|c| {
                let special = matches!(c, '*' | '?' | '[' | ']' | '\\');
                special.then_some('\\').into_iter().chain([c])
            })
            .collect::<String>()
    };
    let mut out: Vec<String> = Vec::new();
    for m in mappings {
        for p in &m.streams {
            let base = match p {
                StreamPattern::Exact(name) => escape(name),
                StreamPattern::Glob(glob) => glob.clone(),
            };
            let dlq = format!("{base}{}", escape(&config.redis.dlq_suffix));
            for key in [base.clone(), crate::ack::errors_key(&dlq), dlq] {
                if !out.contains(&key) {
                    out.push(key);
                }
            }
        }
    }
    out
}

/// `ACL SETUSER` with the key patterns and commands the config needs.
pub(super) fn acl_rule(config: &Config, mappings: &[Mapping]) -> String {
    let keys: Vec<String> = key_patterns(config, mappings)
        .iter()
        .map(|k| format!("~{k}"))
        .collect();
    let commands: Vec<String> = REDIS_COMMANDS
        .iter()
        .chain(mode_commands(config.redis.mode).iter().map(|(c, _)| c))
        .map(|c| format!("+{c}"))
        .collect();
    format!(
        "ACL SETUSER <user> on ><password> resetkeys {} resetchannels -@all {}",
        keys.join(" "),
        commands.join(" ")
    )
}

/// A group name no one uses: probes that name it fail with NOGROUP, after the ACL check.
const PROBE_GROUP: &str = "redsink-check-probe";

/// One harmless call per command redsink sends on a stream, as `(ACL name, command
/// and arguments)`, on `key` or its dead-letter stream `dlq` (and `errors`, that
/// stream's hash of last errors): each fails after Redis' ACL check or changes nothing.
fn probe_calls<'a>(
    key: &'a str,
    dlq: &'a str,
    errors: &'a str,
) -> [(&'static str, Vec<&'a str>); 23] {
    let g = PROBE_GROUP;
    [
        ("ping", vec!["PING"]),
        ("exists", vec!["EXISTS", key]),
        ("scan", vec!["SCAN", "0", "MATCH", key, "COUNT", "1"]),
        (
            "xreadgroup",
            vec![
                "XREADGROUP",
                "GROUP",
                g,
                "c",
                "COUNT",
                "1",
                "STREAMS",
                key,
                "0",
            ],
        ),
        ("xack", vec!["XACK", key, g, "0-0"]),
        (
            "xautoclaim",
            vec!["XAUTOCLAIM", key, g, "c", "0", "0-0", "COUNT", "1"],
        ),
        ("xpending", vec!["XPENDING", key, g]),
        // An invalid ID: refused after the ACL check, nothing is created.
        (
            "xgroup|create",
            vec!["XGROUP", "CREATE", key, g, "not-an-id"],
        ),
        (
            "xgroup|delconsumer",
            vec!["XGROUP", "DELCONSUMER", key, g, "c"],
        ),
        ("xgroup|setid", vec!["XGROUP", "SETID", key, g, "$"]),
        ("xinfo|groups", vec!["XINFO", "GROUPS", key]),
        ("xinfo|consumers", vec!["XINFO", "CONSUMERS", key, g]),
        ("xrange", vec!["XRANGE", key, "+", "-"]),
        ("xrevrange", vec!["XREVRANGE", key, "-", "+"]),
        ("xlen", vec!["XLEN", key]),
        // ID 0-0 is refused after the ACL check: nothing is added.
        ("xadd", vec!["XADD", dlq, "0-0", "f", "v"]),
        ("xdel", vec!["XDEL", dlq, "0-0"]),
        ("xtrim", vec!["XTRIM", key, "MINID", "0"]),
        // Consumers are pruned by a script (atomically); this one does nothing.
        ("eval", vec!["EVAL", "return 1", "1", key]),
        // redsink's own hash of last errors: a probe field is written and removed.
        ("hset", vec!["HSET", errors, "redsink.check", "1"]),
        ("hget", vec!["HGET", errors, "redsink.check"]),
        ("hdel", vec!["HDEL", errors, "redsink.check"]),
        ("expire", vec!["EXPIRE", errors, "604800"]),
    ]
}

/// One command as a pipeline of one.
fn one(args: &[&str]) -> Pipeline {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let mut p = redis::pipe();
    p.add_command(cmd);
    p
}

/// One harmless call per command redsink sends, on `key` (or its dead-letter stream
/// `dlq`): each fails after Redis' ACL check or changes nothing, so NOPERM means the
/// user lacks that command or key.
fn probes(key: &str, dlq: &str, mode: RedisMode) -> Vec<(&'static str, Pipeline)> {
    let errors = crate::ack::errors_key(dlq);
    let mut out: Vec<(&'static str, Pipeline)> = probe_calls(key, dlq, &errors)
        .into_iter()
        .map(|(name, args)| (name, one(&args)))
        .collect();
    let mut multi = redis::pipe();
    multi.atomic().cmd("PING");
    out.push(("multi", multi.clone()));
    out.push(("exec", multi));
    for (name, args) in mode_commands(mode) {
        out.push((name, one(args)));
    }
    out
}

/// Who the Redis user is, and whether it may run every command on every mapped key.
pub(super) async fn check_redis(
    config: &Config,
    mappings: &[Mapping],
    mut conn: Control,
    report: &mut Report,
) {
    let user: Result<String, _> = redis::cmd("ACL").arg("WHOAMI").query_async(&mut conn).await;
    let who = user.map_or_else(
        |_| "the configured user".to_string(),
        |u| format!("user {u}"),
    );
    report.ok(format!("redis: connected as {who}"));
    // One key per stream pattern: an existing stream if there is one, else a name the
    // pattern matches.
    let mut keys: Vec<String> = Vec::new();
    for m in mappings {
        for p in &m.streams {
            let found = discover(&mut conn, std::slice::from_ref(p)).await.ok();
            let name = match (found.and_then(|f| f.into_iter().next()), p) {
                (Some(name), _) => name,
                (None, StreamPattern::Exact(name)) => name.clone(),
                (None, StreamPattern::Glob(glob)) => glob.replace(['*', '?'], "x"),
            };
            if !keys.contains(&name) {
                keys.push(name);
            }
        }
    }
    let mut denied: Vec<String> = Vec::new();
    for key in &keys {
        let dlq = config.redis.dlq_stream(key);
        for (command, probe) in probes(key, &dlq, config.redis.mode) {
            let result: redis::RedisResult<redis::Value> = probe.query_async(&mut conn).await;
            if let Err(e) = result
                && e.code() == Some("NOPERM")
            {
                denied.push(format!("{command} on {key}"));
            }
        }
    }
    if denied.is_empty() {
        report.ok(format!(
            "redis: {who} may run every command redsink needs on {}",
            keys.join(", ")
        ));
    } else {
        report.problem(format!(
            "redis: {who} may not run: {} — apply the rule below",
            denied.join(", ")
        ));
    }
}
