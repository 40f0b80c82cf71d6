//! A subscription's side of the client: its connections (its TLS files
//! and timeout) to a URL of its destination, and the headers every request
//! of it carries.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::{Endpoint, TlsFiles};
use crate::config::SubscriptionConfig;

/// `user-agent` of every request.
pub const USER_AGENT: &str = concat!("store-outbox/", env!("CARGO_PKG_VERSION"));

/// The connections of a subscription to `url`: rustls with its CA and
/// client certificate, its timeout (connecting: at most 10 s of it), as
/// many kept open as it has requests in flight. Redirects are not
/// followed: a moved endpoint is a config error to fix, not something to
/// follow with signed business data.
pub fn subscription_endpoint(config: &SubscriptionConfig, url: &url::Url) -> Result<Endpoint, String> {
    Endpoint::new(
        url,
        TlsFiles {
            ca_file: config.ca_file.as_deref(),
            client_cert: config.client_cert.as_deref().zip(config.client_key.as_deref()),
        },
        config.timeout,
        config.timeout.min(Duration::from_secs(10)),
        config.max_in_flight,
    )
}

/// The headers of every request to a subscription: `user-agent`, `accept`
/// and its own `headers`.
pub fn subscription_headers(config: &SubscriptionConfig) -> Result<HeaderMap, String> {
    let mut fixed = HeaderMap::new();
    fixed.insert(http::header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    fixed.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    for (name, value) in &config.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header {name:?}: {e}"))?;
        let value = HeaderValue::from_str(value).map_err(|e| format!("header {name}: {e}"))?;
        fixed.append(name, value);
    }
    Ok(fixed)
}
