//! Secrets stay out of logs and output: URLs with every secret they can carry replaced
//! by `***`, and `Debug` impls that show them so.
//!
//! Redaction works on the parsed URL, so every form the clients accept is covered: the
//! userinfo password (`postgres://u:pw@h`, `redis://:pw@h`, and `redis://pw@h`, which
//! redis-rs sends as a password), and query parameters that carry one (libpq's
//! `password` and `sslpassword`, redis-rs' `pass` for Unix sockets, and any key naming
//! a password (`passwd`, `pwd`), a secret or a token). What does not parse as a URL is hidden whole: a
//! half-parsed string (a key=value connection string, a password with an unencoded `?`)
//! could otherwise show its secret.

use std::fmt;

use super::{Config, PostgresConfig, RedisConfig};

/// What replaces a URL that does not parse.
const UNPARSABLE: &str = "<not a valid URL: hidden>";

/// Whether a query parameter (or connection-string key) holds a secret.
pub(super) fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token"]
        .iter()
        .any(|w| key.contains(w))
}

/// Replaces every secret of a URL with `***` for logs, output and `Debug`.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return UNPARSABLE.to_string();
    };
    let redis = parsed.scheme().to_ascii_lowercase().starts_with("redis")
        || parsed.scheme().to_ascii_lowercase().starts_with("valkey");
    let masked = if parsed.password().is_some() {
        parsed.set_password(Some("***"))
    } else if redis && !parsed.username().is_empty() {
        // redis://secret@host: redis-rs takes a lone user name as the password.
        parsed.set_username("***")
    } else {
        Ok(())
    };
    if masked.is_err() {
        return UNPARSABLE.to_string();
    }
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    if pairs.iter().any(|(k, _)| is_secret_key(k)) {
        let mut query = parsed.query_pairs_mut();
        query.clear();
        for (k, v) in &pairs {
            query.append_pair(k, if is_secret_key(k) { "***" } else { v });
        }
    }
    parsed.set_fragment(None);
    parsed.to_string()
}

/// Masks the secrets of every URL and `key=value` word in free text, such as a TOML
/// parse error, which quotes the offending line of the file.
pub(super) fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, '"' | '\'' | '`') {
            out.push_str(&redact_word(&word));
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    out.push_str(&redact_word(&word));
    out
}

fn redact_word(word: &str) -> String {
    if word.contains("://") {
        return redact_url(word);
    }
    match word.split_once('=') {
        Some((key, _)) if is_secret_key(key) => format!("{key}=***"),
        _ => word.to_string(),
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("mode", &self.mode)
            .field(
                "nodes",
                &self.nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>(),
            )
            .field("master_name", &self.master_name)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("start", &self.start)
            .field("block", &self.block)
            .field("claim_idle", &self.claim_idle)
            .field("prune_idle", &self.prune_idle)
            .field("max_deliveries", &self.max_deliveries)
            .field("wait_replicas", &self.wait_replicas)
            .field("dlq_suffix", &self.dlq_suffix)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .finish()
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("gc_every", &self.gc_every)
            .field("lock_timeout", &self.lock_timeout)
            .field(
                "idle_in_transaction_session_timeout",
                &self.idle_in_transaction_session_timeout,
            )
            .field("statement_timeout", &self.statement_timeout)
            .field("keepalive", &self.keepalive)
            .field("slow_write_after", &self.slow_write_after)
            .finish()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("redis", &self.redis)
            .field("postgres", &self.postgres)
            .field("batch", &self.batch)
            .field("decode", &self.decode)
            .field("http", &self.http)
            .field("mappings", &self.mappings)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{redact_text, redact_url};

    #[test]
    fn every_secret_form_is_masked() {
        let cases = [
            (
                "postgres://u:s3cret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            (
                "postgres://u@h/db?password=s3cret",
                "postgres://u@h/db?password=***",
            ),
            (
                "postgresql://u@h/db?sslmode=require&sslpassword=s3cret",
                "postgresql://u@h/db?sslmode=require&sslpassword=***",
            ),
            ("postgres://u:p@ss3cret@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?password=a@s3cret",
                "postgres://u@h/db?password=***",
            ),
            (
                "postgres://u@h/db?PassWord=s3cret",
                "postgres://u@h/db?PassWord=***",
            ),
            ("redis://:s3cret@h:1", "redis://:***@h:1"),
            ("redis://s3cret@h:1", "redis://***@h:1"),
            ("rediss://app:s3cret@h:1/0", "rediss://app:***@h:1/0"),
            (
                "redis+unix:///run/r.sock?db=1&pass=s3cret",
                "redis+unix:///run/r.sock?db=1&pass=***",
            ),
            ("postgres://u@h/db#s3cret", "postgres://u@h/db"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn what_carries_no_secret_is_shown_as_is() {
        for url in [
            "postgres://u@h/db",
            "postgres://u@h:5432/db?sslmode=require&application_name=x",
            "redis://127.0.0.1:6379",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn what_does_not_parse_is_hidden_whole() {
        for url in [
            "host=h user=u password=s3cret dbname=db",
            "host=h password='a s3cret'",
            "postgres://u:p?s3cret@h/db",
            "",
        ] {
            let shown = redact_url(url);
            assert!(
                !shown.contains("s3cret") && shown.contains("hidden"),
                "{url}: {shown}"
            );
        }
    }

    #[test]
    fn free_text_keeps_its_words_and_loses_its_secrets() {
        let text = "4 | url = \"postgres://u:s3cret@h/db\n  |  ^ host=h password=s3cret";
        let shown = redact_text(text);
        assert_eq!(
            shown,
            "4 | url = \"postgres://u:***@h/db\n  |  ^ host=h password=***"
        );
    }
}
