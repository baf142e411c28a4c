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
    let (seen, into) = (&last.headers, &entry.headers);
    // The forward path decrements the TTL (a bridged packet through br_netfilter keeps it,
    // as do IPv6 neighbour-proxied ones on recent kernels); nat rewrites neither it nor the
    // other fields compared here.
    let ttl_fits = into.ttl == seen.ttl || into.ttl.wrapping_add(1) == seen.ttl;
    let same = seen.proto == into.proto
        && seen.len == into.len
        && seen.tos == into.tos
        && seen.id == into.id
        && seen.frag == into.frag
        && seen.flowlabel == into.flowlabel;
    if !(ttl_fits && same) {
        return None;
    }
    let mut state = entry.clone();
    state.headers.ttl = seen.ttl;
    Some(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Headers, L4};

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
