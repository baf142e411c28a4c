//! Named network namespaces: create/delete them (`ip netns add/del`), run commands inside
//! (`ip netns exec`), run Rust code inside one on a dedicated thread (setns), and an RAII
//! guard that deletes the namespace on drop (also while a test panics).
//!
//! Why threads: `setns(CLONE_NEWNET)` changes the namespace of the calling *thread* only, and
//! sockets, BPF netfilter links and sysctl opens are bound to the namespace current when they
//! are created. So "do X inside netns N" = spawn a thread, setns, do X, join
//! ([`run_in`]), or keep such a thread alive for a long-running job ([`spawn_in`]).
//!
//! ```no_run
//! use trace_user::netns::{self, NetnsGuard};
//! let ns = NetnsGuard::create("capture")?;           // e.g. "capture-4242-0"
//! netns::exec(ns.name(), &["ip", "link", "set", "lo", "up"])?;
//! let inode = netns::run_in(&ns.path(), netns::current_inode)??;
//! assert_eq!(inode, ns.inode());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

/// Where `ip netns add` bind-mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors from namespace handling; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setns into {path}: {source}")]
    Setns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("thread inside netns {path} panicked")]
    ThreadPanicked { path: PathBuf },
    #[error("invalid netns name {name:?}: use [A-Za-z0-9_.-], at most 200 bytes")]
    BadName { name: String },
}

pub type Result<T> = std::result::Result<T, NetnsError>;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique on this machine for this run: `prefix-PID-N` (N counts per process).
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// `/run/netns/NAME`.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// `/proc/PID/ns/net`: the namespace of any process (e.g. a container's init).
pub fn path_of_pid(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// Whether the named namespace exists.
pub fn exists(name: &str) -> bool {
    path_of(name).exists()
}

/// `ip netns add NAME`, then `lo` up (a fresh namespace has its loopback down).
pub fn add(name: &str) -> Result<()> {
    check_name(name)?;
    run_checked(Command::new("ip").args(["netns", "add", name]))?;
    let lo_up = exec(name, &["ip", "link", "set", "lo", "up"]).map(drop);
    if lo_up.is_err() {
        // Half-made: remove it, so a failed add leaves nothing behind.
        let _ = delete(name);
    }
    lo_up
}

/// `ip netns del NAME`. The namespace itself lives on while a process or socket still uses it.
pub fn delete(name: &str) -> Result<()> {
    check_name(name)?;
    run_checked(Command::new("ip").args(["netns", "del", name])).map(drop)
}

/// A `Command` that runs `program` inside the named namespace (`ip netns exec NAME program`).
/// Add arguments, stdio and spawn it as usual.
pub fn command(name: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", name, program]);
    c
}

/// Runs `argv` inside the named namespace and returns its output; a non-zero exit is an error
/// carrying stderr.
pub fn exec(name: &str, argv: &[&str]) -> Result<Output> {
    let (program, args) = argv.split_first().expect("exec needs a program");
    run_checked(command(name, program).args(args))
}

/// Like [`exec`] but returns stdout as a String.
pub fn exec_stdout(name: &str, argv: &[&str]) -> Result<String> {
    exec(name, argv).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs a prepared command, capturing output; a non-zero exit becomes [`NetnsError::Command`].
pub fn run_checked(cmd: &mut Command) -> Result<Output> {
    let shown = show(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            cmd: shown.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(out);
    }
    Err(NetnsError::Command {
        cmd: shown,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// PIDs of the processes whose network namespace is `path` (scans /proc; same as `ip netns pids`).
pub fn pids_in(path: &Path) -> Result<Vec<u32>> {
    let want = inode_of(path)?;
    let dir = std::fs::read_dir("/proc").map_err(|source| NetnsError::Io {
        op: "read",
        path: "/proc".into(),
        source,
    })?;
    let pids = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|&pid| inode_of(&path_of_pid(pid)).ok() == Some(want));
    Ok(pids.collect())
}

/// The inode number identifying the namespace at `path` (what `ls -L -i` shows, and what
/// `net->ns.inum` is inside the kernel: captured events carry it).
pub fn inode_of(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| NetnsError::Io {
            op: "stat",
            path: path.into(),
            source,
        })
}

/// The inode of the calling thread's current network namespace.
pub fn current_inode() -> Result<u64> {
    inode_of(Path::new("/proc/thread-self/ns/net"))
}

/// Moves the calling thread into the namespace at `path` (`/run/netns/NAME` or
/// `/proc/PID/ns/net`). Affects this thread only; prefer [`run_in`]/[`spawn_in`], which
/// use a fresh thread so the caller's thread never changes namespace.
pub fn enter(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|source| NetnsError::Io {
        op: "open",
        path: path.into(),
        source,
    })?;
    // SAFETY: plain syscall on a valid open fd.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        let source = std::io::Error::last_os_error();
        return Err(NetnsError::Setns {
            path: path.into(),
            source,
        });
    }
    Ok(())
}

/// Runs `f` on a new thread inside the namespace at `path` and waits for its result.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    spawn_in(path, "netns-run", f)?
        .join()
        .map_err(|_| NetnsError::ThreadPanicked { path: path.into() })
}

/// Starts a named thread that enters the namespace at `path` and then runs `f` (for
/// long-running work: a capture loop, a server). Entering happens before this returns, so a
/// bad path is reported here rather than inside the thread.
pub fn spawn_in<T, F>(path: &Path, thread_name: &str, f: F) -> Result<JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    let handle = std::thread::Builder::new()
        .name(thread_name.to_string())
        .spawn(move || {
            let entered = enter(&owned);
            let ok = entered.is_ok();
            let _ = tx.send(entered);
            if !ok {
                // The caller already got the error; end this thread without running `f`
                // (resume_unwind skips the panic hook, so nothing is printed).
                std::panic::resume_unwind(Box::new(()));
            }
            f()
        })
        .map_err(|source| NetnsError::Spawn {
            cmd: format!("thread {thread_name}"),
            source,
        })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(NetnsError::ThreadPanicked { path: path.into() }),
    }
}

/// An owned named namespace, deleted on drop (after killing any process still inside it,
/// since those were started by whoever owns the guard).
#[derive(Debug)]
pub struct NetnsGuard {
    name: String,
    inode: u64,
    armed: bool,
}

impl NetnsGuard {
    /// Creates `prefix-PID-N` (see [`unique_name`]) with `lo` up.
    pub fn create(prefix: &str) -> Result<Self> {
        Self::create_named(&unique_name(prefix))
    }

    /// Creates a namespace with exactly this name (must not exist yet).
    pub fn create_named(name: &str) -> Result<Self> {
        add(name)?;
        // Guard first, so a failing stat still deletes what we just created.
        let mut guard = NetnsGuard {
            name: name.to_string(),
            inode: 0,
            armed: true,
        };
        guard.inode = inode_of(&guard.path())?;
        Ok(guard)
    }

    /// Takes ownership of an existing named namespace (e.g. recorded in a state file).
    pub fn adopt(name: &str) -> Result<Self> {
        check_name(name)?;
        let inode = inode_of(&path_of(name))?;
        Ok(NetnsGuard {
            name: name.to_string(),
            inode,
            armed: true,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, for [`enter`], [`run_in`], [`spawn_in`].
    pub fn path(&self) -> PathBuf {
        path_of(&self.name)
    }

    /// The namespace inode (`net->ns.inum`), to filter kernel events by namespace.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Forgets the namespace without deleting it; returns its name.
    pub fn release(mut self) -> String {
        self.armed = false;
        std::mem::take(&mut self.name)
    }

    /// Kills the processes inside, then deletes the namespace. Idempotent.
    pub fn delete(mut self) -> Result<()> {
        self.armed = false;
        destroy(&self.name)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = destroy(&self.name) {
                eprintln!("iptrace: warning: cleaning up netns {}: {e}", self.name);
            }
        }
    }
}

/// SIGKILLs the processes inside the named namespace, waits for them to be gone (max 2 s),
/// then deletes it. Missing namespaces are fine (cleanup must be idempotent).
pub fn destroy(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    kill_all_in(&path_of(name));
    delete(name)
}

fn kill_all_in(path: &Path) {
    for _ in 0..40 {
        let pids = pids_in(path).unwrap_or_default();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: plain syscall; these processes live in a namespace we own.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NetnsError::BadName {
            name: name.to_string(),
        })
    }
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    // Skips go straight to stderr: the harness hides eprintln! of passing tests.
    use std::io::Write;

    #[test]
    fn unique_names_differ_and_carry_pid() {
        let a = unique_name("t");
        let b = unique_name("t");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("t-{}-", std::process::id())));
    }

    #[test]
    fn names_are_validated() {
        assert!(check_name("lab-node-1.x_y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "x;rm"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(path_of("x"), PathBuf::from("/run/netns/x"));
        assert_eq!(path_of_pid(7), PathBuf::from("/proc/7/ns/net"));
    }

    #[test]
    fn missing_namespace_is_reported_with_path() {
        let err = run_in(Path::new("/run/netns/does-not-exist-iptrace"), || ()).unwrap_err();
        assert!(err.to_string().contains("does-not-exist-iptrace"), "{err}");
    }

    #[test]
    fn command_shows_argv() {
        let mut c = command("n", "ip");
        c.args(["link", "show"]);
        assert_eq!(show(&c), "ip netns exec n ip link show");
    }

    /// Needs root and iproute2: creates, enters and deletes a namespace.
    #[test]
    fn guard_roundtrip_as_root() {
        if unsafe { libc::geteuid() } != 0 {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: guard_roundtrip_as_root needs root"
            );
            return;
        }
        let g = NetnsGuard::create("iptrace-unit-netns").unwrap();
        let name = g.name().to_string();
        let inside = run_in(&g.path(), current_inode).unwrap().unwrap();
        assert_eq!(inside, g.inode());
        assert_ne!(current_inode().unwrap(), g.inode());
        let lo = exec_stdout(&name, &["ip", "-o", "link", "show", "lo"]).unwrap();
        assert!(lo.contains("UP"), "{lo}");
        drop(g);
        assert!(!exists(&name));
    }
}
