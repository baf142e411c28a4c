//! Ctrl-C/SIGTERM handling for lab commands: the handler only records the signal; the lab
//! checks the flag between build steps and unwinds through its RAII guards, so an
//! interrupted `lab up` leaves nothing behind. Library users that never install the handler
//! are unaffected.

use super::{LabError, Result};
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to the flag instead of killing the process.
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing a handler that only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// The flag itself (e.g. as the stop flag of `server::serve`).
pub fn flag() -> &'static AtomicBool {
    &INTERRUPTED
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err(Interrupted)` once a signal arrived.
pub fn check() -> Result<()> {
    if interrupted() {
        Err(LabError::Interrupted)
    } else {
        Ok(())
    }
}
