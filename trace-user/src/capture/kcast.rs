//! The netfilter probe's direct kernel-memory reads: rewrite its placeholder calls into calls
//! of the kfunc `bpf_rdonly_cast` (kernel >= 6.2; netfilter links need 6.4).
//!
//! The probe (trace-ebpf `mem::kcast`) emits `r2 = KCAST_TYPE_MAGIC ll; call
//! KCAST_CALL_MAGIC`. Here the immediate becomes the BTF id of `struct pt_regs` (an array of
//! unsigned longs the verifier checks the loads against) and the call a kfunc call
//! (`src_reg` = BPF_PSEUDO_KFUNC_CALL, `imm` = the kfunc's BTF id in vmlinux). The verifier
//! inlines bpf_rdonly_cast into a register move and turns loads through the result into
//! fault-safe loads: reading the packet's first bytes or a conntrack entry costs a few loads
//! instead of a bpf_probe_read_kernel call (~60 ns each on the development machine).

use aya_obj::generated::bpf_insn;
use trace_common::record::{KCAST_CALL_MAGIC, KCAST_TYPE_MAGIC};

use crate::btf::{Btf, Kind};

/// BPF_JMP | BPF_CALL.
const CALL: u8 = 0x85;
/// BPF_LD | BPF_IMM | BPF_DW.
const LD_IMM64: u8 = 0x18;
/// `src_reg` of a kfunc call.
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;

/// BTF ids the rewrite needs, from the running kernel's BTF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KcastIds {
    /// FUNC bpf_rdonly_cast.
    pub kfunc: u32,
    /// STRUCT pt_regs.
    pub pt_regs: u32,
}

impl KcastIds {
    pub fn from_btf(btf: &Btf) -> Result<Self, String> {
        let kfunc = btf
            .find(Kind::Func, "bpf_rdonly_cast")
            .ok_or("kernel BTF has no kfunc bpf_rdonly_cast (Linux >= 6.2)")?;
        let pt_regs = btf
            .find(Kind::Struct, "pt_regs")
            .ok_or("kernel BTF has no struct pt_regs")?;
        Ok(KcastIds { kfunc, pt_regs })
    }
}

/// [`patch`] with the running kernel's ids (reads /sys/kernel/btf/vmlinux). A kernel
/// without bpf_rdonly_cast (< 6.2) has no netfilter programs either (6.4): the probe is left
/// as it is (0 rewritten) and BPF_PROG_LOAD reports the missing program type, which is what
/// `doctor` and `capture` explain to the user.
pub fn patch_probe(insns: &mut [bpf_insn]) -> Result<usize, String> {
    let btf = Btf::vmlinux().map_err(|e| e.to_string())?;
    match KcastIds::from_btf(&btf) {
        Ok(ids) => patch(insns, ids),
        Err(_) if btf.find(Kind::Struct, "bpf_nf_ctx").is_none() => Ok(0),
        Err(e) => Err(e.to_string()),
    }
}

/// Rewrite every placeholder pair in `insns`; returns how many were rewritten. A placeholder
/// call without its type load (or the reverse) is an error: the verifier would reject the
/// program with a less useful message.
pub fn patch(insns: &mut [bpf_insn], ids: KcastIds) -> Result<usize, String> {
    let (lo, hi) = (
        KCAST_TYPE_MAGIC as u32 as i32,
        (KCAST_TYPE_MAGIC >> 32) as u32 as i32,
    );
    let mut types = 0;
    let mut calls = 0;
    for i in 0..insns.len() {
        let (code, imm) = (insns[i].code, insns[i].imm);
        if code == LD_IMM64
            && insns[i].src_reg() == 0
            && imm == lo
            && insns.get(i + 1).is_some_and(|n| n.imm == hi)
        {
            insns[i].imm = ids.pt_regs as i32;
            insns[i + 1].imm = 0;
            types += 1;
        } else if code == CALL && insns[i].src_reg() == 0 && imm == KCAST_CALL_MAGIC {
            insns[i].set_src_reg(BPF_PSEUDO_KFUNC_CALL);
            insns[i].imm = ids.kfunc as i32;
            insns[i].off = 0;
            calls += 1;
        }
    }
    if types != calls {
        return Err(format!(
            "eBPF probe: {calls} kcast call placeholders but {types} type placeholders"
        ));
    }
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, src: u8, imm: i32) -> bpf_insn {
        let mut i = bpf_insn {
            code,
            _bitfield_align_1: [],
            _bitfield_1: bpf_insn::new_bitfield_1(0, 0),
            off: 0,
            imm,
        };
        i.set_src_reg(src);
        i
    }

    #[test]
    fn rewrites_type_load_and_call_leaves_others() {
        let ids = KcastIds {
            kfunc: 1234,
            pt_regs: 77,
        };
        let mut p = vec![
            insn(LD_IMM64, 0, KCAST_TYPE_MAGIC as u32 as i32),
            insn(0, 0, (KCAST_TYPE_MAGIC >> 32) as i32),
            insn(CALL, 0, KCAST_CALL_MAGIC),
            // An ordinary helper call and a map load stay as they are.
            insn(CALL, 0, 113),
            insn(LD_IMM64, 1, 5),
            insn(0, 0, 0),
        ];
        assert_eq!(patch(&mut p, ids), Ok(1));
        assert_eq!((p[0].imm, p[1].imm), (77, 0));
        assert_eq!((p[2].src_reg(), p[2].imm), (BPF_PSEUDO_KFUNC_CALL, 1234));
        assert_eq!((p[3].src_reg(), p[3].imm), (0, 113));
        assert_eq!((p[4].src_reg(), p[4].imm), (1, 5));
    }

    #[test]
    fn unpaired_placeholder_is_an_error() {
        let ids = KcastIds {
            kfunc: 1,
            pt_regs: 2,
        };
        let mut p = vec![insn(CALL, 0, KCAST_CALL_MAGIC)];
        assert!(patch(&mut p, ids).is_err());
    }
}
