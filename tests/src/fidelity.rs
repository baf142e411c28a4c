//! Pieces shared by the tests that compare a capture with the kernel's TRACE lines
//! (capture_fidelity, capture_bridge): commands in a namespace, raw-packet checksums, the
//! recording file, the machine-wide lock and the TRACE lines iptrace replays.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `argv` in netns `ns`; panics with the command on failure.
pub fn run(ns: &str, argv: &[&str]) {
    trace_user::netns::exec(ns, argv).unwrap_or_else(|e| panic!("{ns}: {argv:?}: {e}"));
}

/// The Internet checksum of `b` (raw ICMP/ICMPv6/TCP messages the tests build themselves).
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A file in the temp dir, removed when dropped (also when an assertion fails).
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One fidelity capture at a time on the machine: the scenarios reuse addresses and the
/// legacy reference is the kernel log, which all namespaces share — two test processes
/// (developers on one machine) would read each other's TRACE lines. Held until dropped.
pub fn machine_lock(test: &str) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("iptrace-capture-fidelity.lock"))
        .expect("lock file");
    // SAFETY: flock on our own descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("{test}: waiting for another fidelity capture on this machine");
        // SAFETY: as above (blocking this time).
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(r, 0, "flock: {}", std::io::Error::last_os_error());
    }
    f
}

/// The TRACE lines iptrace prints for the recording (what legacy TRACE would print), those
/// about the test's own addresses (`mine`).
pub fn replay_lines(bin: &Path, recording: &Path, mine: impl Fn(&str) -> bool) -> Vec<String> {
    let out = Command::new(bin)
        .args(["replay", "--format", "trace", "--from-trace-rule"])
        .arg(recording)
        .output()
        .expect("iptrace replay");
    assert!(
        out.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("TRACE: ") && mine(l))
        .map(str::to_string)
        .collect()
}
