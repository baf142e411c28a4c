//! `-j TARGET [options]` / `-g CHAIN`: standard verdicts, jumps and the typed options of the
//! common extension targets. Unknown targets (or known ones with options this file does not
//! type) are kept verbatim as [`Target::Unknown`].

use super::matches::{MarkMask, Range};
use super::model::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A kernel standard-target verdict < 0 (`XT_STANDARD_TARGET`, verdict = -NF_x - 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum StandardVerdict {
    Accept,
    Drop,
    Queue,
    Return,
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "target", content = "options", rename_all = "snake_case")]
pub enum Target {
    /// No `-j`: the rule only counts (the kernel stores a fall-through jump, verdict >= 0).
    None,
    Accept,
    Drop,
    Return,
    /// `-j QUEUE` (standard verdict NF_QUEUE; not NFQUEUE).
    Queue,
    /// `-j CHAIN` to a user chain (pushes the return position).
    Jump(String),
    /// `-g CHAIN` (no return position pushed: RETURN there returns to our caller).
    Goto(String),
    Dnat(NatTarget),
    Snat(NatTarget),
    Masquerade(MasqueradeTarget),
    Redirect(MasqueradeTarget),
    /// `NETMAP --to ADDR/MASK`.
    Netmap {
        to: IpNet,
    },
    Mark(MarkTarget),
    Connmark(ConnmarkTarget),
    Ct(CtTarget),
    Notrack,
    Log(LogTarget),
    Nflog(NflogTarget),
    Trace,
    /// `REJECT [--reject-with TYPE]` (type as written; None = the default port-unreachable).
    Reject {
        with: Option<String>,
    },
    Tproxy(TproxyTarget),
    /// `NFQUEUE --queue-num N [--queue-bypass]` etc. (options in [`super::model::Rule::text`]).
    Nfqueue {
        num: u16,
        bypass: bool,
    },
    /// `CHECKSUM --checksum-fill`.
    Checksum,
    /// `TCPMSS --set-mss N` (Some) or `--clamp-mss-to-pmtu` (None).
    TcpMss {
        set_mss: Option<u16>,
    },
    /// `DSCP --set-dscp N` / `--set-dscp-class`.
    Dscp(u8),
    /// `TOS --set-tos value/mask` (xor form like MARK: `tos = (tos & ~mask) ^ value`).
    Tos(MarkMask),
    Set(SetTarget),
    /// `CLASSIFY --set-class MAJOR:MINOR` as `major << 16 | minor`.
    Classify(u32),
    /// Anything else, kept verbatim: `args` are the words after `-j NAME`.
    Unknown {
        name: String,
        args: Vec<String>,
    },
}

impl Target {
    /// The kernel standard verdict < 0 this target compiles to (ACCEPT, DROP, QUEUE, RETURN);
    /// None for jumps, gotos, fall-through (no -j) and extension targets.
    pub fn standard_verdict(&self) -> Option<StandardVerdict> {
        match self {
            Target::Accept => Some(StandardVerdict::Accept),
            Target::Drop => Some(StandardVerdict::Drop),
            Target::Queue => Some(StandardVerdict::Queue),
            Target::Return => Some(StandardVerdict::Return),
            _ => None,
        }
    }

    /// True when traversal of the table stops (or pops, for RETURN) at this target for
    /// certain: standard verdicts and the extension targets that never return XT_CONTINUE
    /// (DNAT/SNAT/MASQUERADE/REDIRECT/NETMAP accept, REJECT drops, NFQUEUE queues, TPROXY
    /// accepts when it finds a socket, else drops). Jumps/gotos are not terminal here.
    /// Unknown targets answer false: the evaluator must treat them as uncertain.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Target::Accept
                | Target::Drop
                | Target::Return
                | Target::Queue
                | Target::Dnat(_)
                | Target::Snat(_)
                | Target::Masquerade(_)
                | Target::Redirect(_)
                | Target::Netmap { .. }
                | Target::Reject { .. }
                | Target::Tproxy(_)
                | Target::Nfqueue { .. }
        )
    }

    /// The chain a `-j CHAIN` / `-g CHAIN` goes to.
    pub fn chain(&self) -> Option<&str> {
        match self {
            Target::Jump(c) | Target::Goto(c) => Some(c),
            _ => None,
        }
    }

    /// The name as written after `-j` (`ACCEPT`, `DNAT`, a chain name...); "" for None.
    pub fn name(&self) -> &str {
        match self {
            Target::None => "",
            Target::Accept => "ACCEPT",
            Target::Drop => "DROP",
            Target::Return => "RETURN",
            Target::Queue => "QUEUE",
            Target::Jump(c) | Target::Goto(c) => c,
            Target::Dnat(_) => "DNAT",
            Target::Snat(_) => "SNAT",
            Target::Masquerade(_) => "MASQUERADE",
            Target::Redirect(_) => "REDIRECT",
            Target::Netmap { .. } => "NETMAP",
            Target::Mark(_) => "MARK",
            Target::Connmark(_) => "CONNMARK",
            Target::Ct(_) => "CT",
            Target::Notrack => "NOTRACK",
            Target::Log(_) => "LOG",
            Target::Nflog(_) => "NFLOG",
            Target::Trace => "TRACE",
            Target::Reject { .. } => "REJECT",
            Target::Tproxy(_) => "TPROXY",
            Target::Nfqueue { .. } => "NFQUEUE",
            Target::Checksum => "CHECKSUM",
            Target::TcpMss { .. } => "TCPMSS",
            Target::Dscp(_) => "DSCP",
            Target::Tos(_) => "TOS",
            Target::Set(_) => "SET",
            Target::Classify(_) => "CLASSIFY",
            Target::Unknown { name, .. } => name,
        }
    }
}

/// One `ADDR[-ADDR][:PORT[-PORT]]` of `--to-destination` / `--to-source`. Either part may be
/// absent (`:53` keeps the address, `10.0.0.1` keeps the port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NatRange {
    pub addr: Option<(IpAddr, IpAddr)>,
    pub ports: Option<Range>,
}

/// `DNAT --to-destination ...` / `SNAT --to-source ...`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NatTarget {
    /// Usually one range (several with old kernels); empty for DNAT without options.
    pub to: Vec<NatRange>,
    pub random: bool,
    pub random_fully: bool,
    pub persistent: bool,
}

/// `MASQUERADE` / `REDIRECT [--to-ports P[-P]] [--random] [--random-fully]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MasqueradeTarget {
    pub to_ports: Option<Range>,
    pub random: bool,
    pub random_fully: bool,
}

/// `MARK`: every form reduces to `mark = (mark & !mask) ^ value` (xt_MARK's xset):
/// `--set-xmark v/m` → (v, m); `--set-mark v[/m]` → (v, m | v); `--and-mark b` → (0, !b);
/// `--or-mark b` → (b, b); `--xor-mark b` → (b, 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MarkTarget {
    pub value: u32,
    pub mask: u32,
}

impl MarkTarget {
    pub fn apply(&self, mark: u32) -> u32 {
        (mark & !self.mask) ^ self.value
    }
}

/// `CONNMARK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ConnmarkTarget {
    /// `--set-xmark v/m` (and the set/and/or/xor forms): ctmark = (ctmark & !mask) ^ value.
    Set { value: u32, mask: u32 },
    /// `--save-mark [--nfmask n] [--ctmask c]`:
    /// ctmark = (ctmark & !ctmask) ^ (nfmark & nfmask).
    Save { nfmask: u32, ctmask: u32 },
    /// `--restore-mark [--nfmask n] [--ctmask c]`:
    /// nfmark = (nfmark & !nfmask) ^ (ctmark & ctmask).
    Restore { nfmask: u32, ctmask: u32 },
}

/// `CT` (`--notrack`, `--zone`, `--helper`...; other options make it [`Target::Unknown`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CtTarget {
    pub notrack: bool,
    pub zone: Option<u16>,
    pub helper: Option<String>,
}

/// `LOG`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LogTarget {
    pub prefix: Option<String>,
    /// As written (`4`, `warning`).
    pub level: Option<String>,
    pub tcp_sequence: bool,
    pub tcp_options: bool,
    pub ip_options: bool,
    pub uid: bool,
    pub macdecode: bool,
}

/// `NFLOG`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NflogTarget {
    pub group: Option<u16>,
    pub prefix: Option<String>,
    pub range: Option<u32>,
    pub threshold: Option<u32>,
}

/// `TPROXY --on-port P [--on-ip A] [--tproxy-mark v[/m]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TproxyTarget {
    pub on_port: u16,
    pub on_ip: Option<IpAddr>,
    pub mark: Option<MarkMask>,
}

/// `SET --add-set/--del-set NAME flags [--exist] [--timeout N]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetTarget {
    pub add: Option<(String, Vec<bool>)>,
    pub del: Option<(String, Vec<bool>)>,
    pub exist: bool,
    pub timeout: Option<u32>,
}
