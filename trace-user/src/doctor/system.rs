//! Read-only facts about the machine: kernel, BTF, lockdown, capabilities, iptables
//! backends (which tables each holds in the root namespace — listed, never modified) and
//! nf_log settings.

use super::report::{BtfInfo, Caps, IptablesInfo, Kernel, Lockdown, NfLog};
use std::io::Read;
use std::path::Path;
use std::process::Command;

pub fn kernel() -> Kernel {
    // SAFETY: uname fills the zeroed struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    unsafe { libc::uname(&mut u) };
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Kernel {
        release: field(&u.release),
        version: field(&u.version),
        machine: field(&u.machine),
    }
}

/// Parses vmlinux BTF (returned for the probes) and summarises it.
pub fn btf() -> (BtfInfo, Option<crate::btf::Btf>) {
    let path = crate::btf::VMLINUX;
    let start = std::time::Instant::now();
    match crate::btf::Btf::vmlinux() {
        Ok(b) => {
            let ms = start.elapsed().as_secs_f64() * 1e3;
            (
                BtfInfo {
                    path: path.into(),
                    present: true,
                    types: Some(b.len()),
                    parse_ms: Some(ms),
                    error: None,
                },
                Some(b),
            )
        }
        Err(e) => {
            let present = Path::new(path).exists();
            (
                BtfInfo {
                    path: path.into(),
                    present,
                    types: None,
                    parse_ms: None,
                    error: Some(e.to_string()),
                },
                None,
            )
        }
    }
}

const LOCKDOWN: &str = "/sys/kernel/security/lockdown";

/// From securityfs when mounted; else from the kernel command line and build config.
pub fn lockdown() -> Lockdown {
    if let Ok(text) = std::fs::read_to_string(LOCKDOWN) {
        if let Some(mode) = parse_lockdown(&text) {
            return Lockdown {
                mode,
                source: LOCKDOWN.into(),
            };
        }
    }
    let why = format!("{LOCKDOWN} not readable (securityfs not mounted?)");
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(mode) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("lockdown="))
    {
        return Lockdown {
            mode: mode.into(),
            source: format!("{why}; kernel command line lockdown={mode}"),
        };
    }
    match forced_by_config() {
        Some((mode, opt)) => Lockdown {
            mode,
            source: format!("{why}; forced by kernel config {opt}=y (/proc/config.gz)"),
        },
        None => Lockdown {
            mode: "unknown".into(),
            source: why,
        },
    }
}

/// `none [integrity] confidentiality` → `integrity`.
pub fn parse_lockdown(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_string())
}

fn forced_by_config() -> Option<(String, String)> {
    let config = read_config_gz()?;
    ["INTEGRITY", "CONFIDENTIALITY", "NONE"]
        .iter()
        .find_map(|m| {
            let opt = format!("CONFIG_LOCK_DOWN_KERNEL_FORCE_{m}");
            config
                .lines()
                .any(|l| l == format!("{opt}=y"))
                .then(|| (m.to_lowercase(), opt))
        })
}

/// /proc/config.gz through `gzip -dc` (no decompressor dependency for one optional fact).
fn read_config_gz() -> Option<String> {
    let out = Command::new("gzip")
        .args(["-dc", "/proc/config.gz"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Effective capabilities from /proc/self/status.
pub fn caps() -> Caps {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    caps_from_status(&status)
}

pub fn caps_from_status(status: &str) -> Caps {
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| eff & (1 << bit) != 0;
    Caps {
        effective: format!("{eff:016x}"),
        net_admin: has(12),
        sys_admin: has(21),
        perfmon: has(38),
        bpf: has(39),
    }
}

/// What plain `iptables` is on this machine (the Debian alternative): `iptables -V`.
pub fn iptables_default() -> Option<String> {
    let out = Command::new("iptables").arg("-V").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Both iptables flavours: binary, version, and the tables each has in this namespace.
pub fn iptables() -> Vec<IptablesInfo> {
    vec![
        iptables_backend("legacy", legacy_tables()),
        iptables_backend("nft", nft_tables()),
    ]
}

fn iptables_backend(flavour: &str, tables: Result<Vec<String>, String>) -> IptablesInfo {
    let bin = format!("iptables-{flavour}");
    let version = Command::new(&bin)
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let (tables, tables_error) = match tables {
        Ok(t) => (t, None),
        Err(e) => (vec![], Some(e)),
    };
    IptablesInfo {
        backend: flavour.into(),
        binary: version.is_some().then_some(bin),
        version,
        tables,
        tables_error,
    }
}

/// x_tables tables instantiated in this namespace (the kernel's list: a pure read).
fn legacy_tables() -> Result<Vec<String>, String> {
    let path = "/proc/net/ip_tables_names";
    let mut text = String::new();
    match std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text)) {
        Ok(_) => Ok(text.lines().map(str::to_string).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(format!("{path}: {e}")),
    }
}

/// iptables-nft tables: the `*table` headers of `iptables-nft-save` (read-only listing).
fn nft_tables() -> Result<Vec<String>, String> {
    let out = Command::new("iptables-nft-save")
        .output()
        .map_err(|e| format!("iptables-nft-save: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "iptables-nft-save: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(save_tables(&String::from_utf8_lossy(&out.stdout)))
}

/// Table names of an iptables-save dump.
pub fn save_tables(save: &str) -> Vec<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix('*'))
        .map(str::to_string)
        .collect()
}

pub fn nf_log() -> NfLog {
    let all_netns = std::fs::read_to_string("/proc/sys/net/netfilter/nf_log_all_netns")
        .ok()
        .map(|s| s.trim().to_string());
    let loggers = std::fs::read_to_string("/proc/net/netfilter/nf_log")
        .map(|t| {
            t.lines()
                .filter(|l| !l.contains("NONE"))
                .map(|l| l.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    NfLog { all_netns, loggers }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_mode_is_the_bracketed_word() {
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality").as_deref(),
            Some("none")
        );
        assert_eq!(parse_lockdown("garbage"), None);
    }

    #[test]
    fn capabilities_from_status() {
        let c = caps_from_status("Name:\tx\nCapEff:\t000001fffeffffff\n");
        assert!(c.bpf && c.net_admin && c.sys_admin && c.perfmon);
        let c = caps_from_status("CapEff:\t0000000000001000\n");
        assert!(c.net_admin && !c.bpf && !c.sys_admin);
        assert!(!caps_from_status("").net_admin);
    }

    #[test]
    fn tables_of_a_save_dump() {
        let save = "# Generated\n*raw\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*filter\nCOMMIT\n";
        assert_eq!(save_tables(save), ["raw", "filter"]);
    }
}
