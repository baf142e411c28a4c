//! The packet between two hooks: what the kernel changes after one hook's last stage and
//! before the next hook's first, so a state no probe saw follows from the neighbouring
//! hook's ([`super::ProbePlan::derive_across_hooks`]). Like the state conntrack leaves
//! ([`super::fold`]), a state derived here is reported as if a probe had seen it; the pass's
//! `probes` list shows which probes did.
//!
//! Between PREROUTING and FORWARD, ip_forward() / ip6_forward() decrement the TTL / hop limit
//! right before the FORWARD hook (net/ipv4/ip_forward.c, net/ipv6/ip6_output.c); nothing else
//! in the headers, mark or conntrack entry changes. Between PREROUTING and INPUT nothing
//! changes (conntrack implies defragmentation already ran in PREROUTING). Between FORWARD or
//! OUTPUT and POSTROUTING (ip_forward_finish / dst_output / ip_output) neither.
//!
//! A packet freed outside netfilter between PREROUTING and the next hook (no route, martian
//! source, TTL exceeded: all before the TTL decrement) meets no later probe; since the
//! kfree_skb program reads the mark, conntrack entry and headers at the free (nfhook drop
//! records from version 4, [`crate::event::DropState`]), what PREROUTING's last stages left
//! is that state ([`exit_at_free`]). Without it, it stays unknown.

use crate::event::{DropState, Headers};
use crate::netfilter::Hook;
use crate::packet::PacketState;

/// What the stages at the start of a `hook` pass received, from the state the packet left
/// the previous pass (`from`) with; None when no rule says.
pub(super) fn entry_from_previous(
    hook: Hook,
    from: Hook,
    exit: &PacketState,
) -> Option<PacketState> {
    let follows = hook == Hook::Postrouting && matches!(from, Hook::Forward | Hook::Output);
    follows.then(|| exit.clone())
}

/// What the stages at the end of a `hook` pass left, from the state the packet was last seen
/// with there (`last`) and the one the `next` hook received (`entry`); None when no rule says
/// or the two do not fit the kernel's transform (then the state is not derived).
pub(super) fn exit_from_next(
    hook: Hook,
    last: &PacketState,
    next: Hook,
    entry: &PacketState,
) -> Option<PacketState> {
    if hook != Hook::Prerouting || !matches!(next, Hook::Forward | Hook::Input) {
        return None;
    }
    let mut state = entry.clone();
    state.headers.ttl = fitting_ttl(&last.headers, &entry.headers)?;
    Some(state)
}

/// What the stages at the end of a `hook` pass left, for a packet freed outside netfilter
/// before the next hook's first probe, from the state it was last seen with there (`last`)
/// and the one the drop report carries (`freed`); None when no rule says or the headers do
/// not fit. Between PREROUTING's last stage and a free there (no route, martian source, TTL
/// exceeded, IP options, a forward check before the TTL decrement) nothing changes the
/// headers, mark or conntrack entry. Without headers at the free, `last`'s are kept.
pub(super) fn exit_at_free(
    hook: Hook,
    last: &PacketState,
    freed: &DropState,
) -> Option<PacketState> {
    if hook != Hook::Prerouting {
        return None;
    }
    let headers = match &freed.headers {
        Some(h) => {
            let mut h = h.clone();
            h.ttl = fitting_ttl(&last.headers, &h)?;
            h.into()
        }
        None => last.headers.clone(),
    };
    Some(PacketState {
        headers,
        mark: freed.mark,
        ct: freed.ct,
    })
}

/// The TTL / hop limit `seen` had, when `later` (a later state of the same packet after
/// PREROUTING's stages) fits it; None when it does not. The forward path decrements the TTL
/// (a bridged packet through br_netfilter keeps it, as do IPv6 neighbour-proxied ones on
/// recent kernels); nat rewrites neither it nor the other fields compared here.
fn fitting_ttl(seen: &Headers, later: &Headers) -> Option<u8> {
    let ttl_fits = later.ttl == seen.ttl || later.ttl.wrapping_add(1) == seen.ttl;
    let same = seen.proto == later.proto
        && seen.len == later.len
        && seen.tos == later.tos
        && seen.id == later.id
        && seen.frag == later.frag
        && seen.flowlabel == later.flowlabel;
    (ttl_fits && same).then_some(seen.ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::L4;

    fn state(dst: &str, ttl: u8) -> PacketState {
        PacketState {
            headers: Headers {
                src: "10.0.0.1".parse().unwrap(),
                dst: dst.parse().unwrap(),
                proto: 6,
                len: 60,
                tos: 0,
                ttl,
                id: 1,
                frag: 0x4000,
                flowlabel: 0,
                l4: L4::Other,
            }
            .into(),
            mark: 0,
            ct: None,
        }
    }

    #[test]
    fn forwarding_decrement_is_undone() {
        let last = state("10.0.0.2", 64);
        let fwd = state("172.19.0.9", 63);
        let after = exit_from_next(Hook::Prerouting, &last, Hook::Forward, &fwd).unwrap();
        assert_eq!(after.headers.ttl, 64);
        assert_eq!(after.headers.dst.to_string(), "172.19.0.9");
        let input = exit_from_next(Hook::Prerouting, &last, Hook::Input, &last).unwrap();
        assert_eq!(input, last);
    }

    #[test]
    fn state_at_a_free_after_prerouting() {
        let last = state("10.0.0.2", 64);
        let ct = Some(crate::event::CtSnapshot {
            ctinfo: 2,
            status: 0,
            mark: 0,
            id: 1,
        });
        let dnat = state("172.19.0.9", 64);
        let freed = DropState {
            mark: 5,
            ct,
            headers: Some((*dnat.headers).clone()),
        };
        let after = exit_at_free(Hook::Prerouting, &last, &freed).unwrap();
        assert_eq!((after.headers, after.mark, after.ct), (dnat.headers, 5, ct));
        let unread = DropState {
            headers: None,
            ..freed.clone()
        };
        let after = exit_at_free(Hook::Prerouting, &last, &unread).unwrap();
        assert_eq!(after.headers, last.headers, "the last seen headers kept");
        // Not the kernel's transform, or not after PREROUTING: not derived.
        let shorter = DropState {
            headers: Some((*state("172.19.0.9", 62).headers).clone()),
            ..freed.clone()
        };
        assert!(exit_at_free(Hook::Prerouting, &last, &shorter).is_none());
        assert!(exit_at_free(Hook::Forward, &last, &freed).is_none());
    }

    #[test]
    fn other_changes_or_hooks_are_not_derived() {
        let last = state("10.0.0.2", 64);
        let mut longer = state("172.19.0.9", 63);
        longer.headers.len = 61;
        assert!(exit_from_next(Hook::Prerouting, &last, Hook::Forward, &longer).is_none());
        let two_less = state("172.19.0.9", 62);
        assert!(exit_from_next(Hook::Prerouting, &last, Hook::Forward, &two_less).is_none());
        // A second PREROUTING pass (e.g. a VRF) says nothing about the first one's exit.
        assert!(exit_from_next(Hook::Prerouting, &last, Hook::Prerouting, &last).is_none());
        assert!(entry_from_previous(Hook::Postrouting, Hook::Forward, &last).is_some());
        assert!(entry_from_previous(Hook::Postrouting, Hook::Prerouting, &last).is_none());
        assert!(entry_from_previous(Hook::Input, Hook::Prerouting, &last).is_none());
    }
}
