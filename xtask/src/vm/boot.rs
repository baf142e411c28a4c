//! One bounded QEMU boot: TCG (KVM crashes stock kernels in this nested VM), no network device
//! to the outside, serial console on stdout, kernel powers off when /init is done. The whole
//! console goes to a log file; `VMTEST` lines are echoed live.
//!
//! Two limits: the guest must reach its tests (`VMTEST begin`) within `begin_timeout` — a boot
//! that does not is a *boot failure* (the caller may boot again) — and the whole run must end
//! within `timeout` (a guest that started its tests and then hangs is a test failure).

use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub log: &'a Path,
    pub timeout: Duration,
    /// Until `VMTEST begin` (kernel boot, module loads).
    pub begin_timeout: Duration,
}

/// The console line the guest's /init prints right before the tests.
pub const BEGIN: &str = "VMTEST begin";

/// What the console showed.
#[derive(Debug)]
pub struct Outcome {
    /// Every console line.
    pub lines: Vec<String>,
    /// The boot hit a timeout and QEMU was killed.
    pub timed_out: bool,
    pub secs: f64,
    /// QEMU's exit status (None when killed).
    pub status: Option<std::process::ExitStatus>,
}

impl Outcome {
    /// The guest never reached its tests (QEMU or kernel failed, or boot took too long): such a
    /// run says nothing about the code under test and may be retried once.
    pub fn boot_failure(&self) -> Option<String> {
        if self.lines.iter().any(|l| l.contains(BEGIN)) {
            return None;
        }
        let last: Vec<&str> = self
            .lines
            .iter()
            .rev()
            .filter(|l| !l.trim().is_empty())
            .take(3)
            .map(String::as_str)
            .collect();
        let how = if self.timed_out {
            format!("no `{BEGIN}` after {:.0}s", self.secs)
        } else {
            format!(
                "QEMU exited ({}) after {:.0}s before `{BEGIN}`",
                self.status.map_or("killed".to_string(), |s| s.to_string()),
                self.secs
            )
        };
        Some(format!("{how}; last console lines: {last:?}"))
    }
}

impl Boot<'_> {
    fn args(&self) -> Vec<String> {
        let mut v: Vec<String> =
            "-accel tcg -cpu max -machine q35 -nographic -no-reboot -nic none -m 2G -smp 2"
                .split(' ')
                .map(String::from)
                .collect();
        v.extend([
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
        ]);
        v.extend([
            "-append".into(),
            "console=ttyS0 quiet panic=-1 loglevel=4".into(),
        ]);
        v
    }

    pub fn command_line(&self) -> String {
        let quoted: Vec<String> = self
            .args()
            .into_iter()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect();
        format!("qemu-system-x86_64 {}", quoted.join(" "))
    }

    pub fn run(&self) -> Result<Outcome> {
        let start = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().context("qemu stdout")?;
        let stderr = child.stderr.take().context("qemu stderr")?;
        let tx2 = tx.clone();
        let readers = [
            std::thread::spawn(move || forward(stdout, tx)),
            std::thread::spawn(move || forward(stderr, tx2)),
        ];
        let mut log = std::fs::File::create(self.log)
            .with_context(|| format!("create {}", self.log.display()))?;
        let mut lines = Vec::new();
        let mut timed_out = false;
        let mut begun = false;
        loop {
            let limit = if begun {
                self.timeout
            } else {
                self.begin_timeout.min(self.timeout)
            };
            let left = limit.saturating_sub(start.elapsed());
            match rx.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok(line) => {
                    writeln!(log, "{line}")?;
                    if line.contains("VMTEST ") {
                        eprintln!("  guest [{:>4.0}s]: {line}", start.elapsed().as_secs_f64());
                    }
                    begun |= line.contains(BEGIN);
                    lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if start.elapsed() >= limit => {
                    timed_out = true;
                    // Our own child, by its handle.
                    let _ = child.kill();
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        let status = child.wait().ok().filter(|_| !timed_out);
        for r in readers {
            let _ = r.join();
        }
        Ok(Outcome {
            lines,
            timed_out,
            secs: start.elapsed().as_secs_f64(),
            status,
        })
    }
}

fn forward(r: impl std::io::Read, tx: mpsc::Sender<String>) {
    for line in BufReader::new(r).split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line)
            .trim_end_matches('\r')
            .to_string();
        if tx.send(line).is_err() {
            break;
        }
    }
}
