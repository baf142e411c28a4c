//! The packet as conntrack left it, when conntrack's probe is folded into the next nat
//! table's ([`super::HookPlan::needed`]): the stages between them (inert tables, then nat)
//! need the state they received, which no probe saw. It follows from the states at the two
//! probes because conntrack only attaches a conntrack entry (never rewrites headers or the
//! packet mark) and what nat adds to a new entry is its NAT status bits.

use crate::event::{ct_status, CtSnapshot};
use crate::packet::PacketState;

/// IPS_TEMPLATE: a template the raw table's CT target attached; conntrack replaces it.
const TEMPLATE: u32 = 1 << 11;

/// The status bits nf_nat sets on an entry (nf_nat_setup_info, null bindings included).
const NAT_BITS: u32 =
    ct_status::SRC_NAT | ct_status::DST_NAT | ct_status::SRC_NAT_DONE | ct_status::DST_NAT_DONE;

/// The state after conntrack, from the state before conntrack (`before`) and after the nat
/// table that follows it (`after`); None when it cannot be told apart from what nat did (a
/// new entry created from an expectation: its NAT may have been set up at creation).
pub(super) fn after_conntrack(before: &PacketState, after: &PacketState) -> Option<PacketState> {
    let ct = match (before.ct, after.ct) {
        // nf_conntrack_in leaves an attached entry (or the untracked mark) alone.
        (Some(ct), _) if ct.status & TEMPLATE == 0 => Some(ct),
        // No entry came out of conntrack (invalid packet): none went into nat either.
        (_, None) => None,
        (_, Some(ct)) => Some(entry_from_conntrack(ct)?),
    };
    Some(PacketState {
        headers: before.headers.clone(),
        mark: before.mark,
        ct,
    })
}

/// The entry nat received, from the entry after nat.
fn entry_from_conntrack(ct: CtSnapshot) -> Option<CtSnapshot> {
    if ct.status & ct_status::CONFIRMED != 0 {
        // An existing connection: its bindings were set up by an earlier packet, the nat
        // table is not consulted and changes nothing in the entry.
        return Some(ct);
    }
    if ct.status & ct_status::EXPECTED != 0 {
        return None;
    }
    // Created by this packet's conntrack: no NAT bits, conntrack mark 0 (only entries
    // created from an expectation inherit one).
    Some(CtSnapshot {
        status: ct.status & !NAT_BITS,
        mark: 0,
        ..ct
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Headers, L4};

    fn state(dst: &str, ct: Option<CtSnapshot>) -> PacketState {
        PacketState {
            headers: Headers {
                src: "10.0.0.1".parse().unwrap(),
                dst: dst.parse().unwrap(),
                proto: 17,
                len: 40,
                tos: 0,
                ttl: 64,
                id: 1,
                frag: 0,
                flowlabel: 0,
                l4: L4::Udp {
                    sport: 1000,
                    dport: 53,
                    len: 20,
                },
            }
            .into(),
            mark: 3,
            ct,
        }
    }

    fn ct(ctinfo: u8, status: u32) -> Option<CtSnapshot> {
        Some(CtSnapshot {
            ctinfo,
            status,
            mark: 0,
            id: 9,
        })
    }

    #[test]
    fn new_entry_before_nat_has_no_nat_bits() {
        let before = state("10.0.0.2", None);
        let after = state(
            "172.19.0.9",
            ct(2, ct_status::DST_NAT | ct_status::DST_NAT_DONE),
        );
        let mid = after_conntrack(&before, &after).unwrap();
        assert_eq!(mid.headers, before.headers, "conntrack rewrites nothing");
        assert_eq!(mid.mark, 3);
        assert_eq!(mid.ct, ct(2, 0));
    }

    #[test]
    fn confirmed_entry_is_what_nat_saw() {
        // Second packet of a UDP flow before any reply: NEW, binding already set up.
        let s = ct_status::CONFIRMED | ct_status::DST_NAT | ct_status::DST_NAT_DONE;
        let mid = after_conntrack(&state("10.0.0.2", None), &state("172.19.0.9", ct(2, s)));
        assert_eq!(mid.unwrap().ct, ct(2, s));
    }

    #[test]
    fn attached_entry_stays_and_expected_ones_are_unknown() {
        let looped = ct(2, ct_status::CONFIRMED);
        let mid = after_conntrack(&state("10.0.0.2", looped), &state("10.0.0.2", looped));
        assert_eq!(mid.unwrap().ct, looped);
        let expected = ct(1, ct_status::EXPECTED | ct_status::DST_NAT_DONE);
        assert!(after_conntrack(&state("10.0.0.2", None), &state("10.0.0.2", expected)).is_none());
        let invalid = after_conntrack(&state("10.0.0.2", None), &state("10.0.0.2", None));
        assert_eq!(invalid.unwrap().ct, None);
    }
}
