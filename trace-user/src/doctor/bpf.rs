//! Raw bpf(2)/perf_event_open(2) calls for doctor's attach probes. Programs are two
//! hand-assembled instructions (`r0 = RET; exit`), so doctor works without the eBPF build
//! and tests the kernel, not our programs.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// bpf commands, program types and attach types (uapi/linux/bpf.h; checked against the
// running kernel's BTF enums in btf.rs's tests).
const BPF_PROG_LOAD: u32 = 5;
const BPF_RAW_TRACEPOINT_OPEN: u32 = 17;
const BPF_LINK_CREATE: u32 = 28;
pub const PROG_KPROBE: u32 = 2;
pub const PROG_TRACING: u32 = 26;
pub const PROG_NETFILTER: u32 = 32;
pub const ATTACH_NONE: u32 = 0;
pub const ATTACH_TRACE_RAW_TP: u32 = 23;
pub const ATTACH_TRACE_FENTRY: u32 = 24;
pub const ATTACH_TRACE_KPROBE_MULTI: u32 = 42;
pub const ATTACH_NETFILTER: u32 = 45;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// A failed syscall: errno plus, for loads, the verifier log's last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysError {
    pub errno: i32,
    pub log: String,
}

impl SysError {
    fn last(log: String) -> Self {
        SysError {
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            log,
        }
    }
}

impl std::fmt::Display for SysError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (errno {})", errno_name(self.errno), self.errno)?;
        if !self.log.is_empty() {
            write!(f, ", verifier: {}", self.log)?;
        }
        Ok(())
    }
}

/// The symbolic name of the errnos these probes meet.
pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::E2BIG => "E2BIG",
        libc::ENODEV => "ENODEV",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESRCH => "ESRCH",
        libc::EBUSY => "EBUSY",
        libc::ENOSYS => "ENOSYS",
        524 => "ENOTSUPP",
        _ => "error",
    }
}

/// `union bpf_attr`, zero-filled (the kernel rejects non-zero unknown tail bytes).
struct Attr([u64; 18]);

impl Attr {
    fn new() -> Self {
        Attr([0; 18])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        let bytes = self.bytes_mut();
        bytes[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.bytes_mut()[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8; 144] {
        // SAFETY: [u64; 18] and [u8; 144] have the same size; u8 has no alignment needs.
        unsafe { &mut *(self.0.as_mut_ptr() as *mut [u8; 144]) }
    }
}

fn sys_bpf(cmd: u32, attr: &mut Attr) -> libc::c_long {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size passed.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// `r0 = ret; exit`.
fn program(ret: i32) -> [u64; 2] {
    let mov_r0_imm: u64 = 0xb7 | ((ret as u32 as u64) << 32); // BPF_ALU64|BPF_MOV|BPF_K, dst r0
    let exit: u64 = 0x95; // BPF_JMP|BPF_EXIT
    [mov_r0_imm, exit]
}

/// What to load: program type, expected attach type, BTF target (0 = none), return value.
#[derive(Debug, Clone, Copy)]
pub struct ProgSpec {
    pub prog_type: u32,
    pub attach_type: u32,
    pub attach_btf_id: u32,
    pub ret: i32,
}

/// BPF_PROG_LOAD of the trivial program.
pub fn prog_load(spec: ProgSpec) -> Result<OwnedFd, SysError> {
    let insns = program(spec.ret);
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = Attr::new();
    attr.u32(0, spec.prog_type)
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1) // log_level: get the verifier's reason on failure
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .u32(68, spec.attach_type)
        .u32(108, spec.attach_btf_id);
    let fd = sys_bpf(BPF_PROG_LOAD, &mut attr);
    if fd < 0 {
        return Err(SysError::last(last_log_line(&log)));
    }
    Ok(owned(fd))
}

fn last_log_line(log: &[u8]) -> String {
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// BPF_RAW_TRACEPOINT_OPEN with no name: attaches a tracing program (tp_btf, fentry) to
/// the target it was loaded for.
pub fn raw_tracepoint_open(prog: &OwnedFd) -> Result<OwnedFd, SysError> {
    let mut attr = Attr::new();
    attr.u64(0, 0).u32(8, prog.as_raw_fd() as u32);
    let fd = sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr);
    if fd < 0 {
        return Err(SysError::last(String::new()));
    }
    Ok(owned(fd))
}

/// BPF_LINK_CREATE for a netfilter hook (in the calling thread's netns).
pub fn netfilter_link(
    prog: RawFd,
    pf: u32,
    hooknum: u32,
    priority: i32,
) -> Result<OwnedFd, SysError> {
    let mut attr = Attr::new();
    attr.u32(0, prog as u32)
        .u32(8, ATTACH_NETFILTER)
        .u32(16, pf)
        .u32(20, hooknum)
        .u32(24, priority as u32);
    let fd = sys_bpf(BPF_LINK_CREATE, &mut attr);
    if fd < 0 {
        return Err(SysError::last(String::new()));
    }
    Ok(owned(fd))
}

/// BPF_LINK_CREATE kprobe_multi on one symbol.
pub fn kprobe_multi_link(prog: &OwnedFd, symbol: &str) -> Result<OwnedFd, SysError> {
    let sym = CString::new(symbol).expect("symbol without NUL");
    let syms = [sym.as_ptr()];
    let mut attr = Attr::new();
    attr.u32(0, prog.as_raw_fd() as u32)
        .u32(8, ATTACH_TRACE_KPROBE_MULTI)
        .u32(20, 1) // cnt
        .u64(24, syms.as_ptr() as u64);
    let fd = sys_bpf(BPF_LINK_CREATE, &mut attr);
    if fd < 0 {
        return Err(SysError::last(String::new()));
    }
    Ok(owned(fd))
}

/// The kprobe PMU's type id, when the kernel has kprobes (`None`: no such PMU).
pub fn kprobe_pmu_type() -> Option<u32> {
    std::fs::read_to_string("/sys/bus/event_source/devices/kprobe/type")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// perf_event_open a kprobe on `symbol` through the kprobe PMU and attach `prog` to it.
pub fn perf_kprobe_attach(pmu: u32, prog: &OwnedFd, symbol: &str) -> Result<OwnedFd, SysError> {
    let sym = CString::new(symbol).expect("symbol without NUL");
    let mut attr = [0u64; 16]; // struct perf_event_attr, PERF_ATTR_SIZE_VER7 = 128 bytes
    attr[0] = pmu as u64 | (128u64 << 32); // type, size
    attr[7] = sym.as_ptr() as u64; // config1 = kprobe_func (config = 0: kprobe, not kretprobe)
                                   // SAFETY: attr is a zeroed perf_event_attr of the stated size; pid -1 + cpu 0 = all tasks on cpu 0.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1,
            0,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(SysError::last(String::new()));
    }
    let event = owned(fd);
    // SAFETY: ioctl on the perf fd we own with a program fd argument.
    if unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) } < 0 {
        return Err(SysError::last(String::new()));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_encodes_mov_and_exit() {
        let p = program(1);
        assert_eq!(p[0].to_le_bytes(), [0xb7, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(p[1].to_le_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(program(-1)[0] >> 32, 0xffff_ffff);
    }

    #[test]
    fn attr_fields_land_at_their_offsets() {
        let mut a = Attr::new();
        a.u32(4, 7).u64(8, 0x1122_3344_5566_7788);
        assert_eq!(a.0[0], 7u64 << 32);
        assert_eq!(a.0[1], 0x1122_3344_5566_7788);
    }

    #[test]
    fn errors_print_name_and_number() {
        let e = SysError {
            errno: libc::EPERM,
            log: String::new(),
        };
        assert_eq!(e.to_string(), "EPERM (errno 1)");
        let e = SysError {
            errno: 22,
            log: "R0 !read_ok".into(),
        };
        assert_eq!(e.to_string(), "EINVAL (errno 22), verifier: R0 !read_ok");
    }

    #[test]
    fn verifier_log_last_line() {
        assert_eq!(last_log_line(b"0: (b7) r0 = 1\nR0 bad\n\0\0"), "R0 bad");
        assert_eq!(last_log_line(b"\0"), "");
    }
}
