//! Live rule dumps: the iptables rules of each traced network namespace, taken with the save
//! command of the backend in use there, cached per netns and re-taken when the ruleset
//! changes, plus the netns's addresses ([`NetContext`]) for `-m addrtype`.
//!
//! Backend: both `iptables-legacy-save` and `iptables-nft-save` are run inside the netns;
//! the one whose dump has tables is the one in use. If both have rules the kernel runs both
//! (legacy tables and nft chains are registered side by side); iptrace replays the one with
//! more rules and says so — never silently.
//!
//! Staleness: [`RuleSource::refresh`] re-dumps and compares the dump text without counters
//! and comments (the fingerprint); a change makes a new generation. Callers refresh before
//! reconstructing each batch of packets (at most every `min_interval`), so packets are never
//! resolved against a dump older than that interval; a recording stores every generation.

use crate::capture::plan::RuleView;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use trace_core::eval::{Evaluator, IfaceAddr, NetContext};
use trace_core::netfilter::Family;
use trace_core::packet::PacketTrace;
use trace_core::reconstruct::{reconstruct, unresolved, ReconstructedPacket};
use trace_core::record::{Record, RecordingWriter};
use trace_core::rules::{self, ParseOptions, Ruleset};

/// Reads and parses a dump file (`--rules FILE`, `-` = stdin); errors name file:line:col.
pub fn load_dump_file(path: &Path) -> Result<Ruleset> {
    let bytes = if path == Path::new("-") {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
        v
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    rules::parse_bytes(&bytes, ParseOptions::default())
        .map_err(|e| anyhow::anyhow!("{}", e.with_file(&path.display().to_string())))
}

/// Which iptables backend a dump came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveBackend {
    Legacy,
    Nft,
}

impl SaveBackend {
    fn command(self, family: Family) -> &'static str {
        match (self, family) {
            (SaveBackend::Legacy, Family::Ipv4) => "iptables-legacy-save",
            (SaveBackend::Legacy, Family::Ipv6) => "ip6tables-legacy-save",
            (SaveBackend::Nft, Family::Ipv4) => "iptables-nft-save",
            (SaveBackend::Nft, Family::Ipv6) => "ip6tables-nft-save",
        }
    }
}

/// One dump in force.
#[derive(Clone)]
pub struct Dump {
    pub backend: SaveBackend,
    pub text: Arc<str>,
    pub generation: u64,
    pub evaluator: Arc<Evaluator>,
    fingerprint: String,
}

/// What a refresh found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub netns: u32,
    pub family: Family,
    pub generation: u64,
}

struct NetnsState {
    path: PathBuf,
    dumps: HashMap<Family, Dump>,
    ctx: Arc<NetContext>,
    taken: Option<Instant>,
}

/// Rules per traced netns (keyed by netns inode, as events carry it).
pub struct RuleSource {
    netns: HashMap<u32, NetnsState>,
    override_rules: Option<(Family, Arc<Evaluator>)>,
    min_interval: Duration,
    next_generation: u64,
    /// Notes for the user (both backends in use, save command missing...), drained by callers.
    pub warnings: Vec<String>,
}

impl RuleSource {
    /// Live dumps for these namespaces (inode, path such as /run/netns/NAME or
    /// /proc/PID/ns/net), re-taken at most every `min_interval`.
    pub fn live(targets: &[(u32, PathBuf)], min_interval: Duration) -> Self {
        let netns = targets
            .iter()
            .map(|(ino, path)| {
                (
                    *ino,
                    NetnsState {
                        path: path.clone(),
                        dumps: HashMap::new(),
                        ctx: Arc::new(NetContext::unknown()),
                        taken: None,
                    },
                )
            })
            .collect();
        RuleSource {
            netns,
            override_rules: None,
            min_interval,
            next_generation: 1,
            warnings: Vec::new(),
        }
    }

    /// `--rules FILE`: this dump for every netns (of its family); nothing is taken live.
    pub fn with_override(mut self, rs: Ruleset) -> Self {
        self.override_rules = Some((rs.family, Arc::new(Evaluator::new(rs))));
        self
    }

    /// The evaluator, host context and generation for packets of (netns, family).
    pub fn rules_for(
        &self,
        netns: u32,
        family: Family,
    ) -> Result<(Arc<Evaluator>, Arc<NetContext>, u64)> {
        let st = self.netns.get(&netns);
        let ctx = st
            .map(|s| s.ctx.clone())
            .unwrap_or_else(|| Arc::new(NetContext::unknown()));
        if let Some((fam, ev)) = &self.override_rules {
            if *fam != family {
                bail!("--rules holds {fam:?} rules, the packet is {family:?}");
            }
            return Ok((ev.clone(), ctx, 0));
        }
        let st = st.with_context(|| format!("netns {netns} is not traced"))?;
        let d = st
            .dumps
            .get(&family)
            .with_context(|| format!("no {family:?} rule dump for netns {netns} (see warnings)"))?;
        Ok((d.evaluator.clone(), ctx, d.generation))
    }

    /// The traced namespaces (inodes).
    pub fn netns_inodes(&self) -> Vec<u32> {
        self.netns.keys().copied().collect()
    }

    /// What the dumps in force say for planning probes ([`RuleView`]): the iptables-legacy
    /// dump of each family read from that backend. None for a netns not traced.
    pub fn rule_view(&self, netns: u32) -> Option<RuleView> {
        let st = self.netns.get(&netns)?;
        let legacy = st
            .dumps
            .iter()
            .filter(|(_, d)| d.backend == SaveBackend::Legacy)
            .map(|(f, d)| (*f, d.evaluator.ruleset_arc().clone()))
            .collect();
        Some(RuleView { legacy })
    }

    /// The dump in force (for recordings).
    pub fn dump(&self, netns: u32, family: Family) -> Option<&Dump> {
        self.netns.get(&netns)?.dumps.get(&family)
    }

    pub fn context(&self, netns: u32) -> Option<Arc<NetContext>> {
        self.netns.get(&netns).map(|s| s.ctx.clone())
    }

    /// Reconstructs one captured packet against the dump in force for its netns and family
    /// (call [`RuleSource::refresh`] first, once per batch). Without a usable dump the
    /// packet comes back with every table inconsistent and the reason.
    pub fn reconstruct(&self, p: &PacketTrace) -> ReconstructedPacket {
        match self.rules_for(p.netns, p.family) {
            Ok((ev, ctx, _)) => reconstruct(p, &ev, &ctx),
            Err(e) => unresolved(p, &format!("{e:#}")),
        }
    }

    /// The records announcing `changes` (from [`RuleSource::refresh`]): each new dump with its
    /// generation, and the netns's host context. Feed them to a
    /// `trace_core::record::replay::Replayer` (and a recording) before the events that follow,
    /// so packets are resolved against the dump in force when they were captured:
    ///
    /// ```text
    /// let changes = rules.refresh();                 // once per batch of events
    /// for r in rules.records(&changes) { replayer.push(r.clone()); writer.write_record(&r)?; }
    /// ```
    pub fn records(&self, changes: &[Change]) -> Vec<Record> {
        let mut out = Vec::new();
        let mut ctx_done = Vec::new();
        for c in changes {
            if let Some(d) = self.dump(c.netns, c.family) {
                out.push(Record::Ruleset {
                    netns: c.netns,
                    family: c.family,
                    generation: d.generation,
                    text: d.text.to_string(),
                });
            }
            if !ctx_done.contains(&c.netns) {
                if let Some(ctx) = self.context(c.netns) {
                    out.push(Record::Netinfo {
                        netns: c.netns,
                        context: (*ctx).clone(),
                    });
                }
                ctx_done.push(c.netns);
            }
        }
        out
    }

    /// Writes [`RuleSource::records`] of `changes` to a recording.
    pub fn record_changes<W: std::io::Write>(
        &self,
        changes: &[Change],
        w: &mut RecordingWriter<W>,
    ) -> std::io::Result<()> {
        self.records(changes)
            .iter()
            .try_for_each(|r| w.write_record(r))
    }

    /// Re-takes the dumps (and addresses) of every netns whose last dump is older than the
    /// minimum interval; returns the (netns, family) whose ruleset changed.
    pub fn refresh(&mut self) -> Vec<Change> {
        if self.override_rules.is_some() {
            return Vec::new();
        }
        let due: Vec<u32> = self
            .netns
            .iter()
            .filter(|(_, s)| s.taken.is_none_or(|t| t.elapsed() >= self.min_interval))
            .map(|(k, _)| *k)
            .collect();
        let mut changes = Vec::new();
        for ino in due {
            changes.extend(self.refresh_one(ino));
        }
        changes
    }

    fn refresh_one(&mut self, ino: u32) -> Vec<Change> {
        let path = self.netns[&ino].path.clone();
        let mut changes = Vec::new();
        match take_context(&path) {
            Ok(ctx) => self.netns.get_mut(&ino).expect("known").ctx = Arc::new(ctx),
            Err(e) => self.warnings.push(format!(
                "netns {ino}: addresses unknown ({e:#}); -m addrtype becomes a branch point"
            )),
        }
        for family in [Family::Ipv4, Family::Ipv6] {
            match take_dump(&path, family) {
                Ok(None) => {
                    self.netns
                        .get_mut(&ino)
                        .expect("known")
                        .dumps
                        .remove(&family);
                }
                Ok(Some((backend, text, note))) => {
                    if let Some(n) = note {
                        self.warnings.push(format!("netns {ino}: {n}"));
                    }
                    if let Some(c) = self.install(ino, family, backend, text) {
                        changes.push(c);
                    }
                }
                Err(e) => self.warnings.push(format!(
                    "netns {ino}: {family:?} rules not available: {e:#}"
                )),
            }
        }
        self.netns.get_mut(&ino).expect("known").taken = Some(Instant::now());
        changes
    }

    /// Keeps `text` as the dump of (netns, family) if it differs from the one in force.
    fn install(
        &mut self,
        ino: u32,
        family: Family,
        backend: SaveBackend,
        text: String,
    ) -> Option<Change> {
        let fp = fingerprint(&text);
        let st = self.netns.get_mut(&ino).expect("known");
        if st
            .dumps
            .get(&family)
            .is_some_and(|d| d.fingerprint == fp && d.backend == backend)
        {
            return None;
        }
        let rs = match rules::parse_with(
            &text,
            ParseOptions {
                family: Some(family),
            },
        ) {
            Ok(rs) => rs,
            Err(e) => {
                self.warnings.push(format!(
                    "netns {ino}: {} output does not parse: {e}",
                    backend.command(family)
                ));
                st.dumps.remove(&family);
                return None;
            }
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        st.dumps.insert(
            family,
            Dump {
                backend,
                text: text.into(),
                generation,
                evaluator: Arc::new(Evaluator::new(rs)),
                fingerprint: fp,
            },
        );
        Some(Change {
            netns: ino,
            family,
            generation,
        })
    }
}

/// The dump without what changes on every save: counters and `#` comment lines (dates).
pub fn fingerprint(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let line = match line.strip_prefix('[') {
            // `[p:b] -A ...`
            Some(rest) if line.contains("] -A ") => rest.split_once("] ").map_or(line, |(_, r)| r),
            _ => line,
        };
        // `:CHAIN POLICY [p:b]`
        let line = if line.starts_with(':') {
            line.rsplit_once(" [").map_or(line, |(l, _)| l)
        } else {
            line
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Runs a command inside the namespace at `path`; stdout on success.
fn run_in_netns(path: &Path, argv: &[&str]) -> Result<String> {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let shown = argv.join(" ");
    let out = crate::netns::run_in(path, move || {
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .output()
    })?
    .with_context(|| format!("running `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8 output"))
}

fn has_tables(dump: &str) -> bool {
    dump.lines().any(|l| l.starts_with('*'))
}

fn rule_lines(dump: &str) -> usize {
    dump.lines().filter(|l| l.contains("-A ")).count()
}

/// Takes the dump of the backend in use: (backend, text, note) or None when neither backend
/// has tables in this netns.
fn take_dump(path: &Path, family: Family) -> Result<Option<(SaveBackend, String, Option<String>)>> {
    let legacy = run_in_netns(path, &[SaveBackend::Legacy.command(family)]);
    let nft = run_in_netns(path, &[SaveBackend::Nft.command(family)]);
    let legacy = legacy.ok().filter(|t| has_tables(t));
    let nft = nft.ok().filter(|t| has_tables(t));
    Ok(match (legacy, nft) {
        (None, None) => None,
        (Some(l), None) => Some((SaveBackend::Legacy, l, None)),
        (None, Some(n)) => Some((SaveBackend::Nft, n, None)),
        (Some(l), Some(n)) => {
            let (lr, nr) = (rule_lines(&l), rule_lines(&n));
            let note = format!(
                "both iptables backends have {family:?} tables here (legacy: {lr} rules, nft: {nr} rules); the kernel runs both, iptrace replays the {} one",
                if lr >= nr { "legacy" } else { "nft" }
            );
            if lr >= nr {
                Some((SaveBackend::Legacy, l, Some(note)))
            } else {
                Some((SaveBackend::Nft, n, Some(note)))
            }
        }
    })
}

/// Addresses of the netns from `ip -j addr show`, and its ipsets from `ipset save` (left
/// unknown when that fails: no ipset tool or module — `-m set` then branches).
fn take_context(path: &Path) -> Result<NetContext> {
    let json = run_in_netns(path, &["ip", "-d", "-j", "addr", "show"])?;
    let mut ctx = parse_ip_addr_json(&json)?;
    ctx.ipsets = run_in_netns(path, &["ipset", "save"])
        .ok()
        .and_then(|text| trace_core::eval::ipset::parse_save(&text).ok());
    Ok(ctx)
}

/// Parses `ip -d -j addr show` output (addresses, interfaces, which are bridges).
pub fn parse_ip_addr_json(json: &str) -> Result<NetContext> {
    let v: serde_json::Value = serde_json::from_str(json).context("parsing `ip -j addr show`")?;
    let mut addrs = Vec::new();
    let mut interfaces = Vec::new();
    let mut bridges = Vec::new();
    for link in v
        .as_array()
        .context("`ip -j addr show`: expected an array")?
    {
        let Some(name) = link.get("ifname").and_then(|n| n.as_str()) else {
            continue;
        };
        interfaces.push(name.to_string());
        if link
            .get("linkinfo")
            .and_then(|l| l.get("info_kind"))
            .and_then(|k| k.as_str())
            == Some("bridge")
        {
            bridges.push(name.to_string());
        }
        for a in link
            .get("addr_info")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            let Some(local) = a
                .get("local")
                .and_then(|l| l.as_str())
                .and_then(|l| l.parse().ok())
            else {
                continue;
            };
            // Without a configured `brd`, the kernel still has the subnet broadcast route.
            let prefix_len = a.get("prefixlen").and_then(|p| p.as_u64()).unwrap_or(32);
            let broadcast = a
                .get("broadcast")
                .and_then(|b| b.as_str())
                .and_then(|b| b.parse().ok())
                .or_else(|| {
                    trace_core::eval::context::subnet_broadcast(local, prefix_len.min(32) as u8)
                });
            addrs.push(IfaceAddr {
                iface: name.to_string(),
                addr: local,
                broadcast,
            });
        }
    }
    Ok(NetContext {
        known: true,
        addrs,
        interfaces,
        bridges,
        bridges_known: true,
        ipsets: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_counters_and_dates() {
        let a = "# Generated by iptables-save v1.8.9 on Wed Nov 25 15:46:12 2026\n*filter\n:INPUT ACCEPT [4:244]\n[0:0] -A INPUT -j ACCEPT\nCOMMIT\n# Completed on Wed\n";
        let b = "# Generated by iptables-save v1.8.9 on Thu Nov 26 10:00:00 2026\n*filter\n:INPUT ACCEPT [9:999]\n[7:70] -A INPUT -j ACCEPT\nCOMMIT\n# Completed on Thu\n";
        assert_eq!(fingerprint(a), fingerprint(b));
        assert_ne!(
            fingerprint(a),
            fingerprint(&b.replace("ACCEPT\nCOMMIT", "DROP\nCOMMIT"))
        );
        assert_ne!(
            fingerprint(a),
            fingerprint(&b.replace(":INPUT ACCEPT", ":INPUT DROP"))
        );
    }

    #[test]
    fn parses_ip_addr_json() {
        let j = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
                   {"ifindex":3,"ifname":"br0","linkinfo":{"info_kind":"bridge"},"addr_info":[]},
                   {"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet","local":"192.168.64.4","prefixlen":24,"broadcast":"192.168.64.255"},
                   {"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
        let c = parse_ip_addr_json(j).unwrap();
        assert!(c.known);
        assert_eq!(c.interfaces, ["lo", "br0", "eth0"]);
        assert_eq!(
            (c.is_bridge("br0"), c.is_bridge("eth0")),
            (Some(true), Some(false))
        );
        assert!(c.is_local("192.168.64.4".parse().unwrap(), Some("eth0")));
        assert!(c.is_broadcast("192.168.64.255".parse().unwrap(), None));
        assert!(c.is_local("fe80::1".parse().unwrap(), None));
        // No `brd` configured: the kernel's local table still has the subnet broadcast.
        assert!(c.is_broadcast("127.255.255.255".parse().unwrap(), Some("lo")));
    }

    #[test]
    fn override_applies_to_its_family_only() {
        let rs = rules::parse("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n").unwrap();
        let src = RuleSource::live(&[], Duration::from_secs(1)).with_override(rs);
        assert!(src.rules_for(5, Family::Ipv4).is_ok());
        assert!(src.rules_for(5, Family::Ipv6).is_err());
    }

    /// Privileged: a netns of our own with legacy rules; the dump is found, tagged with its
    /// backend, and a rule change (only) makes a new generation. Skips loudly without root or
    /// without iptables-legacy.
    #[test]
    fn live_dump_detects_backend_and_changes() {
        if unsafe { libc::geteuid() } != 0
            || Command::new("iptables-legacy-save")
                .arg("--version")
                .output()
                .is_err()
        {
            eprintln!(
                "SKIPPED live_dump_detects_backend_and_changes: needs root and iptables-legacy"
            );
            return;
        }
        let ns = crate::netns::NetnsGuard::create("rulesrc").expect("netns");
        let ipt = |args: &[&str]| {
            let mut argv = vec!["iptables-legacy"];
            argv.extend_from_slice(args);
            crate::netns::exec(ns.name(), &argv).expect("iptables-legacy in test netns");
        };
        ipt(&[
            "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
        ]);
        let ino = ns.inode() as u32;
        let mut src = RuleSource::live(&[(ino, ns.path())], Duration::ZERO);
        let first = src.refresh();
        assert!(
            first
                .iter()
                .any(|c| c.netns == ino && c.family == Family::Ipv4),
            "{first:?} {:?}",
            src.warnings
        );
        let d = src.dump(ino, Family::Ipv4).unwrap();
        assert_eq!(d.backend, SaveBackend::Legacy);
        assert!(d.text.contains("--dport 22 -j ACCEPT"));
        let g1 = d.generation;
        assert!(src
            .context(ino)
            .unwrap()
            .is_local("127.0.0.1".parse().unwrap(), None));
        // Counters change, rules do not: same generation.
        ipt(&["-Z"]);
        assert!(src.refresh().iter().all(|c| c.family != Family::Ipv4));
        ipt(&["-t", "filter", "-I", "INPUT", "1", "-j", "DROP"]);
        let changed = src.refresh();
        let g2 = src.dump(ino, Family::Ipv4).unwrap().generation;
        assert!(changed
            .iter()
            .any(|c| c.netns == ino && c.family == Family::Ipv4 && c.generation == g2));
        assert!(g2 > g1);
        let recs = src.records(&changed);
        assert!(recs
            .iter()
            .any(|r| matches!(r, Record::Ruleset { generation, .. } if *generation == g2)));
        assert!(recs
            .iter()
            .any(|r| matches!(r, Record::Netinfo { netns, .. } if *netns == ino)));
        let (ev, _, g) = src.rules_for(ino, Family::Ipv4).unwrap();
        assert_eq!(g, g2);
        assert_eq!(
            ev.ruleset()
                .table(trace_core::netfilter::Table::Filter)
                .unwrap()
                .chain("INPUT")
                .unwrap()
                .rules
                .len(),
            2
        );
    }
}
