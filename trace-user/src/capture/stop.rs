//! Ctrl-C / SIGTERM as a flag, for the time before and around the session's own (tokio)
//! signal listeners: once iptrace has changed the system (`--compare-trace`), a signal must
//! not kill the process with the TRACE rules and the sysctl still in place — it must end the
//! capture so that the normal path undoes everything.
//!
//! The handler only stores to an atomic (async-signal-safe). tokio installs its handler later
//! through signal-hook-registry, which keeps calling the one found in place, so the flag is
//! set even while the session is listening too.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Replaces the default (terminate) action of SIGINT and SIGTERM with setting the flag.
pub fn install() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask; the handler is
        // async-signal-safe (one atomic store).
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A stop was requested since [`install`].
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
