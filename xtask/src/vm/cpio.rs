//! A minimal initramfs image: an uncompressed `newc` cpio archive written directly (no cpio
//! tool, no root-owned staging tree: device nodes are archive entries, not files on the host).

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One archive entry's content.
#[derive(Debug, Clone)]
pub enum Node {
    Dir,
    /// File content from the host (copied at write time) with this mode.
    HostFile(PathBuf, u32),
    Bytes(Vec<u8>, u32),
    Symlink(String),
    CharDev(u32, u32),
}

/// The archive being built: guest path (no leading '/') → node. Parent directories are
/// added automatically.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

impl Archive {
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    pub fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.entries
                .entry(p.to_string_lossy().into_owned())
                .or_insert(Node::Dir);
            parent = p.parent();
        }
        self.entries.insert(path, node);
    }

    /// Write the archive; parents sort before children in the BTreeMap order of paths.
    pub fn write(&self, out: &Path) -> Result<u64> {
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?,
        );
        let mut total = 0u64;
        for (ino, (name, node)) in self.entries.iter().enumerate() {
            let (mode, data, rdev) = match node {
                Node::Dir => (0o040755, Vec::new(), (0, 0)),
                Node::HostFile(src, mode) => (
                    0o100000 | mode,
                    std::fs::read(src).with_context(|| format!("read {}", src.display()))?,
                    (0, 0),
                ),
                Node::Bytes(b, mode) => (0o100000 | mode, b.clone(), (0, 0)),
                Node::Symlink(t) => (0o120777, t.as_bytes().to_vec(), (0, 0)),
                Node::CharDev(ma, mi) => (0o020600, Vec::new(), (*ma, *mi)),
            };
            total += data.len() as u64;
            entry(&mut w, ino as u32 + 1, name, mode, &data, rdev)?;
        }
        entry(&mut w, 0, "TRAILER!!!", 0, &[], (0, 0))?;
        w.flush()?;
        Ok(total)
    }
}

fn entry(
    w: &mut impl Write,
    ino: u32,
    name: &str,
    mode: u32,
    data: &[u8],
    rdev: (u32, u32),
) -> Result<()> {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    let mut hdr = String::from("070701");
    for f in fields {
        hdr.push_str(&format!("{f:08x}"));
    }
    w.write_all(hdr.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, 110 + name.len() + 1)?;
    w.write_all(data)?;
    pad(w, data.len())?;
    Ok(())
}

fn pad(w: &mut impl Write, len: usize) -> Result<()> {
    let n = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..n])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_headers_are_aligned_and_parents_exist() {
        let mut a = Archive::default();
        a.add("/bin/sh", Node::Symlink("dash".into()));
        a.add("/dev/console", Node::CharDev(5, 1));
        assert!(a.contains("bin") && a.contains("dev"));
        let out = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        a.write(&out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("bin/sh\0") && text.contains("TRAILER!!!\0"));
    }
}
