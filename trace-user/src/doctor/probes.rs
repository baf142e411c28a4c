//! The attach probes: load and attach a trivial program of each kind, detach at once, and
//! report what the kernel said. Nothing is guessed from the kernel config.

use super::bpf::{self, ProgSpec, SysError};
use super::report::{Mechanism, Probe, Status};
use crate::btf::{Btf, Kind};
use crate::netns::NetnsGuard;
use std::os::fd::AsRawFd;

/// Kernel function used as the kprobe/fentry target (the netfilter hook entry point).
const TARGET_FUNC: &str = "nf_hook_slow";
/// Raw tracepoint used for the tp_btf probe (drop reasons come from it).
const TARGET_TP: &str = "kfree_skb";

/// Runs all four probes. `btf` is None when vmlinux BTF could not be read.
pub fn run_all(btf: Option<&Btf>) -> Vec<Probe> {
    vec![kprobe(), fentry(btf), tp_btf(btf), netfilter_link()]
}

fn probe(mechanism: Mechanism, status: Status, detail: impl Into<String>) -> Probe {
    Probe {
        mechanism,
        status,
        detail: detail.into(),
    }
}

/// EPERM/EACCES = the kernel refuses (lockdown, LSM); "not supported" errnos = not built in.
fn classify(e: &SysError) -> Status {
    match e.errno {
        libc::EPERM | libc::EACCES => Status::Refused,
        libc::ENOENT | libc::EOPNOTSUPP | libc::ENODEV | libc::ENOSYS | 524 => Status::Unavailable,
        _ => Status::Failed,
    }
}

/// kprobe: load a BPF_PROG_TYPE_KPROBE program, attach through the kprobe PMU
/// (perf_event_open) if there is one, else through a kprobe_multi link.
fn kprobe() -> Probe {
    let spec = ProgSpec {
        prog_type: bpf::PROG_KPROBE,
        attach_type: bpf::ATTACH_NONE,
        attach_btf_id: 0,
        ret: 0,
    };
    let prog = match bpf::prog_load(spec) {
        Ok(p) => p,
        Err(e) => {
            return probe(
                Mechanism::Kprobe,
                classify(&e),
                format!("program load: {e}"),
            )
        }
    };
    if let Some(pmu) = bpf::kprobe_pmu_type() {
        return match bpf::perf_kprobe_attach(pmu, &prog, TARGET_FUNC) {
            Ok(_event) => probe(
                Mechanism::Kprobe,
                Status::Ok,
                format!("attached to {TARGET_FUNC} (perf_event kprobe)"),
            ),
            Err(e) => probe(
                Mechanism::Kprobe,
                classify(&e),
                format!("perf_event_open kprobe {TARGET_FUNC}: {e}"),
            ),
        };
    }
    drop(prog);
    let spec = ProgSpec {
        attach_type: bpf::ATTACH_TRACE_KPROBE_MULTI,
        ..spec
    };
    let multi = bpf::prog_load(spec).and_then(|p| bpf::kprobe_multi_link(&p, TARGET_FUNC));
    let no_pmu = "program type loads; no kprobe PMU (/sys/bus/event_source/devices/kprobe absent)";
    match multi {
        Ok(_link) => probe(
            Mechanism::Kprobe,
            Status::Ok,
            format!("{no_pmu}; kprobe_multi link on {TARGET_FUNC} works"),
        ),
        // Without the PMU the kernel has no kprobes at all: whatever errno, it's unavailable.
        Err(e) => probe(
            Mechanism::Kprobe,
            Status::Unavailable,
            format!("{no_pmu}; kprobe_multi link: {e}"),
        ),
    }
}

/// fentry: BPF_PROG_TYPE_TRACING/BPF_TRACE_FENTRY on nf_hook_slow's BTF id, then attach.
fn fentry(btf: Option<&Btf>) -> Probe {
    let Some(id) = btf.and_then(|b| b.find(Kind::Func, TARGET_FUNC)) else {
        return probe(
            Mechanism::Fentry,
            Status::Unavailable,
            format!("no BTF id for {TARGET_FUNC}"),
        );
    };
    let spec = ProgSpec {
        prog_type: bpf::PROG_TRACING,
        attach_type: bpf::ATTACH_TRACE_FENTRY,
        attach_btf_id: id,
        ret: 0,
    };
    tracing_probe(
        Mechanism::Fentry,
        spec,
        &format!("{TARGET_FUNC} (BTF id {id})"),
    )
}

/// tp_btf: BPF_PROG_TYPE_TRACING/BPF_TRACE_RAW_TP on the btf_trace_kfree_skb typedef.
fn tp_btf(btf: Option<&Btf>) -> Probe {
    let typedef = format!("btf_trace_{TARGET_TP}");
    let Some(id) = btf.and_then(|b| b.find(Kind::Typedef, &typedef)) else {
        return probe(
            Mechanism::TpBtf,
            Status::Unavailable,
            format!("no BTF id for {typedef}"),
        );
    };
    let spec = ProgSpec {
        prog_type: bpf::PROG_TRACING,
        attach_type: bpf::ATTACH_TRACE_RAW_TP,
        attach_btf_id: id,
        ret: 0,
    };
    tracing_probe(
        Mechanism::TpBtf,
        spec,
        &format!("{TARGET_TP} (BTF id {id})"),
    )
}

fn tracing_probe(m: Mechanism, spec: ProgSpec, target: &str) -> Probe {
    let prog = match bpf::prog_load(spec) {
        Ok(p) => p,
        Err(e) => return probe(m, classify(&e), format!("program load for {target}: {e}")),
    };
    match bpf::raw_tracepoint_open(&prog) {
        Ok(_link) => probe(m, Status::Ok, format!("attached to {target}")),
        Err(e) => probe(m, classify(&e), format!("attach to {target}: {e}")),
    }
}

/// netfilter link: BPF_PROG_TYPE_NETFILTER + BPF_LINK_CREATE on IPv4 PRE_ROUTING, in a
/// temporary namespace of our own (never the root namespace's hooks).
fn netfilter_link() -> Probe {
    let spec = ProgSpec {
        prog_type: bpf::PROG_NETFILTER,
        attach_type: bpf::ATTACH_NETFILTER,
        attach_btf_id: 0,
        ret: 1,
    };
    let prog = match bpf::prog_load(spec) {
        Ok(p) => p,
        Err(e) => {
            return probe(
                Mechanism::NetfilterLink,
                classify(&e),
                format!("program load: {e}"),
            )
        }
    };
    let ns = match NetnsGuard::create("iptrace-doctor") {
        Ok(ns) => ns,
        Err(e) => {
            return probe(
                Mechanism::NetfilterLink,
                Status::Failed,
                format!("temporary netns: {e}"),
            )
        }
    };
    let fd = prog.as_raw_fd();
    // priority -299: just after the raw table, where capture's first probe goes.
    let linked = crate::netns::run_in(&ns.path(), move || {
        bpf::netfilter_link(fd, 2, 0, -299).map(drop)
    });
    match linked {
        Ok(Ok(())) => probe(
            Mechanism::NetfilterLink,
            Status::Ok,
            format!(
                "attached at ipv4 PRE_ROUTING priority -299 in netns {}",
                ns.name()
            ),
        ),
        Ok(Err(e)) => probe(
            Mechanism::NetfilterLink,
            classify(&e),
            format!("BPF_LINK_CREATE netfilter: {e}"),
        ),
        Err(e) => probe(
            Mechanism::NetfilterLink,
            Status::Failed,
            format!("entering netns: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // Skips go straight to stderr: the harness hides eprintln! of passing tests.
    use std::io::Write;

    /// Root only: every probe reports a reason, and the netfilter probe's temporary netns is gone.
    #[test]
    fn probes_explain_themselves_and_clean_up_as_root() {
        if unsafe { libc::geteuid() } != 0 {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: probes_explain_themselves_and_clean_up_as_root needs root"
            );
            return;
        }
        let btf = Btf::vmlinux().ok();
        let probes = run_all(btf.as_ref());
        assert_eq!(probes.len(), 4);
        for p in &probes {
            assert!(!p.detail.is_empty(), "{p:?}");
            if p.status != Status::Ok {
                assert!(
                    p.detail.contains("errno")
                        || p.detail.contains("absent")
                        || p.detail.contains("no BTF"),
                    "{p:?}"
                );
            }
        }
        let prefix = format!("iptrace-doctor-{}-", std::process::id());
        let left: Vec<_> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "doctor left namespaces behind: {left:?}");
    }
}
