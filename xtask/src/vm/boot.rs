//! One bounded QEMU boot: TCG (KVM crashes stock kernels in this nested VM), no network device
//! to the outside, serial console on stdout, kernel powers off when /init is done. The whole
//! console goes to a log file; `VMTEST` lines are echoed live.

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
}

/// What the console showed.
#[derive(Debug)]
pub struct Outcome {
    /// Every console line.
    pub lines: Vec<String>,
    /// The boot hit the timeout and QEMU was killed.
    pub timed_out: bool,
    pub secs: f64,
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
        loop {
            let left = self.timeout.saturating_sub(start.elapsed());
            match rx.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok(line) => {
                    writeln!(log, "{line}")?;
                    if line.contains("VMTEST ") {
                        eprintln!("  guest: {line}");
                    }
                    lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if start.elapsed() >= self.timeout => {
                    timed_out = true;
                    // Our own child, by its handle.
                    let _ = child.kill();
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        let _ = child.wait();
        for r in readers {
            let _ = r.join();
        }
        Ok(Outcome {
            lines,
            timed_out,
            secs: start.elapsed().as_secs_f64(),
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
