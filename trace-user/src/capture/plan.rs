//! Which namespaces to trace and where the probes go in each: the tables actually registered
//! there (legacy iptables: /proc/thread-self/net/ip{,6}_tables_names read from inside the
//! netns; nftables: base chains from `nft -j list ruleset`), placed by the assembler's
//! [`HookPlan::needed`] (or [`HookPlan::bracketing`] with `--probes all`) so the probes the
//! kernel runs and the plan assembly uses are one.
//!
//! Inert stages ([`inert`]) get no probe after them: an iptables table or nft base chain whose
//! chain on the hook has no rules and policy ACCEPT can neither change nor drop a packet.
//! Legacy tables are judged from the iptables-legacy dump ([`RuleView`]), nft-registered ones
//! (iptables-nft tables, native chains) from `nft -j list ruleset`; a table whose rules were
//! not read is never inert. nat tables are never inert: even empty, they apply the
//! connection's NAT to later packets and set up null bindings for new ones.
//!
//! Verdict-only tables ([`verdict_only`]: legacy tables whose every rule only accepts, drops,
//! rejects, returns, jumps, logs or counts) cannot change the packet: FORWARD and OUTPUT need
//! no probe after them when they are the last that can act there
//! ([`ProbePlan::derive_across_hooks_with`] rule 3).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use trace_core::assemble::{HookPlan, ProbePlan, StageSlot};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::packet::Stage;
use trace_core::rules::{Policy, Ruleset, Target as RuleTarget};

use crate::netns;

/// A network namespace selected with `--netns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What the user wrote (or "current").
    pub label: String,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--netns {0}: no such network namespace (name in /run/netns, path, or pid)")]
    NoNetns(String),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
}

/// `NAME` (/run/netns/NAME), a path, a PID, or `all` (every named netns and the current one).
pub fn targets(specs: &[String]) -> Result<Vec<Target>, PlanError> {
    if specs.is_empty() {
        return Ok(vec![Target {
            label: "current".into(),
            path: "/proc/self/ns/net".into(),
        }]);
    }
    let mut out: Vec<Target> = Vec::new();
    for spec in specs {
        if spec == "all" {
            out.push(Target {
                label: "current".into(),
                path: "/proc/self/ns/net".into(),
            });
            if let Ok(dir) = std::fs::read_dir(netns::NETNS_RUN_DIR) {
                let mut names: Vec<String> = dir
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                out.extend(names.into_iter().map(|n| Target {
                    path: netns::path_of(&n),
                    label: n,
                }));
            }
            continue;
        }
        let path = if spec.contains('/') {
            PathBuf::from(spec)
        } else if let Ok(pid) = spec.parse::<u32>() {
            netns::path_of_pid(pid)
        } else {
            netns::path_of(spec)
        };
        if !path.exists() {
            return Err(PlanError::NoNetns(spec.clone()));
        }
        out.push(Target {
            label: spec.clone(),
            path,
        });
    }
    // The same namespace named twice (e.g. `all` plus a name) is attached once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|t| {
        netns::inode_of(&t.path)
            .map(|i| seen.insert(i))
            .unwrap_or(true)
    });
    Ok(out)
}

/// A native nftables base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftChain {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub hook: Hook,
    pub priority: i32,
    /// Rules in the chain itself (jumps included).
    pub rules: usize,
    /// Policy accept (nft's default when it prints none).
    pub accepts: bool,
    /// A nat-type chain (never inert, see the module docs).
    pub nat: bool,
}

/// What is registered in one netns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registered {
    pub ipv4: Vec<Table>,
    pub ipv6: Vec<Table>,
    pub nft: Vec<NftChain>,
}

/// Read the registrations of the netns at `path` (on a thread inside it).
pub fn discover(path: &Path) -> Result<Registered, PlanError> {
    let (ipv4, ipv6) = netns::run_in(path, || {
        (
            tables_in("/proc/thread-self/net/ip_tables_names"),
            tables_in("/proc/thread-self/net/ip6_tables_names"),
        )
    })?;
    let nft = nft_chains(path);
    Ok(Registered { ipv4, ipv6, nft })
}

fn tables_in(file: &str) -> Vec<Table> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Table::from_name(l.trim()))
        .collect()
}

/// Re-reads the rule counts and policies of the nft base chains already known (a re-plan
/// after a rule change); a chain that is gone counts as one that can act. Chains registered
/// since are not added: the probes' hooks and first probes stay as attached.
pub fn refresh_nft(reg: &mut Registered, path: &Path) {
    if reg.nft.is_empty() {
        return;
    }
    let fresh = nft_chains(path);
    for c in &mut reg.nft {
        let now = fresh
            .iter()
            .find(|f| f.family == c.family && f.table == c.table && f.chain == c.chain);
        match now {
            Some(f) => (c.rules, c.accepts) = (f.rules, f.accepts),
            None => c.accepts = false,
        }
    }
}

/// Base chains from `nft -j list ruleset` run inside the netns; empty when nft is missing.
fn nft_chains(path: &Path) -> Vec<NftChain> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(["nft", "-j", "list", "ruleset"])
        .output();
    match out {
        Ok(o) if o.status.success() => parse_nft_chains(&String::from_utf8_lossy(&o.stdout)),
        _ => Vec::new(),
    }
}

/// Base chains (with hook, priority, rule count and policy) of families ip, ip6 and inet in
/// `nft -j` output.
pub fn parse_nft_chains(json: &str) -> Vec<NftChain> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let Some(items) = v.get("nftables").and_then(|n| n.as_array()) else {
        return Vec::new();
    };
    let mut chains: Vec<NftChain> = items
        .iter()
        .filter_map(|item| base_chain(item.get("chain")?))
        .collect();
    for r in items.iter().filter_map(|i| i.get("rule")) {
        let key = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        let (fam, table, chain) = (key("family"), key("table"), key("chain"));
        if let Some(c) = chains
            .iter_mut()
            .find(|c| c.family == fam && c.table == table && c.chain == chain)
        {
            c.rules += 1;
        }
    }
    chains
}

fn base_chain(c: &serde_json::Value) -> Option<NftChain> {
    let hook = match c.get("hook")?.as_str()? {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        _ => return None,
    };
    let family = c.get("family")?.as_str()?.to_string();
    if !matches!(family.as_str(), "ip" | "ip6" | "inet") {
        return None;
    }
    let text = |k: &str| c.get(k).and_then(|v| v.as_str());
    Some(NftChain {
        family,
        table: text("table")?.to_string(),
        chain: text("name")?.to_string(),
        hook,
        priority: c.get("prio")?.as_i64()? as i32,
        rules: 0,
        accepts: text("policy").is_none_or(|p| p == "accept"),
        nat: text("type") == Some("nat"),
    })
}

/// Where the probes go: `--probes needed` (default) or `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProbeMode {
    /// None after inert stages, conntrack's folded into nat's ([`HookPlan::needed`]).
    #[default]
    Needed,
    /// One before the first stage and one after every stage ([`HookPlan::bracketing`]).
    All,
}

/// What the rule dumps of one netns say, to tell inert stages: the iptables-legacy dump of
/// each family whose dump was read from that backend.
#[derive(Debug, Clone, Default)]
pub struct RuleView {
    pub legacy: Vec<(Family, Arc<Ruleset>)>,
}

impl RuleView {
    fn legacy(&self, family: Family) -> Option<&Ruleset> {
        self.legacy
            .iter()
            .find(|(f, _)| *f == family)
            .map(|(_, r)| &**r)
    }
}

/// The probes of (`family`, `hook`): `view` None (rules not read) brackets every stage.
pub fn hook_plan(
    reg: &Registered,
    view: Option<&RuleView>,
    family: Family,
    hook: Hook,
    mode: ProbeMode,
) -> HookPlan {
    let stages = stages(reg, family, hook);
    match (mode, view) {
        (ProbeMode::Needed, Some(v)) => {
            HookPlan::needed(stages, |s| inert(reg, v, family, hook, &s.stage))
        }
        _ => HookPlan::bracketing(stages),
    }
}

/// The probes of every hook of `family`: [`hook_plan`] each, then with `--probes needed`
/// and the rules read, the probes whose states follow from a neighbouring hook's left out
/// ([`ProbePlan::derive_across_hooks`]).
pub fn family_plans(
    reg: &Registered,
    view: Option<&RuleView>,
    family: Family,
    mode: ProbeMode,
) -> Vec<(Hook, HookPlan)> {
    let mut plans: Vec<(Hook, HookPlan)> = Hook::ALL
        .into_iter()
        .map(|h| (h, hook_plan(reg, view, family, h, mode)))
        .collect();
    if let (ProbeMode::Needed, Some(v)) = (mode, view) {
        ProbePlan::derive_across_hooks_with(&mut plans, |hook, s| {
            verdict_only(reg, v, family, hook, &s.stage)
        });
    }
    plans
}

/// Can `stage` only let a packet through or drop it on (`family`, `hook`), changing nothing
/// the probes observe (headers, mark, conntrack entry or its mark) and never stealing or
/// queueing it? Only a legacy iptables table other than nat, not also registered through
/// nft, whose rules were read and where every rule of every chain (simple and conservative:
/// not only the chains the hook reaches) has a target in [`verdict_only_target`]'s list.
/// nft-registered tables and native nft chains never are: only their rule counts are read.
pub fn verdict_only(
    reg: &Registered,
    view: &RuleView,
    family: Family,
    hook: Hook,
    stage: &Stage,
) -> bool {
    let Stage::Table { table } = stage else {
        return false;
    };
    if *table == Table::Nat || !legacy_tables(reg, family).contains(table) {
        return false;
    }
    let nft = nft_chains_of(reg, family, hook).any(|c| c.table == table.name());
    !nft && view
        .legacy(family)
        .and_then(|r| r.table(*table))
        .is_some_and(|t| {
            t.chains
                .iter()
                .flat_map(|c| &c.rules)
                .all(|r| verdict_only_target(&r.target))
        })
}

/// ACCEPT, DROP, REJECT, RETURN, a jump or goto to a user chain, LOG, NFLOG, or no target
/// (a counter rule). Anything else (MARK, CONNMARK, TCPMSS, NFQUEUE, QUEUE, SYNPROXY, TEE,
/// CLASSIFY, SET, CT, an unknown extension...) may change or take the packet.
pub fn verdict_only_target(t: &RuleTarget) -> bool {
    matches!(
        t,
        RuleTarget::None
            | RuleTarget::Accept
            | RuleTarget::Drop
            | RuleTarget::Reject { .. }
            | RuleTarget::Return
            | RuleTarget::Jump(_)
            | RuleTarget::Goto(_)
            | RuleTarget::Log(_)
            | RuleTarget::Nflog(_)
    )
}

/// Can `stage` neither change nor drop a packet on (`family`, `hook`)? Only a table or nft
/// base chain whose chain there has no rules and policy ACCEPT, in every backend it is
/// registered in, as far as the rules were read.
pub fn inert(reg: &Registered, view: &RuleView, family: Family, hook: Hook, stage: &Stage) -> bool {
    match stage {
        Stage::Table { table: Table::Nat } => false,
        Stage::Table { table } => {
            let legacy = legacy_tables(reg, family).contains(table);
            let nft: Vec<&NftChain> = nft_chains_of(reg, family, hook)
                .filter(|c| c.table == table.name() && c.chain == hook.chain_name())
                .collect();
            (legacy || !nft.is_empty())
                && (!legacy
                    || view
                        .legacy(family)
                        .is_some_and(|r| empty_builtin(r, *table, hook)))
                && nft.iter().all(|c| nft_inert(c))
        }
        Stage::NftChain { table, chain } => nft_chains_of(reg, family, hook)
            .find(|c| &c.table == table && &c.chain == chain)
            .is_some_and(nft_inert),
        _ => false,
    }
}

fn legacy_tables(reg: &Registered, family: Family) -> &[Table] {
    match family {
        Family::Ipv4 => &reg.ipv4,
        Family::Ipv6 => &reg.ipv6,
    }
}

fn nft_chains_of(reg: &Registered, family: Family, hook: Hook) -> impl Iterator<Item = &NftChain> {
    let fam: &[&str] = match family {
        Family::Ipv4 => &["ip", "inet"],
        Family::Ipv6 => &["ip6", "inet"],
    };
    reg.nft
        .iter()
        .filter(move |c| c.hook == hook && fam.contains(&c.family.as_str()))
}

/// A native nft base chain (not an iptables-nft table's built-in chain).
pub fn is_native(c: &NftChain) -> bool {
    Table::from_name(&c.table).is_none() || Hook::from_chain_name(&c.chain) != Some(c.hook)
}

/// An nft base chain that can neither change nor drop a packet: no rules, policy accept, not
/// nat.
pub fn nft_inert(c: &NftChain) -> bool {
    c.rules == 0 && c.accepts && !c.nat
}

/// The table's built-in chain for `hook` is in the dump, without rules, policy ACCEPT.
fn empty_builtin(rs: &Ruleset, table: Table, hook: Hook) -> bool {
    rs.table(table)
        .and_then(|t| t.chain(hook.chain_name()))
        .is_some_and(|c| c.rules.is_empty() && c.policy == Some(Policy::Accept))
}

/// Stages on (`family`, `hook`): the iptables tables (legacy and iptables-nft tables at their
/// standard priority) plus other nft base chains, and conntrack when any table exists there.
pub fn stages(reg: &Registered, family: Family, hook: Hook) -> Vec<StageSlot> {
    let fam_names: &[&str] = match family {
        Family::Ipv4 => &["ip", "inet"],
        Family::Ipv6 => &["ip6", "inet"],
    };
    let mut tables: Vec<Table> = match family {
        Family::Ipv4 => reg.ipv4.clone(),
        Family::Ipv6 => reg.ipv6.clone(),
    };
    let mut others = Vec::new();
    for c in reg
        .nft
        .iter()
        .filter(|c| c.hook == hook && fam_names.contains(&c.family.as_str()))
    {
        match Table::from_name(&c.table) {
            // iptables-nft registers its tables as nft chains at the standard priorities.
            Some(t) if t.priority(hook) == Some(c.priority) => tables.push(t),
            // ... except the security table, which iptables-nft (1.8.9) hooks at priority
            // 150, not NF_IP_PRI_SECURITY (50): still that table's built-in chain, evaluated
            // as such, at the priority it really runs at (after nat on INPUT).
            Some(t)
                if t.priority(hook).is_some() && Hook::from_chain_name(&c.chain) == Some(hook) =>
            {
                others.push(StageSlot {
                    priority: c.priority,
                    stage: Stage::Table { table: t },
                })
            }
            _ => others.push(StageSlot {
                priority: c.priority,
                stage: Stage::NftChain {
                    table: c.table.clone(),
                    chain: c.chain.clone(),
                },
            }),
        }
    }
    tables.sort();
    tables.dedup();
    let has_any = !tables.is_empty() || !others.is_empty();
    let mut v = HookPlan::iptables_stages(hook, &tables, has_any);
    // Defragmentation is not bracketed: one probe less per packet, and the first probe then
    // sees reassembled packets (as the tables and TRACE do).
    v.retain(|s| s.stage != Stage::Defrag);
    // Only tables with a chain on this hook register there: without any, nothing to bracket
    // — except on the entry hooks (PREROUTING, OUTPUT), where the first probe of every packet
    // applies the filter: a family with tables anywhere (e.g. only filter INPUT) keeps its
    // conntrack bracket there, so its packets are seen first.
    let entry = matches!(hook, Hook::Prerouting | Hook::Output);
    let family_has_tables = has_any
        || reg
            .nft
            .iter()
            .any(|c| fam_names.contains(&c.family.as_str()));
    let only_conntrack = v
        .iter()
        .all(|s| matches!(s.stage, Stage::Conntrack | Stage::ConntrackConfirm));
    if only_conntrack && others.is_empty() && !(entry && family_has_tables) {
        return Vec::new();
    }
    v.extend(others);
    v.sort_by_key(|s| s.priority);
    v
}

/// Does a traversal's path through the probes end on `hook` (its last probe then always
/// sends a record, see the loader's `last` copies)? INPUT and POSTROUTING always; FORWARD
/// and OUTPUT when POSTROUTING has no probes, PREROUTING when neither INPUT nor FORWARD has
/// (the packet leaves what is traced there).
pub fn traversal_ends(hook: Hook, probed: impl Fn(Hook) -> bool) -> bool {
    match hook {
        Hook::Input | Hook::Postrouting => true,
        Hook::Forward | Hook::Output => !probed(Hook::Postrouting),
        Hook::Prerouting => !probed(Hook::Input) && !probed(Hook::Forward),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversals_end_on_final_hooks_or_where_the_probes_stop() {
        let all = |_: Hook| true;
        let ends: Vec<Hook> = Hook::ALL
            .into_iter()
            .filter(|h| traversal_ends(*h, all))
            .collect();
        assert_eq!(ends, [Hook::Input, Hook::Postrouting]);
        // Filter-only IPv6 (no POSTROUTING probes): FORWARD and OUTPUT end traversals too.
        let no_post = |h: Hook| h != Hook::Postrouting;
        assert!(traversal_ends(Hook::Forward, no_post));
        assert!(traversal_ends(Hook::Output, no_post));
        assert!(!traversal_ends(Hook::Prerouting, no_post));
        let only_pre = |h: Hook| h == Hook::Prerouting;
        assert!(traversal_ends(Hook::Prerouting, only_pre));
    }

    #[test]
    fn parses_nft_base_chains() {
        let json = r#"{"nftables":[{"metainfo":{}},
          {"table":{"family":"ip","name":"nat"}},
          {"chain":{"family":"ip","table":"nat","name":"PREROUTING","hook":"prerouting","prio":-100,"type":"nat"}},
          {"chain":{"family":"inet","table":"fw","name":"early","hook":"prerouting","prio":-250}},
          {"chain":{"family":"ip","table":"nat","name":"DOCKER"}},
          {"chain":{"family":"bridge","table":"b","name":"x","hook":"prerouting","prio":0}}]}"#;
        let c = parse_nft_chains(json);
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].priority, -250);
        let reg = Registered {
            ipv4: vec![Table::Raw],
            ipv6: vec![],
            nft: c,
        };
        let s = stages(&reg, Family::Ipv4, Hook::Prerouting);
        let prios: Vec<i32> = s.iter().map(|s| s.priority).collect();
        assert_eq!(prios, vec![-300, -250, -200, -100]);
        assert!(matches!(&s[1].stage, Stage::NftChain { chain, .. } if chain == "early"));
        // IPv6: only the inet chain is registered there.
        let s6 = stages(&reg, Family::Ipv6, Hook::Prerouting);
        assert_eq!(
            s6.iter().map(|s| s.priority).collect::<Vec<_>>(),
            vec![-250, -200]
        );
    }

    #[test]
    fn iptables_nft_security_table_at_its_real_priority() {
        // `nft -j list chains` after `iptables-nft -t security -A INPUT -j ACCEPT` (1.8.9).
        let json = r#"{"nftables":[{"chain":{"family":"ip","table":"security","name":"INPUT","handle":1,"type":"filter","hook":"input","prio":150,"policy":"accept"}},
          {"chain":{"family":"ip","table":"filter","name":"INPUT","hook":"input","prio":0,"type":"filter"}},
          {"chain":{"family":"ip","table":"security","name":"mine","hook":"input","prio":10,"type":"filter"}}]}"#;
        let reg = Registered {
            nft: parse_nft_chains(json),
            ..Default::default()
        };
        let s = stages(&reg, Family::Ipv4, Hook::Input);
        let slots: Vec<(i32, &Stage)> = s.iter().map(|s| (s.priority, &s.stage)).collect();
        assert!(slots.contains(&(
            0,
            &Stage::Table {
                table: Table::Filter
            }
        )));
        assert!(slots.contains(&(
            150,
            &Stage::Table {
                table: Table::Security
            }
        )));
        // A chain that is not the table's built-in one stays an nft chain.
        assert!(s
            .iter()
            .any(|s| matches!(&s.stage, Stage::NftChain { chain, .. } if chain == "mine")));
    }

    #[test]
    fn entry_hooks_keep_a_first_probe_when_the_family_has_tables() {
        // Only filter (INPUT/FORWARD/OUTPUT): PREROUTING has no table, but packets must still
        // meet a first-sight probe there before INPUT.
        let reg = Registered {
            ipv6: vec![Table::Filter],
            ..Default::default()
        };
        let pre = stages(&reg, Family::Ipv6, Hook::Prerouting);
        assert_eq!(
            pre.iter().map(|s| s.priority).collect::<Vec<_>>(),
            vec![-200]
        );
        let input = stages(&reg, Family::Ipv6, Hook::Input);
        assert_eq!(
            input.iter().map(|s| s.priority).collect::<Vec<_>>(),
            vec![0, i32::MAX]
        );
        assert!(
            stages(&reg, Family::Ipv4, Hook::Prerouting).is_empty(),
            "no IPv4 tables"
        );
    }

    /// A docker-shaped legacy dump: raw and mangle empty (ACCEPT), nat and filter with rules.
    const DOCKERISH: &str = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n\
        *mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n\
        :OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n\
        *nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        :POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n-A PREROUTING -j DOCKER\n\
        -A DOCKER -p tcp --dport 10000 -j DNAT --to-destination 172.19.0.9:80\nCOMMIT\n\
        *filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        -A FORWARD -d 172.19.0.9/32 -p tcp --dport 80 -j ACCEPT\nCOMMIT\n";

    fn legacy_view(dump: &str) -> RuleView {
        let rs = trace_core::rules::parse(dump).expect("dump parses");
        RuleView {
            legacy: vec![(Family::Ipv4, Arc::new(rs))],
        }
    }

    fn docker_reg() -> Registered {
        Registered {
            ipv4: vec![Table::Raw, Table::Mangle, Table::Nat, Table::Filter],
            ..Default::default()
        }
    }

    fn probes_of(view: Option<&RuleView>, hook: Hook, mode: ProbeMode) -> Vec<i32> {
        hook_plan(&docker_reg(), view, Family::Ipv4, hook, mode)
            .probes()
            .to_vec()
    }

    #[test]
    fn empty_tables_with_accept_policy_get_no_probe_after_them() {
        let v = legacy_view(DOCKERISH);
        let needed = |h| probes_of(Some(&v), h, ProbeMode::Needed);
        assert_eq!(needed(Hook::Prerouting), [-301, -99]);
        assert_eq!(needed(Hook::Forward), [-151, 1]);
        assert_eq!(needed(Hook::Postrouting), [-151, 101]);
        // INPUT: mangle, filter (empty INPUT) inert; nat never; confirm after the last probe.
        assert_eq!(needed(Hook::Input), [-151, 101]);
        let all = |h| probes_of(Some(&v), h, ProbeMode::All);
        assert_eq!(all(Hook::Prerouting), [-301, -299, -199, -149, -99]);
        assert_eq!(all(Hook::Forward), [-151, -149, 1]);
        // Rules not read: nothing is inert, every stage bracketed.
        assert_eq!(
            probes_of(None, Hook::Prerouting, ProbeMode::Needed),
            [-301, -299, -199, -149, -99]
        );
    }

    #[test]
    fn probes_whose_states_follow_from_the_next_or_previous_hook_are_left_out() {
        let v = legacy_view(DOCKERISH);
        let reg = docker_reg();
        let of = |view: Option<&RuleView>, mode: ProbeMode| -> Vec<(Hook, Vec<i32>)> {
            family_plans(&reg, view, Family::Ipv4, mode)
                .into_iter()
                .map(|(h, p)| (h, p.probes().to_vec()))
                .collect()
        };
        let needed = of(Some(&v), ProbeMode::Needed);
        let get = |plans: &[(Hook, Vec<i32>)], h: Hook| {
            plans.iter().find(|(k, _)| *k == h).unwrap().1.clone()
        };
        // A forwarded packet: 4 probe runs (PREROUTING's after nat and POSTROUTING's entry
        // derived from FORWARD's entry and exit).
        assert_eq!(get(&needed, Hook::Prerouting), [-301]);
        assert_eq!(
            get(&needed, Hook::Forward),
            [-151],
            "filter FORWARD is verdict-only"
        );
        assert_eq!(get(&needed, Hook::Postrouting), [101]);
        assert_eq!(get(&needed, Hook::Input), [-151, 101]);
        assert_eq!(get(&needed, Hook::Output), [-301, -99]);
        // --probes all, or rules not read: per hook, nothing derived.
        let all = of(Some(&v), ProbeMode::All);
        assert_eq!(get(&all, Hook::Postrouting), [-151, -149, 101]);
        let unread = of(None, ProbeMode::Needed);
        assert_eq!(
            get(&unread, Hook::Prerouting),
            [-301, -299, -199, -149, -99]
        );
        assert_eq!(get(&unread, Hook::Postrouting), [-151, -149, 101]);
    }

    fn forward_probes(reg: &Registered, dump: &str) -> Vec<i32> {
        let v = legacy_view(dump);
        let plans = family_plans(reg, Some(&v), Family::Ipv4, ProbeMode::Needed);
        let fwd = plans
            .into_iter()
            .find(|(h, _)| *h == Hook::Forward)
            .unwrap();
        fwd.1.probes().to_vec()
    }

    #[test]
    fn a_verdict_only_filter_needs_no_probe_after_it() {
        let reg = docker_reg();
        // Jumps, returns, rejects, logs and counters are verdict-only too.
        let more = DOCKERISH.replace(
            ":OUTPUT ACCEPT [0:0]\n-A FORWARD",
            ":OUTPUT ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n\
             -A FORWARD -p udp -j REJECT --reject-with icmp-port-unreachable\n\
             -A FORWARD -p icmp -j LOG --log-prefix fwd\n-A FORWARD -p icmp\n\
             -A DOCKER-USER -j RETURN\n-A FORWARD",
        );
        assert_ne!(more, DOCKERISH);
        assert_eq!(forward_probes(&reg, &more), [-151]);
        let filter = Stage::Table {
            table: Table::Filter,
        };
        let v = legacy_view(&more);
        assert!(verdict_only(&reg, &v, Family::Ipv4, Hook::Forward, &filter));
        // nat never is.
        let nat = Stage::Table { table: Table::Nat };
        assert!(!verdict_only(
            &reg,
            &v,
            Family::Ipv4,
            Hook::Postrouting,
            &nat
        ));
        // Rules not read for the family: not verdict-only.
        assert!(!verdict_only(
            &reg,
            &v,
            Family::Ipv6,
            Hook::Forward,
            &filter
        ));
    }

    #[test]
    fn a_filter_that_can_change_the_packet_keeps_its_probe() {
        let reg = docker_reg();
        for rule in [
            "-A FORWARD -j MARK --set-xmark 0x7/0xffffffff",
            "-A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
            "-A FORWARD -j NFQUEUE --queue-num 1",
            "-A FORWARD -j CONNMARK --set-xmark 0x1/0xffffffff",
        ] {
            // In a user chain: every chain of the table counts.
            let dump = DOCKERISH.replace(
                ":OUTPUT ACCEPT [0:0]\n-A FORWARD",
                &format!(":OUTPUT ACCEPT [0:0]\n:OTHER - [0:0]\n{}\n-A FORWARD", {
                    rule.replace("-A FORWARD", "-A OTHER")
                }),
            );
            assert_ne!(dump, DOCKERISH);
            assert_eq!(forward_probes(&reg, &dump), [-151, 1], "{rule}");
        }
    }

    #[test]
    fn an_iptables_nft_filter_keeps_its_probe() {
        // filter registered through iptables-nft (one rule in FORWARD); the legacy dump has
        // the other tables.
        let json = r#"{"nftables":[
          {"chain":{"family":"ip","table":"filter","name":"FORWARD","hook":"forward","prio":0,"type":"filter","policy":"drop"}},
          {"rule":{"family":"ip","table":"filter","chain":"FORWARD","handle":4,"expr":[]}}]}"#;
        let reg = Registered {
            ipv4: vec![Table::Raw, Table::Mangle, Table::Nat],
            nft: parse_nft_chains(json),
            ..Default::default()
        };
        let legacy = DOCKERISH.split("*filter").next().unwrap();
        assert_eq!(forward_probes(&reg, legacy), [-151, 1]);
    }

    #[test]
    fn a_rule_or_a_drop_policy_makes_a_table_act() {
        let with_mark = DOCKERISH.replace(
            ":POSTROUTING ACCEPT [0:0]\nCOMMIT\n*nat",
            ":POSTROUTING ACCEPT [0:0]\n-A FORWARD -j MARK --set-xmark 0x7/0xffffffff\nCOMMIT\n*nat",
        );
        let v = legacy_view(&with_mark);
        assert_eq!(
            probes_of(Some(&v), Hook::Forward, ProbeMode::Needed),
            [-151, -149, 1]
        );
        // filter FORWARD has policy DROP: it acts even without rules.
        let no_rules = DOCKERISH.replace(
            "-A FORWARD -d 172.19.0.9/32 -p tcp --dport 80 -j ACCEPT\n",
            "",
        );
        let v = legacy_view(&no_rules);
        let reg = docker_reg();
        let filter = Stage::Table {
            table: Table::Filter,
        };
        assert!(!inert(&reg, &v, Family::Ipv4, Hook::Forward, &filter));
        assert!(inert(&reg, &v, Family::Ipv4, Hook::Input, &filter));
        // nat is never inert, even without rules on the hook.
        let nat = Stage::Table { table: Table::Nat };
        assert!(!inert(&reg, &v, Family::Ipv4, Hook::Postrouting, &nat));
        // A table the dump lacks (rules not read) is not inert.
        let v = legacy_view(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
        );
        let raw = Stage::Table { table: Table::Raw };
        assert!(!inert(&reg, &v, Family::Ipv4, Hook::Prerouting, &raw));
    }

    #[test]
    fn nft_chains_are_inert_without_rules_and_with_policy_accept() {
        let json = r#"{"nftables":[
          {"chain":{"family":"ip","table":"mangle","name":"FORWARD","hook":"forward","prio":-150,"type":"filter","policy":"accept"}},
          {"chain":{"family":"ip","table":"filter","name":"FORWARD","hook":"forward","prio":0,"type":"filter","policy":"accept"}},
          {"chain":{"family":"inet","table":"fw","name":"early","hook":"forward","prio":-250,"type":"filter","policy":"drop"}},
          {"chain":{"family":"inet","table":"fw","name":"late","hook":"forward","prio":10,"type":"filter","policy":"accept"}},
          {"chain":{"family":"ip","table":"filter","name":"DOCKER"}},
          {"rule":{"family":"ip","table":"filter","chain":"FORWARD","handle":4,"expr":[]}},
          {"rule":{"family":"ip","table":"filter","chain":"DOCKER","handle":5,"expr":[]}}]}"#;
        let reg = Registered {
            nft: parse_nft_chains(json),
            ..Default::default()
        };
        let rules: Vec<(&str, usize)> = reg
            .nft
            .iter()
            .map(|c| (c.chain.as_str(), c.rules))
            .collect();
        assert_eq!(
            rules,
            [("FORWARD", 0), ("FORWARD", 1), ("early", 0), ("late", 0)]
        );
        let v = RuleView::default();
        let s = hook_plan(
            &reg,
            Some(&v),
            Family::Ipv4,
            Hook::Forward,
            ProbeMode::Needed,
        );
        // early (policy drop) acts; iptables-nft mangle and the late chain are inert; filter
        // has a rule.
        assert_eq!(s.probes(), [-251, -249, 1]);
        let names: Vec<String> = s.stages().iter().map(|s| s.stage.to_string()).collect();
        assert_eq!(names, ["nft:fw:early", "mangle", "filter", "nft:fw:late"]);
    }

    #[test]
    fn no_tables_no_probes() {
        let reg = Registered::default();
        assert!(stages(&reg, Family::Ipv4, Hook::Forward).is_empty());
        let reg = Registered {
            ipv4: vec![Table::Raw],
            ..Default::default()
        };
        // raw has no FORWARD chain.
        assert!(stages(&reg, Family::Ipv4, Hook::Forward).is_empty());
    }
}
