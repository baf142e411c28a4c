//! IPv6 in the guest: a hand-written ip6tables port mapping (the docker scenario's shape in
//! IPv6: DNAT in nat PREROUTING through a user chain, filter FORWARD through DOCKER-USER and
//! DOCKER, conntrack for the replies) in three namespaces of our own, traced by the kernel
//! itself while a capture session on the backend under test records the same packets:
//! legacy TRACE → kernel log (`trace_user::reference`); nft → `nft monitor trace` (here:
//! bookworm's `xtables-monitor --trace -6` (1.8.9) dies on the first ip6 rule with
//! `-p tcp --dport`: "unsupported layer 4 protocol value"; nft's own monitor prints it). The rule-level reconstruction
//! (`Replayer`, fed the session's events) must agree with the kernel's TRACE packet for packet.
//!
//! Two connections from the peer: `[fd00:64::4]:10000` → DNAT `[fd00:19::9]:80`, accepted
//! and answered; `[fd00:64::4]:10001` → DNAT `[fd00:19::9]:81`, dropped by a DOCKER-USER rule
//! (the SYN and its retransmissions).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use trace_common::filter::FilterProgram;
use trace_core::compare::captured::CapturedPacket;
use trace_core::event::{tcp_flags, Event, L4};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::packet::{Fate, PacketTrace};
use trace_core::reconstruct::ReconstructedPacket;
use trace_core::record::{replay::Replayer, Record};
use trace_user::capture::classic::{Classic, Flavour};
use trace_user::capture::loader::LoadOptions;
use trace_user::capture::plan::Target;
use trace_user::capture::session::{CaptureOptions, Session};
use trace_user::lab::IptablesBackend;
use trace_user::netns::{self, NetnsGuard};
use trace_user::reference::{
    agreement, ReferenceOutput, ReferenceTracer, RulesetSnapshot, TraceSelector, TraceTarget,
};

use crate::report::Outcome;

const NODE: &str = "fd00:64::4";
const PEER: &str = "fd00:64::5";
const GW: &str = "fd00:19::1";
const CTR: &str = "fd00:19::9";
/// Node's interface towards the container.
const CTR_DEV: &str = "v6ctr";
const PORT_OPEN: u16 = 10000;
const PORT_DROPPED: u16 = 10001;

/// The node's ruleset (ip6tables-restore input; the TRACE rules are added by the tracer).
fn ruleset() -> String {
    format!(
        "*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -d {NODE}/128 -j DOCKER
-A POSTROUTING -s fd00:19::/64 ! -o {CTR_DEV} -j MASQUERADE
-A DOCKER -i {CTR_DEV} -j RETURN
-A DOCKER ! -i {CTR_DEV} -p tcp -m tcp --dport {PORT_OPEN} -j DNAT --to-destination [{CTR}]:80
-A DOCKER ! -i {CTR_DEV} -p tcp -m tcp --dport {PORT_DROPPED} -j DNAT --to-destination [{CTR}]:81
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -o {CTR_DEV} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o {CTR_DEV} -j DOCKER
-A FORWARD -i {CTR_DEV} ! -o {CTR_DEV} -j ACCEPT
-A DOCKER -d {CTR}/128 ! -i {CTR_DEV} -o {CTR_DEV} -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-USER -d {CTR}/128 -p tcp -m tcp --dport 81 -j DROP
-A DOCKER-USER -j RETURN
COMMIT
"
    )
}

/// peer ── node (forwarding, the ruleset) ── ctr (server on :80); deleted on drop.
struct Topology6 {
    peer: NetnsGuard,
    node: NetnsGuard,
    ctr: NetnsGuard,
}

impl Topology6 {
    fn up(backend: IptablesBackend) -> anyhow::Result<Topology6> {
        let t = Topology6 {
            peer: NetnsGuard::create("vm6-peer")?,
            node: NetnsGuard::create("vm6-node")?,
            ctr: NetnsGuard::create("vm6-ctr")?,
        };
        let (peer, node, ctr) = (t.peer.name(), t.node.name(), t.ctr.name());
        let cidr = |a: &str| format!("{a}/64");
        let (node64, gw64, peer64, ctr64) = (cidr(NODE), cidr(GW), cidr(PEER), cidr(CTR));
        let steps: [(&str, Vec<&str>); 13] = [
            (
                node,
                vec![
                    "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
                    peer,
                ],
            ),
            (
                node,
                vec![
                    "ip", "link", "add", CTR_DEV, "type", "veth", "peer", "name", "eth0", "netns",
                    ctr,
                ],
            ),
            (
                node,
                vec!["ip", "addr", "add", &node64, "dev", "eth0", "nodad"],
            ),
            (
                node,
                vec!["ip", "addr", "add", &gw64, "dev", CTR_DEV, "nodad"],
            ),
            (
                peer,
                vec!["ip", "addr", "add", &peer64, "dev", "eth0", "nodad"],
            ),
            (
                ctr,
                vec!["ip", "addr", "add", &ctr64, "dev", "eth0", "nodad"],
            ),
            (node, vec!["ip", "link", "set", "eth0", "up"]),
            (node, vec!["ip", "link", "set", CTR_DEV, "up"]),
            (peer, vec!["ip", "link", "set", "eth0", "up"]),
            (ctr, vec!["ip", "link", "set", "eth0", "up"]),
            (
                peer,
                vec!["ip", "-6", "route", "add", "default", "via", NODE],
            ),
            (ctr, vec!["ip", "-6", "route", "add", "default", "via", GW]),
            (
                node,
                vec!["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"],
            ),
        ];
        for (ns, argv) in &steps {
            netns::exec(ns, argv).with_context(|| format!("{ns}: {argv:?}"))?;
        }
        t.restore(backend)?;
        Ok(t)
    }

    fn restore(&self, backend: IptablesBackend) -> anyhow::Result<()> {
        let bin = format!("ip6tables-{}-restore", backend.as_str());
        let mut child = netns::command(self.node.name(), &bin)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(ruleset().as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "{bin}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

/// A one-connection-at-a-time echo server in `ns` on [::]:80 until `stop` is set (or
/// `deadline`, should the caller never set it); returns how many connections it served.
fn serve(
    ns: &Path,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) -> anyhow::Result<std::thread::JoinHandle<u32>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = netns::spawn_in(ns, "vm6-server", move || {
        let l = match TcpListener::bind("[::]:80").and_then(|l| {
            l.set_nonblocking(true)?;
            Ok(l)
        }) {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return 0;
            }
        };
        let mut served = 0;
        while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf).unwrap_or(0);
                    let _ = s.write_all(b"echo6: ");
                    let _ = s.write_all(&buf[..n]);
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        served
    })?;
    rx.recv()
        .context("server thread")?
        .context("bind [::]:80")?;
    Ok(h)
}

/// The peer's two connections: the open one must be answered, the dropped one must fail.
fn client(peer: &Path) -> anyhow::Result<u16> {
    let peer = peer.to_path_buf();
    netns::run_in(&peer, || -> anyhow::Result<u16> {
        let open: SocketAddr = format!("[{NODE}]:{PORT_OPEN}").parse()?;
        let mut s = TcpStream::connect_timeout(&open, Duration::from_secs(10))
            .with_context(|| format!("connect {open}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"hello6\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        ensure!(reply == "echo6: hello6\n", "reply {reply:?}");
        let port = s.local_addr()?.port();
        drop(s);
        let dropped: SocketAddr = format!("[{NODE}]:{PORT_DROPPED}").parse()?;
        if TcpStream::connect_timeout(&dropped, Duration::from_millis(1500)).is_ok() {
            bail!("{dropped} answered: the DROP rule did not drop");
        }
        Ok(port)
    })?
}

/// The kernel's own trace of the node's TCP packets to NODE.
enum Reference {
    Legacy(ReferenceTracer),
    Nft(NftMonitor),
}

/// `nft monitor trace` in the node netns, with the TRACE rule (`meta nftrace set 1`) inserted
/// through ip6tables-nft. Both go with the namespace.
struct NftMonitor {
    child: std::process::Child,
    reader: std::thread::JoinHandle<String>,
}

impl Reference {
    fn start(topo: &Topology6, ipt: IptablesBackend) -> anyhow::Result<Reference> {
        let selector = TraceSelector {
            dst: Some(format!("{NODE}/128")),
            proto: Some("tcp".into()),
            ..Default::default()
        };
        if ipt == IptablesBackend::Legacy {
            let target = TraceTarget {
                netns: topo.node.path(),
                backend: ipt,
                family: Family::Ipv6,
            };
            return Ok(Reference::Legacy(ReferenceTracer::start(
                target, &selector, true,
            )?));
        }
        let mut child = netns::command(topo.node.name(), "stdbuf")
            .args(["-oL", "nft", "monitor", "trace"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting nft monitor trace")?;
        let mut out = child.stdout.take().context("monitor stdout")?;
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        // The monitor subscribes right after start; nothing is traced before the rule exists.
        std::thread::sleep(Duration::from_millis(500));
        let mut argv = vec!["ip6tables-nft", "-w", "-t", "raw", "-I", "PREROUTING", "1"];
        let args = selector.iptables_args();
        argv.extend(args.iter().map(String::as_str));
        argv.extend(["-j", "TRACE"]);
        let monitor = NftMonitor { child, reader };
        netns::exec(topo.node.name(), &argv)?;
        Ok(Reference::Nft(monitor))
    }

    fn snapshot(&self, topo: &Topology6, ipt: IptablesBackend) -> anyhow::Result<RulesetSnapshot> {
        match self {
            Reference::Legacy(t) => Ok(t.snapshot_rulesets()?),
            Reference::Nft(_) => {
                let save = format!("ip6tables-{}-save", ipt.as_str());
                Ok(RulesetSnapshot {
                    iptables_save: netns::exec_stdout(topo.node.name(), &[&save])?,
                    nft_ruleset: Some(netns::exec_stdout(
                        topo.node.name(),
                        &["nft", "-a", "list", "ruleset"],
                    )?),
                })
            }
        }
    }

    fn finish(self) -> anyhow::Result<ReferenceOutput> {
        match self {
            Reference::Legacy(t) => {
                let mut out = t.finish()?;
                out.text = ours_only(&out.text);
                Ok(out)
            }
            Reference::Nft(mut m) => {
                // Let the last events arrive, then stop our own child (by its handle).
                std::thread::sleep(Duration::from_millis(500));
                let _ = m.child.kill();
                let _ = m.child.wait();
                let text = m
                    .reader
                    .join()
                    .map_err(|_| anyhow::anyhow!("monitor reader panicked"))?;
                Ok(ReferenceOutput {
                    format: trace_core::compare::reference::Format::NftMonitor,
                    text,
                    lost: 0,
                    warnings: Vec::new(),
                })
            }
        }
    }
}

/// The kernel log is machine-wide: keep the TRACE lines of our packets (all from the peer:
/// the selector matches `-d NODE`), not those of whatever else runs TRACE meanwhile (other
/// tests on a shared host; nothing else in the guest).
fn ours_only(kmsg: &str) -> String {
    let peer: std::net::Ipv6Addr = PEER.parse().expect("PEER is an IPv6 address");
    let full: Vec<String> = peer.segments().iter().map(|s| format!("{s:04x}")).collect();
    let src = format!("SRC={} ", full.join(":"));
    kmsg.lines()
        .filter(|l| l.contains(&src))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The backend under test: fentry/kprobe (loaded like `--backend fentry|kprobe`) or nfhook.
#[derive(Clone, Copy)]
pub enum Backend6 {
    Classic(Flavour),
    Nfhook,
}

fn session(backend: Backend6, opts: &CaptureOptions) -> anyhow::Result<Session> {
    match backend {
        Backend6::Nfhook => Session::attach(opts),
        Backend6::Classic(f) => {
            let load = LoadOptions {
                ringbuf_size: opts.ringbuf_size,
                sample_n: 0,
                rate_limit: 0,
                filter: opts.filter,
            };
            Session::attach_classic(opts, Classic::load(f, &load)?)
        }
    }
}

/// `<backend> trace6-agrees-<legacy|nft>`.
pub fn trace_agrees(backend: Backend6, ipt: IptablesBackend) -> Outcome {
    match run(backend, ipt) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(format!("{e:#}")),
    }
}

fn run(backend: Backend6, ipt: IptablesBackend) -> anyhow::Result<Outcome> {
    let topo = Topology6::up(ipt)?;
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(120);
    let server = serve(&topo.ctr.path(), stop.clone(), deadline)?;
    let tracer = Reference::start(&topo, ipt)?;
    // After start(): raw now holds the TRACE rules, so the dump and the plan are current.
    let snapshot = tracer.snapshot(&topo, ipt)?;
    let opts = CaptureOptions {
        targets: vec![Target {
            label: "node6".into(),
            path: topo.node.path(),
        }],
        filter: FilterProgram::match_all(),
        sample_n: 0,
        rate_limit: 0,
        ringbuf_size: 1 << 22,
        count: None,
        // Under TCG the two connections take a few seconds; the drop retransmits once.
        duration: Some(Duration::from_secs(8)),
    };
    let mut session = session(backend, &opts)?;
    let node = topo.node.inode() as u32;
    let mut rp = Replayer::new(None);
    let _ = rp.push(Record::Ruleset {
        netns: node,
        family: Family::Ipv6,
        generation: 1,
        text: snapshot.iptables_save.clone(),
    });
    for hook in Hook::ALL {
        if let Some(p) = session.plan().get(node, Family::Ipv6, hook) {
            let _ = rp.push(Record::plan(node, Family::Ipv6, hook, p));
        }
    }
    let peer = topo.peer.path();
    let traffic = std::thread::spawn(move || client(&peer));
    let mut packets: Vec<ReconstructedPacket> = Vec::new();
    let summary = session.run_events(&opts, |ev| {
        // Probe records of the node only; every drop report (matched to its packet by skb).
        let ours = !matches!(&ev, Event::Probe(p) if p.netns != node);
        if !ours {
            return Ok(0);
        }
        let done = rp.push(Record::Event {
            event: Box::new(ev),
        });
        let n = done.len() as u64;
        packets.extend(done);
        Ok(n)
    })?;
    packets.extend(rp.finish());
    drop(session);
    let client_port = traffic
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    let output = tracer.finish()?;
    stop.store(true, Ordering::SeqCst);
    let served = server.join().unwrap_or(0);
    drop(topo);
    let captured: Vec<CapturedPacket> = packets.iter().map(CapturedPacket::from).collect();
    let report = agreement(&output, &captured, &snapshot)?;
    let t = &report.totals;
    let stats = format!(
        "reference {} captured {} agree {} differ {} only-in-reference {} only-in-capture {} unparsable {}; records {}, undecodable {}, lost {}, served {served}",
        t.reference_packets, t.captured_packets, t.agree, t.differ, t.only_in_reference,
        t.only_in_capture, t.unparsable, summary.received, summary.decode_errors, summary.lost
    );
    let paths = check_paths(&packets, client_port);
    let agreed = t.agree >= 2 && t.differ == 0 && t.only_in_reference == 0 && t.unparsable == 0;
    let clean = summary.lost == 0 && summary.decode_errors == 0 && output.lost == 0;
    Ok(match paths {
        Ok(p) if agreed && clean => Outcome::Pass(format!("{p}; {stats}")),
        Ok(p) => Outcome::Fail(format!("{p}; {stats}; {}", report.render_text(3))),
        Err(e) => Outcome::Fail(format!("{e}; {stats}; {}", report.render_text(3))),
    })
}

/// (sport, dport, flags) of the packet as it entered its first hook.
fn first_tcp(t: &PacketTrace) -> Option<(u16, u16, u8)> {
    let h = t.hooks.first()?;
    let headers = h
        .tables
        .first()
        .map(|o| &o.before.headers)
        .or(h.stages.first().map(|s| &s.before.headers))?;
    match headers.l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
            ..
        } => Some((sport, dport, flags)),
        _ => None,
    }
}

fn is_syn(t: &PacketTrace) -> bool {
    first_tcp(t).is_some_and(|(_, _, f)| f & tcp_flags::SYN != 0 && f & tcp_flags::ACK == 0)
}

fn dport(t: &PacketTrace) -> Option<u16> {
    first_tcp(t).map(|(_, d, _)| d)
}

fn src_port(t: &PacketTrace) -> Option<u16> {
    first_tcp(t).map(|(s, _, _)| s)
}

/// Beyond agreeing with TRACE: the accepted SYN was DNAT'ed and delivered, the dropped SYN
/// ended in FORWARD filter (the kernel's verdict, seen by the probes).
fn check_paths(packets: &[ReconstructedPacket], client_port: u16) -> Result<String, String> {
    let v6 = |p: &&ReconstructedPacket| p.packet.family == Family::Ipv6 && is_syn(&p.packet);
    let open = packets
        .iter()
        .filter(v6)
        .find(|p| dport(&p.packet) == Some(PORT_OPEN) && src_port(&p.packet) == Some(client_port))
        .ok_or("no SYN to the open port captured")?;
    let dnat = open
        .packet
        .hooks
        .iter()
        .find(|h| h.hook == Hook::Prerouting)
        .and_then(|h| h.tables.iter().find(|o| o.table == Table::Nat))
        .and_then(|o| o.after.as_ref())
        .map(|a| a.headers.dst.to_string());
    if dnat.as_deref() != Some(CTR) {
        return Err(format!(
            "open SYN: PREROUTING nat after {dnat:?}, expected DNAT to {CTR}"
        ));
    }
    if open.packet.fate != Fate::Delivered {
        return Err(format!("open SYN fate {:?}", open.packet.fate));
    }
    let dropped: Vec<&ReconstructedPacket> = packets
        .iter()
        .filter(v6)
        .filter(|p| dport(&p.packet) == Some(PORT_DROPPED))
        .collect();
    let Some(first) = dropped.first() else {
        return Err("no SYN to the dropped port captured".into());
    };
    let want = Fate::Dropped {
        hook: Hook::Forward,
        stage: trace_core::packet::Stage::Table {
            table: Table::Filter,
        },
    };
    if first.packet.fate != want {
        return Err(format!("dropped SYN fate {:?}", first.packet.fate));
    }
    Ok(format!(
        "open SYN DNAT {CTR}:80 delivered, {} dropped SYN(s) in FORWARD filter",
        dropped.len()
    ))
}
