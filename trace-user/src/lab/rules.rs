//! The lab's iptables ruleset: docker's nat/filter rules for one published port plus the
//! optional raw TRACE rules, written as `iptables-restore` input from the topology's
//! addresses (a template, so the lab never depends on the fixture files).

use super::topology as t;
use serde::{Deserialize, Serialize};

/// Which iptables flavour programs the node namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IptablesBackend {
    /// x_tables (`iptables-legacy*`): TRACE goes to the kernel log via nf_log.
    Legacy,
    /// nf_tables (`iptables-nft*`): TRACE becomes `meta nftrace set 1`.
    Nft,
}

impl IptablesBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            IptablesBackend::Legacy => "legacy",
            IptablesBackend::Nft => "nft",
        }
    }
    /// `iptables-legacy-restore` / `iptables-nft-restore`.
    pub fn restore_bin(self) -> String {
        format!("iptables-{}-restore", self.as_str())
    }
    /// `iptables-legacy-save` / `iptables-nft-save`.
    pub fn save_bin(self) -> String {
        format!("iptables-{}-save", self.as_str())
    }
}

impl std::fmt::Display for IptablesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The complete `iptables-restore` input for the node namespace.
pub fn restore_text(trace_rules: bool) -> String {
    [raw(trace_rules), mangle(), nat(), filter()].concat()
}

/// raw: TRACE for the two test flows (optional: iptrace itself needs no rule).
fn raw(trace_rules: bool) -> String {
    let rules = if trace_rules {
        vec![
            format!(
                "-A PREROUTING -d {}/32 -p tcp -m tcp --dport {} -j TRACE",
                t::NODE_IP,
                t::HOST_PORT
            ),
            format!(
                "-A OUTPUT -d {} -p tcp -m tcp --dport {} -j TRACE",
                t::CTR_SUBNET,
                t::CTR_PORT
            ),
        ]
    } else {
        vec![]
    };
    table(
        "raw",
        &[("PREROUTING", "ACCEPT"), ("OUTPUT", "ACCEPT")],
        &[],
        &rules,
    )
}

/// mangle: empty but present, as on a docker host (its chains appear in TRACE output).
fn mangle() -> String {
    let chains = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"].map(|c| (c, "ACCEPT"));
    table("mangle", &chains, &[], &[])
}

/// nat: docker's DOCKER chain with one DNAT for the published port, and MASQUERADE rules.
fn nat() -> String {
    let (br, d0) = (t::BRIDGE, t::DOCKER0);
    let rules = [
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER".to_string(),
        "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER".to_string(),
        format!(
            "-A POSTROUTING -s {} ! -o {d0} -j MASQUERADE",
            t::DOCKER0_SUBNET
        ),
        format!(
            "-A POSTROUTING -s {} ! -o {br} -j MASQUERADE",
            t::CTR_SUBNET
        ),
        format!(
            "-A POSTROUTING -s {ip}/32 -d {ip}/32 -p tcp -m tcp --dport {p} -j MASQUERADE",
            ip = t::CTR_IP,
            p = t::CTR_PORT
        ),
        format!("-A DOCKER -i {d0} -j RETURN"),
        format!("-A DOCKER -i {br} -j RETURN"),
        format!(
            "-A DOCKER ! -i {br} -p tcp -m tcp --dport {} -j DNAT --to-destination {}:{}",
            t::HOST_PORT,
            t::CTR_IP,
            t::CTR_PORT
        ),
    ];
    let chains = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"].map(|c| (c, "ACCEPT"));
    table("nat", &chains, &["DOCKER"], &rules)
}

/// filter: FORWARD policy DROP and docker's FORWARD/DOCKER/ISOLATION/USER chains. FORWARD
/// rule 7 = `-o br… RELATED,ESTABLISHED -j ACCEPT`, rule 8 = `-o br… -j DOCKER`.
fn filter() -> String {
    let mut rules = vec![
        "-A FORWARD -j DOCKER-USER".to_string(),
        "-A FORWARD -j DOCKER-ISOLATION-STAGE-1".to_string(),
    ];
    for b in [t::DOCKER0, t::BRIDGE] {
        rules.push(format!(
            "-A FORWARD -o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ));
        rules.push(format!("-A FORWARD -o {b} -j DOCKER"));
        rules.push(format!("-A FORWARD -i {b} ! -o {b} -j ACCEPT"));
        rules.push(format!("-A FORWARD -i {b} -o {b} -j ACCEPT"));
    }
    rules.push(format!(
        "-A DOCKER -d {}/32 ! -i {br} -o {br} -p tcp -m tcp --dport {} -j ACCEPT",
        t::CTR_IP,
        t::CTR_PORT,
        br = t::BRIDGE
    ));
    for b in [t::DOCKER0, t::BRIDGE] {
        rules.push(format!(
            "-A DOCKER-ISOLATION-STAGE-1 -i {b} ! -o {b} -j DOCKER-ISOLATION-STAGE-2"
        ));
    }
    rules.push("-A DOCKER-ISOLATION-STAGE-1 -j RETURN".to_string());
    for b in [t::DOCKER0, t::BRIDGE] {
        rules.push(format!("-A DOCKER-ISOLATION-STAGE-2 -o {b} -j DROP"));
    }
    rules.push("-A DOCKER-ISOLATION-STAGE-2 -j RETURN".to_string());
    rules.push("-A DOCKER-USER -j RETURN".to_string());
    let user = [
        "DOCKER",
        "DOCKER-ISOLATION-STAGE-1",
        "DOCKER-ISOLATION-STAGE-2",
        "DOCKER-USER",
    ];
    // Docker sets FORWARD's policy to DROP.
    table(
        "filter",
        &[
            ("INPUT", "ACCEPT"),
            ("FORWARD", "DROP"),
            ("OUTPUT", "ACCEPT"),
        ],
        &user,
        &rules,
    )
}

/// One `iptables-restore` table block: built-in chains with policies, user chains, rules.
fn table(name: &str, builtin: &[(&str, &str)], user: &[&str], rules: &[String]) -> String {
    let mut s = format!("*{name}\n");
    for (chain, policy) in builtin {
        s += &format!(":{chain} {policy} [0:0]\n");
    }
    for c in user {
        s += &format!(":{c} - [0:0]\n");
    }
    for r in rules {
        s += r;
        s.push('\n');
    }
    s + "COMMIT\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    // Skips go straight to stderr: the harness hides eprintln! of passing tests.
    use std::io::Write;

    fn rules_of<'a>(text: &'a str, table: &str) -> Vec<&'a str> {
        let mut cur = "";
        let mut out = vec![];
        for line in text.lines() {
            if let Some(t) = line.strip_prefix('*') {
                cur = t;
            }
            // iptables-save -c prefixes counters: "[p:b] -A ..."
            let rule = line
                .split_once("] -A ")
                .map(|(_, r)| r)
                .or_else(|| line.strip_prefix("-A "));
            if let (Some(r), true) = (rule, cur == table) {
                out.push(r);
            }
        }
        out
    }

    #[test]
    fn forward_rules_7_and_8_are_the_bridge_ones() {
        let text = restore_text(false);
        let fwd: Vec<_> = rules_of(&text, "filter")
            .into_iter()
            .filter(|r| r.starts_with("FORWARD"))
            .collect();
        assert_eq!(
            fwd[6],
            "FORWARD -o br-00ea7870520a -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
        assert_eq!(fwd[7], "FORWARD -o br-00ea7870520a -j DOCKER");
        assert!(text.contains(":FORWARD DROP [0:0]"));
    }

    #[test]
    fn trace_rules_are_optional() {
        assert!(!restore_text(false).contains("TRACE"));
        let with = restore_text(true);
        assert_eq!(rules_of(&with, "raw").len(), 2);
        assert!(
            with.contains("-A PREROUTING -d 192.168.64.4/32 -p tcp -m tcp --dport 10000 -j TRACE")
        );
    }

    #[test]
    fn every_table_is_committed() {
        let text = restore_text(true);
        assert_eq!(text.matches("COMMIT").count(), 4);
        for t in ["*raw", "*mangle", "*nat", "*filter"] {
            assert!(text.contains(t), "{t}");
        }
    }

    /// The template must reproduce the fixture dump's rules exactly (same order), per table.
    #[test]
    fn template_matches_fixture_dump() {
        let path = "/work/shared/fixtures/docker/legacy-remote.iptables-save.txt";
        let Ok(fixture) = std::fs::read_to_string(path) else {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: template_matches_fixture_dump: {path} not present"
            );
            return;
        };
        let ours = restore_text(true);
        for table in ["raw", "mangle", "nat", "filter"] {
            assert_eq!(
                rules_of(&ours, table),
                rules_of(&fixture, table),
                "table {table}"
            );
        }
    }
}
