//! `iptrace lab up|status|run|down`: the docker port-mapping lab (see `trace_user::lab`).
//! `up` leaves the lab running (state under /run/iptrace) so later invocations can use it;
//! `up --foreground` keeps it until Ctrl-C instead.

use crate::lab::{self, interrupt, IptablesBackend, Lab, LabNs, LabOptions, LabTest, ServerMode};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Build a lab in fresh namespaces and leave it running.
    Up(UpArgs),
    /// Show a lab's namespaces, server and rules.
    Status(Pick),
    /// Run test connections (default: local then remote).
    Run {
        #[arg(value_enum)]
        tests: Vec<LabTest>,
        #[command(flatten)]
        pick: Pick,
    },
    /// Tear a lab down (namespaces, server, sysctl).
    Down {
        #[command(flatten)]
        pick: Pick,
        /// Every lab with a state file.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// Internal: the container's TCP server (`lab up` starts it inside the ctr namespace).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long, default_value_t = 80)]
        port: u16,
        /// Hold a use of net.netfilter.nf_log_all_netns=1 until SIGTERM.
        #[arg(long)]
        nf_log_all_netns: bool,
    },
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    #[arg(long = "iptables", value_enum, default_value_t = IptablesBackend::Legacy)]
    backend: IptablesBackend,
    /// Also install the raw-table TRACE rules of the fixtures (iptrace does not need them).
    #[arg(long)]
    trace_rules: bool,
    /// Set the root namespace's net.netfilter.nf_log_all_netns=1 so legacy TRACE/LOG output
    /// from the lab reaches the kernel log (restored by `down`).
    #[arg(long)]
    nf_log_all_netns: bool,
    /// Namespace name prefix.
    #[arg(long, default_value = "iptrace-lab")]
    prefix: String,
    /// Keep the lab until Ctrl-C, then tear it down (instead of leaving it running).
    #[arg(long)]
    foreground: bool,
}

#[derive(clap::Args, Debug)]
struct Pick {
    /// Lab name (as printed by `up`); optional when exactly one lab exists.
    #[arg(long)]
    name: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Up(a) => up(a),
        Action::Status(p) => status(&pick(p)?),
        Action::Run { tests, pick: p } => run_tests(&pick(p)?, &tests),
        Action::Down { pick: p, all } => down(p, all),
        Action::Serve {
            netns,
            port,
            nf_log_all_netns,
        } => {
            lab::serve_process(&netns, port, nf_log_all_netns)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    interrupt::install();
    let exe = std::env::current_exe().context("locating the iptrace binary for the lab server")?;
    let opts = LabOptions {
        backend: a.backend,
        trace_rules: a.trace_rules,
        name_prefix: a.prefix,
        nf_log_all_netns: a.nf_log_all_netns,
        server: ServerMode::Process { exe },
    };
    let lab = Lab::up(opts)?;
    print_summary(&lab);
    if a.foreground {
        lab.publish()?;
        eprintln!("lab up in the foreground: Ctrl-C tears it down");
        while !interrupt::interrupted() {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        lab.down()?;
        eprintln!("lab torn down");
        return Ok(ExitCode::SUCCESS);
    }
    let name = lab.name().to_string();
    let path = lab.persist()?;
    eprintln!(
        "state: {}   remove with: iptrace lab down --name {name}",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn print_summary(lab: &Lab) {
    let s = lab.state();
    println!(
        "lab {} (iptables-{}, TRACE rules: {})",
        s.name,
        s.backend,
        if s.trace_rules { "yes" } else { "no" }
    );
    for ns in [LabNs::Peer, LabNs::Node, LabNs::Ctr] {
        println!(
            "  {:<5} netns {:<32} inode {}",
            format!("{ns:?}").to_lowercase(),
            lab.ns_name(ns),
            lab.ns_inode(ns)
        );
    }
    if s.sysctls.bridge_nf_call_iptables.is_none() {
        println!("  warning: net.bridge.bridge-nf-call-iptables is absent: bridged packets skip iptables");
    }
    println!("capture it with:\n  {}", lab.capture_hint());
}

/// The named lab, or the only one.
fn pick(p: Pick) -> anyhow::Result<Lab> {
    if let Some(name) = p.name {
        return Ok(Lab::attach(&name)?);
    }
    match lab::state::list().as_slice() {
        [one] => Ok(Lab::attach(one)?),
        [] => anyhow::bail!("no lab is up (start one with `iptrace lab up`)"),
        many => anyhow::bail!(
            "several labs are up, choose one with --name: {}",
            many.join(", ")
        ),
    }
}

fn status(lab: &Lab) -> anyhow::Result<ExitCode> {
    print_summary(lab);
    let st = lab.status();
    for (ns, exists) in &st.namespaces {
        println!(
            "  netns {ns}: {}",
            if *exists { "present" } else { "MISSING" }
        );
    }
    println!(
        "  server: {}",
        if st.server_alive {
            "running"
        } else {
            "NOT running"
        }
    );
    if st.namespaces.iter().any(|(_, e)| !e) {
        return Ok(ExitCode::from(1));
    }
    println!(
        "rules (iptables-{}-save -c in {}):",
        lab.backend(),
        lab.ns_name(LabNs::Node)
    );
    print!("{}", lab.iptables_save()?);
    Ok(if st.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run_tests(lab: &Lab, tests: &[LabTest]) -> anyhow::Result<ExitCode> {
    let all = [LabTest::Local, LabTest::Remote];
    for &t in if tests.is_empty() { &all[..] } else { tests } {
        let ex = lab.run(t)?;
        println!(
            "{t}: {} -> {} sent {:?} got {:?} in {:.1} ms",
            ex.local,
            ex.remote,
            ex.sent,
            ex.reply,
            ex.elapsed.as_secs_f64() * 1e3
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn down(p: Pick, all: bool) -> anyhow::Result<ExitCode> {
    let names = if all {
        lab::state::list()
    } else {
        vec![pick(p)?.name().to_string()]
    };
    for name in names {
        Lab::attach(&name)?
            .down()
            .with_context(|| format!("tearing down lab {name}"))?;
        eprintln!("lab {name} torn down");
    }
    Ok(ExitCode::SUCCESS)
}
