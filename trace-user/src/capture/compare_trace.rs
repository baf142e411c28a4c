//! `iptrace capture --compare-trace --allow-system-changes`: the kernel's own trace of the
//! captured namespaces, collected in the same run by `crate::reference::ReferenceTracer` (one
//! per netns: a TRACE rule in raw PREROUTING/OUTPUT, nf_log_all_netns + /dev/kmsg on legacy,
//! `nft -a monitor trace` on nft), then compared with the reconstructed packets. The kernel
//! log is shared by every netns: reference packets the traced netns's interfaces cannot have
//! produced are set aside as foreign (see `trace_core::compare::scope`).
//!
//! The TRACE rule selects what the capture filter selects as far as iptables can say it
//! (addresses, protocol, ports; `port N` on either side through multiport): the filter's top-level `and` terms that have an
//! iptables equivalent are kept, the others dropped — dropping a conjunct only widens the
//! rule, so the kernel traces at least every captured packet. Packets traced but not captured
//! are reported as "only in reference" and do not count as differences.
//!
//! Order matters: the tracers start before the probes are attached (iptables-nft may create
//! the raw table, a new hook the probe plan must know about) and before the first rule dump
//! (the reconstruction must see the TRACE rule, as the kernel's positions include it).

use anyhow::{Context, Result};
use trace_core::compare::captured::CapturedPacket;
use trace_core::compare::report::Report;
use trace_core::filter::{Dir, Expr, Prim};
use trace_core::netfilter::Family;

use super::plan::Target;
use crate::lab::IptablesBackend;
use crate::reference::{
    agreement_in_scope, ReferenceTracer, RulesetSnapshot, TraceSelector, TraceTarget,
};
use crate::rulesource::{RuleSource, SaveBackend};

/// The TRACE rule's selector for a capture filter, its family, and what it could not express.
pub fn selector_for(filter: &str) -> Result<(Family, TraceSelector, Vec<String>)> {
    let expr = trace_core::filter::parse(filter).with_context(|| format!("filter `{filter}`"))?;
    let mut terms = Vec::new();
    conjuncts(&expr, &mut terms);
    let mut sel = TraceSelector::default();
    let mut family = None;
    let mut dropped = Vec::new();
    for t in terms {
        match t {
            Expr::True => {}
            Expr::Prim(p) => {
                if !apply(p, &mut sel, &mut family) {
                    dropped.push(describe(p));
                }
            }
            Expr::Or(..) => dropped.push("`or`".into()),
            Expr::Not(..) => dropped.push("`not`".into()),
            Expr::And(..) => unreachable!("conjuncts() flattens `and`"),
        }
    }
    let has_ports = sel.sport.is_some() || sel.dport.is_some() || sel.ports.is_some();
    if has_ports && sel.proto.is_none() {
        dropped.push("ports without a protocol".into());
        (sel.sport, sel.dport, sel.ports) = (None, None, None);
    }
    if sel.ports.is_some() && !matches!(sel.proto.as_deref(), Some("tcp" | "udp" | "sctp")) {
        // -m multiport needs a protocol with ports.
        dropped.push(format!(
            "`port {}` (either side) without tcp/udp/sctp",
            sel.ports.unwrap_or_default()
        ));
        sel.ports = None;
    }
    Ok((family.unwrap_or(Family::Ipv4), sel, dropped))
}

/// A filter term iptables cannot express, for the user.
fn describe(p: &Prim) -> String {
    match p {
        Prim::Net {
            dir: Dir::Either,
            net,
        } => format!("`host/net {}/{}` (either side)", net.addr, net.prefix),
        Prim::Port {
            dir: Dir::Either,
            lo,
            hi,
        } if lo == hi => format!("`port {lo}` (either side)"),
        Prim::Port { lo, hi, .. } => format!("`portrange {lo}-{hi}`"),
        Prim::Iface { name, .. } => format!("`iface {name}`"),
        Prim::Mark { value, mask } => format!("`mark {value:#x}/{mask:#x}`"),
        Prim::IcmpType(t) => format!("`icmp-type {t}`"),
        other => format!("{other:?}"),
    }
}

/// The terms of a top-level `and` chain.
fn conjuncts<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::And(a, b) => {
            conjuncts(a, out);
            conjuncts(b, out);
        }
        other => out.push(other),
    }
}

/// Adds `p` to the selector when iptables can express it; false when it cannot.
fn apply(p: &Prim, sel: &mut TraceSelector, family: &mut Option<Family>) -> bool {
    match p {
        Prim::Family(f) => {
            *family = Some(*f);
            true
        }
        Prim::Proto(n) => {
            sel.proto = Some(match n {
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                1 => "icmp".to_string(),
                58 => "ipv6-icmp".to_string(),
                n => n.to_string(),
            });
            true
        }
        Prim::Net { dir, net } => {
            *family = Some(net.family());
            let text = Some(format!("{}/{}", net.addr, net.prefix));
            match dir {
                Dir::Src => sel.src = text,
                Dir::Dst => sel.dst = text,
                Dir::Both => (sel.src, sel.dst) = (text.clone(), text),
                Dir::Either => return false,
            }
            true
        }
        Prim::Port { dir, lo, hi } if lo == hi => match dir {
            Dir::Src => set(&mut sel.sport, *lo),
            Dir::Dst => set(&mut sel.dport, *lo),
            Dir::Both => set(&mut sel.sport, *lo) && set(&mut sel.dport, *lo),
            Dir::Either => set(&mut sel.ports, *lo),
        },
        _ => false,
    }
}

/// Sets a port once (a second `port` term on the same side cannot be one rule).
fn set(slot: &mut Option<u16>, v: u16) -> bool {
    if slot.is_some() {
        return false;
    }
    *slot = Some(v);
    true
}

/// One running tracer per captured netns.
pub struct CompareTrace {
    tracers: Vec<(u32, String, ReferenceTracer, RulesetSnapshot)>,
}

impl CompareTrace {
    /// Starts a tracer in every target netns, with the backend in use there.
    pub fn start(targets: &[Target], family: Family, sel: &TraceSelector) -> Result<CompareTrace> {
        let mut tracers = Vec::new();
        for t in targets {
            let ino = crate::netns::inode_of(&t.path)? as u32;
            let backend = backend_in_use(ino, &t.path, family);
            let target = TraceTarget {
                netns: t.path.clone(),
                backend,
                family,
            };
            // On error, the tracers already started are dropped: they undo their changes.
            let tracer = ReferenceTracer::start(target, sel, true)
                .with_context(|| format!("--compare-trace in netns {}", t.label))?;
            let snap = tracer
                .snapshot_rulesets()
                .with_context(|| format!("rules of netns {}", t.label))?;
            eprintln!("iptrace capture: --compare-trace: netns {}: TRACE rule inserted (iptables-{backend})", t.label);
            tracers.push((ino, t.label.clone(), tracer, snap));
        }
        Ok(CompareTrace { tracers })
    }

    /// Stops the tracers (undoing every change) and compares each netns's kernel trace with
    /// the captured packets of that netns. Every tracer is finished even if one fails.
    pub fn finish(self, captured: &[(u32, CapturedPacket)]) -> Result<Vec<(String, Report)>> {
        let mut reports = Vec::new();
        let mut first_err = None;
        for (ino, label, tracer, snap) in self.tracers {
            let result = tracer
                .finish_scoped()
                .with_context(|| format!("--compare-trace cleanup in netns {label}"))
                .and_then(|(out, scope)| {
                    let ours: Vec<CapturedPacket> = captured
                        .iter()
                        .filter(|(n, _)| *n == ino)
                        .enumerate()
                        .map(|(index, (_, c))| CapturedPacket { index, ..c.clone() })
                        .collect();
                    agreement_in_scope(&out, &ours, &snap, scope.as_ref())
                        .with_context(|| format!("comparing netns {label}"))
                });
            match result {
                Ok(r) => reports.push((label, r)),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(reports),
        }
    }
}

/// The iptables backend whose tables exist in the netns; with none, the one `iptables` uses.
fn backend_in_use(ino: u32, path: &std::path::Path, family: Family) -> IptablesBackend {
    let mut probe = RuleSource::live(&[(ino, path.to_path_buf())], std::time::Duration::ZERO);
    probe.refresh();
    match probe.dump(ino, family).map(|d| d.backend) {
        Some(SaveBackend::Legacy) => IptablesBackend::Legacy,
        Some(SaveBackend::Nft) => IptablesBackend::Nft,
        None => {
            let v = std::process::Command::new("iptables").arg("-V").output();
            if v.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("nf_tables")) {
                IptablesBackend::Nft
            } else {
                IptablesBackend::Legacy
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_to_trace_selector() {
        let (f, s, dropped) =
            selector_for("tcp and dst host 192.168.64.4 and dst port 10000").unwrap();
        assert_eq!(f, Family::Ipv4);
        assert_eq!(
            s.iptables_args(),
            ["-d", "192.168.64.4/32", "-p", "tcp", "--dport", "10000"]
        );
        assert!(dropped.is_empty());
        // `port` is either side: multiport.
        let (_, s, dropped) = selector_for("tcp and port 10000").unwrap();
        assert_eq!(
            s.iptables_args(),
            ["-p", "tcp", "-m", "multiport", "--ports", "10000"]
        );
        assert!(dropped.is_empty(), "{dropped:?}");
        // Two either-side ports cannot be one multiport `and`: the second widens the rule.
        let (_, s, dropped) = selector_for("tcp and port 1 and port 2").unwrap();
        assert_eq!(s.ports, Some(1));
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        let (_, s, dropped) = selector_for("icmp and port 7").unwrap();
        assert_eq!(s.iptables_args(), ["-p", "icmp"]);
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        let (_, s, dropped) = selector_for("tcp or udp").unwrap();
        assert!(s.iptables_args().is_empty());
        assert_eq!(dropped.len(), 1);
        let (f, s, _) = selector_for("src net 2001:db8::/32").unwrap();
        assert_eq!((f, s.src.as_deref()), (Family::Ipv6, Some("2001:db8::/32")));
        let (_, s, dropped) = selector_for("dst port 53").unwrap();
        assert!(s.iptables_args().is_empty() && dropped.iter().any(|d| d.contains("protocol")));
        assert!(selector_for("tcp and and").is_err());
    }
}
