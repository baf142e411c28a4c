//! What a lab consists of, persisted as JSON under /run/iptrace so `iptrace lab
//! status|run|down` work from later invocations.

use super::{topology::NodeSysctls, topology::NsNames, IptablesBackend, LabError, Result};
use crate::netns;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where state files live (tmpfs: a reboot forgets labs, as it forgets their namespaces).
pub const STATE_DIR: &str = "/run/iptrace";

/// Everything needed to use or remove a lab later.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub backend: IptablesBackend,
    pub trace_rules: bool,
    pub ns: NsNames,
    /// Namespaces actually created so far (teardown removes exactly these).
    pub created: Vec<String>,
    /// peer, node, ctr namespace inodes.
    pub inodes: [u64; 3],
    pub sysctls: NodeSysctls,
    /// PID of an `iptrace lab serve` process (ServerMode::Process).
    pub server_pid: Option<u32>,
    /// The lab holds a use of the root namespace's nf_log_all_netns (shared with other
    /// iptrace users through `reference::NfLogAllNetns`; the last user restores it).
    #[serde(default)]
    pub nf_log_all_netns: bool,
}

impl LabState {
    pub fn new(name: &str, backend: IptablesBackend, trace_rules: bool) -> Self {
        LabState {
            name: name.to_string(),
            backend,
            trace_rules,
            ns: NsNames::for_lab(name),
            created: vec![],
            inodes: [0; 3],
            sysctls: NodeSysctls::default(),
            server_pid: None,
            nf_log_all_netns: false,
        }
    }

    pub fn path_for(name: &str) -> PathBuf {
        Path::new(STATE_DIR).join(format!("lab-{name}.json"))
    }

    /// Writes the state file atomically (temp file + rename: never half-written).
    pub fn save(&self) -> Result<PathBuf> {
        let path = Self::path_for(&self.name);
        std::fs::create_dir_all(STATE_DIR).map_err(|source| io("create", STATE_DIR, source))?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("state serializes");
        std::fs::write(&tmp, text).map_err(|source| io("write", &tmp, source))?;
        std::fs::rename(&tmp, &path).map_err(|source| io("rename to", &path, source))?;
        Ok(path)
    }

    pub fn load(name: &str) -> Result<Self> {
        let path = Self::path_for(name);
        let text = std::fs::read_to_string(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => LabError::NotFound {
                name: name.into(),
                path: path.clone(),
            },
            _ => io("read", &path, source),
        })?;
        serde_json::from_str(&text).map_err(|source| LabError::State { path, source })
    }

    pub fn remove_file(&self) -> Result<()> {
        let path = Self::path_for(&self.name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &path, e)),
            _ => Ok(()),
        }
    }
}

/// Names of labs with a state file.
pub fn list() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(STATE_DIR) else {
        return vec![];
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| {
            let f = e.ok()?.file_name().into_string().ok()?;
            Some(f.strip_prefix("lab-")?.strip_suffix(".json")?.to_string())
        })
        .collect();
    names.sort();
    names
}

/// Which of a lab's parts are alive.
#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    /// (namespace, exists)
    pub namespaces: Vec<(String, bool)>,
    /// The server answers from this process (thread) or its process is alive in ctr.
    pub server_alive: bool,
}

impl LabStatus {
    pub fn probe(state: &LabState, server_thread: bool) -> Self {
        let namespaces = state
            .ns
            .all()
            .iter()
            .map(|n| (n.to_string(), netns::exists(n)))
            .collect();
        let ctr_inode = state.inodes[2];
        let proc_alive = state
            .server_pid
            .is_some_and(|pid| netns::inode_of(&netns::path_of_pid(pid)).ok() == Some(ctr_inode));
        LabStatus {
            namespaces,
            server_alive: server_thread || proc_alive,
        }
    }

    pub fn healthy(&self) -> bool {
        self.server_alive && self.namespaces.iter().all(|(_, e)| *e)
    }
}

fn io(op: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> LabError {
    LabError::Io {
        op,
        path: path.as_ref().into(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_roundtrips_through_json() {
        let mut s = LabState::new("lab-1-0", IptablesBackend::Nft, true);
        s.server_pid = Some(42);
        s.created.push("lab-1-0-peer".into());
        let back: LabState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.ns, s.ns);
        assert_eq!(back.backend, IptablesBackend::Nft);
        assert_eq!(back.server_pid, Some(42));
        assert_eq!(back.created, s.created);
        assert!(serde_json::to_string(&s)
            .unwrap()
            .contains("\"backend\":\"nft\""));
    }

    #[test]
    fn state_path_names_the_lab() {
        assert_eq!(
            LabState::path_for("x-1-2"),
            PathBuf::from("/run/iptrace/lab-x-1-2.json")
        );
    }
}
