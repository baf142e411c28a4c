//! BPF netfilter links (BPF_LINK_CREATE, attach type BPF_NETFILTER), created inside a network
//! namespace: the kernel registers the hook in the netns of the calling thread, so links for a
//! netns are made on a thread that entered it (trace_user::netns::run_in). Closing the fd
//! unregisters the hook.

use std::os::fd::{OwnedFd, RawFd};

use super::bpfsys::sys_bpf;

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_NETFILTER: u32 = 45;

/// union bpf_attr for BPF_LINK_CREATE with the netfilter part.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    pf: u32,
    hooknum: u32,
    priority: i32,
    nf_flags: u32,
    _rest: [u8; 32],
}

/// One requested hook registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookSpec {
    /// NFPROTO_IPV4 / NFPROTO_IPV6.
    pub pf: u8,
    /// NF_INET_*.
    pub hook: u8,
    pub priority: i32,
}

#[derive(Debug, thiserror::Error)]
#[error("BPF_LINK_CREATE netfilter pf={} hook={} priority={}: {source}", spec.pf, spec.hook, spec.priority)]
pub struct LinkError {
    pub spec: HookSpec,
    pub source: std::io::Error,
}

/// Link `prog_fd` at `spec` in the calling thread's network namespace.
pub fn create(prog_fd: RawFd, spec: HookSpec) -> Result<OwnedFd, LinkError> {
    let attr = LinkCreateAttr {
        prog_fd: prog_fd as u32,
        target_fd: 0,
        attach_type: BPF_NETFILTER,
        flags: 0,
        pf: spec.pf as u32,
        hooknum: spec.hook as u32,
        priority: spec.priority,
        nf_flags: 0,
        _rest: [0; 32],
    };
    sys_bpf(BPF_LINK_CREATE, &attr).map_err(|source| LinkError { spec, source })
}

#[cfg(test)]
mod tests {
    #[test]
    fn attr_layout() {
        assert_eq!(std::mem::offset_of!(super::LinkCreateAttr, pf), 16);
        assert_eq!(std::mem::offset_of!(super::LinkCreateAttr, priority), 24);
    }
}
