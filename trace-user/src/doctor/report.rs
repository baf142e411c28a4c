//! Doctor's report: the facts, the attach probes' outcomes, each capture backend's own check,
//! the backend choice (pure: what `--backend auto`'s selection picked, confirmed by the
//! checks) and its text rendering.

use super::backends::{AutoSelection, BackendCheck};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    Kprobe,
    Fentry,
    TpBtf,
    NetfilterLink,
}

impl Mechanism {
    pub fn label(self) -> &'static str {
        match self {
            Mechanism::Kprobe => "kprobe",
            Mechanism::Fentry => "fentry",
            Mechanism::TpBtf => "tp_btf",
            Mechanism::NetfilterLink => "netfilter link",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Loaded and attached.
    Ok,
    /// The kernel lacks it (not built in / no such target).
    Unavailable,
    /// The kernel has it but refuses (EPERM/EACCES: lockdown, LSM, missing capability).
    Refused,
    /// Anything else (the detail says what).
    Failed,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Unavailable => "unavailable",
            Status::Refused => "refused",
            Status::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub mechanism: Mechanism,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Kernel {
    pub release: String,
    pub version: String,
    pub machine: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BtfInfo {
    pub path: String,
    pub present: bool,
    pub types: Option<usize>,
    pub parse_ms: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lockdown {
    /// none / integrity / confidentiality / unknown
    pub mode: String,
    /// Where the mode comes from.
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Caps {
    pub effective: String,
    pub bpf: bool,
    pub perfmon: bool,
    pub net_admin: bool,
    pub sys_admin: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct IptablesInfo {
    /// legacy / nft
    pub backend: String,
    /// `iptables-legacy` / `iptables-nft`, when installed.
    pub binary: Option<String>,
    pub version: Option<String>,
    /// Tables this backend holds in the current (root) namespace.
    pub tables: Vec<String>,
    pub tables_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NfLog {
    /// Root-namespace net.netfilter.nf_log_all_netns (0: LOG/TRACE from other netns dropped).
    pub all_netns: Option<String>,
    /// /proc/net/netfilter/nf_log lines with a logger bound.
    pub loggers: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// The capture backend (`fentry`, `kprobe`, `nfhook`), None when nothing works.
    pub backend: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kernel: Kernel,
    pub btf: BtfInfo,
    pub lockdown: Lockdown,
    pub capabilities: Caps,
    pub attach: Vec<Probe>,
    /// Each capture backend's real programs, loaded and attached by capture's own code.
    pub backends: Vec<BackendCheck>,
    /// What `iptrace capture --backend auto` selected (Err: the selection itself failed;
    /// JSON: the selection, or `{"error": …}`).
    #[serde(serialize_with = "auto_json")]
    pub auto: Result<AutoSelection, String>,
    /// `iptables -V` of the default `iptables` command (which flavour it is).
    pub iptables_default: Option<String>,
    pub iptables: Vec<IptablesInfo>,
    pub nf_log: NfLog,
    pub choice: Choice,
}

fn auto_json<S: serde::Serializer>(
    auto: &Result<AutoSelection, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Error<'a> {
        error: &'a str,
    }
    match auto {
        Ok(a) => a.serialize(s),
        Err(e) => Error { error: e }.serialize(s),
    }
}

fn status_of(probes: &[Probe], m: Mechanism) -> Status {
    probes
        .iter()
        .find(|p| p.mechanism == m)
        .map_or(Status::Failed, |p| p.status)
}

/// The backend capture would use: auto's pick (fentry > kprobe by what loads, else nfhook),
/// which must also have passed its own check — nfhook is attached by capture after the
/// selection, so auto "picking" it means nothing when netfilter links do not work.
pub fn choose(
    checks: &[BackendCheck],
    auto: &Result<AutoSelection, String>,
    tp_btf: Status,
) -> Choice {
    let auto = match auto {
        Ok(a) => a,
        Err(e) => {
            return Choice {
                backend: None,
                reason: format!("--backend auto failed: {e}"),
            }
        }
    };
    let status = |b: &str| {
        checks
            .iter()
            .find(|c| c.backend == b)
            .map_or("not checked", |c| c.status.label())
    };
    let mut why: Vec<String> = auto
        .passed_over
        .iter()
        .map(|(b, _)| format!("{b} {}", status(b)))
        .collect();
    let works = status(&auto.picked) == Status::Ok.label();
    if !works {
        why.push(format!("{} {}", auto.picked, status(&auto.picked)));
        return Choice {
            backend: None,
            reason: format!("{}: no capture backend works here", why.join(", ")),
        };
    }
    why.push(format!("{} ok → {}", auto.picked, auto.picked));
    let drops = match tp_btf {
        Status::Ok => "drop reasons from tp_btf kfree_skb".to_string(),
        st => format!("no drop reasons (tp_btf {})", st.label()),
    };
    Choice {
        backend: Some(auto.picked.clone()),
        reason: format!("{}; {drops}", why.join(", ")),
    }
}

/// `tp_btf`'s probe status (drop reasons come from it).
pub fn tp_btf_status(probes: &[Probe]) -> Status {
    status_of(probes, Mechanism::TpBtf)
}

fn backend_text(c: &BackendCheck) -> String {
    let yn = |b: bool| if b { "yes" } else { "no" };
    if c.loads {
        format!(
            "{}: loads yes, attaches {}: {}",
            c.status.label(),
            yn(c.attaches),
            c.detail
        )
    } else {
        format!("{}: loads no: {}", c.status.label(), c.detail)
    }
}

/// Human-readable report.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("{k:<22} {v}\n"));
    line(
        "kernel",
        format!(
            "{} {} ({})",
            r.kernel.release, r.kernel.machine, r.kernel.version
        ),
    );
    line("btf", btf_text(&r.btf));
    line(
        "lockdown",
        format!("{} ({})", r.lockdown.mode, r.lockdown.source),
    );
    let c = &r.capabilities;
    let yn = |b: bool| if b { "yes" } else { "NO" };
    line(
        "capabilities",
        format!(
            "CAP_BPF {} CAP_PERFMON {} CAP_NET_ADMIN {} CAP_SYS_ADMIN {} (CapEff {})",
            yn(c.bpf),
            yn(c.perfmon),
            yn(c.net_admin),
            yn(c.sys_admin),
            c.effective
        ),
    );
    for p in &r.attach {
        line(
            &format!("attach {}", p.mechanism.label()),
            format!("{}: {}", p.status.label(), p.detail),
        );
    }
    line(
        "iptables (default)",
        r.iptables_default
            .clone()
            .unwrap_or_else(|| "no `iptables` command".into()),
    );
    for i in &r.iptables {
        line(&format!("iptables {}", i.backend), iptables_text(i));
    }
    line(
        "nf_log_all_netns",
        r.nf_log
            .all_netns
            .clone()
            .unwrap_or_else(|| "absent".into()),
    );
    line(
        "nf_log loggers",
        if r.nf_log.loggers.is_empty() {
            "none bound".into()
        } else {
            r.nf_log.loggers.join("; ")
        },
    );
    for c in &r.backends {
        line(&format!("backend {}", c.backend), backend_text(c));
    }
    let backend = r.choice.backend.as_deref().unwrap_or("NONE");
    s.push_str(&format!(
        "{:<22} {backend} (auto: {})\n",
        "backend", r.choice.reason
    ));
    s
}

fn btf_text(b: &BtfInfo) -> String {
    match (&b.types, &b.error) {
        (Some(n), _) => format!(
            "{} present, {n} types (parsed in {:.0} ms)",
            b.path,
            b.parse_ms.unwrap_or(0.0)
        ),
        (None, Some(e)) if b.present => format!("{} present but unreadable: {e}", b.path),
        _ => format!("{} absent", b.path),
    }
}

fn iptables_text(i: &IptablesInfo) -> String {
    let Some(version) = &i.version else {
        return "not installed".into();
    };
    let tables = match (&i.tables_error, i.tables.is_empty()) {
        (Some(e), _) => format!("tables unknown: {e}"),
        (None, true) => "no tables in the root netns".into(),
        (None, false) => format!("root netns tables: {}", i.tables.join(", ")),
    };
    format!("{version}; {tables}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probes(k: Status, f: Status, t: Status, n: Status) -> Vec<Probe> {
        [
            (Mechanism::Kprobe, k),
            (Mechanism::Fentry, f),
            (Mechanism::TpBtf, t),
            (Mechanism::NetfilterLink, n),
        ]
        .into_iter()
        .map(|(mechanism, status)| Probe {
            mechanism,
            status,
            detail: "d".into(),
        })
        .collect()
    }

    fn check(backend: &str, status: Status) -> BackendCheck {
        BackendCheck {
            backend: backend.into(),
            status,
            loads: status == Status::Ok,
            attaches: status == Status::Ok,
            detail: "d".into(),
        }
    }

    fn this_host() -> (Vec<BackendCheck>, Result<AutoSelection, String>) {
        let checks = vec![
            check("fentry", Status::Refused),
            check("kprobe", Status::Unavailable),
            check("nfhook", Status::Ok),
        ];
        let auto = Ok(AutoSelection {
            picked: "nfhook".into(),
            passed_over: vec![
                ("fentry".into(), "EPERM".into()),
                ("kprobe".into(), "no kprobes".into()),
            ],
        });
        (checks, auto)
    }

    #[test]
    fn this_machine_chooses_nfhook() {
        let (checks, auto) = this_host();
        let c = choose(&checks, &auto, Status::Ok);
        assert_eq!(c.backend.as_deref(), Some("nfhook"));
        assert_eq!(
            c.reason,
            "fentry refused, kprobe unavailable, nfhook ok → nfhook; drop reasons from tp_btf kfree_skb"
        );
    }

    #[test]
    fn auto_pick_is_the_choice() {
        let checks = vec![
            check("fentry", Status::Ok),
            check("kprobe", Status::Ok),
            check("nfhook", Status::Unavailable),
        ];
        let auto = Ok(AutoSelection {
            picked: "fentry".into(),
            passed_over: vec![],
        });
        let c = choose(&checks, &auto, Status::Ok);
        assert_eq!(c.backend.as_deref(), Some("fentry"));
        assert_eq!(
            c.reason,
            "fentry ok → fentry; drop reasons from tp_btf kfree_skb"
        );
    }

    #[test]
    fn nothing_works_means_no_backend() {
        let (mut checks, auto) = this_host();
        checks[2] = check("nfhook", Status::Unavailable);
        let c = choose(&checks, &auto, Status::Ok);
        assert_eq!(c.backend, None);
        assert_eq!(
            c.reason,
            "fentry refused, kprobe unavailable, nfhook unavailable: no capture backend works here"
        );
        let c = choose(&checks, &Err("boom".into()), Status::Ok);
        assert_eq!(c.backend, None);
        assert!(c.reason.contains("boom"), "{}", c.reason);
    }

    fn sample_report() -> Report {
        let attach = probes(Status::Unavailable, Status::Refused, Status::Ok, Status::Ok);
        let (mut backends, auto) = this_host();
        backends[1].loads = true;
        let choice = choose(&backends, &auto, Status::Ok);
        Report {
            kernel: Kernel {
                release: "6.18.0".into(),
                version: "#1 SMP".into(),
                machine: "x86_64".into(),
            },
            btf: BtfInfo {
                path: "/sys/kernel/btf/vmlinux".into(),
                present: true,
                types: Some(10),
                parse_ms: Some(3.0),
                error: None,
            },
            lockdown: Lockdown {
                mode: "integrity".into(),
                source: "test".into(),
            },
            capabilities: Caps {
                effective: "0".into(),
                bpf: true,
                perfmon: true,
                net_admin: true,
                sys_admin: false,
            },
            attach,
            backends,
            auto,
            iptables_default: Some("iptables v1.8.9 (nf_tables)".into()),
            iptables: vec![IptablesInfo {
                backend: "nft".into(),
                binary: Some("iptables-nft".into()),
                version: Some("iptables v1.8.9 (nf_tables)".into()),
                tables: vec!["filter".into()],
                tables_error: None,
            }],
            nf_log: NfLog {
                all_netns: Some("0".into()),
                loggers: vec![],
            },
            choice,
        }
    }

    #[test]
    fn text_report_has_one_line_per_fact_and_ends_with_the_backend() {
        let text = render_text(&sample_report());
        assert!(
            text.contains("attach fentry          refused: d\n"),
            "{text}"
        );
        assert!(text.contains("attach netfilter link  ok: d\n"), "{text}");
        assert!(text.contains("CAP_SYS_ADMIN NO"), "{text}");
        assert!(
            text.contains(
                "iptables nft           iptables v1.8.9 (nf_tables); root netns tables: filter\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("backend fentry         refused: loads no: d\n"),
            "{text}"
        );
        assert!(
            text.contains("backend kprobe         unavailable: loads yes, attaches no: d\n"),
            "{text}"
        );
        assert!(
            text.contains("backend nfhook         ok: loads yes, attaches yes: d\n"),
            "{text}"
        );
        assert!(
            text.lines()
                .last()
                .unwrap()
                .starts_with("backend                nfhook (auto: fentry refused"),
            "{text}"
        );
    }

    #[test]
    fn json_report_uses_snake_case_names() {
        let json = serde_json::to_value(sample_report()).unwrap();
        assert_eq!(json["attach"][0]["mechanism"], "kprobe");
        assert_eq!(json["attach"][3]["mechanism"], "netfilter_link");
        assert_eq!(json["attach"][1]["status"], "refused");
        assert_eq!(json["choice"]["backend"], "nfhook");
        assert_eq!(json["backends"][0]["backend"], "fentry");
        assert_eq!(json["backends"][0]["status"], "refused");
        assert_eq!(json["backends"][2]["attaches"], true);
        assert_eq!(json["auto"]["picked"], "nfhook");
        assert_eq!(json["auto"]["passed_over"][0][0], "fentry");
    }
}
