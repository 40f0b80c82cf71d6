//! One client connection to the agent's HTTP servers (ingest or admin) from
//! raw bytes: the real routers behind their `Host`/`Origin` guard, served by
//! `http_server::serve_connection`. The checks are in `src/http_head.rs`,
//! shared with `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    store_outbox_fuzz::http_head::check_connection(data);
});
