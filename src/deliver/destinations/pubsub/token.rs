//! Signing in to Google as a service account: the key file (read and
//! checked at start), the RS256-signed JWT assertion, and its exchange at
//! the key's `token_uri` for an OAuth access token (RFC 7523), which
//! [`crate::deliver::access_token::AccessToken`] keeps and renews.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::Method;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};

use super::config::on_loopback;
use crate::deliver::access_token::Fetched;
use crate::deliver::http_answer::{describe_failure, printable};
use crate::deliver::http_client::{Endpoint, TlsFiles};

/// The OAuth scope of publishing (Pub/Sub's own, narrower than
/// cloud-platform).
pub const SCOPE: &str = "https://www.googleapis.com/auth/pubsub";

/// How long an assertion is valid (Google's maximum).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// A service account, from its key file.
pub struct ServiceAccount {
    /// `client_email`: the JWT's issuer, and who the agent is in messages.
    pub email: String,
    /// `private_key_id`: the JWT's `kid`.
    key_id: Option<String>,
    /// `private_key`, parsed.
    key: RsaKeyPair,
    /// `token_uri`, where assertions are exchanged.
    pub token_uri: url::Url,
    /// Its connections.
    token_endpoint: Endpoint,
}

#[derive(serde::Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    private_key_id: Option<String>,
    token_uri: String,
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

impl ServiceAccount {
    /// Reads and checks the key file at `path`; the error names the file and
    /// what is wrong with it, never the key.
    pub fn from_file(path: &Path, timeout: Duration) -> Result<Self, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!("credentials_file {shown}: cannot read it: {e} (it must be readable by the agent's user)")
        })?;
        let file: KeyFile = serde_json::from_str(&text)
            .map_err(|e| format!("credentials_file {shown}: not a service-account key file: {e}"))?;
        if let Some(kind) = file.kind.as_deref().filter(|k| *k != "service_account") {
            return Err(format!(
                "credentials_file {shown}: a key of type {kind:?}; give a service account's key (type \"service_account\")"
            ));
        }
        let der = pem_body(&file.private_key)
            .ok_or_else(|| format!("credentials_file {shown}: private_key is not a PEM \"PRIVATE KEY\""))?;
        let key = RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| format!("credentials_file {shown}: private_key is not an RSA key in PKCS#8: {e}"))?;
        let token_uri = url::Url::parse(&file.token_uri)
            .map_err(|e| format!("credentials_file {shown}: token_uri {:?}: {e}", file.token_uri))?;
        // The assertion is good for an hour: it goes over TLS only (plain
        // HTTP just to a test server on loopback).
        if !(token_uri.scheme() == "https" || (token_uri.scheme() == "http" && on_loopback(&token_uri))) {
            return Err(format!(
                "credentials_file {shown}: token_uri {token_uri} is not https://"
            ));
        }
        let token_endpoint = Endpoint::new(
            &token_uri,
            TlsFiles {
                ca_file: None,
                client_cert: None,
            },
            timeout,
            timeout.min(Duration::from_secs(10)),
            1,
        )
        .map_err(|e| format!("credentials_file {shown}: token_uri: {e}"))?;
        Ok(ServiceAccount {
            email: file.client_email,
            key_id: file.private_key_id,
            key,
            token_uri,
            token_endpoint,
        })
    }

    /// A signed JWT assertion issued `now` (Unix seconds).
    pub fn assertion(&self, now: u64) -> Result<String, String> {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = serde_json::Value::from(kid.as_str());
        }
        let claims = serde_json::json!({
            "iss": self.email,
            "scope": SCOPE,
            "aud": self.token_uri.as_str(),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs(),
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signed.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "cannot sign the token request with the service account's key".to_string())?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// Exchanges a fresh assertion for an access token. The error says what
    /// Google answered (its `error` and `error_description`).
    pub async fn fetch_token(&self, timeout: Duration) -> Result<Fetched, String> {
        let assertion = self.assertion(crate::signing::timestamp_now().max(0) as u64)?;
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", &assertion)
            .finish();
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("application/json"));
        let who = format!("token exchange at {} for {}", self.token_uri, self.email);
        let reply = self
            .token_endpoint
            .request(Method::POST, headers, Bytes::from(form))
            .await
            .map_err(|f| format!("{who}: {}", describe_failure(&f, timeout)))?;
        if !reply.status.is_success() {
            let text = printable(&String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)]));
            return Err(format!("{who}: HTTP {}: {}", reply.status.as_u16(), text.trim()));
        }
        let answer: TokenAnswer = serde_json::from_slice(&reply.body)
            .map_err(|e| format!("{who}: the answer is not an access token: {e}"))?;
        let header = HeaderValue::from_str(&format!("Bearer {}", answer.access_token))
            .map_err(|_| format!("{who}: the access token is not a valid header value"))?;
        Ok(Fetched {
            header,
            valid_for: Duration::from_secs(answer.expires_in.unwrap_or(3600)),
        })
    }
}

/// The DER of a PEM `PRIVATE KEY` block (as Google's key files hold it,
/// with `\n` line breaks).
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find("-----BEGIN PRIVATE KEY-----")? + "-----BEGIN PRIVATE KEY-----".len();
    let end = pem[start..].find("-----END PRIVATE KEY-----")? + start;
    let base64: String = pem[start..end].chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(base64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2048-bit key made with `openssl genpkey -algorithm RSA`, for this
    /// test only.
    fn test_key_file(dir: &Path, token_uri: &str) -> Option<std::path::PathBuf> {
        let pem = dir.join("key.pem");
        let made = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&pem)
            .output()
            .ok()?;
        if !made.status.success() {
            return None;
        }
        let key = std::fs::read_to_string(&pem).ok()?;
        let file = dir.join("sa.json");
        let json = serde_json::json!({
            "type": "service_account",
            "project_id": "p1",
            "private_key_id": "k1",
            "private_key": key,
            "client_email": "agent@p1.iam.gserviceaccount.com",
            "token_uri": token_uri,
        });
        std::fs::write(&file, json.to_string()).ok()?;
        Some(file)
    }

    #[test]
    fn the_assertion_is_an_rs256_jwt_with_google_s_claims_verified_by_the_public_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let Some(file) = test_key_file(dir.path(), "https://oauth2.googleapis.com/token") else {
            eprintln!("skipping: no openssl to make a test key");
            return;
        };
        let account = ServiceAccount::from_file(&file, Duration::from_secs(5)).expect("key file");
        let jwt = account.assertion(1_700_000_000).expect("signed");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |p: &str| -> serde_json::Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("base64url")).expect("JSON")
        };
        assert_eq!(
            decode(parts[0]),
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "k1"})
        );
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], "agent@p1.iam.gserviceaccount.com");
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["aud"], "https://oauth2.googleapis.com/token");
        assert_eq!(claims["exp"].as_u64(), Some(1_700_003_600));
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            account.key.public().as_ref().to_vec(),
        );
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature");
        public
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("the signature verifies with the public half");
    }

    #[test]
    fn a_bad_key_file_is_named_and_the_key_never_shown() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sa.json");
        let check = |json: &str, want: &str| {
            std::fs::write(&path, json).expect("write");
            let e = ServiceAccount::from_file(&path, Duration::from_secs(1))
                .err()
                .expect("refused");
            assert!(e.contains("credentials_file") && e.contains(want), "want {want:?}: {e}");
            assert!(!e.contains("SECRETKEYMATERIAL"), "{e}");
        };
        check("{", "not a service-account key file");
        check(
            r#"{"type":"authorized_user","client_email":"a","private_key":"x","token_uri":"https://t"}"#,
            "authorized_user",
        );
        check(
            r#"{"client_email":"a","private_key":"-----BEGIN PRIVATE KEY-----\nSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n","token_uri":"https://t"}"#,
            "private_key",
        );
        let missing = ServiceAccount::from_file(&dir.path().join("none.json"), Duration::from_secs(1));
        assert!(missing.err().is_some_and(|e| e.contains("cannot read it")));
        if let Some(file) = test_key_file(dir.path(), "http://oauth.example/token") {
            let e = ServiceAccount::from_file(&file, Duration::from_secs(1))
                .err()
                .expect("refused");
            assert!(e.contains("is not https://"), "{e}");
        }
    }
}
