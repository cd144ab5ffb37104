//! Secrets never reach the logs or the operator commands' output: a Postgres password in
//! the URL's userinfo or in its query (`?password=`), in `run`'s text and JSON logs, in
//! `check` and in `status`; libpq forms sqlx does not take are refused by name.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use crate::common::{self, TestDb};
use crate::items_mapping;

const SECRET: &str = "pgS3cretQ";

/// Starts `redsink run` with `config` and `--log-format format`, reads its log until the
/// `configuration loaded` line and a little more, stops it and returns what it logged.
fn run_log(config: &str, format: &str) -> String {
    let dir = std::env::temp_dir().join(common::unique("redsink-run"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("redsink.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_redsink"))
        .args(["--log-format", format, "run", "--config"])
        .arg(&path)
        .env("REDSINK_LOG", "debug")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start redsink run");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let start = Instant::now();
    // Past `configuration loaded`: connected, migrated, streams found.
    while !log.lines().any(|l| l.contains("started")) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "redsink run logged no start-up within 30 s:\n{log}"
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            log.push_str(&line);
            log.push('\n');
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        log.push_str(&line);
        log.push('\n');
    }
    std::fs::remove_dir_all(&dir).ok();
    log
}

#[tokio::test]
async fn a_postgres_password_in_the_url_query_is_never_shown() {
    let db = TestDb::new().await;
    db.exec(crate::ITEMS).await;
    let prefix = common::unique("s");
    let mapping = items_mapping(&prefix);
    // Trust authentication ignores the password: the URL works, and carries a secret in
    // the userinfo form and in the query form.
    let query_url = format!("{}?password={SECRET}&sslmode=disable", db.url);
    let userinfo_url = db
        .url
        .replacen("postgres@", &format!("postgres:{SECRET}@"), 1);
    assert_ne!(userinfo_url, db.url, "the test URL names the postgres user");
    let text = common::config_text(&db, "c1", &mapping);
    for url in [&query_url, &userinfo_url] {
        let config = text.replace(&db.url, url);
        for format in ["text", "json"] {
            let log = run_log(&config, format);
            assert!(log.contains("configuration loaded"), "{log}");
            assert!(
                !log.contains(SECRET),
                "{format} log shows the secret:\n{log}"
            );
            let loaded = log
                .lines()
                .find(|l| l.contains("configuration loaded"))
                .unwrap_or_default();
            assert!(
                loaded.contains("***") && loaded.len() < 1000,
                "a short summary with the password masked: {loaded}"
            );
        }
        for command in [&["check"][..], &["status"], &["status", "--json"]] {
            let (code, out, err) = common::redsink_cli(&config, command);
            assert!(
                !out.contains(SECRET) && !err.contains(SECRET),
                "{command:?} shows the secret:\n{out}{err}"
            );
            assert_eq!(code, 0, "{command:?}:\n{out}{err}");
        }
    }
}

#[tokio::test]
async fn libpq_forms_sqlx_does_not_take_are_refused_without_their_secret() {
    let db = TestDb::new().await;
    let mapping = items_mapping(&common::unique("s"));
    let text = common::config_text(&db, "c1", &mapping);
    // A key=value connection string (libpq accepts it, sqlx does not).
    let kv = format!(
        "host=127.0.0.1 user=postgres password={SECRET} dbname={}",
        db.name
    );
    // sslpassword decrypts a client key in libpq; sqlx ignores it (and logs its value).
    let sslpassword = format!("{}?sslpassword={SECRET}", db.url);
    for (url, expected) in [(kv, "postgres://"), (sslpassword, "sslpassword")] {
        let config = text.replace(&db.url, &url);
        let (code, out, err) = common::redsink_cli(&config, &["check"]);
        assert_ne!(code, 0, "{out}{err}");
        assert!(
            !out.contains(SECRET) && !err.contains(SECRET),
            "the secret is shown:\n{out}{err}"
        );
        assert!(
            err.contains("postgres.url") && err.contains(expected),
            "the error names the key and the fix:\n{err}"
        );
    }
}
