//! The line-level parser: `# comments`, `*table`, `:CHAIN POLICY [p:b]`, rule commands and
//! `COMMIT`, for iptables-save / ip6tables-save output (legacy and nft, with or without
//! counters) and iptables-restore input (`-N`, `-P`, `-I CHAIN [n]`, `-F`, `-X`, blank lines).
//!
//! Decisions (iptables-restore accepts a superset of what iptables-save prints):
//! - a table without `COMMIT` at the end of input (or before the next `*table`) is kept,
//!   with a warning (iptables-restore would discard it; dumps are often trimmed);
//! - a repeated `*table` replaces the earlier one (as restore's flush does), with a warning;
//! - built-in chains referenced without a declaration are created with policy ACCEPT;
//! - `-j NAME` with no options where NAME is neither a chain nor a known target is an error
//!   (restore: "Couldn't load target"); with options it is kept as an unknown target;
//! - `-D`, `-R`, `-E` and listing commands are rejected as unsupported.

use super::error::{ParseError, ParseErrorKind};
use super::lexer::{split, Word};
use super::model::{
    Backend, Chain, Counters, Header, Policy, Proto, Rule, Ruleset, TableDump, Warning,
};
use super::rule_spec::{parse_rule, Scope};
use super::values::Ctx;
use crate::netfilter::{Family, Hook, Table};
use std::collections::HashMap;

type Res<T> = Result<T, ParseError>;

/// Caller knowledge that the input may not state.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseOptions {
    /// The family to assume (e.g. the caller ran `ip6tables-save`). The input's own header
    /// or addresses must agree with it.
    pub family: Option<Family>,
}

/// Parses a dump (or restore input).
pub fn parse(text: &str) -> Result<Ruleset, ParseError> {
    parse_with(text, ParseOptions::default())
}

/// Parses raw bytes; invalid UTF-8 is an error at its line and column.
pub fn parse_bytes(bytes: &[u8], opts: ParseOptions) -> Result<Ruleset, ParseError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_with(text, opts),
        Err(e) => Err(utf8_error(bytes, e.valid_up_to())),
    }
}

fn utf8_error(bytes: &[u8], offset: usize) -> ParseError {
    let before = &bytes[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() as u32 + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count() as u32
        + 1;
    ParseError::new(line, column, ParseErrorKind::NotUtf8 { offset })
}

/// Parses `text` with `opts`; the first error stops it.
pub fn parse_with(text: &str, opts: ParseOptions) -> Result<Ruleset, ParseError> {
    let mut p = Parser {
        family: opts.family,
        ..Parser::default()
    };
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
        p.line(line_no, raw.strip_suffix('\r').unwrap_or(raw))?;
    }
    Ok(p.finish())
}

/// Every error of the input (at most `max`, in line order), for reporting all the bad
/// lines at once: a bad line is skipped and parsing goes on, so a later error may be a
/// consequence of an earlier one (a rule in a chain whose declaration was bad). Empty when
/// the input parses. Invalid UTF-8 stops at its first occurrence.
pub fn diagnose(bytes: &[u8], opts: ParseOptions, max: usize) -> Vec<ParseError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => return vec![utf8_error(bytes, e.valid_up_to())],
    };
    let mut p = Parser {
        family: opts.family,
        ..Parser::default()
    };
    let mut errors = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if let Err(e) = p.line(line_no, raw.strip_suffix('\r').unwrap_or(raw)) {
            errors.push(e);
            if errors.len() >= max {
                break;
            }
        }
    }
    errors
}

/// The table being filled, with a chain-name index.
struct Open {
    dump: TableDump,
    index: HashMap<String, usize>,
}

#[derive(Default)]
struct Parser {
    family: Option<Family>,
    header: Option<Header>,
    warnings: Vec<Warning>,
    tables: Vec<TableDump>,
    open: Option<Open>,
}

impl Parser {
    fn line(&mut self, no: u32, line: &str) -> Res<()> {
        let body = line.trim();
        if body.is_empty() {
            return Ok(());
        }
        if let Some(comment) = body.strip_prefix('#') {
            self.comment(no, comment);
            return Ok(());
        }
        let words = split(line, no)?;
        let first = &words[0];
        if first.quoted {
            return Err(ParseError::new(
                no,
                first.col,
                ParseErrorKind::UnexpectedLine,
            ));
        }
        if let Some(name) = first.text.strip_prefix('*') {
            return self.start_table(no, name, &words);
        }
        if first.text.starts_with(':') {
            return self.declare_chain(no, &words);
        }
        if first.text == "COMMIT" {
            return self.commit(no, &words);
        }
        if first.text.starts_with('-') || first.text.starts_with('[') {
            return self.command(no, line, &words);
        }
        Err(ParseError::new(
            no,
            first.col,
            ParseErrorKind::UnexpectedLine,
        ))
    }

    fn warn(&mut self, line: u32, message: String) {
        self.warnings.push(Warning { line, message });
    }

    fn comment(&mut self, no: u32, comment: &str) {
        let text = comment.trim();
        if let Some(rest) = text.strip_prefix("Generated by ") {
            self.header_line(no, rest);
        } else if text.starts_with("Warning:") {
            self.warn(no, text.to_string());
        }
    }

    /// `TOOL vVERSION [(BACKEND)] on DATE`.
    fn header_line(&mut self, no: u32, rest: &str) {
        let mut it = rest.split_whitespace();
        let tool = it.next().unwrap_or("").to_string();
        let version = it
            .next()
            .and_then(|v| v.strip_prefix('v'))
            .map(str::to_string);
        let suffix = it.next().unwrap_or("");
        let backend = header_backend(&tool, suffix);
        if self.family.is_none() {
            if tool.starts_with("ip6tables") {
                self.family = Some(Family::Ipv6);
            } else if tool.starts_with("iptables") {
                self.family = Some(Family::Ipv4);
            }
        }
        if self.header.is_none() {
            self.header = Some(Header {
                line: no,
                tool,
                version,
                backend,
            });
        }
    }

    fn start_table(&mut self, no: u32, name: &str, words: &[Word]) -> Res<()> {
        let table = Table::from_name(name).ok_or_else(|| {
            ParseError::new(
                no,
                words[0].col,
                ParseErrorKind::UnknownTable {
                    name: name.to_string(),
                },
            )
        })?;
        extra_words(no, &words[1..])?;
        self.close_open(Some(no));
        let dump = TableDump {
            table,
            line: no,
            committed: false,
            chains: Vec::new(),
        };
        self.open = Some(Open {
            dump,
            index: HashMap::new(),
        });
        Ok(())
    }

    /// Closes the open table without COMMIT (warning), before line `next` (the next table)
    /// or at the end of input (None).
    fn close_open(&mut self, next: Option<u32>) {
        if let Some(open) = self.open.take() {
            let at = next.map_or("at the end of input".to_string(), |n| {
                format!("before line {n}")
            });
            let msg = format!("table {} has no COMMIT {at}: kept as is", open.dump.table);
            self.warn(open.dump.line, msg);
            self.push_table(open.dump);
        }
    }

    fn push_table(&mut self, dump: TableDump) {
        if let Some(pos) = self.tables.iter().position(|t| t.table == dump.table) {
            let msg = format!(
                "table {} appears again: this section replaces the one at line {}",
                dump.table, self.tables[pos].line
            );
            self.warn(dump.line, msg);
            self.tables.remove(pos);
        }
        self.tables.push(dump);
    }

    fn commit(&mut self, no: u32, words: &[Word]) -> Res<()> {
        extra_words(no, &words[1..])?;
        let mut open = self.open.take().ok_or_else(|| outside(no, &words[0]))?;
        open.dump.committed = true;
        self.push_table(open.dump);
        Ok(())
    }

    fn open_table(&mut self, no: u32, w: &Word) -> Res<&mut Open> {
        self.open.as_mut().ok_or_else(|| outside(no, w))
    }

    /// `:NAME POLICY [p:b]`.
    fn declare_chain(&mut self, no: u32, words: &[Word]) -> Res<()> {
        let name_w = &words[0];
        let name = &name_w.text[1..];
        let bad = |reason: &str| {
            ParseError::new(
                no,
                name_w.col,
                ParseErrorKind::BadChainDecl {
                    reason: reason.into(),
                },
            )
        };
        if name.is_empty() {
            return Err(bad("missing chain name"));
        }
        let policy_w = words
            .get(1)
            .ok_or_else(|| bad("missing policy (ACCEPT, DROP or -)"))?;
        let counters = match words.get(2) {
            Some(w) => Some(bracket_counters(no, w)?),
            None => None,
        };
        extra_words(no, words.get(3..).unwrap_or(&[]))?;
        let open = self.open_table(no, name_w)?;
        let builtin = is_builtin(open.dump.table, name);
        let policy = parse_policy(no, policy_w, name, builtin)?;
        if open.index.contains_key(name) {
            return Err(ParseError::new(
                no,
                name_w.col,
                ParseErrorKind::DuplicateChain {
                    table: open.dump.table.to_string(),
                    chain: name.to_string(),
                },
            ));
        }
        let policy = if builtin {
            Some(policy.unwrap_or(Policy::Accept))
        } else {
            policy
        };
        add_chain(
            open,
            Chain {
                name: name.to_string(),
                line: no,
                policy,
                counters,
                rules: Vec::new(),
            },
        );
        Ok(())
    }

    /// `[p:b] -A CHAIN ...`, `-I CHAIN [n] ...`, `-N`, `-P`, `-F`, `-X`, `-Z`.
    fn command(&mut self, no: u32, line: &str, words: &[Word]) -> Res<()> {
        let (counters, words) = match words[0].text.starts_with('[') && !words[0].quoted {
            true => (Some(bracket_counters(no, &words[0])?), &words[1..]),
            false => (None, words),
        };
        let cmd = words
            .first()
            .ok_or_else(|| ParseError::new(no, 1, ParseErrorKind::UnexpectedLine))?;
        match cmd.text.as_str() {
            "-A" | "--append" => self.append(no, line, words, counters, None),
            "-I" | "--insert" => self.insert(no, line, words, counters),
            "-N" | "--new-chain" | "--new" => self.new_chain(no, words),
            "-P" | "--policy" => self.set_policy(no, words),
            "-F" | "--flush" => self.flush(no, words, false),
            "-X" | "--delete-chain" => self.flush(no, words, true),
            "-Z" | "--zero" => self.open_table(no, cmd).map(|_| ()),
            _ => Err(ParseError::new(
                no,
                cmd.col,
                ParseErrorKind::UnsupportedCommand {
                    command: cmd.text.clone(),
                },
            )),
        }
    }

    /// The chain named by `words[1]`, created if it is an undeclared built-in chain.
    fn target_chain(&mut self, no: u32, words: &[Word]) -> Res<usize> {
        let cmd = &words[0];
        let name_w = words.get(1).ok_or_else(|| {
            ParseError::new(
                no,
                cmd.col,
                ParseErrorKind::MissingValue {
                    option: cmd.text.clone(),
                },
            )
        })?;
        let open = self.open_table(no, cmd)?;
        if let Some(&i) = open.index.get(&name_w.text) {
            return Ok(i);
        }
        if !is_builtin(open.dump.table, &name_w.text) {
            return Err(ParseError::new(
                no,
                name_w.col,
                ParseErrorKind::UnknownChain {
                    table: open.dump.table.to_string(),
                    chain: name_w.text.clone(),
                },
            ));
        }
        let chain = Chain {
            name: name_w.text.clone(),
            line: no,
            policy: Some(Policy::Accept),
            counters: None,
            rules: Vec::new(),
        };
        Ok(add_chain(open, chain))
    }

    fn append(
        &mut self,
        no: u32,
        line: &str,
        words: &[Word],
        counters: Option<Counters>,
        at: Option<usize>,
    ) -> Res<()> {
        let chain = self.target_chain(no, words)?;
        let skip = if at.is_some() && words.get(2).is_some_and(is_position) {
            3
        } else {
            2
        };
        let rest = words.get(skip..).unwrap_or(&[]);
        let text = rule_text(line, rest);
        let mut rules = self.rules(no, rest, &text)?;
        for r in &mut rules {
            r.counters = r.counters.or(counters);
        }
        let open = self
            .open
            .as_mut()
            .expect("target_chain checked the open table");
        let list = &mut open.dump.chains[chain].rules;
        match at {
            None => list.extend(rules),
            Some(pos) => {
                // iptables inserts each expanded rule at the same position: last one first.
                for r in rules {
                    list.insert(pos, r);
                }
            }
        }
        Ok(())
    }

    /// `-I CHAIN [n] rule`: n is 1-based and at most rules + 1.
    fn insert(
        &mut self,
        no: u32,
        line: &str,
        words: &[Word],
        counters: Option<Counters>,
    ) -> Res<()> {
        let chain = self.target_chain(no, words)?;
        let open = self
            .open
            .as_ref()
            .expect("target_chain checked the open table");
        let c = &open.dump.chains[chain];
        let pos = match words.get(2).filter(|w| is_position(w)) {
            None => 1,
            Some(w) => {
                let n: u32 = w.text.parse().unwrap_or(u32::MAX);
                if n == 0 || n as usize > c.rules.len() + 1 {
                    return Err(ParseError::new(
                        no,
                        w.col,
                        ParseErrorKind::BadInsertPosition {
                            chain: c.name.clone(),
                            position: n,
                            len: c.rules.len(),
                        },
                    ));
                }
                n
            }
        };
        self.append(no, line, words, counters, Some(pos as usize - 1))
    }

    fn rules(&mut self, no: u32, words: &[Word], text: &str) -> Res<Vec<Rule>> {
        let open = self.open.as_ref().expect("caller checked the open table");
        let table = open.dump.table.to_string();
        let index = &open.index;
        let has_chain = |name: &str| index.contains_key(name);
        let scope = Scope {
            table: &table,
            has_chain: &has_chain,
        };
        let mut cx = Ctx {
            line: no,
            family: &mut self.family,
        };
        parse_rule(words, text, &mut cx, &scope)
    }

    fn new_chain(&mut self, no: u32, words: &[Word]) -> Res<()> {
        let cmd = &words[0];
        let name_w = words.get(1).ok_or_else(|| {
            ParseError::new(
                no,
                cmd.col,
                ParseErrorKind::MissingValue {
                    option: cmd.text.clone(),
                },
            )
        })?;
        extra_words(no, &words[2..])?;
        let open = self.open_table(no, cmd)?;
        if open.index.contains_key(&name_w.text) || is_builtin(open.dump.table, &name_w.text) {
            return Err(ParseError::new(
                no,
                name_w.col,
                ParseErrorKind::DuplicateChain {
                    table: open.dump.table.to_string(),
                    chain: name_w.text.clone(),
                },
            ));
        }
        add_chain(
            open,
            Chain {
                name: name_w.text.clone(),
                line: no,
                policy: None,
                counters: None,
                rules: Vec::new(),
            },
        );
        Ok(())
    }

    /// `-P CHAIN POLICY [-c p b]`.
    fn set_policy(&mut self, no: u32, words: &[Word]) -> Res<()> {
        let chain = self.target_chain(no, words)?;
        let policy_w = words.get(2).ok_or_else(|| {
            ParseError::new(
                no,
                words[0].col,
                ParseErrorKind::MissingValue {
                    option: words[0].text.clone(),
                },
            )
        })?;
        let open = self
            .open
            .as_mut()
            .expect("target_chain checked the open table");
        let c = &mut open.dump.chains[chain];
        let policy = parse_policy(no, policy_w, &c.name, c.is_builtin())?;
        extra_words(no, &words[3..])?;
        if c.is_builtin() {
            c.policy = policy.or(c.policy);
        }
        Ok(())
    }

    /// `-F [CHAIN]` empties chains; `-X [CHAIN]` deletes (empty, user) chains.
    fn flush(&mut self, no: u32, words: &[Word], delete: bool) -> Res<()> {
        let chain = match words.get(1) {
            Some(_) => Some(self.target_chain(no, words)?),
            None => None,
        };
        let open = self.open_table(no, &words[0])?;
        match (chain, delete) {
            (Some(i), false) => open.dump.chains[i].rules.clear(),
            (None, false) => open.dump.chains.iter_mut().for_each(|c| c.rules.clear()),
            (Some(i), true) if !open.dump.chains[i].is_builtin() => {
                open.dump.chains.remove(i);
                reindex(open);
            }
            (Some(_), true) => {}
            (None, true) => {
                open.dump.chains.retain(|c| c.is_builtin());
                reindex(open);
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Ruleset {
        self.close_open(None);
        let family = self.family.unwrap_or(Family::Ipv4);
        if family == Family::Ipv4 {
            drop_ipv4_proto_all(&mut self.tables);
        }
        Ruleset {
            family,
            header: self.header,
            warnings: self.warnings,
            tables: self.tables,
        }
    }
}

/// nft: `(nf_tables)` (1.8.3+), an `-nft` tool name, or 1.8.0–1.8.2's `xtables-save`.
/// Otherwise an `iptables-save`/`ip6tables-save` header is legacy: the legacy tools never
/// print a backend (and before 1.8 legacy was the only one).
/// IPv4 `-p all` is protocol 0 with no flag: the kernel sees no protocol restriction, so
/// the model holds None. (ip6tables sets IP6T_F_PROTO for any -p, `all` included: there the
/// restriction is real — an upper-layer header must be found — and is kept.)
fn drop_ipv4_proto_all(tables: &mut [TableDump]) {
    let rules = tables
        .iter_mut()
        .flat_map(|t| t.chains.iter_mut())
        .flat_map(|c| c.rules.iter_mut());
    for r in rules {
        if r.protocol
            .as_ref()
            .is_some_and(|p| p.value == Proto::All && !p.negated)
        {
            r.protocol = None;
        }
    }
}

fn header_backend(tool: &str, suffix: &str) -> Backend {
    if suffix == "(nf_tables)" || tool.contains("-nft") || tool.starts_with("xtables") {
        Backend::NfTables
    } else if suffix == "(legacy)" || tool.contains("tables") {
        Backend::Legacy
    } else {
        Backend::Unknown
    }
}

fn outside(no: u32, w: &Word) -> ParseError {
    ParseError::new(
        no,
        w.col,
        ParseErrorKind::OutsideTable {
            what: w.text.clone(),
        },
    )
}

fn extra_words(no: u32, rest: &[Word]) -> Res<()> {
    match rest.first() {
        None => Ok(()),
        Some(w) => Err(ParseError::new(
            no,
            w.col,
            ParseErrorKind::UnknownOption {
                option: w.text.clone(),
            },
        )),
    }
}

/// True when `name` is a built-in chain of `table` (a hook the table is registered on).
fn is_builtin(table: Table, name: &str) -> bool {
    Hook::from_chain_name(name).is_some_and(|h| table.priority(h).is_some())
}

/// `ACCEPT`/`DROP` (Some) or `-` (None); a real policy on a user chain is an error.
fn parse_policy(no: u32, w: &Word, chain: &str, builtin: bool) -> Res<Option<Policy>> {
    let policy = match w.text.as_str() {
        "ACCEPT" => Some(Policy::Accept),
        "DROP" => Some(Policy::Drop),
        "-" => None,
        _ => {
            return Err(ParseError::new(
                no,
                w.col,
                ParseErrorKind::BadPolicy {
                    policy: w.text.clone(),
                },
            ))
        }
    };
    if policy.is_some() && !builtin {
        return Err(ParseError::new(
            no,
            w.col,
            ParseErrorKind::PolicyOnUserChain {
                chain: chain.to_string(),
            },
        ));
    }
    Ok(policy)
}

/// `[packets:bytes]`.
fn bracket_counters(no: u32, w: &Word) -> Res<Counters> {
    let bad = || {
        ParseError::new(
            no,
            w.col,
            ParseErrorKind::BadCounters {
                text: w.text.clone(),
            },
        )
    };
    let inner = w
        .text
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(bad)?;
    let (p, b) = inner.split_once(':').ok_or_else(bad)?;
    Ok(Counters {
        packets: p.parse().map_err(|_| bad())?,
        bytes: b.parse().map_err(|_| bad())?,
    })
}

fn is_position(w: &Word) -> bool {
    !w.quoted && !w.text.is_empty() && w.text.bytes().all(|b| b.is_ascii_digit())
}

fn add_chain(open: &mut Open, chain: Chain) -> usize {
    open.index
        .insert(chain.name.clone(), open.dump.chains.len());
    open.dump.chains.push(chain);
    open.dump.chains.len() - 1
}

fn reindex(open: &mut Open) {
    open.index = open
        .dump
        .chains
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), i))
        .collect();
}

/// The line from the first rule word on, without trailing blanks.
fn rule_text(line: &str, rest: &[Word]) -> String {
    let Some(first) = rest.first() else {
        return String::new();
    };
    let start = line
        .char_indices()
        .nth(first.col as usize - 1)
        .map_or(line.len(), |(b, _)| b);
    line[start..].trim_end().to_string()
}
