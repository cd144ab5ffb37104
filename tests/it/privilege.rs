//! Least privilege: a Redis ACL user limited to the mapped keys and the commands redsink
//! needs, and a Postgres role limited to the target schema — the rules `redsink check`
//! prints.

use crate::common::{self, TestDb};
use crate::{P_19_99, item};

#[tokio::test]
async fn syncs_with_a_restricted_redis_user_and_postgres_role() {
    let db = TestDb::new().await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mapping = format!("[[mapping]]\nstreams = [\"{prefix}:*\"]\ntable = \"app.items\"\n");
    // The owner prepares the schema, the table, its version column and redsink's schema.
    db.exec(
        "CREATE SCHEMA app; \
         CREATE TABLE app.items (id int PRIMARY KEY, name varchar(12), price numeric(10,2), qty int, \
           _redsink_version bytea)",
    )
    .await;
    redsink::write::migrate(&db.pool)
        .await
        .expect("migrate as the owner");
    let admin_config = common::config_text(&db, "c1", &mapping);
    let (code, out, err) = common::redsink_cli(&admin_config, &["check"]);
    assert_eq!(code, 0, "{out}{err}");
    let role = common::unique("r");
    let user = common::unique("u");
    let grants: String = section(&out, "postgres grants").replace("<role>", &role);
    let acl: String = section(&out, "redis acl")
        .replace("<user>", &user)
        .replace("<password>", "pw");
    db.exec(&format!("CREATE ROLE {role} LOGIN")).await;
    db.exec(&grants).await;
    let mut r = common::redis().await;
    acl_setuser(&mut r, &acl).await;

    // A malformed entry (dead-lettered), then a good one (the newest: `check` samples it).
    common::xadd(&mut r, &stream, "{}", "{not json").await;
    crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", P_19_99)).await;
    let redis_url = common::redis_url().replacen("redis://", &format!("redis://{user}:pw@"), 1);
    let pg_url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(
        pg_url, db.url,
        "the test database URL names the postgres user"
    );
    let mut config = common::config(&db, "c1", &mapping);
    config.redis.url = redis_url.clone();
    config.postgres.url = pg_url.clone();
    // `check` as the restricted user and role finds nothing wrong.
    let restricted = admin_config
        .replace(&common::redis_url(), &redis_url)
        .replace(&db.url, &pg_url);
    let (code, out, err) = common::redsink_cli(&restricted, &["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("postgres: connected as role {role}")),
        "{out}"
    );
    assert!(out.contains("every value fits its column"), "{out}");
    let stats = common::sync(config, std::slice::from_ref(&stream)).await;
    assert_eq!(stats.rows_written, 1);
    assert_eq!(stats.dead_lettered, 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM app.items")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(rows, 1);

    // A user without XACK: `check` names exactly what is missing.
    let lesser = common::unique("u");
    acl_setuser(&mut r, &acl.replace(&user, &lesser).replace(" +xack ", " ")).await;
    let lesser_url = common::redis_url().replacen("redis://", &format!("redis://{lesser}:pw@"), 1);
    let (code, out, _) =
        common::redsink_cli(&restricted.replace(&redis_url, &lesser_url), &["check"]);
    assert_ne!(code, 0, "{out}");
    let problem = out
        .lines()
        .find(|l| l.starts_with("problem: redis"))
        .unwrap_or_default();
    assert!(problem.contains(&format!("xack on {stream}")), "{out}");
    assert!(!problem.contains("xlen"), "{out}");
    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&lesser)
        .query_async(&mut r)
        .await
        .expect("DELUSER");

    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut r)
        .await
        .expect("DELUSER");
    common::drop_role(db, &role).await;
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn check_names_each_problem_and_exits_non_zero() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE public.keyless (id int, name text)")
        .await;
    db.exec(crate::ITEMS).await;
    let prefix = common::unique("s");
    let mut r = common::redis().await;
    // The newest entry of the items stream does not fit: qty is not an integer.
    crate::add_change(
        &mut r,
        &format!("{prefix}:items"),
        1,
        "c",
        10,
        "null",
        r#"{"id":1,"name":"a","price":"B88=","qty":"many"}"#,
    )
    .await;
    let mapping = format!(
        "[[mapping]]\nstreams = [\"{prefix}:missing\"]\ntable = \"public.nowhere\"\n\
         [[mapping]]\nstreams = [\"{prefix}:keyless\"]\ntable = \"public.keyless\"\n\
         [[mapping]]\nstreams = [\"{prefix}:items\"]\ntable = \"public.items\"\n"
    );
    let (code, out, err) =
        common::redsink_cli(&common::config_text(&db, "c1", &mapping), &["check"]);
    assert_ne!(code, 0);
    assert!(err.contains("problems"), "{err}");
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem:")).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("public.nowhere does not exist")),
        "{out}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("public.keyless has no primary key")),
        "{out}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&format!("stream {prefix}:items entry")) && p.contains("many")),
        "{out}"
    );
    common::cleanup_streams(&prefix).await;
}

/// Runs `ACL SETUSER …` as `check` prints it.
pub async fn acl_setuser<C: redis::aio::ConnectionLike>(r: &mut C, rule: &str) {
    let mut setuser = redis::cmd("ACL");
    setuser.arg("SETUSER");
    for word in rule.split_whitespace().skip(2) {
        setuser.arg(word);
    }
    let _: () = setuser.query_async(r).await.expect("ACL SETUSER");
}

/// The lines after `# <title>` up to the next `#` heading or the end.
pub fn section(text: &str, title: &str) -> String {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("# ") {
            inside = heading.trim() == title;
            continue;
        }
        if inside && !line.trim().is_empty() {
            out.push(line);
        }
    }
    out.join("\n")
}

/// A Redis that requires a password, and a config without one: `check` must not report
/// all-clear (every probe fails with NOAUTH, not NOPERM), it names the cause and exits 1.
#[tokio::test]
async fn check_fails_against_a_redis_that_requires_a_password() {
    let server = common::RedisServer::start();
    let mut r = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("pw")
        .query_async(&mut r)
        .await
        .expect("CONFIG SET requirepass");
    let db = TestDb::new().await;
    db.exec(crate::ITEMS).await;
    let prefix = common::unique("s");
    let text = common::config_text(&db, "c1", &crate::items_mapping(&prefix))
        .replace(&common::redis_url(), &server.url());
    let (code, out, err) = common::redsink_cli(&text, &["check"]);
    assert_eq!(code, 1, "{out}{err}");
    let problem = out
        .lines()
        .find(|l| l.starts_with("problem: redis"))
        .unwrap_or_else(|| panic!("no redis problem:\n{out}"));
    assert!(
        problem.contains("NOAUTH") && problem.contains("password"),
        "{problem}"
    );
    assert!(
        !out.lines().any(|l| l.starts_with("ok: redis")),
        "nothing about redis is ok:\n{out}"
    );
}
