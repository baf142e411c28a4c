//! What the capture needs from the running kernel's BTF — struct member offsets (nested
//! paths through anonymous unions/structs), struct sizes and enum names — on top of the
//! crate's vmlinux reader ([`crate::btf`]).

use std::collections::HashMap;
use std::path::Path;

use crate::btf::Kind;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("kernel BTF: {0}")]
    Read(#[from] crate::btf::BtfError),
    #[error("kernel BTF has no struct {name}")]
    NoStruct { name: String },
    #[error("kernel BTF: struct {ty} has no member path {path}")]
    NoMember { ty: String, path: String },
    #[error("kernel BTF has no enum {name}")]
    NoEnum { name: String },
}

/// The kernel's BTF, with lookups that fail with the name of what is missing.
pub struct Btf {
    inner: crate::btf::Btf,
}

impl Btf {
    /// The running kernel's BTF (/sys/kernel/btf/vmlinux).
    pub fn from_sys() -> Result<Self, BtfError> {
        Ok(Btf {
            inner: crate::btf::Btf::vmlinux()?,
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        Ok(Btf {
            inner: crate::btf::Btf::from_file(path)?,
        })
    }

    /// Byte offset of `path` ("ns.inum", "__sk_common.skc_state", "src.u.all") in `struct ty`.
    pub fn offset(&self, ty: &str, path: &str) -> Result<u32, BtfError> {
        if self.inner.find(Kind::Struct, ty).is_none() {
            return Err(BtfError::NoStruct {
                name: ty.to_string(),
            });
        }
        self.inner
            .member_offset(ty, path)
            .map(|(off, _)| off)
            .ok_or_else(|| BtfError::NoMember {
                ty: ty.to_string(),
                path: path.to_string(),
            })
    }

    /// Size in bytes of `struct name`.
    pub fn size_of(&self, name: &str) -> Result<u32, BtfError> {
        self.inner
            .find(Kind::Struct, name)
            .and_then(|id| self.inner.get(id))
            .map(|t| t.size_or_type)
            .ok_or_else(|| BtfError::NoStruct {
                name: name.to_string(),
            })
    }

    /// value → name of every enumerator of `enum name`.
    pub fn enum_values(&self, name: &str) -> Result<HashMap<i64, String>, BtfError> {
        let id = self
            .inner
            .find(Kind::Enum, name)
            .or_else(|| self.inner.find(Kind::Enum64, name))
            .ok_or_else(|| BtfError::NoEnum {
                name: name.to_string(),
            })?;
        let t = self.inner.get(id).ok_or_else(|| BtfError::NoEnum {
            name: name.to_string(),
        })?;
        Ok(t.values.iter().map(|(n, v)| (*v, n.clone())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against this machine's kernel (skipped loudly where there is no vmlinux BTF).
    #[test]
    fn resolves_the_capture_offsets_on_the_running_kernel() {
        let Ok(btf) = Btf::from_sys() else {
            eprintln!("SKIPPED resolves_the_capture_offsets_on_the_running_kernel: no /sys/kernel/btf/vmlinux");
            return;
        };
        let o = super::super::loader::kernel_offsets(&btf).expect("all offsets resolve");
        assert_eq!(o.state_hook, 0, "nf_hook_state starts with u8 hook");
        assert_eq!(o.state_pf, 1);
        assert!(o.ct_reply_tuple > o.ct_tuple);
        assert_eq!(o.have_creds, 1);
        // A kernel whose nf_bridge_info holds the input port's ifindex (>= 6.8, br_netfilter
        // built in; this machine's 6.18): the bridge ports are readable.
        if btf.offset("nf_bridge_info", "physinif").is_ok() {
            assert_eq!(o.have_bridge, 1, "bridge info offsets resolve");
            assert!(o.skb_extensions > 0 && o.net_dev_index_head > 0);
        }
        let reasons = btf.enum_values("skb_drop_reason").unwrap();
        assert!(reasons
            .values()
            .any(|n| n == "SKB_DROP_REASON_NETFILTER_DROP"));
        assert!(matches!(
            btf.offset("sk_buff", "no_such_member"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.offset("no_such_struct", "x"),
            Err(BtfError::NoStruct { .. })
        ));
    }
}
