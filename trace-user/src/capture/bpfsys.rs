//! The raw bpf(2) calls the capture backends make themselves, because aya 0.14 cannot express
//! them: BPF_PROG_LOAD of netfilter probes ([`super::loader`]) and of fentry programs on module
//! functions ([`super::fentry`]), BPF_LINK_CREATE ([`super::link`]) and
//! BPF_RAW_TRACEPOINT_OPEN. One syscall wrapper and one BPF_PROG_LOAD prefix for all of them.

use std::ffi::CStr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use aya_obj::generated::bpf_insn;

pub(crate) const BPF_PROG_LOAD: libc::c_long = 5;

/// union bpf_attr for BPF_PROG_LOAD up to expected_attach_type: the fields every loader sets.
/// Callers wrap it in their own attr (later fields, zero tail), which fixes the size passed.
#[repr(C)]
pub(crate) struct ProgLoadHead {
    pub prog_type: u32,
    pub insn_cnt: u32,
    pub insns: u64,
    pub license: u64,
    pub log_level: u32,
    pub log_size: u32,
    pub log_buf: u64,
    pub kern_version: u32,
    pub prog_flags: u32,
    pub prog_name: [u8; 16],
    pub prog_ifindex: u32,
    pub expected_attach_type: u32,
}

const _: () = assert!(std::mem::size_of::<ProgLoadHead>() == 72);

impl ProgLoadHead {
    /// `name` is cut to 15 bytes (the kernel's limit, NUL-terminated); an empty `log` asks for
    /// no verifier log.
    pub fn new(
        prog_type: u32,
        expected_attach_type: u32,
        insns: &[bpf_insn],
        license: &CStr,
        name: &str,
        log: &mut [u8],
    ) -> ProgLoadHead {
        let mut prog_name = [0u8; 16];
        let len = name.len().min(15);
        prog_name[..len].copy_from_slice(&name.as_bytes()[..len]);
        ProgLoadHead {
            prog_type,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: if log.is_empty() { 0 } else { 1 },
            log_size: log.len() as u32,
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            kern_version: 0,
            prog_flags: 0,
            prog_name,
            prog_ifindex: 0,
            expected_attach_type,
        }
    }
}

/// bpf(`cmd`, `attr`, sizeof attr) for the commands that return a new fd.
pub(crate) fn sys_bpf<T>(cmd: libc::c_long, attr: &T) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: attr is a valid bpf_attr prefix for `cmd`, alive for the call; returns a new fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `attempt` first without a verifier log (cheap when it succeeds); if that fails, again with
/// a `log_size`-byte log, whose last `tail_lines` lines come back with the second error.
pub(crate) fn load_with_log_on_failure(
    log_size: usize,
    tail_lines: usize,
    attempt: impl Fn(&mut [u8]) -> Result<OwnedFd, std::io::Error>,
) -> Result<OwnedFd, (std::io::Error, String)> {
    if let Ok(fd) = attempt(&mut []) {
        return Ok(fd);
    }
    let mut log = vec![0u8; log_size];
    attempt(&mut log).map_err(|e| (e, log_tail(&log, tail_lines)))
}

/// The last `n` lines of a NUL-terminated verifier log.
fn log_tail(log: &[u8], n: usize) -> String {
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let tail: Vec<&str> = text.lines().rev().take(n).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prog_load_head_layout() {
        assert_eq!(std::mem::offset_of!(ProgLoadHead, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadHead, expected_attach_type), 68);
    }

    #[test]
    fn log_tail_keeps_the_last_lines_up_to_the_nul() {
        assert_eq!(log_tail(b"a\nb\nc\n\0garbage", 2), "b\nc");
        assert_eq!(log_tail(b"only", 5), "only");
        assert_eq!(log_tail(b"\0", 3), "");
    }

    #[test]
    fn long_names_are_cut_to_15_bytes() {
        let h = ProgLoadHead::new(0, 0, &[], c"GPL", "fentry_nf_nat_inet_fn", &mut []);
        assert_eq!(&h.prog_name, b"fentry_nf_nat_i\0");
        assert_eq!((h.log_level, h.log_size, h.log_buf), (0, 0, 0));
    }
}
