//! The docker scenario captured with the fentry or kprobe backend: build the lab, load and
//! attach the programs, run the remote connection (peer → 192.168.64.4:10000, DNAT to
//! 172.19.0.9:80), read the ring buffer, decode and assemble with the shared collector code,
//! and check the remote SYN's path in the node namespace hook by hook and table by table.

use std::time::{Duration, Instant};

use trace_common::filter::FilterProgram;
use trace_core::assemble::{Assembler, AssemblerConfig};
use trace_core::decode::{Decoder, Symbols};
use trace_core::event::{tcp_flags, L4};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::packet::{ObservedVerdict, PacketTrace};
use trace_user::capture::classic::{self, Classic, Flavour};
use trace_user::capture::hookverdict::{hook_verdict, HookVerdict, HookVerdicts};
use trace_user::capture::loader::LoadOptions;
use trace_user::capture::plan;
use trace_user::lab::{IptablesBackend, Lab, LabNs, LabOptions};

use crate::report::Outcome;

/// The remote SYN's path in the node namespace (tables with chains on each hook, in kernel
/// order, each accepting), as the kernel's TRACE shows it for the fixtures' ruleset.
const EXPECTED: &[(Hook, &[Table])] = &[
    (Hook::Prerouting, &[Table::Raw, Table::Mangle, Table::Nat]),
    (Hook::Forward, &[Table::Mangle, Table::Filter]),
    (Hook::Postrouting, &[Table::Mangle, Table::Nat]),
];

pub fn remote_syn(flavour: Flavour, backend: IptablesBackend) -> Outcome {
    match run(flavour, backend) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(format!("{e:#}")),
    }
}

/// A loaded capture over a lab, with the assembler planned from the lab's registrations.
struct Capture {
    cap: Classic,
    plan: trace_core::assemble::ProbePlan,
    asm: Assembler,
    decoder: Decoder,
    rb: trace_user::capture::ringread::EventRing,
    records: u64,
    bad: u64,
    /// x_tables rule-position records (split off before decoding: they are not events).
    xt: Vec<trace_common::record::XtRecord>,
    /// nf_hook_slow verdict records (split off, as the session does).
    hv: HookVerdicts,
    /// Every record as read (to assemble again without some of them).
    raw: Vec<Vec<u8>>,
}

impl Capture {
    fn start(flavour: Flavour, lab: &Lab) -> anyhow::Result<Capture> {
        Capture::start_with(flavour, lab, false)
    }

    fn start_with(flavour: Flavour, lab: &Lab, rule_positions: bool) -> anyhow::Result<Capture> {
        let opts = LoadOptions {
            ringbuf_size: 1 << 22,
            sample_n: 0,
            rate_limit: 0,
            filter: FilterProgram::match_all(),
        };
        let mut cap = Classic::load_with(flavour, &opts, rule_positions)?;
        let mut regs = Vec::new();
        for ns in [LabNs::Peer, LabNs::Node, LabNs::Ctr] {
            regs.push((lab.ns_inode(ns) as u32, plan::discover(&lab.ns_path(ns))?));
        }
        let plan = classic::probe_plan(&regs);
        let mut asm = Assembler::new(plan.clone(), AssemblerConfig::default());
        if let Some((&n, _)) = cap
            .drop_reasons
            .iter()
            .find(|(_, name)| *name == "NETFILTER_DROP")
        {
            asm.set_netfilter_drop_reason(n);
        }
        let decoder = Decoder::new(cap.drop_reasons.clone(), Symbols::default());
        let hv = HookVerdicts::new(&cap.drop_reasons);
        let rb = cap.take_events()?;
        Ok(Capture {
            hv,
            raw: Vec::new(),
            cap,
            plan,
            asm,
            decoder,
            rb,
            records: 0,
            bad: 0,
            xt: Vec::new(),
        })
    }

    /// Read for `ms` milliseconds, then flush the assembler.
    fn collect(&mut self, ms: u64) -> Vec<PacketTrace> {
        let mut traces = Vec::new();
        for ev in self.collect_events(ms) {
            traces.extend(self.asm.push(ev));
        }
        traces.extend(self.asm.flush());
        traces
    }

    /// Read for `ms` milliseconds; the decoded events (for the rule-level replayer), with
    /// rule-position and hook-verdict records split off as the session does.
    fn collect_events(&mut self, ms: u64) -> Vec<trace_core::event::Event> {
        let mut events = Vec::new();
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until {
            let mut batch = Vec::new();
            let _ = self.rb.drain(|item| {
                batch.push(item.to_vec());
                Ok::<(), ()>(())
            });
            for bytes in batch {
                self.records += 1;
                if let Some(ev) = self.event(&bytes) {
                    events.push(ev);
                }
                self.raw.push(bytes);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        events
    }

    /// One record: an event, or None (split off, nothing to add, or undecodable: counted).
    fn event(&mut self, item: &[u8]) -> Option<trace_core::event::Event> {
        if item.first() == Some(&trace_common::record::kind::XT)
            && item.len() == std::mem::size_of::<trace_common::record::XtRecord>()
        {
            // SAFETY: length checked; XtRecord is plain data (any bit pattern).
            self.xt.push(unsafe {
                std::ptr::read_unaligned(item.as_ptr() as *const trace_common::record::XtRecord)
            });
            return None;
        }
        let ev = match self.hv.split(item) {
            Some(Ok(ev)) => ev,
            Some(Err(_)) => {
                self.bad += 1;
                None
            }
            None => match self.decoder.decode(item) {
                Ok(ev) => Some(ev),
                Err(_) => {
                    self.bad += 1;
                    None
                }
            },
        };
        if let Some(ev) = &ev {
            self.hv.saw(ev);
        }
        ev
    }

    /// The records read so far assembled again from scratch, leaving out those `skip` says:
    /// what the collector would have made of the capture had they been lost.
    fn reassemble_without(&self, skip: impl Fn(&[u8]) -> bool) -> Vec<PacketTrace> {
        let mut asm = Assembler::new(self.plan.clone(), AssemblerConfig::default());
        let mut hv = HookVerdicts::new(&self.cap.drop_reasons);
        let mut traces = Vec::new();
        for item in self.raw.iter().filter(|r| !skip(r)) {
            let ev = match hv.split(item) {
                Some(r) => r.ok().flatten(),
                None => self.decoder.decode(item).ok(),
            };
            if let Some(ev) = ev {
                hv.saw(&ev);
                traces.extend(asm.push(ev));
            }
        }
        traces.extend(asm.flush());
        traces
    }

    fn summary(&self, packets: usize) -> anyhow::Result<(String, bool)> {
        let c = self.cap.counters()?;
        let s = format!(
            "{} attached ({} skipped: {:?}); records {}, undecodable {}, lost {}, packets {packets}",
            self.cap.attached.join(","),
            self.cap.skipped.len(),
            self.cap.skipped,
            self.records,
            self.bad,
            c.lost,
        );
        Ok((s, self.bad == 0 && c.lost == 0))
    }
}

fn run(flavour: Flavour, backend: IptablesBackend) -> anyhow::Result<Outcome> {
    let lab = Lab::up(LabOptions {
        backend,
        trace_rules: true,
        name_prefix: format!("vm-{flavour}"),
        ..LabOptions::default()
    })?;
    let mut cap = Capture::start(flavour, &lab)?;
    let ex = lab.run_remote()?;
    let traces = cap.collect(800);
    let node = lab.ns_inode(LabNs::Node) as u32;
    let client_port = ex.local.port();
    let syn = traces
        .iter()
        .find(|t| t.netns == node && t.family == Family::Ipv4 && is_syn_from(t, Some(client_port)));
    let (summary, clean) = cap.summary(traces.len())?;
    let Some(syn) = syn else {
        return Ok(Outcome::Fail(format!(
            "no remote SYN (client port {client_port}) in node netns; {summary}"
        )));
    };
    let path = describe(syn);
    let problems = check(syn).or_else(|| check_hooks_accepted(syn));
    drop(cap);
    lab.down()?;
    if !clean {
        return Ok(Outcome::Fail(format!(
            "events lost or undecodable: {path}; {summary}"
        )));
    }
    Ok(match problems {
        None => Outcome::Pass(format!("{path}; {summary}")),
        Some(p) => Outcome::Fail(format!("{p}: {path}; {summary}")),
    })
}

/// Every hook pass ended with nf_hook_slow's exit seeing the packet (hook verdict accept).
fn check_hooks_accepted(t: &PacketTrace) -> Option<String> {
    t.hooks
        .iter()
        .find(|h| hook_verdict(t, h) != HookVerdict::Accept)
        .map(|h| {
            format!(
                "{:?}: hook verdict {:?}, expected accept",
                h.hook,
                hook_verdict(t, h)
            )
        })
}

/// A DROP rule in filter FORWARD: the remote SYN is reported dropped in FORWARD filter with
/// the kernel's NETFILTER_DROP reason (a number that differs between kernels, from BTF); the
/// FORWARD hook's verdict is drop (nf_hook_slow's exit reported it, after kfree_skb), and the
/// same capture without its kfree_skb records still attributes the drop to FORWARD filter,
/// from the hook verdict alone.
pub fn filter_drop(flavour: Flavour, backend: IptablesBackend) -> Outcome {
    match run_drop(flavour, backend) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(format!("{e:#}")),
    }
}

fn run_drop(flavour: Flavour, backend: IptablesBackend) -> anyhow::Result<Outcome> {
    let lab = Lab::up(LabOptions {
        backend,
        name_prefix: format!("vm-drop-{flavour}"),
        ..LabOptions::default()
    })?;
    let bin = format!("iptables-{}", backend.as_str());
    let out = lab.exec(
        LabNs::Node,
        &[
            &bin,
            "-I",
            "FORWARD",
            "1",
            "-p",
            "tcp",
            "-d",
            "172.19.0.9",
            "--dport",
            "80",
            "-j",
            "DROP",
        ],
    )?;
    anyhow::ensure!(
        out.status.success(),
        "{bin} -I FORWARD: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cap = Capture::start(flavour, &lab)?;
    let to: std::net::SocketAddr = "192.168.64.4:10000".parse()?;
    let connected = trace_user::netns::run_in(&lab.ns_path(LabNs::Peer), move || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_millis(300)).is_ok()
    })?;
    let traces = cap.collect(600);
    let node = lab.ns_inode(LabNs::Node) as u32;
    let syn = traces
        .iter()
        .find(|t| t.netns == node && t.family == Family::Ipv4 && is_syn_from(t, None));
    let (summary, clean) = cap.summary(traces.len())?;
    let without_kfree =
        cap.reassemble_without(|r| r.first() == Some(&trace_common::record::kind::DROP));
    let verdicts = cap.hv.stats.clone();
    drop(cap);
    lab.down()?;
    if connected {
        return Ok(Outcome::Fail(
            "the connection went through the DROP rule".into(),
        ));
    }
    let Some(syn) = syn else {
        return Ok(Outcome::Fail(format!("no SYN in node netns; {summary}")));
    };
    let path = describe(syn);
    let fwd_filter = syn
        .hooks
        .iter()
        .find(|h| h.hook == Hook::Forward)
        .and_then(|h| h.tables.iter().find(|o| o.table == Table::Filter));
    let dropped = matches!(fwd_filter.map(|o| &o.verdict),
        Some(ObservedVerdict::Drop { reason_name: Some(n), .. }) if n == "NETFILTER_DROP");
    let fate_ok = |t: &PacketTrace| {
        matches!(&t.fate, trace_core::packet::Fate::Dropped { hook: Hook::Forward, stage }
        if stage.table() == Some(Table::Filter))
    };
    let fwd_verdict = syn
        .hooks
        .iter()
        .find(|h| h.hook == Hook::Forward)
        .map(|h| hook_verdict(syn, h));
    // The same SYN assembled without the kfree_skb reports: the hook verdict alone.
    let alone = without_kfree
        .iter()
        .find(|t| t.skb == syn.skb && t.gen == syn.gen);
    let alone_ok = alone.is_some_and(|t| {
        fate_ok(t)
            && t.hooks
                .iter()
                .find(|h| h.hook == Hook::Forward)
                .is_some_and(|h| {
                    h.tables.iter().any(|o| {
                        o.table == Table::Filter
                            && matches!(&o.verdict,
                    ObservedVerdict::Drop { reason_name: Some(n), .. } if n == "NETFILTER_DROP")
                    })
                })
    });
    let detail = format!(
        "{path}; FORWARD hook verdict {fwd_verdict:?}; verdict records {verdicts:?}; without kfree_skb: {}; {summary}",
        alone.map_or("SYN not assembled".to_string(), describe)
    );
    Ok(
        if dropped
            && fate_ok(syn)
            && clean
            && fwd_verdict == Some(HookVerdict::Drop)
            && verdicts.drops_reported >= 1
            && alone_ok
        {
            Outcome::Pass(detail)
        } else {
            Outcome::Fail(format!(
                "expected FORWARD filter drop(NETFILTER_DROP) and hook verdict drop: {detail}"
            ))
        },
    )
}

/// The traversal starts with a SYN (no ACK) to port 10000, from `port` when given.
fn is_syn_from(t: &PacketTrace, port: Option<u16>) -> bool {
    let first = t.hooks.first().and_then(|h| {
        h.tables
            .first()
            .map(|o| &o.before.headers)
            .or(h.stages.first().map(|s| &s.before.headers))
    });
    matches!(first.map(|h| &h.l4), Some(L4::Tcp { sport, dport, flags, .. }) if port.is_none_or(|p| *sport == p) && *dport == 10000 && flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0)
}

/// `PREROUTING raw:accept mangle:accept nat:accept(->172.19.0.9:80) | FORWARD ...`
fn describe(t: &PacketTrace) -> String {
    let hooks: Vec<String> = t
        .hooks
        .iter()
        .map(|h| {
            let tables: Vec<String> = h
                .tables
                .iter()
                .map(|o| {
                    let v = match &o.verdict {
                        ObservedVerdict::Accept => "accept".to_string(),
                        ObservedVerdict::Drop {
                            reason_name,
                            reason,
                        } => format!(
                            "drop({})",
                            reason_name.clone().unwrap_or(reason.to_string())
                        ),
                        ObservedVerdict::Stolen => "stolen".into(),
                        ObservedVerdict::Unknown => "unknown".into(),
                    };
                    let nat = match (o.translated(), &o.after) {
                        (true, Some(a)) => format!(
                            "(->{}:{})",
                            a.headers.dst,
                            a.headers.l4.ports().map_or(0, |p| p.1)
                        ),
                        _ => String::new(),
                    };
                    format!("{}:{v}{nat}", o.table)
                })
                .collect();
            let exit = if h
                .probes
                .contains(&trace_user::capture::hookverdict::PRIO_HOOK_EXIT)
            {
                "[accept]"
            } else {
                ""
            };
            format!("{:?}{exit} {}", h.hook, tables.join(" "))
        })
        .collect();
    format!("{} fate {:?}", hooks.join(" | "), t.fate)
}

/// One traversal in a line (failure diagnostics): `#id skb:gen headers: HOOK[probes] ... fate`.
fn traversal_line(t: &PacketTrace) -> String {
    let first = t
        .hooks
        .first()
        .and_then(|h| h.stages.first().map(|s| &s.before.headers));
    let what = first.map_or("?".to_string(), |h| {
        let (sp, dp) = h.l4.ports().unwrap_or((0, 0));
        let flags = match &h.l4 {
            L4::Tcp { flags, .. } => *flags,
            _ => 0,
        };
        format!("{}:{sp}>{}:{dp} id {} f{flags:#x}", h.src, h.dst, h.id)
    });
    let hooks: Vec<String> = t
        .hooks
        .iter()
        .map(|h| {
            let p: Vec<String> = h
                .probes
                .iter()
                .map(|p| match *p {
                    i32::MAX => "X".into(),
                    p if p == i32::MIN + 1 => "E".into(),
                    p => p.to_string(),
                })
                .collect();
            format!("{:?}[{}]", h.hook, p.join(","))
        })
        .collect();
    format!(
        "#{} {:x}:{} {what}: {} {:?}{}",
        t.id,
        t.skb & 0xffff,
        t.gen % 1_000_000,
        hooks.join(" "),
        t.fate,
        if t.incomplete { " incomplete" } else { "" }
    )
}

/// None when the path is the expected one; else what differs.
fn check(t: &PacketTrace) -> Option<String> {
    let got: Vec<Hook> = t.hooks.iter().map(|h| h.hook).collect();
    let want: Vec<Hook> = EXPECTED.iter().map(|(h, _)| *h).collect();
    if got != want {
        return Some(format!("hooks {got:?}, expected {want:?}"));
    }
    for (pass, (hook, tables)) in t.hooks.iter().zip(EXPECTED) {
        let got: Vec<Table> = pass.tables.iter().map(|o| o.table).collect();
        if got != *tables {
            return Some(format!("{hook:?}: tables {got:?}, expected {tables:?}"));
        }
        if let Some(o) = pass
            .tables
            .iter()
            .find(|o| o.verdict != ObservedVerdict::Accept)
        {
            return Some(format!("{hook:?} {}: verdict {:?}", o.table, o.verdict));
        }
    }
    let nat = &t.hooks[0].tables[2];
    let after = nat.after.as_ref()?;
    let dnat_ok = after.headers.dst.to_string() == "172.19.0.9"
        && after.headers.l4.ports().map(|p| p.1) == Some(80);
    if !dnat_ok {
        return Some(format!(
            "PREROUTING nat: after {}:{:?}, expected DNAT to 172.19.0.9:80",
            after.headers.dst,
            after.headers.l4.ports()
        ));
    }
    if t.fate != trace_core::packet::Fate::Delivered {
        return Some(format!("fate {:?}, expected delivered", t.fate));
    }
    None
}

/// The kernel's own TRACE (legacy: TRACE target → kernel log; nft: xtables-monitor --trace)
/// against iptrace's rule-level reconstruction from this backend's events (the shared
/// Replayer and compare code): every traced packet agrees, none differs or is missing.
pub fn trace_agrees(flavour: Flavour, backend: IptablesBackend) -> Outcome {
    match run_trace(flavour, backend) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(format!("{e:#}")),
    }
}

fn run_trace(flavour: Flavour, backend: IptablesBackend) -> anyhow::Result<Outcome> {
    use trace_core::compare::captured::CapturedPacket;
    use trace_core::record::{replay::Replayer, Record};
    use trace_user::reference::{agreement, ReferenceTracer, TraceSelector, TraceTarget};
    let lab = Lab::up(LabOptions {
        backend,
        name_prefix: format!("vm-trace-{flavour}"),
        ..LabOptions::default()
    })?;
    let target = TraceTarget {
        netns: lab.ns_path(LabNs::Node),
        backend,
        family: Family::Ipv4,
    };
    let sel = TraceSelector {
        dst: Some("192.168.64.4/32".into()),
        proto: Some("tcp".into()),
        dport: Some(10000),
        ..Default::default()
    };
    let tracer = ReferenceTracer::start(target, &sel, true)?;
    let snapshot = tracer.snapshot_rulesets()?;
    // After start(): the TRACE rule created/changed raw, so registrations and dumps are current.
    let mut cap = Capture::start(flavour, &lab)?;
    let node = lab.ns_inode(LabNs::Node) as u32;
    let mut rp = Replayer::new(None);
    let _ = rp.push(Record::Ruleset {
        netns: node,
        family: Family::Ipv4,
        generation: 1,
        text: snapshot.iptables_save.clone(),
    });
    for hook in Hook::ALL {
        if let Some(p) = cap.plan.get(node, Family::Ipv4, hook) {
            let _ = rp.push(Record::plan(node, Family::Ipv4, hook, p));
        }
    }
    lab.run_remote()?;
    let events = cap.collect_events(800);
    let mut packets = Vec::new();
    for ev in events.into_iter().filter(|e| {
        matches!(e, trace_core::event::Event::Probe(p) if p.netns == node)
            || matches!(e, trace_core::event::Event::Drop(_))
    }) {
        packets.extend(rp.push(Record::Event {
            event: Box::new(ev),
        }));
    }
    packets.extend(rp.finish());
    let (summary, clean) = cap.summary(packets.len())?;
    drop(cap);
    let output = tracer.finish()?;
    lab.down()?;
    let captured: Vec<CapturedPacket> = packets.iter().map(CapturedPacket::from).collect();
    let report = agreement(&output, &captured, &snapshot)?;
    let t = &report.totals;
    let totals = format!(
        "reference {} captured {} agree {} differ {} only-in-reference {} only-in-capture {} unparsable {}",
        t.reference_packets, t.captured_packets, t.agree, t.differ, t.only_in_reference, t.only_in_capture, t.unparsable
    );
    let ok = clean && t.agree > 0 && t.differ == 0 && t.only_in_reference == 0;
    Ok(if ok {
        Outcome::Pass(format!("{totals}; {summary}"))
    } else {
        Outcome::Fail(format!(
            "{totals}; {summary}; {}; captured traversals: {}",
            report.render_text(3),
            packets
                .iter()
                .map(|p| traversal_line(&p.packet))
                .collect::<Vec<_>>()
                .join(" / ")
        ))
    })
}

/// The same remote SYN through the nfhook backend (BPF netfilter links, Linux >= 6.4) with
/// the capture developer's session: all three backends must tell the same story.
pub fn nfhook_remote_syn(backend: IptablesBackend) -> Outcome {
    match run_nfhook(backend) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(format!("{e:#}")),
    }
}

fn run_nfhook(backend: IptablesBackend) -> anyhow::Result<Outcome> {
    use trace_user::capture::session::{CaptureOptions, Session};
    let lab = Lab::up(LabOptions {
        backend,
        trace_rules: true,
        name_prefix: "vm-nfhook".into(),
        ..LabOptions::default()
    })?;
    let opts = CaptureOptions {
        targets: vec![plan::Target {
            label: "node".into(),
            path: lab.ns_path(LabNs::Node),
        }],
        filter: FilterProgram::match_all(),
        sample_n: 0,
        rate_limit: 0,
        ringbuf_size: 1 << 22,
        count: None,
        duration: Some(Duration::from_millis(2500)),
    };
    let mut session = Session::attach(&opts)?;
    let peer = lab.ns_path(LabNs::Peer);
    let client = std::thread::spawn(move || -> anyhow::Result<u16> {
        use std::io::{Read, Write};
        std::thread::sleep(Duration::from_millis(700));
        let to: std::net::SocketAddr = "192.168.64.4:10000".parse()?;
        trace_user::netns::run_in(&peer, move || -> std::io::Result<u16> {
            let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            s.write_all(b"hello-from-tc-peer\n")?;
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf)?;
            Ok(s.local_addr()?.port())
        })?
        .map_err(Into::into)
    });
    let mut traces: Vec<PacketTrace> = Vec::new();
    let summary = session.run(&opts, |t| {
        traces.push(t.clone());
        Ok(())
    })?;
    let port = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    drop(session);
    lab.down()?;
    let syn = traces
        .iter()
        .find(|t| t.family == Family::Ipv4 && is_syn_from(t, Some(port)));
    let stats = format!("lost {}, packets {}", summary.lost, traces.len());
    let Some(syn) = syn else {
        return Ok(Outcome::Fail(format!(
            "no remote SYN (client port {port}); {stats}"
        )));
    };
    let path = describe(syn);
    Ok(match check(syn) {
        None if summary.lost == 0 => Outcome::Pass(format!("{path}; {stats}")),
        None => Outcome::Fail(format!("events lost: {path}; {stats}")),
        Some(p) => Outcome::Fail(format!("{p}: {path}; {stats}")),
    })
}

/// Exact legacy rule positions, kprobe backend (see [`rule_positions_with`]).
pub fn rule_positions() -> Outcome {
    rule_positions_with(Flavour::Kprobe)
}

/// Exact legacy rule positions (`iptables-legacy` lab, kernel TRACE on): the x_tables
/// match/target probes of `flavour` (kprobe/kretprobe, or fexit on matches and fentry on
/// targets) mapped to chain:rule through the rule blobs (`capture::xtpos::positions`) and
/// applied to the rule-level reconstruction of the remote SYN
/// (`trace_core::reconstruct::positions::apply`, the same code the CLI uses). Must hold: every
/// record resolves; the SYN's table traversals have complete positions (every extension the
/// tables use probed); every table with positions agrees with the evaluator's path, nat
/// PREROUTING included (the DNAT rule's target ran); the failed matches are listed; and
/// every rule whose target ran is one the kernel's TRACE printed.
pub fn rule_positions_with(flavour: Flavour) -> Outcome {
    match run_positions(flavour) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(format!("{e:#}")),
    }
}

fn run_positions(flavour: Flavour) -> anyhow::Result<Outcome> {
    use std::collections::{BTreeSet, HashMap};
    use trace_core::reconstruct::positions::{self, Agreement, PositionStore, XtCall};
    use trace_core::record::{replay::Replayer, Record};
    use trace_user::capture::xtpos::{self, Blob};
    use trace_user::reference::{ReferenceTracer, TraceSelector, TraceTarget};
    let backend = IptablesBackend::Legacy;
    let lab = Lab::up(LabOptions {
        backend,
        name_prefix: format!("vm-xtpos-{flavour}"),
        ..LabOptions::default()
    })?;
    let target = TraceTarget {
        netns: lab.ns_path(LabNs::Node),
        backend,
        family: Family::Ipv4,
    };
    let sel = TraceSelector {
        dst: Some("192.168.64.4/32".into()),
        proto: Some("tcp".into()),
        dport: Some(10000),
        ..Default::default()
    };
    // Started first: its TRACE rule is in the blobs and its extension in use when probed.
    let tracer = ReferenceTracer::start(target, &sel, true)?;
    let snapshot = tracer.snapshot_rulesets()?;
    let mut cap = Capture::start_with(flavour, &lab, true)?;
    let attached = cap.cap.attach_rule_probes()?;
    let node = lab.ns_inode(LabNs::Node) as u32;
    let reg = plan::discover(&lab.ns_path(LabNs::Node))?;
    let mut blobs = HashMap::new();
    for t in &reg.ipv4 {
        blobs.insert(
            t.to_string(),
            Blob::read(&lab.ns_path(LabNs::Node), &t.to_string())?,
        );
    }
    let mut rp = Replayer::new(None);
    let _ = rp.push(Record::Ruleset {
        netns: node,
        family: Family::Ipv4,
        generation: 1,
        text: snapshot.iptables_save.clone(),
    });
    for hook in Hook::ALL {
        if let Some(p) = cap.plan.get(node, Family::Ipv4, hook) {
            let _ = rp.push(Record::plan(node, Family::Ipv4, hook, p));
        }
    }
    let ex = lab.run_remote()?;
    let events = cap.collect_events(800);
    let (summary, clean) = cap.summary(0)?;
    let lost = cap.cap.counters()?.lost > 0;
    let (tables, unresolved) = xtpos::positions(&cap.xt, &blobs, &cap.cap.rule_functions, lost);
    let mut store = PositionStore::default();
    for t in tables.iter().filter(|t| t.netns == node) {
        store.insert(t.netns, t.skb, t.gen, t.positions.clone());
    }
    let mut packets = Vec::new();
    for ev in events.into_iter().filter(|e| {
        matches!(e, trace_core::event::Event::Probe(p) if p.netns == node)
            || matches!(e, trace_core::event::Event::Drop(_))
    }) {
        packets.extend(rp.push(Record::Event {
            event: Box::new(ev),
        }));
    }
    packets.extend(rp.finish());
    for p in &mut packets {
        let tps = store.take(&p.packet);
        if let (false, Some(ev)) = (tps.is_empty(), rp.evaluator(node, Family::Ipv4)) {
            positions::apply(p, ev, &tps);
        }
    }
    drop(cap);
    let output = tracer.finish()?;
    lab.down()?;
    let Some(syn) = packets
        .iter()
        .find(|p| is_syn_from(&p.packet, Some(ex.local.port())))
    else {
        return Ok(Outcome::Fail(format!(
            "no remote SYN among {} packets; {summary}",
            packets.len()
        )));
    };
    // TRACE labels the kernel printed: "table:chain:rule:N".
    let traced: BTreeSet<String> = output
        .text
        .lines()
        .filter_map(|l| {
            l.split("TRACE: ")
                .nth(1)?
                .split_whitespace()
                .next()
                .map(String::from)
        })
        .collect();
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    let mut failed = Vec::new();
    for (rh, hp) in syn.hooks.iter().zip(&syn.packet.hooks) {
        for (tr, obs) in rh.tables.iter().zip(&hp.tables) {
            let at = format!("{:?} {}", hp.hook, obs.table);
            let Some(pc) = &tr.positions else {
                // Tables whose rules call nothing may have no positions at all.
                continue;
            };
            checked.push(format!(
                "{at}:{}({} calls)",
                pc.agreement.as_str(),
                pc.calls
            ));
            if !pc.complete {
                problems.push(format!("{at}: incomplete positions"));
            }
            if pc.agreement != Agreement::Agree {
                problems.push(format!("{at}: {:?}", pc.agreement));
            }
            failed.extend(pc.failed.iter().map(|f| format!("{} {}", f.rule, f.what)));
        }
    }
    // Rules whose target ran, from the SYN's raw calls: each must be in the kernel's TRACE
    // (the TRACE rule itself is never printed: it traces what follows).
    let nat_pre = syn
        .hooks
        .iter()
        .zip(&syn.packet.hooks)
        .filter(|(_, hp)| hp.hook == Hook::Prerouting)
        .flat_map(|(rh, _)| &rh.tables)
        .find(|t| t.table == Table::Nat)
        .and_then(|t| t.positions.as_ref());
    if nat_pre.is_none_or(|p| p.agreement != Agreement::Agree) {
        problems.push("nat PREROUTING: no agreeing positions (DNAT rule)".into());
    }
    let targets_ran: BTreeSet<String> = tables
        .iter()
        .filter(|t| t.skb == syn.packet.skb && t.gen == syn.packet.gen)
        .flat_map(|t| {
            t.positions
                .calls
                .iter()
                .filter_map(move |c| match (&c.call, c.rule) {
                    (XtCall::Target { .. }, Some(n)) => {
                        Some(format!("{}:{}:rule:{n}", t.positions.table, c.chain))
                    }
                    _ => None,
                })
        })
        .collect();
    let untraced: Vec<&String> = targets_ran
        .iter()
        .filter(|l| !traced.contains(*l) && !l.starts_with("raw:PREROUTING:rule:1"))
        .collect();
    if !untraced.is_empty() {
        problems.push(format!(
            "targets ran at {untraced:?}, not in the kernel's TRACE"
        ));
    }
    let detail = format!(
        "{attached} functions probed; tables {checked:?}; targets ran {targets_ran:?}; failed matches {failed:?}; {} unresolved {:?}; TRACE {} labels; {summary}",
        unresolved.len(),
        unresolved.iter().take(8).collect::<Vec<_>>(),
        traced.len()
    );
    Ok(
        if clean
            && unresolved.is_empty()
            && problems.is_empty()
            && !checked.is_empty()
            && !traced.is_empty()
        {
            Outcome::Pass(detail)
        } else {
            Outcome::Fail(format!("{problems:?}; {detail}"))
        },
    )
}

/// The CLI end to end: `iptrace capture --backend <b> --netns <node> --packets --format json`
/// as a process while the remote connection runs; its packet lines deserialize to the same
/// PacketTrace and the remote SYN has the expected path; stderr names the backend chosen.
pub fn cli_capture(backend_arg: &'static str, expect: &'static str) -> Outcome {
    match run_cli(backend_arg, expect) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(format!("{e:#}")),
    }
}

fn run_cli(backend_arg: &str, expect: &str) -> anyhow::Result<Outcome> {
    let lab = Lab::up(LabOptions {
        backend: IptablesBackend::Legacy,
        trace_rules: true,
        name_prefix: "vm-cli".into(),
        ..LabOptions::default()
    })?;
    let node = lab.ns_name(LabNs::Node).to_string();
    let run = capture_cli(
        &lab,
        &[
            "capture",
            "--backend",
            backend_arg,
            "--netns",
            &node,
            "--duration",
            "120",
            "--packets",
            "--format",
            "json",
        ],
    );
    lab.down()?;
    let (out, stderr, ex) = run?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let traces: Vec<PacketTrace> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let chosen = chosen_backend(&stderr);
    if !out.status.success() {
        return Ok(Outcome::Fail(format!(
            "exit {}: {}",
            out.status,
            stderr.replace('\n', " | ")
        )));
    }
    let Some(syn) = traces
        .iter()
        .find(|t| is_syn_from(t, Some(ex.local.port())))
    else {
        return Ok(Outcome::Fail(format!(
            "{chosen}; no remote SYN among {} packets",
            traces.len()
        )));
    };
    let path = describe(syn);
    // fentry/kprobe: the JSON passes carry the hook exit position (hook verdict accept).
    Ok(match check(syn).or_else(|| check_hooks_accepted(syn)) {
        None if chosen.contains(expect) => {
            Outcome::Pass(format!("{chosen}; {path}; {} packets", traces.len()))
        }
        None => Outcome::Fail(format!("expected {expect}, stderr says {chosen:?}")),
        Some(p) => Outcome::Fail(format!("{p}: {path}; {chosen}")),
    })
}

/// The backend line of the CLI's stderr ("iptrace capture: backend kprobe (...)").
fn chosen_backend(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.contains("iptrace capture: backend ") && !l.contains("unavailable"))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Runs `iptrace <args>` as a process: waits until it says its probes are attached, runs the
/// lab's remote connection, then stops it with SIGINT. Returns its output, its stderr and the
/// connection (the lab is taken down).
fn capture_cli(
    lab: &Lab,
    args: &[&str],
) -> anyhow::Result<(std::process::Output, String, trace_user::lab::Exchange)> {
    let mut child = std::process::Command::new("/usr/bin/iptrace")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Connect only once the CLI says its probes are attached (loading takes seconds under TCG).
    let stderr_pipe = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr pipe"))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr_pipe)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut stderr_lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stderr_lines
        .iter()
        .any(|l: &String| l.contains("probes attached"))
        && Instant::now() < deadline
    {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => stderr_lines.push(l),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    let ex = lab.run_remote();
    std::thread::sleep(Duration::from_millis(1500));
    // SIGINT: the capture detaches, flushes and prints its summary (our own child, by pid).
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output()?;
    let _ = reader.join();
    stderr_lines.extend(rx.try_iter());
    Ok((out, stderr_lines.join("\n"), ex?))
}

/// `iptrace capture --backend <flavour> --rule-positions --format json` on the legacy docker
/// lab, rule-level output: the remote SYN's nat (PREROUTING) and filter (FORWARD) tables carry
/// complete positions that agree with the reconstructed path, at least one failed match is
/// listed, and the summary line counts positions applied.
pub fn cli_rule_positions(flavour: Flavour) -> Outcome {
    match run_cli_positions(flavour) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(format!("{e:#}")),
    }
}

fn run_cli_positions(flavour: Flavour) -> anyhow::Result<Outcome> {
    let lab = Lab::up(LabOptions {
        backend: IptablesBackend::Legacy,
        name_prefix: format!("vm-clipos-{flavour}"),
        ..LabOptions::default()
    })?;
    let node = lab.ns_name(LabNs::Node).to_string();
    let backend = flavour.to_string();
    let run = capture_cli(
        &lab,
        &[
            "capture",
            "--backend",
            &backend,
            "--rule-positions",
            "--netns",
            &node,
            "--duration",
            "120",
            "--format",
            "json",
        ],
    );
    lab.down()?;
    let (out, stderr, ex) = run?;
    let chosen = chosen_backend(&stderr);
    if !out.status.success() {
        return Ok(Outcome::Fail(format!(
            "exit {}: {}",
            out.status,
            stderr.replace('\n', " | ")
        )));
    }
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = lines
        .iter()
        .find_map(|v| v.get("summary"))
        .and_then(|s| s.get("rule_positions"))
        .cloned()
        .unwrap_or_default();
    let port = u64::from(ex.local.port());
    // The connection's first packet from the peer's port to 10000: the SYN.
    let Some(syn) = lines.iter().find(|v| {
        let l4 = &v["packet"]["l4"];
        l4["sport"].as_u64() == Some(port) && l4["dport"].as_u64() == Some(10000)
    }) else {
        return Ok(Outcome::Fail(format!(
            "{chosen}; no remote SYN among {} lines; summary positions {summary}",
            lines.len()
        )));
    };
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    let mut failed = Vec::new();
    for hook in syn["hooks"].as_array().into_iter().flatten() {
        for t in hook["tables"].as_array().into_iter().flatten() {
            let at = format!(
                "{} {}",
                hook["hook"].as_str().unwrap_or("?"),
                t["table"].as_str().unwrap_or("?")
            );
            let Some(p) = t.get("positions") else {
                continue;
            };
            let agreement = p["agreement"].as_str().unwrap_or("?");
            seen.push(format!("{at}:{agreement}"));
            if agreement != "agree" || p["complete"] != serde_json::Value::Bool(true) {
                problems.push(format!("{at}: {p}"));
            }
            for f in p["failed"].as_array().into_iter().flatten() {
                failed.push(format!(
                    "{} {}",
                    f["rule"].as_str().unwrap_or("?"),
                    f["match"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    for need in ["PREROUTING nat", "FORWARD filter"] {
        if !seen.iter().any(|s| s.starts_with(&format!("{need}:"))) {
            problems.push(format!("{need}: no positions"));
        }
    }
    if failed.is_empty() {
        problems.push("no failed match listed".into());
    }
    if summary["used"].as_u64().unwrap_or(0) == 0 {
        problems.push("summary: no positions applied".into());
    }
    if !stderr.contains("rule positions:") {
        problems.push("stderr has no rule positions summary".into());
    }
    if syn["status"] == "inconsistent" {
        problems.push(format!("SYN inconsistent: {}", syn["status"]));
    }
    let detail =
        format!("{chosen}; tables {seen:?}; failed {failed:?}; summary positions {summary}");
    Ok(if problems.is_empty() {
        Outcome::Pass(detail)
    } else {
        Outcome::Fail(format!("{problems:?}; {detail}"))
    })
}
