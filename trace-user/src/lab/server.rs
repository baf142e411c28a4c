//! The container's TCP service and the test client. The server answers one line per
//! connection with `ctr got: LINE` and closes, like the fixtures' server; the client sends one
//! line, half-closes, and reads the reply to EOF — so one test = SYN, ACK, PSH, FIN, ACK, ACK
//! from the client side, as in the fixtures.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Per-connection I/O timeout: a stuck peer must not hang a test or the server.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What one test connection saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Exchange {
    /// Client side of the connection (source port = how captures identify it).
    pub local: SocketAddr,
    /// Where the client connected (before any DNAT).
    pub remote: SocketAddr,
    /// The line sent, including its newline.
    pub sent: String,
    /// The server's reply.
    pub reply: String,
    pub elapsed: Duration,
}

/// Connects to `to`, sends `line` + newline, half-closes, reads the reply to EOF. Runs in the
/// calling thread's netns (use `netns::run_in`).
pub fn exchange(to: SocketAddr, line: &str) -> std::io::Result<Exchange> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let sent = format!("{line}\n");
    s.write_all(sent.as_bytes())?;
    s.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(Exchange {
        local: s.local_addr()?,
        remote: to,
        sent,
        reply,
        elapsed: start.elapsed(),
    })
}

/// The reply the server sends for `line` (with its newline).
pub fn expected_reply(line_with_newline: &str) -> String {
    format!("ctr got: {line_with_newline}")
}

/// Serves connections on `listener` until `stop` is set (checked every 100 ms), one thread
/// per connection so a slow client never blocks the next test.
pub fn serve(listener: TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if !readable(&listener, 100) {
            continue;
        }
        match listener.accept() {
            Ok((conn, _)) => {
                std::thread::spawn(move || {
                    let _ = answer(conn);
                });
            }
            Err(e) => eprintln!("iptrace lab server: accept: {e}"),
        }
    }
}

/// Reads one line (max 4 KiB) and answers it.
fn answer(conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&conn).take(4096)).read_line(&mut line)?;
    (&conn).write_all(expected_reply(&line).as_bytes())?;
    conn.shutdown(Shutdown::Both)
}

/// poll(2) for an incoming connection, so the accept loop can notice `stop`.
fn readable(listener: &TcpListener, timeout_ms: i32) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut fd, 1, timeout_ms) };
    n > 0 && fd.revents & libc::POLLIN != 0
}

/// An in-process server: a listener bound inside the container netns plus its accept thread.
pub struct ServerThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Binds `port` on all addresses inside the netns at `ns_path` (the socket belongs to that
    /// namespace for its whole life, whichever thread uses it) and starts serving.
    pub fn start(ns_path: &std::path::Path, port: u16) -> Result<Self, crate::netns::NetnsError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let bound = crate::netns::run_in(ns_path, move || TcpListener::bind(("0.0.0.0", port)))?;
        let listener = bound.map_err(|source| crate::netns::NetnsError::Io {
            op: "bind port in",
            path: ns_path.into(),
            source,
        })?;
        let handle = std::thread::Builder::new()
            .name("lab-server".into())
            .spawn(move || serve(listener, &flag))
            .map_err(|source| crate::netns::NetnsError::Spawn {
                cmd: "lab server thread".into(),
                source,
            })?;
        Ok(ServerThread {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops accepting and closes the listener (waits up to one poll interval).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Server and client over loopback in the current namespace: no root needed.
    #[test]
    fn exchange_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let t = std::thread::spawn(move || serve(listener, &flag));
        let ex = exchange(addr, "hello-from-tc-node").unwrap();
        assert_eq!(ex.sent, "hello-from-tc-node\n");
        assert_eq!(ex.reply, "ctr got: hello-from-tc-node\n");
        assert_eq!(ex.remote, addr);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }

    #[test]
    fn reply_format_matches_fixture_length() {
        // fixtures: client sent 19 bytes, server replied 28.
        assert_eq!("hello-from-tc-peer\n".len(), 19);
        assert_eq!(expected_reply("hello-from-tc-peer\n").len(), 28);
    }
}
