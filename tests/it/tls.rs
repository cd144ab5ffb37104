//! `rediss://`: redsink reads and acknowledges over TLS, verifying the server against a
//! configured CA (a private redis-server with a TLS port and a test CA).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{self, TestDb};
use crate::{ITEMS, items, items_mapping};

/// redis-server with a plain port (for the test's own commands) and a TLS port.
struct TlsRedis {
    child: std::process::Child,
    plain: u16,
    tls: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> TlsRedis {
    let (plain, tls) = (common::free_port(), common::free_port());
    let child = std::process::Command::new("redis-server")
        .args(["--port", &plain.to_string(), "--tls-port", &tls.to_string()])
        .args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--tls-auth-clients",
            "no",
        ])
        .args([
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.crt"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", tls)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "no TLS port");
        std::thread::sleep(Duration::from_millis(20));
    }
    TlsRedis { child, plain, tls }
}

#[tokio::test]
async fn syncs_over_tls_with_a_configured_ca() {
    let certs = common::CertDir::new("tls");
    let dir = certs.0.clone();
    let server = start(&dir);
    let plain_url = format!("redis://127.0.0.1:{}", server.plain);
    let mut r = redis::Client::open(plain_url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let stream = "tls:items".to_string();
    crate::add_items_to(&mut r, &stream, 3).await;
    let mut config = common::config(&db, "c1", &items_mapping("tls"));
    config.redis.url = format!("rediss://127.0.0.1:{}", server.tls);
    config.redis.tls_ca_file = Some(dir.join("ca.crt").display().to_string());
    let stats = common::Running::start(config.clone())
        .until_drained_at(&plain_url, std::slice::from_ref(&stream), "redsink")
        .await
        .stop()
        .await
        .expect("a clean stop");
    assert_eq!(stats.rows_written, 3);
    assert_eq!(items(&db).await.len(), 3);
    // Without the CA the server's certificate is not trusted: redsink says so and retries.
    config.redis.tls_ca_file = None;
    let err = redsink::redis::connect_control(&config.redis)
        .await
        .err()
        .map(|e| format!("{e}: {}", redsink::pipeline::source_chain(&e)));
    assert!(
        err.as_deref()
            .is_some_and(|e| e.to_lowercase().contains("certificate")),
        "{err:?}"
    );
    drop(server);
}

/// Postgres over TLS: `sslmode=verify-full` with the test CA as `sslrootcert`; without the
/// CA the server is not trusted and redsink says so.
#[tokio::test]
async fn writes_to_postgres_over_tls_verifying_the_server() {
    let certs = common::CertDir::new("pgtls");
    let pg = common::PgServer::start_with(Some(&certs.0));
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url("postgres"),
        certs.0.join("ca.crt").display()
    );
    let pool = sqlx::PgPool::connect(&url).await.expect("connect over TLS");
    sqlx::raw_sql(ITEMS).execute(&pool).await.expect("table");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("pg_stat_ssl");
    assert!(ssl, "the test's own connection uses TLS");
    let prefix = common::unique("pgtls");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    crate::add_items_to(&mut r, &stream, 3).await;
    let db = TestDb::new().await;
    let mut config = common::config(&db, "c1", &items_mapping(&prefix));
    config.postgres.url = url.clone();
    let stats = common::sync(config.clone(), std::slice::from_ref(&stream)).await;
    assert_eq!(stats.rows_written, 3);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM public.items")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 3);
    // The server refuses connections without TLS, so redsink's were all TLS.
    let plain = format!("{}?sslmode=disable", pg.url("postgres"));
    assert!(
        sqlx::PgPool::connect(&plain).await.is_err(),
        "plain TCP is refused"
    );
    pool.close().await;
    // verify-full without our CA: the server's certificate is not trusted.
    let text = common::config_text(&db, "c1", &items_mapping(&prefix)).replace(
        &db.url,
        &format!("{}?sslmode=verify-full", pg.url("postgres")),
    );
    let (code, out, err) = common::redsink_cli(&text, &["check"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(out.to_lowercase().contains("certificate"), "{out}{err}");
    common::cleanup_streams(&prefix).await;
}
