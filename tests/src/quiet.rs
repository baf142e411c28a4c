//! "The test's network has gone quiet": when a capture may be stopped without cutting a packet
//! off (captured but not in the kernel's reference, or the other way round).
//!
//! A capture run with a fixed `--duration` waits long after the traffic; stopping right
//! after the traffic function returns can cut off what the kernel still sends on its own
//! timers. The namespaces are quiet when, for a whole period, none of these says otherwise:
//! - their IP/IPv6 counters (`/proc/net/snmp`, `snmp6`) do not move: no packet sent,
//!   received or forwarded;
//! - no TCP socket has anything left to send (SYN/FIN handshakes in progress, CLOSE_WAIT
//!   before its FIN, unacknowledged data): retransmission timers can be seconds long;
//! - no neighbour entry is being resolved (INCOMPLETE: a queued packet goes out, or an ICMP
//!   error comes back, seconds later) or, on IPv6, about to be probed (DELAY, PROBE: the
//!   probe is an ICMPv6 neighbour solicitation, 5 s after the entry was used; link-local
//!   neighbours excepted: their probes come from link-local addresses, which no test
//!   captures);
//! - no netlink-netfilter socket has unread messages (an `nft monitor trace` that has not yet
//!   printed what the kernel queued for it).
//!
//! The files are opened inside each namespace once and re-read (a /proc/net file stays bound
//! to the namespace it was opened in): polling costs no thread or process per sample.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Polling interval.
const POLL: Duration = Duration::from_millis(50);

/// The namespaces of one test, watched for activity. Holds a reference to each namespace
/// while alive (the open files): drop it before deleting them.
pub struct Quiet {
    watched: Vec<Watched>,
}

struct Watched {
    path: PathBuf,
    counters: [File; 2],
    tcp: [File; 2],
    netlink: File,
}

/// How a wait ended.
#[derive(Debug)]
pub enum Waited {
    /// Quiet for the whole period: how long the wait took, and the last thing found busy
    /// while the counters stood still (what made it longer).
    Quiet {
        after: Duration,
        waited_for: Vec<String>,
    },
    /// `give_up` said stop first; what was still busy (empty when only the counters moved).
    GaveUp(Vec<String>),
}

impl Quiet {
    /// Opens the files of every namespace in `paths` (netns bind mounts).
    pub fn watch(paths: &[PathBuf]) -> Quiet {
        let watched = paths
            .iter()
            .map(|p| {
                let path = p.clone();
                trace_user::netns::run_in(p, move || Watched::open(path))
                    .unwrap_or_else(|e| panic!("entering {}: {e}", p.display()))
            })
            .collect();
        Quiet { watched }
    }

    /// Blocks until the namespaces have been quiet for `period`, or `give_up()` returns true
    /// (checked every poll: e.g. the capture ended by itself).
    pub fn wait(&mut self, period: Duration, mut give_up: impl FnMut() -> bool) -> Waited {
        let start = Instant::now();
        let mut last = self.counters();
        let mut since = Instant::now();
        let mut waited_for = Vec::new();
        loop {
            if give_up() {
                return Waited::GaveUp(self.busy());
            }
            std::thread::sleep(POLL);
            let now = self.counters();
            if now != last {
                (last, since) = (now, Instant::now());
                continue;
            }
            if since.elapsed() < period {
                continue;
            }
            // The counters stood still for the period: is anything about to send?
            let busy = self.busy();
            if busy.is_empty() {
                return Waited::Quiet {
                    after: start.elapsed(),
                    waited_for,
                };
            }
            waited_for = busy;
            since = Instant::now();
        }
    }

    /// The IP and IPv6 counters of every namespace, as text (any change is activity).
    fn counters(&mut self) -> Vec<String> {
        self.watched
            .iter_mut()
            .flat_map(|w| w.counters.iter_mut().map(reread))
            .collect()
    }

    /// What is still about to send or deliver, described (empty: nothing).
    fn busy(&mut self) -> Vec<String> {
        let mut busy = Vec::new();
        for w in &mut self.watched {
            let mut here = Vec::new();
            for f in &mut w.tcp {
                here.extend(busy_tcp(&reread(f)));
            }
            here.extend(busy_netlink(&reread(&mut w.netlink)));
            let neighbours = resolving_neighbours(&w.path);
            here.extend(neighbours.into_iter().map(|n| format!("neighbour {n}")));
            let ns = w.path.display();
            busy.extend(here.into_iter().map(|s| format!("{ns}: {s}")));
        }
        busy
    }
}

impl Watched {
    /// Runs inside the namespace: /proc/thread-self/net is this thread's namespace (not
    /// /proc/self/net, the main thread's).
    fn open(path: PathBuf) -> Watched {
        let open = |name: &str| {
            let p = Path::new("/proc/thread-self/net").join(name);
            File::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        Watched {
            path,
            counters: [open("snmp"), open("snmp6")],
            tcp: [open("tcp"), open("tcp6")],
            netlink: open("netlink"),
        }
    }
}

/// The whole file, read again from the start.
fn reread(f: &mut File) -> String {
    let mut s = String::new();
    f.rewind().expect("rewind /proc/net file");
    f.read_to_string(&mut s).expect("read /proc/net file");
    s
}

/// TCP sockets (`/proc/net/tcp` format) with something left to send: a handshake or close in
/// progress, a FIN still to come (CLOSE_WAIT), or queued data.
fn busy_tcp(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote, state, queues) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(4)?);
            let tx = queues.split(':').next()?;
            let name = match *state {
                "02" => "SYN_SENT",
                "03" => "SYN_RECV",
                "04" => "FIN_WAIT1",
                "08" => "CLOSE_WAIT",
                "09" => "LAST_ACK",
                "0B" => "CLOSING",
                _ if u32::from_str_radix(tx, 16).is_ok_and(|n| n > 0) => "unsent/unacked data",
                _ => return None,
            };
            Some(format!("tcp {local} -> {remote} {name}"))
        })
        .collect()
}

/// NETLINK_NETFILTER sockets (`/proc/net/netlink`) with unread messages.
fn busy_netlink(table: &str) -> Vec<String> {
    const NETLINK_NETFILTER: &str = "12";
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (eth, pid, rmem) = (f.get(1)?, f.get(2)?, f.get(4)?);
            (*eth == NETLINK_NETFILTER && *rmem != "0")
                .then(|| format!("netfilter netlink socket of pid {pid}: {rmem} bytes unread"))
        })
        .collect()
}

/// Neighbour entries whose resolution will still send IP packets (`ip neigh`, run inside the
/// namespace): INCOMPLETE (packets queued, or an ICMP error to come) in both families; on
/// IPv6 also DELAY and PROBE (neighbour solicitations are ICMPv6, a capture sees them — on
/// IPv4 the probes are ARP).
fn resolving_neighbours(path: &Path) -> Vec<String> {
    let out = trace_user::netns::run_in(path, || {
        std::process::Command::new("ip")
            .args(["neigh", "show", "nud", "incomplete", "nud", "delay"])
            .args(["nud", "probe"])
            .output()
    })
    .expect("enter netns")
    .expect("ip neigh");
    sends_ip(&String::from_utf8_lossy(&out.stdout))
}

/// The `ip neigh` lines (INCOMPLETE, DELAY or PROBE entries) that will send IP packets a
/// capture of these tests can see: a link-local neighbour is probed from a link-local address,
/// which no test's filter selects (and which would keep a quiet lab busy for seconds).
fn sends_ip(neigh: &str) -> Vec<String> {
    neigh
        .lines()
        .filter(|l| {
            let addr = l.split_whitespace().next().unwrap_or("");
            let probed_v6 = addr.contains(':') && !addr.starts_with("fe80:");
            probed_v6 || l.trim_end().ends_with("INCOMPLETE")
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_states_that_still_send() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0201D50A:9C40 0202D50A:1F90 06 00000000:00000000 03:00001000 00000000     0        0 0 3
   2: 0201D50A:9C41 0202D50A:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   3: 0201D50A:9C42 0202D50A:1F90 01 0000000E:00000000 01:00000014 00000000     0        0 3 1
   4: 0202D50A:1F90 0201D50A:9C43 08 00000000:00000000 00:00000000 00000000     0        0 4 1
   5: 0201D50A:9C44 0202D50A:1F90 05 00000000:00000000 00:00000000 00000000     0        0 5 1
";
        let busy = busy_tcp(table);
        assert_eq!(busy.len(), 2, "{busy:?}");
        assert!(busy[0].contains(":9C42") && busy[0].contains("data"));
        assert!(busy[1].ends_with("CLOSE_WAIT"));
    }

    #[test]
    fn neighbours_that_send_ip() {
        let neigh = "10.213.1.2 dev r0 lladdr 12:3c:e5:2e:71:5e DELAY
10.213.1.9 dev r0 INCOMPLETE
fd99:213:1::2 dev r0 lladdr 12:3c:e5:2e:71:5e PROBE
fe80::b4bf:edff:fe8c:713d dev r1 lladdr b6:bf:ed:8c:71:3d DELAY
";
        assert_eq!(
            sends_ip(neigh),
            [
                "10.213.1.9 dev r0 INCOMPLETE",
                "fd99:213:1::2 dev r0 lladdr 12:3c:e5:2e:71:5e PROBE"
            ]
        );
    }

    #[test]
    fn netlink_netfilter_unread() {
        let table = "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode
0000000034658853 0   0          00000000 0        0        0     2        0        4
0000000034658854 12  4242       00000000 2304     0        0     2        0        7
0000000034658855 12  4243       00000000 0        0        0     2        0        8
0000000034658856 0   4244       00000000 999      0        0     2        0        9
";
        assert_eq!(
            busy_netlink(table),
            ["netfilter netlink socket of pid 4242: 2304 bytes unread"]
        );
    }
}
