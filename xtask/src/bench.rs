//! `cargo xtask bench-capture [--rounds N] [--secs S] [--configs NAME,...]` (root): overhead of the nfhook capture
//! through the lab's DNAT path. Not a test: it prints measurements.
//!
//! Per round, for each configuration in turn (interleaved, so drift hits all alike):
//! no tracer, a filter matching nothing, everything, and everything with `--sample 1/1000`:
//! (a) TCP throughput: iperf3 from peer to 192.168.64.4:10001 (DNAT to the container);
//! (b) sequential short connections/s from peer to 192.168.64.4:10002, client and server
//!     pinned to CPU 0 (unpinned runs on 2 vCPUs are bimodal).
//! Prints per-round values and median ratios against no tracer, plus the tracer's lost count.
//! The tracer (`iptrace capture`, TRACE lines to /dev/null) is pinned to CPU 1.
//!
//! Hidden helpers run inside the namespaces: `bench-client ADDR SECS` (connect, send a line,
//! read the reply, close; prints connections/s) and `bench-serve PORT`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const IPERF_PORT: u16 = 5201;
const CONN_PORT: u16 = 5202;
const BR: &str = "br-00ea7870520a";

pub fn main(args: Vec<String>) -> i32 {
    let r = match args.first().map(String::as_str) {
        Some("bench-client") => client(&args[1..]),
        Some("bench-serve") => serve(&args[1..]),
        _ => bench(&args[1..]),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("xtask bench-capture: error: {e:#}");
            1
        }
    }
}

struct Config {
    name: &'static str,
    /// None: no tracer.
    args: Option<Vec<&'static str>>,
}

fn configs() -> Vec<Config> {
    vec![
        Config {
            name: "none",
            args: None,
        },
        Config {
            name: "match-nothing",
            args: Some(vec!["host", "10.255.255.254"]),
        },
        // The tracer prints TRACE lines (--format trace) to /dev/null.
        Config {
            name: "match-everything",
            args: Some(vec![]),
        },
        Config {
            name: "sample-1/1000",
            args: Some(vec!["--sample", "1/1000"]),
        },
        // Diagnostics (--configs): the packet-level view costs the collector less than the
        // rule-level reconstruction.
        Config {
            name: "everything-packets",
            args: Some(vec!["--packets"]),
        },
        Config {
            name: "everything-json",
            args: Some(vec!["--format", "json"]),
        },
        // The probes alone: the collector drains without decoding.
        Config {
            name: "everything-discard",
            args: Some(vec!["--discard"]),
        },
    ]
}

fn bench(args: &[String]) -> Result<()> {
    let mut rounds = 3;
    let mut secs = 3u64;
    let mut only: Option<Vec<String>> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => rounds = it.next().context("--rounds N")?.parse()?,
            "--secs" => secs = it.next().context("--secs S")?.parse()?,
            "--configs" => {
                only = Some(
                    it.next()
                        .context("--configs NAME,NAME")?
                        .split(',')
                        .map(String::from)
                        .collect::<Vec<_>>(),
                )
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (lab namespaces, eBPF)");
    }
    let root = workspace_root();
    let st = Command::new("cargo")
        .args(["build", "--release", "-p", "trace-user", "-p", "xtask"])
        .current_dir(&root)
        .status()?;
    if !st.success() {
        bail!("release build failed");
    }
    let iptrace = root.join("target/release/iptrace");
    let xtask = root.join("target/release/xtask");
    let lab = LabNs::up(&iptrace)?;
    let mut cfgs: Vec<Config> = configs();
    let defaults = ["none", "match-nothing", "match-everything", "sample-1/1000"];
    cfgs.retain(|c| match &only {
        Some(names) => c.name == "none" || names.iter().any(|n| n == c.name),
        None => defaults.contains(&c.name),
    });
    let result = run_rounds(&lab, &iptrace, &xtask, &cfgs, rounds, secs);
    lab.down(&iptrace);
    result
}

fn run_rounds(
    lab: &LabNs,
    iptrace: &Path,
    xtask: &Path,
    cfgs: &[Config],
    rounds: usize,
    secs: u64,
) -> Result<()> {
    lab.prepare(xtask)?;
    let mut tput: Vec<Vec<f64>> = vec![Vec::new(); cfgs.len()];
    let mut conns: Vec<Vec<f64>> = vec![Vec::new(); cfgs.len()];
    let mut lost: Vec<u64> = vec![0; cfgs.len()];
    for round in 0..rounds {
        for (i, c) in cfgs.iter().enumerate() {
            let tracer = match &c.args {
                Some(a) => Some(Tracer::start(iptrace, &lab.node, a)?),
                None => None,
            };
            let t = lab.iperf(secs)?;
            let n = lab.conn_rate(xtask, secs)?;
            if let Some(tr) = tracer {
                lost[i] += tr.stop()?;
            }
            eprintln!(
                "round {round} {:<17} throughput {:>8.1} Mbit/s  connections {:>7.1}/s",
                c.name,
                t / 1e6,
                n
            );
            tput[i].push(t);
            conns[i].push(n);
        }
    }
    println!("nfhook capture overhead (median of {rounds} interleaved rounds, {secs}s each; ratio to no tracer)");
    println!(
        "{:<17} {:>12} {:>10} {:>12} {:>10} {:>6}",
        "config", "Mbit/s", "ratio", "conn/s", "ratio", "lost"
    );
    let (t0, c0) = (median(&tput[0]), median(&conns[0]));
    for (i, c) in cfgs.iter().enumerate() {
        let (t, n) = (median(&tput[i]), median(&conns[i]));
        println!(
            "{:<17} {:>12.1} {:>9.0}% {:>12.1} {:>9.0}% {:>6}",
            c.name,
            t / 1e6,
            100.0 * t / t0,
            n,
            100.0 * n / c0,
            if c.args.is_some() {
                lost[i].to_string()
            } else {
                "-".into()
            }
        );
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The lab's namespaces (built by `iptrace lab up` with a unique prefix).
struct LabNs {
    name: String,
    peer: String,
    node: String,
    ctr: String,
    children: std::cell::RefCell<Vec<Child>>,
}

impl LabNs {
    fn up(iptrace: &Path) -> Result<LabNs> {
        let prefix = format!("benchcap{}", std::process::id());
        let st = Command::new(iptrace)
            .args(["lab", "up", "--prefix", &prefix])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()?;
        if !st.success() {
            bail!("iptrace lab up failed");
        }
        let node = std::fs::read_dir("/run/netns")?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with(&prefix) && n.ends_with("-node"))
            .context("lab node namespace not found")?;
        let name = node.trim_end_matches("-node").to_string();
        Ok(LabNs {
            peer: format!("{name}-peer"),
            ctr: format!("{name}-ctr"),
            node,
            name,
            children: Default::default(),
        })
    }

    fn exec(&self, ns: &str, argv: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .output()?;
        if !out.status.success() {
            bail!("{ns}: {argv:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Extra DNAT ports (10001 → iperf3, 10002 → the connection server) like the lab's
    /// docker mapping, and the two servers in the container (connection server on CPU 0).
    fn prepare(&self, xtask: &Path) -> Result<()> {
        for (public, port) in [(10001u16, IPERF_PORT), (10002, CONN_PORT)] {
            let (p, to) = (public.to_string(), format!("172.19.0.9:{port}"));
            self.exec(
                &self.node,
                &[
                    "iptables-legacy",
                    "-t",
                    "nat",
                    "-I",
                    "DOCKER",
                    "1",
                    "!",
                    "-i",
                    BR,
                    "-p",
                    "tcp",
                    "--dport",
                    &p,
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &to,
                ],
            )?;
            let port = port.to_string();
            self.exec(
                &self.node,
                &[
                    "iptables-legacy",
                    "-I",
                    "DOCKER",
                    "1",
                    "-d",
                    "172.19.0.9/32",
                    "!",
                    "-i",
                    BR,
                    "-o",
                    BR,
                    "-p",
                    "tcp",
                    "--dport",
                    &port,
                    "-j",
                    "ACCEPT",
                ],
            )?;
        }
        let iperf = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ctr,
                "iperf3",
                "-s",
                "-p",
                &IPERF_PORT.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let serve = Command::new("ip")
            .args(["netns", "exec", &self.ctr, "taskset", "-c", "0"])
            .arg(xtask)
            .args(["bench-serve", &CONN_PORT.to_string()])
            .stdout(Stdio::null())
            .spawn()?;
        self.children.borrow_mut().extend([iperf, serve]);
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// iperf3 throughput (bits/s received).
    fn iperf(&self, secs: u64) -> Result<f64> {
        let out = self.exec(
            &self.peer,
            &[
                "iperf3",
                "-c",
                "192.168.64.4",
                "-p",
                "10001",
                "-t",
                &secs.to_string(),
                "-J",
            ],
        )?;
        let key = "\"bits_per_second\":";
        // The last sum (sum_received) is the receiver's view.
        let pos = out
            .rfind("\"sum_received\"")
            .context("iperf3 output without sum_received")?;
        let rest = &out[pos..];
        let v = rest.find(key).context("no bits_per_second")? + key.len();
        let num: String = rest[v..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
            .collect();
        Ok(num.parse()?)
    }

    fn conn_rate(&self, xtask: &Path, secs: u64) -> Result<f64> {
        let out = self.exec(
            &self.peer,
            &[
                "taskset",
                "-c",
                "0",
                xtask.to_str().unwrap(),
                "bench-client",
                "192.168.64.4:10002",
                &secs.to_string(),
            ],
        )?;
        Ok(out.trim().parse()?)
    }

    fn down(&self, iptrace: &Path) {
        for mut c in self.children.borrow_mut().drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(iptrace)
            .args(["lab", "down", "--name", &self.name])
            .stdout(Stdio::null())
            .status();
    }
}

/// `iptrace capture` in the node namespace, output discarded; stopped with SIGTERM.
struct Tracer {
    child: Child,
}

impl Tracer {
    fn start(iptrace: &Path, node: &str, args: &[&str]) -> Result<Tracer> {
        // The collector runs on CPU 1, away from the pinned connection test on CPU 0 (as one
        // would deploy it); the probes themselves run wherever the packets are processed.
        let mut child = Command::new("taskset")
            .args(["-c", "1"])
            .arg(iptrace)
            .args(["capture", "--backend", "nfhook", "--netns", node])
            .args(if args.contains(&"--format") {
                &[][..]
            } else {
                &["--format", "trace"][..]
            })
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        // Wait until the probes are attached.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if err.read_line(&mut line)? == 0 {
                bail!("tracer exited before attaching");
            }
            if line.contains("probes attached") {
                break;
            }
        }
        child.stderr = Some(err.into_inner());
        Ok(Tracer { child })
    }

    /// SIGTERM, wait, and return the LOST count from its summary.
    fn stop(mut self) -> Result<u64> {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut err = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut err)?;
        self.child.wait()?;
        let lost = err
            .split("LOST ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no summary from the tracer: {err}"))?;
        Ok(lost)
    }
}

/// Sequential short connections for SECS seconds; prints connections per second.
fn client(args: &[String]) -> Result<()> {
    let addr = args.first().context("bench-client ADDR SECS")?;
    let secs: u64 = args.get(1).context("bench-client ADDR SECS")?.parse()?;
    let end = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut n = 0u64;
    let mut buf = [0u8; 64];
    while Instant::now() < end {
        let mut s = TcpStream::connect(addr.as_str())?;
        s.write_all(b"ping\n")?;
        let _ = s.read(&mut buf)?;
        n += 1;
    }
    println!("{:.1}", n as f64 / start.elapsed().as_secs_f64());
    Ok(())
}

/// Accept, read a line, answer, close — one connection at a time.
fn serve(args: &[String]) -> Result<()> {
    let port: u16 = args.first().context("bench-serve PORT")?.parse()?;
    let l = TcpListener::bind(("0.0.0.0", port))?;
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"pong\n");
    }
    Ok(())
}
