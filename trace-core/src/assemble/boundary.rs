//! The packet between two hooks: what the kernel changes after one hook's last stage and
//! before the next hook's first, so a state no probe saw follows from the neighbouring
//! hook's ([`super::ProbePlan::derive_across_hooks`]). Like the state conntrack leaves
//! ([`super::fold`]), a state derived here is reported as if a probe had seen it; the pass's
//! `probes` list shows which probes did.
//!
//! Between FORWARD or OUTPUT and POSTROUTING (ip_forward_finish / dst_output / ip_output)
//! nothing changes the headers, mark or conntrack entry (IP options forwarding rewrites
//! option bytes, which the snapshot does not hold). Every packet reaches POSTROUTING from one
//! of them (forwarded, bridged through br_netfilter, sent locally, or re-sent after IPsec
//! encapsulation through OUTPUT).

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
    fn only_postrouting_follows_forward_or_output() {
        let last = state("10.0.0.2", 64);
        assert!(entry_from_previous(Hook::Postrouting, Hook::Forward, &last).is_some());
        assert!(entry_from_previous(Hook::Postrouting, Hook::Output, &last).is_some());
        assert!(entry_from_previous(Hook::Postrouting, Hook::Prerouting, &last).is_none());
        assert!(entry_from_previous(Hook::Input, Hook::Prerouting, &last).is_none());
    }
}
