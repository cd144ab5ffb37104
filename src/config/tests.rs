use super::*;

#[test]
fn urls_come_from_files_and_never_show_their_password() {
    let dir = std::env::temp_dir().join(format!("redsink-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok();
    let secret = dir.join("pg_url");
    std::fs::write(&secret, "postgres://app:s3cret@db:5432/replica\n").ok();
    let text = format!(
        "[redis]\nurl = \"redis://r\"\n[postgres]\nurl_file = \"{}\"\n[[mapping]]\nstreams = [\"s\"]\ntable = \"public.t\"\n",
        secret.display()
    );
    let config = Config::from_toml(&text, "test", std::iter::empty());
    let config = config.map_err(|e| e.to_string());
    assert_eq!(
        config.as_ref().map(|c| c.postgres.url.as_str()),
        Ok("postgres://app:s3cret@db:5432/replica")
    );
    let shown = format!("{:?}", config.as_ref().ok());
    assert!(!shown.contains("s3cret"), "{shown}");
    let both = text.replace("[postgres]\n", "[postgres]\nurl = \"postgres://x\"\n");
    let err = Config::from_toml(&both, "test", std::iter::empty())
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("not both")));
    let env = [(
        "REDSINK_POSTGRES_URL_FILE".to_string(),
        secret.display().to_string(),
    )];
    let from_env = text.replace(&format!("url_file = \"{}\"\n", secret.display()), "");
    let config = Config::from_toml(&from_env, "test", env).map_err(|e| e.to_string());
    assert_eq!(
        config.map(|c| c.postgres.url),
        Ok("postgres://app:s3cret@db:5432/replica".to_string())
    );
    // A URL file from the environment replaces the file's URL.
    let with_url = text.replace(
        &format!("url_file = \"{}\"\n", secret.display()),
        "url = \"postgres://baked@x/y\"\n",
    );
    let env = [(
        "REDSINK_POSTGRES_URL_FILE".to_string(),
        secret.display().to_string(),
    )];
    let config = Config::from_toml(&with_url, "test", env).map_err(|e| e.to_string());
    assert_eq!(
        config.map(|c| c.postgres.url),
        Ok("postgres://app:s3cret@db:5432/replica".to_string())
    );
    std::fs::remove_dir_all(&dir).ok();
}

const BASE: &str = r#"
[redis]
url = "redis://127.0.0.1:6379"
[postgres]
url = "postgres://postgres:secret@127.0.0.1:5432/replica"
[[mapping]]
streams = ["shop.public.orders:{0..7}"]
table = "public.orders"
"#;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml(
        text,
        "test.toml",
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn defaults_apply() {
    let c = load(BASE, &[]).expect("valid");
    assert_eq!(c.redis.group, "redsink");
    assert_eq!(c.redis.start, "0");
    assert_eq!(c.batch.max_batch, 4096);
    assert_eq!(c.decode.null_value, "default");
    assert!(c.consumer().contains('-'));
    assert_eq!(c.mappings[0].version, VersionSource::Auto);
}

#[test]
fn env_overrides_keys() {
    let c = load(
        BASE,
        &[
            ("REDSINK_REDIS_URL", "redis://other:6380"),
            ("REDSINK_BATCH_MAX_BATCH", "10"),
            ("REDSINK_BATCH_MAX_DELAY", "5ms"),
            ("REDSINK_TEST_IGNORED", "x"),
            ("DATABASE_URL", "postgres://ignored"),
        ],
    )
    .expect("valid");
    assert_eq!(c.redis.url, "redis://other:6380");
    assert_eq!(c.batch.max_batch, 10);
    assert_eq!(c.batch.max_delay, Duration::from_millis(5));
    assert!(
        c.postgres.url.contains("replica"),
        "file wins over DATABASE_URL"
    );
}

#[test]
fn postgres_timeouts_have_defaults_and_env_overrides() {
    let c = load(BASE, &[]).expect("valid");
    assert_eq!(c.postgres.lock_timeout, Duration::from_secs(10));
    assert_eq!(
        c.postgres.idle_in_transaction_session_timeout,
        Duration::from_secs(10)
    );
    assert_eq!(c.postgres.statement_timeout, Duration::from_secs(300));
    assert_eq!(c.postgres.keepalive, Duration::from_secs(10));
    assert_eq!(c.postgres.slow_write_after, Duration::from_secs(10));
    let c = load(
        BASE,
        &[
            ("REDSINK_POSTGRES_LOCK_TIMEOUT", "2s"),
            ("REDSINK_POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT", "3s"),
            ("REDSINK_POSTGRES_STATEMENT_TIMEOUT", "0s"),
            ("REDSINK_POSTGRES_KEEPALIVE", "1m"),
            ("REDSINK_POSTGRES_SLOW_WRITE_AFTER", "1s"),
        ],
    )
    .expect("valid");
    assert_eq!(c.postgres.lock_timeout, Duration::from_secs(2));
    assert_eq!(
        c.postgres.idle_in_transaction_session_timeout,
        Duration::from_secs(3)
    );
    assert_eq!(c.postgres.statement_timeout, Duration::ZERO);
    assert_eq!(c.postgres.keepalive, Duration::from_secs(60));
    assert_eq!(c.postgres.slow_write_after, Duration::from_secs(1));
}

#[test]
fn database_url_is_a_fallback() {
    let text = BASE.replace(
        "url = \"postgres://postgres:secret@127.0.0.1:5432/replica\"",
        "",
    );
    let c = load(&text, &[("DATABASE_URL", "postgres://x@h/db")]).expect("valid");
    assert_eq!(c.postgres.url, "postgres://x@h/db");
    let c = load(
        &text,
        &[
            ("DATABASE_URL", "postgres://x@h/db"),
            ("REDSINK_POSTGRES_URL", "postgres://y@h/db"),
        ],
    )
    .expect("valid");
    assert_eq!(c.postgres.url, "postgres://y@h/db");
    let err = load(&text, &[]).expect_err("no url");
    assert!(err.to_string().contains("postgres.url"), "{err}");
}

#[test]
fn bad_config_names_the_key() {
    let cases = [
        (BASE.replace("{0..7}", "{7..0}"), "mapping[0].streams[0]"),
        (
            BASE.replace("public.orders\"", "${source.nope}\""),
            "mapping[0].table",
        ),
        (
            format!("{BASE}\n[batch]\nmax_batch = 0\n"),
            "batch.max_batch",
        ),
        (
            format!("{BASE}\n[batch]\nmax_delay = \"soon\"\n"),
            "max_delay",
        ),
        (
            BASE.replace("[redis]", "[redis]\nstart = \"x\""),
            "redis.start",
        ),
        (BASE.replace("[redis]", "[redis]\ncolour = 1"), "colour"),
    ];
    for (text, key) in cases {
        let err = load(&text, &[]).expect_err(key).to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn redis_modes_need_their_keys() {
    let sentinel = BASE.replace(
        "[redis]",
        "[redis]\nmode = \"sentinel\"\nmaster_name = \"mymaster\"\nnodes = [\"redis://s1:26379\"]",
    );
    let c = load(&sentinel, &[]).expect("valid sentinel config");
    assert_eq!(c.redis.mode, RedisMode::Sentinel);
    let c = load(
        &BASE.replace("[redis]", "[redis]\nmode = \"cluster\""),
        &[("REDSINK_REDIS_NODES", "redis://b:6379, redis://c:6379")],
    )
    .expect("valid cluster config");
    assert_eq!(c.redis.nodes, ["redis://b:6379", "redis://c:6379"]);
    // TLS files with a TLS URL in any spelling; an empty one from the environment unsets.
    let tls = BASE.replace(
        "[redis]\nurl = \"redis://127.0.0.1:6379\"",
        "[redis]\nurl = \"REDISS://127.0.0.1:6379\"\ntls_ca_file = \"/ca.pem\"",
    );
    assert!(load(&tls, &[]).is_ok());
    let c = load(
        &tls,
        &[
            ("REDSINK_REDIS_URL", "redis://127.0.0.1:6379"),
            ("REDSINK_REDIS_TLS_CA_FILE", ""),
        ],
    )
    .expect("TLS switched off from the environment");
    assert!(c.redis.tls_ca_file.is_none());
    // `[redis]` lines that are wrong together, and the key the error names.
    let cases = [
        (
            "mode = \"sentinel\"\nnodes = [\"redis://s\"]",
            "redis.master_name",
        ),
        ("mode = \"sentinel\"\nmaster_name = \"m\"", "redis.nodes"),
        ("master_name = \"m\"", "redis.master_name"),
        ("nodes = [\"redis://b\"]", "redis.nodes"),
        ("mode = \"replicated\"", "replicated"),
        (
            "mode = \"cluster\"\nnodes = [\"rediss://b\", \"redis://c\"]",
            "redis.nodes",
        ),
        ("tls_ca_file = \"/ca.pem\"", "redis.tls_ca_file"),
        ("tls_cert_file = \"/c.pem\"", "redis.tls_cert_file"),
    ];
    for (lines, key) in cases {
        let text = BASE.replace("[redis]", &format!("[redis]\n{lines}"));
        let err = load(&text, &[]).expect_err(key).to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn secrets_are_redacted() {
    let c = load(BASE, &[]).expect("valid");
    let debug = format!("{c:?}");
    assert!(!debug.contains("secret"), "{debug}");
    assert_eq!(redact_url("redis://:pw@h:1"), "redis://:***@h:1");
    assert_eq!(redact_url("redis://pw@h:1"), "redis://***@h:1");
    assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
}

#[test]
fn postgres_urls_sqlx_cannot_take_are_refused_without_their_secret() {
    let base = "postgres://postgres:secret@127.0.0.1:5432/replica";
    let cases = [
        ("host=h user=u password=s3cret dbname=db", "key=value"),
        ("postgres://u:p?s3cret@h/db", "percent-encode"),
        ("mysql://u:s3cret@h/db", "postgres://"),
        (
            "postgres://u@h/db?sslpassword=s3cret",
            "sslpassword is not supported",
        ),
        (
            "postgres://u@h/db?passwd=s3cret",
            "unknown parameter `passwd`",
        ),
    ];
    for (url, says) in cases {
        let text = BASE.replace(base, url);
        assert_ne!(text, BASE);
        let err = load(&text, &[]).expect_err(url).to_string();
        assert!(
            err.contains("postgres.url") && err.contains(says),
            "{url}: {err}"
        );
        assert!(!err.contains("s3cret"), "{url}: {err}");
    }
    let ok = BASE.replace(base, "postgresql://u@h/db?password=s3cret&sslmode=require");
    load(&ok, &[]).expect("a password parameter is fine");
}

#[test]
fn a_parse_error_does_not_quote_a_password() {
    let text = BASE.replace(
        "url = \"postgres://postgres:secret@127.0.0.1:5432/replica\"",
        "url = \"postgres://u:s3cret@h/db",
    );
    let err = load(&text, &[])
        .expect_err("unterminated string")
        .to_string();
    assert!(err.contains("line") && !err.contains("s3cret"), "{err}");
}

#[test]
fn urls_and_addresses_of_the_wrong_kind_are_refused_at_load() {
    let cases = [
        (
            BASE.replace("redis://127.0.0.1:6379", "http://127.0.0.1:6379"),
            "redis.url",
        ),
        (
            format!("{BASE}\n[http]\naddress = \"localhost\"\n"),
            "http.address",
        ),
        (
            format!("{BASE}\n[http]\naddress = \":9187\"\n"),
            "http.address",
        ),
        (
            format!("{BASE}\n[http]\naddress = \"0.0.0.0:x\"\n"),
            "http.address",
        ),
    ];
    for (text, key) in cases {
        let err = load(&text, &[]).expect_err(key).to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
    for fine in ["0.0.0.0:9187", "localhost:9187", "[::1]:9187"] {
        let text = format!("{BASE}\n[http]\naddress = \"{fine}\"\n");
        assert!(load(&text, &[]).is_ok(), "{fine}");
    }
    for fine in [
        "rediss://h:6380",
        "unix:///tmp/redis.sock",
        "valkey://h:6379",
    ] {
        assert!(
            load(&BASE.replace("redis://127.0.0.1:6379", fine), &[]).is_ok(),
            "{fine}"
        );
    }
}

#[test]
fn a_missing_section_names_the_key_to_set() {
    let no_postgres =
        "[redis]\nurl = \"redis://h:6379\"\n[[mapping]]\nstreams = [\"s\"]\ntable = \"t\"\n";
    let err = load(no_postgres, &[]).expect_err("no postgres").to_string();
    assert!(
        err.contains("postgres.url") && err.contains("REDSINK_POSTGRES_URL"),
        "{err}"
    );
    let with_env = load(
        no_postgres,
        &[("REDSINK_POSTGRES_URL", "postgres://u@h/db")],
    );
    assert!(with_env.is_ok(), "{with_env:?}");
    let no_redis =
        "[postgres]\nurl = \"postgres://u@h/db\"\n[[mapping]]\nstreams = [\"s\"]\ntable = \"t\"\n";
    let err = load(no_redis, &[]).expect_err("no redis").to_string();
    assert!(
        err.contains("redis.url") && err.contains("REDSINK_REDIS_URL"),
        "{err}"
    );
}

#[test]
fn a_wrong_type_in_a_mapping_names_the_mapping_and_the_item() {
    let text = BASE.replace(
        "table = \"public.orders\"",
        "table = \"public.orders\"\n[[mapping]]\nstreams = [\"a\", 3]\ntable = \"t\"",
    );
    let err = load(&text, &[]).expect_err("wrong type").to_string();
    assert!(
        err.contains("mapping[1]") && err.contains("item [1]") && err.contains("streams"),
        "{err}"
    );
}

#[test]
fn wait_replicas_is_off_by_default_and_not_for_clusters() {
    assert_eq!(load(BASE, &[]).expect("valid").redis.wait_replicas, 0);
    let c = load(BASE, &[("REDSINK_REDIS_WAIT_REPLICAS", "1")]).expect("valid");
    assert_eq!(c.redis.wait_replicas, 1);
    let cluster = BASE.replace("[redis]", "[redis]\nmode = \"cluster\"\nwait_replicas = 1");
    let err = load(&cluster, &[])
        .expect_err("not with a cluster")
        .to_string();
    assert!(err.contains("redis.wait_replicas"), "{err}");
}

#[test]
fn transaction_mode_is_off_by_default_and_set_from_the_file_or_the_environment() {
    assert!(load(BASE, &[]).expect("valid").transactions.is_none());
    let from_env = load(
        BASE,
        &[
            ("REDSINK_TRANSACTIONS_STREAM", "shop.transaction"),
            ("REDSINK_TRANSACTIONS_WAIT", "3s"),
            ("REDSINK_TRANSACTIONS_MAX_EVENTS", "50"),
        ],
    )
    .expect("valid");
    let t = from_env.transactions.as_ref().expect("on");
    assert_eq!(
        (t.stream.as_str(), t.wait, t.max_events, t.prefix()),
        ("shop.transaction", Duration::from_secs(3), 50, Some("shop"))
    );
    // The example mapping reads shop.public.orders:{0..7}.
    assert!(from_env.reads_collection("public.orders"));
    assert!(!from_env.reads_collection("public.order_lines"));
    let listed = load(
        &format!("{BASE}\n[transactions]\nstream = \"tx\"\ncollections = [\"public.lines\"]\n"),
        &[],
    )
    .expect("valid");
    let t = listed.transactions.as_ref().expect("on");
    assert_eq!((t.wait, t.max_events), (Duration::from_secs(10), 10_000));
    assert!(listed.reads_collection("public.lines") && !listed.reads_collection("public.orders"));
}

#[test]
fn bad_transaction_settings_name_the_key() {
    for (section, key) in [
        ("[transactions]\nwait = \"1s\"\n", "transactions.stream"),
        (
            "[transactions]\nstream = \"events\"\n",
            "transactions.collections",
        ),
        (
            "[transactions]\nstream = \"a.transaction\"\nmax_events = 0\n",
            "transactions.max_events",
        ),
        (
            "[transactions]\nstream = \"a.transaction\"\nwait = \"0s\"\n",
            "transactions.wait",
        ),
    ] {
        let e = load(&format!("{BASE}\n{section}"), &[]).expect_err("invalid");
        assert!(e.to_string().contains(key), "{section}: {e}");
    }
}
