//! The Kubernetes examples (deploy/kubernetes) against the binary: the ConfigMap's
//! redsink.toml loads, each redsink container mounts the config and the Secret where
//! `--config` and `url_file` look, its probes and the scrape annotations point at
//! `[http] address`, it runs as the image's user, its grace period covers a shutdown,
//! and the binary run with that config answers the probes' paths.
//! (scripts/validate-deploy.sh checks the same files against the Kubernetes schemas.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_yaml_ng::Value;

use crate::common::{self, RedisServer, TestDb};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");
/// The files with a Deployment that runs redsink.
const DEPLOYMENTS: [&str; 2] = ["sidecar.yaml", "shared.yaml"];

/// The YAML documents of `deploy/kubernetes/<file>`.
fn manifests(file: &str) -> Vec<Value> {
    let path = Path::new(DIR).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}")))
        .collect()
}

/// The one document of `file` of kind `kind`.
fn only(file: &str, kind: &str) -> Value {
    let mut docs: Vec<Value> = manifests(file)
        .into_iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(docs.len(), 1, "{file}: one {kind}");
    docs.remove(0)
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is a string: {v:?}"))
}

/// The ConfigMap: its name and its redsink.toml.
fn config_map() -> (String, String) {
    let cm = only("config.yaml", "ConfigMap");
    let name = str_of(&cm["metadata"]["name"], "ConfigMap name").to_string();
    let toml = str_of(&cm["data"]["redsink.toml"], "data.redsink.toml").to_string();
    (name, toml)
}

/// The example Secret: its name and its stringData.
fn secret() -> (String, Vec<(String, String)>) {
    let s = only("secret.example.yaml", "Secret");
    let name = str_of(&s["metadata"]["name"], "Secret name").to_string();
    let data = s["stringData"]
        .as_mapping()
        .expect("stringData")
        .iter()
        .map(|(k, v)| (str_of(k, "key").to_string(), str_of(v, "value").to_string()))
        .collect();
    (name, data)
}

/// The pod template and the container named `redsink` of `file`'s Deployment.
fn redsink_pod(file: &str) -> (Value, Value) {
    let pod = only(file, "Deployment")["spec"]["template"].clone();
    let container = pod["spec"]["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"].as_str() == Some("redsink"))
        .unwrap_or_else(|| panic!("{file}: a container named redsink"))
        .clone();
    (pod, container)
}

/// Where the volume whose `source_kind` (configMap, secret) names `name` is mounted.
fn mount_of(pod: &Value, container: &Value, source_kind: &str, field: &str, name: &str) -> PathBuf {
    let volume = pod["spec"]["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v[source_kind][field].as_str() == Some(name))
        .unwrap_or_else(|| panic!("a {source_kind} volume of {name}"));
    let mount = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .unwrap_or_else(|| panic!("redsink mounts the {source_kind} {name}"));
    PathBuf::from(str_of(&mount["mountPath"], "mountPath"))
}

/// The container port a probe's `port` (a name or a number) means.
fn probe_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = str_of(port, "probe port");
    container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("a container port named {name}"))
}

/// Writes the Secret's `urls` to files in `dir`, one per `url_file` of `toml`, as the
/// mounted Secret would hold them: the environment naming them (`REDSINK_*_URL_FILE`).
fn url_files(toml: &str, urls: &[(String, String)], dir: &Path) -> Vec<(String, String)> {
    let raw: toml::Table = toml::from_str(toml).expect("toml");
    ["redis", "postgres"]
        .iter()
        .map(|section| {
            let url_file = raw[*section]["url_file"].as_str().expect("url_file");
            let key = url_file.rsplit('/').next().unwrap_or_default();
            let (_, url) = urls.iter().find(|(k, _)| k == key).expect("secret key");
            let file = dir.join(key);
            std::fs::write(&file, url).expect("write url file");
            (
                format!("REDSINK_{}_URL_FILE", section.to_uppercase()),
                file.display().to_string(),
            )
        })
        .collect()
}

/// The config as the container loads it, with the URLs of [`url_files`].
fn load(toml: &str, urls: &[(String, String)], dir: &Path) -> redsink::config::Config {
    redsink::config::Config::from_toml(
        toml,
        "deploy/kubernetes/config.yaml",
        url_files(toml, urls, dir),
    )
    .unwrap_or_else(|e| panic!("the ConfigMap's redsink.toml loads: {e}"))
}

/// The user the image runs as (`useradd … --uid N` in the Dockerfile).
fn image_uid() -> u64 {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("Dockerfile");
    let after = dockerfile.split("--uid ").nth(1).expect("useradd --uid");
    let uid: String = after.chars().take_while(char::is_ascii_digit).collect();
    uid.parse().expect("uid")
}

#[test]
fn kubernetes_examples_match_the_config_the_binary_loads() {
    let (cm_name, toml) = config_map();
    let (secret_name, urls) = secret();
    let dir = std::env::temp_dir().join(common::unique("deploy"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = load(&toml, &urls, &dir);
    std::fs::remove_dir_all(&dir).ok();
    let address = config.http.address.clone().expect("[http] address is set");
    let http_port: u64 = address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port");
    let raw: toml::Table = toml::from_str(&toml).expect("toml");
    for file in DEPLOYMENTS {
        let (pod, c) = redsink_pod(file);
        // --config names the ConfigMap's file where the ConfigMap is mounted.
        let args: Vec<&str> = c["args"]
            .as_sequence()
            .expect("args")
            .iter()
            .map(|a| str_of(a, "arg"))
            .collect();
        let at = args
            .iter()
            .position(|a| *a == "--config")
            .expect("--config");
        let config_path = Path::new(args[at + 1]);
        let mounted = mount_of(&pod, &c, "configMap", "name", &cm_name);
        assert_eq!(
            config_path,
            mounted.join("redsink.toml"),
            "{file}: --config"
        );
        // Every url_file is a key of the Secret, where the Secret is mounted.
        let secrets = mount_of(&pod, &c, "secret", "secretName", &secret_name);
        for section in ["redis", "postgres"] {
            let url_file = Path::new(raw[section]["url_file"].as_str().expect("url_file"));
            assert_eq!(
                url_file.parent(),
                Some(secrets.as_path()),
                "{file}: {section}.url_file"
            );
            let key = url_file.file_name().and_then(|k| k.to_str()).expect("key");
            assert!(
                urls.iter().any(|(k, _)| k == key),
                "{file}: the Secret has {key}"
            );
        }
        // The probes and the scrape reach the listener of [http] address.
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{file}: {probe} path");
            assert_eq!(
                probe_port(&c, &get["port"]),
                http_port,
                "{file}: {probe} port"
            );
        }
        let notes = &pod["metadata"]["annotations"];
        assert_eq!(
            notes["prometheus.io/scrape"].as_str(),
            Some("true"),
            "{file}"
        );
        assert_eq!(
            notes["prometheus.io/port"].as_str(),
            Some(http_port.to_string().as_str()),
            "{file}"
        );
        assert_eq!(
            notes["prometheus.io/path"].as_str(),
            Some("/metrics"),
            "{file}"
        );
        // Non-root, read-only, as the image's user, who can read the Secret's files.
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true), "{file}");
        assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{file}");
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{file}"
        );
        assert_eq!(
            sc["runAsUser"].as_u64(),
            Some(image_uid()),
            "{file}: the Dockerfile's user"
        );
        assert_eq!(
            pod["spec"]["securityContext"]["fsGroup"].as_u64(),
            sc["runAsGroup"].as_u64(),
            "{file}: fsGroup"
        );
        // A shutdown: the last read (block, + 10 s when Redis does not answer), then the
        // last batch (a lock wait up to lock_timeout), with room to commit and ack.
        let shutdown = config.redis.block + Duration::from_secs(10) + config.postgres.lock_timeout;
        let grace = pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        assert!(
            Duration::from_secs(grace) >= shutdown * 2,
            "{file}: grace {grace} s < 2 × {shutdown:?}"
        );
        assert!(
            c["resources"]["requests"]["memory"].is_string(),
            "{file}: a memory request"
        );
    }
}

/// A child process killed when the test ends, even by a failed assertion.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}

/// The binary, run with the ConfigMap's config (URLs from files, as from the Secret),
/// answers the probes' paths, and a SIGTERM ends it, cleanly, within the grace period.
#[tokio::test]
async fn the_example_config_runs_and_answers_the_probes() {
    let (_, toml) = config_map();
    let (pod, container) = redsink_pod("shared.yaml");
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    // A private Redis: the example maps the glob dbserver1.inventory.*, which other
    // tests' streams must not meet.
    let redis = RedisServer::start();
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(common::unique("deploy"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let urls = [
        ("redis-url".to_string(), redis.url()),
        ("postgres-url".to_string(), db.url.clone()),
    ];
    let env = url_files(&toml, &urls, &dir);
    std::fs::write(dir.join("redsink.toml"), &toml).expect("config");
    let address = format!("127.0.0.1:{}", common::free_port());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_redsink"))
        .args(["run", "--config"])
        .arg(dir.join("redsink.toml"))
        .envs(env)
        // The manifests' port (9187) may be taken on a shared machine: same paths, free port.
        .env("REDSINK_HTTP_ADDRESS", &address)
        .env("REDSINK_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start redsink");
    let mut child = Reaped(child);
    let child = &mut child.0;
    for probe in ["livenessProbe", "readinessProbe"] {
        let path = str_of(&container[probe]["httpGet"]["path"], "path").to_string();
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(&address).await.is_ok() {
                // 503 while starting; anything else but 200 is a path it does not serve.
                match crate::serve::http_get(&address, &path).await.0 {
                    200 => break,
                    503 => {}
                    other => panic!("{probe}: GET {path} answered {other}"),
                }
            }
            assert!(
                child.try_wait().expect("status").is_none(),
                "redsink ended early"
            );
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{probe} {path} never answered 200"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("status") {
            break status;
        }
        if stopping.elapsed() > Duration::from_secs(grace) {
            panic!("redsink still running {grace} s after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    std::fs::remove_dir_all(&dir).ok();
}
