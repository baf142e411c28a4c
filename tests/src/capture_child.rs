//! An `iptrace capture` child process for CLI tests: started and waited for until its probes
//! are attached, its output read as it comes (a full pipe would stall the collector), and
//! stopped the way a user stops it (SIGINT, like Ctrl-C) once the test's traffic is over —
//! instead of sitting out a fixed `--duration`, which stays as a safety cap.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::quiet::{Quiet, Waited};

/// How long the namespaces must stay quiet before a rule-level capture (the default output)
/// is stopped: longer than a delayed ACK (at most 200 ms), so the last exchange of the
/// traffic has been answered. Its packets are assembled on event time only (no timer), so
/// what a later stop would resolve differently needs later traffic, which a quiet lab does not
/// have; on stop the ring buffer is drained and the kernel's reference collected
/// (`--compare-trace` waits for the last TRACE lines itself).
pub const QUIET_PERIOD: Duration = Duration::from_millis(500);

/// [`QUIET_PERIOD`] for `--packets` captures (and in-process sessions): there the collector's
/// timer resolves a packet that vanished once its last event is an idle timeout old (swept
/// every quarter timeout); stopping earlier would flush it as incomplete instead.
pub fn packets_quiet_period() -> Duration {
    let idle = trace_core::assemble::AssemblerConfig::default().idle_timeout_ns;
    Duration::from_nanos(idle + idle / 4)
        + trace_user::capture::session::DRAIN_INTERVAL
        + QUIET_PERIOD
}

/// Once the namespaces `quiet` watches have been quiet for `period`, sends the capture
/// `child` SIGINT (as Ctrl-C would); returns early when it ends by itself first (its
/// `--duration` or `--count`). Prints which happened. Does not wait for the child.
pub fn interrupt_when_quiet(test: &str, child: &mut Child, quiet: &mut Quiet, period: Duration) {
    match quiet.wait(period, || matches!(child.try_wait(), Ok(Some(_)))) {
        Waited::Quiet { after, waited_for } => {
            eprintln!(
                "{test}: traffic over, quiet for {period:?} after {after:?} (last busy: {waited_for:?}): stopping the capture (SIGINT)"
            );
            // SAFETY: kill(2) on our own child's pid (not yet reaped: try_wait said it runs).
            let rc = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        }
        Waited::GaveUp(busy) => eprintln!(
            "{test}: the capture ended by itself before the namespaces were quiet; still busy: {busy:?}"
        ),
    }
}

/// `BIN capture --compare-trace --allow-system-changes --netns NETNS`; the caller adds the
/// rest (duration, format, filter).
pub fn compare_trace_command(bin: &Path, netns: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args([
        "capture",
        "--compare-trace",
        "--allow-system-changes",
        "--netns",
    ])
    .arg(netns);
    cmd
}

/// A running capture.
pub struct CaptureChild {
    test: String,
    child: Child,
    stdout: JoinHandle<std::io::Result<Vec<u8>>>,
    stderr: JoinHandle<Vec<String>>,
}

/// A capture that has exited.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    /// Its stderr lines (also echoed to the test's stderr with an `[iptrace]` prefix).
    pub stderr: Vec<String>,
}

impl CaptureChild {
    /// Spawns `cmd` (an `iptrace capture ...`) and returns once it says its probes are
    /// attached; panics when it exits before that.
    pub fn start(test: &str, cmd: &mut Command) -> CaptureChild {
        Self::start_until(test, cmd, "probes attached")
    }

    /// [`CaptureChild::start`], returning once a stderr line contains `marker`.
    pub fn start_until(test: &str, cmd: &mut Command, marker: &str) -> CaptureChild {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{test}: spawn iptrace: {e}"));
        let mut err = std::io::BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut before = Vec::new();
        let mut line = String::new();
        while err.read_line(&mut line).unwrap_or(0) > 0 {
            eprint!("[iptrace] {line}");
            let attached = line.contains(marker);
            before.push(line.trim_end().to_string());
            line.clear();
            if attached {
                break;
            }
        }
        assert!(
            before.last().is_some_and(|l| l.contains(marker)),
            "{test}: capture did not start (no `{marker}` on stderr)"
        );
        let stderr = std::thread::spawn(move || {
            let rest = err.lines().map_while(Result::ok).inspect(|l| {
                eprintln!("[iptrace] {l}");
            });
            before.into_iter().chain(rest).collect()
        });
        let mut pipe = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::spawn(move || {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut pipe, &mut v).map(|_| v)
        });
        CaptureChild {
            test: test.to_string(),
            child,
            stdout,
            stderr,
        }
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Stops the capture once the namespaces `quiet` watches have been quiet for `period`
    /// ([`interrupt_when_quiet`]), and waits for it.
    pub fn stop_when_quiet(mut self, quiet: &mut Quiet, period: Duration) -> Finished {
        interrupt_when_quiet(&self.test, &mut self.child, quiet, period);
        self.wait()
    }

    /// Waits for the capture to exit and collects its output.
    pub fn wait(mut self) -> Finished {
        let status = self.child.wait().expect("iptrace exits");
        let stdout = self.stdout.join().expect("stdout reader").expect("stdout");
        let stderr = self.stderr.join().expect("stderr reader");
        Finished {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr,
        }
    }
}
