//! The ways in. Each turns bytes from producers into validated events and
//! hands them to the outbox writer; none of them touches storage itself.
//!
//! - [`socket`]: NDJSON over a Unix socket.
//! - [`http`]: `POST /v1/events` on loopback.
//! - [`spool`]: files renamed into a watched directory.
//! - [`poslog`]: ARTS POSLog XML to events (used by the spool).

pub mod http;
pub mod poslog;
pub mod socket;
pub mod spool;
