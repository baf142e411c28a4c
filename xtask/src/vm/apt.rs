//! Debian packages for the VM matrix, fetched through a private apt configuration.
//!
//! The host's apt sources are never changed: every apt call gets its own source list
//! (bookworm, bookworm-backports, bookworm-security), its own package lists and its own archive
//! cache under `target/vm/apt`. Packages are only downloaded (`apt-get download`) and unpacked
//! with `dpkg -x` into `target/vm/pkgs/<package>` — nothing is installed on the host.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
";

/// Lists older than this are refreshed (a kernel ABI bump removes the old package).
const LISTS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// The private apt root.
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    pub fn new(cache: &Path) -> Result<Apt> {
        let dir = cache.join("apt");
        for d in [
            "lists/partial",
            "cache/archives/partial",
            "etc/sources.list.d",
            "debs",
        ] {
            std::fs::create_dir_all(dir.join(d))
                .with_context(|| format!("mkdir {}", dir.join(d).display()))?;
        }
        std::fs::write(dir.join("etc/sources.list"), SOURCES)?;
        Ok(Apt { dir })
    }

    /// `-o` options that point apt at the private sources, lists and cache.
    pub fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::sourcelist={d}/etc/sources.list"),
            format!("-oDir::Etc::sourceparts={d}/etc/sources.list.d"),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}/cache"),
            "-oAPT::Get::List-Cleanup=0".into(),
            "-oAPT::Sandbox::User=root".into(),
            "-qq".into(),
        ]
    }

    /// `apt-get update` into the private lists unless they are fresh.
    pub fn update(&self) -> Result<()> {
        let stamp = self.dir.join("lists/.updated");
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < LISTS_MAX_AGE));
        if fresh {
            return Ok(());
        }
        eprintln!(
            "vm: apt-get update (private lists in {})",
            self.dir.display()
        );
        run(Command::new("apt-get").args(self.options()).arg("update"))?;
        // apt-get update exits 0 when it could fetch nothing (no network: only warnings);
        // without every suite's package list, say so — and never stamp such lists fresh.
        let missing = self.missing_lists()?;
        if !missing.is_empty() {
            bail!(
                "apt-get update fetched no package list for {} (no network access to deb.debian.org?)",
                missing.join(", ")
            );
        }
        std::fs::write(stamp, b"")?;
        Ok(())
    }

    /// The suites of [`SOURCES`] without a `..._Packages*` list in the private lists.
    fn missing_lists(&self) -> Result<Vec<String>> {
        let names: Vec<String> = std::fs::read_dir(self.dir.join("lists"))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        Ok(SOURCES
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter(|suite| {
                !names.iter().any(|n| {
                    n.contains(&format!("_dists_{suite}_main_binary-")) && n.contains("_Packages")
                })
            })
            .map(String::from)
            .collect())
    }

    /// Package names known to the private lists that match `pattern` (an apt-cache regex).
    pub fn search(&self, pattern: &str) -> Result<Vec<String>> {
        let out = run(Command::new("apt-cache").args(self.options()).args([
            "search",
            "--names-only",
            pattern,
        ]))?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(" - ").next())
            .map(str::to_string)
            .collect())
    }

    /// Download `package` (once) and unpack it into `<cache>/pkgs/<package>`; returns that dir.
    pub fn unpack(&self, package: &str, pkgs: &Path) -> Result<PathBuf> {
        let dest = pkgs.join(package);
        let done = dest.join(".unpacked");
        if done.exists() {
            return Ok(dest);
        }
        let debs = self.dir.join("debs");
        let deb = match find_deb(&debs, package)? {
            Some(d) => d,
            None => {
                eprintln!("vm: apt-get download {package}");
                run(Command::new("apt-get")
                    .args(self.options())
                    .arg("download")
                    .arg(package)
                    .current_dir(&debs))?;
                find_deb(&debs, package)?
                    .with_context(|| format!("apt-get download {package} left no .deb"))?
            }
        };
        if dest.exists() {
            std::fs::remove_dir_all(&dest)?;
        }
        std::fs::create_dir_all(&dest)?;
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&dest))?;
        std::fs::write(done, b"")?;
        Ok(dest)
    }
}

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Run a command, fail with its stderr, return its stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sort Debian-style version-bearing names (numeric runs compared as numbers).
pub fn version_key(s: &str) -> Vec<(String, u64)> {
    let mut key = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_digit() {
            let mut n = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                n.push(d);
                chars.next();
            }
            key.push((std::mem::take(&mut text), n.parse().unwrap_or(u64::MAX)));
        } else {
            text.push(c);
            chars.next();
        }
    }
    key.push((text, 0));
    key
}

#[cfg(test)]
mod tests {
    use super::{version_key, Apt};

    #[test]
    fn lists_without_packages_are_missing() {
        let dir = std::env::temp_dir().join(format!("xtask-apt-test-{}", std::process::id()));
        let apt = Apt::new(&dir).unwrap();
        let lists = dir.join("apt/lists");
        // What a failed update leaves: release files at most.
        std::fs::write(
            lists.join("deb.debian.org_debian_dists_bookworm_InRelease"),
            "",
        )
        .unwrap();
        assert_eq!(
            apt.missing_lists().unwrap(),
            ["bookworm", "bookworm-backports", "bookworm-security"]
        );
        for suite in [
            "debian_dists_bookworm",
            "debian_dists_bookworm-backports",
            "debian-security_dists_bookworm-security",
        ] {
            let name = format!("deb.debian.org_{suite}_main_binary-amd64_Packages.lz4");
            std::fs::write(lists.join(name), "").unwrap();
        }
        assert!(apt.missing_lists().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn versions_sort_numerically() {
        let mut v = [
            "linux-image-6.12.9+deb12",
            "linux-image-6.12.117+deb12",
            "linux-image-6.12.113+deb12",
        ];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(v.last(), Some(&"linux-image-6.12.117+deb12"));
    }
}
