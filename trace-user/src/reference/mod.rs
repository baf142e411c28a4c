//! The kernel's own trace of the packets iptrace captures, collected in the same run
//! (`iptrace capture --compare-trace --allow-system-changes`). This is the only place where
//! iptrace changes the system, and only when the caller passes `allow_system_changes`:
//!
//! - legacy (x_tables): inserts `-j TRACE` rules for the capture filter at the top of raw
//!   PREROUTING and raw OUTPUT inside the netns; sets the root-namespace sysctl
//!   `net.netfilter.nf_log_all_netns=1` when the netns is not the initial one (TRACE lines of
//!   other namespaces are dropped otherwise); reads `/dev/kmsg` from the position at start;
//! - nft (iptables-nft): inserts the same rules through iptables-nft (they become
//!   `meta nftrace set 1`); runs `nft -a monitor trace` inside the netns and collects its
//!   output (nothing reaches the kernel log). Its netlink losses are marked in the output
//!   (`# ERROR: We lost some netlink events!`) and reported, never counted as differences.
//!
//! Everything is undone by [`ReferenceTracer::finish`] or on drop — also during unwinding and
//! after Ctrl-C, as long as the caller's signal handler lets the tracer drop: rules are
//! deleted by their exact specification, the sysctl gets its previous value back, the
//! monitor is killed. Cleanup is idempotent.
//!
//! The inserted rules are part of the ruleset while they exist: rule dumps used for the
//! reconstruction must be taken after [`ReferenceTracer::start`] (they then show the TRACE
//! rule as raw rule 1, and positions agree with the kernel's trace).

mod collect;
mod nf_log;

pub use nf_log::NfLogAllNetns;

use crate::lab::IptablesBackend;
use collect::Collector;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use trace_core::compare::reference::Format;
use trace_core::compare::scope::NetnsScope;
use trace_core::netfilter::Family;

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("collecting the kernel's TRACE output changes the system (TRACE rules, nf_log_all_netns); it needs --allow-system-changes")]
    NotAllowed,
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{cmd}` exited right after start: {stderr}")]
    MonitorDied { cmd: String, stderr: String },
}

pub type Result<T> = std::result::Result<T, ReferenceError>;

/// What to trace: what iptables itself can express in a rule (the capture filter reduced to
/// -s/-d/-p/--sport/--dport). Empty = every packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceSelector {
    /// `-s` (address or CIDR).
    pub src: Option<String>,
    /// `-d`.
    pub dst: Option<String>,
    /// `-p` (tcp, udp, icmp, …); required by iptables for ports.
    pub proto: Option<String>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// Either side (`-m multiport --ports`, tcp/udp/sctp only): tcpdump's `port N`.
    pub ports: Option<u16>,
}

impl TraceSelector {
    /// The rule's match arguments.
    pub fn iptables_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        let mut push = |k: &str, v: String| {
            a.push(k.to_string());
            a.push(v);
        };
        if let Some(s) = &self.src {
            push("-s", s.clone());
        }
        if let Some(d) = &self.dst {
            push("-d", d.clone());
        }
        if let Some(p) = &self.proto {
            push("-p", p.clone());
            if let Some(sp) = self.sport {
                push("--sport", sp.to_string());
            }
            if let Some(dp) = self.dport {
                push("--dport", dp.to_string());
            }
            if let Some(p) = self.ports {
                a.extend(["-m".to_string(), "multiport".to_string()]);
                a.extend(["--ports".to_string(), p.to_string()]);
            }
        }
        a
    }
}

/// Where the tracer works.
#[derive(Debug, Clone)]
pub struct TraceTarget {
    /// The network namespace (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns: PathBuf,
    pub backend: IptablesBackend,
    pub family: Family,
}

/// The collected kernel output, ready for `trace_core::compare::reference::parse`.
#[derive(Debug, Clone)]
pub struct ReferenceOutput {
    pub format: Format,
    pub text: String,
    /// Kernel log records overwritten before we read them (kmsg EPIPE): shown, never silent.
    pub lost: u64,
    /// Problems of the collection itself (e.g. the monitor died early: netlink buffer
    /// overrun), to show with the report: the reference may be incomplete.
    pub warnings: Vec<String>,
}

/// The rulesets of the traced netns taken while the TRACE rules are in place: what the kernel's
/// trace positions refer to.
#[derive(Debug, Clone)]
pub struct RulesetSnapshot {
    /// `iptables-{legacy,nft}-save` (or ip6tables-…) output.
    pub iptables_save: String,
    /// `nft -a list ruleset` (nft backend only): maps the monitor's rule handles.
    pub nft_ruleset: Option<String>,
}

/// Why an agreement could not be computed (bad input, not a disagreement).
#[derive(Debug, thiserror::Error)]
pub enum AgreementError {
    #[error("iptables-save of the traced netns: {0}")]
    Dump(String),
    #[error("nft ruleset of the traced netns: {0}")]
    Nft(#[from] trace_core::compare::nft_ruleset::NftRulesetError),
}

/// Compares the kernel's trace with iptrace's packets (convert reconstructed packets with
/// `CapturedPacket::from(&ReconstructedPacket)`). The report's `exit_code()` is what
/// `iptrace compare` would exit with.
pub fn agreement(
    output: &ReferenceOutput,
    captured: &[trace_core::compare::captured::CapturedPacket],
    snapshot: &RulesetSnapshot,
) -> std::result::Result<trace_core::compare::report::Report, AgreementError> {
    agreement_in_scope(output, captured, snapshot, None)
}

/// [`agreement`] setting aside the reference packets of other network namespaces that
/// `scope` (the traced namespace's interfaces, [`ReferenceTracer::finish_scoped`])
/// recognises: a legacy kernel log holds every namespace's lines.
pub fn agreement_in_scope(
    output: &ReferenceOutput,
    captured: &[trace_core::compare::captured::CapturedPacket],
    snapshot: &RulesetSnapshot,
    scope: Option<&NetnsScope>,
) -> std::result::Result<trace_core::compare::report::Report, AgreementError> {
    use trace_core::compare::{matching::MatchOptions, nft_ruleset, reference, resolve::Resolver};
    let dump = trace_core::rules::parse(&snapshot.iptables_save)
        .map_err(|e| AgreementError::Dump(e.to_string()))?;
    let nft = snapshot
        .nft_ruleset
        .as_deref()
        .map(nft_ruleset::parse)
        .transpose()?;
    let parsed = reference::parse(&output.text, Some(output.format));
    let resolver = Resolver::new(Some(&dump), nft.as_ref());
    let mut report = trace_core::compare::compare_in_scope(
        &parsed,
        captured,
        &resolver,
        &MatchOptions::default(),
        scope,
    );
    // The parser counts the loss markers in the text; kmsg gaps are also counted by the
    // reader (records), which is the larger number when both saw them.
    report.totals.reference_lost = report.totals.reference_lost.max(output.lost);
    report.warnings.extend(output.warnings.iter().cloned());
    Ok(report)
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ReferenceError + 'a {
    move |source| ReferenceError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn is_init_netns(netns: &Path) -> bool {
    let ino = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    ino(netns).is_some() && ino(netns) == ino(Path::new("/proc/1/ns/net"))
}

/// `nsenter --net=NETNS PROGRAM`: works for named and /proc namespaces alike.
pub(super) fn in_netns(netns: &Path, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns.display())).arg(program);
    c
}

/// Runs `cmd`; its stdout is not needed.
fn run(cmd: &mut Command) -> Result<()> {
    output_of(cmd).map(drop)
}

fn output_of(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ReferenceError::Spawn {
            cmd: shown.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ReferenceError::Command {
            cmd: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running collection of the kernel's trace. Undo happens in `finish` or `Drop`.
pub struct ReferenceTracer {
    target: TraceTarget,
    /// (chain, rule spec) of each inserted rule, for `-D`.
    rules: Vec<(String, Vec<String>)>,
    nf_log: Option<NfLogAllNetns>,
    collector: Option<Collector>,
    /// `nft`: the raw table did not exist before (removed again when left empty).
    created_nft_raw: bool,
    /// The traced netns's interfaces, at start and at finish (None: could not be listed).
    scope: Option<NetnsScope>,
    /// Why the interfaces could not be listed (becomes a warning of the output).
    scope_problem: Option<String>,
}

impl ReferenceTracer {
    /// Starts collecting: reader first (so no line is missed), then the TRACE rules.
    pub fn start(
        target: TraceTarget,
        selector: &TraceSelector,
        allow_system_changes: bool,
    ) -> Result<Self> {
        if !allow_system_changes {
            return Err(ReferenceError::NotAllowed);
        }
        let mut t = ReferenceTracer {
            target,
            rules: Vec::new(),
            nf_log: None,
            collector: None,
            created_nft_raw: false,
            scope: None,
            scope_problem: None,
        };
        // On any error below, dropping `t` undoes what was done so far.
        match t.target.backend {
            IptablesBackend::Legacy => {
                if !is_init_netns(&t.target.netns) {
                    t.nf_log = Some(NfLogAllNetns::acquire()?);
                }
                t.collector = Some(Collector::kmsg()?);
            }
            IptablesBackend::Nft => {
                t.created_nft_raw = !t.nft_raw_exists();
                t.collector = Some(Collector::nft_monitor(&t.target)?);
            }
        }
        for chain in ["PREROUTING", "OUTPUT"] {
            t.insert_trace_rule(chain, selector)?;
        }
        match netns_ifaces(&t.target.netns) {
            Ok(s) => t.scope = Some(s),
            Err(e) => {
                t.scope_problem = Some(format!(
                    "the netns's interfaces are unknown ({e}): other namespaces' lines in \
                     the kernel log cannot be set aside"
                ))
            }
        }
        Ok(t)
    }

    fn iptables_bin(&self) -> String {
        let v6 = if self.target.family == Family::Ipv6 {
            "ip6"
        } else {
            "ip"
        };
        format!("{v6}tables-{}", self.target.backend.as_str())
    }

    fn insert_trace_rule(&mut self, chain: &str, sel: &TraceSelector) -> Result<()> {
        // The comment makes the rule ours: `-D` by this exact spec cannot remove a user's rule.
        let mut spec = sel.iptables_args();
        let tag = format!("iptrace-compare-{}", std::process::id());
        spec.extend(["-m", "comment", "--comment", &tag, "-j", "TRACE"].map(String::from));
        let bin = self.iptables_bin();
        run(in_netns(&self.target.netns, &bin)
            .args(["-w", "-t", "raw", "-I", chain, "1"])
            .args(&spec))?;
        self.rules.push((chain.to_string(), spec));
        Ok(())
    }

    /// The netns's rulesets now (call after `start`, while the TRACE rules are in place).
    pub fn snapshot_rulesets(&self) -> Result<RulesetSnapshot> {
        let v6 = if self.target.family == Family::Ipv6 {
            "ip6"
        } else {
            "ip"
        };
        let save = format!("{v6}tables-{}-save", self.target.backend.as_str());
        let iptables_save = output_of(&mut in_netns(&self.target.netns, &save))?;
        let nft_ruleset = match self.target.backend {
            IptablesBackend::Nft => Some(output_of(
                in_netns(&self.target.netns, "nft").args(["-a", "list", "ruleset"]),
            )?),
            IptablesBackend::Legacy => None,
        };
        Ok(RulesetSnapshot {
            iptables_save,
            nft_ruleset,
        })
    }

    fn nft_raw_exists(&self) -> bool {
        let fam = if self.target.family == Family::Ipv6 {
            "ip6"
        } else {
            "ip"
        };
        run(in_netns(&self.target.netns, "nft").args(["list", "table", fam, "raw"])).is_ok()
    }

    /// Stops collecting, undoes every change, and returns the kernel's output.
    pub fn finish(self) -> Result<ReferenceOutput> {
        self.finish_scoped().map(|(out, _)| out)
    }

    /// [`Self::finish`], also returning the traced netns's interfaces (seen at start and at
    /// finish) for [`agreement_in_scope`] when the reference may hold other namespaces'
    /// packets: the legacy kernel log. None for nft: the monitor runs inside the netns and
    /// netlink trace events are per netns.
    pub fn finish_scoped(mut self) -> Result<(ReferenceOutput, Option<NetnsScope>)> {
        // Interfaces created during the capture (containers) are ours too; one that came
        // and went in between is not known, and its lines count as foreign (listed).
        if let (Some(s), Ok(now)) = (&mut self.scope, netns_ifaces(&self.target.netns)) {
            s.extend(now.ifaces);
        }
        // Let the last events of in-flight packets arrive before the rules go.
        std::thread::sleep(Duration::from_millis(200));
        let errors = self.cleanup_rules();
        let (text, lost, mut warnings) = self
            .collector
            .take()
            .map(Collector::finish)
            .unwrap_or_default();
        let mut errors = errors.into_iter().chain(self.release_sysctl());
        if let Some(e) = errors.next() {
            return Err(e);
        }
        let format = match self.target.backend {
            IptablesBackend::Legacy => Format::KernelLog,
            IptablesBackend::Nft => Format::NftMonitor,
        };
        let shared_log = self.target.backend == IptablesBackend::Legacy;
        if shared_log {
            warnings.extend(self.scope_problem.take());
        }
        let out = ReferenceOutput {
            format,
            text,
            lost,
            warnings,
        };
        Ok((out, self.scope.take().filter(|_| shared_log)))
    }

    /// Deletes the inserted rules (idempotent: each is removed from the list first).
    fn cleanup_rules(&mut self) -> Vec<ReferenceError> {
        let mut errors = Vec::new();
        let bin = self.iptables_bin();
        while let Some((chain, spec)) = self.rules.pop() {
            if let Err(e) = run(in_netns(&self.target.netns, &bin)
                .args(["-w", "-t", "raw", "-D", &chain])
                .args(&spec))
            {
                errors.push(e);
            }
        }
        if std::mem::take(&mut self.created_nft_raw) {
            // iptables-nft created the table for our rules: remove it if nothing else uses it.
            let fam = if self.target.family == Family::Ipv6 {
                "ip6"
            } else {
                "ip"
            };
            let listing = in_netns(&self.target.netns, "nft")
                .args(["list", "table", fam, "raw"])
                .output();
            let empty = listing.is_ok_and(|o| {
                o.status.success()
                    && !String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .any(is_nft_rule_line)
            });
            if empty {
                if let Err(e) =
                    run(in_netns(&self.target.netns, "nft").args(["delete", "table", fam, "raw"]))
                {
                    errors.push(e);
                }
            }
        }
        errors
    }

    fn release_sysctl(&mut self) -> Option<ReferenceError> {
        self.nf_log.take().and_then(|g| g.release().err())
    }
}

/// The interfaces of `netns` (`ip link show` inside it): names and link-layer addresses.
fn netns_ifaces(netns: &Path) -> Result<NetnsScope> {
    let text = output_of(in_netns(netns, "ip").args(["link", "show"]))?;
    Ok(NetnsScope::from_ip_link(&text))
}

/// A rule line of `nft list table` (not a chain header, type line, or brace).
fn is_nft_rule_line(l: &str) -> bool {
    let t = l.trim();
    !(t.is_empty()
        || t.starts_with('#')
        || t.starts_with("table ")
        || t.starts_with("chain ")
        || t.starts_with("type ")
        || t.starts_with("policy ")
        || t == "}")
}

impl Drop for ReferenceTracer {
    fn drop(&mut self) {
        for e in self.cleanup_rules() {
            eprintln!("iptrace: cleanup: {e}");
        }
        if let Some(c) = self.collector.take() {
            c.finish();
        }
        if let Some(e) = self.release_sysctl() {
            eprintln!("iptrace: cleanup: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_without_permission() {
        let target = TraceTarget {
            netns: "/proc/self/ns/net".into(),
            backend: IptablesBackend::Legacy,
            family: Family::Ipv4,
        };
        assert!(matches!(
            ReferenceTracer::start(target, &TraceSelector::default(), false),
            Err(ReferenceError::NotAllowed)
        ));
    }

    #[test]
    fn selector_builds_iptables_matches() {
        let s = TraceSelector {
            dst: Some("192.168.64.4/32".into()),
            proto: Some("tcp".into()),
            dport: Some(10000),
            ..Default::default()
        };
        assert_eq!(
            s.iptables_args(),
            ["-d", "192.168.64.4/32", "-p", "tcp", "--dport", "10000"]
        );
        let no_proto = TraceSelector {
            sport: Some(1),
            ..Default::default()
        };
        assert!(no_proto.iptables_args().is_empty(), "ports need -p");
        let either = TraceSelector {
            proto: Some("tcp".into()),
            ports: Some(10000),
            ..Default::default()
        };
        assert_eq!(
            either.iptables_args(),
            ["-p", "tcp", "-m", "multiport", "--ports", "10000"]
        );
    }
}
