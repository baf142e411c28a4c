//! `iptrace compare`: agreement report between iptrace's packets and the kernel's own output
//! (legacy TRACE/LOG lines, `xtables-monitor --trace`, `nft monitor trace`).
//!
//! Exit status: 0 every paired packet agrees, 1 a packet differs (or nothing could be
//! paired), 2 bad input (unreadable or unparsable file, a ruleset needed but not given).

use anyhow::{bail, Context};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use trace_core::compare::captured::{self, CapturedPacket};
use trace_core::compare::matching::MatchOptions;
use trace_core::compare::nft_ruleset::{self, NftRuleset};
use trace_core::compare::reference::{self, Format};
use trace_core::compare::report::Report;
use trace_core::compare::resolve::Resolver;
use trace_core::compare::scope::{is_mac, NetnsScope, ScopeIface};
use trace_core::netfilter::Family;
use trace_core::rules::Ruleset;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefFormat {
    /// Detect from the content.
    Auto,
    /// Kernel log lines with legacy `TRACE:` (dmesg, /dev/kmsg, syslog, journalctl).
    Trace,
    /// Kernel log lines of LOG rules (same sources as `trace`).
    Log,
    /// `xtables-monitor --trace` output.
    XtablesMonitor,
    /// `nft monitor trace` output.
    NftMonitor,
}

impl RefFormat {
    fn format(self) -> Option<Format> {
        match self {
            RefFormat::Auto => None,
            RefFormat::Trace | RefFormat::Log => Some(Format::KernelLog),
            RefFormat::XtablesMonitor => Some(Format::XtablesMonitor),
            RefFormat::NftMonitor => Some(Format::NftMonitor),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The kernel's output for the same traffic (`-` = stdin).
    #[arg(long, short = 'r', value_name = "FILE")]
    pub reference: PathBuf,
    /// Format of the reference.
    #[arg(long, value_enum, default_value_t = RefFormat::Auto)]
    pub format: RefFormat,
    /// iptables-save output of the packets' netns (maps LOG prefixes and xtables-monitor rule
    /// text to positions; gives TRACE labels).
    #[arg(long, value_name = "FILE")]
    pub ruleset: Option<PathBuf>,
    /// `nft -a list ruleset` of the packets' netns (maps nft rule handles and rule text).
    #[arg(long, value_name = "FILE")]
    pub nft_ruleset: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// How many differing packets to show side by side.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub max_diffs: usize,
    /// Only pair packets whose monotonic timestamps (dmesg/kmsg vs capture) are this close.
    #[arg(long, value_name = "SECONDS")]
    pub time_window: Option<f64>,
    /// The interfaces of the captured netns, `NAME` or `NAME=MAC` (comma separated; `ip -br
    /// link` inside it lists them). A kernel log written with nf_log_all_netns=1 holds every
    /// netns's lines: packets showing another interface, or received on one of these for
    /// another MAC, are set aside as foreign (counted and listed, not compared).
    #[arg(long, value_name = "IFACES", value_delimiter = ',')]
    pub netns_ifaces: Vec<String>,
    /// iptrace's packets: JSON lines from `iptrace capture|replay --format json`, or a
    /// recording from `iptrace capture --write` (reconstructed here); `-` = stdin.
    #[arg(value_name = "CAPTURED")]
    pub captured: PathBuf,
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        return Ok(s);
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 text (byte offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

fn load_dump(path: &Path) -> anyhow::Result<Ruleset> {
    let text = read_input(path)?;
    trace_core::rules::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}", e.with_file(&path.display().to_string())))
}

fn load_nft(path: &Path) -> anyhow::Result<NftRuleset> {
    nft_ruleset::parse(&read_input(path)?).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// iptrace's packets, and the iptables dump a recording holds for them (None for JSON lines).
fn load_captured(path: &Path) -> anyhow::Result<(Vec<CapturedPacket>, Option<String>)> {
    let text = read_input(path)?;
    if text.starts_with(trace_core::record::MAGIC) {
        return replay_recording(path, &text);
    }
    let packets =
        captured::parse_jsonl(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((packets, None))
}

/// The rule dumps of a recording as it is read: the last one per (netns, family) and how
/// many generations each had.
#[derive(Default)]
struct RecordedDumps {
    last: std::collections::HashMap<(u32, Family), (String, usize)>,
}

impl RecordedDumps {
    fn see(&mut self, rec: &trace_core::record::Record) {
        if let trace_core::record::Record::Ruleset {
            netns,
            family,
            text,
            ..
        } = rec
        {
            let e = self
                .last
                .entry((*netns, *family))
                .or_insert_with(|| (String::new(), 0));
            *e = (text.clone(), e.1 + 1);
        }
    }

    /// The dump of the (netns, family) most packets belong to: what the reference's rule text
    /// and positions refer to (the reference traces one netns). Says what it chose when the
    /// choice was not unique.
    fn for_packets(
        mut self,
        path: &Path,
        packets: &[trace_core::reconstruct::ReconstructedPacket],
    ) -> Option<String> {
        let mut count: std::collections::HashMap<(u32, Family), usize> = Default::default();
        for p in packets {
            *count.entry((p.packet.netns, p.packet.family)).or_default() += 1;
        }
        let key = count
            .iter()
            .filter(|(k, _)| self.last.contains_key(k))
            .max_by_key(|(_, n)| **n)
            .map(|(k, _)| *k)?;
        let (text, generations) = self.last.remove(&key)?;
        if count.len() > 1 || generations > 1 {
            eprintln!(
                "iptrace compare: {}: using the last of the {generations} recorded {:?} dump(s) of netns {} (the recording has packets of {} netns/family); give --ruleset to choose",
                path.display(),
                key.1,
                key.0,
                count.len()
            );
        }
        Some(text)
    }
}

/// A recording (`capture --write`) is reconstructed in process, as `iptrace replay` does. A
/// damaged recording is bad input: comparing only its prefix would hide packets.
fn replay_recording(
    path: &Path,
    text: &str,
) -> anyhow::Result<(Vec<CapturedPacket>, Option<String>)> {
    let reader = trace_core::record::RecordingReader::new(std::io::Cursor::new(text.as_bytes()))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut replayer = trace_core::record::replay::Replayer::new(None);
    let mut packets = Vec::new();
    let mut dumps = RecordedDumps::default();
    for item in reader {
        let (_, rec) = item.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        dumps.see(&rec);
        packets.extend(replayer.push(rec));
    }
    packets.extend(replayer.finish());
    for w in replayer.take_warnings() {
        eprintln!("iptrace compare: {}: warning: {w}", path.display());
    }
    let lost = replayer.stats().lost_events;
    if lost > 0 {
        eprintln!(
            "iptrace compare: {}: {lost} events were lost during capture",
            path.display()
        );
    }
    if packets.is_empty() {
        bail!("{}: the recording holds no packet", path.display());
    }
    let captured = packets
        .iter()
        .enumerate()
        .map(|(i, rp)| CapturedPacket {
            index: i,
            ..CapturedPacket::from(rp)
        })
        .collect();
    Ok((captured, dumps.for_packets(path, &packets)))
}

/// Runs the comparison on already-loaded inputs.
pub fn compare_text(
    reference_text: &str,
    format: Option<Format>,
    captured: &[CapturedPacket],
    resolver: &Resolver,
    opts: &MatchOptions,
    scope: Option<&NetnsScope>,
) -> Report {
    let parsed = reference::parse(reference_text, format);
    trace_core::compare::compare_in_scope(&parsed, captured, resolver, opts, scope)
}

/// `--netns-ifaces` items (`NAME` or `NAME=MAC`) as a scope; None when not given.
fn scope_of(items: &[String]) -> anyhow::Result<Option<NetnsScope>> {
    if items.is_empty() {
        return Ok(None);
    }
    let mut scope = NetnsScope::default();
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        let (name, mac) = match item.split_once('=') {
            Some((n, m)) => (n, Some(m)),
            None => (item, None),
        };
        if name.is_empty() || mac.is_some_and(|m| !is_mac(m)) {
            bail!("--netns-ifaces: {item:?} is not NAME or NAME=aa:bb:cc:dd:ee:ff");
        }
        scope.extend([ScopeIface {
            name: name.to_string(),
            mac: mac.map(str::to_ascii_lowercase),
        }]);
    }
    Ok(Some(scope))
}

/// Prints the report (text or JSON) on stdout and returns the exit status.
pub fn print_report(report: &Report, json: bool, max_diffs: usize) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", report.render_text(max_diffs));
    }
    if let Some(why) = &report.missing_ruleset {
        eprintln!("iptrace: error: {why}");
    }
    Ok(ExitCode::from(report.exit_code()))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let scope = scope_of(&args.netns_ifaces)?;
    let reference_text = read_input(&args.reference)?;
    let mut dump = args.ruleset.as_deref().map(load_dump).transpose()?;
    let nft = args.nft_ruleset.as_deref().map(load_nft).transpose()?;
    let (captured, recorded_dump) = load_captured(&args.captured)?;
    if let (None, Some(text)) = (&dump, recorded_dump) {
        // A recording carries the dumps it was reconstructed with: the ruleset the
        // reference's rule text and positions refer to, unless --ruleset says otherwise.
        let rs = trace_core::rules::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: recorded rule dump: {e}", args.captured.display()))?;
        dump = Some(rs);
    }
    let format = args.format.format();
    if format.is_none()
        && Format::detect(&reference_text).is_none()
        && !reference_text.trim().is_empty()
    {
        bail!(
            "{}: no TRACE, LOG, xtables-monitor or nft monitor line found (give --format?)",
            args.reference.display()
        );
    }
    if let (Some(given), Some(seen)) = (format, Format::detect(&reference_text)) {
        // An explicit format that matches no line would silently compare nothing.
        if given != seen && reference::parse(&reference_text, format).packets.is_empty() {
            bail!(
                "{}: looks like {seen:?} output, not {given:?} (--format)",
                args.reference.display()
            );
        }
    }
    if reference_text.trim().is_empty() {
        eprintln!(
            "iptrace: note: {} is empty (legacy TRACE/LOG of a non-init netns reach the kernel log only with net.netfilter.nf_log_all_netns=1)",
            args.reference.display()
        );
    }
    let resolver = Resolver::new(dump.as_ref(), nft.as_ref());
    let opts = MatchOptions {
        time_window: args.time_window,
    };
    let report = compare_text(
        &reference_text,
        format,
        &captured,
        &resolver,
        &opts,
        scope.as_ref(),
    );
    print_report(&report, args.json, args.max_diffs)
}

#[cfg(test)]
mod tests {
    //! The command on the shared fixtures: exit codes 0/1/2 and error paths.
    use super::*;
    use trace_core::compare::captured::CapturedHeaders;

    fn fixtures() -> Option<PathBuf> {
        let d = std::env::var_os("IPTRACE_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
            })
            .join("docker");
        if d.is_dir() {
            Some(d)
        } else {
            eprintln!(
                "SKIP: fixture directory {} not found (set IPTRACE_FIXTURES to the fixtures root)",
                d.display()
            );
            None
        }
    }

    fn tmp(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "iptrace-compare-test-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The xtables-monitor trace of nft-remote as iptrace JSON lines (the kernel's paths).
    fn captured_jsonl(d: &Path) -> String {
        let rs = nft_ruleset::parse(
            &std::fs::read_to_string(d.join("nft-remote.nft-ruleset.txt")).unwrap(),
        )
        .unwrap();
        let resolver = Resolver::new(None, Some(&rs));
        let xt = reference::parse(
            &std::fs::read_to_string(d.join("nft-remote.txt")).unwrap(),
            None,
        );
        xt.packets
            .iter()
            .map(|p| {
                let c = CapturedPacket {
                    index: 0,
                    ts_ns: None,
                    headers: p
                        .headers
                        .iter()
                        .map(|h| CapturedHeaders {
                            src: h.src.unwrap(),
                            dst: h.dst.unwrap(),
                            proto: h.proto,
                            sport: h.sport,
                            dport: h.dport,
                            id: h.id,
                            len: h.len,
                            seq: None,
                            ack: None,
                            tcp_flags: h.tcp_flags,
                            frag: None,
                            icmp_id: None,
                            icmp_seq: None,
                            ipv6: None,
                        })
                        .collect(),
                    steps: p
                        .steps()
                        .iter()
                        .map(|s| resolver.step(s).unwrap())
                        .collect(),
                    table_paths: Vec::new(),
                    implicit_returns: None,
                };
                serde_json::to_string(&c).unwrap() + "\n"
            })
            .collect()
    }

    fn args(reference: PathBuf, nft: Option<PathBuf>, captured: PathBuf) -> Args {
        Args {
            reference,
            format: RefFormat::Auto,
            ruleset: None,
            nft_ruleset: nft,
            json: true,
            max_diffs: 3,
            time_window: None,
            netns_ifaces: Vec::new(),
            captured,
        }
    }

    #[test]
    fn exit_codes_on_fixtures() {
        let Some(d) = fixtures() else { return };
        let cap = tmp("cap.jsonl", &captured_jsonl(&d));
        let monitor = d.join("nft-remote.nft-monitor.txt");
        let nft = d.join("nft-remote.nft-ruleset.txt");
        assert_eq!(
            run(args(monitor.clone(), Some(nft.clone()), cap.clone())).unwrap(),
            ExitCode::from(0)
        );
        // The ruleset changed after the capture: DOCKER-USER's RETURN moved to position 2.
        let edited = std::fs::read_to_string(&nft).unwrap().replace(
            "\t\tcounter packets 10 bytes 583 return # handle 25",
            "\t\tiifname \"lo\" accept # handle 98\n\t\tcounter packets 10 bytes 583 return # handle 25",
        );
        let edited = tmp("edited.nft", &edited);
        assert_eq!(
            run(args(monitor.clone(), Some(edited.clone()), cap.clone())).unwrap(),
            ExitCode::from(1)
        );
        // Handles without any ruleset: bad input.
        assert_eq!(
            run(args(monitor.clone(), None, cap.clone())).unwrap(),
            ExitCode::from(2)
        );
        // An empty reference (e.g. nf_log_all_netns was 0): nothing in common.
        let empty = d.join("legacy-remote.txt");
        assert_eq!(
            run(args(empty, None, cap.clone())).unwrap(),
            ExitCode::from(1)
        );
        for p in [cap, edited] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_file() {
        let Some(d) = fixtures() else { return };
        let monitor = d.join("nft-remote.nft-monitor.txt");
        let bad_json = tmp(
            "bad.jsonl",
            "{\"steps\": [\"raw:PREROUTING:policy:2\"]\nnot json\n",
        );
        let e = run(args(monitor.clone(), None, bad_json.clone()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.jsonl") && e.contains("line 1"), "{e}");
        let bad_nft = tmp("bad.nft", "hello\n");
        let cap = tmp("cap2.jsonl", &captured_jsonl(&d));
        let e = run(args(monitor.clone(), Some(bad_nft.clone()), cap.clone()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.nft") && e.contains("line 1"), "{e}");
        let mut a = args(monitor, None, cap.clone());
        a.ruleset = Some(d.join("nft-remote.nft-ruleset.txt"));
        let e = run(a).unwrap_err().to_string();
        assert!(
            e.contains("nft-remote.nft-ruleset.txt:"),
            "an nft listing is not an iptables-save dump: {e}"
        );
        let mut wrong = args(d.join("nft-remote.txt"), None, cap.clone());
        wrong.format = RefFormat::NftMonitor;
        let e = run(wrong).unwrap_err().to_string();
        assert!(e.contains("looks like XtablesMonitor"), "{e}");
        let not_ref = tmp("notref.txt", "hello world\n");
        let e = run(args(not_ref.clone(), None, cap.clone()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no TRACE, LOG"), "{e}");
        for p in [bad_json, bad_nft, cap, not_ref] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn netns_ifaces_set_aside_other_namespaces_lines() {
        let Some(d) = fixtures() else { return };
        let cap = tmp("scope-cap.jsonl", &captured_jsonl(&d));
        let monitor = d.join("nft-remote.nft-monitor.txt");
        let nft = d.join("nft-remote.nft-ruleset.txt");
        // The fixture's packets enter on eth0 and leave on the docker bridge: with only lo
        // and eth0 in the scope, every one of them shows an interface of another netns.
        let text = std::fs::read_to_string(&monitor).unwrap();
        let rs = nft_ruleset::parse(&std::fs::read_to_string(&nft).unwrap()).unwrap();
        let resolver = Resolver::new(None, Some(&rs));
        let caps = captured::parse_jsonl(&captured_jsonl(&d)).unwrap();
        let report = |ifaces: &[&str]| {
            let items: Vec<String> = ifaces.iter().map(|s| s.to_string()).collect();
            let scope = scope_of(&items).unwrap();
            let opts = MatchOptions::default();
            compare_text(&text, None, &caps, &resolver, &opts, scope.as_ref())
        };
        let outside = report(&["lo", "eth0=02:42:ac:11:00:02"]);
        assert!(outside.totals.foreign > 0, "{:?}", outside.totals);
        assert_eq!(outside.totals.foreign, outside.totals.reference_packets);
        assert_eq!(outside.exit_code(), 1, "nothing left to compare");
        let inside = report(&["lo", "eth0", "br-00ea7870520a"]);
        assert_eq!(inside.totals.foreign, 0, "{:?}", inside.foreign);
        assert_eq!(inside.exit_code(), 0);
        let mut a = args(monitor.clone(), Some(nft.clone()), cap.clone());
        a.netns_ifaces = vec!["lo".into(), "eth0".into(), "br-00ea7870520a".into()];
        assert_eq!(run(a).unwrap(), ExitCode::from(0));
        let mut a = args(monitor, Some(nft), cap.clone());
        a.netns_ifaces = vec!["eth0=zz".into()];
        let e = run(a).unwrap_err().to_string();
        assert!(e.contains("--netns-ifaces"), "{e}");
        let s = scope_of(&["eth0".into(), "br0=AA:BB:CC:DD:EE:FF".into()])
            .unwrap()
            .unwrap();
        assert_eq!(s.ifaces[1].mac.as_deref(), Some("aa:bb:cc:dd:ee:ff"));
        let _ = std::fs::remove_file(cap);
    }

    /// A recording of the remote SYN as the probes report it (one skb through PREROUTING,
    /// FORWARD, POSTROUTING of the node, DNAT'ed by nat PREROUTING), with the legacy dump.
    fn syn_recording(dump: &str) -> Vec<u8> {
        use trace_core::assemble::ProbePlan;
        use trace_core::eval::{IfaceAddr, NetContext};
        use trace_core::event::{tcp_flags, CtSnapshot, Event, Headers, ProbeEvent, L4};
        use trace_core::netfilter::{Family, Hook, Table};
        const NS: u32 = 4026532177;
        let syn = |dst: &str, dport: u16, ttl: u8| Headers {
            src: "192.168.64.5".parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 6,
            len: 60,
            tos: 0,
            ttl,
            id: 52575,
            frag: 0x4000,
            flowlabel: 0,
            l4: L4::Tcp {
                sport: 50676,
                dport,
                seq: 7,
                ack: 0,
                window: 64240,
                flags: tcp_flags::SYN,
                res: 0,
                urgp: 0,
                options: Vec::new(),
            },
        };
        let mut plan = ProbePlan::new();
        plan.insert_iptables(
            NS,
            Family::Ipv4,
            &[Table::Raw, Table::Mangle, Table::Nat, Table::Filter],
            true,
        );
        let mut w = trace_core::record::RecordingWriter::new(Vec::new()).unwrap();
        w.write_plan(&plan, &[NS]).unwrap();
        w.write_ruleset(NS, 1, dump).unwrap();
        let addr = |i: &str, a: &str, b: &str| IfaceAddr {
            iface: i.into(),
            addr: a.parse().unwrap(),
            broadcast: Some(b.parse().unwrap()),
        };
        w.write_netinfo(
            NS,
            &NetContext::from_addrs([
                addr("eth0", "192.168.64.4", "192.168.64.255"),
                addr("br-00ea7870520a", "172.19.0.1", "172.19.255.255"),
            ]),
        )
        .unwrap();
        let mut ts = 1000;
        for hook in [Hook::Prerouting, Hook::Forward, Hook::Postrouting] {
            for &prio in plan.get(NS, Family::Ipv4, hook).unwrap().probes() {
                let dnat_done = hook != Hook::Prerouting || prio > -100;
                let headers = match (hook, dnat_done) {
                    (Hook::Prerouting, false) => syn("192.168.64.4", 10000, 64),
                    (Hook::Prerouting, true) => syn("172.19.0.9", 80, 64),
                    _ => syn("172.19.0.9", 80, 63),
                };
                let status = if dnat_done { 0x120 } else { 0 }
                    | if hook == Hook::Postrouting && prio > 100 {
                        0x80
                    } else {
                        0
                    };
                let ct = (hook != Hook::Prerouting || prio > -200).then_some(CtSnapshot {
                    ctinfo: 2,
                    status,
                    mark: 0,
                    id: 9,
                });
                ts += 10;
                w.write_event(&Event::Probe(ProbeEvent {
                    ts_ns: ts,
                    skb: 0xffff8881224d84e0,
                    gen: 1000,
                    netns: NS,
                    family: Family::Ipv4,
                    hook,
                    priority: prio,
                    in_ifindex: 2,
                    out_ifindex: if hook == Hook::Prerouting { 0 } else { 5 },
                    in_dev: Some("eth0".into()),
                    out_dev: (hook != Hook::Prerouting).then(|| "br-00ea7870520a".into()),
                    mark: 0,
                    ct,
                    headers: Some(headers),
                    mac: None,
                    uid: None,
                    gid: None,
                    owner_read: false,
                    prev: None,
                    sparse: false,
                    bridge: None,
                }))
                .unwrap();
            }
        }
        w.into_inner()
    }

    #[test]
    fn recordings_are_reconstructed_and_compared() {
        let Some(d) = fixtures() else { return };
        let dump = std::fs::read_to_string(d.join("legacy-remote.iptables-save.txt")).unwrap();
        let rec = syn_recording(&dump);
        let path = std::env::temp_dir().join(format!(
            "iptrace-compare-test-{}-syn.rec",
            std::process::id()
        ));
        std::fs::write(&path, &rec).unwrap();
        let (captured, recorded) = load_captured(&path).unwrap();
        assert_eq!(captured.len(), 1);
        assert_eq!(
            recorded.as_deref(),
            Some(dump.as_str()),
            "the recording's dump comes back"
        );
        assert!(
            captured[0]
                .steps
                .iter()
                .any(|s| s.to_string() == "filter:FORWARD:rule:8"),
            "{:?}",
            captured[0].steps
        );
        // The kernel's xtables-monitor trace of the same SYN (the nft run of the fixtures:
        // same rules, same positions) agrees with the reconstruction.
        let a = args(
            d.join("nft-remote.txt"),
            Some(d.join("nft-remote.nft-ruleset.txt")),
            path.clone(),
        );
        assert_eq!(run(a).unwrap(), ExitCode::from(0));
        // Without --ruleset nor --nft-ruleset: xtables-monitor's rule text is mapped to
        // positions through the dump stored in the recording.
        let a = args(d.join("nft-remote.txt"), None, path.clone());
        assert_eq!(run(a).unwrap(), ExitCode::from(0));
        // --ruleset still wins: a dump with DOCKER-USER's RETURN moved to position 2 maps the
        // kernel's rule text elsewhere than the recording's reconstruction.
        let shifted = dump.replace(
            "-A DOCKER-USER -j RETURN",
            "-A DOCKER-USER -s 10.99.0.0/16 -j ACCEPT\n[0:0] -A DOCKER-USER -j RETURN",
        );
        assert_ne!(shifted, dump);
        let shifted_path = tmp("shifted.iptables-save", &shifted);
        let mut a = args(d.join("nft-remote.txt"), None, path.clone());
        a.ruleset = Some(shifted_path.clone());
        assert_eq!(run(a).unwrap(), ExitCode::from(1));
        let _ = std::fs::remove_file(shifted_path);
        // A truncated recording is bad input, naming the offset.
        std::fs::write(&path, &rec[..rec.len() - 10]).unwrap();
        let e = load_captured(&path).unwrap_err().to_string();
        assert!(e.contains("offset"), "{e}");
        let _ = std::fs::remove_file(path);
    }
}
