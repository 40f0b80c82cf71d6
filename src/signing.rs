//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`.
//!
//! Used by delivery to sign and by `receive` to verify, so both sides share one
//! implementation; the tests also check it against the official Python library.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Unix seconds now: a signature's `webhook-timestamp` (0 if the clock is
/// before 1970, which receivers then refuse as skew).
pub fn timestamp_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Decodes a `whsec_<base64>` secret (the prefix is optional) into key bytes.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.trim().strip_prefix("whsec_").unwrap_or(secret.trim());
    match STANDARD.decode(b64) {
        Ok(key) if !key.is_empty() => Ok(key),
        Ok(_) => Err("secret is empty".to_string()),
        Err(_) => Err("secret is not whsec_ followed by base64".to_string()),
    }
}

/// The HMAC over `{msg_id}.{timestamp}.{body}`, ready to finalise or verify.
fn mac(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// One `v1,<sig>` entry.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "v1,{}",
        STANDARD.encode(mac(key, msg_id, timestamp, body).finalize().into_bytes())
    )
}

/// The `webhook-signature` header value: one signature per key, space separated.
pub fn signature_header(keys: &[Vec<u8>], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| sign(k, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether any `v1,` signature in `header` matches `key` (constant-time compare).
pub fn verify(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let mac = mac(key, msg_id, timestamp, body);
    header.split_whitespace().any(|entry| {
        entry
            .strip_prefix("v1,")
            .and_then(|b64| STANDARD.decode(b64).ok())
            .is_some_and(|sig| mac.clone().verify_slice(&sig).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn matches_the_specification_example() {
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
            &format!("v1,bogus {sig}")
        ));
        assert!(!verify(&key, "msg_other", 1614265330, body, &sig));
    }

    #[test]
    fn rejects_bad_secrets() {
        assert!(decode_secret("whsec_!!!").is_err());
        assert!(decode_secret("whsec_").is_err());
    }
}
