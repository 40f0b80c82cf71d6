//! Shared Access Signature tokens, as Microsoft's "Generate SAS token"
//! page builds them: `SharedAccessSignature sr=<form-encoded resource
//! URI>&sig=<form-encoded base64 HMAC-SHA256 of "<encoded sr>\n<expiry>",
//! keyed with the key's UTF-8 bytes>&se=<unix expiry>&skn=<key name>`.
//! The key is read once at start from `sas_key_file`; a token lives
//! [`LIFETIME`] and the subscription's [`crate::deliver::access_token`]
//! signs a new one before it ends.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::header::HeaderValue;
use sha2::Sha256;

use crate::deliver::access_token::Fetched;

/// How long a token is valid. An hour, as Microsoft's samples: a key
/// revoked in Azure stops working within the hour at most, and the agent
/// signs a new token well before the end (signing is local and cheap).
pub const LIFETIME: Duration = Duration::from_secs(3600);

/// A shared access policy's name and key.
pub struct SasKey {
    /// `skn`: the policy's name.
    pub key_name: String,
    /// The key as Azure shows it (a base64 text, used as its UTF-8 bytes,
    /// not decoded: what the service does).
    key: String,
}

impl std::fmt::Debug for SasKey {
    /// The name only: the key never goes into a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SasKey")
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl SasKey {
    /// The key of policy `key_name`, read from `path` (trimmed: a key file
    /// written with `echo` ends in a newline). The error names the path,
    /// never the content.
    pub fn read(key_name: &str, path: &Path) -> Result<SasKey, String> {
        let key = read_secret_file(path, "sas_key_file")?;
        Ok(SasKey {
            key_name: key_name.to_string(),
            key,
        })
    }

    /// The key itself, only to scrub an echo of it from an error text.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A token for `resource_uri`, valid until `expiry` (Unix seconds).
    pub fn token(&self, resource_uri: &str, expiry: u64) -> String {
        let sr = form_encode(resource_uri);
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(self.key.as_bytes()) {
            Ok(mac) => mac,
            Err(_) => return String::new(),
        };
        mac.update(format!("{sr}\n{expiry}").as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        format!(
            "SharedAccessSignature sr={sr}&sig={}&se={expiry}&skn={}",
            form_encode(&signature),
            self.key_name
        )
    }

    /// A token for `resource_uri` valid [`LIFETIME`] from now, as the
    /// `Authorization` header [`crate::deliver::access_token::AccessToken`]
    /// keeps.
    pub fn fetch(&self, resource_uri: &str) -> Result<Fetched, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the system clock is before 1970: fix the store PC's time (NTP)".to_string())?;
        let header = HeaderValue::from_str(&self.token(resource_uri, now.as_secs() + LIFETIME.as_secs()))
            .map_err(|_| format!("sas_key_name {:?}: not valid in a header", self.key_name))?;
        Ok(Fetched {
            header,
            valid_for: LIFETIME,
        })
    }
}

/// Form encoding (`application/x-www-form-urlencoded`), as .NET's
/// `WebUtility.UrlEncode` in Microsoft's samples: `:` `/` `+` `=` encoded.
pub fn form_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A secret file's text, trimmed; `key` names the config key in errors.
/// An empty file is an error too (a key not yet copied there).
pub fn read_secret_file(path: &Path, key: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{key} {}: cannot read it: {e} (it must be readable by the agent's user)",
            path.display()
        )
    })?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("{key} {}: the file is empty", path.display()));
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_signed_over_the_encoded_uri_and_expiry_as_microsofts_samples_do() {
        let key = SasKey {
            key_name: "RootManageSharedAccessKey".into(),
            key: "rd1sFC/Q1mySrpa8ygiJpyhd3wO5Q7yN5V0FycR0diU=".into(),
        };
        let token = key.token("https://retail.servicebus.windows.net/pos-events", 1_700_000_000);
        // The same inputs through Python's hmac/urllib, as the docs' shell
        // recipe does it (docs/SERVICEBUS.md).
        assert_eq!(
            token,
            "SharedAccessSignature sr=https%3A%2F%2Fretail.servicebus.windows.net%2Fpos-events\
             &sig=lYJf2Nz4tTjvXJjgeS7%2BWbs1aSFjRtf5ZMb%2BFFpq%2BPM%3D&se=1700000000&skn=RootManageSharedAccessKey"
        );
        assert!(!format!("{key:?}").contains("rd1sFC"), "Debug hides the key");
    }

    #[test]
    fn a_key_file_is_trimmed_and_a_missing_or_empty_one_names_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("azure.key");
        let missing = SasKey::read("s", &path).expect_err("missing");
        assert!(missing.contains("sas_key_file") && missing.contains("azure.key") && missing.contains("cannot read"));
        std::fs::write(&path, "\n").expect("write");
        assert!(SasKey::read("s", &path).expect_err("empty").contains("empty"));
        std::fs::write(&path, "k3y=\n").expect("write");
        assert_eq!(SasKey::read("s", &path).expect("read").key(), "k3y=");
    }
}
