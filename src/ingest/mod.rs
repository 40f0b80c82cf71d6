//! The ways in. Each turns bytes from producers into validated events and
//! hands them to the outbox writer; none of them touches storage itself.
//!
//! - [`socket`]: NDJSON over a Unix socket.

pub mod socket;
