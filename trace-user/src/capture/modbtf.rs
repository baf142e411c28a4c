//! Kernel BTF including split module BTF (/sys/kernel/btf/<module>), for the fentry and kprobe
//! backends: on modular kernels (Debian) ip_tables, nf_tables and nf_nat carry their types and
//! functions in their own BTF, whose type ids continue after vmlinux's and whose string offsets
//! continue after vmlinux's string section. This module reads both as one id space and answers
//! what the loader needs: a function's BTF id and parameter names, struct member offsets, and
//! the kernel BTF *object* fd of a module (BPF_PROG_LOAD's attach_btf_obj_fd for fentry).

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

const BTF_MAGIC: u16 = 0xeb9f;
const SYS_BTF: &str = "/sys/kernel/btf";

#[derive(Debug, thiserror::Error)]
pub enum ModBtfError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: malformed BTF at byte offset {offset}")]
    Malformed { path: PathBuf, offset: usize },
    #[error("{path}: unknown BTF kind {kind} at byte offset {offset}")]
    UnknownKind {
        path: PathBuf,
        kind: u32,
        offset: usize,
    },
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF struct {ty} has no member {path}")]
    NoMember { ty: String, path: String },
    #[error("no kernel BTF object named {0} (module not loaded?)")]
    NoObject(String),
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
enum Ty {
    Composite {
        members: Vec<(String, u32, u32)>,
    },
    /// typedef/const/volatile/restrict/type tag → target.
    Alias(u32),
    Array(u32),
    Func {
        proto: u32,
    },
    Proto {
        params: Vec<String>,
    },
    Other,
}

/// vmlinux BTF, optionally with modules' split BTF appended (each split parsed on the base).
pub struct KernelBtf {
    types: Vec<Ty>,
    /// name → ids (composites and functions).
    names: HashMap<String, Vec<u32>>,
    /// vmlinux's raw strings (split BTF string offsets continue after them).
    base_strings: Vec<u8>,
    base_types: usize,
    /// For every function id: the BTF object it is in (None = vmlinux).
    func_module: HashMap<u32, String>,
}

impl KernelBtf {
    /// The running kernel's vmlinux BTF.
    pub fn vmlinux() -> Result<KernelBtf, ModBtfError> {
        KernelBtf::vmlinux_at(Path::new(SYS_BTF))
    }

    fn vmlinux_at(dir: &Path) -> Result<KernelBtf, ModBtfError> {
        let path = dir.join("vmlinux");
        let data = std::fs::read(&path).map_err(|source| ModBtfError::Io {
            path: path.clone(),
            source,
        })?;
        let mut k = KernelBtf {
            types: vec![Ty::Other],
            names: HashMap::new(),
            base_strings: Vec::new(),
            base_types: 0,
            func_module: HashMap::new(),
        };
        let strings = k.parse(&data, &path, None)?;
        k.base_strings = strings;
        k.base_types = k.types.len();
        Ok(k)
    }

    /// vmlinux + the split BTF of `module` (/sys/kernel/btf/<module>). Split ids of different
    /// modules overlap (each continues after vmlinux), so one module per value; None when the
    /// module has no BTF (not loaded, or built in).
    pub fn with_module(&self, module: &str) -> Result<Option<KernelBtf>, ModBtfError> {
        let path = Path::new(SYS_BTF).join(module);
        if !path.exists() {
            return Ok(None);
        }
        let data = std::fs::read(&path).map_err(|source| ModBtfError::Io {
            path: path.clone(),
            source,
        })?;
        let mut k = KernelBtf {
            types: self.types[..self.base_types].to_vec(),
            names: HashMap::new(),
            base_strings: self.base_strings.clone(),
            base_types: self.base_types,
            func_module: HashMap::new(),
        };
        for (n, ids) in &self.names {
            let base: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|i| (*i as usize) < self.base_types)
                .collect();
            if !base.is_empty() {
                k.names.insert(n.clone(), base);
            }
        }
        k.parse(&data, &path, Some(module))?;
        Ok(Some(k))
    }

    /// Parse one BTF blob onto `self.types`; returns its string section.
    fn parse(
        &mut self,
        data: &[u8],
        path: &Path,
        module: Option<&str>,
    ) -> Result<Vec<u8>, ModBtfError> {
        let bad = |offset| ModBtfError::Malformed {
            path: path.to_path_buf(),
            offset,
        };
        let u32_at = |o: usize| -> Result<u32, ModBtfError> {
            data.get(o..o + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                .ok_or(bad(o))
        };
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err(bad(0));
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strs = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(bad(hdr_len + str_off))?
            .to_vec();
        let split = module.is_some();
        let base_len = self.base_strings.len() as u32;
        let name = |off: u32| -> String {
            let (s, off) = if split && off >= base_len {
                (&strs[..], (off - base_len) as usize)
            } else if split {
                (&self.base_strings[..], off as usize)
            } else {
                (&strs[..], off as usize)
            };
            let s = s.get(off..).unwrap_or(&[]);
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };
        let mut new_types = Vec::new();
        let mut new_names: Vec<(String, u32)> = Vec::new();
        let first_id = self.types.len() as u32;
        let mut o = hdr_len + type_off;
        let end = o + type_len;
        while o < end {
            let (name_off, info, size_or_type) = (u32_at(o)?, u32_at(o + 4)?, u32_at(o + 8)?);
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let body = o + 12;
            let id = first_id + new_types.len() as u32;
            let (ty, body_len) = match kind {
                1 => (Ty::Other, 4),                 // INT
                2 | 7 | 16 => (Ty::Other, 0),        // PTR, FWD, FLOAT
                3 => (Ty::Array(u32_at(body)?), 12), // ARRAY
                4 | 5 => {
                    // STRUCT, UNION
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = body + i * 12;
                        let off = u32_at(m + 8)?;
                        let bits = if kind_flag { off & 0x00ff_ffff } else { off };
                        members.push((name(u32_at(m)?), u32_at(m + 4)?, bits));
                    }
                    let n = name(name_off);
                    if !n.is_empty() {
                        new_names.push((n, id));
                    }
                    (Ty::Composite { members }, vlen * 12)
                }
                6 => (Ty::Other, vlen * 8),   // ENUM
                19 => (Ty::Other, vlen * 12), // ENUM64
                8 | 9 | 10 | 11 | 18 => (Ty::Alias(size_or_type), 0), // TYPEDEF VOLATILE CONST RESTRICT TYPE_TAG
                12 => {
                    // FUNC
                    new_names.push((name(name_off), id));
                    (
                        Ty::Func {
                            proto: size_or_type,
                        },
                        0,
                    )
                }
                13 => {
                    // FUNC_PROTO
                    let mut params = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        params.push(name(u32_at(body + i * 8)?));
                    }
                    (Ty::Proto { params }, vlen * 8)
                }
                14 | 17 => (Ty::Other, 4),    // VAR, DECL_TAG
                15 => (Ty::Other, vlen * 12), // DATASEC
                other => {
                    return Err(ModBtfError::UnknownKind {
                        path: path.to_path_buf(),
                        kind: other,
                        offset: o,
                    })
                }
            };
            new_types.push(ty);
            o = body + body_len;
        }
        for (n, id) in new_names {
            if matches!(new_types[(id - first_id) as usize], Ty::Func { .. }) {
                if let Some(m) = module {
                    self.func_module.insert(id, m.to_string());
                }
            }
            self.names.entry(n).or_default().push(id);
        }
        self.types.extend(new_types);
        Ok(strs)
    }

    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Ty::Alias(t)) | Some(Ty::Array(t)) => id = *t,
                _ => break,
            }
        }
        id
    }

    /// The BTF id of function `name` and the module whose BTF holds it (None: vmlinux).
    pub fn func(&self, name: &str) -> Option<(u32, Option<String>)> {
        let id = *self
            .names
            .get(name)?
            .iter()
            .find(|id| matches!(self.types[**id as usize], Ty::Func { .. }))?;
        Some((id, self.func_module.get(&id).cloned()))
    }

    /// Parameter names of function `name`.
    pub fn func_params(&self, name: &str) -> Option<Vec<String>> {
        let (id, _) = self.func(name)?;
        let Ty::Func { proto } = &self.types[id as usize] else {
            return None;
        };
        match self.types.get(*proto as usize)? {
            Ty::Proto { params } => Some(params.clone()),
            _ => None,
        }
    }

    /// Byte offset of the dotted member `path` in struct `ty` (anonymous members searched,
    /// arrays entered at element 0).
    pub fn offset(&self, ty: &str, path: &str) -> Result<u32, ModBtfError> {
        let ids = self
            .names
            .get(ty)
            .ok_or_else(|| ModBtfError::NoStruct(ty.to_string()))?;
        for &id in ids {
            if !matches!(self.types[id as usize], Ty::Composite { .. }) {
                continue;
            }
            if let Some(bits) = self.walk(id, path) {
                return Ok(bits / 8);
            }
        }
        Err(ModBtfError::NoMember {
            ty: ty.to_string(),
            path: path.to_string(),
        })
    }

    fn walk(&self, id: u32, path: &str) -> Option<u32> {
        let mut cur = id;
        let mut bits = 0;
        for part in path.split('.') {
            let (off, ty) = self.member(cur, part, 0)?;
            bits += off;
            cur = self.resolve(ty);
        }
        Some(bits)
    }

    /// (bit offset, type) of member `name` of composite `id`, looking into anonymous members.
    fn member(&self, id: u32, name: &str, depth: u32) -> Option<(u32, u32)> {
        let Ty::Composite { members } = self.types.get(self.resolve(id) as usize)? else {
            return None;
        };
        for (n, ty, off) in members {
            if n == name {
                return Some((*off, *ty));
            }
        }
        if depth > 8 {
            return None;
        }
        for (n, ty, off) in members {
            if n.is_empty() {
                if let Some((o, t)) = self.member(*ty, name, depth + 1) {
                    return Some((off + o, t));
                }
            }
        }
        None
    }
}

/// An fd for the kernel BTF object named `name` ("nf_tables", ...): walks BTF ids with
/// BPF_BTF_GET_NEXT_ID and reads each object's name with BPF_OBJ_GET_INFO_BY_FD.
pub fn btf_object_fd(name: &str) -> Result<OwnedFd, ModBtfError> {
    let mut id = 0u32;
    loop {
        let mut attr = [0u32; 4];
        attr[0] = id;
        if bpf(BPF_BTF_GET_NEXT_ID, &mut attr).is_err() {
            return Err(ModBtfError::NoObject(name.to_string()));
        }
        id = attr[1];
        let mut attr = [0u32; 4];
        attr[0] = id;
        let Ok(fd) = bpf(BPF_BTF_GET_FD_BY_ID, &mut attr) else {
            continue;
        };
        // SAFETY: a fresh fd owned by us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if btf_name(&fd).as_deref() == Some(name) {
            return Ok(fd);
        }
    }
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_BTF_GET_NEXT_ID: libc::c_long = 23;

/// struct bpf_btf_info.
#[repr(C)]
#[derive(Default)]
struct BtfInfo {
    btf: u64,
    btf_size: u32,
    id: u32,
    name: u64,
    name_len: u32,
    kernel_btf: u32,
}

fn btf_name(fd: &OwnedFd) -> Option<String> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 64];
    let mut info = BtfInfo {
        name: buf.as_mut_ptr() as u64,
        name_len: buf.len() as u32,
        ..Default::default()
    };
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<BtfInfo>() as u32,
        info: &mut info as *mut BtfInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).ok()?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> Result<RawFd, std::io::Error> {
    // SAFETY: attr is a valid, writable bpf_attr prefix for `cmd` for the call's duration.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as RawFd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the running kernel (all built in here): nf_hook_slow and the table functions are
    /// in vmlinux, ipt_do_table takes (priv, skb, state), offsets resolve.
    #[test]
    fn reads_running_kernel_btf() {
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            eprintln!("SKIPPED reads_running_kernel_btf: no /sys/kernel/btf/vmlinux");
            return;
        }
        let k = KernelBtf::vmlinux().unwrap();
        let (id, module) = k.func("nf_hook_slow").expect("nf_hook_slow in BTF");
        assert!(id > 0 && module.is_none());
        assert!(k.offset("nf_hook_state", "hook").is_ok());
        assert_eq!(
            k.offset("net", "ns.inum").ok(),
            crate::capture::btf::Btf::from_sys()
                .unwrap()
                .offset("net", "ns.inum")
                .ok()
        );
        if let Some(p) = k.func_params("ipt_do_table") {
            assert_eq!(p.first().map(String::as_str), Some("priv"), "{p:?}");
        }
    }
}
