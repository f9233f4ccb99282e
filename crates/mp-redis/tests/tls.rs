//! `rediss://`: a TLS-only redis-server with a certificate of a private CA made for the test
//! (openssl), reached with that CA as the root; refused without it.

#![cfg(feature = "tls")]

mod common;
use common::{prefix, skip, watchdog, Server};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mp_redis::{Cluster, Error};

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A CA and a server certificate for 127.0.0.1, in a fresh directory.
fn certificates() -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("mp-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").ok()?;
    let ok = openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=mp-redis test CA",
        ],
    ) && openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ) && openssl(
        &dir,
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
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
    if !ok {
        let _ = std::fs::remove_dir_all(&dir);
        return None;
    }
    Some(dir)
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn rediss_with_a_private_ca() {
    let Some(dir) = certificates() else {
        skip("openssl could not make test certificates");
        return;
    };
    let _cleanup = RemoveDir(dir.clone());
    let d = dir.display().to_string();
    let Some(s) = Server::own_with(|port| {
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            format!("{d}/server.crt"),
            "--tls-key-file".into(),
            format!("{d}/server.key"),
            "--tls-ca-cert-file".into(),
            format!("{d}/ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }) else {
        return;
    };
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    watchdog(60, move || {
        let url = s.url.replacen("redis://", "rediss://", 1);
        let c = Cluster::builder(&url)
            .prefix(&prefix("tls"))
            .tls_root_cert(ca)
            .connect()
            .unwrap();
        let dict = c.dict::<String, u64>("d");
        dict.set(&"over tls".into(), &1).unwrap();
        assert_eq!(dict.get(&"over tls".into()).unwrap(), Some(1));
        let q = c.queue::<u64>("q").unwrap();
        q.put(&5).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), 5);
        c.purge().unwrap();
        // Without the CA, the server's certificate is not trusted: a typed error at once
        // (the retry budget is long: a retry would time out the test's watchdog).
        let r = Cluster::builder(&url)
            .retry_for(Duration::from_secs(120))
            .connect();
        match r {
            Err(Error::Tls(m)) => assert!(m.contains("UnknownIssuer"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Clear text to a TLS port does not get through either.
        let r = Cluster::builder(&s.url)
            .retry_for(Duration::from_millis(300))
            .timeouts(Duration::from_secs(1), Duration::from_secs(1))
            .connect();
        assert!(matches!(r, Err(Error::Unreachable { .. })), "{r:?}");
    });
}
