//! `schema`: prints the published descriptions, the same bytes as the files
//! in `docs/schema/` (built in with `include_str!`, so they cannot differ):
//! the JSON Schema of the producer's event, and the OpenAPI document of the
//! ingest and admin HTTP APIs (also served at `GET /v1/openapi.json`).

use clap::{Args, ValueEnum};

use super::CliResult;

/// The JSON Schema (draft 2020-12) of the event a producer sends.
pub const EVENT_SCHEMA: &str = include_str!("../../docs/schema/event.schema.json");

/// Which description.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Which {
    /// The JSON Schema of the producer's event (docs/schema/event.schema.json).
    Event,
    /// The OpenAPI 3.1 document of the ingest and admin HTTP APIs
    /// (docs/schema/openapi.json).
    Openapi,
}

/// Arguments of `schema`.
#[derive(Args, Debug)]
pub struct SchemaArgs {
    /// What to print.
    pub which: Which,
}

/// Prints the description, as committed.
pub fn run(args: SchemaArgs) -> CliResult {
    let text = match args.which {
        Which::Event => EVENT_SCHEMA,
        Which::Openapi => crate::admin::OPENAPI,
    };
    print!("{text}");
    Ok(())
}
