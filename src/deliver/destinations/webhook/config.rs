//! The webhook as the config file sees it: `http://` and `https://` URLs,
//! always signed, no keys of its own beyond the shared ones (`headers`,
//! `batch`, `compression` and `format` are every subscription's, and the
//! buses refuse those they cannot honour).

use crate::config::{ConfigError, DestinationKind, KindConfig, KindParsed, OwnKeys};

/// The webhook kind.
pub static CONFIG: DestinationKind = DestinationKind {
    name: "webhook",
    schemes: &["https", "http"],
    keys: &[],
    refuses: &[],
    secret_required: true,
    batch_limits: None,
    parse,
};

/// What a webhook subscription's config holds of its kind (for code that
/// builds a [`crate::config::SubscriptionConfig`] itself).
pub fn kind_config() -> KindConfig {
    KindConfig::plain(CONFIG.name)
}

/// `url`: where the POSTs go.
fn parse(keys: &OwnKeys<'_>) -> Result<KindParsed, ConfigError> {
    Ok(KindParsed {
        url: keys.parsed_url()?,
        settings: kind_config(),
    })
}
