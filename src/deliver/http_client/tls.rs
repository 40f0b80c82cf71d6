//! The TLS settings of a destination's HTTP connections: rustls with the usual web
//! roots, the subscription's `ca_file` and its client certificate (mTLS).

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsFiles;

/// Whether `url` (named `shown` in messages) is `https://`, and the TLS
/// config its connections need: read even for an `http://` URL with TLS
/// files, so that a file that is missing or wrong is named now, not when
/// the URL changes. Both backends check a URL with these words.
pub(super) fn tls_for(
    url: &url::Url,
    shown: &str,
    files: TlsFiles<'_>,
) -> Result<(bool, Option<rustls::ClientConfig>), String> {
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        other => return Err(format!("{shown}: scheme {other:?} is not http or https")),
    };
    let config = if https || files.ca_file.is_some() || files.client_cert.is_some() {
        Some(tls_config(files)?)
    } else {
        None
    };
    Ok((https, config))
}

/// rustls with the usual web roots, the subscription's own CA added, and its
/// client certificate if it has one; HTTP/1.1 by ALPN.
fn tls_config(files: TlsFiles<'_>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = files.ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            roots.add(cert).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            found += 1;
        }
        if found == 0 {
            return Err(format!("ca_file {}: no PEM certificate in it", ca.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let mut config = match files.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let pem = std::fs::read(cert).map_err(|e| format!("client_cert {}: {e}", cert.display()))?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client_cert {}: {e}", cert.display()))?;
            let key_pem = std::fs::read(key).map_err(|e| format!("client_key {}: {e}", key.display()))?;
            let key_der =
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("client_key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("client_cert/client_key: {e}"))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
