//! Azure Service Bus on loopback, written from Microsoft's REST reference
//! (no emulator runs here): [`ServiceBus`] serves "Send Message" and "Send
//! Message Batch" (`POST /{queue-or-topic}/messages`) with SAS and Entra ID
//! auth, sessions and duplicate detection, and Entra ID's client-credentials
//! token endpoint (`POST /{tenant}/oauth2/v2.0/token`) on the same port;
//! [`sas_token`] builds a token the way Microsoft's samples do.
//!
//! What it checks, as the service documents it:
//!
//! - `Authorization: SharedAccessSignature sr=..&sig=..&se=..&skn=..` (any
//!   order): `skn` is the configured key name; `sig` is the base64
//!   HMAC-SHA256, keyed with the key's UTF-8 bytes, of `sr` *exactly as sent*
//!   (still URL-encoded), a line feed and `se` ("The URL-encoded resourceURI
//!   must be the same as the URI used in the string-to-sign"); `se` is not
//!   past; `sr`, decoded, is `http(s)://` or `sb://` + the namespace + a
//!   path prefix (whole segments, case-insensitive) of the request's path.
//!   Field values are URL-decoded as a form is, so a `+` left unencoded in
//!   `sig` turns into a space and the signature fails, as it would in Azure.
//! - `Authorization: Bearer <token>` issued by this server's token endpoint
//!   for the audience `https://servicebus.azure.net`, not expired.
//! - One message: the body as sent, `BrokerProperties` a JSON object, every
//!   other non-HTTP header a custom property (raw value: Service Bus writes
//!   strings quoted, `"SaleCreated"`, and numbers bare; [`unquote_property`]).
//! - A batch (`Content-Type: application/vnd.microsoft.servicebus.json`): a
//!   JSON array of `{"Body", "BrokerProperties", "UserProperties"}`, all or
//!   nothing; custom-property headers are ignored, as the batch reference
//!   says; each `UserProperties` value is kept as its JSON text, so strings
//!   are quoted there too.
//! - Sessions (on by default, as the contract requires of the entity): a
//!   message without `SessionId` is a 400; `SessionId` and `PartitionKey`
//!   must agree. Duplicate detection (on by default): a `MessageId` the
//!   entity already has is answered 201 and not stored again.
//!
//! Errors have the service's XML body, `<Error><Code>401</Code><Detail>
//! ExpiredToken: ...</Detail></Error>`, and the token endpoint Entra ID's
//! JSON (`{"error":"invalid_client","error_description":"AADSTS7000215: ..."}`).
//! An entity this server does not have is a 404 `MessagingEntityNotFound`
//! (what Azure answers; the REST page lists 410 for it, see
//! [`ServiceBus::answer_next`] for that one). Not modelled: message size
//! quotas, the duplicate-detection time window, scheduled messages.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The content type of "Send Message Batch".
pub const SERVICEBUS_BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.servicebus.json";

/// The Entra ID audience of Service Bus; a client asks for the scope
/// `https://servicebus.azure.net/.default`.
pub const SERVICEBUS_AUDIENCE: &str = "https://servicebus.azure.net";

/// Request headers that are HTTP's or the REST API's own, never custom
/// properties.
const NOT_CUSTOM_PROPERTIES: &[&str] = &[
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "authorization",
    "brokerproperties",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "cookie",
    "date",
    "expect",
    "host",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "via",
    "x-ms-retrypolicy",
];

/// One message as the entity stored it.
#[derive(Clone, Debug)]
pub struct ServiceBusMessage {
    /// The queue or topic, as the request's path named it.
    pub entity: String,
    /// The body as sent (the `Body` string of a batch element).
    pub body: String,
    /// `BrokerProperties` as sent, every property kept (`{}` when absent).
    pub broker_properties: serde_json::Value,
    /// Custom properties by name (header names are lower case, as HTTP
    /// delivers them), raw: a string as the sender quoted it.
    pub custom_properties: BTreeMap<String, String>,
    /// `MessageId`, or the one the service assigned when none was sent.
    pub message_id: String,
    /// `SessionId`, if sent.
    pub session_id: Option<String>,
    /// The request's content type (the batch type for batch elements).
    pub content_type: Option<String>,
    /// Arrived in a "Send Message Batch" request.
    pub batched: bool,
    /// The entity's sequence number, from 1, in arrival order.
    pub sequence_number: u64,
}

impl ServiceBusMessage {
    /// Custom property `name`, unquoted ([`unquote_property`]).
    pub fn property(&self, name: &str) -> Option<String> {
        self.custom_properties.get(name).map(|raw| unquote_property(raw))
    }

    /// The body as JSON (the webhook envelope), or Null when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One request the server answered (messages and token endpoint alike).
#[derive(Clone, Debug)]
pub struct ServiceBusRequest {
    pub at: Instant,
    pub method: String,
    /// Path and query as sent.
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What the server answered.
    pub status: u16,
}

impl ServiceBusRequest {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A custom property's value as the application meant it: a JSON string
/// (`"SaleCreated"`, with escapes) unquoted, anything else (`3`, `true`, a
/// bare word) as it is.
pub fn unquote_property(raw: &str) -> String {
    if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
        serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw[1..raw.len() - 1].to_string())
    } else {
        raw.to_string()
    }
}

/// Seconds since the Unix epoch, by the wall clock (the expiry of a
/// [`sas_token`] is `unix_now() + lifetime`).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("wall clock after 1970")
        .as_secs()
}

/// URL-encodes as .NET's `WebUtility.UrlEncode` and Java's `URLEncoder` do
/// in Microsoft's samples (form encoding: `:` and `/` become `%3A`, `%2F`).
fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// URL-decodes a token field as a form value (`+` is a space).
fn url_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// A SAS token for `resource_uri` (`https://<namespace>/<entity>`) as
/// Microsoft's "Generate SAS token" samples build it: the value of the
/// `Authorization` header, `SharedAccessSignature sr=<url-encoded
/// uri>&sig=<url-encoded base64 HMAC-SHA256 of "<url-encoded uri>\n<expiry>"
/// keyed with the key's UTF-8 bytes>&se=<expiry>&skn=<key name>`.
pub fn sas_token(resource_uri: &str, key_name: &str, key: &str, expiry_unix: u64) -> String {
    let sr = url_encode(resource_uri);
    let signature = hmac_sha256(key.as_bytes(), format!("{sr}\n{expiry_unix}").as_bytes());
    let sig = url_encode(&base64::engine::general_purpose::STANDARD.encode(signature));
    format!("SharedAccessSignature sr={sr}&sig={sig}&se={expiry_unix}&skn={key_name}")
}

/// The Entra ID application allowed to ask for tokens.
#[derive(Clone, Debug)]
struct EntraApp {
    tenant: String,
    client_id: String,
    client_secret: String,
    expires_in_secs: u64,
}

/// A token the token endpoint issued.
#[derive(Clone, Debug)]
struct IssuedToken {
    audience: String,
    expires_at: u64,
}

/// A scripted answer ([`ServiceBus::answer_next`]).
#[derive(Clone, Copy, Debug)]
struct Scripted {
    status: u16,
    retry_after_secs: Option<u64>,
}

/// The namespace's state: configuration, entities, what they hold.
struct Bus {
    /// The namespace's host, lower case (`retail.servicebus.windows.net`).
    namespace: String,
    /// The entity [`ServiceBus::start`] named, as given.
    entity: String,
    key_name: String,
    key: String,
    /// Message ids each entity (lower case) holds, for duplicate detection.
    entities: HashMap<String, HashSet<String>>,
    /// Next sequence number of each entity.
    sequences: HashMap<String, u64>,
    sessions_required: bool,
    duplicate_detection: bool,
    forbidden: bool,
    entra: Option<EntraApp>,
    tokens: HashMap<String, IssuedToken>,
    /// Signs the JWT-shaped access tokens (unforgeable, never parsed back).
    token_signing_key: Vec<u8>,
    /// Added to the wall clock for every expiry check.
    clock_offset_secs: u64,
    scripted: VecDeque<Scripted>,
    scripted_token: VecDeque<Scripted>,
    messages: Vec<ServiceBusMessage>,
    log: Vec<ServiceBusRequest>,
    message_requests: usize,
    duplicates: usize,
    token_requests: usize,
}

impl Bus {
    fn now(&self) -> u64 {
        unix_now() + self.clock_offset_secs
    }

    /// The service's error: status, XML body as Azure writes it.
    fn error(&self, status: StatusCode, entity: &str, detail: &str) -> Response {
        let timestamp = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format a timestamp");
        let body = format!(
            "<Error><Code>{}</Code><Detail>{} TrackingId:{}_G0, SystemTracker:{}:{}, Timestamp:{}</Detail></Error>",
            status.as_u16(),
            xml_escape(detail),
            uuid::Uuid::now_v7(),
            self.namespace,
            xml_escape(entity),
            timestamp
        );
        (status, [(header::CONTENT_TYPE, "application/xml; charset=utf-8")], body).into_response()
    }

    /// Checks `Authorization` for a request to `path` (no query): `Err`
    /// is the 401's detail.
    fn authorize(&self, authorization: Option<&str>, path: &str) -> Result<(), String> {
        let Some(value) = authorization else {
            return Err("MissingToken: The request contains no authorization header.".into());
        };
        let target = format!("{}{}", self.namespace, path).to_ascii_lowercase();
        if let Some(fields) = strip_prefix_ignore_case(value, "SharedAccessSignature ") {
            self.authorize_sas(fields, &target)
        } else if let Some(token) = strip_prefix_ignore_case(value, "Bearer ") {
            self.authorize_bearer(token.trim())
        } else {
            Err("InvalidToken: The authorization header is neither a SharedAccessSignature nor a Bearer token.".into())
        }
    }

    fn authorize_sas(&self, fields: &str, target: &str) -> Result<(), String> {
        let mut sr = None;
        let mut sig = None;
        let mut se = None;
        let mut skn = None;
        for pair in fields.trim().split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name.trim() {
                "sr" => sr = Some(value),
                "sig" => sig = Some(value),
                "se" => se = Some(value),
                "skn" => skn = Some(value),
                _ => {}
            }
        }
        let (Some(sr), Some(sig), Some(se), Some(skn)) = (sr, sig, se, skn) else {
            return Err("InvalidToken: The SharedAccessSignature needs sr, sig, se and skn.".into());
        };
        if url_decode(skn) != self.key_name {
            return Err(format!(
                "InvalidSignature: The token has an invalid signature: no shared access policy '{}'.",
                url_decode(skn)
            ));
        }
        // Signed over sr and se exactly as they appear in the token.
        let sent = base64::engine::general_purpose::STANDARD
            .decode(url_decode(sig))
            .unwrap_or_default();
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.as_bytes()).expect("HMAC takes any key length");
        mac.update(format!("{sr}\n{se}").as_bytes());
        if mac.verify_slice(&sent).is_err() {
            return Err("InvalidSignature: The token has an invalid signature.".into());
        }
        let Ok(expiry) = se.parse::<u64>() else {
            return Err(format!(
                "InvalidToken: The token expiry '{se}' is not a number of seconds."
            ));
        };
        if self.now() >= expiry {
            return Err(format!(
                "ExpiredToken: The token is expired. Expiration time: '{}'.",
                format_unix(expiry)
            ));
        }
        if !sr_covers(&url_decode(sr), target) {
            return Err("InvalidAudience: The authorization header contains a token with a wrong audience.".into());
        }
        Ok(())
    }

    fn authorize_bearer(&self, token: &str) -> Result<(), String> {
        let Some(issued) = self.tokens.get(token) else {
            return Err("InvalidIssuer: Token issuer is invalid.".into());
        };
        if self.now() >= issued.expires_at {
            return Err(format!(
                "ExpiredToken: The token is expired. Expiration time: '{}'.",
                format_unix(issued.expires_at)
            ));
        }
        if issued.audience != SERVICEBUS_AUDIENCE {
            return Err(format!(
                "InvalidAudience: The authorization header contains a token with a wrong audience ('{}').",
                issued.audience
            ));
        }
        Ok(())
    }

    /// `POST /{entity}/messages`: the answer, messages stored on 201.
    fn send(&mut self, entity: &str, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
        self.message_requests += 1;
        if let Some(scripted) = self.scripted.pop_front() {
            return self.scripted_answer(scripted, entity);
        }
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if let Err(detail) = self.authorize(authorization, path) {
            return self.error(StatusCode::UNAUTHORIZED, entity, &detail);
        }
        if self.forbidden {
            let detail = format!(
                "Unauthorized access. 'Send' claim(s) are required to perform this operation. Resource: 'sb://{}/{}'.",
                self.namespace, entity
            );
            return self.error(StatusCode::FORBIDDEN, entity, &detail);
        }
        let entity_key = entity.to_ascii_lowercase();
        if !self.entities.contains_key(&entity_key) {
            let detail = format!(
                "MessagingEntityNotFound: The messaging entity 'sb://{}/{}' could not be found.",
                self.namespace, entity
            );
            return self.error(StatusCode::NOT_FOUND, entity, &detail);
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let batched = content_type
            .as_deref()
            .is_some_and(|t| t.to_ascii_lowercase().starts_with(SERVICEBUS_BATCH_CONTENT_TYPE));
        let parsed = if batched {
            parse_batch(body)
        } else {
            parse_single(headers, body)
        };
        let incoming = match parsed.and_then(|all| {
            all.iter().try_for_each(|m| self.validate(m))?;
            Ok(all)
        }) {
            Ok(all) => all,
            Err(detail) => return self.error(StatusCode::BAD_REQUEST, entity, &detail),
        };
        for m in incoming {
            let message_id = m
                .broker_properties
                .get("MessageId")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                // The service assigns an id to a message sent without one.
                .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
            let seen = self.entities.get_mut(&entity_key).expect("entity checked above");
            // Recorded even while detection is off, so turning it on knows them.
            let first_time = seen.insert(message_id.clone());
            if self.duplicate_detection && !first_time {
                self.duplicates += 1;
                continue;
            }
            let sequence = self.sequences.entry(entity_key.clone()).or_insert(0);
            *sequence += 1;
            let session_id = m
                .broker_properties
                .get("SessionId")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            self.messages.push(ServiceBusMessage {
                entity: entity.to_string(),
                body: m.body,
                broker_properties: m.broker_properties,
                custom_properties: m.custom_properties,
                message_id,
                session_id,
                content_type: content_type.clone(),
                batched,
                sequence_number: *sequence,
            });
        }
        (
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
            "",
        )
            .into_response()
    }

    /// The entity's rules for one message: `Err` is the 400's detail.
    fn validate(&self, m: &Incoming) -> Result<(), String> {
        let session = m.broker_properties.get("SessionId");
        if let Some(s) = session {
            if !s.is_string() {
                return Err("SerializationException: SessionId must be a string.".into());
            }
        }
        let session = session.and_then(|v| v.as_str()).filter(|s| !s.is_empty());
        if self.sessions_required && session.is_none() {
            return Err(
                "InvalidOperationException: The SessionId was not set on a message, and it cannot be sent \
                        to the entity. Entities that have session support enabled can only receive messages that \
                        have the SessionId set to a valid value."
                    .into(),
            );
        }
        if let (Some(session), Some(partition)) = (session, m.broker_properties.get("PartitionKey")) {
            if partition.as_str() != Some(session) {
                return Err(format!(
                    "InvalidOperationException: PartitionKey {partition} and SessionId \"{session}\" must be the same."
                ));
            }
        }
        if let Some(id) = m.broker_properties.get("MessageId") {
            if !id.is_string() || id.as_str() == Some("") {
                return Err("SerializationException: MessageId must be a non-empty string.".into());
            }
        }
        Ok(())
    }

    /// A scripted status, with the body Azure gives it.
    fn scripted_answer(&self, scripted: Scripted, entity: &str) -> Response {
        let status = StatusCode::from_u16(scripted.status).expect("a valid HTTP status");
        let detail = match scripted.status {
            401 => "InvalidSignature: The token has an invalid signature.",
            403 => "QuotaExceeded: The maximum entity size has been reached or exceeded.",
            404 => "MessagingEntityNotFound: The messaging entity could not be found.",
            410 => "MessagingEntityNotFound: The specified queue or topic does not exist.",
            429 | 503 => {
                "ServerBusy: The request was terminated because the entity is being throttled. Please wait and retry."
            }
            500 => "InternalServerError: The server was unable to process the request; please retry the operation.",
            _ => "Scripted answer.",
        };
        let mut response = self.error(status, entity, detail);
        if let Some(secs) = scripted.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }

    /// `POST /{tenant}/oauth2/v2.0/token`, Entra ID's client credentials.
    fn token(&mut self, tenant: &str, headers: &HeaderMap, body: &[u8]) -> Response {
        self.token_requests += 1;
        if let Some(scripted) = self.scripted_token.pop_front() {
            let status = StatusCode::from_u16(scripted.status).expect("a valid HTTP status");
            let mut response = entra_error(
                status,
                "temporarily_unavailable",
                50196,
                "The server is temporarily unable to handle the request.",
            );
            if let Some(secs) = scripted.retry_after_secs {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            return response;
        }
        let Some(app) = self.entra.clone().filter(|app| app.tenant.eq_ignore_ascii_case(tenant)) else {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                90002,
                &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID."),
            );
        };
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
        let form: HashMap<String, String> = if is_form {
            url::form_urlencoded::parse(body).into_owned().collect()
        } else {
            HashMap::new()
        };
        let missing = |name: &str| {
            entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                &format!("The request body must contain the following parameter: '{name}'."),
            )
        };
        let Some(grant_type) = form.get("grant_type") else {
            return missing("grant_type");
        };
        if grant_type != "client_credentials" {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{grant_type}'."),
            );
        }
        let Some(client_id) = form.get("client_id") else {
            return missing("client_id");
        };
        if !client_id.eq_ignore_ascii_case(&app.client_id) {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                &format!(
                    "Application with identifier '{client_id}' was not found in the directory '{}'.",
                    app.tenant
                ),
            );
        }
        let Some(client_secret) = form.get("client_secret") else {
            return entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            );
        };
        if *client_secret != app.client_secret {
            return entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client \
                     secret value, not the client secret ID, for a secret added to app '{}'.",
                    app.client_id
                ),
            );
        }
        let Some(scope) = form.get("scope") else {
            return missing("scope");
        };
        let Some(resource) = scope.strip_suffix("/.default") else {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1002012,
                &format!(
                    "The provided value for scope {scope} is not valid. Client credential flows must have a scope \
                     value with /.default suffixed to the resource identifier (application ID URI)."
                ),
            );
        };
        // Entra issues a token for any resource; the bus then refuses one
        // for another audience (401 InvalidAudience), as Azure does.
        let audience = resource.trim_end_matches('/').to_string();
        let now = self.now();
        let expires_at = now + app.expires_in_secs;
        let access_token = self.jwt(&app, &audience, now, expires_at);
        self.tokens
            .insert(access_token.clone(), IssuedToken { audience, expires_at });
        (
            StatusCode::OK,
            [(header::CACHE_CONTROL, "no-store, no-cache")],
            axum::Json(serde_json::json!({
                "token_type": "Bearer",
                "expires_in": app.expires_in_secs,
                "ext_expires_in": app.expires_in_secs,
                "access_token": access_token,
            })),
        )
            .into_response()
    }

    /// An access token shaped like Entra's (a JWT), signed with this
    /// server's own key.
    fn jwt(&self, app: &EntraApp, audience: &str, now: u64, expires_at: u64) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let head = b64.encode(serde_json::json!({"typ": "JWT", "alg": "HS256", "kid": "loopback"}).to_string());
        let claims = b64.encode(
            serde_json::json!({
                "aud": audience,
                "iss": format!("https://sts.windows.net/{}/", app.tenant),
                "iat": now,
                "nbf": now,
                "exp": expires_at,
                "appid": app.client_id,
                "tid": app.tenant,
                "jti": uuid::Uuid::now_v7().to_string(),
            })
            .to_string(),
        );
        let signature = b64.encode(hmac_sha256(
            &self.token_signing_key,
            format!("{head}.{claims}").as_bytes(),
        ));
        format!("{head}.{claims}.{signature}")
    }
}

/// A message as a request carried it, before the entity takes it.
struct Incoming {
    body: String,
    broker_properties: serde_json::Value,
    custom_properties: BTreeMap<String, String>,
}

/// "Send Message": the body, `BrokerProperties`, the other headers.
fn parse_single(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Incoming>, String> {
    let broker_properties = match headers.get("brokerproperties") {
        None => serde_json::json!({}),
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| "SerializationException: The BrokerProperties header is not ASCII.".to_string())?;
            let json: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| format!("SerializationException: The BrokerProperties header is not valid JSON: {e}."))?;
            if !json.is_object() {
                return Err("SerializationException: The BrokerProperties header is not a JSON object.".into());
            }
            json
        }
    };
    let custom_properties = headers
        .iter()
        .filter(|(name, _)| !NOT_CUSTOM_PROPERTIES.contains(&name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok(vec![Incoming {
        body: String::from_utf8_lossy(body).into_owned(),
        broker_properties,
        custom_properties,
    }])
}

/// "Send Message Batch": a JSON array of `{"Body", "BrokerProperties",
/// "UserProperties"}`.
fn parse_batch(body: &[u8]) -> Result<Vec<Incoming>, String> {
    let json: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("SerializationException: The batch is not valid JSON: {e}."))?;
    let Some(elements) = json.as_array() else {
        return Err("SerializationException: The batch is not a JSON array.".into());
    };
    if elements.is_empty() {
        return Err("BadRequest: The batch has no messages.".into());
    }
    elements
        .iter()
        .enumerate()
        .map(|(i, element)| {
            let body = match element.get("Body") {
                Some(serde_json::Value::String(s)) => s.clone(),
                None => String::new(),
                Some(_) => return Err(format!("SerializationException: Body of message {i} is not a string.")),
            };
            let broker_properties = match element.get("BrokerProperties") {
                None => serde_json::json!({}),
                Some(p) if p.is_object() => p.clone(),
                Some(_) => {
                    return Err(format!(
                        "SerializationException: BrokerProperties of message {i} is not an object."
                    ))
                }
            };
            let custom_properties = match element.get("UserProperties") {
                None => BTreeMap::new(),
                Some(serde_json::Value::Object(p)) => p.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
                Some(_) => {
                    return Err(format!(
                        "SerializationException: UserProperties of message {i} is not an object."
                    ))
                }
            };
            Ok(Incoming {
                body,
                broker_properties,
                custom_properties,
            })
        })
        .collect()
}

/// Whether the decoded `sr` grants access to `target` (`<namespace>/<path>`,
/// lower case): any of the schemes Microsoft's SAS page names, then a
/// prefix made of whole path segments.
fn sr_covers(sr: &str, target: &str) -> bool {
    let sr = sr.to_ascii_lowercase();
    let Some(rest) = ["https://", "http://", "sb://"].iter().find_map(|s| sr.strip_prefix(s)) else {
        return false;
    };
    let prefix = rest.trim_end_matches('/');
    !prefix.is_empty() && (target == prefix || target.starts_with(&format!("{prefix}/")))
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &value[prefix.len()..])
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn format_unix(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// Entra ID's error answer: `{"error", "error_description": "AADSTS<n>:
/// ...", "error_codes": [n], ...}`.
fn entra_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let trace_id = uuid::Uuid::now_v7().to_string();
    let correlation_id = uuid::Uuid::now_v7().to_string();
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format a timestamp");
    (
        status,
        axum::Json(serde_json::json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {description} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}"
            ),
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        })),
    )
        .into_response()
}

/// The routes: token endpoint, messages, 404 for anything else.
async fn handle(
    State(bus): State<Arc<Mutex<Bus>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let mut bus = bus.lock().expect("service bus state");
    let response = if let Some(tenant) = path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix("/oauth2/v2.0/token"))
        .filter(|t| !t.is_empty() && !t.contains('/'))
    {
        if method == Method::POST {
            bus.token(tenant, &headers, &body)
        } else {
            StatusCode::METHOD_NOT_ALLOWED.into_response()
        }
    } else if let Some(entity) = path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix("/messages"))
        .filter(|e| !e.is_empty())
    {
        let entity = percent_encoding::percent_decode_str(entity)
            .decode_utf8_lossy()
            .into_owned();
        if method == Method::POST {
            bus.send(&entity, path, &headers, &body)
        } else {
            bus.error(
                StatusCode::METHOD_NOT_ALLOWED,
                &entity,
                "BadRequest: Only POST sends messages.",
            )
        }
    } else {
        bus.error(StatusCode::NOT_FOUND, path, "EndpointNotFound: No such operation.")
    };
    bus.log.push(ServiceBusRequest {
        at: Instant::now(),
        method: method.to_string(),
        path: uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        status: response.status().as_u16(),
    });
    response
}

/// The server's thread and the way to stop it.
struct Serving {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// A Service Bus namespace with one or more queues or topics, and Entra
/// ID's token endpoint, on a free loopback port, in its own thread and
/// runtime. The port stays the same across [`ServiceBus::set_down`].
pub struct ServiceBus {
    pub addr: SocketAddr,
    bus: Arc<Mutex<Bus>>,
    serving: Mutex<Option<Serving>>,
}

impl ServiceBus {
    /// Starts namespace `namespace` (its host, `retail.servicebus.windows.net`)
    /// with queue or topic `entity`, sessions and duplicate detection on,
    /// taking SAS tokens signed with shared access policy `key_name`/`key`.
    pub fn start(namespace: &str, entity: &str, key_name: &str, key: &str) -> ServiceBus {
        let bus = Bus {
            namespace: namespace.to_ascii_lowercase(),
            entity: entity.to_string(),
            key_name: key_name.to_string(),
            key: key.to_string(),
            entities: HashMap::from([(entity.to_ascii_lowercase(), HashSet::new())]),
            sequences: HashMap::new(),
            sessions_required: true,
            duplicate_detection: true,
            forbidden: false,
            entra: None,
            tokens: HashMap::new(),
            token_signing_key: uuid::Uuid::now_v7().as_bytes().to_vec(),
            clock_offset_secs: 0,
            scripted: VecDeque::new(),
            scripted_token: VecDeque::new(),
            messages: Vec::new(),
            log: Vec::new(),
            message_requests: 0,
            duplicates: 0,
            token_requests: 0,
        };
        let mut service_bus = ServiceBus {
            addr: ([127, 0, 0, 1], 0).into(),
            bus: Arc::new(Mutex::new(bus)),
            serving: Mutex::new(None),
        };
        service_bus.addr = service_bus.listen(([127, 0, 0, 1], 0).into());
        service_bus
    }

    /// Binds `addr` (retrying while a port just closed is still taken) and
    /// serves it in a new thread; returns the address bound.
    fn listen(&self, addr: SocketAddr) -> SocketAddr {
        let listener = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match std::net::TcpListener::bind(addr) {
                    Ok(l) => break l,
                    Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                    Err(e) => panic!("bind {addr}: {e}"),
                }
            }
        };
        listener.set_nonblocking(true).expect("nonblocking listener");
        let bound = listener.local_addr().expect("listener address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let bus = self.bus.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = axum::Router::new().fallback(handle).with_state(bus);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        *self.serving.lock().expect("serving") = Some(Serving { stop, thread });
        bound
    }

    fn state(&self) -> MutexGuard<'_, Bus> {
        self.bus.lock().expect("service bus state")
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port>`: the agent's Service Bus endpoint and
    /// Entra ID authority in tests.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint of `tenant`.
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.base_url())
    }

    /// The loopback URL messages are posted to.
    pub fn messages_url(&self) -> String {
        format!("{}/{}/messages", self.base_url(), self.state().entity)
    }

    /// `servicebus://<namespace>/<entity>`, a subscription's `url`.
    pub fn subscription_url(&self) -> String {
        let bus = self.state();
        format!("servicebus://{}/{}", bus.namespace, bus.entity)
    }

    /// `https://<namespace>/<entity>`, what a SAS token signs.
    pub fn resource_uri(&self) -> String {
        let bus = self.state();
        format!("https://{}/{}", bus.namespace, bus.entity)
    }

    /// Adds queue or topic `entity` to the namespace.
    pub fn add_entity(&self, entity: &str) {
        self.state().entities.entry(entity.to_ascii_lowercase()).or_default();
    }

    /// Whether every message needs a `SessionId` (on at start).
    pub fn set_sessions_required(&self, on: bool) {
        self.state().sessions_required = on;
    }

    /// Whether a `MessageId` already held is dropped (on at start).
    pub fn set_duplicate_detection(&self, on: bool) {
        self.state().duplicate_detection = on;
    }

    /// Answers 403 (the key or identity lacks the Send right) to every
    /// authenticated send while on.
    pub fn set_forbidden(&self, on: bool) {
        self.state().forbidden = on;
    }

    /// Down: the port refuses connections (open ones are closed), token
    /// endpoint included; up again on the same port.
    pub fn set_down(&self, down: bool) {
        let mut serving = self.serving.lock().expect("serving");
        match (down, serving.take()) {
            (true, Some(s)) => {
                let _ = s.stop.send(());
                let _ = s.thread.join();
            }
            (false, None) => {
                drop(serving);
                self.listen(self.addr);
            }
            (_, same) => *serving = same,
        }
    }

    /// Answers the next `count` message requests with `status` (401, 403,
    /// 410, 429, 500, 503...) and the service's error body, before any
    /// check; nothing they carry is stored.
    pub fn answer_next(&self, status: u16, count: usize) {
        self.script(status, count, None);
    }

    /// Like [`ServiceBus::answer_next`], with `Retry-After: <secs>`.
    pub fn answer_next_retry_after(&self, status: u16, count: usize, retry_after_secs: u64) {
        self.script(status, count, Some(retry_after_secs));
    }

    fn script(&self, status: u16, count: usize, retry_after_secs: Option<u64>) {
        StatusCode::from_u16(status).expect("a valid HTTP status");
        let mut bus = self.state();
        bus.scripted.extend(std::iter::repeat_n(
            Scripted {
                status,
                retry_after_secs,
            },
            count,
        ));
    }

    /// Answers the next `count` token requests with `status` (Entra ID
    /// unavailable).
    pub fn answer_next_token(&self, status: u16, count: usize) {
        StatusCode::from_u16(status).expect("a valid HTTP status");
        let mut bus = self.state();
        let scripted = Scripted {
            status,
            retry_after_secs: None,
        };
        bus.scripted_token.extend(std::iter::repeat_n(scripted, count));
    }

    /// Opens the token endpoint to application `client_id`/`client_secret`
    /// of directory `tenant`; its tokens live `expires_in_secs`.
    pub fn enable_entra(&self, tenant: &str, client_id: &str, client_secret: &str, expires_in_secs: u64) {
        self.state().entra = Some(EntraApp {
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            expires_in_secs,
        });
    }

    /// Moves this server's clock forward (tokens and SAS expiries are
    /// checked against it), so expiry is tested without waiting.
    pub fn advance_clock(&self, by: Duration) {
        self.state().clock_offset_secs += by.as_secs();
    }

    /// This server's clock, in Unix seconds.
    pub fn now_unix(&self) -> u64 {
        self.state().now()
    }

    /// Message requests so far (`POST .../messages`, whatever the answer;
    /// a batch is one).
    pub fn requests(&self) -> usize {
        self.state().message_requests
    }

    /// Messages accepted but not stored: their `MessageId` was held.
    pub fn duplicates(&self) -> usize {
        self.state().duplicates
    }

    /// Requests to the token endpoint so far.
    pub fn token_requests(&self) -> usize {
        self.state().token_requests
    }

    /// Every request so far, token endpoint included, with the answer.
    pub fn request_log(&self) -> Vec<ServiceBusRequest> {
        self.state().log.clone()
    }

    /// Every stored message, in arrival order (all entities).
    pub fn messages(&self) -> Vec<ServiceBusMessage> {
        self.state().messages.clone()
    }

    /// Number of stored messages, without copying them.
    pub fn message_count(&self) -> usize {
        self.state().messages.len()
    }

    /// Stored messages by `SessionId`, each session in arrival order
    /// (messages without one are left out).
    pub fn sessions(&self) -> BTreeMap<String, Vec<ServiceBusMessage>> {
        let mut sessions: BTreeMap<String, Vec<ServiceBusMessage>> = BTreeMap::new();
        for m in self.state().messages.iter() {
            if let Some(session) = &m.session_id {
                sessions.entry(session.clone()).or_default().push(m.clone());
            }
        }
        sessions
    }

    /// Waits until `n` messages are stored and returns them all; fails the
    /// test after `timeout` with what arrived and how requests were answered.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<ServiceBusMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.message_count();
            if count >= n {
                return self.messages();
            }
            if Instant::now() >= deadline {
                let statuses: Vec<u16> = self.state().log.iter().map(|r| r.status).collect();
                panic!(
                    "timed out after {timeout:?} waiting for {n} Service Bus messages: {count} stored, \
                     {} duplicates, answers so far {statuses:?}",
                    self.duplicates()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServiceBus {
    fn drop(&mut self) {
        self.set_down(true);
    }
}
