//! A minimal reader of the kernel's BTF (/sys/kernel/btf/vmlinux): type ids by kind and
//! name (functions for fentry's attach_btf_id, `btf_trace_*` typedefs for tp_btf), struct
//! member offsets through nested/anonymous members (for CO-RE-less offset passing), and enum
//! values. Little-endian BTF only (what every x86_64/arm64 kernel ships).
//!
//! Format: a 24-byte header, then a type section (records of 12 bytes + kind-specific data,
//! ids from 1; id 0 is void) and a string section (NUL-terminated, referenced by offset).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const MAGIC: u16 = 0xeb9f;

/// BTF type kinds (BTF_KIND_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Int = 1,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    fn from_raw(k: u32) -> Option<Kind> {
        use Kind::*;
        const ALL: [Kind; 19] = [
            Int, Ptr, Array, Struct, Union, Enum, Fwd, Typedef, Volatile, Const, Restrict, Func,
            FuncProto, Var, Datasec, Float, DeclTag, TypeTag, Enum64,
        ];
        ALL.get((k as usize).wrapping_sub(1)).copied()
    }

    /// Kinds that only qualify or rename another type.
    fn is_alias(self) -> bool {
        matches!(
            self,
            Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not BTF: magic {found:#06x} at offset 0 (want 0xeb9f, little-endian)")]
    BadMagic { found: u16 },
    #[error("BTF truncated: {what} at byte offset {offset}")]
    Truncated { what: &'static str, offset: usize },
    #[error("BTF type id {id} at byte offset {offset} has unknown kind {kind}")]
    UnknownKind { id: u32, kind: u32, offset: usize },
}

/// A struct/union member, or a function parameter (then `bit_offset` is 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub type_id: u32,
    pub bit_offset: u32,
}

/// One type record.
#[derive(Debug, Clone)]
pub struct Type {
    pub kind: Kind,
    pub name: String,
    /// Size in bytes (int, struct, union, enum, float, datasec) or referenced type id (others).
    pub size_or_type: u32,
    /// Struct/union members, function-prototype parameters.
    pub members: Vec<Member>,
    /// Enum/enum64 variants.
    pub values: Vec<(String, i64)>,
}

/// A parsed BTF blob, with a (kind, name) → ids index.
#[derive(Debug)]
pub struct Btf {
    /// Index 0 is a placeholder for void, so `types[id]` works.
    types: Vec<Type>,
    by_name: HashMap<(Kind, String), Vec<u32>>,
}

impl Btf {
    /// Reads /sys/kernel/btf/vmlinux.
    pub fn vmlinux() -> Result<Btf, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.into(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let r = Reader(data);
        let magic = r.u16(0, "magic")?;
        if magic != MAGIC {
            return Err(BtfError::BadMagic { found: magic });
        }
        let hdr_len = r.u32(4, "header")? as usize;
        let (type_off, type_len) = (r.u32(8, "header")? as usize, r.u32(12, "header")? as usize);
        let (str_off, str_len) = (r.u32(16, "header")? as usize, r.u32(20, "header")? as usize);
        let strings = r.slice(hdr_len + str_off, str_len, "string section")?;
        let types_sec = (hdr_len + type_off, type_len);
        r.slice(types_sec.0, types_sec.1, "type section")?;
        let types = parse_types(&r, types_sec.0, types_sec.0 + types_sec.1, strings)?;
        let mut by_name: HashMap<(Kind, String), Vec<u32>> = HashMap::new();
        for (id, t) in types.iter().enumerate().skip(1) {
            if !t.name.is_empty() {
                by_name
                    .entry((t.kind, t.name.clone()))
                    .or_default()
                    .push(id as u32);
            }
        }
        Ok(Btf { types, by_name })
    }

    /// Number of types (not counting void).
    pub fn len(&self) -> usize {
        self.types.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: u32) -> Option<&Type> {
        self.types.get(id as usize).filter(|_| id != 0)
    }

    /// The first type id of this kind and name (e.g. `(Kind::Func, "nf_hook_slow")`).
    pub fn find(&self, kind: Kind, name: &str) -> Option<u32> {
        self.by_name
            .get(&(kind, name.to_string()))
            .and_then(|ids| ids.first().copied())
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying type id.
    pub fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.get(id) {
                Some(t) if t.kind.is_alias() => id = t.size_or_type,
                _ => break,
            }
        }
        id
    }

    /// Byte offset and type id of a member path like `"ct.status"` or `"__sk_common.skc_net"`
    /// inside struct `outer`, looking through anonymous struct/union members and type aliases.
    /// Bitfield members are not supported (None).
    pub fn member_offset(&self, outer: &str, path: &str) -> Option<(u32, u32)> {
        let mut id = self
            .find(Kind::Struct, outer)
            .or_else(|| self.find(Kind::Union, outer))?;
        let mut bits = 0;
        for part in path.split('.') {
            let (off, ty) = self.find_member(self.resolve(id), part)?;
            bits += off;
            id = ty;
        }
        (bits % 8 == 0).then_some((bits / 8, id))
    }

    /// Bit offset and type of `name` in the struct/union `id`, searching anonymous members.
    fn find_member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let t = self.get(id)?;
        if !matches!(t.kind, Kind::Struct | Kind::Union) {
            return None;
        }
        // kind_flag structs encode bitfield size in the high 8 bits; names we look up are
        // plain members (offset in the low 24 bits is then the bit offset).
        for m in &t.members {
            if m.name == name {
                return Some((m.bit_offset & 0x00ff_ffff, m.type_id));
            }
            if m.name.is_empty() {
                if let Some((off, ty)) = self.find_member(self.resolve(m.type_id), name) {
                    return Some(((m.bit_offset & 0x00ff_ffff) + off, ty));
                }
            }
        }
        None
    }

    /// The value of `variant` in enum `name` (e.g. `("bpf_attach_type", "BPF_NETFILTER")`).
    /// An empty `name` searches anonymous enums too.
    pub fn enum_value(&self, name: &str, variant: &str) -> Option<i64> {
        let matches = |t: &Type| {
            matches!(t.kind, Kind::Enum | Kind::Enum64) && (name.is_empty() || t.name == name)
        };
        self.types
            .iter()
            .skip(1)
            .filter(|t| matches(t))
            .flat_map(|t| &t.values)
            .find(|(n, _)| n == variant)
            .map(|(_, v)| *v)
    }
}

/// Bounds-checked little-endian reads.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn slice(&self, at: usize, len: usize, what: &'static str) -> Result<&'a [u8], BtfError> {
        at.checked_add(len)
            .and_then(|end| self.0.get(at..end))
            .ok_or(BtfError::Truncated { what, offset: at })
    }
    fn u32(&self, at: usize, what: &'static str) -> Result<u32, BtfError> {
        Ok(u32::from_le_bytes(
            self.slice(at, 4, what)?.try_into().unwrap(),
        ))
    }
    fn u16(&self, at: usize, what: &'static str) -> Result<u16, BtfError> {
        Ok(u16::from_le_bytes(
            self.slice(at, 2, what)?.try_into().unwrap(),
        ))
    }
}

fn string_at(strings: &[u8], off: u32) -> String {
    let tail = strings.get(off as usize..).unwrap_or_default();
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
    String::from_utf8_lossy(&tail[..end]).into_owned()
}

fn parse_types(
    r: &Reader,
    mut at: usize,
    end: usize,
    strings: &[u8],
) -> Result<Vec<Type>, BtfError> {
    let void = Type {
        kind: Kind::Int,
        name: String::new(),
        size_or_type: 0,
        members: vec![],
        values: vec![],
    };
    let mut types = vec![void];
    while at < end {
        let id = types.len() as u32;
        let (t, next) = parse_type(r, at, id, strings)?;
        types.push(t);
        at = next;
    }
    Ok(types)
}

/// Parses the type record at `at`; returns it and the offset of the next record.
fn parse_type(r: &Reader, at: usize, id: u32, strings: &[u8]) -> Result<(Type, usize), BtfError> {
    let name = string_at(strings, r.u32(at, "type name")?);
    let info = r.u32(at + 4, "type info")?;
    let size_or_type = r.u32(at + 8, "type size")?;
    let raw_kind = (info >> 24) & 0x1f;
    let kind = Kind::from_raw(raw_kind).ok_or(BtfError::UnknownKind {
        id,
        kind: raw_kind,
        offset: at,
    })?;
    let vlen = (info & 0xffff) as usize;
    let body = at + 12;
    let mut t = Type {
        kind,
        name,
        size_or_type,
        members: vec![],
        values: vec![],
    };
    let next = match kind {
        Kind::Int | Kind::Var | Kind::DeclTag => body + 4,
        Kind::Array => body + 12,
        Kind::Struct | Kind::Union => {
            t.members = (0..vlen)
                .map(|i| member(r, body + 12 * i, strings, true))
                .collect::<Result<_, _>>()?;
            body + 12 * vlen
        }
        Kind::FuncProto => {
            t.members = (0..vlen)
                .map(|i| member(r, body + 8 * i, strings, false))
                .collect::<Result<_, _>>()?;
            body + 8 * vlen
        }
        Kind::Enum => {
            t.values = (0..vlen)
                .map(|i| enum32(r, body + 8 * i, strings))
                .collect::<Result<_, _>>()?;
            body + 8 * vlen
        }
        Kind::Enum64 => {
            t.values = (0..vlen)
                .map(|i| enum64(r, body + 12 * i, strings))
                .collect::<Result<_, _>>()?;
            body + 12 * vlen
        }
        Kind::Datasec => body + 12 * vlen,
        _ => body,
    };
    Ok((t, next))
}

fn member(r: &Reader, at: usize, strings: &[u8], with_offset: bool) -> Result<Member, BtfError> {
    Ok(Member {
        name: string_at(strings, r.u32(at, "member")?),
        type_id: r.u32(at + 4, "member")?,
        bit_offset: if with_offset {
            r.u32(at + 8, "member")?
        } else {
            0
        },
    })
}

fn enum32(r: &Reader, at: usize, strings: &[u8]) -> Result<(String, i64), BtfError> {
    Ok((
        string_at(strings, r.u32(at, "enum")?),
        r.u32(at + 4, "enum")? as i32 as i64,
    ))
}

fn enum64(r: &Reader, at: usize, strings: &[u8]) -> Result<(String, i64), BtfError> {
    let lo = r.u32(at + 4, "enum64")? as u64;
    let hi = r.u32(at + 8, "enum64")? as u64;
    Ok((
        string_at(strings, r.u32(at, "enum64")?),
        ((hi << 32) | lo) as i64,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    // Skips go straight to stderr: the harness hides eprintln! of passing tests.
    use std::io::Write;

    /// Builds a little BTF blob: types are (name, kind, vlen, size_or_type, extra words).
    pub(crate) struct Builder {
        strings: Vec<u8>,
        types: Vec<u8>,
    }

    impl Builder {
        pub(crate) fn new() -> Self {
            Builder {
                strings: vec![0],
                types: vec![],
            }
        }
        pub(crate) fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        pub(crate) fn ty(
            &mut self,
            name: &str,
            kind: Kind,
            vlen: u32,
            size_or_type: u32,
            extra: &[u32],
        ) {
            let n = self.s(name);
            for w in [n, ((kind as u32) << 24) | vlen, size_or_type]
                .iter()
                .chain(extra)
            {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }
        pub(crate) fn build(self) -> Vec<u8> {
            let mut out = vec![];
            let words = [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ];
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in words {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend(self.types);
            out.extend(self.strings);
            out
        }
    }

    /// 1 int, 2 struct inner{a@0,b@32}, 3 struct outer{x@0, anon union@64 {inner@0}},
    /// 4 anon union, 5 typedef inner_t, 6 func_proto(int p), 7 func nf_hook_slow,
    /// 8 enum e {A=1,B=-1}, 9 typedef btf_trace_kfree_skb, 10 const -> 5
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        b.ty("int", Kind::Int, 0, 4, &[32]);
        let (a, bb) = (b.s("a"), b.s("b"));
        b.ty("inner", Kind::Struct, 2, 8, &[a, 1, 0, bb, 1, 32]);
        let (x, inn) = (b.s("x"), b.s("inn"));
        b.ty("outer", Kind::Struct, 2, 16, &[x, 1, 0, 0, 4, 64]);
        b.ty("", Kind::Union, 1, 8, &[inn, 10, 0]);
        b.ty("inner_t", Kind::Typedef, 0, 2, &[]);
        let p = b.s("p");
        b.ty("", Kind::FuncProto, 1, 1, &[p, 1]);
        b.ty("nf_hook_slow", Kind::Func, 1, 6, &[]);
        let (va, vb) = (b.s("A"), b.s("B"));
        b.ty("e", Kind::Enum, 2, 4, &[va, 1, vb, u32::MAX]);
        b.ty("btf_trace_kfree_skb", Kind::Typedef, 0, 6, &[]);
        b.ty("", Kind::Const, 0, 5, &[]);
        b.build()
    }

    #[test]
    fn finds_types_by_kind_and_name() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.len(), 10);
        assert_eq!(btf.find(Kind::Func, "nf_hook_slow"), Some(7));
        assert_eq!(btf.find(Kind::Typedef, "btf_trace_kfree_skb"), Some(9));
        assert_eq!(btf.find(Kind::Struct, "nf_hook_slow"), None);
        assert_eq!(btf.get(6).unwrap().members[0].name, "p");
    }

    #[test]
    fn member_offsets_go_through_anonymous_unions_and_aliases() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "x"), Some((0, 1)));
        // inn (const inner_t -> inner) at bit 64 via the anonymous union, then b at bit 32
        assert_eq!(btf.member_offset("outer", "inn.b"), Some((12, 1)));
        assert_eq!(btf.member_offset("outer", "inn.zz"), None);
        assert_eq!(btf.resolve(10), 2);
    }

    #[test]
    fn enum_values_are_signed() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.enum_value("e", "A"), Some(1));
        assert_eq!(btf.enum_value("e", "B"), Some(-1));
        assert_eq!(btf.enum_value("", "B"), Some(-1));
    }

    #[test]
    fn errors_name_the_offset() {
        let mut blob = sample();
        blob[0] = 0;
        assert!(matches!(Btf::parse(&blob), Err(BtfError::BadMagic { .. })));
        let blob = sample();
        let err = Btf::parse(&blob[..40]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut b = Builder::new();
        b.ty("x", Kind::Int, 0, 4, &[32]);
        let mut blob = b.build();
        blob[24 + 7] = 0x1f; // kind 31
        assert!(matches!(
            Btf::parse(&blob),
            Err(BtfError::UnknownKind {
                id: 1,
                kind: 31,
                offset: 24
            })
        ));
    }

    /// Against the running kernel's BTF, when readable: the constants doctor relies on.
    #[test]
    fn vmlinux_has_what_doctor_needs() {
        let Ok(btf) = Btf::vmlinux() else {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: vmlinux_has_what_doctor_needs: {VMLINUX} not readable"
            );
            return;
        };
        assert!(btf.find(Kind::Func, "nf_hook_slow").is_some());
        assert!(btf.find(Kind::Typedef, "btf_trace_kfree_skb").is_some());
        assert_eq!(
            btf.enum_value("bpf_prog_type", "BPF_PROG_TYPE_NETFILTER"),
            Some(32)
        );
        assert_eq!(btf.enum_value("bpf_attach_type", "BPF_NETFILTER"), Some(45));
        assert_eq!(
            btf.enum_value("bpf_attach_type", "BPF_TRACE_KPROBE_MULTI"),
            Some(42)
        );
        assert_eq!(
            btf.enum_value("bpf_attach_type", "BPF_TRACE_FENTRY"),
            Some(24)
        );
        assert_eq!(
            btf.enum_value("bpf_attach_type", "BPF_TRACE_RAW_TP"),
            Some(23)
        );
        assert_eq!(btf.member_offset("bpf_nf_ctx", "skb").map(|m| m.0), Some(8));
    }
}
