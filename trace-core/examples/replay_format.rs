//! Replays a recording and formats every packet, for profiling the collector's pure part
//! without root or the `iptrace` binary:
//! `cargo run --release -p trace-core --example replay_format -- FILE [json|trace|pretty|none] [ROUNDS]`
//! (`none`: replay and reconstruct only). The recording is decoded before the clock starts,
//! so the time is the collector's: assembly, reconstruction, formatting (as `capture` runs
//! its events through the same Replayer). With ROUNDS > 1 the replay runs that many times
//! (a fresh Replayer each, output of the first round only) and the fastest round is reported
//! too: on a shared machine the minimum is the most stable figure. Output goes to stdout,
//! timings to stderr. It runs on the `iptrace` binary's allocator (mimalloc), as the collector.

use std::io::Write;
use std::time::Instant;
use trace_core::output::{write_packet, Format};
use trace_core::record::replay::Replayer;
use trace_core::record::RecordingReader;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let file = args
        .next()
        .expect("usage: replay_format FILE [json|trace|pretty|none] [ROUNDS]");
    let format: Option<Format> = match args.next().as_deref() {
        None | Some("none") => None,
        Some(f) => Some(f.parse().expect("format")),
    };
    let rounds: usize = args.next().map_or(1, |r| r.parse().expect("ROUNDS"));
    let bytes = std::fs::read(&file).expect("reading the recording");
    let records: Vec<_> = RecordingReader::new(&bytes[..])
        .expect("recording header")
        .map(|r| r.expect("record").1)
        .collect();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut sink = std::io::sink();
    let mut best = f64::INFINITY;
    let mut total = 0.0;
    let mut n = 0u64;
    for round in 0..rounds.max(1) {
        let w: &mut dyn Write = if round == 0 { &mut out } else { &mut sink };
        let recs = records.clone();
        let start = Instant::now();
        n = replay(recs, format, w);
        let secs = start.elapsed().as_secs_f64();
        best = best.min(secs);
        total += secs;
    }
    out.flush().expect("flushing stdout");
    eprintln!(
        "{n} packets in {best:.3} s ({:.0} packets/s), fastest of {rounds} rounds (mean {:.3} s)",
        n as f64 / best,
        total / rounds.max(1) as f64
    );
}

/// One replay of `records`, every packet formatted to `w`; returns the packet count.
fn replay(
    records: Vec<trace_core::record::Record>,
    format: Option<Format>,
    w: &mut dyn Write,
) -> u64 {
    let mut r = Replayer::new(None);
    let mut n = 0u64;
    let mut emit = |p: &trace_core::reconstruct::ReconstructedPacket| {
        n += 1;
        if let Some(f) = format {
            write_packet(w, p, f, false).expect("writing stdout");
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
    n
}
