//! Parse errors: every error names the 1-based line and column where the input goes wrong.

use thiserror::Error;

/// A parse failure at `line:column` (both 1-based; column counts characters).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{line}:{column}: {kind}")]
pub struct ParseError {
    pub line: u32,
    pub column: u32,
    pub kind: ParseErrorKind,
}

impl ParseError {
    pub fn new(line: u32, column: u32, kind: ParseErrorKind) -> Self {
        ParseError { line, column, kind }
    }

    /// `FILE:LINE:COL: message`, the form `iptrace rules` prints.
    pub fn with_file(&self, file: &str) -> String {
        format!("{file}:{self}")
    }
}

/// What went wrong.
/// Why a host name in `-s`/`-d` is an error: iptables resolves it when the rule is loaded
/// and inserts one rule per address, so the kernel's rule positions depend on a lookup made
/// then; dumps (iptables-save) always hold the addresses.
pub const HOSTNAME_HINT: &str = " (host names are not resolved: iptables would resolve it when \
loading the rule and insert one rule per address; use the addresses iptables-save prints)";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseErrorKind {
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    #[error("input is not UTF-8 (byte offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("unknown table `{name}`")]
    UnknownTable { name: String },
    #[error("`{what}` outside of a table (missing `*table` line)")]
    OutsideTable { what: String },
    #[error("unknown chain `{chain}` in table {table}")]
    UnknownChain { table: String, chain: String },
    #[error("chain `{chain}` already exists in table {table}")]
    DuplicateChain { table: String, chain: String },
    #[error("invalid chain declaration: {reason}")]
    BadChainDecl { reason: String },
    #[error("invalid policy `{policy}` (ACCEPT or DROP)")]
    BadPolicy { policy: String },
    #[error("a built-in chain has no `-` policy: `{chain}`")]
    PolicyOnUserChain { chain: String },
    #[error("invalid counters `{text}` (expected [packets:bytes] or -c packets bytes)")]
    BadCounters { text: String },
    #[error("unsupported command `{command}`")]
    UnsupportedCommand { command: String },
    #[error("unexpected line (expected `*table`, `:CHAIN`, `-A`, `COMMIT` or `#`)")]
    UnexpectedLine,
    #[error("option `{option}` needs a value")]
    MissingValue { option: String },
    #[error("option `{option}` given twice")]
    DuplicateOption { option: String },
    #[error("unknown option `{option}`")]
    UnknownOption { option: String },
    #[error("`!` must precede an option")]
    DanglingNegation,
    #[error("invalid address `{text}` for {family}{}", if *hostname { HOSTNAME_HINT } else { "" })]
    BadAddress {
        text: String,
        family: String,
        /// `text` looks like a host name (see [`HOSTNAME_HINT`]).
        hostname: bool,
    },
    #[error("invalid mask `{text}`")]
    BadMask { text: String },
    #[error("unknown protocol `{text}`")]
    BadProtocol { text: String },
    #[error("invalid interface name `{text}`")]
    BadInterface { text: String },
    #[error("invalid {what} `{text}`")]
    BadValue { what: String, text: String },
    #[error("`{option}` of module {module}: {reason}")]
    BadMatchOption {
        module: String,
        option: String,
        reason: String,
    },
    #[error("target {target}: {reason}")]
    BadTarget { target: String, reason: String },
    #[error("rule jumps to chain `{chain}`, which does not exist in table {table}")]
    UnknownJumpTarget { table: String, chain: String },
    #[error("insert position {position} is beyond the end of chain `{chain}` ({len} rules)")]
    BadInsertPosition {
        chain: String,
        position: u32,
        len: usize,
    },
    #[error("{what} is only valid with {need}, not with {proto} (the kernel refuses such a rule)")]
    ProtocolMismatch {
        what: String,
        need: String,
        proto: String,
    },
    #[error("address family mismatch: `{text}` in an {family} ruleset")]
    FamilyMismatch { text: String, family: String },
}
