//! Loading: the TOML file, then the environment (`REDSINK_<SECTION>_<KEY>`,
//! `DATABASE_URL`), then the URL files, then serde and [`Config::validate`].

use std::path::Path;

use serde::Deserialize;

use super::{Config, ConfigError, invalid};

/// Sections whose scalar keys can be overridden by `REDSINK_<SECTION>_<KEY>`.
const ENV_SECTIONS: [&str; 6] = [
    "redis",
    "postgres",
    "batch",
    "decode",
    "http",
    "transactions",
];

impl Config {
    /// Reads the file, applies the environment and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parses `text`, applies overrides from `env` and validates.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: super::redact::redact_text(&e.to_string()),
        })?;
        apply_env(&mut doc, env);
        // A missing section reads as an empty one, so validation names the key that
        // must be set (and where it may come from) rather than serde's `missing field`.
        for section in ["redis", "postgres"] {
            doc.entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        }
        read_url_files(&mut doc)?;
        let parse_error = |e: toml::de::Error, at: &str| ConfigError::Parse {
            path: origin.to_string(),
            message: super::redact::redact_text(&format!("{at}{e}")),
        };
        // Each [[mapping]] on its own, so an error names its index (`mapping[2]`).
        let mappings = match doc.remove("mapping") {
            Some(toml::Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, m)| {
                    super::MappingConfig::deserialize(m)
                        .map_err(|e| parse_error(e, &format!("mapping[{i}]: ")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => {
                return Err(ConfigError::Parse {
                    path: origin.to_string(),
                    message: format!(
                        "`mapping` is {}: write each as a [[mapping]] table",
                        other.type_str()
                    ),
                });
            }
            None => Vec::new(),
        };
        let mut config: Config =
            Config::deserialize(toml::Value::Table(doc)).map_err(|e| parse_error(e, ""))?;
        config.mappings = mappings;
        if config.redis.consumer.is_none() {
            config.redis.consumer = Some(default_consumer());
        }
        // An empty value (from the environment) unsets a TLS file.
        for file in [
            &mut config.redis.tls_ca_file,
            &mut config.redis.tls_cert_file,
            &mut config.redis.tls_key_file,
        ] {
            if file.as_deref().is_some_and(|f| f.trim().is_empty()) {
                *file = None;
            }
        }
        config.validate()?;
        Ok(config)
    }
}

/// `url_file` in `[redis]` or `[postgres]` (or `REDSINK_REDIS_URL_FILE`, …): the URL, with
/// its secrets, is read from that file (a mounted secret), trimmed.
fn read_url_files(doc: &mut toml::Table) -> Result<(), ConfigError> {
    for section in ["redis", "postgres"] {
        let Some(toml::Value::Table(t)) = doc.get_mut(section) else {
            continue;
        };
        let Some(path) = t.remove("url_file") else {
            continue;
        };
        let key = format!("{section}.url_file");
        let toml::Value::String(path) = path else {
            return Err(invalid(key, "must be a file path"));
        };
        if t.contains_key("url") {
            return Err(invalid(
                key,
                format!("set {section}.url or {section}.url_file, not both"),
            ));
        }
        let url = std::fs::read_to_string(&path)
            .map_err(|e| invalid(&key, format!("cannot read {path}: {e}")))?;
        t.insert("url".into(), toml::Value::String(url.trim().to_string()));
    }
    Ok(())
}

fn apply_env(doc: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) {
    let mut database_url = None;
    for (name, value) in env {
        if name == "DATABASE_URL" {
            database_url = Some(value);
            continue;
        }
        let Some(rest) = name.strip_prefix("REDSINK_") else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let Some((section, key)) = lower.split_once('_') else {
            continue;
        };
        if !ENV_SECTIONS.contains(&section) || key.is_empty() {
            continue;
        }
        let table = doc
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = table {
            // The environment wins over the file: a URL from one replaces a URL file
            // from the other, and the other way round.
            match key {
                "url" => {
                    t.remove("url_file");
                }
                "url_file" => {
                    t.remove("url");
                }
                _ => {}
            }
            t.insert(key.to_string(), toml::Value::String(value));
        }
    }
    if let Some(url) = database_url {
        let pg = doc
            .entry("postgres".to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = pg
            && !t.contains_key("url_file")
        {
            t.entry("url".to_string())
                .or_insert(toml::Value::String(url));
        }
    }
}

/// `<hostname>-<pid>`: unique per process, stable for its life.
pub fn default_consumer() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "redsink".to_string());
    format!("{host}-{}", std::process::id())
}
