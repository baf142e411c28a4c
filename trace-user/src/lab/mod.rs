//! The built-in lab: the docker port-mapping scenario of the fixtures (peer — node — ctr
//! namespaces, DNAT of node:10000 to ctr:80 through a bridge) built from scratch in fresh,
//! uniquely named network namespaces, with a TCP server in ctr and the `local`/`remote` test
//! connections. [`Lab`] is an RAII guard: dropping it (also while a test panics) stops the
//! server and deletes the namespaces.
//!
//! ```no_run
//! use trace_user::lab::{Lab, LabOptions, LabNs, IptablesBackend};
//! let lab = Lab::up(LabOptions { backend: IptablesBackend::Nft, ..LabOptions::default() })?;
//! // ... start a capture in lab.ns_path(LabNs::Node) ...
//! let ex = lab.run_remote()?;          // peer -> 192.168.64.4:10000 -> DNAT -> ctr:80
//! println!("client port {}", ex.local.port());
//! println!("{}", lab.iptables_save()?);
//! # Ok::<(), trace_user::lab::LabError>(())
//! ```

pub mod interrupt;
pub mod rules;
pub mod server;
pub mod state;
pub mod topology;

pub use rules::IptablesBackend;
pub use server::Exchange;
pub use state::LabState;

use crate::netns::{self, NetnsError};
use crate::reference::NfLogAllNetns;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Errors of the lab, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("interrupted (Ctrl-C): the lab was torn down")]
    Interrupted,
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no lab named {name:?} (no state file {path})")]
    NotFound { name: String, path: PathBuf },
    #[error("{test} test: connection to {to} failed: {source}")]
    Connect {
        test: LabTest,
        to: SocketAddr,
        source: std::io::Error,
    },
    #[error("{test} test: expected reply {expected:?}, got {got:?}")]
    BadReply {
        test: LabTest,
        expected: String,
        got: String,
    },
    #[error("net.netfilter.nf_log_all_netns: {0}")]
    NfLog(String),
    #[error("lab server did not start: {0}")]
    Server(String),
    #[error("only a lab whose server runs as a process can outlive this process (use ServerMode::Process)")]
    NotPersistable,
}

pub type Result<T> = std::result::Result<T, LabError>;

/// One of the lab's three namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabNs {
    /// "Another node": the remote test's client.
    Peer,
    /// The docker host: all the iptables rules; the local test's client.
    Node,
    /// The container: the TCP server on :80.
    Ctr,
}

/// The two test connections of the fixtures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum LabTest {
    /// From node to 172.19.0.9:80 (OUTPUT path).
    Local,
    /// From peer to 192.168.64.4:10000 (PREROUTING → DNAT → FORWARD → bridge).
    Remote,
}

impl std::fmt::Display for LabTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LabTest::Local => "local",
            LabTest::Remote => "remote",
        })
    }
}

impl LabTest {
    /// (client namespace, destination, line sent): the fixtures' payloads, so packet lengths match.
    fn plan(self) -> (LabNs, SocketAddr, &'static str) {
        match self {
            LabTest::Local => (
                LabNs::Node,
                addr(topology::CTR_IP, topology::CTR_PORT),
                "hello-from-tc-node",
            ),
            LabTest::Remote => (
                LabNs::Peer,
                addr(topology::NODE_IP, topology::HOST_PORT),
                "hello-from-tc-peer",
            ),
        }
    }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("constant address"), port)
}

/// How the container's TCP server runs.
#[derive(Debug, Clone, Default)]
pub enum ServerMode {
    /// A thread of this process (library users, tests): stops when the `Lab` drops.
    #[default]
    Thread,
    /// `EXE lab serve --netns PATH --port 80` as its own process group, so the lab can outlive
    /// this process (`iptrace lab up`). EXE must be the iptrace binary.
    Process { exe: PathBuf },
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub backend: IptablesBackend,
    /// Add the raw-table TRACE rules of the fixtures (iptrace itself never needs them).
    pub trace_rules: bool,
    /// Namespaces are `PREFIX-PID-N-{peer,node,ctr}`.
    pub name_prefix: String,
    /// Set the ROOT namespace sysctl net.netfilter.nf_log_all_netns=1 (so legacy TRACE/LOG
    /// from the lab reaches the kernel log); the previous value is restored at teardown.
    pub nf_log_all_netns: bool,
    pub server: ServerMode,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            backend: IptablesBackend::Legacy,
            trace_rules: false,
            name_prefix: "iptrace-lab".into(),
            nf_log_all_netns: false,
            server: ServerMode::Thread,
        }
    }
}

/// A running lab. Owned labs tear down on drop; attached ones (from a state file) don't.
pub struct Lab {
    state: LabState,
    server_thread: Option<server::ServerThread>,
    server_child: Option<Child>,
    /// In-process labs hold their nf_log_all_netns use here (process-mode labs: the server
    /// process holds it, so it lasts as long as the lab).
    nf_log: Option<NfLogAllNetns>,
    owned: bool,
}

impl Lab {
    /// Builds the whole lab. On any error (or Ctrl-C, see [`interrupt`]) everything created
    /// so far is removed before returning.
    pub fn up(opts: LabOptions) -> Result<Lab> {
        let name = netns::unique_name(&opts.name_prefix);
        let mut lab = Lab {
            state: LabState::new(&name, opts.backend, opts.trace_rules),
            server_thread: None,
            server_child: None,
            nf_log: None,
            owned: true,
        };
        lab.state.nf_log_all_netns = opts.nf_log_all_netns;
        lab.build(&opts)?;
        Ok(lab)
    }

    fn build(&mut self, opts: &LabOptions) -> Result<()> {
        if opts.nf_log_all_netns && matches!(opts.server, ServerMode::Thread) {
            self.nf_log =
                Some(NfLogAllNetns::acquire().map_err(|e| LabError::NfLog(e.to_string()))?);
        }
        for (i, ns) in self
            .state
            .ns
            .all()
            .map(String::from)
            .into_iter()
            .enumerate()
        {
            interrupt::check()?;
            netns::add(&ns)?;
            self.state.created.push(ns.clone());
            self.state.inodes[i] = netns::inode_of(&netns::path_of(&ns))?;
            topology::disable_ipv6(&ns)?;
        }
        interrupt::check()?;
        self.state.sysctls = topology::node_sysctls(&self.state.ns.node)?;
        topology::build_links(&self.state.ns)?;
        interrupt::check()?;
        self.restore_rules()?;
        self.start_server(&opts.server)?;
        interrupt::check()
    }

    fn restore_rules(&self) -> Result<()> {
        let text = rules::restore_text(self.state.trace_rules);
        let mut cmd = netns::command(&self.state.ns.node, &self.state.backend.restore_bin());
        run_with_stdin(&mut cmd, &text)
    }

    fn start_server(&mut self, mode: &ServerMode) -> Result<()> {
        let ctr = self.ns_path(LabNs::Ctr);
        match mode {
            ServerMode::Thread => {
                self.server_thread = Some(server::ServerThread::start(&ctr, topology::CTR_PORT)?)
            }
            ServerMode::Process { exe } => {
                let child = spawn_server_process(exe, &ctr, self.state.nf_log_all_netns)?;
                self.state.server_pid = Some(child.id());
                self.server_child = Some(child);
            }
        }
        Ok(())
    }

    /// Re-opens a lab made by `iptrace lab up` (state file under [`state::STATE_DIR`]).
    /// Dropping the result leaves the lab running; call [`Lab::down`] to remove it.
    pub fn attach(name: &str) -> Result<Lab> {
        let state = LabState::load(name)?;
        Ok(Lab {
            state,
            server_thread: None,
            server_child: None,
            nf_log: None,
            owned: false,
        })
    }

    /// Writes the state file so other `iptrace lab` invocations find this lab (teardown
    /// removes it). The lab still belongs to this value.
    pub fn publish(&self) -> Result<PathBuf> {
        self.state.save()
    }

    /// Writes the state file and lets the lab outlive this `Lab` value (and this process).
    pub fn persist(mut self) -> Result<PathBuf> {
        if self.server_thread.is_some() {
            return Err(LabError::NotPersistable);
        }
        let path = self.publish()?;
        self.owned = false;
        // The server process must keep running: forget the handle without killing it.
        self.server_child.take();
        Ok(path)
    }

    /// Tears everything down now, reporting the first error (all steps are attempted).
    pub fn down(mut self) -> Result<()> {
        self.owned = false;
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut first: Option<LabError> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };
        note(self.stop_server());
        for ns in self.state.created.clone().iter().rev() {
            note(netns::destroy(ns).map_err(LabError::from));
        }
        if let Some(n) = self.nf_log.take() {
            note(n.release().map_err(|e| LabError::NfLog(e.to_string())));
        }
        note(self.state.remove_file());
        first.map_or(Ok(()), Err)
    }

    /// Stops the server. A server process gets SIGTERM first so it can release its
    /// nf_log_all_netns use (restoring the sysctl), SIGKILL after 3 s.
    fn stop_server(&mut self) -> Result<()> {
        if let Some(mut t) = self.server_thread.take() {
            t.stop();
        }
        if let Some(mut child) = self.server_child.take() {
            terminate(child.id());
            let _ = child.kill();
            let _ = child.wait();
        } else if let Some(pid) = self.state.server_pid {
            // Started by an earlier `iptrace lab up`: only signal it if it still is the process
            // inside our container namespace (pids get reused).
            if netns::inode_of(&netns::path_of_pid(pid)).ok() == Some(self.ns_inode(LabNs::Ctr)) {
                terminate(pid);
            }
        }
        Ok(())
    }

    /// The lab's name (`PREFIX-PID-N`); namespaces are `NAME-peer|node|ctr`.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn backend(&self) -> IptablesBackend {
        self.state.backend
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    pub fn ns_name(&self, ns: LabNs) -> &str {
        match ns {
            LabNs::Peer => &self.state.ns.peer,
            LabNs::Node => &self.state.ns.node,
            LabNs::Ctr => &self.state.ns.ctr,
        }
    }

    /// `/run/netns/NAME`: pass to `netns::run_in`/`spawn_in` (e.g. to attach netfilter links).
    pub fn ns_path(&self, ns: LabNs) -> PathBuf {
        netns::path_of(self.ns_name(ns))
    }

    /// The namespace's inode (`net->ns.inum`), to filter kernel events.
    pub fn ns_inode(&self, ns: LabNs) -> u64 {
        self.state.inodes[ns as usize]
    }

    /// The `local` test: node → 172.19.0.9:80.
    pub fn run_local(&self) -> Result<Exchange> {
        self.run(LabTest::Local)
    }

    /// The `remote` test: peer → 192.168.64.4:10000 (DNAT to 172.19.0.9:80).
    pub fn run_remote(&self) -> Result<Exchange> {
        self.run(LabTest::Remote)
    }

    /// Runs one test connection and checks the server's reply.
    pub fn run(&self, test: LabTest) -> Result<Exchange> {
        let (ns, to, line) = test.plan();
        let ex = netns::run_in(&self.ns_path(ns), move || server::exchange(to, line))?
            .map_err(|source| LabError::Connect { test, to, source })?;
        let expected = server::expected_reply(&ex.sent);
        if ex.reply != expected {
            return Err(LabError::BadReply {
                test,
                expected,
                got: ex.reply,
            });
        }
        Ok(ex)
    }

    /// `iptables-{legacy,nft}-save -c` in the node namespace (rules with counters).
    pub fn iptables_save(&self) -> Result<String> {
        let save = self.state.backend.save_bin();
        Ok(netns::exec_stdout(
            self.ns_name(LabNs::Node),
            &[&save, "-c"],
        )?)
    }

    /// Runs `argv` inside one of the lab's namespaces; non-zero exit is an error.
    pub fn exec(&self, ns: LabNs, argv: &[&str]) -> Result<Output> {
        Ok(netns::exec(self.ns_name(ns), argv)?)
    }

    /// Which namespaces still exist and whether the server is alive.
    pub fn status(&self) -> state::LabStatus {
        state::LabStatus::probe(&self.state, self.server_thread.is_some())
    }

    /// How to capture this lab with iptrace.
    pub fn capture_hint(&self) -> String {
        format!(
            "iptrace capture --backend nfhook --netns {node}    # then, in another shell: iptrace lab run remote --name {name}",
            node = self.ns_name(LabNs::Node),
            name = self.name()
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(e) = self.teardown() {
            eprintln!("iptrace lab: warning: teardown of {}: {e}", self.state.name);
        }
    }
}

/// SIGTERM, then SIGKILL if `pid` still runs after 3 s (a process we started).
fn terminate(pid: u32) {
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
            .unwrap_or(false)
    };
    // SAFETY: plain syscalls on a process this lab started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    for _ in 0..60 {
        if !running() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// Starts `EXE lab serve` in its own process group (a Ctrl-C in the terminal that ran
/// `lab up` must not kill a lab meant to outlive it) and waits for its "ready" line.
fn spawn_server_process(exe: &Path, ctr: &Path, nf_log_all_netns: bool) -> Result<Child> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(exe);
    cmd.args(["lab", "serve", "--netns"])
        .arg(ctr)
        .args(["--port", &topology::CTR_PORT.to_string()]);
    if nf_log_all_netns {
        cmd.arg("--nf-log-all-netns");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Not inherited: a caller reading our output to EOF would wait for the server too.
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|source| LabError::Io {
            op: "spawn",
            path: exe.into(),
            source,
        })?;
    let mut line = String::new();
    let out = child.stdout.take().expect("piped stdout");
    let _ = std::io::BufReader::new(out).read_line(&mut line);
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        return Err(LabError::Server(format!(
            "{} lab serve said {line:?}",
            exe.display()
        )));
    }
    Ok(child)
}

/// Runs `cmd` with `input` on stdin; a non-zero exit is an error carrying stderr.
fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<()> {
    use std::io::Write;
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetnsError::Spawn {
            cmd: shown.clone(),
            source,
        })?;
    let write = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes());
    let out = child
        .wait_with_output()
        .map_err(|source| NetnsError::Spawn {
            cmd: shown.clone(),
            source,
        })?;
    if out.status.success() && write.is_ok() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(NetnsError::Command {
        cmd: shown,
        status: out.status.to_string(),
        stderr,
    }
    .into())
}

/// The `iptrace lab serve` side: hold nf_log_all_netns if asked, enter the netns, bind, say
/// "ready" on stdout, serve until SIGTERM, then release the sysctl and return.
///
/// The whole process lives in the container namespace (teardown finds and stops it there);
/// the sysctl exists only in the namespace we started in, so the release goes back there.
pub fn serve_process(ns: &Path, port: u16, nf_log_all_netns: bool) -> Result<()> {
    interrupt::install();
    // The parent reads stdout until "ready" and does not keep our stderr: report there.
    let setup = serve_setup(ns, port, nf_log_all_netns).inspect_err(|e| println!("error: {e}"))?;
    println!("ready");
    server::serve(setup.listener, interrupt::flag());
    if let Some(n) = setup.nf_log {
        netns::enter(Path::new(&format!(
            "/proc/self/fd/{}",
            setup.home.as_raw_fd()
        )))?;
        n.release().map_err(|e| LabError::NfLog(e.to_string()))?;
    }
    Ok(())
}

struct ServeSetup {
    listener: std::net::TcpListener,
    nf_log: Option<NfLogAllNetns>,
    /// The namespace we started in (to release the sysctl there).
    home: std::fs::File,
}

fn serve_setup(ns: &Path, port: u16, nf_log_all_netns: bool) -> Result<ServeSetup> {
    let here = Path::new("/proc/thread-self/ns/net");
    let home = std::fs::File::open(here).map_err(|source| LabError::Io {
        op: "open",
        path: here.into(),
        source,
    })?;
    let nf_log = match nf_log_all_netns {
        true => Some(NfLogAllNetns::acquire().map_err(|e| LabError::NfLog(e.to_string()))?),
        false => None,
    };
    netns::enter(ns)?;
    let listener =
        std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|source| LabError::Io {
            op: "bind port in",
            path: ns.into(),
            source,
        })?;
    Ok(ServeSetup {
        listener,
        nf_log,
        home,
    })
}
