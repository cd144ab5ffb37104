//! `redsink check`: validates a config against the real Redis and Postgres without
//! changing anything, and derives the least privileges it needs (a Redis ACL rule and
//! Postgres GRANTs).

use std::time::Duration;

use sqlx::PgPool;

use crate::config::StreamPattern;
use crate::config::{Config, RedisMode};
use crate::decode::{self, Decoded};
use crate::map::{self, Mapping, RowOp};
use crate::redis::{Control, connect_control, discover, inspect, range};
use crate::table::{TableName, quote_ident};
use crate::write::{self, INTERNAL_TABLES, VERSION_COLUMN};

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

/// One finding: fine, or a problem with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub text: String,
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// `ACL SETUSER <user> …` with `<user>` and `<password>` to fill in.
    pub redis_acl: String,
    /// SQL, `<role>` to fill in.
    pub postgres_grants: Vec<String>,
}

impl Report {
    fn ok(&mut self, text: impl Into<String>) {
        self.findings.push(Finding {
            ok: true,
            text: text.into(),
        });
    }
    fn problem(&mut self, text: impl Into<String>) {
        self.findings.push(Finding {
            ok: false,
            text: text.into(),
        });
    }
    pub fn problems(&self) -> usize {
        self.findings.iter().filter(|f| !f.ok).count()
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs every check; never fails as a whole (each failure is a finding).
pub async fn check(config: &Config) -> Report {
    let mut report = Report::default();
    let mut mappings = Vec::new();
    for (i, m) in config.mappings.iter().enumerate() {
        match Mapping::compile(i, m) {
            Ok(m) => mappings.push(m),
            Err(e) => report.problem(format!("mapping[{i}]: {e}")),
        }
    }
    report.redis_acl = acl_rule(config, &mappings);
    report.postgres_grants = grants(config);
    let redis = match tokio::time::timeout(TIMEOUT, connect_control(&config.redis)).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            report.problem(format!("{e}: {}", crate::pipeline::source_chain(&e)));
            None
        }
        Err(_) => {
            report.problem("redis: no answer within 10 s: check redis.url");
            None
        }
    };
    let pool = match tokio::time::timeout(TIMEOUT, write::connect(&config.postgres.url, 1)).await {
        Ok(Ok(pool)) => Some(pool),
        Ok(Err(e)) => {
            report.problem(format!(
                "postgres: {e}: {}",
                crate::pipeline::source_chain(&e)
            ));
            None
        }
        Err(_) => {
            report.problem("postgres: no answer within 10 s: check postgres.url");
            None
        }
    };
    if let Some(conn) = &redis {
        check_redis(config, &mappings, conn.clone(), &mut report).await;
    }
    if let Some(pool) = &pool {
        check_postgres(config, &mappings, pool, &mut report).await;
        if let Some(conn) = &redis {
            check_samples(config, &mappings, conn.clone(), pool, &mut report).await;
        }
        pool.close().await;
    }
    report
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

fn acl_rule(config: &Config, mappings: &[Mapping]) -> String {
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

/// `schema` of a table template, when it is fixed.
fn fixed_schema(table: &str) -> Option<String> {
    let schema = table.split_once('.').map_or("public", |(s, _)| s);
    (!schema.contains("${")).then(|| schema.to_string())
}

fn grants(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut schemas: Vec<String> = Vec::new();
    for m in &config.mappings {
        match fixed_schema(&m.table) {
            Some(schema) => {
                if !schemas.contains(&schema) {
                    out.push(format!("GRANT USAGE ON SCHEMA {} TO <role>;", quote_ident(&schema)));
                    schemas.push(schema.clone());
                }
                if m.table.contains("${") {
                    out.push(format!(
                        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO <role>;",
                        quote_ident(&schema)
                    ));
                } else if let Ok(name) = TableName::parse(&m.table) {
                    out.push(format!(
                        "GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO <role>;",
                        name.quoted()
                    ));
                }
            }
            None => out.push(format!(
                "-- {}: grant USAGE and SELECT, INSERT, UPDATE, DELETE on the tables this template names",
                m.table
            )),
        }
    }
    out.push("GRANT USAGE ON SCHEMA redsink TO <role>;".into());
    out.push(format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO <role>;",
        INTERNAL_TABLES.join(", ")
    ));
    out
}

/// A group name no one uses: probes that name it fail with NOGROUP, after the ACL check.
const PROBE_GROUP: &str = "redsink-check-probe";

/// One harmless call per command redsink sends, on `key` (or its dead-letter stream
/// `dlq`): each fails after Redis' ACL check or changes nothing, so NOPERM means the
/// user lacks that command or key.
fn probes(key: &str, dlq: &str, mode: RedisMode) -> Vec<(&'static str, redis::Pipeline)> {
    let g = PROBE_GROUP;
    let errors = crate::ack::errors_key(dlq);
    let table: [(&'static str, Vec<&str>); 23] = [
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
        ("hset", vec!["HSET", &errors, "redsink.check", "1"]),
        ("hget", vec!["HGET", &errors, "redsink.check"]),
        ("hdel", vec!["HDEL", &errors, "redsink.check"]),
        ("expire", vec!["EXPIRE", &errors, "604800"]),
    ];
    let one = |args: &[&str]| {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let mut p = redis::pipe();
        p.add_command(cmd);
        p
    };
    let mut out: Vec<(&'static str, redis::Pipeline)> = table
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

async fn check_redis(
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

async fn check_postgres(config: &Config, mappings: &[Mapping], pool: &PgPool, report: &mut Report) {
    let who: Result<String, _> = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await;
    match who {
        Ok(role) => report.ok(format!("postgres: connected as role {role}")),
        Err(e) => {
            report.problem(format!("postgres: {e}"));
            return;
        }
    }
    match write::internal_tables_present(pool).await {
        Ok(true) => {
            for t in INTERNAL_TABLES {
                privileges(pool, t, report).await;
            }
        }
        Ok(false) => report.problem(
            "postgres: redsink's schema is missing: `redsink run` creates it if this role may \
             CREATE in the database; else run `redsink migrate` once as an owner",
        ),
        Err(e) => report.problem(format!("postgres: {e}")),
    }
    for m in mappings {
        let Some(fixed) = m.table.fixed() else {
            report.ok(format!(
                "mapping[{}]: table {} depends on the events: checked on the newest entries below",
                m.index, config.mappings[m.index].table
            ));
            continue;
        };
        let name = match fixed {
            Ok(name) => name,
            Err(e) => {
                report.problem(format!("mapping[{}]: {e}", m.index));
                continue;
            }
        };
        table(pool, &name, m, report).await;
    }
}

async fn privileges(pool: &PgPool, table: &str, report: &mut Report) {
    let mut missing = Vec::new();
    for privilege in ["SELECT", "INSERT", "UPDATE", "DELETE"] {
        let held: Result<bool, _> = sqlx::query_scalar("SELECT has_table_privilege($1, $2)")
            .bind(table)
            .bind(privilege)
            .fetch_one(pool)
            .await;
        if !held.unwrap_or(false) {
            missing.push(privilege);
        }
    }
    if missing.is_empty() {
        report.ok(format!(
            "postgres: {table}: SELECT, INSERT, UPDATE, DELETE granted"
        ));
    } else {
        report.problem(format!(
            "postgres: {table}: missing {} — see the GRANTs below",
            missing.join(", ")
        ));
    }
}

async fn table(pool: &PgPool, name: &TableName, m: &Mapping, report: &mut Report) {
    let (schema, has_version) = match write::inspect_table(pool, name).await {
        Ok(found) => found,
        Err(e) => {
            report.problem(format!("mapping[{}]: {e}", m.index));
            return;
        }
    };
    privileges(pool, &name.quoted(), report).await;
    if let Some(key) = &m.key {
        let found = key
            .iter()
            .all(|k| schema.columns.iter().any(|c| &c.name == k));
        if !found {
            report.problem(format!(
                "mapping[{}]: table {name} has no column for every key field {key:?}",
                m.index
            ));
        }
    }
    if schema.unique_keys.is_empty() {
        report.problem(format!(
            "mapping[{}]: table {name} has no primary key or unique index: add one on the Debezium key columns",
            m.index
        ));
    }
    if has_version {
        report.ok(format!(
            "table {name}: {} columns, version column present",
            schema.columns.len()
        ));
    } else {
        let owner: bool = sqlx::query_scalar(
            "SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = to_regclass($1)",
        )
        .bind(name.quoted())
        .fetch_one(pool)
        .await
        .unwrap_or(false);
        if owner {
            report.ok(format!(
                "table {name}: redsink will add {VERSION_COLUMN} bytea at start"
            ));
        } else {
            report.problem(format!(
                "table {name}: no {VERSION_COLUMN} column and this role does not own the table: \
                 run ALTER TABLE {} ADD COLUMN {VERSION_COLUMN} bytea as its owner",
                name.quoted()
            ));
        }
    }
}

/// Decodes and maps the newest entry of each mapped stream against its table and asks
/// Postgres to cast every value to its column's type.
async fn check_samples(
    config: &Config,
    mappings: &[Mapping],
    mut control: Control,
    pool: &PgPool,
    report: &mut Report,
) {
    for m in mappings {
        let names = match discover(&mut control, &m.streams).await {
            Ok(n) => n,
            Err(e) => return report.problem(e.to_string()),
        };
        for name in names.iter().filter(|n| !config.redis.is_dlq(n)) {
            let stream: std::sync::Arc<str> = std::sync::Arc::from(name.as_str());
            sample(config, m, &mut control, &stream, pool, report).await;
        }
    }
}

async fn sample(
    config: &Config,
    m: &Mapping,
    control: &mut Control,
    stream: &std::sync::Arc<str>,
    pool: &PgPool,
    report: &mut Report,
) {
    let Ok(Some(last)) = inspect::last_entry(control, stream).await else {
        return;
    };
    let id = last.to_string();
    let Ok(entries) = range(control, stream, &id, &id, 1).await else {
        return;
    };
    let Some(entry) = entries.into_iter().next() else {
        return;
    };
    let at = format!("stream {stream} entry {id}");
    let event = match decode::decode(&entry, &config.decode) {
        Ok(Decoded::Change(event)) => event,
        Ok(Decoded::Skip(_)) => return,
        Err(e) => return report.problem(format!("{at}: would be dead-lettered: {}", e.reason)),
    };
    let name = match map::resolve_table(&m.table, &event, stream) {
        Ok(n) => n,
        Err(e) => return report.problem(format!("{at}: {e}")),
    };
    let (schema, _) = match write::inspect_table(pool, &name).await {
        Ok(found) => found,
        Err(e) => return report.problem(format!("{at}: {e}")),
    };
    if event.op == decode::Op::Truncate
        || (event.op == decode::Op::Delete && m.delete == crate::config::DeleteMode::Ignore)
    {
        return;
    }
    let change = match map::map_event(m, &event, entry.id, &std::sync::Arc::new(schema)) {
        Ok(c) => c,
        Err(e) => return report.problem(format!("{at}: would be dead-lettered: {e}")),
    };
    let RowOp::Upsert { columns, values } = &change.op else {
        return report.ok(format!("{at}: a delete of {name}: maps"));
    };
    let casts: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("${}::{}", i + 1, change.table.columns[c].sql_type))
        .collect();
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {}", casts.join(", "))));
    for v in values {
        query = query.bind(v.as_deref());
    }
    match query.execute(pool).await {
        Ok(_) => report.ok(format!(
            "{at}: maps onto {name} and every value fits its column"
        )),
        Err(e) => report.problem(format!("{at}: a value does not fit {name}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_of_templates() {
        assert_eq!(
            fixed_schema("inventory.${source.table}").as_deref(),
            Some("inventory")
        );
        assert_eq!(fixed_schema("${source.schema}.t"), None);
        assert_eq!(fixed_schema("orders").as_deref(), Some("public"));
    }
}
