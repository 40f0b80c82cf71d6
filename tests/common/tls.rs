//! Certificates for the TLS tests, made with the `openssl` command: a test CA
//! and a server certificate for 127.0.0.1.

use std::path::Path;
use std::process::Command;

use super::run_ok;

/// Runs `openssl` in `dir` (certificates for the TLS tests); fails the test
/// with openssl's own message.
pub fn openssl(dir: &Path, args: &[&str]) {
    run_ok(
        Command::new("openssl").args(args).current_dir(dir),
        &format!("openssl {args:?} (openssl must be installed)"),
    );
}

/// `openssl req` with a new EC P-256 key (no passphrase), then `args`
/// (`-x509` for a self-signed certificate, `-keyout`, `-out`, `-subj`, …).
pub fn openssl_new_key(dir: &Path, args: &[&str]) {
    let mut all = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    all.extend(args);
    openssl(dir, &all);
}

/// A test CA (`ca.pem`, `ca.key`) and a server certificate it signed for
/// 127.0.0.1 (`server.pem`, `server.key`), written into `dir` with the
/// `openssl` command (EC P-256, valid two days).
pub fn ca_and_server_cert(dir: &Path) {
    openssl_new_key(
        dir,
        &[
            "-x509",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=store-outbox test CA",
        ],
    );
    openssl_new_key(
        dir,
        &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}
