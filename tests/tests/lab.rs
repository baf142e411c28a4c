//! The built-in lab, end to end (root): on each iptables backend, with and without the TRACE
//! rules, both test connections work, the docker rules count exactly the packets the
//! scenario sends through them, and teardown leaves no namespace, link or process behind —
//! also when the owner panics, and through the `iptrace lab` CLI.

use iptrace_tests as e2e;
use std::collections::BTreeSet;
use trace_user::lab::{IptablesBackend, Lab, LabNs};
use trace_user::netns;

const BR: &str = "br-00ea7870520a";
const DNAT: &str = "DOCKER ! -i br-00ea7870520a -p tcp -m tcp --dport 10000 -j DNAT --to-destination 172.19.0.9:80";
const FWD_RELATED: &str =
    "FORWARD -o br-00ea7870520a -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT";
const FWD_DOCKER: &str = "FORWARD -o br-00ea7870520a -j DOCKER";
const DOCKER_ACCEPT: &str =
    "DOCKER -d 172.19.0.9/32 ! -i br-00ea7870520a -o br-00ea7870520a -p tcp -m tcp --dport 80 -j ACCEPT";
const TRACE_PRE: &str = "PREROUTING -d 192.168.64.4/32 -p tcp -m tcp --dport 10000 -j TRACE";
const TRACE_OUT: &str = "OUTPUT -d 172.19.0.0/16 -p tcp -m tcp --dport 80 -j TRACE";

fn counter(save: &str, table: &str, rule: &str) -> (u64, u64) {
    e2e::rule_counter(save, table, rule)
        .unwrap_or_else(|| panic!("no rule {table}: -A {rule} in\n{save}"))
}

/// Names, namespaces' processes and root links before teardown, checked after it.
struct LeakCheck {
    names: Vec<String>,
    pids: Vec<u32>,
    root_links: BTreeSet<String>,
}

impl LeakCheck {
    fn before(lab: &Lab) -> Self {
        let names: Vec<String> = [LabNs::Peer, LabNs::Node, LabNs::Ctr]
            .map(|n| lab.ns_name(n).to_string())
            .into();
        let pids = names
            .iter()
            .flat_map(|n| netns::pids_in(&netns::path_of(n)).unwrap_or_default())
            .collect();
        LeakCheck {
            names,
            pids,
            root_links: e2e::root_links().into_iter().collect(),
        }
    }

    fn assert_clean(&self) {
        for n in &self.names {
            assert!(!netns::exists(n), "netns {n} survived teardown");
        }
        for &pid in &self.pids {
            assert!(
                wait_gone(pid),
                "process {pid} from a lab namespace survived teardown"
            );
        }
        let now: BTreeSet<String> = e2e::root_links().into_iter().collect();
        for ours in [BR, "docker0", "veth0ctr"] {
            assert!(
                !now.contains(ours) || self.root_links.contains(ours),
                "link {ours} appeared in the root netns"
            );
        }
    }
}

fn wait_gone(pid: u32) -> bool {
    (0..60).any(|_| {
        let gone = !e2e::process_running(pid);
        if !gone {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        gone
    })
}

/// One lab: connectivity, rule counters, the optional TRACE rules, teardown.
fn lab_roundtrip(backend: IptablesBackend, trace_rules: bool) {
    let lab = e2e::lab(backend, trace_rules);
    let root_before = e2e::root_links();
    for ns in [LabNs::Peer, LabNs::Node, LabNs::Ctr] {
        assert_ne!(lab.ns_inode(ns), 0);
        assert_eq!(netns::inode_of(&lab.ns_path(ns)).unwrap(), lab.ns_inode(ns));
    }
    let save = lab.iptables_save().unwrap();
    assert_eq!(
        counter(&save, "nat", DNAT),
        (0, 0),
        "fresh lab has traffic already?"
    );

    let local = lab.run_local().unwrap();
    assert_eq!(local.reply, "ctr got: hello-from-tc-node\n");
    assert_eq!(
        local.local.ip().to_string(),
        "172.19.0.1",
        "local test must leave via the bridge"
    );
    let save = lab.iptables_save().unwrap();
    assert_eq!(
        counter(&save, "nat", DNAT),
        (0, 0),
        "local test must not be DNATed"
    );
    assert_eq!(
        counter(&save, "filter", FWD_DOCKER),
        (0, 0),
        "local test must not be forwarded"
    );

    let remote = lab.run_remote().unwrap();
    assert_eq!(remote.reply, "ctr got: hello-from-tc-peer\n");
    assert_eq!(remote.local.ip().to_string(), "192.168.64.5");
    let save = lab.iptables_save().unwrap();
    // Only the SYN goes through nat (later packets follow conntrack): one 60-byte packet.
    assert_eq!(counter(&save, "nat", DNAT), (1, 60), "DNAT\n{save}");
    assert_eq!(counter(&save, "filter", FWD_DOCKER), (1, 60));
    assert_eq!(counter(&save, "filter", DOCKER_ACCEPT), (1, 60));
    // ACK, PSH, FIN and the final ACKs client→ctr take FORWARD rule 7.
    let (related, _) = counter(&save, "filter", FWD_RELATED);
    assert!(related >= 3, "FORWARD rule 7 saw {related} packets\n{save}");

    check_trace_rules(&save, trace_rules);
    assert_eq!(
        e2e::root_links(),
        root_before,
        "the lab changed the root namespace's links"
    );
    let leaks = LeakCheck::before(&lab);
    lab.down().unwrap();
    leaks.assert_clean();
}

fn check_trace_rules(save: &str, trace_rules: bool) {
    if trace_rules {
        // remote: every client→server packet is traced; local: same on OUTPUT.
        assert!(counter(save, "raw", TRACE_PRE).0 >= 4, "{save}");
        assert!(counter(save, "raw", TRACE_OUT).0 >= 4, "{save}");
    } else {
        assert!(
            !save.contains("TRACE"),
            "TRACE rules present although not asked for:\n{save}"
        );
    }
}

#[test]
fn lab_legacy_with_and_without_trace_rules() {
    if !e2e::lab_ready(
        "lab_legacy_with_and_without_trace_rules",
        IptablesBackend::Legacy,
    ) {
        return;
    }
    lab_roundtrip(IptablesBackend::Legacy, false);
    lab_roundtrip(IptablesBackend::Legacy, true);
}

#[test]
fn lab_nft_with_and_without_trace_rules() {
    if !e2e::lab_ready("lab_nft_with_and_without_trace_rules", IptablesBackend::Nft) {
        return;
    }
    lab_roundtrip(IptablesBackend::Nft, false);
    lab_roundtrip(IptablesBackend::Nft, true);
}

/// The rules really are on the chosen backend only (the other one sees no docker chains).
#[test]
fn lab_rules_live_on_the_chosen_backend_only() {
    if !e2e::lab_ready(
        "lab_rules_live_on_the_chosen_backend_only",
        IptablesBackend::Nft,
    ) || !e2e::require_tools(
        "lab_rules_live_on_the_chosen_backend_only",
        &["iptables-legacy-save"],
    ) {
        return;
    }
    let lab = e2e::lab(IptablesBackend::Nft, false);
    let legacy = lab.exec(LabNs::Node, &["iptables-legacy-save"]).unwrap();
    assert!(!String::from_utf8_lossy(&legacy.stdout).contains("DOCKER"));
    let nft = lab.exec(LabNs::Node, &["nft", "list", "tables"]).unwrap();
    assert!(String::from_utf8_lossy(&nft.stdout).contains("table ip nat"));
}

/// A panicking owner still tears the lab down (Drop during unwinding).
#[test]
fn lab_teardown_on_panic() {
    if !e2e::lab_ready("lab_teardown_on_panic", IptablesBackend::Legacy) {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || {
        let lab = e2e::lab(IptablesBackend::Legacy, false);
        tx.send(LeakCheck::before(&lab)).unwrap();
        panic!("deliberate panic with a live lab");
    })
    .join();
    assert!(joined.is_err(), "the thread should have panicked");
    rx.recv().unwrap().assert_clean();
}

/// The CLI: `lab up` leaves a server process and a state file, `run` and `status` use them
/// from separate invocations, `down` removes everything.
#[test]
fn lab_cli_up_run_status_down() {
    let test = "lab_cli_up_run_status_down";
    if !e2e::lab_ready(test, IptablesBackend::Legacy) {
        return;
    }
    let Some(bin) = e2e::iptrace_bin() else {
        e2e::skipped(
            test,
            "no iptrace binary (cargo build -p trace-user, or set IPTRACE_BIN)",
        );
        return;
    };
    let iptrace = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "iptrace {args:?}: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let prefix = format!("e2e-cli-{}", std::process::id());
    let up = iptrace(&["lab", "up", "--iptables", "legacy", "--prefix", &prefix]);
    let name = up.split_whitespace().nth(1).expect("lab name").to_string();
    assert!(name.starts_with(&prefix), "{up}");
    let lab = Lab::attach(&name).unwrap();
    let pid = lab.state().server_pid.expect("server pid in state");
    assert!(e2e::process_running(pid));
    let leaks = LeakCheck::before(&lab);
    assert!(
        leaks.pids.contains(&pid),
        "server {pid} not inside the ctr namespace"
    );

    let run = iptrace(&["lab", "run", "remote", "local", "--name", &name]);
    assert!(
        run.contains("remote: 192.168.64.5:")
            && run.contains("got \"ctr got: hello-from-tc-peer\\n\""),
        "{run}"
    );
    assert!(run.contains("local: 172.19.0.1:"), "{run}");
    let status = iptrace(&["lab", "status", "--name", &name]);
    assert!(status.contains("server: running"), "{status}");
    assert!(status.contains(&format!("[1:60] -A {DNAT}")), "{status}");

    iptrace(&["lab", "down", "--name", &name]);
    leaks.assert_clean();
    assert!(
        !trace_user::lab::LabState::path_for(&name).exists(),
        "state file left behind"
    );
}

/// The opt-in root sysctl is set while the lab lives and restored afterwards — for an
/// in-process lab and for a CLI lab (whose server process holds the use). The use is shared
/// with other iptrace users (reference::NfLogAllNetns): the restore is checked only when no
/// other user holds it.
#[test]
fn lab_nf_log_all_netns_is_restored() {
    let test = "lab_nf_log_all_netns_is_restored";
    if !e2e::lab_ready(test, IptablesBackend::Legacy) {
        return;
    }
    let before = nf_log_all_netns();
    let opts = trace_user::lab::LabOptions {
        nf_log_all_netns: true,
        name_prefix: "e2e-lab".into(),
        ..Default::default()
    };
    let lab = Lab::up(opts).unwrap();
    assert_eq!(nf_log_all_netns(), "1");
    drop(lab);
    check_nf_log_restored(test, &before);

    let Some(bin) = e2e::iptrace_bin() else {
        e2e::skipped(test, "CLI part: no iptrace binary");
        return;
    };
    let prefix = format!("e2e-nflog-{}", std::process::id());
    let up = std::process::Command::new(&bin)
        .args(["lab", "up", "--nf-log-all-netns", "--prefix", &prefix])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let name = String::from_utf8_lossy(&up.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    // `lab up` has exited: the server process keeps the sysctl in use.
    assert_eq!(nf_log_all_netns(), "1");
    Lab::attach(&name).unwrap().down().unwrap();
    check_nf_log_restored(test, &before);
}

fn nf_log_all_netns() -> String {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_log_all_netns")
        .unwrap()
        .trim()
        .to_string()
}

fn check_nf_log_restored(test: &str, before: &str) {
    if std::path::Path::new("/run/iptrace/nf_log_all_netns.users").exists() {
        e2e::skipped(
            test,
            "restore check: another iptrace process uses nf_log_all_netns now",
        );
        return;
    }
    assert_eq!(nf_log_all_netns(), before, "nf_log_all_netns not restored");
}

/// Ctrl-C: `lab up --foreground` tears the lab down on SIGINT; an interrupted `lab up`
/// leaves nothing behind whenever the signal lands.
#[test]
fn lab_cli_ctrl_c_tears_down() {
    let test = "lab_cli_ctrl_c_tears_down";
    if !e2e::lab_ready(test, IptablesBackend::Legacy) {
        return;
    }
    let Some(bin) = e2e::iptrace_bin() else {
        e2e::skipped(
            test,
            "no iptrace binary (cargo build -p trace-user, or set IPTRACE_BIN)",
        );
        return;
    };
    let prefix = format!("e2e-intr-{}", std::process::id());
    let mut up = Interruptible::spawn(&bin, &["lab", "up", "--foreground", "--prefix", &prefix]);
    let name = format!("{prefix}-{}-0", up.0.id());
    let came_up = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        trace_user::lab::LabState::path_for(&name).exists()
    });
    assert!(came_up, "lab {name} did not come up");
    let leaks = LeakCheck::before(&Lab::attach(&name).unwrap());
    assert!(up.interrupt().success());
    leaks.assert_clean();
    assert!(!trace_user::lab::LabState::path_for(&name).exists());

    // Interrupt `lab up` early, at several points of the build.
    for delay_ms in [20, 60, 120] {
        let prefix = format!("e2e-intr-{}-{delay_ms}", std::process::id());
        let mut up = Interruptible::spawn(&bin, &["lab", "up", "--prefix", &prefix]);
        let name = format!("{prefix}-{}-0", up.0.id());
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        up.interrupt();
        if trace_user::lab::LabState::path_for(&name).exists() {
            // Finished before the signal: a complete lab, removed the normal way.
            Lab::attach(&name).unwrap().down().unwrap();
        }
        for ns in ["peer", "node", "ctr"] {
            let ns = format!("{name}-{ns}");
            assert!(
                !netns::exists(&ns),
                "{ns} left after Ctrl-C at {delay_ms} ms"
            );
        }
    }
}

/// An `iptrace` child that gets SIGINT (like Ctrl-C) when interrupted or dropped, so a
/// failing test does not leave a foreground lab running.
struct Interruptible(std::process::Child);

impl Interruptible {
    fn spawn(bin: &std::path::Path, args: &[&str]) -> Self {
        let child = std::process::Command::new(bin)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Interruptible(child)
    }

    fn interrupt(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        self.0.wait().unwrap()
    }
}

impl Drop for Interruptible {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.interrupt();
        }
    }
}
