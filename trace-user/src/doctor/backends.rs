//! The capture backends themselves, checked with capture's own code: each backend's real
//! programs are loaded and attached here (`capture::classic::select` for fentry and kprobe,
//! the nfhook loader and a netfilter link for nfhook), and the pick is made by the selection
//! `iptrace capture --backend auto` runs (`select(Requested::Auto)`), so doctor cannot
//! recommend a backend capture would not take. Everything is detached again before returning.

use serde::Serialize;
use std::io;

use super::report::Status;
use crate::capture::classic::{self, Chosen, ClassicError, Flavour, Requested};
use crate::capture::fentry::FentryError;
use crate::capture::link::{self, HookSpec};
use crate::capture::loader::{LoadError, LoadOptions, Loaded};
use crate::netns::NetnsGuard;

/// One backend: do its programs load, do they attach, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendCheck {
    /// `fentry`, `kprobe`, `nfhook` (as `iptrace capture --backend` takes them).
    pub backend: String,
    pub status: Status,
    pub loads: bool,
    pub attaches: bool,
    /// What was attached, or the kernel's reason.
    pub detail: String,
}

/// What `select(Requested::Auto)` did: its pick and the backends it passed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AutoSelection {
    /// `fentry` / `kprobe`, or `nfhook` when both were passed over (nfhook is attached by
    /// capture afterwards: it works only if its own check did).
    pub picked: String,
    /// (backend, why) in the order auto tried them.
    pub passed_over: Vec<(String, String)>,
}

/// Small maps: doctor only loads, attaches and detaches.
fn load_options() -> LoadOptions {
    LoadOptions {
        ringbuf_size: 1 << 16,
        sample_n: 0,
        rate_limit: 0,
        filter: trace_common::filter::FilterProgram::match_all(),
    }
}

/// Every backend checked, and auto's pick (None only when auto itself errored).
pub fn check_all() -> (Vec<BackendCheck>, Result<AutoSelection, String>) {
    let opts = load_options();
    let mut checks: Vec<BackendCheck> = [Flavour::Fentry, Flavour::Kprobe]
        .into_iter()
        .map(|f| classic_check(f, &opts))
        .collect();
    checks.push(nfhook_check(&opts));
    (checks, auto(&opts))
}

fn requested(f: Flavour) -> Requested {
    match f {
        Flavour::Fentry => Requested::Fentry,
        Flavour::Kprobe => Requested::Kprobe,
    }
}

/// `--backend fentry|kprobe` exactly as capture does it (then detached by the drop).
fn classic_check(f: Flavour, opts: &LoadOptions) -> BackendCheck {
    let name = f.to_string();
    match classic::select(requested(f), opts) {
        Ok(sel) => match sel.chosen {
            Chosen::Classic(c) => {
                let mut detail = format!("attached to {}", c.attached.join(", "));
                if !c.skipped.is_empty() {
                    let skipped: Vec<String> = c
                        .skipped
                        .iter()
                        .map(|(f, why)| format!("{f}: {why}"))
                        .collect();
                    detail.push_str(&format!("; not attached: {}", skipped.join("; ")));
                }
                ok(name, detail)
            }
            Chosen::Nfhook => failed(name, Status::Failed, false, "selection fell back".into()),
        },
        Err(e) => {
            let (loads, status) = classify(&e);
            failed(name, status, loads, e.to_string())
        }
    }
}

fn ok(backend: String, detail: String) -> BackendCheck {
    BackendCheck {
        backend,
        status: Status::Ok,
        loads: true,
        attaches: true,
        detail,
    }
}

fn failed(backend: String, status: Status, loads: bool, detail: String) -> BackendCheck {
    BackendCheck {
        backend,
        status,
        loads,
        attaches: false,
        detail: detail.replace('\n', " "),
    }
}

/// Where a fentry/kprobe load stopped: (the programs loaded, how to call the failure).
pub fn classify(e: &ClassicError) -> (bool, Status) {
    match e {
        ClassicError::Fentry(FentryError::Load { source, .. }) => (false, errno_status(source)),
        ClassicError::Fentry(FentryError::Attach { source, .. }) => (true, errno_status(source)),
        // attach_kprobes: "loading <prog>: …" / "attaching <prog> to <fn>: …" (aya's text);
        // anything else is a required function missing (no program was loaded for it).
        ClassicError::Unavailable { what, .. } if what.starts_with("attaching ") => {
            (true, text_status(what))
        }
        ClassicError::Unavailable { what, .. } if what.starts_with("loading ") => {
            (false, text_status(what))
        }
        ClassicError::Unavailable { .. } => (false, Status::Unavailable),
        _ => (false, Status::Failed),
    }
}

/// EPERM/EACCES: the kernel has it and refuses (lockdown, LSM); "not there" errnos:
/// unavailable; anything else: failed.
fn errno_status(e: &io::Error) -> Status {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => Status::Refused,
        Some(libc::ENOENT | libc::EOPNOTSUPP | libc::ENODEV | libc::ENOSYS | 524) => {
            Status::Unavailable
        }
        _ => Status::Failed,
    }
}

/// The same for errors that only exist as text (aya's).
fn text_status(what: &str) -> Status {
    let refused = [
        "Operation not permitted",
        "Permission denied",
        "EPERM",
        "EACCES",
    ];
    if refused.iter().any(|r| what.contains(r)) {
        Status::Refused
    } else {
        Status::Unavailable
    }
}

/// nfhook: the real probe program (capture's loader), linked where capture's first probe
/// goes (ipv4 PREROUTING, raw + 1) in a temporary namespace of our own.
fn nfhook_check(opts: &LoadOptions) -> BackendCheck {
    let name = "nfhook".to_string();
    let load_failed = |e: LoadError| {
        let status = match &e {
            LoadError::ProgLoad { source, .. } => errno_status(source),
            _ => Status::Failed,
        };
        let has_nf_ctx = || {
            crate::btf::Btf::vmlinux()
                .ok()
                .map(|b| b.find(crate::btf::Kind::Struct, "bpf_nf_ctx").is_some())
        };
        match prog_type_missing(&e, has_nf_ctx) {
            Some(why) => failed(name.clone(), Status::Unavailable, false, why),
            None => failed(name.clone(), status, false, e.to_string()),
        }
    };
    let mut loaded = match Loaded::load(opts) {
        Ok(l) => l,
        Err(e) => return load_failed(e),
    };
    let spec = HookSpec {
        pf: trace_core::netfilter::Family::Ipv4.nfproto(),
        hook: trace_core::netfilter::Hook::Prerouting.num(),
        priority: -299,
    };
    let fd = match loaded.program(spec.priority, true) {
        Ok(fd) => fd,
        Err(e) => return load_failed(e),
    };
    let ns = match NetnsGuard::create("iptrace-doctor") {
        Ok(ns) => ns,
        Err(e) => return failed(name, Status::Failed, true, format!("temporary netns: {e}")),
    };
    // The link is closed (unregistered) inside, before the namespace goes.
    match crate::netns::run_in(&ns.path(), move || link::create(fd, spec).map(drop)) {
        Ok(Ok(())) => ok(
            name,
            format!(
                "capture's probe program linked at ipv4 PREROUTING priority -299 in netns {}",
                ns.name()
            ),
        ),
        Ok(Err(e)) => failed(name, errno_status(&e.source), true, e.to_string()),
        Err(e) => failed(name, Status::Failed, true, format!("entering netns: {e}")),
    }
}

/// A kernel older than 6.4 has no BPF_PROG_TYPE_NETFILTER: its BPF_PROG_LOAD answers EINVAL
/// (an unknown program type), which says "failed" where the truth is "not in this kernel".
/// The program type came with `struct bpf_nf_ctx`, so its absence from the kernel's BTF tells
/// the two apart (`has_nf_ctx`: None when the BTF cannot be read — then EINVAL stays a
/// failure).
fn prog_type_missing(e: &LoadError, has_nf_ctx: impl FnOnce() -> Option<bool>) -> Option<String> {
    let LoadError::ProgLoad { source, .. } = e else {
        return None;
    };
    if source.raw_os_error() != Some(libc::EINVAL) || has_nf_ctx() != Some(false) {
        return None;
    }
    Some(
        "this kernel has no BPF_PROG_TYPE_NETFILTER (Linux 6.4+; no struct bpf_nf_ctx in its \
         BTF): use --backend fentry or kprobe"
            .into(),
    )
}

/// `--backend auto`, as capture runs it.
fn auto(opts: &LoadOptions) -> Result<AutoSelection, String> {
    let sel = classic::select(Requested::Auto, opts).map_err(|e| e.to_string())?;
    let picked = match &sel.chosen {
        Chosen::Classic(c) => c.flavour.to_string(),
        Chosen::Nfhook => "nfhook".to_string(),
    };
    Ok(AutoSelection {
        picked,
        passed_over: sel
            .rejected
            .iter()
            .map(|(f, why)| (f.to_string(), why.replace('\n', " ")))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    fn prog_load(errno: i32) -> LoadError {
        LoadError::ProgLoad {
            priority: -299,
            source: os(errno),
            log: String::new(),
        }
    }

    #[test]
    fn netfilter_program_type_missing_is_unavailable_not_failed() {
        let why = prog_type_missing(&prog_load(libc::EINVAL), || Some(false));
        assert!(why.unwrap().contains("6.4"));
        // The kernel has the type: EINVAL is a real failure (e.g. the verifier).
        assert!(prog_type_missing(&prog_load(libc::EINVAL), || Some(true)).is_none());
        // Unknown BTF: no guess.
        assert!(prog_type_missing(&prog_load(libc::EINVAL), || None).is_none());
        assert!(prog_type_missing(&prog_load(libc::EPERM), || Some(false)).is_none());
    }

    #[test]
    fn fentry_refused_at_load_is_refused_and_does_not_load() {
        let e = ClassicError::Fentry(FentryError::Load {
            prog: "fentry_nf_hook_slow".into(),
            function: "nf_hook_slow".into(),
            btf_id: 1,
            module: String::new(),
            source: os(libc::EPERM),
            log: String::new(),
        });
        assert_eq!(classify(&e), (false, Status::Refused));
    }

    #[test]
    fn kprobe_that_loads_but_cannot_attach_is_unavailable() {
        let e = ClassicError::Unavailable {
            flavour: Flavour::Kprobe,
            what: "attaching kprobe_nf_hook_slow to nf_hook_slow: No such file or directory (kernel without CONFIG_KPROBES?)".into(),
        };
        assert_eq!(classify(&e), (true, Status::Unavailable));
        let e = ClassicError::Unavailable {
            flavour: Flavour::Kprobe,
            what: "loading kprobe_nf_hook_slow: Operation not permitted".into(),
        };
        assert_eq!(classify(&e), (false, Status::Refused));
        let e = ClassicError::Unavailable {
            flavour: Flavour::Kprobe,
            what: "nf_hook_slow: not in /proc/kallsyms".into(),
        };
        assert_eq!(classify(&e), (false, Status::Unavailable));
    }

    #[test]
    fn fentry_attach_failure_loaded_first() {
        let e = ClassicError::Fentry(FentryError::Attach {
            prog: "p".into(),
            function: "f".into(),
            source: os(libc::EINVAL),
        });
        assert_eq!(classify(&e), (true, Status::Failed));
    }
}
