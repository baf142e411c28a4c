//! Bridged packets (br_netfilter) against the kernel's own TRACE (root, legacy iptables): a
//! router namespace with a bridge and two client namespaces on its ports, bridge-nf-call-
//! iptables on in the router, `-m physdev` rules (`--physdev-in`, `--physdev-out`,
//! `--physdev-is-bridged`, `--physdev-is-in`) in mangle and filter; ICMP and TCP between the
//! clients (IN=OUT=the bridge, PHYSIN=/PHYSOUT= the ports) and ICMP to the router's own
//! address on the bridge (INPUT with PHYSIN=). Captured by `iptrace capture --compare-trace
//! --allow-system-changes` (the TRACE rule in raw PREROUTING and nf_log_all_netns are its
//! own, restored on exit); two checks: every captured packet's rule path agrees with the
//! kernel's, and the TRACE lines iptrace prints for the recording equal the kernel's byte
//! for byte (as multisets). Run with `--test-threads=1`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use iptrace_tests as e2e;
use iptrace_tests::capture_child::{compare_trace_command, CaptureChild, QUIET_PERIOD};
use iptrace_tests::fidelity::{checksum, machine_lock, replay_lines, run, TempFile};
use iptrace_tests::kmsg::TraceLog;
use iptrace_tests::quiet::Quiet;
use serde_json::Value;
use trace_user::lab::IptablesBackend;
use trace_user::netns::{self, NetnsGuard};

const A4: &str = "10.214.0.2";
const B4: &str = "10.214.0.3";
const BR4: &str = "10.214.0.1";
const A6: &str = "fd99:214::2";
const B6: &str = "fd99:214::3";
const BR6: &str = "fd99:214::1";
/// Fixed MACs (A, B, the bridge): IPv6 neighbours are static, so no neighbour discovery
/// multicast is flooded over the bridge during the capture (see [`v6_scenario`]).
const MAC_A: &str = "02:14:00:00:00:02";
const MAC_B: &str = "02:14:00:00:00:03";
const MAC_BR: &str = "02:14:00:00:00:01";
/// How our addresses look in kernel log lines (IPv4 dotted, IPv6 %pI6's full form).
const MINE: [&str; 2] = ["10.214.", "fd99:0214:"];

fn mine(s: &str) -> bool {
    MINE.iter().any(|m| s.contains(m))
}
/// The router's bridge and its ports (names inside the router namespace).
const BRIDGE: &str = "brg0";
const PORT_A: &str = "bpa0";
const PORT_B: &str = "bpb0";

/// Hand-written: physdev in every form the kernel evaluates differently on the way through
/// (PREROUTING: no output port yet; FORWARD/POSTROUTING: both ports; INPUT: input port only).
const RULES: &str = "\
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -m physdev --physdev-is-bridged -j MARK --set-xmark 0x1/0xffffffff
-A PREROUTING -m physdev --physdev-in bpa0 -j MARK --set-xmark 0xa/0xffffffff
-A PREROUTING -m physdev --physdev-in bpb0 -j MARK --set-xmark 0xb/0xffffffff
-A INPUT -m physdev --physdev-is-in ! --physdev-is-out -j MARK --set-xmark 0x2/0xffffffff
-A POSTROUTING -m physdev --physdev-is-out --physdev-out bpb0 -j MARK --set-xmark 0xc/0xffffffff
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:br-fwd - [0:0]
-A INPUT -m physdev --physdev-is-bridged -j DROP
-A INPUT -p icmp -m physdev --physdev-in bpa0 -j ACCEPT
-A FORWARD -m physdev --physdev-is-bridged -j br-fwd
-A FORWARD -j DROP
-A br-fwd -m physdev --physdev-in bpb0 --physdev-out bpb0 -j DROP
-A br-fwd -p tcp -m physdev --physdev-in bpa0 --physdev-out bpb0 -j ACCEPT
-A br-fwd -p icmp -m physdev --physdev-in bpa0 -j ACCEPT
-A br-fwd -m physdev ! --physdev-in bpa0 --physdev-out bpa0 -j ACCEPT
COMMIT
";

/// Steps the kernel's trace must contain: the physdev rules were exercised.
const KERNEL_STEPS: &[&str] = &[
    "mangle:PREROUTING:rule:2",
    "mangle:PREROUTING:rule:3",
    "mangle:INPUT:rule:1",
    "mangle:POSTROUTING:rule:1",
    "filter:INPUT:rule:2",
    "filter:FORWARD:rule:1",
    "filter:br-fwd:rule:2",
    "filter:br-fwd:rule:3",
    "filter:br-fwd:rule:4",
];

/// Substrings some kernel TRACE line (and some iptrace line) must contain.
const KERNEL_TEXT: &[&str] = &[
    "IN=brg0 OUT=brg0 PHYSIN=bpa0 PHYSOUT=bpb0 ",
    "IN=brg0 OUT=brg0 PHYSIN=bpb0 PHYSOUT=bpa0 ",
    "IN=brg0 OUT= PHYSIN=bpa0 ",
    "IN= OUT=brg0 PHYSIN=bpa0 PHYSOUT=bpb0 ",
];

/// A published port on the router's bridge address, DNAT'ed to B (docker without the userland
/// proxy): the request is routed back out through the bridge it came in on (br_netfilter's
/// "bridged DNAT": the bridge forwards it, IP FORWARD and POSTROUTING see both ports).
const NAT_RULES: &str = "\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 10.214.0.1/32 -p tcp -m tcp --dport 8081 -m physdev --physdev-in bpa0 -j DNAT --to-destination 10.214.0.3:8080
-A POSTROUTING -m physdev ! --physdev-is-bridged -j RETURN
COMMIT
";

struct Scenario {
    name: &'static str,
    /// ip6tables rules and IPv6 traffic.
    v6: bool,
    /// The capture filter (the TRACE rule selects as much of it as iptables can say).
    filter: &'static str,
    rules: String,
    /// Steps the kernel's trace must contain (the scenario exercised them).
    steps: &'static [&'static str],
    /// Substrings some kernel TRACE line, and some iptrace line, must contain.
    text: &'static [&'static str],
    traffic: fn(&Topo),
    /// Fewest packets that must agree.
    min_agree: u64,
}

/// ICMP A→B, A→router, B→A and a TCP exchange A→B (see [`RULES`]).
fn physdev_scenario() -> Scenario {
    Scenario {
        name: "physdev",
        v6: false,
        filter: "ip",
        rules: RULES.to_string(),
        steps: KERNEL_STEPS,
        text: KERNEL_TEXT,
        traffic: Topo::traffic,
        // 2 echo requests + 2 replies bridged, 1 request + 1 reply to the router, TCP.
        min_agree: 10,
    }
}

/// [`physdev_scenario`] on iptables-nft, without the ping to the router: nft's trace id
/// hashes skb->skb_iif, which the bridge's local delivery changes from the port to the bridge
/// (netif_receive_skb on it), so `nft monitor trace` shows that packet's INPUT as another
/// packet — the compare cannot pair it (a reference artefact, not a capture difference).
fn physdev_nft_scenario() -> Scenario {
    Scenario {
        name: "physdev",
        traffic: |t| {
            let (b, a) = (B4.parse().unwrap(), A4.parse().unwrap());
            netns::run_in(&t.a.path(), move || {
                ping(b, 0x2101);
                tcp_echo(SocketAddr::new(b, 8080));
            })
            .expect("enter A");
            netns::run_in(&t.b.path(), move || ping(a, 0x2103)).expect("enter B");
        },
        min_agree: 8,
        ..physdev_scenario()
    }
}

/// A TCP exchange from A to the router's published port, DNAT'ed to B, and a ping A→B.
fn dnat_scenario() -> Scenario {
    Scenario {
        name: "dnat",
        v6: false,
        filter: "ip",
        rules: format!("{NAT_RULES}{RULES}"),
        steps: &[
            "nat:PREROUTING:rule:1",
            "filter:br-fwd:rule:2",
            "filter:br-fwd:rule:4",
        ],
        text: &[
            "IN=brg0 OUT=brg0 PHYSIN=bpa0 PHYSOUT=bpb0 ",
            "IN= OUT=brg0 PHYSIN=bpb0 PHYSOUT=bpa0 ",
            "DST=10.214.0.1 ",
        ],
        traffic: |t| {
            let (b, br) = (B4.parse().unwrap(), BR4.parse().unwrap());
            netns::run_in(&t.a.path(), move || {
                tcp_echo(SocketAddr::new(br, 8081));
                ping(b, 0x2104);
            })
            .expect("enter A");
        },
        min_agree: 6,
    }
}

/// IPv6 (bridge-nf-call-ip6tables): the same physdev forms through ip6tables.
const RULES6: &str = "\
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -m physdev --physdev-in bpa0 -j MARK --set-xmark 0xa/0xffffffff
-A PREROUTING -m physdev --physdev-in bpb0 -j MARK --set-xmark 0xb/0xffffffff
-A INPUT -m physdev --physdev-is-in ! --physdev-is-out -j MARK --set-xmark 0x2/0xffffffff
-A POSTROUTING -m physdev --physdev-is-out --physdev-out bpb0 -j MARK --set-xmark 0xc/0xffffffff
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:br-fwd - [0:0]
-A INPUT -m physdev --physdev-is-bridged -j DROP
-A INPUT -p ipv6-icmp -m physdev --physdev-in bpa0 -j ACCEPT
-A FORWARD -m physdev --physdev-is-bridged -j br-fwd
-A br-fwd -p tcp -m physdev --physdev-in bpa0 --physdev-out bpb0 -j ACCEPT
-A br-fwd -p ipv6-icmp -m physdev --physdev-in bpa0 -j ACCEPT
-A br-fwd -m physdev ! --physdev-in bpa0 --physdev-out bpa0 -j ACCEPT
COMMIT
";

/// ICMPv6 A→B and A→router, TCP A→B. Neighbours are static and the filter keeps to our
/// unicast addresses: a multicast the bridge floods to several ports is a clone per port,
/// and the capture follows only the skb it first saw (the clones' hooks are not captured).
fn v6_scenario() -> Scenario {
    Scenario {
        name: "v6",
        v6: true,
        filter: "ip6 and src net fd99:214::/64 and dst net fd99:214::/64",
        rules: RULES6.to_string(),
        steps: &[
            "mangle:PREROUTING:rule:1",
            "mangle:PREROUTING:rule:2",
            "mangle:INPUT:rule:1",
            "mangle:POSTROUTING:rule:1",
            "filter:INPUT:rule:2",
            "filter:br-fwd:rule:1",
            "filter:br-fwd:rule:2",
            "filter:br-fwd:rule:3",
        ],
        text: &[
            "IN=brg0 OUT=brg0 PHYSIN=bpa0 PHYSOUT=bpb0 ",
            "IN=brg0 OUT=brg0 PHYSIN=bpb0 PHYSOUT=bpa0 ",
            "IN=brg0 OUT= PHYSIN=bpa0 ",
        ],
        traffic: |t| {
            let (b, br) = (B6.parse().unwrap(), BR6.parse().unwrap());
            netns::run_in(&t.a.path(), move || {
                ping(b, 0x2105);
                ping(br, 0x2106);
                tcp_echo(SocketAddr::new(b, 8080));
            })
            .expect("enter A");
        },
        min_agree: 8,
    }
}

/// Two clients on the router's bridge (namespaces deleted on drop, with the server).
struct Topo {
    a: NetnsGuard,
    b: NetnsGuard,
    router: NetnsGuard,
    server: Option<Child>,
}

impl Topo {
    fn up() -> Topo {
        let t = Topo {
            a: NetnsGuard::create("brga").expect("netns"),
            b: NetnsGuard::create("brgb").expect("netns"),
            router: NetnsGuard::create("brgr").expect("netns"),
            server: None,
        };
        let r = t.router.name();
        run(r, &["ip", "link", "add", BRIDGE, "type", "bridge"]);
        let clients = [
            (t.a.name(), PORT_A, A4, A6, MAC_A),
            (t.b.name(), PORT_B, B4, B6, MAC_B),
        ];
        for (ns, port, addr, addr6, mac) in clients {
            // Created inside the client namespace, the peer moved straight into the router:
            // the root namespace never sees these links.
            run(
                ns,
                &[
                    "ip", "link", "add", "eth0", "address", mac, "type", "veth", "peer", "name",
                    port, "netns", r,
                ],
            );
            let a6 = format!("{addr6}/64");
            run(ns, &["ip", "addr", "add", &a6, "dev", "eth0", "nodad"]);
            run(
                ns,
                &["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"],
            );
            run(ns, &["ip", "link", "set", "eth0", "up"]);
            run(r, &["ip", "link", "set", port, "master", BRIDGE]);
            run(r, &["ip", "link", "set", port, "up"]);
        }
        run(
            r,
            &["ip", "addr", "add", &format!("{BR4}/24"), "dev", BRIDGE],
        );
        let br6 = format!("{BR6}/64");
        run(r, &["ip", "addr", "add", &br6, "dev", BRIDGE, "nodad"]);
        run(r, &["ip", "link", "set", BRIDGE, "address", MAC_BR]);
        run(r, &["ip", "link", "set", BRIDGE, "up"]);
        // Static IPv6 neighbours (A, B, the router know each other).
        let hosts = [
            (t.a.name(), A6, MAC_A),
            (t.b.name(), B6, MAC_B),
            (r, BR6, MAC_BR),
        ];
        for (ns, own, _) in hosts {
            let dev = if ns == r { BRIDGE } else { "eth0" };
            for (_, other, mac) in hosts.iter().filter(|h| h.1 != own) {
                run(
                    ns,
                    &[
                        "ip",
                        "-6",
                        "neigh",
                        "replace",
                        other,
                        "lladdr",
                        mac,
                        "dev",
                        dev,
                        "nud",
                        "permanent",
                    ],
                );
            }
        }
        // Per netns (Linux >= 5.3); this machine's default is already 1 (br_netfilter is
        // loaded), set it anyway: the namespace is ours and deleted afterwards.
        run(
            r,
            &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
        );
        run(r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        run(
            r,
            &["sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=1"],
        );
        t
    }

    fn restore(&self, backend: IptablesBackend, rules: &str, v6: bool) {
        let bin = backend.restore_bin();
        let bin = if v6 {
            bin.replacen("iptables", "ip6tables", 1)
        } else {
            bin
        };
        let mut child = netns::command(self.router.name(), &bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn restore");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), rules.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{bin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A socat echo server on B (port 8080, one address family).
    fn serve(&mut self, v6: bool) {
        let listen = if v6 {
            "TCP6-LISTEN:8080,reuseaddr,fork,ipv6only=1"
        } else {
            "TCP4-LISTEN:8080,reuseaddr,fork"
        };
        let child = netns::command(self.b.name(), "socat")
            .args([listen, "EXEC:cat"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat");
        self.server = Some(child);
    }

    /// From A: ping B and the router's bridge address, ping A from B, one TCP exchange A→B.
    fn traffic(&self) {
        let (b, br, a) = (
            B4.parse().unwrap(),
            BR4.parse().unwrap(),
            A4.parse().unwrap(),
        );
        netns::run_in(&self.a.path(), move || {
            ping(b, 0x2101);
            ping(br, 0x2102);
            tcp_echo(SocketAddr::new(b, 8080));
        })
        .expect("enter A");
        netns::run_in(&self.b.path(), move || ping(a, 0x2103)).expect("enter B");
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        if let Some(c) = &mut self.server {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One ICMP / ICMPv6 echo request with identifier `id` from a raw socket (no ping binary
/// needed; the kernel fills in ICMPv6 checksums), then time for the reply.
fn ping(to: IpAddr, id: u16) {
    let [hi, lo] = id.to_be_bytes();
    let t = if to.is_ipv4() { 8u8 } else { 128 };
    let mut m = vec![t, 0, 0, 0, hi, lo, 0, 1];
    m.extend_from_slice(b"bridged");
    if to.is_ipv4() {
        let c = checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
    }
    // SAFETY: plain socket calls on a socket we own; the sockaddr is fully initialised.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let (fam, proto, len) = match to {
            IpAddr::V4(a) => {
                let sin = &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in);
                sin.sin_family = libc::AF_INET as u16;
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                let len = std::mem::size_of::<libc::sockaddr_in>();
                (libc::AF_INET, libc::IPPROTO_ICMP, len)
            }
            IpAddr::V6(a) => {
                let sin6 = &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6);
                sin6.sin6_family = libc::AF_INET6 as u16;
                sin6.sin6_addr.s6_addr = a.octets();
                let len = std::mem::size_of::<libc::sockaddr_in6>();
                (libc::AF_INET6, libc::IPPROTO_ICMPV6, len)
            }
        };
        let fd = libc::socket(fam, libc::SOCK_RAW, proto);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let n = libc::sendto(
            fd,
            m.as_ptr() as *const libc::c_void,
            m.len(),
            0,
            &ss as *const _ as *const libc::sockaddr,
            len as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n as usize, m.len(), "raw sendto: {err}");
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// Connect, send a line, read the echo, close.
fn tcp_echo(to: SocketAddr) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connect {to}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"over the bridge\n").unwrap();
    let mut buf = [0u8; 16];
    s.read_exact(&mut buf).expect("echo");
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
}

/// `iptrace capture --compare-trace` on the router while the scenario's traffic runs, stopped
/// once the namespaces are quiet: (exit code, the compare report, kernel TRACE lines, lost
/// kernel log records).
fn capture_run(
    test: &str,
    bin: &Path,
    topo: &Topo,
    sc: &Scenario,
    recording: &Path,
) -> (Option<i32>, Value, Vec<String>, usize) {
    let kmsg = TraceLog::open(&MINE);
    let mut quiet = Quiet::watch(&[topo.a.path(), topo.b.path(), topo.router.path()]);
    let mut cmd = compare_trace_command(bin, &topo.router.path());
    // A safety cap: the capture is stopped once the traffic is over and the lab quiet.
    cmd.args(["--duration", "12", "--format", "json", "--write"])
        .arg(recording)
        .arg(sc.filter);
    let child = CaptureChild::start(test, &mut cmd);
    (sc.traffic)(topo);
    let done = child.stop_when_quiet(&mut quiet, QUIET_PERIOD);
    drop(quiet);
    let stdout = done.stdout;
    let report = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|l| l.get("compare").cloned())
        .unwrap_or_else(|| panic!("{test}: no compare line:\n{stdout}"));
    // The JSON lines name the ports of a forwarded bridged packet's hooks (A to B).
    assert!(
        stdout.contains("\"out\":\"brg0\",\"physin\":\"bpa0\",\"physout\":\"bpb0\","),
        "{test}: no JSON hook with the bridge ports:\n{stdout}"
    );
    let (kernel, lost) = kmsg.finish();
    (done.status.code(), report, kernel, lost)
}

/// Lines only the kernel printed and lines only iptrace printed (multisets).
fn differences(kernel: &[String], ours: &[String]) -> Vec<String> {
    let mut only_ours: Vec<&String> = ours.iter().collect();
    let mut diffs = Vec::new();
    for k in kernel {
        match only_ours.iter().position(|o| *o == k) {
            Some(i) => {
                only_ours.swap_remove(i);
            }
            None => diffs.push(format!("kernel only: {k}")),
        }
    }
    diffs.extend(only_ours.iter().map(|o| format!("iptrace only: {o}")));
    diffs
}

#[test]
fn bridged_physdev_legacy() {
    run_scenario(&physdev_scenario(), IptablesBackend::Legacy);
}

#[test]
fn bridged_physdev_nft() {
    run_scenario(&physdev_nft_scenario(), IptablesBackend::Nft);
}

#[test]
fn bridged_dnat_legacy() {
    run_scenario(&dnat_scenario(), IptablesBackend::Legacy);
}

#[test]
fn bridged_dnat_nft() {
    run_scenario(&dnat_scenario(), IptablesBackend::Nft);
}

#[test]
fn bridged_v6_legacy() {
    run_scenario(&v6_scenario(), IptablesBackend::Legacy);
}

/// One scenario on one iptables backend: the rule paths agree with the kernel's trace (legacy
/// TRACE in the kernel log / `nft monitor trace`); legacy also compares the TRACE lines.
fn run_scenario(sc: &Scenario, backend: IptablesBackend) {
    let test = &format!("capture_bridge_{}_{backend}", sc.name);
    let tools: &[&str] = match backend {
        IptablesBackend::Nft => &["socat", "nft"],
        _ => &["socat"],
    };
    if !e2e::lab_ready(test, backend) || !e2e::require_tools(test, tools) {
        return;
    }
    if !Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        e2e::skipped(
            test,
            "br_netfilter is not loaded (no bridge-nf-call-iptables)",
        );
        return;
    }
    let _lock = machine_lock(test);
    let Some(bin) = e2e::iptrace_bin() else {
        e2e::skipped(test, "no iptrace binary (cargo build first)");
        return;
    };
    let mut topo = Topo::up();
    topo.restore(backend, &sc.rules, sc.v6);
    topo.serve(sc.v6);
    // Let the bridge's unsolicited IGMP reports (after its address came up) pass first.
    std::thread::sleep(Duration::from_millis(2500));
    let recording = TempFile(std::env::temp_dir().join(format!(
        "iptrace-bridge-{}-{}.iptrace",
        std::process::id(),
        sc.name
    )));
    let (code, report, kernel, lost) = capture_run(test, &bin, &topo, sc, &recording.0);
    let warnings = report["report"]["warnings"].to_string();
    if warnings.contains("exited early") {
        e2e::skipped(
            test,
            &format!("the kernel's reference could not be collected: {warnings}"),
        );
        return;
    }
    let totals = &report["report"]["totals"];
    eprintln!("{test}: totals {totals}");
    let packets: Vec<&Value> = report["report"]["packets"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let differing: Vec<&&Value> = packets
        .iter()
        .filter(|p| !matches!(p["outcome"].as_str(), Some("agree" | "only_in_reference")))
        .collect();
    assert!(differing.is_empty(), "{test}: {differing:#?}");
    assert_eq!(code, Some(0), "{test}: exit code; report {report:#}");
    assert_eq!(totals["differ"], 0, "{test}: {report:#}");
    assert!(
        totals["agree"].as_u64().unwrap() >= sc.min_agree,
        "{test}: too few packets compared: {report:#}"
    );
    let ours_only_in_reference: Vec<&&Value> = packets
        .iter()
        .filter(|p| p["outcome"] == "only_in_reference")
        .filter(|p| mine(p["summary"].as_str().unwrap_or("")))
        // The router's IGMP reports for the bridge's multicast groups: sent on their own
        // timer, possibly between the TRACE rule's insertion and the probes' attachment.
        .filter(|p| !p["summary"].as_str().unwrap_or("").contains(" > 224.0.0."))
        .collect();
    assert!(
        ours_only_in_reference.is_empty(),
        "{test}: traced by the kernel, not captured: {ours_only_in_reference:#?}"
    );
    if backend != IptablesBackend::Legacy {
        return;
    }
    if lost > 0 {
        e2e::skipped(
            &format!("{test} (TRACE line comparison)"),
            &format!("{lost} kernel log records were overwritten before they were read"),
        );
        return;
    }
    let ours = replay_lines(&bin, &recording.0, mine);
    for step in sc.steps {
        let needle = format!("TRACE: {step} ");
        assert!(
            kernel.iter().any(|l| l.starts_with(&needle)),
            "{test}: the kernel's trace lacks {step}:\n{}",
            kernel.join("\n")
        );
    }
    for text in sc.text {
        assert!(
            kernel.iter().any(|l| l.contains(text)),
            "{test}: no kernel TRACE line contains {text:?}:\n{}",
            kernel.join("\n")
        );
        assert!(
            ours.iter().any(|l| l.contains(text)),
            "{test}: no iptrace TRACE line contains {text:?}"
        );
    }
    // The router's IGMP reports (see above): a report the kernel traced before the probes
    // were attached has no captured counterpart. Only such kernel-only lines are set aside.
    let mut diffs = differences(&kernel, &ours);
    let before = diffs.len();
    diffs.retain(|d| !(d.starts_with("kernel only: ") && d.contains(" DST=224.0.0.")));
    if diffs.len() != before {
        eprintln!(
            "{test}: NOTE: {} kernel-only TRACE lines of IGMP reports set aside",
            before - diffs.len()
        );
    }
    assert!(
        diffs.is_empty(),
        "{test}: {} TRACE lines differ (kernel {}, iptrace {}):\n{}",
        diffs.len(),
        kernel.len(),
        ours.len(),
        diffs.join("\n")
    );
    eprintln!(
        "{test}: {} kernel TRACE lines, iptrace's equal",
        kernel.len()
    );
}
