//! `cargo xtask demo`: set up, build release, show `iptrace doctor`, create the lab, capture
//! the docker port-mapping scenario (remote + local connections) and tear everything down.
//! [`capture_scenario`] is the one function to upgrade as capture grows.

use crate::steps;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub fn demo() -> Result<()> {
    steps::setup()?;
    steps::run(&[
        "cargo",
        "build",
        "--release",
        "-p",
        "trace-user",
        "--bin",
        "iptrace",
    ])?;
    let bin = steps::root().join("target/release/iptrace");
    if !steps::is_root() {
        bail!("the demo needs root (network namespaces, eBPF)");
    }
    banner("iptrace doctor");
    // Exit 1 = no capture backend: still show the lab.
    let _ = iptrace(&bin, &["doctor"]);
    banner("iptrace lab up");
    let lab = LabGuard::up(&bin)?;
    steps::check_interrupted()?;
    match capture_scenario(&bin, &lab)? {
        Captured::Yes => eprintln!("xtask: demo done: the lab goes down now"),
        Captured::NotAvailable(why) => {
            eprintln!("xtask: capture is not available in this build ({why}); showing the lab's own checks instead");
            iptrace(&bin, &["lab", "run", "--name", &lab.name])?;
            iptrace(&bin, &["lab", "status", "--name", &lab.name])?;
        }
    }
    Ok(())
}

enum Captured {
    Yes,
    NotAvailable(String),
}

/// Captures the lab's node namespace while the remote and local test connections run, and
/// prints the packet paths (capture's own output on stdout).
fn capture_scenario(bin: &Path, lab: &LabGuard) -> Result<Captured> {
    banner("iptrace capture (remote: peer -> 192.168.64.4:10000 -> DNAT -> ctr:80, then local)");
    let mut capture = steps::command(&[bin.to_str().unwrap(), "capture"])
        .args([
            "--backend",
            "nfhook",
            "--netns",
            &lab.node,
            "--format",
            "pretty",
            "--duration",
            "60",
        ])
        .args(["tcp and (port 10000 or port 80)"])
        .stderr(Stdio::piped())
        .spawn()
        .context("starting iptrace capture")?;
    if let Err(why) = wait_attached(&mut capture) {
        let _ = capture.kill();
        let _ = capture.wait();
        return Ok(Captured::NotAvailable(why));
    }
    let traffic = iptrace(bin, &["lab", "run", "remote", "local", "--name", &lab.name]);
    // Let the last events drain, then stop capture the way a user would (SIGINT → summary).
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(capture.id() as libc::pid_t, libc::SIGINT) };
    let status = capture.wait()?;
    traffic?;
    if !status.success() {
        bail!("iptrace capture exited with {status}");
    }
    Ok(Captured::Yes)
}

/// Forwards capture's stderr and returns once its probes are attached (Err: why not).
fn wait_attached(capture: &mut Child) -> std::result::Result<(), String> {
    let stderr = capture.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("probes attached") => return Ok(()),
            Ok(line) => last = line,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("capture exited: {last}"))
            }
            Err(_) => {}
        }
        if steps::check_interrupted().is_err() {
            return Err("interrupted".into());
        }
    }
    Err("capture did not attach within 60 s".into())
}

fn iptrace(bin: &Path, args: &[&str]) -> Result<()> {
    let mut argv = vec![bin.to_str().unwrap()];
    argv.extend_from_slice(args);
    steps::run(&argv)
}

fn banner(title: &str) {
    eprintln!("\n==== {title} ====");
}

/// The demo lab (made with `iptrace lab up`), torn down on drop — also on errors and Ctrl-C.
struct LabGuard {
    bin: PathBuf,
    name: String,
    node: String,
}

impl LabGuard {
    fn up(bin: &Path) -> Result<Self> {
        let out = steps::command(&[
            bin.to_str().unwrap(),
            "lab",
            "up",
            "--iptables",
            "legacy",
            "--prefix",
            "iptrace-demo",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("iptrace lab up")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        if !out.status.success() {
            bail!("iptrace lab up failed ({})", out.status);
        }
        // First line: "lab NAME (iptables-legacy, ...)".
        let name = text
            .split_whitespace()
            .nth(1)
            .context("lab name in `lab up` output")?
            .to_string();
        Ok(LabGuard {
            bin: bin.into(),
            node: format!("{name}-node"),
            name,
        })
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = iptrace(&self.bin, &["lab", "down", "--name", &self.name]);
    }
}
