//! Which namespaces to trace and where the probes go in each: the tables actually registered
//! there (legacy iptables: /proc/thread-self/net/ip{,6}_tables_names read from inside the
//! netns; nftables: base chains from `nft -j list ruleset`), bracketed by the assembler's
//! [`HookPlan::bracketing`] so the probes the kernel runs and the plan assembly uses are one.

use std::path::{Path, PathBuf};

use trace_core::assemble::{HookPlan, StageSlot};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::packet::Stage;

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

/// Base chains (with hook and priority) of families ip, ip6 and inet in `nft -j` output.
pub fn parse_nft_chains(json: &str) -> Vec<NftChain> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let Some(items) = v.get("nftables").and_then(|n| n.as_array()) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let c = item.get("chain")?;
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
            Some(NftChain {
                family,
                table: c.get("table")?.as_str()?.to_string(),
                chain: c.get("name")?.as_str()?.to_string(),
                hook,
                priority: c.get("prio")?.as_i64()? as i32,
            })
        })
        .collect()
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
