//! `cargo xtask bench-capture [--rounds N] [--secs S] [--configs NAME,...] [--iperf-unpinned]` (root): overhead of the nfhook capture
//! through the lab's DNAT path. Not a test: it prints measurements.
//!
//! Per round, for each configuration in turn (interleaved, so drift hits all alike; each
//! round starts one configuration later):
//! no tracer, a filter matching nothing, everything, and everything with `--sample 1/1000`:
//! (a) TCP throughput: iperf3 from peer to 192.168.64.4:10001 (DNAT to the container);
//! (b) sequential short connections/s from peer to 192.168.64.4:10002;
//! client and server of both pinned to CPU 0 (unpinned runs on 2 vCPUs are bimodal, and an
//! unpinned iperf3 competes with the collector on CPU 1: `--iperf-unpinned` measures that).
//! Prints per-round values, each configuration's median, and the median and range of its
//! per-round ratios to no tracer in the same round (paired: drift between rounds cancels),
//! plus the tracer's lost count.
//! The tracer (`iptrace capture`, TRACE lines to /dev/null) is pinned to CPU 1.
//!
//! `--baseline PATH`: every tracer configuration also runs with the `iptrace` binary at PATH
//! (e.g. a build of an earlier commit), as `NAME@base` in the same interleaved rounds: a
//! before/after comparison under the same load.
//!
//! `--bpf-stats`: kernel.bpf_stats_enabled=1 during the run (restored after), and per
//! configuration the kernel's run count and mean run time of each capture program (summed over
//! rounds): the probes' own cost, independent of how busy the other CPU is.
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

#[derive(Clone)]
struct Config {
    name: String,
    /// None: no tracer.
    args: Option<Vec<&'static str>>,
    /// Run the tracer from the `--baseline` binary.
    base: bool,
}

fn configs() -> Vec<Config> {
    vec![
        Config {
            name: "none".into(),
            args: None,
            base: false,
        },
        Config {
            name: "match-nothing".into(),
            args: Some(vec!["host", "10.255.255.254"]),
            base: false,
        },
        // The tracer prints TRACE lines (--format trace) to /dev/null.
        Config {
            name: "match-everything".into(),
            args: Some(vec![]),
            base: false,
        },
        Config {
            name: "sample-1/1000".into(),
            args: Some(vec!["--sample", "1/1000"]),
            base: false,
        },
        // Diagnostics (--configs): the packet-level view costs the collector less than the
        // rule-level reconstruction.
        Config {
            name: "everything-packets".into(),
            args: Some(vec!["--packets"]),
            base: false,
        },
        Config {
            name: "everything-json".into(),
            args: Some(vec!["--format", "json"]),
            base: false,
        },
        // The probes alone: the collector drains without decoding.
        Config {
            name: "everything-discard".into(),
            args: Some(vec!["--discard"]),
            base: false,
        },
    ]
}

fn bench(args: &[String]) -> Result<()> {
    let mut rounds = 3;
    let mut secs = 3u64;
    let mut only: Option<Vec<String>> = None;
    let mut bpf_stats = false;
    let mut baseline: Option<PathBuf> = None;
    let mut iperf_pinned = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--baseline" => baseline = Some(it.next().context("--baseline PATH")?.into()),
            "--bpf-stats" => bpf_stats = true,
            "--iperf-unpinned" => iperf_pinned = false,
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
    let mut lab = LabNs::up(&iptrace)?;
    lab.iperf_pinned = iperf_pinned;
    let mut cfgs: Vec<Config> = configs();
    let defaults = ["none", "match-nothing", "match-everything", "sample-1/1000"];
    cfgs.retain(|c| match &only {
        Some(names) => c.name == "none" || names.contains(&c.name),
        None => defaults.contains(&c.name.as_str()),
    });
    if let Some(b) = &baseline {
        if !b.is_file() {
            bail!("--baseline {}: no such file", b.display());
        }
        let twins: Vec<Config> = cfgs
            .iter()
            .filter(|c| c.args.is_some())
            .map(|c| Config {
                name: format!("{}@base", c.name),
                base: true,
                ..c.clone()
            })
            .collect();
        cfgs.extend(twins);
    }
    let stats_guard = if bpf_stats {
        Some(StatsEnabled::on()?)
    } else {
        None
    };
    let bins = Binaries {
        iptrace: &iptrace,
        baseline: baseline.as_deref(),
        xtask: &xtask,
    };
    let result = run_rounds(&lab, &bins, &cfgs, rounds, secs, bpf_stats);
    drop(stats_guard);
    lab.down(&iptrace);
    result
}

/// kernel.bpf_stats_enabled = 1 while alive; the previous value is written back on drop.
struct StatsEnabled {
    prev: String,
}

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl StatsEnabled {
    fn on() -> Result<StatsEnabled> {
        let prev = std::fs::read_to_string(BPF_STATS_SYSCTL)?
            .trim()
            .to_string();
        std::fs::write(BPF_STATS_SYSCTL, "1")?;
        Ok(StatsEnabled { prev })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS_SYSCTL, &self.prev) {
            eprintln!(
                "xtask bench-capture: could not restore {BPF_STATS_SYSCTL}={}: {e}",
                self.prev
            );
        }
    }
}

/// Per program name: (runs, total run time ns).
type ProgStats = std::collections::BTreeMap<String, (u64, u64)>;

/// The run counts and times of the BPF programs a process holds (its fdinfo), by program name.
fn prog_stats(pid: u32) -> ProgStats {
    let mut out = ProgStats::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
        };
        let (Some(id), Some(ns), Some(cnt)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        else {
            continue;
        };
        let name = prog_name(id as u32).unwrap_or_else(|| format!("id{id}"));
        let s = out.entry(name).or_default();
        s.0 += cnt;
        s.1 += ns;
    }
    out
}

/// A program's name by id (BPF_PROG_GET_FD_BY_ID + BPF_OBJ_GET_INFO_BY_FD).
fn prog_name(id: u32) -> Option<String> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: bpf(2) with a zeroed attr holding prog_id.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            attr.len(),
        )
    };
    if fd < 0 {
        return None;
    }
    // struct bpf_prog_info up to name (offset 64, 16 bytes).
    let mut info = [0u8; 256];
    let mut a = [0u8; 128];
    a[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    a[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    a[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: info_by_fd writes at most info_len bytes into `info`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            a.as_mut_ptr(),
            a.len(),
        )
    };
    // SAFETY: closing the fd we just got.
    unsafe { libc::close(fd as i32) };
    if r != 0 {
        return None;
    }
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(16);
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

fn print_prog_stats(name: &str, stats: &ProgStats) {
    if stats.is_empty() {
        return;
    }
    let first: u64 = stats
        .iter()
        .filter(|(n, _)| n.starts_with("nfpf"))
        .map(|(_, s)| s.0)
        .sum();
    let total_ns: u64 = stats.values().map(|s| s.1).sum();
    // Netfilter probe copies: `nfp...` (earlier builds: `nfprobe_...`, names cut at 15
    // characters, so all copies add up under one name).
    let (nf_runs, nf_ns) = stats
        .iter()
        .filter(|(n, _)| n.starts_with("nfp"))
        .fold((0u64, 0u64), |(r, t), (_, s)| (r + s.0, t + s.1));
    println!(
        "{name}: {} ns of BPF per packet entering (first-sight runs {first}), {} ns per netfilter probe run ({nf_runs} runs)",
        total_ns.checked_div(first).unwrap_or(0),
        nf_ns.checked_div(nf_runs).unwrap_or(0)
    );
    for (prog, (cnt, ns)) in stats {
        println!(
            "  {prog:<16} runs {cnt:>10}  mean {:>6} ns  total {:>8.1} ms",
            if *cnt > 0 { ns / cnt } else { 0 },
            *ns as f64 / 1e6
        );
    }
}

/// The binaries a run uses.
struct Binaries<'a> {
    iptrace: &'a Path,
    baseline: Option<&'a Path>,
    xtask: &'a Path,
}

fn run_rounds(
    lab: &LabNs,
    bins: &Binaries,
    cfgs: &[Config],
    rounds: usize,
    secs: u64,
    bpf_stats: bool,
) -> Result<()> {
    let xtask = bins.xtask;
    lab.prepare(xtask)?;
    let mut stats: Vec<ProgStats> = vec![ProgStats::new(); cfgs.len()];
    let mut tput: Vec<Vec<f64>> = vec![Vec::new(); cfgs.len()];
    let mut conns: Vec<Vec<f64>> = vec![Vec::new(); cfgs.len()];
    let mut lost: Vec<u64> = vec![0; cfgs.len()];
    for round in 0..rounds {
        // Each round starts one configuration later: no configuration always runs right
        // after the same one (conntrack and TIME_WAIT entries pile up during a round).
        for k in 0..cfgs.len() {
            let i = (k + round) % cfgs.len();
            let c = &cfgs[i];
            let tracer = match &c.args {
                Some(a) => {
                    let bin = match (c.base, bins.baseline) {
                        (true, Some(b)) => b,
                        _ => bins.iptrace,
                    };
                    Some(Tracer::start(bin, &lab.node, a)?)
                }
                None => None,
            };
            let t = lab.iperf(secs)?;
            let n = lab.conn_rate(xtask, secs)?;
            if let Some(tr) = tracer {
                if bpf_stats {
                    for (k, (cnt, ns)) in prog_stats(tr.child.id()) {
                        let e = stats[i].entry(k).or_default();
                        e.0 += cnt;
                        e.1 += ns;
                    }
                }
                lost[i] += tr.stop()?;
            }
            eprintln!(
                "round {round} {:<24} throughput {:>8.1} Mbit/s  connections {:>7.1}/s",
                c.name,
                t / 1e6,
                n
            );
            tput[i].push(t);
            conns[i].push(n);
        }
    }
    println!(
        "nfhook capture overhead ({rounds} interleaved rounds, {secs}s each; iperf3 {}): medians, and the median and range of the per-round ratios to no tracer in the same round",
        if lab.iperf_pinned { "on CPU 0" } else { "unpinned" }
    );
    println!(
        "{:<24} {:>10} {:>6} {:>9} {:>10} {:>6} {:>9} {:>6}",
        "config", "Mbit/s", "ratio", "range", "conn/s", "ratio", "range", "lost"
    );
    for (i, c) in cfgs.iter().enumerate() {
        let (t, tr) = (median(&tput[i]), paired_ratios(&tput[i], &tput[0]));
        let (n, nr) = (median(&conns[i]), paired_ratios(&conns[i], &conns[0]));
        println!(
            "{:<24} {:>10.1} {:>5.0}% {:>9} {:>10.1} {:>5.0}% {:>9} {:>6}",
            c.name,
            t / 1e6,
            100.0 * median(&tr),
            range(&tr),
            n,
            100.0 * median(&nr),
            range(&nr),
            if c.args.is_some() {
                lost[i].to_string()
            } else {
                "-".into()
            }
        );
    }
    if bpf_stats {
        println!("BPF program cost (kernel.bpf_stats_enabled; all rounds, both tests)");
        for (i, c) in cfgs.iter().enumerate() {
            print_prog_stats(&c.name, &stats[i]);
        }
    }
    Ok(())
}

/// Each round's value over no tracer's in the same round: drift between rounds (the
/// baseline alone moves by several percent) cancels out.
fn paired_ratios(v: &[f64], none: &[f64]) -> Vec<f64> {
    v.iter().zip(none).map(|(a, b)| a / b).collect()
}

/// "min–max" of ratios, in percent.
fn range(r: &[f64]) -> String {
    let lo = r.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.0}–{:.0}", 100.0 * lo, 100.0 * hi)
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
    /// iperf3 client and server on CPU 0 (like the connection test).
    iperf_pinned: bool,
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
            iperf_pinned: true,
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
            .args(["netns", "exec", &self.ctr])
            .args(self.pin())
            .args(["iperf3", "-s", "-p", &IPERF_PORT.to_string()])
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

    /// `taskset -c 0` when iperf3 is pinned.
    fn pin(&self) -> &'static [&'static str] {
        if self.iperf_pinned {
            &["taskset", "-c", "0"]
        } else {
            &[]
        }
    }

    /// iperf3 throughput (bits/s received).
    fn iperf(&self, secs: u64) -> Result<f64> {
        let secs = secs.to_string();
        let mut argv: Vec<&str> = self.pin().to_vec();
        argv.extend([
            "iperf3",
            "-c",
            "192.168.64.4",
            "-p",
            "10001",
            "-t",
            &secs,
            "-J",
        ]);
        let out = self.exec(&self.peer, &argv)?;
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
