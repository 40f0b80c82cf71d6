//! The proxy the environment names for an endpoint (`HTTPS_PROXY`,
//! `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`), its Basic credentials, and URLs
//! and messages shown without their passwords.

/// A proxy from the environment: connections to the endpoint are tunnels
/// through it (`CONNECT`).
pub(super) struct Proxy {
    pub(super) host: url::Host<String>,
    pub(super) port: u16,
    /// `Proxy-Authorization` from the proxy URL's user and password.
    pub(super) authorization: Option<String>,
    /// The proxy URL without its password, for messages.
    pub(super) shown: String,
}

/// The proxy the environment names for `url`: `HTTPS_PROXY` for
/// `https://` (`HTTP_PROXY` for `http://`), else `ALL_PROXY`, upper or
/// lower case; none when `NO_PROXY` lists the host (`*`, the host, or a
/// domain it is in: `example.com` and `.example.com` both cover
/// `erp.example.com`).
pub(super) fn proxy_for(url: &url::Url) -> Result<Option<Proxy>, String> {
    proxy_from(url, |name| std::env::var(name).ok())
}

/// [`proxy_for`] with the environment given (`env` looks a variable up), so
/// tests need not change the process's own.
pub(super) fn proxy_from(url: &url::Url, env: impl Fn(&str) -> Option<String>) -> Result<Option<Proxy>, String> {
    let var = |names: &[&'static str]| -> Option<(&'static str, String)> {
        names
            .iter()
            .find_map(|name| env(name).filter(|v| !v.trim().is_empty()).map(|v| (*name, v)))
    };
    let scheme_var: &[&str] = match url.scheme() {
        "https" => &["HTTPS_PROXY", "https_proxy"],
        _ => &["HTTP_PROXY", "http_proxy"],
    };
    let Some((name, value)) = var(scheme_var).or_else(|| var(&["ALL_PROXY", "all_proxy"])) else {
        return Ok(None);
    };
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if let Some((_, no_proxy)) = var(&["NO_PROXY", "no_proxy"]) {
        if no_proxy_covers(&no_proxy, host) {
            return Ok(None);
        }
    }
    let text = value.trim();
    let with_scheme = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    // The value may hold the proxy's password: messages show it redacted.
    let bad = |what: &str| format!("{name}={:?}: {what}", redact_userinfo(text));
    let proxy = url::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    if proxy.scheme() != "http" {
        return Err(bad("only http:// proxies are supported"));
    }
    let proxy_host = proxy.host().ok_or_else(|| bad("no host"))?.to_owned();
    let authorization = (!proxy.username().is_empty()).then(|| {
        use base64::Engine as _;
        let user = percent_decoded(proxy.username());
        let password = percent_decoded(proxy.password().unwrap_or_default());
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    });
    Ok(Some(Proxy {
        port: proxy.port_or_known_default().unwrap_or(80),
        shown: format!("{proxy_host}:{}", proxy.port_or_known_default().unwrap_or(80)),
        host: proxy_host,
        authorization,
    }))
}

/// `url` as messages show it: the password of its user info as `***`, no
/// query (a token may ride there), no fragment.
pub fn shown_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    redact_userinfo(shown.as_str())
}

/// `text`, a URL or what was meant to be one (a proxy variable that does not
/// parse), with its user info redacted: `user:***@host`, or `***@host` when
/// there is no password (a lone user part is often a token). A text that
/// does not parse is redacted up to its last `@`: more than needed, never
/// less.
pub fn redact_userinfo(text: &str) -> String {
    if text.contains("://") {
        if let Ok(mut url) = url::Url::parse(text) {
            if url.has_host() {
                let redacted = if url.password().is_some() {
                    url.set_password(Some("***")).is_ok()
                } else if !url.username().is_empty() {
                    url.set_username("***").is_ok()
                } else {
                    true
                };
                if redacted {
                    return url.to_string();
                }
            }
        }
    }
    let (scheme, rest) = match text.find("://") {
        Some(i) => text.split_at(i + 3),
        None => ("", text),
    };
    match rest.rfind('@') {
        None => text.to_string(),
        Some(at) => {
            let user = match rest[..at].split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_string(),
            };
            format!("{scheme}{user}@{}", &rest[at + 1..])
        }
    }
}

pub(super) fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Whether a `NO_PROXY` list names `host`.
pub(super) fn no_proxy_covers(list: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    list.split(',').map(str::trim).filter(|e| !e.is_empty()).any(|entry| {
        let entry = entry.to_ascii_lowercase();
        let domain = entry.trim_start_matches("*.").trim_start_matches('.');
        entry == "*" || host == domain || host.ends_with(&format!(".{domain}"))
    })
}
