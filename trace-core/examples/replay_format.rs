//! Replays a recording and formats every packet, for profiling the collector's pure part
//! without root or the `iptrace` binary:
//! `cargo run --release -p trace-core --example replay_format -- FILE [json|trace|pretty|none]`
//! (`none`: replay and reconstruct only). The recording is decoded before the clock starts,
//! so the time is the collector's: assembly, reconstruction, formatting (as `capture` runs
//! its events through the same Replayer). Output goes to stdout, timings to stderr.

use std::io::Write;
use std::time::Instant;
use trace_core::output::{write_packet, Format};
use trace_core::record::replay::Replayer;
use trace_core::record::RecordingReader;

fn main() {
    let mut args = std::env::args().skip(1);
    let file = args
        .next()
        .expect("usage: replay_format FILE [json|trace|pretty|none]");
    let format: Option<Format> = match args.next().as_deref() {
        None | Some("none") => None,
        Some(f) => Some(f.parse().expect("format")),
    };
    let bytes = std::fs::read(&file).expect("reading the recording");
    let records: Vec<_> = RecordingReader::new(&bytes[..])
        .expect("recording header")
        .map(|r| r.expect("record").1)
        .collect();
    let start = Instant::now();
    let mut r = Replayer::new(None);
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut n = 0u64;
    let mut emit = |p: &trace_core::reconstruct::ReconstructedPacket| {
        n += 1;
        if let Some(f) = format {
            write_packet(&mut out, p, f, false).expect("writing stdout");
        }
    };
    for rec in records {
        for p in r.push(rec) {
            emit(&p);
        }
    }
    for p in r.finish() {
        emit(&p);
    }
    out.flush().expect("flushing stdout");
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{n} packets in {secs:.3} s ({:.0} packets/s)",
        n as f64 / secs
    );
}
