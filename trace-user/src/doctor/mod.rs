//! `iptrace doctor`: what this kernel supports for tracing netfilter, found by loading and
//! attaching a trivial program of each kind (never guessed from config), plus read-only
//! facts (BTF, lockdown, capabilities, iptables backends, nf_log), and the capture backend
//! that follows.
//!
//! - [`bpf`]: raw bpf(2)/perf_event_open(2) with hand-assembled programs
//! - [`probes`]: the four attach probes (netfilter link in a temporary netns)
//! - [`system`]: read-only machine facts
//! - [`report`]: the report, the backend choice (pure) and its text form

pub mod bpf;
pub mod probes;
pub mod report;
pub mod system;

pub use report::Report;

/// Gathers everything. `implemented` = capture backends this build has (names as
/// `iptrace capture --backend` takes them).
pub fn diagnose(implemented: &[&str]) -> Report {
    let (btf, parsed) = system::btf();
    let attach = probes::run_all(parsed.as_ref());
    let choice = report::choose(&attach, implemented);
    Report {
        kernel: system::kernel(),
        btf,
        lockdown: system::lockdown(),
        capabilities: system::caps(),
        attach,
        iptables_default: system::iptables_default(),
        iptables: system::iptables(),
        nf_log: system::nf_log(),
        choice,
    }
}
