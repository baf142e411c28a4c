//! Output formats of reconstructed packets: `trace` (the kernel's TRACE lines), `pretty`
//! (a colored tree), `json` (JSON lines, schema `iptrace.packet.v1`, docs/json-schema.md).

pub mod json;
mod json_line;
pub mod logline;
pub mod pretty;
pub mod trace;

use crate::reconstruct::ReconstructedPacket;
use std::cell::RefCell;
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

/// Writes one packet in `format` (`color` only affects pretty) with one `write_all`: the text
/// is built in a per-thread buffer reused between packets, so a busy collector neither
/// allocates per line nor makes a `Write` call per field.
pub fn write_packet(
    w: &mut dyn Write,
    rp: &ReconstructedPacket,
    format: Format,
    color: bool,
) -> io::Result<()> {
    thread_local! {
        static BUF: RefCell<String> = RefCell::new(String::with_capacity(8192));
    }
    BUF.with(|cell| {
        // A nested call (a writer that prints packets itself) gets its own buffer.
        let mut fresh = String::new();
        let mut guard = cell.try_borrow_mut().ok();
        let buf = guard.as_deref_mut().unwrap_or(&mut fresh);
        buf.clear();
        format_packet(buf, rp, format, color);
        let res = w.write_all(buf.as_bytes());
        // Keep the buffer for the next packet, unless one huge packet inflated it.
        if buf.capacity() > KEEP_BUFFER {
            *buf = String::with_capacity(8192);
        }
        res
    })
}

/// Largest buffer kept between packets.
const KEEP_BUFFER: usize = 1 << 20;

/// Appends one packet in `format` to `out`.
pub fn format_packet(out: &mut String, rp: &ReconstructedPacket, format: Format, color: bool) {
    match format {
        Format::Trace => trace::push_trace(out, rp, trace::TraceFrom::Start),
        Format::Pretty => pretty::push_pretty(out, rp, pretty::Style { color }),
        Format::Json => json::push_json_str(out, rp),
    }
}
