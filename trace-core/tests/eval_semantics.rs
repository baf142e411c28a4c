//! Unit tests of the evaluator (ipt_do_table semantics), per match and per target, and of
//! how reconstruction resolves branch points with kernel evidence.

use trace_core::eval::{EvalInput, Evaluator, IfaceAddr, NetContext, TableVerdict, Traversal};
use trace_core::event::{tcp_flags, CtSnapshot, Headers, L4};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::packet::{HookPass, ObservedVerdict, PacketState, PacketTrace, TableObservation};
use trace_core::reconstruct::{reconstruct, Status};
use trace_core::rules;

fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Headers {
    Headers {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto: 6,
        len: 60,
        tos: 0,
        ttl: 64,
        id: 1,
        frag: 0x4000,
        flowlabel: 0,
        l4: L4::Tcp {
            sport,
            dport,
            seq: 1,
            ack: 0,
            window: 100,
            flags,
            res: 0,
            urgp: 0,
            options: vec![2, 4, 0x05, 0xb4, 1, 1],
        },
    }
}

fn udp(src: &str, dst: &str, dport: u16) -> Headers {
    Headers {
        proto: 17,
        l4: L4::Udp {
            sport: 5353,
            dport,
            len: 20,
        },
        ..tcp(src, 1, dst, 1, 0)
    }
}

const NEW: Option<CtSnapshot> = Some(CtSnapshot {
    ctinfo: 2,
    status: 0,
    mark: 0,
    id: 1,
});
const EST: Option<CtSnapshot> = Some(CtSnapshot {
    ctinfo: 0,
    status: 0x1a,
    mark: 7,
    id: 1,
});

struct Case {
    hook: Hook,
    in_dev: Option<&'static str>,
    out_dev: Option<&'static str>,
    mac: Option<Vec<u8>>,
    uid: Option<u32>,
    state: PacketState,
    tuples: trace_core::eval::CtTuples,
}

impl Case {
    fn new(hook: Hook, h: Headers) -> Self {
        Case {
            hook,
            in_dev: Some("eth0"),
            out_dev: None,
            mac: None,
            uid: None,
            state: PacketState {
                headers: h.into(),
                mark: 0,
                ct: NEW,
            },
            tuples: Default::default(),
        }
    }
    fn out(mut self, d: &'static str) -> Self {
        self.out_dev = Some(d);
        self
    }
    fn no_in(mut self) -> Self {
        self.in_dev = None;
        self
    }
    fn mark(mut self, m: u32) -> Self {
        self.state.mark = m;
        self
    }
    fn ct(mut self, ct: Option<CtSnapshot>) -> Self {
        self.state.ct = ct;
        self
    }
    fn run(&self, dump: &str, table: Table, ctx: &NetContext) -> Traversal {
        let ev = Evaluator::new(rules::parse(dump).unwrap_or_else(|e| panic!("{e}\n{dump}")));
        let input = EvalInput {
            hook: self.hook,
            in_dev: self.in_dev,
            out_dev: self.out_dev,
            mac: self.mac.as_deref(),
            uid: self.uid,
            gid: self.uid,
            state: &self.state,
            nf_trace: false,
            tuples: self.tuples,
            dst_local: None,
            bridge: None,
        };
        let t = ev.evaluate(table, &input, ctx).unwrap();
        // Render step ids through the evaluator for assertions.
        STEPS.with(|s| {
            *s.borrow_mut() = t
                .candidates
                .iter()
                .map(|c| {
                    c.steps
                        .iter()
                        .map(|st| ev.step_id(table, st).to_string())
                        .collect()
                })
                .collect()
        });
        t
    }
}

thread_local! {
    static STEPS: std::cell::RefCell<Vec<Vec<String>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Step ids of every candidate of the last `Case::run`.
fn steps() -> Vec<Vec<String>> {
    STEPS.with(|s| s.borrow().clone())
}

fn filter(rules: &str) -> String {
    format!(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n{rules}COMMIT\n"
    )
}

fn single(t: &Traversal) -> (&TableVerdict, Vec<String>) {
    assert_eq!(t.candidates.len(), 1, "{:#?}", steps());
    (&t.candidates[0].verdict, steps().remove(0))
}

fn unknown() -> NetContext {
    NetContext::unknown()
}

#[test]
fn jump_return_goto_and_policy_labels() {
    let dump = filter(
        ":A - [0:0]\n:B - [0:0]\n:C - [0:0]\n\
         -A FORWARD -j A\n-A FORWARD -g B\n-A FORWARD -j ACCEPT\n\
         -A A -p udp -j DROP\n-A A -j RETURN\n\
         -A B -j C\n-A B -p tcp -j RETURN\n\
         -A C -p tcp --dport 80 -j LOG\n",
    );
    let t = Case::new(
        Hook::Forward,
        tcp("10.0.0.1", 1000, "10.0.0.2", 80, tcp_flags::SYN),
    )
    .out("eth1")
    .run(&dump, Table::Filter, &unknown());
    let (v, s) = single(&t);
    // A: unconditional RETURN is labelled return:2. C falls off its end (return:2) back to B;
    // B's RETURN (conditional: rule:2) returns past FORWARD (goto pushed nothing) to the
    // underflow: FORWARD's policy entry.
    assert_eq!(
        s,
        [
            "filter:FORWARD:rule:1",
            "filter:A:return:2",
            "filter:FORWARD:rule:2",
            "filter:B:rule:1",
            "filter:C:rule:1",
            "filter:C:return:2",
            "filter:B:rule:2",
            "filter:FORWARD:policy:4"
        ]
    );
    assert_eq!(*v, TableVerdict::Drop);
}

#[test]
fn unconditional_accept_in_builtin_chain_is_labelled_policy() {
    let dump = filter("-A INPUT -j ACCEPT\n-A INPUT -m comment --comment x -j ACCEPT\n");
    let t = Case::new(Hook::Input, tcp("10.0.0.1", 1, "10.0.0.2", 2, 0)).run(
        &dump,
        Table::Filter,
        &unknown(),
    );
    assert_eq!(single(&t).1, ["filter:INPUT:policy:1"]);
    let dump = filter("-A INPUT -m comment --comment x -j ACCEPT\n");
    let t = Case::new(Hook::Input, tcp("10.0.0.1", 1, "10.0.0.2", 2, 0)).run(
        &dump,
        Table::Filter,
        &unknown(),
    );
    assert_eq!(
        single(&t).1,
        ["filter:INPUT:rule:1"],
        "a match makes it conditional"
    );
}

#[test]
fn rule_without_target_is_printed_and_falls_through() {
    let dump = filter("-A INPUT -p tcp\n-A INPUT -p udp -j DROP\n");
    let t = Case::new(Hook::Input, tcp("10.0.0.1", 1, "10.0.0.2", 2, 0)).run(
        &dump,
        Table::Filter,
        &unknown(),
    );
    assert_eq!(
        single(&t),
        (
            &TableVerdict::Accept,
            vec![
                "filter:INPUT:rule:1".to_string(),
                "filter:INPUT:policy:3".to_string()
            ]
        )
    );
}

#[test]
fn ip_part_addresses_masks_negations_interfaces_fragments() {
    let dump = filter(
        "-A INPUT -s 10.0.0.0/255.0.255.0 -j LOG\n\
         -A INPUT ! -s 10.0.0.0/8 -j LOG\n\
         -A INPUT -d 10.0.0.2/32 -i eth+ -j LOG\n\
         -A INPUT ! -i eth0 -j LOG\n\
         -A INPUT -o eth0 -j LOG\n\
         -A INPUT ! -o eth0 -j LOG\n\
         -A INPUT ! -p tcp -j LOG\n\
         -A INPUT -f -j LOG\n\
         -A INPUT ! -f -j LOG\n",
    );
    let t = Case::new(Hook::Input, tcp("10.9.0.1", 1, "10.0.0.2", 2, 0)).run(
        &dump,
        Table::Filter,
        &unknown(),
    );
    // No output device on INPUT: -o eth0 fails, ! -o eth0 matches (compared against "").
    assert_eq!(
        single(&t).1,
        [
            "filter:INPUT:rule:1",
            "filter:INPUT:rule:3",
            "filter:INPUT:rule:6",
            "filter:INPUT:rule:9",
            "filter:INPUT:policy:10"
        ]
    );

    let mut frag = tcp("10.9.0.1", 1, "10.0.0.2", 2, 0);
    frag.frag = 0x2000 | 100;
    frag.l4 = L4::Other;
    let dump =
        filter("-A INPUT -f -j LOG\n-A INPUT -p tcp --dport 2 -j LOG\n-A INPUT -p tcp -j LOG\n");
    let t = Case::new(Hook::Input, frag).run(&dump, Table::Filter, &unknown());
    assert_eq!(
        single(&t).1,
        [
            "filter:INPUT:rule:1",
            "filter:INPUT:rule:3",
            "filter:INPUT:policy:4"
        ],
        "ports never match later fragments"
    );
}

#[test]
fn tcp_udp_icmp_multiport_matches() {
    let dump = filter(
        "-A INPUT -p tcp -m tcp --syn -j LOG\n\
         -A INPUT -p tcp -m tcp --tcp-flags SYN,ACK ACK -j LOG\n\
         -A INPUT -p tcp -m tcp --sport 1000:2000 ! --dport 22 -j LOG\n\
         -A INPUT -p tcp -m multiport --dports 22,80:90 -j LOG\n\
         -A INPUT -p tcp -m multiport ! --ports 1500 -j LOG\n\
         -A INPUT -p tcp -m tcp --tcp-option 2 -j LOG\n\
         -A INPUT -p tcp -m tcpmss --mss 1400:1500 -j LOG\n\
         -A INPUT -p udp -m udp --dport 53 -j LOG\n",
    );
    let t = Case::new(
        Hook::Input,
        tcp("10.0.0.1", 1500, "10.0.0.2", 85, tcp_flags::SYN),
    )
    .run(&dump, Table::Filter, &unknown());
    assert_eq!(
        single(&t).1,
        [
            "filter:INPUT:rule:1",
            "filter:INPUT:rule:3",
            "filter:INPUT:rule:4",
            "filter:INPUT:rule:6",
            "filter:INPUT:rule:7",
            "filter:INPUT:policy:9"
        ]
    );
    let t = Case::new(Hook::Input, udp("10.0.0.1", "10.0.0.2", 53)).run(
        &dump,
        Table::Filter,
        &unknown(),
    );
    assert_eq!(
        single(&t).1,
        ["filter:INPUT:rule:8", "filter:INPUT:policy:9"]
    );

    let mut ping = tcp("10.0.0.1", 0, "10.0.0.2", 0, 0);
    ping.proto = 1;
    ping.l4 = L4::Icmp {
        icmp_type: 8,
        code: 0,
        id: 1,
        seq: 1,
        quoted: vec![],
    };
    let dump = filter("-A INPUT -p icmp -m icmp --icmp-type 0 -j LOG\n-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT\n");
    let t = Case::new(Hook::Input, ping).run(&dump, Table::Filter, &unknown());
    assert_eq!(single(&t).1, ["filter:INPUT:rule:2"]);
}

#[test]
fn conntrack_state_status_and_invalid_without_ct() {
    let dump = filter(
        "-A INPUT -m conntrack --ctstate NEW -j LOG\n\
         -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j LOG\n\
         -A INPUT -m state --state INVALID -j LOG\n\
         -A INPUT -m conntrack --ctstatus ASSURED -j LOG\n\
         -A INPUT -m conntrack ! --ctstate DNAT -j LOG\n\
         -A INPUT -m conntrack --ctdir REPLY -j LOG\n",
    );
    let h = tcp("10.0.0.1", 1, "10.0.0.2", 2, 0);
    let t = Case::new(Hook::Input, h.clone()).run(&dump, Table::Filter, &unknown());
    assert_eq!(
        single(&t).1,
        [
            "filter:INPUT:rule:1",
            "filter:INPUT:rule:5",
            "filter:INPUT:policy:7"
        ]
    );
    let t = Case::new(Hook::Input, h.clone())
        .ct(EST)
        .run(&dump, Table::Filter, &unknown());
    assert_eq!(
        single(&t).1,
        [
            "filter:INPUT:rule:2",
            "filter:INPUT:rule:5",
            "filter:INPUT:policy:7"
        ],
        "status 0x1a lacks ASSURED (0x4); SRC_NAT is not DNAT"
    );
    let t = Case::new(Hook::Input, h.clone())
        .ct(None)
        .run(&dump, Table::Filter, &unknown());
    // Without a conntrack: INVALID; options other than --ctstate cannot match.
    assert_eq!(
        single(&t).1,
        [
            "filter:INPUT:rule:3",
            "filter:INPUT:rule:5",
            "filter:INPUT:policy:7"
        ]
    );
    let reply = Some(CtSnapshot {
        ctinfo: 3,
        status: 0x20,
        mark: 0,
        id: 1,
    });
    let t = Case::new(Hook::Input, h)
        .ct(reply)
        .run(&dump, Table::Filter, &unknown());
    assert_eq!(
        single(&t).1,
        [
            "filter:INPUT:rule:2",
            "filter:INPUT:rule:6",
            "filter:INPUT:policy:7"
        ]
    );
}

#[test]
fn mark_connmark_and_their_targets() {
    let dump = "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
        -A PREROUTING -m mark --mark 0x1/0xff -j LOG\n\
        -A PREROUTING -j MARK --set-xmark 0x101/0xffffffff\n\
        -A PREROUTING -m mark --mark 0x1/0xff -j LOG\n\
        -A PREROUTING -m connmark --mark 0x7 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff\n\
        -A PREROUTING -m connmark --mark 0x101 -j CONNMARK --restore-mark --nfmask 0xf --ctmask 0xffffffff\n\
        COMMIT\n";
    let t = Case::new(Hook::Prerouting, tcp("10.0.0.1", 1, "10.0.0.2", 2, 0))
        .ct(EST)
        .mark(0x200)
        .run(dump, Table::Mangle, &unknown());
    let (_, s) = single(&t);
    assert_eq!(
        s,
        [
            "mangle:PREROUTING:rule:2",
            "mangle:PREROUTING:rule:3",
            "mangle:PREROUTING:rule:4",
            "mangle:PREROUTING:rule:5",
            "mangle:PREROUTING:policy:6"
        ]
    );
    let c = &t.candidates[0];
    assert_eq!(c.ctmark, Some(0x101));
    // save: ctmark = (7 & !ffffffff) ^ 0x101; restore: mark = (0x101 & !0xf) ^ 0x101 = 0x001.
    assert_eq!(c.mark, 0x001);
    assert_eq!(c.steps[0].mark, 0x200);
    assert_eq!(c.steps[1].mark, 0x101, "a step logs the mark set before it");
    // No conntrack: connmark never matches, CONNMARK does nothing.
    let t = Case::new(Hook::Prerouting, tcp("10.0.0.1", 1, "10.0.0.2", 2, 0))
        .ct(None)
        .run(dump, Table::Mangle, &unknown());
    assert_eq!(single(&t).1.len(), 3);
}

#[test]
fn dscp_tos_ttl_targets_change_the_packet() {
    let dump = "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
        -A FORWARD -j DSCP --set-dscp 0x2e\n-A FORWARD -m dscp --dscp 0x2e -j TTL --ttl-set 9\n-A FORWARD -m ttl --ttl-eq 9 -j LOG\nCOMMIT\n";
    let t = Case::new(Hook::Forward, tcp("10.0.0.1", 1, "10.0.0.2", 2, 0))
        .out("eth1")
        .run(dump, Table::Mangle, &unknown());
    let (_, s) = single(&t);
    assert_eq!(s.len(), 4);
    assert_eq!((t.candidates[0].tos, t.candidates[0].ttl), (0xb8, 9));
}

/// Kernel TRACE (capture_fidelity targets_v4): after `-j TCPMSS --set-mss 1200` on a SYN
/// with MSS 1460, `-m tcpmss --mss 1200` in the same chain matches.
#[test]
fn tcpmss_target_changes_the_mss_later_rules_see() {
    let dump = "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
        -A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1200\n\
        -A FORWARD -p tcp -m tcpmss --mss 1200 -j MARK --or-mark 0x1\n\
        -A FORWARD -p tcp -m tcpmss --mss 1000 -j MARK --or-mark 0x2\n\
        -A FORWARD -p tcp -m tcpmss --mss 536 -j MARK --or-mark 0x4\nCOMMIT\n";
    let run = |h: Headers| {
        let t = Case::new(Hook::Forward, h)
            .out("eth1")
            .run(dump, Table::Mangle, &unknown());
        single(&t).1
    };
    let syn = tcp("10.0.0.1", 1, "10.0.0.2", 2, tcp_flags::SYN);
    assert_eq!(
        run(syn.clone()),
        [
            "mangle:FORWARD:rule:1",
            "mangle:FORWARD:rule:2",
            "mangle:FORWARD:policy:5"
        ]
    );
    // Never raised: an MSS of 1000 stays 1000.
    let mut low = syn.clone();
    if let L4::Tcp { options, .. } = &mut low.l4 {
        *options = vec![2, 4, 0x03, 0xe8];
    }
    assert_eq!(
        run(low),
        [
            "mangle:FORWARD:rule:1",
            "mangle:FORWARD:rule:3",
            "mangle:FORWARD:policy:5"
        ]
    );
    // No MSS option and no data: the target adds one, at most 536 (IPv4).
    let mut none = syn.clone();
    none.len = 40;
    if let L4::Tcp { options, .. } = &mut none.l4 {
        options.clear();
    }
    assert_eq!(
        run(none.clone()),
        [
            "mangle:FORWARD:rule:1",
            "mangle:FORWARD:rule:4",
            "mangle:FORWARD:policy:5"
        ]
    );
    // ... but not when the segment carries data.
    none.len = 50;
    assert_eq!(
        run(none),
        ["mangle:FORWARD:rule:1", "mangle:FORWARD:policy:5"]
    );
}

#[test]
fn addrtype_uses_the_netns_addresses_or_branches() {
    let dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
        -A PREROUTING -m addrtype --dst-type LOCAL -j LOG\n-A PREROUTING -m addrtype --dst-type BROADCAST -j LOG\n\
        -A PREROUTING -m addrtype --src-type MULTICAST -j LOG\nCOMMIT\n";
    let ctx = NetContext::from_addrs([IfaceAddr {
        iface: "eth0".into(),
        addr: "10.0.0.2".parse().unwrap(),
        broadcast: Some("10.0.0.255".parse().unwrap()),
    }]);
    let t = Case::new(Hook::Prerouting, tcp("10.0.0.1", 1, "10.0.0.2", 2, 0)).run(
        dump,
        Table::Nat,
        &ctx,
    );
    assert_eq!(
        single(&t).1,
        ["nat:PREROUTING:rule:1", "nat:PREROUTING:policy:4"]
    );
    let t =
        Case::new(Hook::Prerouting, udp("10.0.0.1", "10.0.0.255", 2)).run(dump, Table::Nat, &ctx);
    assert_eq!(
        single(&t).1,
        ["nat:PREROUTING:rule:2", "nat:PREROUTING:policy:4"]
    );
    let t = Case::new(Hook::Prerouting, udp("10.0.0.1", "255.255.255.255", 2)).run(
        dump,
        Table::Nat,
        &unknown(),
    );
    assert_eq!(
        single(&t).1,
        ["nat:PREROUTING:rule:2", "nat:PREROUTING:policy:4"],
        "limited broadcast needs no context"
    );
    // Unknown addresses: LOCAL and BROADCAST are branch points (2 x 2 paths explored; the
    // source 10.0.0.1 is not multicast whatever the context).
    let t = Case::new(Hook::Prerouting, tcp("10.0.0.1", 1, "10.0.0.2", 2, 0)).run(
        dump,
        Table::Nat,
        &unknown(),
    );
    assert_eq!(t.candidates.len(), 4);
    assert!(t.candidates.iter().all(|c| !c.assumptions.is_empty()));
}

#[test]
fn iprange_length_mac_pkttype_owner() {
    let dump = filter(
        "-A INPUT -m iprange --src-range 10.0.0.0-10.0.0.9 -j LOG\n\
         -A INPUT -m length --length 0:59 -j LOG\n\
         -A INPUT -m mac --mac-source aa:bb:cc:dd:ee:ff -j LOG\n\
         -A INPUT -m pkttype --pkt-type broadcast -j LOG\n\
         -A OUTPUT -m owner --uid-owner 1000 -j LOG\n\
         -A OUTPUT -m owner ! --uid-owner 0 -j LOG\n",
    );
    let mut c = Case::new(Hook::Input, tcp("10.0.0.5", 1, "10.0.0.2", 2, 0));
    c.mac = Some(vec![
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 8, 0,
    ]);
    let t = c.run(&dump, Table::Filter, &unknown());
    assert_eq!(
        single(&t).1,
        [
            "filter:INPUT:rule:1",
            "filter:INPUT:rule:3",
            "filter:INPUT:rule:4",
            "filter:INPUT:policy:5"
        ]
    );
    let mut c = Case::new(Hook::Output, tcp("10.0.0.2", 1, "10.0.0.5", 2, 0))
        .no_in()
        .out("eth0");
    c.uid = Some(1000);
    let t = c.run(&dump, Table::Filter, &unknown());
    assert_eq!(
        single(&t).1,
        [
            "filter:OUTPUT:rule:1",
            "filter:OUTPUT:rule:2",
            "filter:OUTPUT:policy:3"
        ]
    );
    c.uid = None;
    let t = c.run(&dump, Table::Filter, &unknown());
    assert_eq!(
        t.candidates.len(),
        4,
        "owner unknown: both rules are branch points"
    );
}

#[test]
fn terminal_extension_targets() {
    let h = tcp("10.0.0.1", 1, "10.0.0.2", 2, 0);
    let t = Case::new(Hook::Input, h.clone()).run(
        &filter("-A INPUT -p tcp -j REJECT --reject-with tcp-reset\n"),
        Table::Filter,
        &unknown(),
    );
    assert_eq!(*single(&t).0, TableVerdict::Drop);
    let t = Case::new(Hook::Input, h.clone()).run(
        &filter("-A INPUT -j NFQUEUE --queue-num 3 --queue-bypass\n"),
        Table::Filter,
        &unknown(),
    );
    assert_eq!(*single(&t).0, TableVerdict::Queue { bypass: true });
    let t = Case::new(Hook::Input, h.clone()).run(
        &filter("-A INPUT -j FOOBAR --foo 1\n"),
        Table::Filter,
        &unknown(),
    );
    let verdicts: Vec<_> = t.candidates.iter().map(|c| c.verdict.clone()).collect();
    assert!(
        verdicts.contains(&TableVerdict::Accept)
            && verdicts.contains(&TableVerdict::Unknown {
                target: "FOOBAR".into()
            }),
        "{verdicts:?}"
    );
}

#[test]
fn missing_chain_and_missing_table_are_errors_not_guesses() {
    let mut rs = rules::parse(&filter(":X - [0:0]\n-A INPUT -j X\n")).unwrap();
    let input_chain = rs.tables[0]
        .chains
        .iter()
        .position(|c| c.name == "X")
        .unwrap();
    rs.tables[0].chains.remove(input_chain);
    let ev = Evaluator::new(rs);
    let st = PacketState {
        headers: tcp("10.0.0.1", 1, "10.0.0.2", 2, 0).into(),
        mark: 0,
        ct: NEW,
    };
    let input = EvalInput {
        hook: Hook::Input,
        in_dev: Some("eth0"),
        out_dev: None,
        mac: None,
        uid: None,
        gid: None,
        state: &st,
        nf_trace: false,
        tuples: Default::default(),
        dst_local: None,
        bridge: None,
    };
    let t = ev.evaluate(Table::Filter, &input, &unknown()).unwrap();
    assert!(matches!(
        t.candidates[0].verdict,
        TableVerdict::Broken { .. }
    ));
    assert!(ev.evaluate(Table::Nat, &input, &unknown()).is_err());
}

/// A kube-proxy service: statistic random picks one of three endpoints. The evaluator
/// explores all three; the DNAT observed after the nat table confirms exactly one.
#[test]
fn statistic_branches_are_resolved_by_the_observed_dnat() {
    let dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
        :KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-1 - [0:0]\n:KUBE-SEP-2 - [0:0]\n:KUBE-SEP-3 - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
        -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
        -A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-A\n\
        -A KUBE-SVC-A -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-1\n\
        -A KUBE-SVC-A -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-2\n\
        -A KUBE-SVC-A -j KUBE-SEP-3\n\
        -A KUBE-SEP-1 -s 10.244.0.1/32 -j KUBE-MARK-MASQ\n-A KUBE-SEP-1 -p tcp -m tcp -j DNAT --to-destination 10.244.0.1:8080\n\
        -A KUBE-SEP-2 -s 10.244.0.2/32 -j KUBE-MARK-MASQ\n-A KUBE-SEP-2 -p tcp -m tcp -j DNAT --to-destination 10.244.0.2:8080\n\
        -A KUBE-SEP-3 -s 10.244.0.3/32 -j KUBE-MARK-MASQ\n-A KUBE-SEP-3 -p tcp -m tcp -j DNAT --to-destination 10.244.0.3:8080\n\
        -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\nCOMMIT\n";
    let before = tcp("10.0.0.1", 40000, "10.96.0.10", 80, tcp_flags::SYN);
    let t = Case::new(Hook::Prerouting, before.clone()).run(dump, Table::Nat, &unknown());
    assert_eq!(t.candidates.len(), 3);

    let after = tcp("10.0.0.1", 40000, "10.244.0.2", 8080, tcp_flags::SYN);
    let rs = rules::parse(dump).unwrap();
    let ev = Evaluator::new(rs);
    let packet = |after: Headers, mark: u32| PacketTrace {
        id: 1,
        skb: 1,
        gen: 1,
        netns: 1,
        family: Family::Ipv4,
        first_ts_ns: 0,
        hooks: vec![HookPass {
            hook: Hook::Prerouting,
            ts_ns: 0,
            in_dev: Some("eth0".into()),
            out_dev: None,
            mac: None,
            uid: None,
            gid: None,
            owners: Vec::new(),
            tables: vec![TableObservation {
                table: Table::Nat,
                priority: -100,
                before: PacketState {
                    headers: before.clone().into(),
                    mark: 0,
                    ct: NEW,
                },
                after: Some(PacketState {
                    headers: after.into(),
                    mark,
                    ct: NEW,
                }),
                verdict: ObservedVerdict::Accept,
            }],
            stages: vec![],
            probes: vec![],
            bridge: None,
        }],
        incomplete: false,
        fate: Default::default(),
    };
    let rp = reconstruct(&packet(after.clone(), 0), &ev, &unknown());
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Confirmed, "{tr:#?}");
    assert_eq!(tr.ruled_out, 2);
    let ids: Vec<String> = tr.paths[0].steps.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(
        ids,
        [
            "nat:PREROUTING:rule:1",
            "nat:KUBE-SERVICES:rule:1",
            "nat:KUBE-SVC-A:rule:2",
            "nat:KUBE-SEP-2:rule:2"
        ]
    );
    assert_eq!(
        tr.paths[0].nat.as_ref().unwrap().to.to_string(),
        "10.244.0.2:8080"
    );

    // A translation no rule produces: inconsistent, with every evaluated path and why.
    let rp = reconstruct(
        &packet(
            tcp("10.0.0.1", 40000, "10.244.0.9", 8080, tcp_flags::SYN),
            0,
        ),
        &ev,
        &unknown(),
    );
    let tr = &rp.hooks[0].tables[0];
    assert_eq!(tr.status, Status::Inconsistent);
    assert_eq!(tr.paths.len(), 3);
    assert!(tr.paths.iter().all(|p| p
        .rejected
        .as_deref()
        .is_some_and(|r| r.contains("10.244.0.9:8080"))));

    // No evidence (packet dropped later, verdict unknown, no after): ambiguous, all shown.
    let mut p = packet(after, 0);
    p.hooks[0].tables[0].after = None;
    p.hooks[0].tables[0].verdict = ObservedVerdict::Unknown;
    let rp = reconstruct(&p, &ev, &unknown());
    assert_eq!(rp.hooks[0].tables[0].status, Status::Ambiguous);
    assert_eq!(rp.hooks[0].tables[0].paths.len(), 3);
}

/// The destination index of long `-d ADDR/32` chains skips only rules that cannot match:
/// the path equals a plain in-order scan (here: general rules interleaved, a negated /32, a
/// /24, and two rules for the packet's destination).
#[test]
fn destination_index_is_exact() {
    // Build the chain and, alongside, the in-order scan's answer for destination .42.
    let mut rules = String::from(":SVC - [0:0]\n-A INPUT -j SVC\n");
    let mut want = vec!["filter:INPUT:rule:1".to_string()];
    let mut n = 0;
    let mut add = |rules: &mut String, text: String, matches: bool| {
        n += 1;
        *rules += &text;
        if matches {
            want.push(format!("filter:SVC:rule:{n}"));
        }
    };
    for i in 0..100 {
        add(
            &mut rules,
            format!("-A SVC -d 10.96.0.{i}/32 -p tcp -j LOG\n"),
            i == 42,
        );
        if i % 25 == 0 {
            add(&mut rules, "-A SVC -p udp -j LOG\n".into(), false);
            add(
                &mut rules,
                "-A SVC -d 10.96.0.0/24 -p tcp -m tcp --dport 80 -j LOG\n".into(),
                true,
            );
            add(
                &mut rules,
                "-A SVC ! -d 10.96.0.7/32 -p tcp -m tcp --dport 80 -j LOG\n".into(),
                true,
            );
        }
    }
    add(
        &mut rules,
        "-A SVC -d 10.96.0.42/32 -j ACCEPT\n".into(),
        true,
    );
    let dump = filter(&rules);
    let t = Case::new(Hook::Input, tcp("10.0.0.1", 1, "10.96.0.42", 80, 0)).run(
        &dump,
        Table::Filter,
        &unknown(),
    );
    let (v, s) = single(&t);
    assert_eq!(*v, TableVerdict::Accept);
    assert_eq!(s, want);
    assert_eq!(s.len(), 11);
    let t = Case::new(Hook::Input, tcp("10.0.0.1", 1, "10.96.0.7", 80, 0)).run(
        &dump,
        Table::Filter,
        &unknown(),
    );
    assert!(single(&t).1.contains(&"filter:SVC:rule:11".to_string()));
    assert!(
        !single(&t).1.contains(&"filter:SVC:rule:4".to_string()),
        "! -d 10.96.0.7/32 does not match .7"
    );
}

/// ufw6 puts `-m rt --rt-type 0 -j DROP` in front of every input rule. The capture has no
/// extension headers, so the rule is a branch point; the kernel's TRACE (capture_fidelity
/// ufw6) goes on past it for ordinary packets: that path is the first candidate.
#[test]
fn extension_header_matches_branch_with_the_ordinary_path_first() {
    let dump = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        -A INPUT -m rt --rt-type 0 -j DROP\n\
        -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n";
    let h = tcp("fd00::2", 40000, "fd00::1", 22, tcp_flags::SYN);
    let t = Case::new(Hook::Input, h).run(dump, Table::Filter, &unknown());
    assert_eq!(t.candidates.len(), 2);
    assert_eq!(
        steps(),
        [
            vec!["filter:INPUT:rule:2".to_string()],
            vec!["filter:INPUT:rule:1".to_string()],
        ]
    );
    assert_eq!(t.candidates[0].verdict, TableVerdict::Accept);
    assert!(!t.candidates[0].assumptions[0].matched);
    // Other undecidable matches keep the matched path first (e.g. a limit in front of LOG).
    let dump = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        -A INPUT -m limit --limit 3/min -j DROP\n\
        -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n";
    let h = tcp("fd00::2", 40000, "fd00::1", 22, tcp_flags::SYN);
    let t = Case::new(Hook::Input, h).run(dump, Table::Filter, &unknown());
    assert_eq!(steps()[0], ["filter:INPUT:rule:1"]);
    assert!(t.candidates[0].assumptions[0].matched);
}

#[test]
fn ipv6_rules_and_icmpv6() {
    let dump = "# Generated by ip6tables-save v1.8.9 on x\n*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        -A INPUT -s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT\n\
        -A INPUT -d 2001:db8::1/128 -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n";
    let mut h = tcp("fe80::2", 0, "fe80::1", 0, 0);
    h.proto = 58;
    h.l4 = L4::Icmpv6 {
        icmp_type: 135,
        code: 0,
        id: 0,
        seq: 0,
        quoted: vec![],
    };
    let t = Case::new(Hook::Input, h).run(dump, Table::Filter, &unknown());
    assert_eq!(
        single(&t),
        (
            &TableVerdict::Accept,
            vec!["filter:INPUT:rule:1".to_string()]
        )
    );
    let t = Case::new(Hook::Input, tcp("2001:db8::9", 5, "2001:db8::1", 23, 0)).run(
        dump,
        Table::Filter,
        &unknown(),
    );
    assert_eq!(
        single(&t),
        (
            &TableVerdict::Drop,
            vec!["filter:INPUT:policy:3".to_string()]
        )
    );
}

/// Observations shared with other stages (a lost probe event) constrain only what holds for
/// the whole group: a DNAT visible "after mangle" must not make mangle inconsistent.
#[test]
fn shared_observations_are_weaker_evidence() {
    use trace_core::packet::{Stage, StageObservation};
    let dump = "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";
    let ev = Evaluator::new(rules::parse(dump).unwrap());
    let before = tcp("10.0.0.1", 1, "10.0.0.2", 80, 0);
    let after = tcp("10.0.0.1", 1, "10.0.0.3", 8080, 0);
    let obs = TableObservation {
        table: Table::Mangle,
        priority: -150,
        before: PacketState {
            headers: before.into(),
            mark: 0,
            ct: NEW,
        },
        after: Some(PacketState {
            headers: after.into(),
            mark: 0x10,
            ct: NEW,
        }),
        verdict: ObservedVerdict::Accept,
    };
    let mk = |shared: bool| PacketTrace {
        id: 1,
        skb: 1,
        gen: 1,
        netns: 1,
        family: Family::Ipv4,
        first_ts_ns: 0,
        hooks: vec![HookPass {
            hook: Hook::Prerouting,
            ts_ns: 0,
            in_dev: Some("eth0".into()),
            out_dev: None,
            mac: None,
            uid: None,
            gid: None,
            owners: Vec::new(),
            tables: vec![obs.clone()],
            stages: vec![StageObservation {
                stage: Stage::Table {
                    table: Table::Mangle,
                },
                priority: -150,
                before: obs.before.clone(),
                after: obs.after.clone(),
                verdict: ObservedVerdict::Accept,
                shared,
            }],
            probes: vec![],
            bridge: None,
        }],
        incomplete: false,
        fate: Default::default(),
    };
    assert_eq!(
        reconstruct(&mk(false), &ev, &unknown()).status,
        Status::Inconsistent
    );
    assert_eq!(
        reconstruct(&mk(true), &ev, &unknown()).status,
        Status::Confirmed
    );
}

/// physdev without bridge port info (the packet did not come in through a bridge): options
/// without `!` fail, negated ones match; through a bridge the port is unknown: a branch.
#[test]
fn physdev_decided_for_unbridged_packets() {
    let dump = filter(
        "-A FORWARD -m physdev --physdev-is-bridged -j LOG\n\
         -A FORWARD -m physdev ! --physdev-is-in -j LOG\n\
         -A FORWARD -m physdev --physdev-in veth+ -j LOG\n\
         -A FORWARD -j ACCEPT\n",
    );
    let mut ctx = NetContext::from_addrs([IfaceAddr {
        iface: "br0".into(),
        addr: "10.0.0.1".parse().unwrap(),
        broadcast: None,
    }]);
    ctx.bridges = vec!["br0".into()];
    ctx.bridges_known = true;
    let t = Case::new(Hook::Forward, tcp("10.0.0.5", 1, "10.1.0.2", 2, 0))
        .out("br0")
        .run(&dump, Table::Filter, &ctx);
    assert_eq!(
        single(&t).1,
        ["filter:FORWARD:rule:2", "filter:FORWARD:policy:4"]
    );
    let mut c = Case::new(Hook::Forward, tcp("10.0.0.5", 1, "10.1.0.2", 2, 0)).out("eth1");
    c.in_dev = Some("br0");
    let t = c.run(&dump, Table::Filter, &ctx);
    assert_eq!(
        t.candidates.len(),
        8,
        "bridged: all three rules are branch points"
    );
    let t = Case::new(Hook::Forward, tcp("10.0.0.5", 1, "10.1.0.2", 2, 0))
        .out("br0")
        .run(&dump, Table::Filter, &unknown());
    assert_eq!(t.candidates.len(), 8, "bridges unknown: branch points");
}

/// A block list of `-s ADDR/32` rules gets a source index; the path equals the in-order scan.
#[test]
fn source_index_is_exact() {
    let mut rules = String::from(":BLOCK - [0:0]\n-A INPUT -j BLOCK\n");
    let mut want = vec!["filter:INPUT:rule:1".to_string()];
    let mut n = 0;
    let mut add = |rules: &mut String, text: String, matches: bool| {
        n += 1;
        *rules += &text;
        if matches {
            want.push(format!("filter:BLOCK:rule:{n}"));
        }
    };
    for i in 0..200 {
        add(
            &mut rules,
            format!("-A BLOCK -s 198.51.100.{i}/32 -j LOG\n"),
            i == 77,
        );
        if i % 50 == 0 {
            add(
                &mut rules,
                "-A BLOCK -s 198.51.100.0/24 -j LOG\n".into(),
                true,
            );
            add(
                &mut rules,
                "-A BLOCK -d 10.0.0.1/32 -p tcp -j LOG\n".into(),
                true,
            );
        }
    }
    add(
        &mut rules,
        "-A BLOCK -s 198.51.100.77/32 -j DROP\n".into(),
        true,
    );
    let dump = filter(&rules);
    let t = Case::new(Hook::Input, tcp("198.51.100.77", 1, "10.0.0.1", 2, 0)).run(
        &dump,
        Table::Filter,
        &unknown(),
    );
    let (v, s) = single(&t);
    assert_eq!(*v, TableVerdict::Drop);
    assert_eq!(s, want);
}

/// --ctorig*/--ctrepl* are decided where the tuples are known, and branch where not.
#[test]
fn conntrack_tuples_when_known() {
    use trace_core::eval::{CtTuples, Tuple};
    let dump = filter(
        "-A FORWARD -m conntrack --ctorigdst 10.96.0.10/32 --ctorigdstport 80 -j LOG\n\
         -A FORWARD -m conntrack --ctrepldst 10.0.0.1 -j LOG\n\
         -A FORWARD -m conntrack ! --ctorigsrc 10.0.0.0/8 -j LOG\n",
    );
    let after_dnat = tcp("10.0.0.1", 40000, "10.244.0.2", 8080, 0);
    let mut c = Case::new(Hook::Forward, after_dnat.clone())
        .out("cni0")
        .ct(EST);
    c.tuples = CtTuples {
        orig: Some(Tuple::of(&tcp("10.0.0.1", 40000, "10.96.0.10", 80, 0))),
        reply: Some(Tuple::of(&after_dnat).inverse()),
    };
    let t = c.run(&dump, Table::Filter, &unknown());
    assert_eq!(
        single(&t).1,
        [
            "filter:FORWARD:rule:1",
            "filter:FORWARD:rule:2",
            "filter:FORWARD:policy:4"
        ]
    );
    c.tuples.reply = None;
    let t = c.run(&dump, Table::Filter, &unknown());
    assert_eq!(
        t.candidates.len(),
        2,
        "unknown reply tuple: rule 2 is a branch point"
    );
}

/// Reconstruction derives the tuples from the traversal: an ESTABLISHED packet DNAT'ed by
/// conntrack still has the original destination port in its original tuple.
#[test]
fn reconstruction_knows_the_original_tuple() {
    let dump = filter("-A FORWARD -m conntrack --ctorigdstport 10000 -j ACCEPT\n");
    let ev = Evaluator::new(rules::parse(&dump).unwrap());
    let pre = tcp("192.168.64.5", 5000, "192.168.64.4", 10000, tcp_flags::ACK);
    let post = tcp("192.168.64.5", 5000, "172.19.0.9", 80, tcp_flags::ACK);
    let st = |h: &Headers| PacketState {
        headers: h.clone().into(),
        mark: 0,
        ct: EST,
    };
    let obs = |t: Table, p: i32, b: &Headers, a: &Headers| TableObservation {
        table: t,
        priority: p,
        before: st(b),
        after: Some(st(a)),
        verdict: ObservedVerdict::Accept,
    };
    let pass = |hook, tables| HookPass {
        hook,
        ts_ns: 0,
        in_dev: Some("eth0".into()),
        out_dev: Some("br0".into()),
        mac: None,
        uid: None,
        gid: None,
        owners: Vec::new(),
        tables,
        stages: vec![],
        probes: vec![],
        bridge: None,
    };
    let p = PacketTrace {
        id: 1,
        skb: 1,
        gen: 1,
        netns: 1,
        family: Family::Ipv4,
        first_ts_ns: 0,
        hooks: vec![
            pass(Hook::Prerouting, vec![obs(Table::Nat, -100, &pre, &post)]),
            pass(Hook::Forward, vec![obs(Table::Filter, 0, &post, &post)]),
            pass(Hook::Postrouting, vec![obs(Table::Nat, 100, &post, &post)]),
        ],
        incomplete: false,
        fate: Default::default(),
    };
    // The dump has no nat table: reconstruct only the filter table's hook.
    let rp = reconstruct(&p, &ev, &unknown());
    let filter = &rp.hooks[1].tables[0];
    assert_eq!(filter.status, Status::Confirmed, "{filter:#?}");
    assert_eq!(
        filter.paths[0]
            .steps
            .iter()
            .map(|s| s.id.to_string())
            .collect::<Vec<_>>(),
        ["filter:FORWARD:rule:1"]
    );
}

/// One nat table observation: `before` → `after` on `hook`, NEW connection.
fn nat_packet(
    hook: Hook,
    in_dev: Option<&str>,
    out_dev: Option<&str>,
    before: Headers,
    after: Headers,
) -> PacketTrace {
    PacketTrace {
        id: 1,
        skb: 1,
        gen: 1,
        netns: 1,
        family: Family::Ipv4,
        first_ts_ns: 0,
        hooks: vec![HookPass {
            hook,
            ts_ns: 0,
            in_dev: in_dev.map(str::to_string),
            out_dev: out_dev.map(str::to_string),
            mac: None,
            uid: None,
            gid: None,
            owners: Vec::new(),
            tables: vec![TableObservation {
                table: Table::Nat,
                priority: Table::Nat.priority(hook).unwrap(),
                before: PacketState {
                    headers: before.into(),
                    mark: 0,
                    ct: NEW,
                },
                after: Some(PacketState {
                    headers: after.into(),
                    mark: 0,
                    ct: NEW,
                }),
                verdict: ObservedVerdict::Accept,
            }],
            stages: vec![],
            probes: vec![],
            bridge: None,
        }],
        incomplete: false,
        fate: Default::default(),
    }
}

fn nat_status(dump: &str, p: &PacketTrace, ctx: &NetContext) -> (Status, Vec<String>) {
    let ev = Evaluator::new(rules::parse(dump).unwrap());
    let rp = reconstruct(p, &ev, ctx);
    let t = &rp.hooks[0].tables[0];
    (
        t.status,
        t.paths
            .first()
            .map(|p| p.steps.iter().map(|s| s.id.to_string()).collect())
            .unwrap_or_default(),
    )
}

fn nat_dump(rules: &str) -> String {
    format!("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n{rules}COMMIT\n")
}

/// SNAT/MASQUERADE (POSTROUTING), REDIRECT (PREROUTING) and NETMAP: the observed translation
/// must be one the rule produces; no NAT rule means no address change (a null binding may
/// still move the source port).
#[test]
fn nat_targets_are_checked_against_the_observed_translation() {
    let ctx = NetContext::from_addrs([
        IfaceAddr {
            iface: "eth0".into(),
            addr: "203.0.113.1".parse().unwrap(),
            broadcast: None,
        },
        IfaceAddr {
            iface: "eth1".into(),
            addr: "10.0.0.1".parse().unwrap(),
            broadcast: None,
        },
    ]);
    let before = tcp("10.0.0.5", 40000, "198.51.100.9", 443, tcp_flags::SYN);
    let post = |src: &str, sport| {
        nat_packet(
            Hook::Postrouting,
            Some("eth1"),
            Some("eth0"),
            before.clone(),
            tcp(src, sport, "198.51.100.9", 443, tcp_flags::SYN),
        )
    };

    let snat = nat_dump("-A POSTROUTING -s 10.0.0.0/24 -o eth0 -j SNAT --to-source 203.0.113.10-203.0.113.20:1024-2048\n");
    assert_eq!(
        nat_status(&snat, &post("203.0.113.15", 1500), &ctx).0,
        Status::Confirmed
    );
    assert_eq!(
        nat_status(&snat, &post("203.0.113.30", 1500), &ctx).0,
        Status::Inconsistent,
        "address outside the range"
    );
    assert_eq!(
        nat_status(&snat, &post("203.0.113.15", 3000), &ctx).0,
        Status::Inconsistent,
        "port outside the range"
    );

    let masq = nat_dump("-A POSTROUTING -o eth0 -j MASQUERADE\n");
    assert_eq!(
        nat_status(&masq, &post("203.0.113.1", 40000), &ctx).0,
        Status::Confirmed
    );
    assert_eq!(
        nat_status(&masq, &post("203.0.113.1", 61000), &ctx).0,
        Status::Confirmed,
        "a clash may move the port"
    );
    assert_eq!(
        nat_status(&masq, &post("10.0.0.1", 40000), &ctx).0,
        Status::Inconsistent,
        "not an address of eth0"
    );
    assert_eq!(
        nat_status(&masq, &post("10.0.0.1", 40000), &NetContext::unknown()).0,
        Status::Confirmed,
        "addresses unknown"
    );

    // No NAT rule: the null binding keeps the addresses (may move the source port).
    let none = nat_dump("");
    assert_eq!(
        nat_status(&none, &post("10.0.0.5", 40001), &ctx).0,
        Status::Confirmed
    );
    assert_eq!(
        nat_status(&none, &post("203.0.113.1", 40000), &ctx).0,
        Status::Inconsistent
    );

    let redirect =
        nat_dump("-A PREROUTING -i eth1 -p tcp -m tcp --dport 443 -j REDIRECT --to-ports 3129\n");
    let pre = |dst: &str, dport| {
        nat_packet(
            Hook::Prerouting,
            Some("eth1"),
            None,
            before.clone(),
            tcp("10.0.0.5", 40000, dst, dport, tcp_flags::SYN),
        )
    };
    assert_eq!(
        nat_status(&redirect, &pre("10.0.0.1", 3129), &ctx).0,
        Status::Confirmed
    );
    assert_eq!(
        nat_status(&redirect, &pre("203.0.113.1", 3129), &ctx).0,
        Status::Inconsistent,
        "REDIRECT goes to the input device's address"
    );
    assert_eq!(
        nat_status(&redirect, &pre("10.0.0.1", 8080), &ctx).0,
        Status::Inconsistent
    );

    let netmap = nat_dump("-A PREROUTING -d 198.51.100.0/24 -j NETMAP --to 192.0.2.0/24\n");
    assert_eq!(
        nat_status(&netmap, &pre("192.0.2.9", 443), &ctx).0,
        Status::Confirmed
    );
    assert_eq!(
        nat_status(&netmap, &pre("192.0.2.10", 443), &ctx).0,
        Status::Inconsistent
    );

    // A translation in a table that does not translate is never explained.
    let mangle = "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";
    let mut p = pre("192.0.2.9", 443);
    p.hooks[0].tables[0].table = Table::Mangle;
    p.hooks[0].tables[0].priority = -150;
    assert_eq!(nat_status(mangle, &p, &ctx).0, Status::Inconsistent);
}

/// xt_recent: `--set` matches whatever the list held (found on the port-knocking dump: the
/// knock rule is not a branch point); `--rcheck`/`--update`/`--remove` are, and a check of a
/// list no rule adds to (kube-proxy session affinity whose endpoint chain is not in the
/// dump) shows the not-matched path first: such a list is empty unless written through
/// /proc.
#[test]
fn recent_set_is_decided_and_unfilled_lists_are_checked_empty_first() {
    let h = tcp("10.0.0.2", 40000, "10.0.0.1", 34567, tcp_flags::SYN);
    let knock = filter(
        "-A INPUT -p tcp -m tcp --dport 34567 -m recent --set --name KNOCK --mask 255.255.255.255 --rsource -j DROP\n\
         -A INPUT -m recent ! --set --name OTHER --rsource -j DROP\n",
    );
    let t = Case::new(Hook::Input, h.clone()).run(&knock, Table::Filter, &unknown());
    let (v, s) = single(&t);
    assert_eq!(
        (v, s),
        (&TableVerdict::Drop, vec!["filter:INPUT:rule:1".to_string()])
    );
    let other = tcp("10.0.0.2", 40000, "10.0.0.1", 22, tcp_flags::SYN);
    let t = Case::new(Hook::Input, other).run(&knock, Table::Filter, &unknown());
    assert_eq!(single(&t).1, ["filter:INPUT:policy:3"]);

    // Checked by a rule of the ruleset that also sets it: a branch, the matched path first.
    let h = tcp("10.0.0.2", 40000, "10.0.0.1", 22, tcp_flags::SYN);
    let filled = filter(
        "-A INPUT -p tcp -m tcp --dport 22 -m recent --rcheck --seconds 15 --name KNOCK --rsource -m recent --remove --name KNOCK --rsource -j ACCEPT\n\
         -A INPUT -p tcp -m tcp --dport 34567 -m recent --set --name KNOCK --rsource -j DROP\n",
    );
    let t = Case::new(Hook::Input, h.clone()).run(&filled, Table::Filter, &unknown());
    assert_eq!(t.candidates.len(), 2);
    assert_eq!(steps()[0], ["filter:INPUT:rule:1"]);
    assert_eq!(steps()[1], ["filter:INPUT:policy:3"]);
    assert!(t.candidates[0].assumptions[0].matched);

    // No rule sets KUBE-SEP-X: the not-matched path leads; both stay candidates.
    let unfilled = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SVC - [0:0]\n:KUBE-SEP-X - [0:0]\n\
        -A PREROUTING -j KUBE-SVC\n\
        -A KUBE-SVC -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-X --mask 255.255.255.255 --rsource -j KUBE-SEP-X\n\
        -A KUBE-SVC -j KUBE-SEP-X\nCOMMIT\n";
    let t = Case::new(Hook::Prerouting, h).run(unfilled, Table::Nat, &unknown());
    assert_eq!(t.candidates.len(), 2);
    assert_eq!(
        steps()[0],
        [
            "nat:PREROUTING:rule:1",
            "nat:KUBE-SVC:rule:2",
            "nat:KUBE-SEP-X:return:1",
            "nat:KUBE-SVC:return:3",
            "nat:PREROUTING:policy:2"
        ]
    );
    assert!(!t.candidates[0].assumptions[0].matched);
    assert_eq!(
        trace_core::eval::implausible_assumptions(&t.candidates[1].assumptions),
        1
    );
}

/// `-m set` is decided from the netns's ipsets when the capture read them (`ipset save`),
/// and stays a branch point when it did not, when a counter condition is asked, or when a
/// `SET` target of the ruleset changes the set (anti-portscan: contents depend on earlier
/// packets). Found by capture_fidelity ipvs_calico: `KUBE-SERVICES -m set --match-set
/// KUBE-CLUSTER-IP dst,dst -j ACCEPT` before an ACCEPT policy is otherwise undecidable.
#[test]
fn set_match_uses_the_read_ipsets() {
    let nat = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
        -A PREROUTING ! -s 10.213.2.0/24 -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ\n\
        -A PREROUTING -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\n\
        -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\nCOMMIT\n";
    let mut ctx = NetContext::from_addrs([]);
    ctx.ipsets = Some(
        trace_core::eval::ipset::parse_save(
            "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n\
             add KUBE-CLUSTER-IP 10.213.2.2,tcp:8080\n",
        )
        .unwrap(),
    );
    let member = tcp("10.213.1.2", 40000, "10.213.2.2", 8080, tcp_flags::SYN);
    let t = Case::new(Hook::Prerouting, member.clone()).run(nat, Table::Nat, &ctx);
    assert_eq!(
        single(&t).1,
        [
            "nat:PREROUTING:rule:1",
            "nat:KUBE-MARK-MASQ:rule:1",
            "nat:KUBE-MARK-MASQ:return:2",
            "nat:PREROUTING:rule:2"
        ]
    );
    assert_eq!(t.candidates[0].mark, 0x4000);
    let other = udp("10.213.1.2", "10.213.2.2", 8080);
    let t = Case::new(Hook::Prerouting, other).run(nat, Table::Nat, &ctx);
    assert_eq!(single(&t).1, ["nat:PREROUTING:policy:3"]);
    // Not read: both rules branch.
    let t = Case::new(Hook::Prerouting, member.clone()).run(nat, Table::Nat, &unknown());
    assert!(t.candidates.len() > 1, "{:#?}", steps());
    // A counter condition, and a set a SET target changes, stay branch points.
    let counters = nat.replace("-j ACCEPT", "--packets-gt 3 -j ACCEPT");
    let t = Case::new(Hook::Prerouting, member.clone()).run(&counters, Table::Nat, &ctx);
    assert!(t.candidates.len() > 1, "{:#?}", steps());
    let dynamic = nat.replace(
        "-A KUBE-MARK-MASQ -j MARK",
        "-A KUBE-MARK-MASQ -j SET --add-set KUBE-CLUSTER-IP dst,dst --exist\n-A KUBE-MARK-MASQ -j MARK",
    );
    let t = Case::new(Hook::Prerouting, member).run(&dynamic, Table::Nat, &ctx);
    assert!(t.candidates.len() > 1, "{:#?}", steps());
    // ... but what the snapshot says leads (anti-portscan: a first SYN from a source not yet
    // in the scanner set is shown taking the not-matched path).
    assert_eq!(steps()[0][0], "nat:PREROUTING:rule:1");
    let other = udp("10.213.1.2", "10.213.2.2", 8080);
    let t = Case::new(Hook::Prerouting, other).run(&dynamic, Table::Nat, &ctx);
    assert!(t.candidates.len() > 1, "{:#?}", steps());
    assert_eq!(steps()[0], ["nat:PREROUTING:policy:3"]);
    // A transparent-socket lookup (TPROXY setups) is a branch point, the unmatched path first.
    let sock = "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
        -A PREROUTING -m socket --transparent -j MARK --set-xmark 0x200/0xffffffff\nCOMMIT\n";
    let h = tcp("10.213.1.2", 40000, "10.213.2.2", 8080, tcp_flags::SYN);
    let t = Case::new(Hook::Prerouting, h).run(sock, Table::Mangle, &ctx);
    assert_eq!(t.candidates.len(), 2);
    assert_eq!(steps()[0], ["mangle:PREROUTING:policy:2"]);
}

/// Within one traversal, `recent` tests follow from the rules the path already passed
/// (found by capture_fidelity nexus_v6: `--set` then `--update --hitcount` with a `limit`
/// in front of NFLOG, then the same `--update` in front of DROP. iptrace showed accepted
/// SSH and ICMP packets going through the NFLOG rule; a matched update keeps an identical
/// test true, so NFLOG-then-ACCEPT is impossible and the accepted path is the kernel's).
#[test]
fn recent_tests_on_one_path_are_consistent() {
    let chain = filter(
        ":SSHBRUTE - [0:0]\n\
         -A INPUT -p tcp -m tcp --dport 22 -j SSHBRUTE\n\
         -A SSHBRUTE -m recent --set --name SSH --rsource\n\
         -A SSHBRUTE -m recent --update --seconds 300 --hitcount 10 --name SSH --rsource -m limit --limit 1/sec --limit-burst 100 -j NFLOG --nflog-group 0\n\
         -A SSHBRUTE -m recent --update --seconds 300 --hitcount 10 --name SSH --rsource -j DROP\n\
         -A SSHBRUTE -m recent --rcheck --name SSH --rsource -j ACCEPT\n",
    );
    let h = tcp("10.0.0.2", 40000, "10.0.0.1", 22, tcp_flags::SYN);
    let t = Case::new(Hook::Input, h.clone()).run(&chain, Table::Filter, &unknown());
    let paths: Vec<String> = steps().iter().map(|p| p.join(" ")).collect();
    // The NFLOG rule matched ⇒ its update matched ⇒ the identical update matches: DROP.
    // Not logged: the update may or may not have matched (the limit), both follow.
    // Every path that reaches rule 4 finds the entry the --set made: no policy path.
    assert_eq!(
        paths,
        [
            "filter:INPUT:rule:1 filter:SSHBRUTE:rule:1 filter:SSHBRUTE:rule:2 filter:SSHBRUTE:rule:3",
            "filter:INPUT:rule:1 filter:SSHBRUTE:rule:1 filter:SSHBRUTE:rule:3",
            "filter:INPUT:rule:1 filter:SSHBRUTE:rule:1 filter:SSHBRUTE:rule:4",
        ],
        "{t:#?}"
    );
    // --remove empties the entry: a later test on the same path fails.
    let knock = filter(
        "-A INPUT -m recent --rcheck --name K --rsource -m recent --remove --name K --rsource -j MARK --set-xmark 0x1/0xffffffff\n\
         -A INPUT -m recent --rcheck --name K --rsource -j DROP\n\
         -A INPUT -m recent --set --name K --rsource -j RETURN\n",
    );
    let t = Case::new(Hook::Input, h).run(&knock, Table::Filter, &unknown());
    let paths: Vec<String> = steps().iter().map(|p| p.join(" ")).collect();
    assert_eq!(
        paths,
        [
            "filter:INPUT:rule:1 filter:INPUT:rule:3 filter:INPUT:policy:4",
            "filter:INPUT:rule:2",
            "filter:INPUT:rule:3 filter:INPUT:policy:4",
        ],
        "{t:#?}"
    );
}

/// `--hashlimit-above` / `--connlimit-above` match only a source over its limit: branch
/// points whose unmatched path is shown first (in front of NFLOG the verdict cannot tell);
/// `-upto`, `limit` and `quota` keep the matched path first.
#[test]
fn over_limit_matches_show_the_unmatched_path_first() {
    let dump = filter(
        "-A INPUT -p udp -m hashlimit --hashlimit-above 1000/sec --hashlimit-burst 50 --hashlimit-mode srcip --hashlimit-name a -j NFLOG --nflog-group 5\n\
         -A INPUT -p udp -m connlimit --connlimit-above 5 --connlimit-mask 32 --connlimit-saddr -j NFLOG --nflog-group 6\n\
         -A INPUT -p udp -m hashlimit --hashlimit-upto 1000/sec --hashlimit-burst 50 --hashlimit-mode srcip --hashlimit-name b -j ACCEPT\n",
    );
    let h = udp("10.0.0.2", "10.0.0.1", 53);
    let t = Case::new(Hook::Input, h).run(&dump, Table::Filter, &unknown());
    assert_eq!(t.candidates.len(), 8);
    assert_eq!(steps()[0], ["filter:INPUT:rule:3"]);
    assert_eq!(
        trace_core::eval::implausible_assumptions(&t.candidates[0].assumptions),
        0
    );
}
