//! Output formats of reconstructed packets: `trace` (the kernel's TRACE lines), `pretty`
//! (a colored tree), `json` (JSON lines, schema `iptrace.packet.v1`, docs/json-schema.md).

pub mod logline;
