//! Just enough of a vmlinux BTF reader for the probes: byte offsets of struct members
//! (nested paths through anonymous unions/structs and arrays) and enum value names.
//!
//! (A small dedicated reader: trace_user::btf was not available when the capture backend
//! needed it; when it lands this can delegate to it.)

use std::collections::HashMap;
use std::path::Path;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not BTF or truncated at byte offset {offset}")]
    Malformed { path: String, offset: usize },
    #[error("{path}: unknown BTF kind {kind} at byte offset {offset}")]
    UnknownKind { path: String, kind: u32, offset: usize },
    #[error("kernel BTF has no struct {name}")]
    NoStruct { name: String },
    #[error("kernel BTF: struct {ty} has no member path {path}")]
    NoMember { ty: String, path: String },
    #[error("kernel BTF has no enum {name}")]
    NoEnum { name: String },
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    ty: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// struct or union
    Composite { name: String, size: u32, members: Vec<Member> },
    Enum { name: String, values: Vec<(String, i64)> },
    /// typedef/const/volatile/restrict/type_tag: follow to `ty`.
    Alias { ty: u32 },
    Array { elem: u32 },
    Other,
}

/// Parsed vmlinux BTF (only what offset and enum lookups need).
pub struct Btf {
    types: Vec<Type>,
    by_name: HashMap<String, Vec<u32>>,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_sys() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path)
            .map_err(|source| BtfError::Io { path: path.display().to_string(), source })?;
        Self::parse(&data, &path.display().to_string())
    }

    pub fn parse(data: &[u8], path: &str) -> Result<Self, BtfError> {
        let bad = |offset| BtfError::Malformed { path: path.to_string(), offset };
        let u32_at = |o: usize| -> Result<u32, BtfError> {
            data.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).ok_or(bad(o))
        };
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err(bad(0));
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let types_start = hdr_len + type_off;
        let strs = data.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or(bad(hdr_len + str_off))?;
        let name = |off: u32| -> String {
            let s = strs.get(off as usize..).unwrap_or(&[]);
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };
        let mut types = vec![Type::Other]; // id 0 = void
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        let mut o = types_start;
        let end = types_start + type_len;
        while o < end {
            let (name_off, info, size_or_type) = (u32_at(o)?, u32_at(o + 4)?, u32_at(o + 8)?);
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let body = o + 12;
            let (ty, body_len) = match kind {
                KIND_INT => (Type::Other, 4),
                KIND_PTR | KIND_FWD | KIND_FUNC | KIND_FLOAT => (Type::Other, 0),
                KIND_ARRAY => (Type::Array { elem: u32_at(body)? }, 12),
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = body + i * 12;
                        let off = u32_at(m + 8)?;
                        members.push(Member {
                            name: name(u32_at(m)?),
                            ty: u32_at(m + 4)?,
                            bit_offset: if kind_flag { off & 0x00ff_ffff } else { off },
                        });
                    }
                    (Type::Composite { name: name(name_off), size: size_or_type, members }, vlen * 12)
                }
                KIND_ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = body + i * 8;
                        values.push((name(u32_at(m)?), u32_at(m + 4)? as i32 as i64));
                    }
                    (Type::Enum { name: name(name_off), values }, vlen * 8)
                }
                KIND_ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = body + i * 12;
                        let v = (u32_at(m + 8)? as u64) << 32 | u32_at(m + 4)? as u64;
                        values.push((name(u32_at(m)?), v as i64));
                    }
                    (Type::Enum { name: name(name_off), values }, vlen * 12)
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    (Type::Alias { ty: size_or_type }, 0)
                }
                KIND_FUNC_PROTO => (Type::Other, vlen * 8),
                KIND_VAR | KIND_DECL_TAG => (Type::Other, 4),
                KIND_DATASEC => (Type::Other, vlen * 12),
                other => return Err(BtfError::UnknownKind { path: path.to_string(), kind: other, offset: o }),
            };
            if let Type::Composite { name, .. } | Type::Enum { name, .. } = &ty {
                if !name.is_empty() {
                    by_name.entry(name.clone()).or_default().push(types.len() as u32);
                }
            }
            types.push(ty);
            o = body + body_len;
        }
        Ok(Btf { types, by_name })
    }

    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Type::Alias { ty }) => id = *ty,
                Some(Type::Array { elem }) => id = *elem,
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `path` ("ns.inum", "tuplehash.tuple", "__sk_common.skc_state") inside
    /// `struct ty`. Arrays are entered at element 0; anonymous members are searched through.
    pub fn offset(&self, ty: &str, path: &str) -> Result<u32, BtfError> {
        let no_member = || BtfError::NoMember { ty: ty.to_string(), path: path.to_string() };
        let ids = self.by_name.get(ty).ok_or_else(|| BtfError::NoStruct { name: ty.to_string() })?;
        let mut last_err = no_member();
        for &id in ids {
            if !matches!(self.types[id as usize], Type::Composite { ref members, .. } if !members.is_empty()) {
                continue;
            }
            match self.walk(id, path) {
                Some(bits) => return Ok(bits / 8),
                None => last_err = no_member(),
            }
        }
        Err(last_err)
    }

    fn walk(&self, mut id: u32, path: &str) -> Option<u32> {
        let mut bits = 0;
        for part in path.split('.') {
            let (off, ty) = self.find_member(id, part, 0)?;
            bits += off;
            id = self.resolve(ty);
        }
        Some(bits)
    }

    /// (bit offset, member type) of `name` in composite `id`, looking inside anonymous members.
    fn find_member(&self, id: u32, name: &str, depth: u32) -> Option<(u32, u32)> {
        let Some(Type::Composite { members, .. }) = self.types.get(self.resolve(id) as usize) else {
            return None;
        };
        if let Some(m) = members.iter().find(|m| m.name == name) {
            return Some((m.bit_offset, m.ty));
        }
        if depth > 8 {
            return None;
        }
        members.iter().filter(|m| m.name.is_empty()).find_map(|m| {
            self.find_member(m.ty, name, depth + 1).map(|(off, ty)| (m.bit_offset + off, ty))
        })
    }

    /// Size in bytes of `struct name`.
    pub fn size_of(&self, name: &str) -> Result<u32, BtfError> {
        let ids = self.by_name.get(name).ok_or_else(|| BtfError::NoStruct { name: name.to_string() })?;
        ids.iter()
            .find_map(|&id| match &self.types[id as usize] {
                Type::Composite { size, members, .. } if !members.is_empty() => Some(*size),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct { name: name.to_string() })
    }

    /// value → name of every enumerator of `enum name`.
    pub fn enum_values(&self, name: &str) -> Result<HashMap<i64, String>, BtfError> {
        let ids = self.by_name.get(name).ok_or_else(|| BtfError::NoEnum { name: name.to_string() })?;
        for &id in ids {
            if let Type::Enum { values, .. } = &self.types[id as usize] {
                return Ok(values.iter().map(|(n, v)| (*v, n.clone())).collect());
            }
        }
        Err(BtfError::NoEnum { name: name.to_string() })
    }
}
