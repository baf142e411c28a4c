//! Reconstruction: for each captured packet, each hook it passed and each table there, replay
//! the table with the evaluator on the packet as the table saw it, then keep only the
//! candidate paths that agree with what the kernel was observed doing — the table's verdict,
//! the NAT translation visible after the table, the mark/conntrack-mark/TOS/TTL changes.
//!
//! Each table ends up [`Status::Confirmed`] (one path fits), [`Status::Ambiguous`] (several
//! fit; all are kept) or [`Status::Inconsistent`] (none fits — stale dump, unsupported module —
//! with the reason). Nothing is guessed silently.
//!
//! nat tables run only for a connection's first packet (and RELATED ones): conntrack then
//! applies the stored binding to later packets without traversing the table
//! (nf_nat_inet_fn). Such tables are reported as skipped, with no steps — exactly what TRACE
//! prints for them (nothing).

mod evidence;
pub mod positions;

use crate::eval::{
    Assumption, Candidate, CtTuples, EvalInput, Evaluator, NatRequest, NetContext, TableVerdict,
    Tuple,
};
use crate::event::Headers;
use crate::netfilter::{Hook, Table};
use crate::packet::{HookPass, ObservedVerdict, PacketState, PacketTrace, TableObservation};
use crate::step::StepId;
use serde::{Deserialize, Serialize};

/// How well the kernel's evidence pins down the path through a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Confirmed,
    Ambiguous,
    Inconsistent,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Confirmed => "confirmed",
            Status::Ambiguous => "ambiguous",
            Status::Inconsistent => "inconsistent",
        }
    }
}

/// One TRACE position on a path, with the rule text and the packet state logged there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub id: StepId,
    /// The rule (`-A` arguments, without `-A CHAIN`); None for a chain end.
    pub rule_text: Option<String>,
    pub mark: u32,
    pub tos: u8,
    pub ttl: u8,
    /// skb->nf_trace was set at this step: the kernel's legacy TRACE printed it.
    pub traced: bool,
    /// The end of a user chain reached without a RETURN rule. Legacy x_tables has a real
    /// RETURN entry there and TRACE prints it (`return:N`); nf_tables (iptables-nft) returns
    /// implicitly and its trace (xtables-monitor, nft monitor) shows nothing for it.
    #[serde(default)]
    pub implicit_return: bool,
}

/// A NAT translation, as requested by a rule and observed across the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NatInfo {
    /// The rule that asked for it.
    pub step: StepId,
    pub request: NatRequest,
    pub from: Endpoint,
    pub to: Endpoint,
}

/// Address and port (None for protocols without ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub addr: std::net::IpAddr,
    pub port: Option<u16>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.addr, self.port) {
            (std::net::IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}"),
            (a, Some(p)) => write!(f, "{a}:{p}"),
            (a, None) => write!(f, "{a}"),
        }
    }
}

/// One candidate path through a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Path {
    pub steps: Vec<Step>,
    pub verdict: TableVerdict,
    pub nat: Option<NatInfo>,
    pub mark: u32,
    pub ctmark: Option<u32>,
    pub assumptions: Vec<Assumption>,
    /// A TRACE target ran on this path (skb->nf_trace set from then on).
    pub sets_trace: bool,
    /// Why the evidence rules this path out (only on paths kept for an inconsistent table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// The reconstruction of one table on one hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableResult {
    pub table: Table,
    pub status: Status,
    /// Why inconsistent, or a note (e.g. why the table was not traversed).
    pub reason: Option<String>,
    /// The table was not traversed (nat after the first packet of a connection).
    pub skipped: bool,
    pub observed: ObservedVerdict,
    /// Fitting paths (one when confirmed); for an inconsistent table, every evaluated path
    /// with the reason it was ruled out.
    pub paths: Vec<Path>,
    /// Candidate paths the evidence ruled out.
    pub ruled_out: usize,
    /// The evaluator stopped exploring branch points (too many paths).
    pub truncated: bool,
    /// What the kernel's rule positions (x_tables match/target calls) showed, when the
    /// capture had them ([`positions::apply`]); None otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<positions::PositionsCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconstructedHook {
    pub hook: Hook,
    /// Aligned with the packet's `hooks[i].tables`.
    pub tables: Vec<TableResult>,
}

/// A packet with its reconstructed path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconstructedPacket {
    pub packet: PacketTrace,
    /// Aligned with `packet.hooks`.
    pub hooks: Vec<ReconstructedHook>,
    /// The worst table status.
    pub status: Status,
    /// skb->nf_trace when the traversal ended (a TRACE target ran, or it was set on entry):
    /// carried into the continuation of a packet looped back through `lo`.
    #[serde(default)]
    pub nf_trace_end: bool,
}

impl ReconstructedPacket {
    /// The path's steps in order (first path of every table), with their table observation.
    pub fn steps(&self) -> impl Iterator<Item = (&HookPass, &TableObservation, &Step)> {
        self.hooks
            .iter()
            .zip(&self.packet.hooks)
            .flat_map(|(rh, hp)| {
                rh.tables.iter().zip(&hp.tables).flat_map(move |(tr, obs)| {
                    tr.paths
                        .first()
                        .into_iter()
                        .flat_map(move |p| p.steps.iter().map(move |s| (hp, obs, s)))
                })
            })
    }
}

/// Reconstructs one packet against the rules of its netns (`ev` must hold the ruleset of the
/// packet's family) and the netns's host state.
pub fn reconstruct(packet: &PacketTrace, ev: &Evaluator, ctx: &NetContext) -> ReconstructedPacket {
    reconstruct_from(packet, ev, ctx, false)
}

/// Like [`reconstruct`], for a traversal that starts with skb->nf_trace already set: the
/// second half of a packet sent to `lo`, whose first half (OUTPUT, POSTROUTING) set it.
pub fn reconstruct_from(
    packet: &PacketTrace,
    ev: &Evaluator,
    ctx: &NetContext,
    nf_trace_start: bool,
) -> ReconstructedPacket {
    let (hooks, status, nf_trace_end) = reconstruct_hooks(packet, ev, ctx, nf_trace_start);
    ReconstructedPacket {
        packet: packet.clone(),
        hooks,
        status,
        nf_trace_end,
    }
}

/// [`reconstruct_from`] taking the packet by value: the collector's path, which has no use
/// for the assembled packet afterwards and so saves a deep copy per packet.
pub fn reconstruct_owned(
    packet: PacketTrace,
    ev: &Evaluator,
    ctx: &NetContext,
    nf_trace_start: bool,
) -> ReconstructedPacket {
    let (hooks, status, nf_trace_end) = reconstruct_hooks(&packet, ev, ctx, nf_trace_start);
    ReconstructedPacket {
        packet,
        hooks,
        status,
        nf_trace_end,
    }
}

/// Every table of every hook, the packet's worst status, and whether nf_trace is set at the end.
fn reconstruct_hooks(
    packet: &PacketTrace,
    ev: &Evaluator,
    ctx: &NetContext,
    nf_trace_start: bool,
) -> (Vec<ReconstructedHook>, Status, bool) {
    let mut nf_trace = nf_trace_start;
    let tuples = ct_tuples(packet);
    let mut hooks = Vec::with_capacity(packet.hooks.len());
    for (hi, hp) in packet.hooks.iter().enumerate() {
        let mut tables = Vec::with_capacity(hp.tables.len());
        for obs in &hp.tables {
            let facts = Facts {
                nf_trace,
                tuples,
                dst_local: routed_local(packet, hi, obs),
            };
            let tr = reconstruct_table(packet, hp, obs, ev, ctx, facts);
            // skb->nf_trace stays set for the rest of the traversal once a TRACE target ran.
            nf_trace |= tr.paths.first().is_some_and(|p| p.sets_trace);
            tables.push(tr);
        }
        hooks.push(ReconstructedHook {
            hook: hp.hook,
            tables,
        });
    }
    let status = hooks
        .iter()
        .flat_map(|h| &h.tables)
        .map(|t| t.status)
        .max()
        .unwrap_or(Status::Confirmed);
    (hooks, status, nf_trace)
}

/// The conntrack tuples this traversal shows. A packet enters conntrack (PREROUTING/OUTPUT,
/// before any NAT) with the tuple of its direction, and leaves its last hook
/// (POSTROUTING/INPUT, after nat) as the inverse of the other direction's tuple. The latter
/// is final only for established connections: while a connection's first packet traverses,
/// its reply tuple still changes (SNAT is set up in POSTROUTING). RELATED packets (ICMP
/// errors) carry neither tuple.
fn ct_tuples(packet: &PacketTrace) -> CtTuples {
    let ct = packet
        .hooks
        .iter()
        .flat_map(|h| &h.tables)
        .find_map(|t| t.before.ct.or(t.after.as_ref().and_then(|a| a.ct)));
    // A packet coming back in through `lo` was translated on its way out: its entry headers
    // are not the tuple conntrack recorded at OUTPUT.
    let entry = packet
        .hooks
        .first()
        .filter(|h| {
            matches!(h.hook, Hook::Prerouting | Hook::Output) && h.in_dev.as_deref() != Some("lo")
        })
        .and_then(|h| h.tables.first())
        .map(|t| Tuple::of(&t.before.headers));
    let exit = packet
        .hooks
        .last()
        .filter(|h| matches!(h.hook, Hook::Postrouting | Hook::Input))
        .and_then(|h| h.tables.last())
        .and_then(|t| t.after.as_ref())
        .map(|a| Tuple::of(&a.headers).inverse());
    match ct.map(|c| c.ctinfo) {
        Some(2) => CtTuples {
            orig: entry,
            reply: None,
        },
        Some(0) => CtTuples {
            orig: entry,
            reply: exit.filter(|_| !packet.incomplete),
        },
        Some(3) => CtTuples {
            orig: exit.filter(|_| !packet.incomplete),
            reply: entry,
        },
        _ => CtTuples::default(),
    }
}

/// What the whole traversal tells one table's replay.
#[derive(Debug, Clone, Copy)]
struct Facts {
    nf_trace: bool,
    tuples: CtTuples,
    dst_local: Option<bool>,
}

/// The kernel's routing decision about the destination a table sees, from where the packet
/// went: PREROUTING is followed by INPUT (local) or FORWARD (not), decided on the destination
/// leaving PREROUTING; OUTPUT and POSTROUTING packets are routed to `lo` exactly when the
/// destination is local (the route is looked up before OUTPUT and again after a DNAT there);
/// FORWARD destinations are not local, INPUT ones are. None when the table sees a destination
/// the decision was not made on (rewritten later in the hook) or the next hook is unknown.
fn routed_local(packet: &PacketTrace, hi: usize, obs: &TableObservation) -> Option<bool> {
    let hp = &packet.hooks[hi];
    let dst = obs.before.headers.dst;
    match hp.hook {
        Hook::Forward => Some(false),
        Hook::Input => Some(true),
        Hook::Prerouting => {
            let leaving = hp.tables.last()?.after.as_ref()?.headers.dst;
            let next = packet.hooks.get(hi + 1)?.hook;
            (leaving == dst)
                .then_some(next == Hook::Input)
                .filter(|_| matches!(next, Hook::Input | Hook::Forward))
        }
        Hook::Output | Hook::Postrouting => {
            // The route (and so the output device) belongs to the destination the hook
            // started with; a table after a DNAT in this hook sees another one.
            let entering = hp.tables.first()?.before.headers.dst;
            let out = hp.out_dev.as_deref()?;
            (entering == dst).then_some(out == "lo")
        }
    }
}

fn reconstruct_table(
    packet: &PacketTrace,
    hp: &HookPass,
    obs: &TableObservation,
    ev: &Evaluator,
    ctx: &NetContext,
    facts: Facts,
) -> TableResult {
    let mut result = TableResult {
        table: obs.table,
        status: Status::Confirmed,
        reason: None,
        skipped: false,
        observed: obs.verdict.clone(),
        paths: Vec::new(),
        ruled_out: 0,
        truncated: false,
        positions: None,
    };
    if ev.ruleset().family != packet.family {
        return inconsistent(
            result,
            format!(
                "rule dump is {:?}, packet is {:?}",
                ev.ruleset().family,
                packet.family
            ),
        );
    }
    if obs.table == Table::Nat {
        if let Some(why) = evidence::nat_skipped(hp.hook, &obs.before) {
            result.skipped = true;
            result.reason = Some(why.clone());
            if matches!(obs.verdict, ObservedVerdict::Drop { .. }) {
                if why == evidence::ICMP_ERROR_NAT {
                    // nf_nat_icmp_reply_translation refused it: a drop without any rule.
                    result.reason = Some(format!("{why}; that translation dropped it"));
                    return result;
                }
                return inconsistent(
                    result,
                    "dropped in the nat hook although the table was not traversed".into(),
                );
            }
            return result;
        }
    }
    let input = table_input(hp, obs, facts.nf_trace, facts.tuples, facts.dst_local);
    let traversal = match ev.evaluate(obs.table, &input, ctx) {
        Ok(t) => t,
        Err(e) => return inconsistent(result, e.to_string()),
    };
    result.truncated = traversal.truncated;
    // Other stages between the same two probes (or a lost probe event): before/after and
    // the verdict describe the group, so only what holds for every member is evidence.
    let shared = hp
        .stages
        .iter()
        .any(|s| s.shared && s.priority == obs.priority && s.stage.table() == Some(obs.table));
    if shared {
        result.reason = Some(
            "shares its probes with other stages: only the group's outcome is evidence".into(),
        );
    }
    let mut fits = Vec::new();
    let mut rejected = Vec::new();
    for cand in &traversal.candidates {
        match evidence::check(obs, hp.hook, cand, ctx, hp, shared) {
            Ok(()) => fits.push(to_path(ev, obs, hp.hook, cand)),
            Err(why) => rejected.push((cand, why)),
        }
    }
    result.ruled_out = rejected.len();
    // Ruled-out paths are only shown when nothing fits (materialising them costs).
    let rejected: Vec<Path> = if fits.is_empty() {
        rejected
            .into_iter()
            .map(|(c, why)| Path {
                rejected: Some(why),
                ..to_path(ev, obs, hp.hook, c)
            })
            .collect()
    } else {
        Vec::new()
    };
    // Fewest assumptions first: the path that needs no undecidable match to be true/false
    // leads when several fit (they are all shown) — after those that assume a packet feature
    // ordinary traffic lacks (an IPv6 extension header).
    fits.sort_by_key(|p| {
        (
            crate::eval::implausible_assumptions(&p.assumptions),
            p.assumptions.len(),
        )
    });
    let distinct = count_distinct_step_lists(&fits);
    match distinct {
        0 => {
            let reason = rejected
                .first()
                .and_then(|p| p.rejected.clone())
                .unwrap_or_default();
            result.paths = rejected;
            return inconsistent(result, reason);
        }
        1 => result.status = Status::Confirmed,
        _ => result.status = Status::Ambiguous,
    }
    if result.truncated && result.status == Status::Confirmed {
        result.status = Status::Ambiguous;
        result.reason = Some(format!(
            "more than {} paths: not all explored",
            crate::eval::MAX_CANDIDATES
        ));
    }
    result.paths = fits;
    result
}

/// What the evaluator gets for one table of a hook pass: the pass's devices, MAC and socket
/// owner, the packet as the table received it, and the facts the traversal shows.
fn table_input<'a>(
    hp: &'a HookPass,
    obs: &'a TableObservation,
    nf_trace: bool,
    tuples: CtTuples,
    dst_local: Option<bool>,
) -> EvalInput<'a> {
    // The owner as the table received it (it can appear between two tables).
    let owner = hp.owner_before(obs.priority);
    EvalInput {
        hook: hp.hook,
        in_dev: hp.in_dev.as_deref(),
        out_dev: hp.out_dev.as_deref(),
        mac: hp.mac.as_deref(),
        uid: owner.map(|o| o.0),
        gid: owner.map(|o| o.1),
        state: &obs.before,
        nf_trace,
        tuples,
        dst_local,
        bridge: hp.bridge.as_deref(),
    }
}

fn inconsistent(mut r: TableResult, reason: String) -> TableResult {
    r.status = Status::Inconsistent;
    r.reason = Some(reason);
    r
}

fn count_distinct_step_lists(paths: &[Path]) -> usize {
    // The usual case (one fitting path) needs no comparison.
    if paths.len() < 2 {
        return paths.len();
    }
    let mut seen: Vec<Vec<&StepId>> = Vec::new();
    for p in paths {
        let ids: Vec<&StepId> = p.steps.iter().map(|s| &s.id).collect();
        if !seen.contains(&ids) {
            seen.push(ids);
        }
    }
    seen.len()
}

fn to_path(ev: &Evaluator, obs: &TableObservation, hook: Hook, c: &Candidate) -> Path {
    let table = obs.table;
    let steps: Vec<Step> = c
        .steps
        .iter()
        .map(|s| Step {
            id: ev.step_id(table, s),
            rule_text: ev.rule_text(table, s).map(str::to_string),
            mark: s.mark,
            tos: s.tos,
            ttl: s.ttl,
            traced: s.traced,
            implicit_return: s.kind == crate::step::StepKind::Return
                && ev.rule_text(table, s).is_none(),
        })
        .collect();
    let nat = c.nat.as_ref().map(|(i, req)| {
        let (from, to) = evidence::nat_endpoints(
            hook,
            &obs.before.headers,
            obs.after.as_ref().map(|a| &*a.headers),
        );
        NatInfo {
            step: steps[*i].id.clone(),
            request: req.clone(),
            from,
            to,
        }
    });
    Path {
        steps,
        verdict: c.verdict.clone(),
        nat,
        mark: c.mark,
        ctmark: c.ctmark,
        assumptions: c.assumptions.clone(),
        sets_trace: c.sets_trace,
        rejected: None,
    }
}

/// Headers a table's TRACE lines show at a step (the table's input with the TOS/TTL the path
/// had set by then).
pub fn headers_at(before: &PacketState, step: &Step) -> Headers {
    let mut h = Headers::clone(&before.headers);
    h.tos = step.tos;
    h.ttl = step.ttl;
    h
}

/// A packet that cannot be reconstructed at all (no rule dump for its netns/family, a dump
/// that does not parse): every table inconsistent with `reason`, no steps.
pub fn unresolved(packet: &PacketTrace, reason: &str) -> ReconstructedPacket {
    ReconstructedPacket {
        packet: packet.clone(),
        hooks: unresolved_hooks(packet, reason),
        status: Status::Inconsistent,
        nf_trace_end: false,
    }
}

/// [`unresolved`] taking the packet by value (no copy).
pub fn unresolved_owned(packet: PacketTrace, reason: &str) -> ReconstructedPacket {
    let hooks = unresolved_hooks(&packet, reason);
    ReconstructedPacket {
        packet,
        hooks,
        status: Status::Inconsistent,
        nf_trace_end: false,
    }
}

fn unresolved_hooks(packet: &PacketTrace, reason: &str) -> Vec<ReconstructedHook> {
    packet
        .hooks
        .iter()
        .map(|hp| ReconstructedHook {
            hook: hp.hook,
            tables: hp
                .tables
                .iter()
                .map(|obs| TableResult {
                    table: obs.table,
                    status: Status::Inconsistent,
                    reason: Some(reason.to_string()),
                    skipped: false,
                    observed: obs.verdict.clone(),
                    paths: Vec::new(),
                    ruled_out: 0,
                    truncated: false,
                    positions: None,
                })
                .collect(),
        })
        .collect()
}
