//! `iptrace doctor`: what this kernel supports for tracing netfilter, found by loading and
//! attaching a trivial program of each kind (never guessed from config), plus read-only
//! facts (BTF, lockdown, capabilities, iptables backends, nf_log), and the capture backend
//! that follows.
//!
//! - [`bpf`]: raw bpf(2)/perf_event_open(2) with hand-assembled programs
//! - [`probes`]: the four attach probes (netfilter link in a temporary netns)
//! - [`system`]: read-only machine facts
//! - [`backends`]: each capture backend's real programs loaded and attached by capture's
//!   own code, and the pick of `--backend auto`'s selection
//! - [`report`]: the report, the backend choice (pure) and its text form

pub mod backends;
pub mod bpf;
pub mod probes;
pub mod report;
pub mod system;

pub use report::Report;

/// Gathers everything (loads and attaches each capture backend once, and runs auto's
/// selection; all detached again).
pub fn diagnose() -> Report {
    let (btf, parsed) = system::btf();
    let attach = probes::run_all(parsed.as_ref());
    let (backends, auto) = backends::check_all();
    let choice = report::choose(&backends, &auto, report::tp_btf_status(&attach));
    Report {
        kernel: system::kernel(),
        btf,
        lockdown: system::lockdown(),
        capabilities: system::caps(),
        attach,
        backends,
        auto,
        iptables_default: system::iptables_default(),
        iptables: system::iptables(),
        nf_log: system::nf_log(),
        choice,
    }
}
