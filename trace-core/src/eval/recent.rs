//! What one candidate path knows about the packet's `recent` entries (xt_recent), from the
//! rules it already passed: lists are kernel state the capture does not see, but within one
//! traversal the rules change and test the same entry, so later tests follow from earlier
//! ones (recent_mt):
//!
//! - `--set` adds the entry (or a stamp): it exists afterwards;
//! - `--rcheck`/`--update` that matched mean the entry exists (`--update` added a stamp,
//!   which keeps an identical test true); one that did not match changed nothing, so an
//!   identical test (same seconds, hitcount, rttl) fails again;
//! - `--remove` that matched deleted the entry; one that did not found none.
//!
//! A rule whose outcome for its `recent` match is not known (another undecidable match in
//! the same rule, a `!`, a later match that failed after the recent one ran) makes the path
//! forget what that match may have changed: failed tests after `--set`/`--update` (they
//! only add stamps), everything after `--remove`.

use crate::rules::matches::{Match, MatchKind, RecentMatch, RecentMode};
use std::net::IpAddr;

/// One list entry: list name, `--rdest`, `--mask`.
type Key = (String, bool, Option<IpAddr>);
/// A test's parameters: `--seconds`, `--hitcount`, `--rttl` (None: plain existence).
type Test = Option<(Option<u32>, Option<u32>, bool)>;

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Facts(Vec<(Key, Test, bool)>);

fn key(r: &RecentMatch) -> Key {
    (r.name.clone(), r.rdest, r.mask)
}

fn test(r: &RecentMatch) -> Test {
    match (r.seconds, r.hitcount, r.rttl) {
        (None, None, false) => None,
        (s, h, t) => Some((s, h, t)),
    }
}

impl Facts {
    /// The raw (before `!`) result of a `--rcheck`/`--update`/`--remove` the path already
    /// determines.
    pub(crate) fn known(&self, r: &RecentMatch) -> Option<bool> {
        if r.mode == Some(RecentMode::Set) {
            return Some(true);
        }
        let (k, t) = (key(r), test(r));
        let test = if r.mode == Some(RecentMode::Remove) {
            None
        } else {
            t
        };
        let mut exists = None;
        for (fk, ft, hit) in &self.0 {
            if *fk != k {
                continue;
            }
            if *ft == test {
                return Some(*hit);
            }
            // A matched test proves the entry exists; a missing entry fails every test.
            match (ft, hit) {
                (_, true) => exists = exists.or(Some(true)),
                (None, false) => exists = Some(false),
                _ => {}
            }
        }
        match (test, exists) {
            (None, e) => e,
            (Some(_), Some(false)) => Some(false),
            _ => None,
        }
    }

    fn forget(&mut self, k: &Key) {
        self.0.retain(|(fk, _, _)| fk != k);
    }

    /// `r` may or may not have run its effect: `--set`/`--update` only add stamps (what
    /// matched still does), `--remove` may have deleted the entry.
    fn maybe_ran(&mut self, r: &RecentMatch) {
        let k = key(r);
        match r.mode {
            Some(RecentMode::Rcheck) => {}
            Some(RecentMode::Set | RecentMode::Update) => {
                self.0.retain(|(fk, _, hit)| fk != &k || *hit)
            }
            _ => self.forget(&k),
        }
    }

    fn learn(&mut self, k: Key, t: Test, hit: bool) {
        self.0.retain(|(fk, ft, _)| !(fk == &k && ft == &t));
        self.0.push((k, t, hit));
    }

    /// The rule's matches all matched (the rule matched, or the path assumes it did).
    pub(crate) fn rule_matched(&mut self, matches: &[Match]) {
        for r in recents(matches) {
            let k = key(r);
            if r.negated {
                self.maybe_ran(r);
                continue;
            }
            match r.mode {
                Some(RecentMode::Set) => {
                    // A new stamp can make a failed hitcount test pass now.
                    self.0.retain(|(fk, _, hit)| fk != &k || *hit);
                    self.learn(k, None, true);
                }
                Some(RecentMode::Rcheck | RecentMode::Update) => {
                    self.learn(k.clone(), test(r), true);
                    self.learn(k, None, true);
                }
                Some(RecentMode::Remove) => {
                    self.forget(&k);
                    self.learn(k, None, false);
                }
                None => self.forget(&k),
            }
        }
    }

    /// The rule did not match. `only_recent_failed`: the decidable matches all matched and
    /// the single undecidable one, a `recent` test, is assumed to have failed.
    pub(crate) fn rule_failed(&mut self, matches: &[Match], only_recent_failed: bool) {
        let rs: Vec<&RecentMatch> = recents(matches).collect();
        if only_recent_failed && rs.len() == 1 && !rs[0].negated {
            let r = rs[0];
            match r.mode {
                Some(RecentMode::Rcheck | RecentMode::Update) => {
                    return self.learn(key(r), test(r), false)
                }
                Some(RecentMode::Remove) => return self.learn(key(r), None, false),
                _ => {}
            }
        }
        // The kernel may have run the recent matches before the one that failed.
        for r in rs {
            self.maybe_ran(r);
        }
    }
}

fn recents(matches: &[Match]) -> impl Iterator<Item = &RecentMatch> {
    matches.iter().filter_map(|m| match &m.kind {
        MatchKind::Recent(r) => Some(r),
        _ => None,
    })
}
