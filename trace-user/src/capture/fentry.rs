//! fentry/fexit programs loaded with the project's own BPF_PROG_LOAD: a function in a module
//! (ipt_do_table in ip_tables, nft_do_chain in nf_tables, nf_nat_inet_fn in nf_nat on Debian)
//! is named by a BTF id of the module's split BTF, which the kernel only resolves with
//! `attach_btf_obj_fd` = an fd of that module's BTF object — a field aya 0.14's `FEntry::load`
//! cannot set. The instructions come from the same object aya loaded, relocated against aya's
//! map fds with aya-obj (as capture::loader does for the netfilter probe); the program is
//! attached with BPF_RAW_TRACEPOINT_OPEN (a tracing link; closing the fd detaches).

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use aya::Ebpf;
use aya_obj::generated::bpf_insn;

use super::bpfsys::{load_with_log_on_failure, sys_bpf, ProgLoadHead, BPF_PROG_LOAD};
use super::loader::map_fd;
use super::modbtf;

const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_FENTRY: u32 = 24;
const BPF_TRACE_FEXIT: u32 = 25;

#[derive(Debug, thiserror::Error)]
pub enum FentryError {
    #[error("eBPF object: {0}")]
    Object(String),
    #[error("program {0} not in the eBPF object")]
    NoProgram(String),
    #[error(transparent)]
    Btf(#[from] modbtf::ModBtfError),
    #[error(
        "BPF_PROG_LOAD {prog} (fentry on {function}, BTF id {btf_id}{module}): {source}: {log}"
    )]
    Load {
        prog: String,
        function: String,
        btf_id: u32,
        module: String,
        source: std::io::Error,
        log: String,
    },
    #[error("attaching {prog} to {function}: {source}")]
    Attach {
        prog: String,
        function: String,
        source: std::io::Error,
    },
}

/// The object's programs with maps relocated to aya's fds and calls linked.
pub struct Programs {
    obj: aya_obj::Object,
    license: CString,
}

impl Programs {
    pub fn new(elf: &[u8], ebpf: &Ebpf) -> Result<Programs, FentryError> {
        let err = |e: &dyn std::fmt::Display| FentryError::Object(e.to_string());
        let mut obj = aya_obj::Object::parse(elf).map_err(|e| err(&e))?;
        let mut maps: Vec<(String, RawFd, aya_obj::Map)> = Vec::new();
        for (name, def) in &obj.maps {
            let map = ebpf
                .map(name)
                .ok_or_else(|| FentryError::Object(format!("aya created no map {name}")))?;
            maps.push((name.clone(), map_fd(map).map_err(|e| err(&e))?, def.clone()));
        }
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        obj.relocate_maps(
            maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
            &text_sections,
        )
        .map_err(|e| err(&e))?;
        obj.relocate_calls(&text_sections).map_err(|e| err(&e))?;
        let license = obj.license.clone();
        Ok(Programs { obj, license })
    }

    fn insns(&self, prog: &str) -> Result<&[bpf_insn], FentryError> {
        let p = self
            .obj
            .programs
            .get(prog)
            .ok_or_else(|| FentryError::NoProgram(prog.to_string()))?;
        let f = self
            .obj
            .functions
            .get(&(p.section_index, p.address))
            .ok_or_else(|| FentryError::NoProgram(prog.to_string()))?;
        Ok(&f.instructions)
    }

    /// Load `prog` as fentry (or fexit) on `function` (BTF id `btf_id`, in `module`'s BTF or
    /// vmlinux's) and attach it; the returned link fd keeps it attached.
    pub fn load_and_attach(
        &mut self,
        prog: &str,
        function: &str,
        btf_id: u32,
        module: Option<&str>,
        exit: bool,
    ) -> Result<OwnedFd, FentryError> {
        let obj_fd = module.map(modbtf::btf_object_fd).transpose()?;
        let insns = self.insns(prog)?.to_vec();
        let fd = prog_load(
            &insns,
            &self.license,
            prog,
            btf_id,
            obj_fd.as_ref().map(|f| f.as_raw_fd()),
            exit,
        )
        .map_err(|(source, log)| FentryError::Load {
            prog: prog.to_string(),
            function: function.to_string(),
            btf_id,
            module: module
                .map(|m| format!(" in module {m}"))
                .unwrap_or_default(),
            source,
            log,
        })?;
        let link = raw_tracepoint_open(&fd).map_err(|source| FentryError::Attach {
            prog: prog.to_string(),
            function: function.to_string(),
            source,
        })?;
        // The link holds the program; the program fd itself may go.
        Ok(link)
    }
}

/// union bpf_attr for BPF_PROG_LOAD up to fd_array (the rest zero).
#[repr(C)]
struct ProgLoadAttr {
    head: ProgLoadHead,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    core_relo_cnt: u32,
    fd_array: u64,
    _rest: [u8; 32],
}

fn prog_load(
    insns: &[bpf_insn],
    license: &CString,
    name: &str,
    btf_id: u32,
    obj_fd: Option<RawFd>,
    exit: bool,
) -> Result<OwnedFd, (std::io::Error, String)> {
    let expected_attach_type = if exit {
        BPF_TRACE_FEXIT
    } else {
        BPF_TRACE_FENTRY
    };
    load_with_log_on_failure(1 << 20, 20, |log| {
        let attr = ProgLoadAttr {
            head: ProgLoadHead::new(BPF_PROG_TYPE_TRACING, expected_attach_type, insns, license, name, log),
            prog_btf_fd: 0,
            func_info_rec_size: 0,
            func_info: 0,
            func_info_cnt: 0,
            line_info_rec_size: 0,
            line_info: 0,
            line_info_cnt: 0,
            attach_btf_id: btf_id,
            attach_btf_obj_fd: obj_fd.unwrap_or(0) as u32,
            core_relo_cnt: 0,
            fd_array: 0,
            _rest: [0; 32],
        };
        sys_bpf(BPF_PROG_LOAD, &attr)
    })
    .map_err(|(e, text)| {
        let text = if text.trim().is_empty() {
            "no verifier log: this kernel refuses tracing programs (lockdown, or no BPF trampolines)".to_string()
        } else {
            format!("verifier:\n{text}")
        };
        (e, text)
    })
}

/// BPF_RAW_TRACEPOINT_OPEN with no name: attaches a tracing program to its BTF target.
fn raw_tracepoint_open(prog: &OwnedFd) -> Result<OwnedFd, std::io::Error> {
    #[repr(C)]
    struct Attr {
        name: u64,
        prog_fd: u32,
        _pad: u32,
        cookie: u64,
    }
    sys_bpf(
        BPF_RAW_TRACEPOINT_OPEN,
        &Attr {
            name: 0,
            prog_fd: prog.as_raw_fd() as u32,
            _pad: 0,
            cookie: 0,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prog_load_attr_layout() {
        assert_eq!(
            std::mem::offset_of!(ProgLoadAttr, head.expected_attach_type),
            68
        );
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, attach_btf_id), 108);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, attach_btf_obj_fd), 112);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, fd_array), 120);
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 160);
    }
}
