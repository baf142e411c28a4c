//! `iptrace rules FILE|-`: parse an iptables-save / ip6tables-save dump (or iptables-restore
//! input) and print every rule with the position TRACE gives it — `filter:FORWARD:rule:8`,
//! `…:return:N` / `…:policy:N` for unconditional standard verdicts and chain ends — like
//! `iptables -L --line-numbers` for dumps. `--json` prints one JSON document instead.
//!
//! Output is built in memory and written only after a successful parse: bad input prints
//! `FILE:LINE:COL: message` on stderr (every bad line, up to 20), exits 2, and writes
//! nothing on stdout. Warnings (missing COMMIT, legacy tables present, ...) go to stderr as
//! `FILE:LINE: warning: ...`.
//!
//! JSON schema `iptrace.rules/1` (one document): `{schema, file, family: "ipv4"|"ipv6",
//! header: {line, tool, version, backend: "legacy"|"nf_tables"|"unknown"} | null,
//! warnings: [{line, message}], tables: [{table, line, committed, chains: [{name, line,
//! builtin, policy: "ACCEPT"|"DROP"|null, counters: {packets, bytes} | null, rules: [{step:
//! "filter:FORWARD:rule:8", rule: <trace_core::rules::Rule serialized: line, text, counters,
//! protocol, src, dst, in_iface, out_iface, fragment, matches [{module, args, column, kind:
//! {type, options}}], target {target, options}, goto>}], end: "filter:FORWARD:policy:11"}]}]}`.
//! Additive changes keep the version; anything else bumps it.

use anyhow::Context;
use serde::Serialize;
use std::io::{Read, Write};
use std::process::ExitCode;
use trace_core::netfilter::{Family, Table};
use trace_core::rules::{
    diagnose, parse_bytes, Backend, Chain, Counters, Header, ParseOptions, Rule, Ruleset, TableDump,
};
use trace_core::step::StepId;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The dump to read (`iptables-save [-c]` output), or `-` for stdin.
    pub file: String,
    /// Print one JSON document (schema `iptrace.rules/1`) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Assume an ip6tables dump when the input does not say (no header, no address).
    #[arg(short = '6', long)]
    pub ipv6: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (name, bytes) = read_input(&args.file)?;
    let opts = ParseOptions {
        family: args.ipv6.then_some(Family::Ipv6),
    };
    let rs = parse_bytes(&bytes, opts).map_err(|e| all_errors(&name, &bytes, opts, e))?;
    for w in &rs.warnings {
        eprintln!("{name}:{}: warning: {}", w.line, w.message);
    }
    let out = if args.json {
        json(&name, &rs)?
    } else {
        text(&rs)
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Most errors to show at once.
const MAX_ERRORS: usize = 20;

/// The first error and the following ones (one `FILE:LINE:COL: message` per line), so that
/// every placeholder address of a dump is reported in one run.
fn all_errors(
    name: &str,
    bytes: &[u8],
    opts: ParseOptions,
    first: trace_core::rules::ParseError,
) -> anyhow::Error {
    let mut lines = vec![first.with_file(name)];
    let rest = diagnose(bytes, opts, MAX_ERRORS + 1);
    lines.extend(
        rest.iter()
            .filter(|e| **e != first)
            .take(MAX_ERRORS - 1)
            .map(|e| e.with_file(name)),
    );
    if rest.len() > MAX_ERRORS {
        lines.push(format!("{name}: more errors not shown"));
    }
    anyhow::anyhow!(lines.join("\n"))
}

/// The input's display name and bytes.
fn read_input(file: &str) -> anyhow::Result<(String, Vec<u8>)> {
    if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading stdin")?;
        return Ok(("<stdin>".into(), buf));
    }
    let bytes = std::fs::read(file).with_context(|| format!("reading {file}"))?;
    Ok((file.to_string(), bytes))
}

/// One printed position of a chain: a rule, or the chain end.
struct Row {
    label: String,
    counters: Option<Counters>,
    text: String,
}

fn counters_text(c: Option<Counters>) -> String {
    c.map_or(String::new(), |c| format!("[{}:{}]", c.packets, c.bytes))
}

/// Rules of the same source line that iptables split (several -s/-d addresses) are shown
/// with their own addresses; the others with their source text.
fn rule_text(chain: &Chain, rule: &Rule) -> String {
    let split = chain.rules.iter().filter(|r| r.line == rule.line).count() > 1;
    let text = if split {
        rule.to_save_text()
    } else {
        rule.text.clone()
    };
    format!("{text}  (line {})", rule.line)
}

fn end_text(chain: &Chain) -> String {
    match chain.policy {
        Some(p) => format!("(end of chain: policy {})", p.as_str()),
        None => "(end of chain: return to the caller)".into(),
    }
}

fn rows(table: Table, chain: &Chain) -> Vec<Row> {
    let mut rows: Vec<Row> = chain
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| Row {
            label: step(chain, table, i as u32 + 1).to_string(),
            counters: r.counters,
            text: rule_text(chain, r),
        })
        .collect();
    rows.push(Row {
        label: chain.end_step(table).to_string(),
        counters: None,
        text: end_text(chain),
    });
    rows
}

fn step(chain: &Chain, table: Table, n: u32) -> StepId {
    chain
        .step(table, n)
        .expect("1..=rules is always a position of the chain")
}

fn chain_heading(c: &Chain) -> String {
    let n = c.rules.len();
    let rules = format!("{n} rule{}", if n == 1 { "" } else { "s" });
    let counters = c.counters.map_or(String::new(), |k| {
        format!(", {} packets {} bytes", k.packets, k.bytes)
    });
    match c.policy {
        Some(p) => format!(
            "Chain {} (policy {}, {rules}{counters})",
            c.name,
            p.as_str()
        ),
        None => format!("Chain {} (user chain, {rules}{counters})", c.name),
    }
}

fn header_line(rs: &Ruleset) -> String {
    let family = match rs.family {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    };
    let source = rs
        .header
        .as_ref()
        .map_or("no header".to_string(), |h: &Header| {
            let backend = match h.backend {
                Backend::Legacy => "legacy",
                Backend::NfTables => "nf_tables",
                Backend::Unknown => "backend unknown",
            };
            format!(
                "{} v{} ({backend})",
                h.tool,
                h.version.as_deref().unwrap_or("?")
            )
        });
    format!(
        "# {family} ruleset, {source}, {} tables, {} rules\n",
        rs.tables.len(),
        rs.rule_count()
    )
}

fn table_text(t: &TableDump, out: &mut String) {
    let commit = if t.committed { "" } else { " (no COMMIT)" };
    out.push_str(&format!("\nTable {}{commit}\n", t.table));
    for c in &t.chains {
        out.push_str(&format!("{}\n", chain_heading(c)));
        let rows = rows(t.table, c);
        let lw = rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
        let cw = rows
            .iter()
            .map(|r| counters_text(r.counters).len())
            .max()
            .unwrap_or(0);
        for r in rows {
            let line = format!(
                "  {:lw$}  {:cw$}  {}",
                r.label,
                counters_text(r.counters),
                r.text
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

/// The text listing.
pub fn text(rs: &Ruleset) -> String {
    let mut out = header_line(rs);
    for t in &rs.tables {
        table_text(t, &mut out);
    }
    out
}

#[derive(Serialize)]
struct JsonDoc<'a> {
    schema: &'static str,
    file: &'a str,
    family: Family,
    header: &'a Option<Header>,
    warnings: &'a [trace_core::rules::Warning],
    tables: Vec<JsonTable<'a>>,
}

#[derive(Serialize)]
struct JsonTable<'a> {
    table: Table,
    line: u32,
    committed: bool,
    chains: Vec<JsonChain<'a>>,
}

#[derive(Serialize)]
struct JsonChain<'a> {
    name: &'a str,
    line: u32,
    builtin: bool,
    policy: Option<trace_core::rules::Policy>,
    counters: Option<Counters>,
    rules: Vec<JsonRule<'a>>,
    /// The chain end: `policy:N` / `return:N`.
    end: String,
}

#[derive(Serialize)]
struct JsonRule<'a> {
    /// The TRACE position, e.g. `filter:FORWARD:rule:8`.
    step: String,
    /// The rule as the model holds it (typed matches and target).
    rule: &'a Rule,
}

/// The JSON document (schema `iptrace.rules/1`).
pub fn json(file: &str, rs: &Ruleset) -> anyhow::Result<String> {
    let tables = rs
        .tables
        .iter()
        .map(|t| JsonTable {
            table: t.table,
            line: t.line,
            committed: t.committed,
            chains: t.chains.iter().map(|c| json_chain(t.table, c)).collect(),
        })
        .collect();
    let doc = JsonDoc {
        schema: "iptrace.rules/1",
        file,
        family: rs.family,
        header: &rs.header,
        warnings: &rs.warnings,
        tables,
    };
    let mut s = serde_json::to_string_pretty(&doc).context("serializing the ruleset")?;
    s.push('\n');
    Ok(s)
}

fn json_chain(table: Table, c: &Chain) -> JsonChain<'_> {
    JsonChain {
        name: &c.name,
        line: c.line,
        builtin: c.is_builtin(),
        policy: c.policy,
        counters: c.counters,
        rules: c
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| JsonRule {
                step: step(c, table, i as u32 + 1).to_string(),
                rule: r,
            })
            .collect(),
        end: c.end_step(table).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace_core::rules::parse;

    const DUMP: &str = "# Generated by iptables-save v1.8.9 on Wed\n*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n\
        [10:583] -A FORWARD -j DOCKER-USER\n-A FORWARD -s 1.1.1.1,2.2.2.2 -j ACCEPT\n[10:583] -A DOCKER-USER -j RETURN\nCOMMIT\n";

    #[test]
    fn text_lists_trace_labels_counters_and_chain_ends() {
        let out = text(&parse(DUMP).unwrap());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "# IPv4 ruleset, iptables-save v1.8.9 (legacy), 1 tables, 4 rules"
        );
        assert!(
            out.contains("  filter:FORWARD:rule:1    [10:583]  -j DOCKER-USER  (line 5)\n"),
            "{out}"
        );
        // A split address list shows each kernel rule with its own address.
        assert!(
            out.contains("filter:FORWARD:rule:2              -s 1.1.1.1/32 -j ACCEPT  (line 6)"),
            "{out}"
        );
        assert!(
            out.contains("filter:FORWARD:rule:3              -s 2.2.2.2/32 -j ACCEPT  (line 6)"),
            "{out}"
        );
        assert!(
            out.contains("filter:FORWARD:policy:4            (end of chain: policy DROP)"),
            "{out}"
        );
        assert!(
            out.contains("filter:DOCKER-USER:return:1  [10:583]  -j RETURN  (line 7)"),
            "{out}"
        );
        assert!(
            out.contains(
                "filter:DOCKER-USER:return:2            (end of chain: return to the caller)"
            ),
            "{out}"
        );
    }

    #[test]
    fn json_has_steps_and_typed_rules() {
        let doc: serde_json::Value =
            serde_json::from_str(&json("d.txt", &parse(DUMP).unwrap()).unwrap()).unwrap();
        assert_eq!(doc["schema"], "iptrace.rules/1");
        let chain = &doc["tables"][0]["chains"][1];
        assert_eq!(chain["name"], "DOCKER-USER");
        assert_eq!(chain["rules"][0]["step"], "filter:DOCKER-USER:return:1");
        assert_eq!(chain["rules"][0]["rule"]["target"]["target"], "return");
        assert_eq!(chain["end"], "filter:DOCKER-USER:return:2");
    }

    #[test]
    fn bad_input_is_an_error_naming_file_line_and_column() {
        let path =
            std::env::temp_dir().join(format!("iptrace-rules-test-{}.txt", std::process::id()));
        std::fs::write(&path, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -d x.x.x.x/32 -j DROP\n-A INPUT -s IP4_2 -j DROP\nCOMMIT\n").unwrap();
        let file = path.to_string_lossy().into_owned();
        let err = run(Args {
            file: file.clone(),
            json: false,
            ipv6: false,
        })
        .unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            err.to_string(),
            format!("{file}:3:13: invalid address `x.x.x.x` for IPv4 or IPv6\n{file}:4:13: invalid address `IP4_2` for IPv4 or IPv6")
        );
        let missing = run(Args {
            file: "/nonexistent/iptrace-dump".into(),
            json: false,
            ipv6: false,
        })
        .unwrap_err();
        assert!(format!("{missing:#}").contains("reading /nonexistent/iptrace-dump"));
    }
}
