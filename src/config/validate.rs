//! Validation: what serde cannot check (ranges, grammars, keys that go together), one
//! section at a time. The first failing check is reported, naming its key; the order of
//! the checks is part of the behaviour (which error an operator sees first).

use super::{
    BatchConfig, Config, ConfigError, HttpConfig, MappingConfig, PostgresConfig, RedisConfig,
    RedisMode, StreamPattern, TransactionsConfig, invalid, is_tls_url,
};

/// The URL schemes redis-rs connects with.
const REDIS_SCHEMES: [&str; 6] = ["redis", "rediss", "valkey", "valkeys", "redis+unix", "unix"];

impl Config {
    /// Checks what serde cannot: ranges, templates, non-empty names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.redis.url.trim().is_empty() {
            return Err(invalid(
                "redis.url",
                "is not set: set it in [redis] or in REDSINK_REDIS_URL",
            ));
        }
        if self.postgres.url.trim().is_empty() {
            return Err(invalid(
                "postgres.url",
                "is not set: set it in the file, in REDSINK_POSTGRES_URL or in DATABASE_URL",
            ));
        }
        self.redis.validate_mode()?;
        self.redis.validate_group()?;
        self.postgres.validate()?;
        self.batch.validate()?;
        self.http.validate()?;
        if let Some(t) = &self.transactions {
            t.validate()?;
        }
        if self.mappings.is_empty() {
            return Err(invalid(
                "mapping",
                "no [[mapping]] is configured: add one with `streams` and `table`",
            ));
        }
        for (i, m) in self.mappings.iter().enumerate() {
            m.validate(i)?;
        }
        Ok(())
    }
}

impl RedisConfig {
    /// The keys of `redis.mode` go together; TLS files need a `rediss://` URL.
    fn validate_mode(&self) -> Result<(), ConfigError> {
        self.validate_master_name()?;
        self.validate_schemes()?;
        if self.mode == RedisMode::Cluster && self.wait_replicas > 0 {
            return Err(invalid(
                "redis.wait_replicas",
                "is supported with mode = \"standalone\" and \"sentinel\", not yet with \"cluster\": set it to 0",
            ));
        }
        if self.mode == RedisMode::Standalone && !self.nodes.is_empty() {
            return Err(invalid(
                "redis.nodes",
                "is only used with mode = \"cluster\" (seed nodes) or \"sentinel\" (the sentinels)",
            ));
        }
        Ok(())
    }

    /// Sentinel needs `master_name` and `nodes`; the other modes take no `master_name`.
    fn validate_master_name(&self) -> Result<(), ConfigError> {
        match (self.mode, &self.master_name) {
            (RedisMode::Sentinel, None) => {
                return Err(invalid(
                    "redis.master_name",
                    "is required with mode = \"sentinel\": the name the sentinels monitor (`sentinel monitor <name> …`)",
                ));
            }
            (RedisMode::Sentinel, Some(_)) if self.nodes.is_empty() => {
                return Err(invalid(
                    "redis.nodes",
                    "is required with mode = \"sentinel\": the sentinels' URLs, e.g. [\"redis://sentinel-1:26379\"]",
                ));
            }
            (RedisMode::Standalone | RedisMode::Cluster, Some(_)) => {
                return Err(invalid(
                    "redis.master_name",
                    "is only used with mode = \"sentinel\"",
                ));
            }
            _ => {}
        }
        if self
            .master_name
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            return Err(invalid("redis.master_name", "must not be empty"));
        }
        Ok(())
    }

    /// Redis URLs only (not `http://`); one scheme (`redis://` or `rediss://`) for all
    /// of them; TLS files only with `rediss://`.
    fn validate_schemes(&self) -> Result<(), ConfigError> {
        let urls = std::iter::once(("redis.url".to_string(), &self.url)).chain(
            self.nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("redis.nodes[{i}]"), n)),
        );
        for (key, url) in urls {
            let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            if !scheme.is_some_and(|s| REDIS_SCHEMES.contains(&s.as_str())) {
                return Err(invalid(
                    key,
                    format!(
                        "`{}` is not a Redis URL: write redis://host:6379 (rediss:// for TLS)",
                        super::redact_url(url)
                    ),
                ));
            }
        }
        let tls = |u: &String| is_tls_url(u);
        if self.nodes.iter().any(tls) && !self.nodes.iter().all(tls) {
            return Err(invalid(
                "redis.nodes",
                "mixes redis:// and rediss:// URLs: use one scheme for all of them",
            ));
        }
        if self.mode == RedisMode::Cluster
            && !self.nodes.is_empty()
            && tls(&self.url) != tls(&self.nodes[0])
        {
            return Err(invalid(
                "redis.nodes",
                "use the same scheme as redis.url (redis:// or rediss://) for every seed node",
            ));
        }
        let any_tls = tls(&self.url) || self.nodes.iter().any(tls);
        let set = [
            ("redis.tls_ca_file", &self.tls_ca_file),
            ("redis.tls_cert_file", &self.tls_cert_file),
            ("redis.tls_key_file", &self.tls_key_file),
        ]
        .into_iter()
        .find(|(_, v)| v.is_some());
        if let (false, Some((key, _))) = (any_tls, set) {
            return Err(invalid(
                key,
                "is set but no URL uses rediss://: TLS files apply to rediss:// URLs only \
                 (unset it, e.g. with an empty REDSINK_REDIS_TLS_CA_FILE, or use rediss://)",
            ));
        }
        Ok(())
    }

    /// The consumer group and how it is read: names, start, block, dead-letter suffix.
    fn validate_group(&self) -> Result<(), ConfigError> {
        if self.group.trim().is_empty() {
            return Err(invalid("redis.group", "must not be empty"));
        }
        if let Some(c) = &self.consumer
            && c.trim().is_empty()
        {
            return Err(invalid("redis.consumer", "must not be empty"));
        }
        let start = self.start.as_str();
        if start != "$" && crate::entry::EntryId::parse(start).is_none() {
            return Err(invalid(
                "redis.start",
                format!("`{start}` is neither \"0\", \"$\" nor an entry ID like 1700000000000-0"),
            ));
        }
        if self.block.is_zero() {
            return Err(invalid(
                "redis.block",
                "must be above zero (0 would block forever)",
            ));
        }
        if self.dlq_suffix.is_empty() {
            return Err(invalid(
                "redis.dlq_suffix",
                "must not be empty: the DLQ would be the stream itself",
            ));
        }
        Ok(())
    }
}

impl PostgresConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_url()?;
        if self.pool_size == 0 {
            return Err(invalid("postgres.pool_size", "must be at least 1"));
        }
        Ok(())
    }
}

impl PostgresConfig {
    /// A `postgres://` URL whose secrets sqlx understands. Messages never quote the URL:
    /// it may hold a password.
    fn validate_url(&self) -> Result<(), ConfigError> {
        let url = url::Url::parse(self.url.trim()).ok().filter(|u| {
            u.scheme().eq_ignore_ascii_case("postgres")
                || u.scheme().eq_ignore_ascii_case("postgresql")
        });
        let Some(url) = url else {
            return Err(invalid(
                "postgres.url",
                "must be a URL, postgres://user:password@host:port/database (key=value \
                 connection strings are not supported; percent-encode `@ : / ? #` in a password)",
            ));
        };
        // sqlx ignores parameters it does not know, and logs their values: a secret among
        // them (libpq's sslpassword, a misspelt password) would reach the log.
        for (key, _) in url.query_pairs() {
            if key == "sslpassword" {
                return Err(invalid(
                    "postgres.url",
                    "sslpassword is not supported (the client key must not be encrypted): \
                     decrypt the key (`openssl pkey -in key.pem -out plain.pem`), point \
                     sslkey at it and remove sslpassword",
                ));
            }
            if key != "password" && super::redact::is_secret_key(&key) {
                return Err(invalid(
                    "postgres.url",
                    format!(
                        "unknown parameter `{key}`, which looks like it holds a secret (sqlx \
                         would ignore it and log its value): give the password in the \
                         userinfo (postgres://user:password@host), in `password=`, or in a \
                         file named by PGPASSFILE"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl BatchConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=100_000).contains(&self.max_batch) {
            return Err(invalid("batch.max_batch", "must be between 1 and 100000"));
        }
        if self.max_delay.is_zero() {
            return Err(invalid("batch.max_delay", "must be above zero"));
        }
        Ok(())
    }
}

impl TransactionsConfig {
    /// A stream; its collections can be told (from its name or the list); sane bounds.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.stream.trim().is_empty() {
            return Err(invalid(
                "transactions.stream",
                "is not set: name Debezium's transaction metadata stream, \
                 `<topic.prefix>.transaction` (or remove [transactions])",
            ));
        }
        if self.collections.is_empty() && self.prefix().is_none() {
            return Err(invalid(
                "transactions.collections",
                format!(
                    "is needed: the stream `{}` does not end in `.transaction`, so the data \
                     collections of its END records cannot be matched to the mapped streams; \
                     list them, e.g. [\"public.orders\", \"public.order_lines\"]",
                    self.stream
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.max_events) {
            return Err(invalid(
                "transactions.max_events",
                "must be between 1 and 1000000",
            ));
        }
        if self.wait.is_zero() {
            return Err(invalid("transactions.wait", "must be above zero"));
        }
        Ok(())
    }
}

impl HttpConfig {
    /// The listener's address is `host:port` (a name or an IP, and a port number).
    fn validate(&self) -> Result<(), ConfigError> {
        let Some(address) = &self.address else {
            return Ok(());
        };
        let port = address.rsplit_once(':').and_then(|(host, port)| {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            (!host.is_empty()).then_some(port)?.parse::<u16>().ok()
        });
        if port.is_none() {
            return Err(invalid(
                "http.address",
                format!(
                    "`{address}` is not host:port: write e.g. \"0.0.0.0:9187\" or \"127.0.0.1:9187\""
                ),
            ));
        }
        Ok(())
    }
}

impl MappingConfig {
    /// Mapping `i` (its keys are named `mapping[i].…`): stream patterns, table template, key.
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        if self.streams.is_empty() {
            return Err(invalid(
                format!("mapping[{i}].streams"),
                "must not be empty",
            ));
        }
        for (j, s) in self.streams.iter().enumerate() {
            StreamPattern::parse(s)
                .map_err(|msg| invalid(format!("mapping[{i}].streams[{j}]"), msg))?;
        }
        crate::table::TableTemplate::parse(&self.table)
            .map_err(|msg| invalid(format!("mapping[{i}].table"), msg))?;
        if let Some(key) = &self.key
            && (key.is_empty() || key.iter().any(|k| k.is_empty()))
        {
            return Err(invalid(
                format!("mapping[{i}].key"),
                "must list at least one non-empty column name",
            ));
        }
        Ok(())
    }
}
