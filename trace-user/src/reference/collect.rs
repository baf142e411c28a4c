//! Collecting the kernel's trace output in the background: `/dev/kmsg` records (legacy) or the
//! stdout of `nft -a monitor trace` run inside the traced netns (nft).
//!
//! Why `nft monitor trace` and not `xtables-monitor --trace`: xtables-monitor keeps the
//! default netlink receive buffer (about 50 trace messages) and exits on ENOBUFS when it is
//! not scheduled for a few ms, and 1.8.9 exits on some ip6 rules it cannot print. nft sets a
//! 16 MiB receive buffer (SO_RCVBUFFORCE as root) and, when the kernel still drops messages,
//! prints `# ERROR: We lost some netlink events!` in its output stream and goes on: the loss
//! is visible at the place it happened (see `reference::nftmon`).

use super::{in_netns, io_err, ReferenceError, Result, TraceTarget};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use trace_core::compare::reference::kernlog::LOST_RECORDS;
use trace_core::compare::reference::nftmon::LOST_EVENTS;

/// Lines read by a background thread (kmsg or the monitor's stdout).
pub(super) struct Collector {
    lines: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    child: Option<Child>,
}

impl Collector {
    /// /dev/kmsg from its current end: only records logged from now on.
    pub(super) fn kmsg() -> Result<Self> {
        let p = Path::new("/dev/kmsg");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(p)
            .map_err(io_err("open", p))?;
        // SEEK_END on /dev/kmsg moves to the next record to be written.
        std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)).map_err(io_err("seek", p))?;
        let c = Collector::empty();
        let (lines, lost, stop) = (c.lines.clone(), c.lost.clone(), c.stop.clone());
        let thread = std::thread::spawn(move || read_kmsg(f, &lines, &lost, &stop));
        Ok(Collector {
            thread: Some(thread),
            ..c
        })
    }

    /// `nft -a monitor trace` inside the netns, line buffered (stdbuf) so nothing stays in
    /// its stdio buffer when it is killed. `-a` prints rule handles, which map to positions
    /// without comparing rule texts.
    pub(super) fn nft_monitor(target: &TraceTarget) -> Result<Self> {
        let mut cmd = in_netns(&target.netns, "stdbuf");
        cmd.args(["-oL", "nft", "-a", "monitor", "trace"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!("{cmd:?}");
        let mut child = cmd.spawn().map_err(|source| ReferenceError::Spawn {
            cmd: shown.clone(),
            source,
        })?;
        // The monitor subscribes to the trace group right after start; give it that moment.
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(Some(_)) = child.try_wait() {
            return Err(ReferenceError::MonitorDied {
                cmd: shown,
                stderr: stderr_of(&mut child),
            });
        }
        let out = child.stdout.take().expect("stdout is piped");
        let c = Collector::empty();
        let lines = c.lines.clone();
        let thread = std::thread::spawn(move || {
            for l in BufReader::new(out)
                .lines()
                .map_while(std::result::Result::ok)
            {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        });
        Ok(Collector {
            thread: Some(thread),
            child: Some(child),
            ..c
        })
    }

    fn empty() -> Self {
        Collector {
            lines: Arc::default(),
            lost: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            child: None,
        }
    }

    /// Stops the reader (kills the monitor we started) and returns (text, lost, warnings).
    pub(super) fn finish(mut self) -> (String, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut warnings = Vec::new();
        if let Some(mut child) = self.child.take() {
            // Still running is the normal case; an early exit means lines may be missing.
            if let Ok(Some(status)) = child.try_wait() {
                warnings.push(format!(
                    "the trace monitor exited early ({status}): {}",
                    stderr_of(&mut child)
                ));
            } else {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let lines = std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()));
        // nft's own comments on its stream: a smaller receive buffer than it asked for, a
        // receive error it stopped on. (Its loss lines are the parser's: they mark packets.)
        warnings.extend(
            lines
                .iter()
                .filter(|l| l.starts_with("# ") && l.trim() != LOST_EVENTS)
                .map(|l| format!("nft monitor: {}", l.trim_start_matches("# "))),
        );
        let lost = *self.lost.lock().unwrap_or_else(|e| e.into_inner());
        (
            lines.join("\n") + if lines.is_empty() { "" } else { "\n" },
            lost,
            warnings,
        )
    }
}

/// What a monitor we started wrote on stderr (read after it exited or was killed).
fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    stderr.trim().to_string()
}

/// Reads kmsg records until `stop`. Each read returns one record `prio,seq,usec,flags;text`
/// followed by optional ` KEY=value` continuation lines (dropped). EPIPE = records were
/// overwritten before we read them (counted as lost; reading continues).
fn read_kmsg(
    mut f: std::fs::File,
    lines: &Mutex<Vec<String>>,
    lost: &Mutex<u64>,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut last_seq: Option<u64> = None;
    loop {
        match f.read(&mut buf) {
            Ok(0) => std::thread::sleep(Duration::from_millis(10)),
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                let first = rec.lines().next().unwrap_or("").to_string();
                let seq = first.split(',').nth(1).and_then(|s| s.parse::<u64>().ok());
                let mut out = lines.lock().unwrap_or_else(|e| e.into_inner());
                if let (Some(prev), Some(s)) = (last_seq, seq) {
                    if s > prev + 1 {
                        let n = s - prev - 1;
                        *lost.lock().unwrap_or_else(|e| e.into_inner()) += n;
                        // Where they were lost: packets traced across the gap are incomplete.
                        out.push(format!("{LOST_RECORDS}{n}"));
                    }
                }
                last_seq = seq.or(last_seq);
                out.push(first);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // The sequence gap of the next record counts what was lost; before any record
            // there is no gap to measure, so count at least one.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                if last_seq.is_none() {
                    *lost.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    let mut out = lines.lock().unwrap_or_else(|e| e.into_inner());
                    out.push(format!("{LOST_RECORDS}1"));
                }
            }
            Err(_) => return,
        }
    }
}
