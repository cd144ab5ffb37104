//! Test certificates (a CA and a server certificate for 127.0.0.1), a Redis client that
//! trusts them, and the redis-server arguments of a TLS port.

use super::unique;

pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/services.sh installs redis, which depends on it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 in `dir`.
pub fn certificates(dir: &std::path::Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=redsink test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    );
}

/// A directory with a test CA and a server certificate for 127.0.0.1 ([`certificates`]),
/// removed when dropped (also when the test fails).
pub struct CertDir(pub std::path::PathBuf);

impl CertDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).expect("certificate dir");
        certificates(&dir);
        Self(dir)
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A client for `url`, trusting the test CA in `ca_dir` when there is one.
pub fn client_for(url: &str, ca_dir: Option<&std::path::Path>) -> redis::Client {
    match ca_dir {
        None => redis::Client::open(url).expect("redis url"),
        Some(dir) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(dir.join("ca.crt")).expect("ca.crt")),
                },
            )
            .expect("redis url with TLS")
        }
    }
}

/// redis-server arguments for a TLS port with the test certificates of `dir`.
pub fn tls_args(dir: &std::path::Path, port: u16) -> Vec<String> {
    let file = |f: &str| dir.join(f).display().to_string();
    vec![
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        file("server.crt"),
        "--tls-key-file".into(),
        file("server.key"),
        "--tls-ca-cert-file".into(),
        file("ca.crt"),
        "--tls-auth-clients".into(),
        "no".into(),
    ]
}
