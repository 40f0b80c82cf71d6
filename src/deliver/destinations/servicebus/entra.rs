//! Entra ID (Azure AD) access tokens for Service Bus, by the OAuth 2.0
//! client-credentials grant: `POST {authority}/{tenant}/oauth2/v2.0/token`
//! with the form `grant_type=client_credentials`, `client_id`,
//! `client_secret` and `scope=https://servicebus.azure.net/.default`; the
//! answer's `access_token` goes as `Authorization: Bearer`, for its
//! `expires_in` seconds (the subscription's
//! [`crate::deliver::access_token::AccessToken`] keeps it and asks again
//! before it ends). The client secret is read once at start from
//! `client_secret_file` and goes only into that form.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};

use crate::deliver::access_token::Fetched;
use crate::deliver::destination::AnswerKind;
use crate::deliver::http_answer::{describe_failure, printable};
use crate::deliver::http_client::{Endpoint, Failure, Reply};

/// The scope of a token for Service Bus (its audience plus `/.default`).
pub const SCOPE: &str = "https://servicebus.azure.net/.default";

/// Why no token came, and what that means for delivery.
#[derive(Debug)]
pub struct TokenError {
    /// `Unavailable` when Entra ID did not answer or failed on its side
    /// (the link is down for now), `Refused` when it refused the
    /// application (a config to fix).
    pub kind: AnswerKind,
    /// Worded for the operator; never the secret.
    pub text: String,
}

/// One Entra ID application of a subscription.
pub struct EntraApp {
    /// The directory.
    pub tenant_id: String,
    /// The application (client) id.
    pub client_id: String,
    /// The client secret, trimmed.
    client_secret: String,
    /// The token endpoint's connections.
    token_endpoint: Endpoint,
    /// The token endpoint's URL, for messages.
    token_url: String,
    /// The request timeout, for messages.
    timeout: Duration,
}

impl std::fmt::Debug for EntraApp {
    /// Without the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraApp")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

impl EntraApp {
    /// The application `client_id` of `tenant_id` with its secret, asking
    /// `token_endpoint` (at `token_url`) for tokens.
    pub fn new(
        tenant_id: &str,
        client_id: &str,
        client_secret: String,
        token_endpoint: Endpoint,
        token_url: &url::Url,
        timeout: Duration,
    ) -> EntraApp {
        EntraApp {
            tenant_id: tenant_id.to_string(),
            client_id: client_id.to_string(),
            client_secret,
            token_endpoint,
            token_url: token_url.to_string(),
            timeout,
        }
    }

    /// The client secret itself, only to scrub an echo of it from an error
    /// text.
    pub fn secret(&self) -> &str {
        &self.client_secret
    }

    /// How messages name the application.
    pub fn named(&self) -> String {
        format!("Entra ID application {} of tenant {}", self.client_id, self.tenant_id)
    }

    /// Asks the token endpoint for a token.
    pub async fn fetch(&self) -> Result<Fetched, TokenError> {
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", &self.client_secret)
            .append_pair("scope", SCOPE)
            .finish();
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        match self.token_endpoint.post(headers, Bytes::from(form)).await {
            Ok(reply) => self.token_of(reply),
            Err(failure) => Err(self.no_answer(&failure)),
        }
    }

    /// The token endpoint did not answer.
    fn no_answer(&self, failure: &Failure) -> TokenError {
        TokenError {
            kind: AnswerKind::Unavailable,
            text: self.scrub(&format!(
                "Entra ID token endpoint {}: {}",
                self.token_url,
                describe_failure(failure, self.timeout)
            )),
        }
    }

    /// A token from a 200, or what Entra ID's error says.
    fn token_of(&self, reply: Reply) -> Result<Fetched, TokenError> {
        #[derive(serde::Deserialize)]
        struct Granted {
            access_token: String,
            expires_in: serde_json::Value,
        }
        #[derive(serde::Deserialize)]
        struct Refusal {
            error: Option<String>,
            error_description: Option<String>,
        }
        let status = reply.status.as_u16();
        if reply.status.is_success() {
            let granted: Granted = serde_json::from_slice(&reply.body).map_err(|e| TokenError {
                kind: AnswerKind::Unavailable,
                text: format!(
                    "Entra ID token endpoint {}: HTTP {status} without a token: {e}",
                    self.token_url
                ),
            })?;
            // Entra writes a number; older endpoints wrote a string.
            let seconds = match &granted.expires_in {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
            .unwrap_or(0);
            let header =
                HeaderValue::from_str(&format!("Bearer {}", granted.access_token)).map_err(|_| TokenError {
                    kind: AnswerKind::Unavailable,
                    text: format!(
                        "Entra ID token endpoint {}: the token is not valid in a header",
                        self.token_url
                    ),
                })?;
            return Ok(Fetched {
                header,
                valid_for: Duration::from_secs(seconds),
            });
        }
        let refusal: Option<Refusal> = serde_json::from_slice(&reply.body).ok();
        let said = match refusal {
            Some(Refusal {
                error: Some(error),
                error_description,
            }) => {
                let description = error_description.unwrap_or_default();
                // The description ends in trace and correlation ids, a
                // timestamp: the first sentence says it.
                let first = description.split(" Trace ID:").next().unwrap_or_default();
                format!("{error}: {}", printable(first.trim()))
            }
            _ => printable(String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)]).trim()),
        };
        // 429 and 5xx: Entra ID is down or busy, the link waits; a 4xx
        // refuses the application (wrong tenant, id or secret): fix the config.
        let kind = if status == 429 || reply.status.is_server_error() {
            AnswerKind::Unavailable
        } else {
            AnswerKind::Refused
        };
        let hint = match kind {
            AnswerKind::Refused => "; check tenant_id, client_id and client_secret_file",
            _ => "",
        };
        Err(TokenError {
            kind,
            text: self.scrub(&format!(
                "{} refused by {} (HTTP {status}): {said}{hint}",
                self.named(),
                self.token_url
            )),
        })
    }

    /// `text` without the client secret, should an answer echo it.
    fn scrub(&self, text: &str) -> String {
        text.replace(&self.client_secret, "<hidden>")
    }
}
