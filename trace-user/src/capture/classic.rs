//! Loading the `fentry` and `kprobe` backends (issue 6): programs on nf_hook_slow, the table
//! functions and nf_nat_inet_fn (trace-ebpf's fentry.rs / kprobe.rs, bodies in tables.rs),
//! plus nfhook's tp_btf kfree_skb drop reporter — same maps, records, filter, sampling and
//! tracking as nfhook, so the collector's decoding and assembly are shared.
//!
//! - aya creates the maps, patches the read-only globals (OFFSETS, CONFIG, TABLE_OFFSETS),
//!   and loads/attaches kfree_skb and the kprobes (by symbol name: module functions work);
//! - fentry/fexit programs are loaded by [`super::fentry`] with raw BPF_PROG_LOAD, because
//!   functions in modules need attach_btf_obj_fd (aya 0.14 only knows vmlinux BTF).
//!
//! Which functions exist, where their BTF lives and the table structs' offsets come from
//! [`super::modbtf`]; `nf_hook_slow` is required, a missing table function (module not
//! loaded) is reported in [`Classic::skipped`] and that table's positions stay silent.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use aya::maps::{Array, MapData, PerCpuArray};

use super::ringread::EventRing;
use aya::programs::KProbe;
use aya::{Ebpf, EbpfLoader};
use trace_common::filter::FilterProgram;
use trace_common::record::{Counters, KernelOffsets, TableOffsets};
use trace_core::assemble::{HookPlan, ProbePlan, StageSlot};
use trace_core::netfilter::{Family, Hook};
use trace_core::packet::Stage;

use super::btf::Btf;
use super::loader::{
    attach_kfree_skb, drop_reasons, hide_netfilter_sections, kernel_offsets, probe_config,
    sum_counters, LoadOptions,
};
use super::modbtf::{KernelBtf, ModBtfError};
use super::object;
use super::xtpos::XtFunction;

/// The record position of nf_hook_slow's entry (trace-ebpf tables::PRIO_HOOK_ENTRY).
pub const PRIO_HOOK_ENTRY: i32 = i32::MIN + 1;
/// The record position of nf_hook_slow's exit when the hook accepted the packet (trace-ebpf
/// tables::PRIO_HOOK_EXIT): after every stage of the hook. Other verdicts are
/// HookVerdictRecords (see [`super::hookverdict`]).
pub const PRIO_HOOK_EXIT: i32 = i32::MAX;

/// The two backends this module loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Fentry,
    Kprobe,
}

impl std::fmt::Display for Flavour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flavour::Fentry => "fentry",
            Flavour::Kprobe => "kprobe",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClassicError {
    #[error(transparent)]
    Load(#[from] super::loader::LoadError),
    #[error(transparent)]
    Btf(#[from] super::btf::BtfError),
    #[error(transparent)]
    ModBtf(#[from] ModBtfError),
    #[error("aya: {0}")]
    Aya(String),
    #[error("{flavour} backend: {what}")]
    Unavailable { flavour: Flavour, what: String },
    #[error(transparent)]
    Fentry(#[from] super::fentry::FentryError),
}

fn aya_err(e: impl std::fmt::Display) -> ClassicError {
    ClassicError::Aya(e.to_string())
}

/// The kprobe/kretprobe program `name` of the object.
fn kprobe_program<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut KProbe, ClassicError> {
    ebpf.program_mut(name)
        .ok_or_else(|| aya_err(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(aya_err)
}

/// A netfilter function and the programs of each flavour on it.
pub struct Target {
    pub function: &'static str,
    /// (entry program, exit program) in the fentry flavour.
    pub fentry: (&'static str, Option<&'static str>),
    /// (kprobe, kretprobe).
    pub kprobe: (&'static str, Option<&'static str>),
    /// Module whose BTF holds it on modular kernels.
    pub module: &'static str,
    pub required: bool,
}

pub const TARGETS: &[Target] = &[
    Target {
        function: "nf_hook_slow",
        fentry: ("fentry_nf_hook_slow", Some("fexit_nf_hook_slow")),
        kprobe: ("kprobe_nf_hook_slow", Some("kretprobe_nf_hook_slow")),
        module: "vmlinux",
        required: true,
    },
    Target {
        function: "ipt_do_table",
        fentry: ("fentry_ipt_do_table", Some("fexit_ipt_do_table")),
        kprobe: ("kprobe_ipt_do_table", Some("kretprobe_table")),
        module: "ip_tables",
        required: false,
    },
    Target {
        function: "ip6t_do_table",
        fentry: ("fentry_ip6t_do_table", Some("fexit_ip6t_do_table")),
        kprobe: ("kprobe_ipt_do_table", Some("kretprobe_table")),
        module: "ip6_tables",
        required: false,
    },
    Target {
        function: "nft_do_chain",
        fentry: ("fentry_nft_do_chain", Some("fexit_nft_do_chain")),
        kprobe: ("kprobe_nft_do_chain", Some("kretprobe_table")),
        module: "nf_tables",
        required: false,
    },
    Target {
        function: "nf_nat_inet_fn",
        fentry: ("fentry_nf_nat_inet_fn", Some("fexit_nf_nat_inet_fn")),
        kprobe: ("kprobe_nf_nat_inet_fn", Some("kretprobe_nf_nat_inet_fn")),
        module: "nf_nat",
        required: false,
    },
];

/// A loaded and attached fentry or kprobe capture.
pub struct Classic {
    pub flavour: Flavour,
    ebpf: Ebpf,
    /// fentry/fexit links (closing them detaches).
    _links: Vec<OwnedFd>,
    /// enum skb_drop_reason value → name without the SKB_DROP_REASON_ prefix.
    pub drop_reasons: HashMap<u32, String>,
    /// Functions attached.
    pub attached: Vec<String>,
    /// Functions not attached, with the reason (module not loaded, ...).
    pub skipped: Vec<(String, String)>,
    pub table_offsets: TableOffsets,
    /// x_tables match/target functions the rule-position probes are attached to.
    pub rule_functions: Vec<String>,
    /// The fentry flavour's relocated programs, kept for the rule-position loads (relocating
    /// needs every map, and the ring buffer map leaves the object with `take_events`).
    fentry_progs: Option<super::fentry::Programs>,
}

impl Classic {
    /// Load and attach everything; an error says why this backend cannot work here.
    pub fn load(flavour: Flavour, opts: &LoadOptions) -> Result<Classic, ClassicError> {
        Classic::load_with(flavour, opts, false)
    }

    /// [`Classic::load`]; `rule_positions`: the table probes also report the rule blob's
    /// address ([`trace_common::record::XtRecord`], kind XT: split those off before
    /// `trace_core::decode`, resolve them with [`super::xtpos::positions`]), for
    /// [`Classic::attach_rule_probes`].
    pub fn load_with(
        flavour: Flavour,
        opts: &LoadOptions,
        rule_positions: bool,
    ) -> Result<Classic, ClassicError> {
        let kbtf = Btf::from_sys()?;
        let offsets: KernelOffsets = kernel_offsets(&kbtf)?;
        let drop_reasons = drop_reasons(&kbtf);
        let vmlinux = KernelBtf::vmlinux()?;
        let (mut table_offsets, btfs) = table_offsets(&vmlinux)?;
        if !rule_positions {
            table_offsets.have_xtpos = 0;
        }
        let config = probe_config(opts);
        let elf =
            hide_netfilter_sections(object::bytes().map_err(super::loader::LoadError::from)?)?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", opts.ringbuf_size)
            .override_global("OFFSETS", &offsets, true)
            .override_global("CONFIG", &config, true)
            .override_global("TABLE_OFFSETS", &table_offsets, true)
            .load(&elf)
            .map_err(aya_err)?;
        let mut filter: Array<&mut MapData, FilterProgram> = Array::try_from(
            ebpf.map_mut("FILTER")
                .ok_or_else(|| aya_err("map FILTER missing"))?,
        )
        .map_err(aya_err)?;
        filter.set(0, opts.filter, 0).map_err(aya_err)?;
        attach_kfree_skb(&mut ebpf)?;
        let mut c = Classic {
            flavour,
            ebpf,
            _links: Vec::new(),
            drop_reasons,
            attached: Vec::new(),
            skipped: Vec::new(),
            table_offsets,
            rule_functions: Vec::new(),
            fentry_progs: None,
        };
        match flavour {
            Flavour::Kprobe => c.attach_kprobes()?,
            Flavour::Fentry => c.attach_fentry(&elf, &vmlinux, &btfs)?,
        }
        Ok(c)
    }

    fn attach_kprobes(&mut self) -> Result<(), ClassicError> {
        let syms = kallsyms_functions();
        let mut loaded: Vec<&str> = Vec::new();
        for t in TARGETS {
            if !syms.contains(t.function) {
                self.skip(t, "not in /proc/kallsyms (module not loaded?)")?;
                continue;
            }
            let progs = [Some(t.kprobe.0), t.kprobe.1];
            for name in progs.into_iter().flatten() {
                let prog = kprobe_program(&mut self.ebpf, name)?;
                if !loaded.contains(&name) {
                    prog.load().map_err(|e| ClassicError::Unavailable {
                        flavour: Flavour::Kprobe,
                        what: format!("loading {name}: {e}"),
                    })?;
                    loaded.push(name);
                }
                prog.attach(t.function, 0)
                    .map_err(|e| ClassicError::Unavailable {
                        flavour: Flavour::Kprobe,
                        what: format!(
                            "attaching {name} to {}: {e} (kernel without CONFIG_KPROBES?)",
                            t.function
                        ),
                    })?;
            }
            self.attached.push(t.function.to_string());
        }
        Ok(())
    }

    fn attach_fentry(
        &mut self,
        elf: &[u8],
        vmlinux: &KernelBtf,
        btfs: &HashMap<&str, KernelBtf>,
    ) -> Result<(), ClassicError> {
        let mut prog_set = super::fentry::Programs::new(elf, &self.ebpf)?;
        for t in TARGETS {
            let btf = if t.module == "vmlinux" {
                Some(vmlinux)
            } else {
                btfs.get(t.module)
            };
            let found = btf
                .and_then(|b| b.func(t.function))
                .or_else(|| vmlinux.func(t.function));
            let Some((btf_id, module)) = found else {
                self.skip(
                    t,
                    &format!("no BTF for it (module {} not loaded?)", t.module),
                )?;
                continue;
            };
            let progs = [(t.fentry.0, false), (t.fentry.1.unwrap_or(""), true)];
            for (name, exit) in progs.into_iter().filter(|(n, _)| !n.is_empty()) {
                let link =
                    prog_set.load_and_attach(name, t.function, btf_id, module.as_deref(), exit)?;
                self._links.push(link);
            }
            self.attached.push(t.function.to_string());
        }
        self.fentry_progs = Some(prog_set);
        Ok(())
    }

    /// Rule positions: attach the match/target probes to the x_tables match and target
    /// functions of the extensions the loaded rulesets use (see
    /// [`super::xtpos::xt_functions`], [`super::xtpos::modules_in_use`]): kprobe + kretprobe
    /// on matches and a kprobe on targets, or fexit on matches (it has the result) and fentry
    /// on targets, each loaded with its module's BTF object. Returns how many functions were
    /// attached; one that refuses the probe is skipped with a warning.
    pub fn attach_rule_probes(&mut self) -> Result<usize, ClassicError> {
        if self.table_offsets.have_xtpos == 0 {
            return Err(ClassicError::Unavailable {
                flavour: self.flavour,
                what:
                    "not loaded with rule_positions, or no xt_table/xt_action_param offsets in BTF"
                        .into(),
            });
        }
        let used = super::xtpos::modules_in_use(
            &std::fs::read_to_string("/proc/modules").unwrap_or_default(),
        );
        let (matches, targets) = super::xtpos::xt_functions(
            &std::fs::read_to_string("/proc/kallsyms").unwrap_or_default(),
            |m| used.contains(m),
        );
        match self.flavour {
            Flavour::Kprobe => self.attach_rule_kprobes(&matches, &targets),
            Flavour::Fentry => self.attach_rule_fentry(&matches, &targets),
        }
    }

    fn attach_rule_kprobes(
        &mut self,
        matches: &[XtFunction],
        targets: &[XtFunction],
    ) -> Result<usize, ClassicError> {
        let mut n = 0;
        for (progs, funcs) in [
            (&["kprobe_xt_match", "kretprobe_xt_match"][..], matches),
            (&["kprobe_xt_target"][..], targets),
        ] {
            for f in funcs {
                let mut ok = true;
                for name in progs {
                    let prog = kprobe_program(&mut self.ebpf, name)?;
                    if prog.fd().is_err() {
                        prog.load().map_err(aya_err)?;
                    }
                    if let Err(e) = prog.attach(&f.name, 0) {
                        log::warn!("rule positions: {name} on {}: {e}", f.name);
                        ok = false;
                    }
                }
                if ok {
                    self.rule_functions.push(f.name.clone());
                }
                n += ok as usize;
            }
        }
        Ok(n)
    }

    /// One fexit_xt_match / fentry_xt_target load per function (a tracing program names its
    /// target at load time), with the BTF of the function's module (read once per module).
    fn attach_rule_fentry(
        &mut self,
        matches: &[XtFunction],
        targets: &[XtFunction],
    ) -> Result<usize, ClassicError> {
        let Some(mut progs) = self.fentry_progs.take() else {
            return Err(ClassicError::Unavailable {
                flavour: self.flavour,
                what: "fentry programs not loaded".into(),
            });
        };
        let n = self.attach_rule_fentry_with(&mut progs, matches, targets);
        self.fentry_progs = Some(progs);
        n
    }

    fn attach_rule_fentry_with(
        &mut self,
        progs: &mut super::fentry::Programs,
        matches: &[XtFunction],
        targets: &[XtFunction],
    ) -> Result<usize, ClassicError> {
        let vmlinux = KernelBtf::vmlinux()?;
        let mut module_btf: HashMap<String, Option<KernelBtf>> = HashMap::new();
        let mut n = 0;
        for (prog, exit, funcs) in [
            ("fexit_xt_match", true, matches),
            ("fentry_xt_target", false, targets),
        ] {
            for f in funcs {
                let btf = match &f.module {
                    None => Some(&vmlinux),
                    Some(m) => {
                        if !module_btf.contains_key(m) {
                            module_btf.insert(m.clone(), vmlinux.with_module(m)?);
                        }
                        module_btf[m].as_ref()
                    }
                };
                let Some((btf_id, module)) = btf.and_then(|b| b.func(&f.name)) else {
                    log::warn!("rule positions: no BTF for {} ({:?})", f.name, f.module);
                    continue;
                };
                match progs.load_and_attach(prog, &f.name, btf_id, module.as_deref(), exit) {
                    Ok(link) => {
                        self._links.push(link);
                        self.rule_functions.push(f.name.clone());
                        n += 1;
                    }
                    Err(e) => log::warn!("rule positions: {prog} on {}: {e}", f.name),
                }
            }
        }
        Ok(n)
    }

    fn skip(&mut self, t: &Target, why: &str) -> Result<(), ClassicError> {
        if t.required {
            return Err(ClassicError::Unavailable {
                flavour: self.flavour,
                what: format!("{}: {why}", t.function),
            });
        }
        self.skipped.push((t.function.to_string(), why.to_string()));
        Ok(())
    }

    /// Record only packets in these network namespaces (inodes); without a call, every
    /// namespace (the programs are global, unlike nfhook's per-netns links).
    pub fn restrict_netns(&mut self, inodes: &[u32]) -> Result<(), ClassicError> {
        let mut set: aya::maps::HashMap<&mut MapData, u32, u8> = aya::maps::HashMap::try_from(
            self.ebpf
                .map_mut("NETNS")
                .ok_or_else(|| aya_err("map NETNS missing"))?,
        )
        .map_err(aya_err)?;
        for i in inodes {
            set.insert(i, 1, 0).map_err(aya_err)?;
        }
        let mut on: Array<&mut MapData, u32> = Array::try_from(
            self.ebpf
                .map_mut("NETNS_ON")
                .ok_or_else(|| aya_err("map NETNS_ON missing"))?,
        )
        .map_err(aya_err)?;
        on.set(0, 1, 0).map_err(aya_err)?;
        Ok(())
    }

    /// The ring buffer (taken once, by the reader).
    pub fn take_events(&mut self) -> Result<EventRing, ClassicError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| aya_err("map EVENTS missing"))?;
        EventRing::from_map(map).map_err(aya_err)
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, ClassicError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or_else(|| aya_err("map COUNTERS missing"))?;
        let arr: PerCpuArray<&MapData, Counters> = PerCpuArray::try_from(map).map_err(aya_err)?;
        let per_cpu = arr.get(&0, 0).map_err(aya_err)?;
        Ok(sum_counters(&per_cpu))
    }
}

/// What the collector needs from any loaded backend (nfhook's `Loaded` or [`Classic`]): one
/// ring buffer, the counters, the drop-reason names — so a session can hold either.
pub trait EventSource {
    fn take_events(&mut self) -> anyhow::Result<EventRing>;
    fn counters(&self) -> anyhow::Result<Counters>;
    fn drop_reasons(&self) -> &HashMap<u32, String>;
    /// nfhook's programs, to link more probes during a capture (re-planning).
    fn as_nfhook(&mut self) -> Option<&mut super::loader::Loaded> {
        None
    }
}

impl EventSource for Classic {
    fn take_events(&mut self) -> anyhow::Result<EventRing> {
        Ok(Classic::take_events(self)?)
    }
    fn counters(&self) -> anyhow::Result<Counters> {
        Ok(Classic::counters(self)?)
    }
    fn drop_reasons(&self) -> &HashMap<u32, String> {
        &self.drop_reasons
    }
}

impl EventSource for super::loader::Loaded {
    fn take_events(&mut self) -> anyhow::Result<EventRing> {
        Ok(super::loader::Loaded::take_events(self)?)
    }
    fn counters(&self) -> anyhow::Result<Counters> {
        Ok(super::loader::Loaded::counters(self)?)
    }
    fn drop_reasons(&self) -> &HashMap<u32, String> {
        &self.drop_reasons
    }
    fn as_nfhook(&mut self) -> Option<&mut super::loader::Loaded> {
        Some(self)
    }
}

/// `--backend` as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    Auto,
    Fentry,
    Kprobe,
    Nfhook,
}

/// The backend `select` settled on.
pub enum Chosen {
    /// fentry or kprobe, loaded and attached.
    Classic(Box<Classic>),
    /// nfhook: the caller attaches it (netfilter links per netns); if that fails too, its error
    /// is the final reason.
    Nfhook,
}

/// The choice and why each better backend was passed over (for `doctor` and the log).
pub struct Selection {
    pub chosen: Chosen,
    pub rejected: Vec<(Flavour, String)>,
}

/// `--backend auto` tries fentry, then kprobe, by actually loading and attaching them, and
/// falls back to nfhook; an explicit fentry/kprobe that cannot work is an error with the reason.
pub fn select(req: Requested, opts: &LoadOptions) -> Result<Selection, ClassicError> {
    select_with(req, opts, false)
}

/// [`select`], loading the fentry/kprobe backend with `rule_positions` ([`Classic::load_with`]).
pub fn select_with(
    req: Requested,
    opts: &LoadOptions,
    rule_positions: bool,
) -> Result<Selection, ClassicError> {
    let order: &[Flavour] = match req {
        Requested::Auto => &[Flavour::Fentry, Flavour::Kprobe],
        Requested::Fentry => &[Flavour::Fentry],
        Requested::Kprobe => &[Flavour::Kprobe],
        Requested::Nfhook => &[],
    };
    let mut rejected = Vec::new();
    for &f in order {
        match Classic::load_with(f, opts, rule_positions) {
            Ok(c) => {
                return Ok(Selection {
                    chosen: Chosen::Classic(Box::new(c)),
                    rejected,
                })
            }
            Err(e) if req == Requested::Auto => rejected.push((f, e.to_string())),
            Err(e) => return Err(e),
        }
    }
    Ok(Selection {
        chosen: Chosen::Nfhook,
        rejected,
    })
}

/// Text symbols of /proc/kallsyms (module functions included).
fn kallsyms_functions() -> std::collections::HashSet<String> {
    std::fs::read_to_string("/proc/kallsyms")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (_, ty, name) = (it.next()?, it.next()?, it.next()?);
            matches!(ty, "t" | "T").then(|| name.to_string())
        })
        .collect()
}

/// Offsets of xt_table / nft_pktinfo / nft_base_chain and ipt_do_table's argument order,
/// from vmlinux or the modules' split BTF; also returns the module BTFs read.
pub fn table_offsets(
    vmlinux: &KernelBtf,
) -> Result<(TableOffsets, HashMap<&'static str, KernelBtf>), ModBtfError> {
    let mut btfs = HashMap::new();
    for m in ["x_tables", "ip_tables", "ip6_tables", "nf_tables", "nf_nat"] {
        if let Some(b) = vmlinux.with_module(m)? {
            btfs.insert(m, b);
        }
    }
    let lookup = |ty: &str, path: &str, modules: &[&str]| -> Option<u32> {
        vmlinux.offset(ty, path).ok().or_else(|| {
            modules
                .iter()
                .find_map(|m| btfs.get(m)?.offset(ty, path).ok())
        })
    };
    let mut o = TableOffsets::default();
    if let Some(name) = lookup("xt_table", "name", &["x_tables", "ip_tables"]) {
        o.xt_table_name = name;
        let params = vmlinux
            .func_params("ipt_do_table")
            .or_else(|| btfs.get("ip_tables")?.func_params("ipt_do_table"));
        // Linux >= 5.16: ipt_do_table(void *priv, struct sk_buff *skb, const struct nf_hook_state *state).
        o.ipt_priv_first =
            params.is_none_or(|p| p.first().map(String::as_str) != Some("skb")) as u32;
        o.have_xt = 1;
    }
    let pos = (
        lookup("xt_table", "private", &["x_tables", "ip_tables"]),
        lookup("xt_table_info", "entries", &["x_tables", "ip_tables"]),
        lookup("xt_action_param", "matchinfo", &["x_tables", "ip_tables"]),
    );
    if let (Some(private), Some(entries), Some(matchinfo)) = pos {
        o.xt_table_private = private;
        o.xt_info_entries = entries;
        o.par_matchinfo = matchinfo;
        o.have_xtpos = o.have_xt;
    }
    let nft = (
        lookup("nft_pktinfo", "skb", &["nf_tables"]),
        lookup("nft_pktinfo", "state", &["nf_tables"]),
        lookup("nft_base_chain", "chain", &["nf_tables"]),
        lookup("nft_base_chain", "ops.priority", &["nf_tables"]),
    );
    if let (Some(skb), Some(state), Some(chain), Some(prio)) = nft {
        o.pktinfo_skb = skb;
        o.pktinfo_state = state;
        o.base_chain_chain = chain;
        o.base_chain_priority = prio;
        o.have_nft = 1;
    }
    Ok((o, btfs))
}

/// The probe plan of these backends for one hook: the nf_hook_slow entry, then each table
/// (or nft base chain) bracketed at P (entry) and P + 1 (accepted), then (when there is a
/// table) the nf_hook_slow exit (the hook accepted), with the stages the kernel registers there (`stages`, e.g. from
/// capture::plan::stages). Conntrack confirm (INT_MAX) stays after the exit position in the
/// plan although it runs before the exit: the plan's ordering rule puts a probe at P before a
/// stage at P, and nothing but a netfilter drop can be attributed to it anyway.
pub fn hook_plan(stages: Vec<StageSlot>) -> HookPlan {
    let mut probes = vec![PRIO_HOOK_ENTRY];
    for s in &stages {
        if matches!(s.stage, Stage::Table { .. } | Stage::NftChain { .. }) {
            probes.push(s.priority);
            probes.push(s.priority.saturating_add(1));
        }
    }
    // The probes write the exit only after a table position saw the packet in the same call
    // (trace-ebpf tables::hook_exit): a hook without tables has no exit.
    if probes.len() > 1 {
        probes.push(PRIO_HOOK_EXIT);
    }
    HookPlan::new(probes, stages)
}

/// The whole plan for the namespaces in `regs` (netns inode → what is registered there).
pub fn probe_plan(regs: &[(u32, super::plan::Registered)]) -> ProbePlan {
    let mut plan = ProbePlan::new();
    for (netns, reg) in regs {
        for family in [Family::Ipv4, Family::Ipv6] {
            for hook in Hook::ALL {
                plan.insert(
                    *netns,
                    family,
                    hook,
                    hook_plan(super::plan::stages(reg, family, hook)),
                );
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace_common::filter::FilterProgram;
    use trace_core::netfilter::Table;

    #[test]
    fn plan_brackets_tables_not_conntrack() {
        let stages = HookPlan::iptables_stages(
            Hook::Prerouting,
            &[Table::Raw, Table::Mangle, Table::Nat],
            true,
        );
        let p = hook_plan(stages);
        assert_eq!(
            p.probes(),
            &[
                PRIO_HOOK_ENTRY,
                -300,
                -299,
                -150,
                -149,
                -100,
                -99,
                PRIO_HOOK_EXIT
            ]
        );
        // After the last table: nothing until the hook's exit.
        assert!(p.stages_between(-99, Some(PRIO_HOOK_EXIT)).is_empty());
        // Without tables (conntrack only): the entry alone, no exit.
        let bare = hook_plan(HookPlan::iptables_stages(Hook::Forward, &[], true));
        assert_eq!(bare.probes(), &[PRIO_HOOK_ENTRY]);
        // Between the raw exit and the mangle entry: conntrack, passed silently.
        assert_eq!(p.stages_between(-299, Some(-150)).len(), 1);
        assert_eq!(
            p.stages_between(-100, Some(-99))[0].stage,
            Stage::Table { table: Table::Nat }
        );
    }

    /// A forwarded packet as these backends report it (hook entry, each table bracketed, the
    /// hook's exit) assembles into one delivered traversal, every pass ending at the exit.
    #[test]
    fn forwarded_packet_with_hook_exits_is_one_traversal() {
        use trace_core::assemble::{Assembler, AssemblerConfig};
        use trace_core::event::{Event, Headers, ProbeEvent, L4};
        let reg = super::super::plan::Registered {
            ipv4: vec![Table::Raw, Table::Mangle, Table::Nat, Table::Filter],
            ipv6: vec![],
            nft: vec![],
        };
        let plan = probe_plan(&[(7, reg)]);
        let mut asm = Assembler::new(plan.clone(), AssemblerConfig::default());
        let headers = Headers {
            src: "192.168.64.5".parse().unwrap(),
            dst: "172.19.0.9".parse().unwrap(),
            proto: 6,
            len: 52,
            tos: 0,
            ttl: 64,
            id: 1,
            frag: 0x4000,
            flowlabel: 0,
            l4: L4::Other,
        };
        let mut ts = 100;
        let mut out = Vec::new();
        for hook in [Hook::Prerouting, Hook::Forward, Hook::Postrouting] {
            let probes = plan.get(7, Family::Ipv4, hook).unwrap().probes().to_vec();
            assert_eq!(probes.last(), Some(&PRIO_HOOK_EXIT));
            for p in probes {
                ts += 1;
                let e: ProbeEvent = serde_json::from_value(serde_json::json!({
                    "ts_ns": ts, "skb": 0xabc, "gen": 5, "netns": 7, "family": "ipv4",
                    "hook": hook, "priority": p, "in_ifindex": 0, "out_ifindex": 0,
                    "mark": 0, "ct": null, "headers": (ts == 101).then(|| headers.clone()),
                }))
                .unwrap();
                out.extend(asm.push(Event::Probe(e)));
            }
        }
        assert_eq!(out.len(), 1, "{out:#?}");
        let t = &out[0];
        assert_eq!(t.fate, trace_core::packet::Fate::Delivered);
        assert!(!t.incomplete);
        let hooks: Vec<Hook> = t.hooks.iter().map(|h| h.hook).collect();
        assert_eq!(hooks, [Hook::Prerouting, Hook::Forward, Hook::Postrouting]);
        for h in &t.hooks {
            assert_eq!(
                super::super::hookverdict::hook_verdict(t, h),
                super::super::hookverdict::HookVerdict::Accept
            );
        }
        assert_eq!(t.hooks[2].tables.len(), 2, "mangle, nat");
    }

    /// On a kernel that refuses them (this project's machines: no CONFIG_KPROBES, fentry
    /// EPERM) each explicit backend fails with a reason naming what failed, and auto falls
    /// back to nfhook listing both; where they work, they load. Needs root.
    #[test]
    fn explicit_backends_load_or_say_why_as_root() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED explicit_backends_load_or_say_why_as_root: needs root");
            return;
        }
        let opts = LoadOptions {
            ringbuf_size: 1 << 16,
            sample_n: 0,
            rate_limit: 0,
            filter: FilterProgram::match_all(),
        };
        for (req, f) in [
            (Requested::Fentry, Flavour::Fentry),
            (Requested::Kprobe, Flavour::Kprobe),
        ] {
            match select(req, &opts) {
                Ok(s) => assert!(
                    matches!(&s.chosen, Chosen::Classic(c) if c.flavour == f && c.attached.contains(&"nf_hook_slow".to_string()))
                ),
                Err(e) => {
                    let msg = e.to_string();
                    eprintln!("{f} unavailable here: {msg}");
                    assert!(
                        msg.contains("nf_hook_slow") || msg.contains(&f.to_string()),
                        "{msg}"
                    );
                }
            }
        }
        let auto = select(Requested::Auto, &opts).expect("auto never fails by itself");
        match auto.chosen {
            Chosen::Nfhook => assert_eq!(auto.rejected.len(), 2, "both classic backends tried"),
            Chosen::Classic(c) => {
                assert_eq!(auto.rejected.len(), (c.flavour == Flavour::Kprobe) as usize)
            }
        }
    }

    #[test]
    fn table_offsets_on_this_kernel() {
        let Ok(v) = KernelBtf::vmlinux() else {
            eprintln!("SKIPPED table_offsets_on_this_kernel: no vmlinux BTF");
            return;
        };
        let (o, _) = table_offsets(&v).unwrap();
        // This machine has ip_tables and nf_tables built in: everything from vmlinux.
        if v.func("ipt_do_table").is_some() {
            assert_eq!(o.have_xt, 1);
            assert_eq!(o.ipt_priv_first, 1);
        }
        if v.func("nft_do_chain").is_some() {
            assert_eq!(o.have_nft, 1);
            assert!(o.base_chain_chain > o.base_chain_priority);
        }
    }
}
