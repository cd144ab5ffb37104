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
    // Transaction mode reads (XRANGE, XREVRANGE, XLEN, EXISTS) the transaction stream.
    if let Some(t) = &config.transactions {
        let key = escape(&t.stream);
        if !out.contains(&key) {
            out.push(key);
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

/// What one probe's reply says about the user.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// It ran, or Redis refused it after the ACL check for the reason the probe was
    /// built to meet (an unknown group, a missing key, an invalid ID).
    Allowed,
    /// NOPERM: the user lacks the command or the key.
    Denied,
    /// Anything else (NOAUTH, WRONGPASS, READONLY, an unknown command, a key of the
    /// wrong type, a lost connection): a problem `run` would meet too.
    Failed,
}

/// Replies a probe is built to get, past the ACL check (Redis 6.2 to 8 wording).
const EXPECTED_ERRORS: [&str; 4] = [
    "no such key",
    "requires the key to exist",
    "invalid stream id",
    "must be greater than",
];

/// The server's error code and detail, also out of a pipeline's failure (each probe is a
/// pipeline of one, and redis-rs gives no code for a pipeline's unknown error kinds).
fn server_reply(e: &redis::RedisError) -> Option<(String, String)> {
    let errors = e.clone().into_server_errors()?;
    let (_, first) = errors.first()?;
    Some((
        first.code().to_string(),
        first.details().unwrap_or_default().to_string(),
    ))
}

fn verdict(result: &redis::RedisResult<redis::Value>) -> Verdict {
    let Err(e) = result else {
        return Verdict::Allowed;
    };
    let Some((code, detail)) = server_reply(e) else {
        return Verdict::Failed;
    };
    let detail = detail.to_ascii_lowercase();
    match code.as_str() {
        "NOPERM" => Verdict::Denied,
        "NOGROUP" => Verdict::Allowed,
        "ERR" if EXPECTED_ERRORS.iter().any(|m| detail.contains(m)) => Verdict::Allowed,
        _ => Verdict::Failed,
    }
}

/// Whether Redis refused because the connection is not (or wrongly) authenticated.
fn is_auth_error(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || server_reply(e).is_some_and(|(code, _)| code == "NOAUTH" || code == "WRONGPASS")
}

/// A probe's error in one line: the server's reply, or what redis-rs says.
fn describe(e: &redis::RedisError) -> String {
    server_reply(e).map_or_else(
        || e.to_string(),
        |(code, detail)| format!("{code} {detail}"),
    )
}

/// What to do about an authentication error.
fn auth_problem(e: &redis::RedisError) -> String {
    format!(
        "redis: not authenticated ({}): the server requires a password: put the user and \
         password in redis.url (redis://user:password@host:port) or redis.url_file",
        server_reply(e).map_or_else(|| "authentication failed".to_string(), |(code, _)| code)
    )
}

/// Who the Redis user is; `None` (with the problem reported) when the connection cannot
/// run commands at all.
async fn whoami(conn: &mut Control, report: &mut Report) -> Option<String> {
    let user: redis::RedisResult<String> = redis::cmd("ACL").arg("WHOAMI").query_async(conn).await;
    match user {
        Ok(u) => Some(format!("user {u}")),
        Err(e) if is_auth_error(&e) => {
            report.problem(auth_problem(&e));
            None
        }
        // The least-privilege rule does not grant ACL WHOAMI: the probes tell the rest.
        Err(e) if server_reply(&e).is_some_and(|(code, _)| code == "NOPERM" || code == "ERR") => {
            Some("the configured user".to_string())
        }
        Err(e) => {
            report.problem(format!("redis: ACL WHOAMI failed: {}", describe(&e)));
            None
        }
    }
}

/// One key per stream pattern: an existing stream if there is one, else a name the
/// pattern matches.
async fn probe_keys(mappings: &[Mapping], conn: &mut Control) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for m in mappings {
        for p in &m.streams {
            let found = discover(conn, std::slice::from_ref(p)).await.ok();
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
    keys
}

/// Who the Redis user is, and whether it may run every command on every mapped key.
pub(super) async fn check_redis(
    config: &Config,
    mappings: &[Mapping],
    mut conn: Control,
    report: &mut Report,
) {
    let Some(who) = whoami(&mut conn, report).await else {
        return;
    };
    report.ok(format!("redis: connected as {who}"));
    let keys = probe_keys(mappings, &mut conn).await;
    let mut denied: Vec<String> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for key in &keys {
        let dlq = config.redis.dlq_stream(key);
        for (command, probe) in probes(key, &dlq, config.redis.mode) {
            let result: redis::RedisResult<redis::Value> = probe.query_async(&mut conn).await;
            match (verdict(&result), result) {
                (Verdict::Denied, _) => denied.push(format!("{command} on {key}")),
                (Verdict::Failed, Err(e)) if is_auth_error(&e) => {
                    report.problem(auth_problem(&e));
                    return;
                }
                (Verdict::Failed, Err(e)) => {
                    failed.push(format!("{command} on {key}: {}", describe(&e)));
                }
                _ => {}
            }
        }
    }
    if !failed.is_empty() {
        report.problem(format!(
            "redis: unexpected errors (`run` would meet them too): {}",
            failed.join("; ")
        ));
    }
    if !denied.is_empty() {
        report.problem(format!(
            "redis: {who} may not run: {} — apply the rule below",
            denied.join(", ")
        ));
    } else if failed.is_empty() {
        report.ok(format!(
            "redis: {who} may run every command redsink needs on {}",
            keys.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::{Verdict, verdict};

    /// A reply as Redis sends it, through redis-rs' parser.
    fn reply(line: &str) -> redis::RedisResult<redis::Value> {
        redis::parse_redis_value(format!("-{line}\r\n").as_bytes())?.extract_error()
    }

    #[test]
    fn only_the_errors_a_probe_is_built_to_meet_are_allowed() {
        let cases = [
            (
                "NOGROUP No such key 'k' or consumer group 'g'",
                Verdict::Allowed,
            ),
            ("ERR no such key", Verdict::Allowed),
            (
                "ERR The ID specified in XADD must be greater than 0-0",
                Verdict::Allowed,
            ),
            (
                "NOPERM User u has no permissions to run the 'xack' command",
                Verdict::Denied,
            ),
            ("NOAUTH Authentication required.", Verdict::Failed),
            ("WRONGPASS invalid username-password pair", Verdict::Failed),
            (
                "READONLY You can't write against a read only replica.",
                Verdict::Failed,
            ),
            (
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                Verdict::Failed,
            ),
            ("ERR unknown command 'XAUTOCLAIM'", Verdict::Failed),
        ];
        for (line, expected) in cases {
            assert_eq!(verdict(&reply(line)), expected, "{line}");
        }
        assert_eq!(verdict(&Ok(redis::Value::Nil)), Verdict::Allowed);
    }
}
