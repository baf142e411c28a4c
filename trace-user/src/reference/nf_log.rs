//! `net.netfilter.nf_log_all_netns`: the root-namespace switch without which legacy TRACE and
//! LOG lines of other namespaces never reach the kernel log. Shared between every iptrace
//! user of it, in this process and others.

use super::{io_err, ReferenceError, Result};
use std::io::Read;
use std::path::Path;

const NF_LOG_ALL_NETNS: &str = "/proc/sys/net/netfilter/nf_log_all_netns";

/// Users of the root-namespace sysctl across iptrace processes: concurrent tracers (several
/// captures, parallel test runs) must not restore the value under each other's feet, and a
/// crashed process must not leave it changed for good. A state file under an exclusive
/// `flock` holds the value to restore and one line per user (pid); dead pids are pruned, so
/// the next user after a crash restores the original value.
const NF_LOG_STATE: &str = "/run/iptrace/nf_log_all_netns.users";

struct NfLogUsers {
    original: Option<String>,
    pids: Vec<u32>,
}

/// Runs `f` on the user list under the lock, then writes it back (or removes the file when
/// nobody is left).
fn with_nf_log_users<T>(f: impl FnOnce(&mut NfLogUsers) -> Result<T>) -> Result<T> {
    use std::io::{Seek, Write};
    use std::os::fd::AsRawFd;
    let path = Path::new(NF_LOG_STATE);
    let dir = path.parent().expect("state file has a directory");
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("open", path))?;
    // SAFETY: flock on an fd we own; released when `file` closes.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(ReferenceError::Io {
            op: "lock",
            path: path.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(io_err("read", path))?;
    let mut lines = text.lines();
    let original = lines.next().map(str::to_string).filter(|s| !s.is_empty());
    let alive = |pid: &u32| Path::new(&format!("/proc/{pid}")).exists();
    let pids = lines
        .filter_map(|l| l.trim().parse().ok())
        .filter(alive)
        .collect();
    let mut users = NfLogUsers { original, pids };
    let out = f(&mut users)?;
    if users.pids.is_empty() {
        std::fs::remove_file(path).map_err(io_err("remove", path))?;
    } else {
        let body = std::iter::once(users.original.clone().unwrap_or_default())
            .chain(users.pids.iter().map(u32::to_string))
            .collect::<Vec<_>>()
            .join("\n");
        file.set_len(0).map_err(io_err("truncate", path))?;
        file.rewind().map_err(io_err("rewind", path))?;
        file.write_all(body.as_bytes())
            .map_err(io_err("write", path))?;
    }
    Ok(out)
}

/// One use of `net.netfilter.nf_log_all_netns=1` (legacy TRACE/LOG of non-initial namespaces
/// reach the kernel log only then), shared across threads and processes: the first user sets
/// it, the last one restores the original value — also after a user crashed. Released on
/// drop; [`NfLogAllNetns::release`] reports errors instead.
#[derive(Debug)]
pub struct NfLogAllNetns {
    held: bool,
}

impl NfLogAllNetns {
    pub fn acquire() -> Result<Self> {
        nf_log_acquire()?;
        Ok(NfLogAllNetns { held: true })
    }

    pub fn release(mut self) -> Result<()> {
        self.held = false;
        nf_log_release()
    }
}

impl Drop for NfLogAllNetns {
    fn drop(&mut self) {
        if std::mem::take(&mut self.held) {
            if let Err(e) = nf_log_release() {
                eprintln!("iptrace: cleanup: {e}");
            }
        }
    }
}

fn nf_log_acquire() -> Result<()> {
    with_nf_log_users(|u| {
        let p = Path::new(NF_LOG_ALL_NETNS);
        if u.pids.is_empty() {
            // Nobody alive uses it: the recorded original (left by a crashed user) wins over
            // the current value, which that user had changed.
            if u.original.is_none() {
                u.original = Some(
                    std::fs::read_to_string(p)
                        .map_err(io_err("read", p))?
                        .trim()
                        .to_string(),
                );
            }
            std::fs::write(p, "1").map_err(io_err("write", p))?;
        }
        u.pids.push(std::process::id());
        Ok(())
    })
}

fn nf_log_release() -> Result<()> {
    with_nf_log_users(|u| {
        let me = std::process::id();
        if let Some(i) = u.pids.iter().position(|p| *p == me) {
            u.pids.remove(i);
        }
        if u.pids.is_empty() {
            if let Some(orig) = u.original.take() {
                let p = Path::new(NF_LOG_ALL_NETNS);
                std::fs::write(p, orig).map_err(io_err("write", p))?;
            }
        }
        Ok(())
    })
}
