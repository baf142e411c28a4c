//! The nfhook probes of a capture, per traced netns: which priorities are linked (from
//! [`plan::hook_plan`]), attaching them, and adding probes when the rules change.
//!
//! With `--probes needed` an inert table (no rules, policy ACCEPT) has no probe after it. A
//! rule added to it during the capture must be bracketed from then on: the owner of the live
//! rule dumps (capture::rulelevel) sends each new dump's [`RuleView`] through the [`Replan`]
//! handle; on its timer the session attaches the probes the new view needs (probes are only
//! ever added during a session, never detached) and stamps the new plans with the
//! CLOCK_MONOTONIC time after the links exist. Assemblers put such a plan in force before the
//! first event captured at or after that time: a hook traversal that began before the links
//! existed is assembled with the plan it ran through. Until the change is noticed (the rule
//! dump interval plus a timer tick), packets are attributed with the old plan: a change made
//! by the newly non-inert table is attributed to the acting stage next to it.

use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use trace_core::assemble::{HookPlan, ProbePlan};
use trace_core::netfilter::{Family, Hook};

use super::link::{self, HookSpec};
use super::loader::Loaded;
use super::plan::{self, ProbeMode, Registered, RuleView, Target};
use super::session::monotonic_ns;

/// One hook's new plan (it replaces the one in force for that netns, family and hook).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanChange {
    pub netns: u32,
    pub family: Family,
    pub hook: Hook,
    pub plan: HookPlan,
}

/// Re-plan requests (new rule views) and results (plans in force from a time on), shared by
/// whoever notices rule changes and the session that attaches probes.
#[derive(Clone, Default)]
pub struct Replan(Arc<ReplanInner>);

#[derive(Default)]
struct ReplanInner {
    state: Mutex<ReplanState>,
    /// Results wait: lets per-event checks skip the lock.
    has_done: AtomicBool,
}

#[derive(Default)]
struct ReplanState {
    requests: Vec<(u32, RuleView)>,
    done: Vec<(u64, Vec<PlanChange>)>,
}

impl Replan {
    /// The rules of `netns` are now `view` (a new dump generation).
    pub fn request(&self, netns: u32, view: RuleView) {
        self.lock().requests.push((netns, view));
    }

    /// New plans, each with the CLOCK_MONOTONIC time from which it is in force, oldest first.
    pub fn take_done(&self) -> Vec<(u64, Vec<PlanChange>)> {
        if !self.0.has_done.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.0.has_done.store(false, Ordering::Release);
        std::mem::take(&mut self.lock().done)
    }

    fn take_requests(&self) -> Vec<(u32, RuleView)> {
        std::mem::take(&mut self.lock().requests)
    }

    fn push_done(&self, since_ns: u64, changes: Vec<PlanChange>) {
        self.lock().done.push((since_ns, changes));
        self.0.has_done.store(true, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplanState> {
        // A panic while holding it leaves plain data behind: keep using it.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The probes of one traced netns.
struct NsProbes {
    inode: u32,
    path: PathBuf,
    reg: Registered,
    plans: Vec<(Family, Hook, HookPlan)>,
    links: usize,
    /// The rules last planned with (None: not read, every stage bracketed).
    view: Option<RuleView>,
    /// When the native nft chains were last re-read.
    nft_read: Instant,
}

/// How often inert native nft chains are re-read: their rules are not in the iptables dumps
/// whose changes trigger a re-plan.
const NFT_POLL: Duration = Duration::from_secs(1);

/// Every netns's probes and their links (closing a link detaches its probe).
pub struct ProbeSet {
    mode: ProbeMode,
    netns: Vec<NsProbes>,
    links: Vec<OwnedFd>,
    replan: Replan,
}

impl ProbeSet {
    pub fn new(mode: ProbeMode) -> ProbeSet {
        ProbeSet {
            mode,
            netns: Vec::new(),
            links: Vec::new(),
            replan: Replan::default(),
        }
    }

    /// The handle through which rule changes reach [`ProbeSet::replan`].
    pub fn replan_handle(&self) -> Replan {
        self.replan.clone()
    }

    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Links in netns `inode` (added ones included).
    pub fn links_in(&self, inode: u32) -> usize {
        self.netns
            .iter()
            .find(|n| n.inode == inode)
            .map_or(0, |n| n.links)
    }

    /// Discover what `t` registers, plan from its current rules, link the probes there and
    /// add the plans to `plan`. Returns (netns inode, links made).
    pub fn attach(
        &mut self,
        loaded: &mut Loaded,
        t: &Target,
        plan: &mut ProbePlan,
    ) -> Result<(u32, usize)> {
        let inode = crate::netns::inode_of(&t.path)? as u32;
        let reg = plan::discover(&t.path)?;
        let view = current_view(inode, &t.path);
        let plans = plans_for(&reg, view.as_ref(), self.mode);
        let specs = link_specs(loaded, &plans, |_, _, _| true)?;
        let n = self.link(&t.path, specs)?;
        for (family, hook, hp) in &plans {
            plan.insert(inode, *family, *hook, hp.clone());
        }
        self.netns.push(NsProbes {
            inode,
            path: t.path.clone(),
            reg,
            plans,
            links: n,
            view,
            nft_read: Instant::now(),
        });
        Ok((inode, n))
    }

    /// Handles the pending rule changes: links the probes their views need in addition, and
    /// publishes the changed plans (in force from now on) to the [`Replan`] handle and
    /// returns them. Failures are logged: the capture goes on with the old plan.
    pub fn replan(&mut self, loaded: &mut Loaded) -> Option<(u64, Vec<PlanChange>)> {
        if self.mode == ProbeMode::All {
            return None;
        }
        self.poll_nft();
        let requests = self.replan.take_requests();
        if requests.is_empty() {
            return None;
        }
        let mut changes = Vec::new();
        for (inode, view) in requests {
            match self.replan_ns(loaded, inode, &view) {
                Ok(c) => changes.extend(c),
                Err(e) => {
                    log::warn!("netns {inode}: probes not re-planned after a rule change: {e:#}")
                }
            }
        }
        if changes.is_empty() {
            return None;
        }
        let since = monotonic_ns();
        self.replan.push_done(since, changes.clone());
        Some((since, changes))
    }

    fn replan_ns(
        &mut self,
        loaded: &mut Loaded,
        inode: u32,
        view: &RuleView,
    ) -> Result<Vec<PlanChange>> {
        let Some(i) = self.netns.iter().position(|n| n.inode == inode) else {
            return Ok(Vec::new());
        };
        let started = Instant::now();
        let ns = &mut self.netns[i];
        plan::refresh_nft(&mut ns.reg, &ns.path);
        ns.nft_read = Instant::now();
        ns.view = Some(view.clone());
        let fresh = plans_for(&ns.reg, Some(view), self.mode);
        let merged: Vec<(Family, Hook, HookPlan)> = fresh
            .iter()
            .map(|(f, h, new)| {
                let old = ns.plans.iter().find(|(of, oh, _)| of == f && oh == h);
                let plan = old.map_or_else(|| new.clone(), |(_, _, o)| o.merged_with(new));
                (*f, *h, plan)
            })
            .collect();
        let old = std::mem::replace(&mut ns.plans, merged.clone());
        let had = |f: Family, h: Hook, p: i32| {
            old.iter()
                .any(|(of, oh, o)| *of == f && *oh == h && o.has_probe(p))
        };
        let path = ns.path.clone();
        let specs = link_specs(loaded, &merged, |f, h, p| !had(f, h, p))?;
        let n = self.link(&path, specs)?;
        self.netns[i].links += n;
        if n > 0 {
            // The collector's loop waits meanwhile (program loads are verified): say how long.
            log::info!(
                "netns {inode}: rules changed, {n} probes added in {} ms",
                started.elapsed().as_millis()
            );
        }
        Ok(merged
            .into_iter()
            .filter(|(f, h, p)| !old.iter().any(|(of, oh, o)| of == f && oh == h && o == p))
            .map(|(family, hook, plan)| PlanChange {
                netns: inode,
                family,
                hook,
                plan,
            })
            .collect())
    }

    /// Requests a re-plan of each netns whose inert native nft chains (no rules, policy
    /// accept) changed since they were last read, at most every [`NFT_POLL`]. Only where
    /// such chains exist: the others are bracketed or re-planned with the iptables dumps.
    fn poll_nft(&mut self) {
        for ns in &mut self.netns {
            let Some(view) = ns.view.as_ref() else {
                continue;
            };
            let inert_native = ns
                .reg
                .nft
                .iter()
                .any(|c| plan::is_native(c) && plan::nft_inert(c));
            if !inert_native || ns.nft_read.elapsed() < NFT_POLL {
                continue;
            }
            ns.nft_read = Instant::now();
            let mut now = ns.reg.clone();
            plan::refresh_nft(&mut now, &ns.path);
            if now.nft != ns.reg.nft {
                self.replan.request(ns.inode, view.clone());
            }
        }
    }

    /// Creates the links inside the netns at `path` (setns on a dedicated thread).
    fn link(&mut self, path: &std::path::Path, specs: Vec<(RawFd, HookSpec)>) -> Result<usize> {
        let n = specs.len();
        let made = crate::netns::run_in(path, move || {
            specs
                .into_iter()
                .map(|(fd, spec)| link::create(fd, spec))
                .collect::<Result<Vec<_>, _>>()
        })??;
        self.links.extend(made);
        Ok(n)
    }
}

/// The rules of the netns as a fresh dump shows them; None when none can be read.
fn current_view(inode: u32, path: &std::path::Path) -> Option<RuleView> {
    let mut src = crate::rulesource::RuleSource::live(
        &[(inode, path.to_path_buf())],
        std::time::Duration::ZERO,
    );
    src.refresh();
    for w in &src.warnings {
        log::info!("probe plan: {w}");
    }
    src.rule_view(inode)
}

/// Every hook's plan of both families ([`plan::family_plans`]).
fn plans_for(
    reg: &Registered,
    view: Option<&RuleView>,
    mode: ProbeMode,
) -> Vec<(Family, Hook, HookPlan)> {
    [Family::Ipv4, Family::Ipv6]
        .into_iter()
        .flat_map(|f| {
            plan::family_plans(reg, view, f, mode)
                .into_iter()
                .map(move |(h, p)| (f, h, p))
        })
        .collect()
}

/// The program and hook of every probe of `plans` that `wanted(family, hook, priority)`:
/// first-sight copies for the first probe of PREROUTING/OUTPUT, last-probe copies where a
/// traversal ends ([`plan::traversal_ends`]).
fn link_specs(
    loaded: &mut Loaded,
    plans: &[(Family, Hook, HookPlan)],
    wanted: impl Fn(Family, Hook, i32) -> bool,
) -> Result<Vec<(RawFd, HookSpec)>> {
    let mut specs = Vec::new();
    for (family, hook, hp) in plans {
        let probed = |h: Hook| {
            plans
                .iter()
                .any(|(f, k, p)| f == family && *k == h && !p.probes().is_empty())
        };
        let (first, last) = (hp.probes().first(), hp.probes().last());
        let entry = matches!(hook, Hook::Prerouting | Hook::Output);
        let exit = plan::traversal_ends(*hook, probed);
        for &p in hp.probes().iter().filter(|p| wanted(*family, *hook, **p)) {
            let fd =
                loaded.program_with(p, entry && first == Some(&p), exit && last == Some(&p))?;
            specs.push((
                fd,
                HookSpec {
                    pf: family.nfproto(),
                    hook: hook.num(),
                    priority: p,
                },
            ));
        }
    }
    Ok(specs)
}
