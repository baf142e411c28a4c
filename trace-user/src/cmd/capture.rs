//! `iptrace capture --backend nfhook`: trace packets through netfilter with BPF netfilter-link
//! probes (see trace_user::capture). Packets go to stdout (json lines / text), the summary to
//! stderr (and as a final `{"summary":…}` line with --format json).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use crate::capture::compare_trace::{self, CompareTrace};
use crate::capture::plan::{self, ProbeMode};
use crate::capture::print;
use crate::capture::rulelevel::{self, RuleLevel};
use crate::capture::session::{CaptureOptions, Session};
use crate::capture::stop;
use anyhow::{bail, Context, Result};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Nfhook,
    /// fentry/fexit on nf_hook_slow, the table functions and nf_nat (stock kernels).
    Fentry,
    /// kprobe/kretprobe on the same functions.
    Kprobe,
    /// fentry > kprobe > nfhook, by what actually loads here.
    Auto,
}

/// `--probes`: where nfhook links its probes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probes {
    /// None after a table or chain without rules and with policy ACCEPT (it cannot act),
    /// conntrack's folded into nat's; added when a rule appears there (within
    /// --rules-interval).
    Needed,
    /// Before the first and after every table and chain, whatever the rules.
    All,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Trace,
    Pretty,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Capture backend (this kernel: nfhook = BPF netfilter links + kfree_skb).
    #[arg(long, value_enum, default_value = "nfhook")]
    pub backend: Backend,
    /// Network namespace to trace: NAME (/run/netns), PATH, PID, or `all`. Repeatable;
    /// default: the current one.
    #[arg(long = "netns")]
    pub netns: Vec<String>,
    #[arg(long, value_enum, default_value = "pretty")]
    pub format: Format,
    /// Stop after N packets.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after SECS seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Trace one flow in N: `1/N` (decided per connection).
    #[arg(long)]
    pub sample: Option<String>,
    /// At most N new packets per second: `N/s`.
    #[arg(long = "rate-limit")]
    pub rate_limit: Option<String>,
    /// Ring buffer size in bytes (power of two, >= 4096).
    #[arg(long = "ringbuf-size", default_value_t = 8 << 20)]
    pub ringbuf_size: u32,
    /// Print the packet-level view (per hook and table: verdict, NAT, conntrack) instead of
    /// the rule-level path reconstructed from the iptables dumps.
    #[arg(long)]
    pub packets: bool,
    /// Also record the capture (dumps, plan, events) to FILE for `iptrace replay`.
    #[arg(long)]
    pub write: Option<std::path::PathBuf>,
    /// Reconstruct against this iptables-save dump (every traced netns) instead of the live
    /// dumps (`-` = stdin).
    #[arg(long)]
    pub rules: Option<std::path::PathBuf>,
    /// Re-take the live rule dumps at most every SECS seconds (a rule change is seen within
    /// that time; packets in between are resolved against the previous dump).
    #[arg(long = "rules-interval", default_value_t = 1.0)]
    pub rules_interval: f64,
    /// Also collect the kernel's own trace of the captured packets in the same run (a TRACE
    /// rule for the filter in raw PREROUTING/OUTPUT of each netns; legacy: the kernel log with
    /// net.netfilter.nf_log_all_netns, nft: xtables-monitor), undo it all on exit, and print
    /// the agreement report last (exit 0 agree, 1 differ). Needs --allow-system-changes.
    #[arg(long = "compare-trace")]
    pub compare_trace: bool,
    /// Permit the system changes --compare-trace makes (without it iptrace changes nothing).
    #[arg(long = "allow-system-changes")]
    pub allow_system_changes: bool,
    /// Exact legacy rule positions (fentry/kprobe backends, iptables-legacy tables): also probe
    /// the x_tables match and target functions the loaded rules use, map each call to
    /// chain:rule, confirm the reconstructed path with them and show the rules evaluated whose
    /// match failed. Opt-in: those probes fire on every rule evaluated on the machine.
    #[arg(long = "rule-positions")]
    pub rule_positions: bool,
    /// nfhook: link probes only where a table can act (`needed`), or around every table and
    /// chain (`all`, for rules that change faster than --rules-interval: until a change is
    /// seen, a packet is attributed with the probes planned for the rules before it).
    #[arg(long, value_enum, default_value = "needed")]
    pub probes: Probes,
    /// Benchmarks: drain the ring buffer without decoding or printing (the probes' own cost).
    #[arg(long, hide = true)]
    pub discard: bool,
    /// tcpdump-style filter (e.g. `tcp and dst port 10000`); empty = everything.
    pub filter: Vec<String>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let opts = options(&args)?;
    check_rule_positions(&args)?;
    let rule_source = rule_source(&args)?;
    // Before the probes and the first dumps: see compare_trace's module docs.
    let tracer = start_compare(&args, &opts)?;
    let mode = match args.probes {
        Probes::Needed => ProbeMode::Needed,
        Probes::All => ProbeMode::All,
    };
    let mut session = attach(args.backend, &opts, args.rule_positions, mode)?;
    for a in &session.attached {
        eprintln!(
            "iptrace capture: netns {} (inode {}): {} probes attached",
            a.label, a.netns, a.links
        );
    }
    let format = args.format;
    let packet_level = args.packets;
    let out_format = match format {
        Format::Json => trace_core::output::Format::Json,
        Format::Trace => trace_core::output::Format::Trace,
        Format::Pretty => trace_core::output::Format::Pretty,
    };
    let mut rules = RuleLevel::new(
        &session,
        &opts.targets,
        rule_source,
        !packet_level,
        out_format,
        args.write.as_deref(),
    )?;
    if tracer.is_some() {
        rules.keep_packets();
    }
    if let Some(r) = session
        .replan_handle()
        .filter(|_| mode == ProbeMode::Needed)
    {
        rules.replan_with(r);
    }
    // Buffered: a line-buffered stdout costs a write(2) per line at high packet rates.
    let out = std::cell::RefCell::new(Output::new());
    let mut summary = if args.discard {
        session.run_discard(&opts)?
    } else if packet_level {
        // Rule changes still reach a --write recording.
        let rl = std::cell::RefCell::new(&mut rules);
        session.run_with_events_ticked(
            &opts,
            || {
                // Quiet periods: what the last events printed must not wait for the next one.
                out.borrow_mut().maybe_flush()?;
                rl.borrow_mut().tick()
            },
            |e| rl.borrow_mut().event(e, &mut *out.borrow_mut()),
            |t| {
                let mut o = out.borrow_mut();
                match format {
                    Format::Json => writeln!(o, "{}", serde_json::to_string(t)?)?,
                    Format::Trace | Format::Pretty => print::write_pretty(&mut *o, t)?,
                }
                o.maybe_flush()?;
                Ok(())
            },
        )?
    } else {
        let rl = std::cell::RefCell::new(&mut rules);
        session.run_events_positioned(
            &opts,
            || {
                // Quiet periods: what the last events printed must not wait for the next one.
                out.borrow_mut().maybe_flush()?;
                rl.borrow_mut().tick()
            },
            |t| {
                rl.borrow_mut()
                    .positions(t.netns, t.skb, t.gen, t.positions);
                Ok(())
            },
            |e| {
                let mut o = out.borrow_mut();
                let n = rl.borrow_mut().event_owned(e, &mut *o)?;
                o.maybe_flush()?;
                Ok(n)
            },
        )?
    };
    let mut o = out.into_inner();
    rules.finish(summary.lost, &mut o)?;
    if let Some(p) = summary.rule_positions.as_mut() {
        let (used, evicted) = rules.positions_stats();
        p.used = used;
        p.unused = evicted + rules.position_store().map_or(0, |s| s.len() as u64);
    }
    if !packet_level && !args.discard {
        // Rule level: the replayer assembled the packets.
        summary.packets = rules.packets();
        if let Some(stats) = rules.assembler_stats() {
            summary.assembler = stats;
        }
    }
    if format == Format::Json {
        writeln!(o, "{}", serde_json::json!({ "summary": summary }))?;
    }
    o.flush()?;
    drop(session);
    print::write_summary(&mut std::io::stderr(), &summary)?;
    if let Some(p) = &summary.rule_positions {
        eprintln!("{}", positions_line(p));
    }
    match tracer {
        Some(t) => {
            let reports = t.finish(&rules.take_kept())?;
            print_reports(&mut o, &reports, format == Format::Json)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `--rule-positions` needs the rule-level view on a backend that can probe x_tables functions.
fn check_rule_positions(args: &Args) -> Result<()> {
    if !args.rule_positions {
        return Ok(());
    }
    if args.backend == Backend::Nfhook {
        bail!("--rule-positions needs --backend fentry or kprobe (or auto where one loads): it probes the x_tables match and target functions, which BPF netfilter links (nfhook) cannot see");
    }
    if args.packets || args.discard {
        bail!("--rule-positions confirms the rule-level path: not with --packets or --discard");
    }
    Ok(())
}

/// The summary's rule-positions line (stderr).
fn positions_line(p: &crate::capture::session::PositionsSummary) -> String {
    format!(
        "iptrace capture: rule positions: {} functions probed, {} records, {} table traversals ({} applied, {} matched no packet), {} records unresolved, {} records lost",
        p.functions, p.records, p.traversals, p.used, p.unused, p.unresolved, p.lost
    )
}

/// `--compare-trace`: checks the flags, installs the signal flag (so that Ctrl-C/SIGTERM end
/// the capture through the cleanup path instead of killing the process), starts the tracers.
fn start_compare(args: &Args, opts: &CaptureOptions) -> Result<Option<CompareTrace>> {
    if !args.compare_trace {
        return Ok(None);
    }
    if !args.allow_system_changes {
        bail!("--compare-trace inserts TRACE rules (and may set net.netfilter.nf_log_all_netns): it needs --allow-system-changes; without it iptrace changes nothing on the system");
    }
    if args.packets || args.discard || args.rules.is_some() {
        bail!("--compare-trace compares the rule-level paths reconstructed from the live dumps: not with --packets, --discard or --rules");
    }
    let filter = args.filter.join(" ");
    let (family, sel, dropped) = compare_trace::selector_for(&filter)?;
    if !dropped.is_empty() {
        eprintln!(
            "iptrace capture: --compare-trace: iptables cannot express {} of the filter; the TRACE rule is broader ({}), only captured packets are compared",
            dropped.join(", "),
            if sel.iptables_args().is_empty() { "every packet".to_string() } else { sel.iptables_args().join(" ") }
        );
    }
    stop::install().context("installing the Ctrl-C/SIGTERM handler")?;
    Ok(Some(CompareTrace::start(&opts.targets, family, &sel)?))
}

/// The agreement reports, last on stdout (text, or one JSON line each); exit 0/1/2.
fn print_reports(
    o: &mut Output,
    reports: &[(String, trace_core::compare::report::Report)],
    json: bool,
) -> Result<ExitCode> {
    let mut code = 0;
    for (netns, r) in reports {
        if json {
            writeln!(
                o,
                "{}",
                serde_json::json!({ "compare": { "netns": netns, "report": r } })
            )?;
        } else {
            writeln!(o, "--compare-trace, netns {netns}:")?;
            write!(o, "{}", r.render_text(5))?;
        }
        if let Some(why) = &r.missing_ruleset {
            eprintln!("iptrace capture: --compare-trace: {why}");
        }
        code = code.max(r.exit_code());
    }
    o.flush()?;
    Ok(ExitCode::from(code))
}

/// `--rules FILE` or the live dumps every `--rules-interval`.
fn rule_source(args: &Args) -> Result<rulelevel::Rules> {
    if let Some(path) = &args.rules {
        if path.as_os_str() != "-" {
            // Bad input is refused before anything is attached.
            crate::rulesource::load_dump_file(path)?;
        }
        return Ok(rulelevel::Rules::File { path: path.clone() });
    }
    if !(args.rules_interval.is_finite() && args.rules_interval >= 0.0) {
        bail!(
            "--rules-interval {}: expected seconds >= 0",
            args.rules_interval
        );
    }
    Ok(rulelevel::Rules::Live {
        min_interval: Duration::from_secs_f64(args.rules_interval),
    })
}

/// The session on the requested backend; auto reports why better backends were passed over,
/// an explicit fentry/kprobe that cannot work is an error with the reason.
fn attach(
    backend: Backend,
    opts: &CaptureOptions,
    rule_positions: bool,
    mode: ProbeMode,
) -> Result<Session> {
    use crate::capture::classic::{self, Chosen, Requested};
    let req = match backend {
        Backend::Nfhook => return Session::attach_with(opts, mode),
        Backend::Fentry => Requested::Fentry,
        Backend::Kprobe => Requested::Kprobe,
        Backend::Auto => Requested::Auto,
    };
    let load = crate::capture::loader::LoadOptions {
        ringbuf_size: opts.ringbuf_size,
        sample_n: opts.sample_n,
        rate_limit: opts.rate_limit,
        filter: opts.filter,
    };
    let sel = classic::select_with(req, &load, rule_positions)
        .with_context(|| format!("--backend {}", format!("{backend:?}").to_lowercase()))?;
    for (f, why) in &sel.rejected {
        eprintln!("iptrace capture: backend {f} unavailable: {why}");
    }
    match sel.chosen {
        Chosen::Classic(mut c) => {
            eprintln!(
                "iptrace capture: backend {} ({} attached)",
                c.flavour,
                c.attached.join(", ")
            );
            let functions = if rule_positions {
                Some(attach_rule_probes(&mut c)?)
            } else {
                None
            };
            let mut session = Session::attach_classic(opts, *c)?;
            if let Some(f) = functions {
                session.track_rule_positions(f);
            }
            Ok(session)
        }
        Chosen::Nfhook if rule_positions => {
            bail!("--rule-positions: neither fentry nor kprobe loads here (see above), and nfhook cannot see the x_tables match and target functions")
        }
        Chosen::Nfhook => {
            eprintln!("iptrace capture: backend nfhook");
            Session::attach_with(opts, mode)
        }
    }
}

/// Probes the x_tables functions of the extensions in use; returns their names.
fn attach_rule_probes(c: &mut crate::capture::classic::Classic) -> Result<Vec<String>> {
    let n = c
        .attach_rule_probes()
        .context("--rule-positions: attaching the x_tables match/target probes")?;
    if n == 0 {
        eprintln!("iptrace capture: warning: --rule-positions: no x_tables match or target function in use to probe (no legacy iptables rules loaded?); positions show only which tables ran");
    } else {
        eprintln!(
            "iptrace capture: rule positions: {n} x_tables functions probed ({})",
            c.rule_functions.join(", ")
        );
    }
    Ok(c.rule_functions.clone())
}

/// Buffered stdout, flushed at most 50 ms after a write (from the events and the session's timer).
struct Output {
    w: std::io::BufWriter<std::io::Stdout>,
    last: std::time::Instant,
}

impl Output {
    fn new() -> Self {
        Output {
            w: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()),
            last: std::time::Instant::now(),
        }
    }

    fn maybe_flush(&mut self) -> Result<()> {
        if self.last.elapsed() >= Duration::from_millis(50) {
            self.w.flush()?;
            self.last = std::time::Instant::now();
        }
        Ok(())
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

fn options(args: &Args) -> Result<CaptureOptions> {
    let filter_text = args.filter.join(" ");
    let filter = trace_core::filter::compile(&filter_text)
        .with_context(|| format!("filter `{filter_text}`"))?;
    if !args.ringbuf_size.is_power_of_two() || args.ringbuf_size < 4096 {
        bail!(
            "--ringbuf-size {}: must be a power of two >= 4096",
            args.ringbuf_size
        );
    }
    Ok(CaptureOptions {
        targets: plan::targets(&args.netns)?,
        filter,
        sample_n: args
            .sample
            .as_deref()
            .map(parse_sample)
            .transpose()?
            .unwrap_or(0),
        rate_limit: args
            .rate_limit
            .as_deref()
            .map(parse_rate)
            .transpose()?
            .unwrap_or(0),
        ringbuf_size: args.ringbuf_size,
        count: args.count,
        duration: args.duration.map(Duration::from_secs_f64),
    })
}

/// `1/N` → N.
fn parse_sample(s: &str) -> Result<u32> {
    match s.split_once('/') {
        Some(("1", n)) => n
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .with_context(|| format!("--sample {s}: N must be >= 1")),
        _ => bail!("--sample {s}: expected 1/N"),
    }
}

/// `N/s` (or `N`) → N.
fn parse_rate(s: &str) -> Result<u32> {
    let n = s.strip_suffix("/s").unwrap_or(s);
    n.parse::<u32>()
        .ok()
        .filter(|n| *n >= 1)
        .with_context(|| format!("--rate-limit {s}: expected N/s with N >= 1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Args {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("capture").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    /// --rule-positions is refused before anything loads where it cannot work, naming why.
    #[test]
    fn rule_positions_needs_a_classic_backend_and_the_rule_level_view() {
        let e = check_rule_positions(&parse(&["--rule-positions"])).unwrap_err();
        assert!(e.to_string().contains("fentry or kprobe"), "{e}");
        let e = check_rule_positions(&parse(&[
            "--rule-positions",
            "--backend",
            "kprobe",
            "--packets",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("--packets"), "{e}");
        for b in ["fentry", "kprobe", "auto"] {
            check_rule_positions(&parse(&["--rule-positions", "--backend", b])).unwrap();
        }
        check_rule_positions(&parse(&[])).unwrap();
    }

    #[test]
    fn parses_sample_and_rate() {
        assert_eq!(parse_sample("1/1000").unwrap(), 1000);
        assert!(parse_sample("2/1000").is_err());
        assert!(parse_sample("1/0").is_err());
        assert_eq!(parse_rate("500/s").unwrap(), 500);
        assert!(parse_rate("x/s").is_err());
    }
}
