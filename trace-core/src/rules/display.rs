//! Printing the model back as iptables-save text: a [`Rule`]'s options in iptables-save's
//! order (`-s -d -i -o -p -f`, matches, target), a [`Target`] with its options, and a whole
//! [`Ruleset`] as a dump that parses back to the same model (tested by round trip).

use super::lexer::quote;
use super::model::{Chain, Counters, IpNet, Negatable, Rule, Ruleset, TableDump};
use super::targets::{ConnmarkTarget, NatRange, Target};
use super::values::proto_name;
use std::fmt::{self, Display, Formatter, Write};

impl Display for IpNet {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.prefix_len() {
            Some(p) => write!(f, "{}/{}", self.addr, p),
            None => write!(f, "{}/{}", self.addr, self.mask),
        }
    }
}

/// `! -s 10.0.0.0/8 ` style: negation, option, value and a trailing space.
fn opt<T: Display>(out: &mut String, name: &str, v: &Option<Negatable<T>>) {
    if let Some(v) = v {
        let bang = if v.negated { "! " } else { "" };
        let _ = write!(out, "{bang}{name} {} ", quote(&v.value.to_string()));
    }
}

impl Rule {
    /// The rule's options as iptables-save prints them (without `-A CHAIN`).
    pub fn to_save_text(&self) -> String {
        let mut out = String::new();
        opt(&mut out, "-s", &self.src);
        opt(&mut out, "-d", &self.dst);
        opt(&mut out, "-i", &self.in_iface);
        opt(&mut out, "-o", &self.out_iface);
        if let Some(p) = &self.protocol {
            let bang = if p.negated { "! " } else { "" };
            let _ = write!(out, "{bang}-p {} ", proto_name(p.value));
        }
        if let Some(f) = &self.fragment {
            out.push_str(if f.negated { "! -f " } else { "-f " });
        }
        for m in &self.matches {
            let _ = write!(out, "-m {} ", quote(&m.module));
            for a in &m.args {
                let word = if a == "!" { a.clone() } else { quote(a) };
                let _ = write!(out, "{word} ");
            }
        }
        out.push_str(&self.target.to_save_text());
        out.trim_end().to_string()
    }
}

impl Target {
    /// `-j NAME options` / `-g CHAIN`; empty for [`Target::None`].
    pub fn to_save_text(&self) -> String {
        let mut out = match self {
            Target::None => return String::new(),
            Target::Goto(c) => return format!("-g {}", quote(c)),
            _ => format!("-j {}", quote(self.name())),
        };
        for word in self.option_words() {
            out.push(' ');
            out.push_str(&word);
        }
        out
    }

    /// The option words after `-j NAME`, already quoted where needed.
    fn option_words(&self) -> Vec<String> {
        let mut w = Words::default();
        match self {
            Target::Dnat(t) | Target::Snat(t) => {
                let opt = if matches!(self, Target::Dnat(_)) {
                    "--to-destination"
                } else {
                    "--to-source"
                };
                t.to.iter().for_each(|r| w.val(opt, nat_range(r)));
                w.flag(t.random, "--random")
                    .flag(t.random_fully, "--random-fully")
                    .flag(t.persistent, "--persistent");
            }
            Target::Masquerade(t) | Target::Redirect(t) => {
                if let Some(p) = t.to_ports {
                    w.val("--to-ports", port_range(p.lo, p.hi));
                }
                w.flag(t.random, "--random")
                    .flag(t.random_fully, "--random-fully");
            }
            Target::Netmap { to } => w.val("--to", to.to_string()),
            Target::Mark(m) => w.val("--set-xmark", format!("{:#x}/{:#x}", m.value, m.mask)),
            Target::Connmark(c) => connmark_words(&mut w, c),
            Target::Ct(t) => {
                w.flag(t.notrack, "--notrack");
                t.zone.iter().for_each(|z| w.val("--zone", z.to_string()));
                t.helper.iter().for_each(|h| w.val("--helper", h.clone()));
            }
            Target::Log(l) => {
                l.prefix
                    .iter()
                    .for_each(|p| w.val("--log-prefix", p.clone()));
                l.level.iter().for_each(|p| w.val("--log-level", p.clone()));
                w.flag(l.tcp_sequence, "--log-tcp-sequence")
                    .flag(l.tcp_options, "--log-tcp-options");
                w.flag(l.ip_options, "--log-ip-options")
                    .flag(l.uid, "--log-uid")
                    .flag(l.macdecode, "--log-macdecode");
            }
            Target::Nflog(n) => {
                n.prefix
                    .iter()
                    .for_each(|p| w.val("--nflog-prefix", p.clone()));
                n.group
                    .iter()
                    .for_each(|g| w.val("--nflog-group", g.to_string()));
                n.range
                    .iter()
                    .for_each(|r| w.val("--nflog-range", r.to_string()));
                n.threshold
                    .iter()
                    .for_each(|t| w.val("--nflog-threshold", t.to_string()));
            }
            Target::Reject { with } => with.iter().for_each(|r| w.val("--reject-with", r.clone())),
            Target::Tproxy(t) => {
                w.val("--on-port", t.on_port.to_string());
                t.on_ip
                    .iter()
                    .for_each(|ip| w.val("--on-ip", ip.to_string()));
                t.mark
                    .iter()
                    .for_each(|m| w.val("--tproxy-mark", format!("{:#x}/{:#x}", m.value, m.mask)));
            }
            Target::Nfqueue { num, bypass } => {
                w.val("--queue-num", num.to_string());
                w.flag(*bypass, "--queue-bypass");
            }
            Target::Checksum => w.word("--checksum-fill"),
            Target::TcpMss { set_mss: Some(m) } => w.val("--set-mss", m.to_string()),
            Target::TcpMss { set_mss: None } => w.word("--clamp-mss-to-pmtu"),
            Target::Dscp(d) => w.val("--set-dscp", format!("{d:#04x}")),
            Target::Tos(t) => w.val("--set-tos", format!("{:#x}/{:#x}", t.value, t.mask)),
            Target::Set(s) => {
                for (opt, set) in [("--add-set", &s.add), ("--del-set", &s.del)] {
                    if let Some((name, flags)) = set {
                        w.val(opt, name.clone());
                        w.word(&set_flags(flags));
                    }
                }
                w.flag(s.exist, "--exist");
                s.timeout
                    .iter()
                    .for_each(|t| w.val("--timeout", t.to_string()));
            }
            Target::Classify(c) => w.val("--set-class", format!("{:x}:{:x}", c >> 16, c & 0xffff)),
            Target::Unknown { args, .. } => args
                .iter()
                .for_each(|a| w.0.push(if a == "!" { a.clone() } else { quote(a) })),
            _ => {}
        }
        w.0
    }
}

/// Accumulates option words.
#[derive(Default)]
struct Words(Vec<String>);

impl Words {
    fn word(&mut self, w: &str) {
        self.0.push(w.to_string());
    }

    fn val(&mut self, opt: &str, v: String) {
        self.0.push(opt.to_string());
        self.0.push(quote(&v));
    }

    fn flag(&mut self, on: bool, opt: &str) -> &mut Self {
        if on {
            self.word(opt);
        }
        self
    }
}

fn connmark_words(w: &mut Words, c: &ConnmarkTarget) {
    match c {
        ConnmarkTarget::Set { value, mask } => {
            w.val("--set-xmark", format!("{value:#x}/{mask:#x}"))
        }
        ConnmarkTarget::Save { nfmask, ctmask } | ConnmarkTarget::Restore { nfmask, ctmask } => {
            w.word(if matches!(c, ConnmarkTarget::Save { .. }) {
                "--save-mark"
            } else {
                "--restore-mark"
            });
            w.val("--nfmask", format!("{nfmask:#x}"));
            w.val("--ctmask", format!("{ctmask:#x}"));
        }
    }
}

fn set_flags(flags: &[bool]) -> String {
    flags
        .iter()
        .map(|s| if *s { "src" } else { "dst" })
        .collect::<Vec<_>>()
        .join(",")
}

fn port_range(lo: u32, hi: u32) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

fn nat_range(r: &NatRange) -> String {
    let mut s = String::new();
    let v6 = r.addr.is_some_and(|(a, _)| a.is_ipv6());
    if let Some((a, b)) = r.addr {
        let addr = if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        };
        s = if v6 && r.ports.is_some() {
            format!("[{addr}]")
        } else {
            addr
        };
    }
    if let Some(p) = r.ports {
        let _ = write!(s, ":{}", port_range(p.lo, p.hi));
    }
    s
}

/// ` [p:b]` when counted.
fn counters(c: &Option<Counters>) -> String {
    c.map_or(String::new(), |c| format!(" [{}:{}]", c.packets, c.bytes))
}

impl Display for Chain {
    /// The declaration line `:NAME POLICY [p:b]`.
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let policy = self.policy.map_or("-", |p| p.as_str());
        write!(f, ":{} {}{}", self.name, policy, counters(&self.counters))
    }
}

impl Display for TableDump {
    /// `*table`, the chain declarations, the rules (`[p:b] -A` when counted), `COMMIT`.
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(f, "*{}", self.table)?;
        for c in &self.chains {
            writeln!(f, "{c}")?;
        }
        for c in &self.chains {
            for r in &c.rules {
                if let Some(k) = &r.counters {
                    write!(f, "[{}:{}] ", k.packets, k.bytes)?;
                }
                let text = r.to_save_text();
                let sep = if text.is_empty() { "" } else { " " };
                writeln!(f, "-A {}{sep}{text}", c.name)?;
            }
        }
        writeln!(f, "COMMIT")
    }
}

impl Display for Ruleset {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        self.tables.iter().try_for_each(|t| write!(f, "{t}"))
    }
}
