//! Output formats of reconstructed packets: `trace` (the kernel's TRACE lines), `pretty`
//! (a colored tree), `json` (JSON lines, schema `iptrace.packet.v1`, docs/json-schema.md).

pub mod logline;
pub mod json;
pub mod pretty;
pub mod trace;

use crate::reconstruct::ReconstructedPacket;
use std::io::{self, Write};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Trace,
    Pretty,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "trace" => Ok(Format::Trace),
            "pretty" => Ok(Format::Pretty),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown format `{other}` (trace, pretty, json)")),
        }
    }
}

/// Writes one packet in `format` (`color` only affects pretty).
pub fn write_packet(w: &mut dyn Write, rp: &ReconstructedPacket, format: Format, color: bool) -> io::Result<()> {
    match format {
        Format::Trace => trace::write_trace(w, rp, trace::TraceFrom::Start),
        Format::Pretty => pretty::write_pretty(w, rp, pretty::Style { color }),
        Format::Json => json::write_json(w, rp),
    }
}
