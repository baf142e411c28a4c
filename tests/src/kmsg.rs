//! The kernel's legacy TRACE lines, read from /dev/kmsg independently of iptrace's own reader:
//! the reference a test compares iptrace's replayed TRACE lines with, byte for byte.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// /dev/kmsg read from its end by a thread, continuously (other processes' kernel messages
/// can overwrite the ring before a late reader gets to ours): the `TRACE: ` lines that contain
/// one of the test's address prefixes.
pub struct TraceLog {
    stop: Arc<AtomicBool>,
    reader: JoinHandle<(Vec<String>, usize)>,
}

impl TraceLog {
    /// Starts reading at the log's end. `mine`: address prefixes as the kernel prints them
    /// (IPv4 dotted, IPv6 in %pI6's full form, e.g. `fd99:0213:`).
    pub fn open(mine: &'static [&'static str]) -> TraceLog {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .expect("/dev/kmsg");
        // SAFETY: lseek on our own descriptor.
        unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&f), 0, libc::SEEK_END) };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let reader = std::thread::spawn(move || {
            let (mut lines, mut lost) = (Vec::new(), 0);
            loop {
                let done = flag.load(Ordering::SeqCst);
                drain(&mut f, mine, &mut lines, &mut lost);
                if done {
                    return (lines, lost);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        TraceLog { stop, reader }
    }

    /// Stops the reader once the last lines are in: (our TRACE lines, lost-record events).
    pub fn finish(self) -> (Vec<String>, usize) {
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::SeqCst);
        self.reader.join().expect("kmsg reader")
    }
}

/// Reads every record available now: `TRACE: ` lines about `mine` into `out`, overwritten
/// (lost) records counted.
fn drain(f: &mut std::fs::File, mine: &[&str], out: &mut Vec<String>, lost: &mut usize) {
    use std::io::Read;
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                if let Some(line) = trace_line(&rec, mine) {
                    out.push(line.to_string());
                }
            }
            // EPIPE: records were overwritten before we read them.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => *lost += 1,
            Err(_) => return,
        }
    }
}

/// The message of a kmsg record (`prio,seq,usec,flags;text` + continuation lines) when it is
/// a TRACE line about one of `mine`.
fn trace_line<'a>(record: &'a str, mine: &[&str]) -> Option<&'a str> {
    let msg = record.split_once(';')?.1.lines().next()?;
    (msg.starts_with("TRACE: ") && mine.iter().any(|m| msg.contains(m))).then_some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_about_our_addresses() {
        let mine = ["10.213.", "fd99:0213:"];
        let rec = "4,1234,5678,-;TRACE: raw:PREROUTING:policy:2 IN=r0 OUT= SRC=10.213.1.2 DST=10.213.2.2\n SUBSYSTEM=net\n";
        assert_eq!(
            trace_line(rec, &mine),
            Some("TRACE: raw:PREROUTING:policy:2 IN=r0 OUT= SRC=10.213.1.2 DST=10.213.2.2")
        );
        let other =
            "4,1235,5679,-;TRACE: raw:PREROUTING:policy:2 IN=x SRC=10.214.0.1 DST=10.214.0.2";
        assert_eq!(trace_line(other, &mine), None);
        assert_eq!(
            trace_line("6,1236,5680,-;eth0: link up 10.213.", &mine),
            None
        );
    }
}
