//! `-m physdev` (xt_physdev's physdev_mt) on captured bridge ports: a bridged packet's input
//! port (by ifindex, none when the device is gone), its output port (from the bridge's
//! FORWARD on), and a packet without bridge info.

use trace_core::eval::{EvalInput, Evaluator, NetContext};
use trace_core::event::{BridgeInfo, Headers, L4};
use trace_core::netfilter::{Hook, Table};
use trace_core::packet::PacketState;
use trace_core::rules;

fn icmp() -> Headers {
    Headers {
        src: "10.9.0.2".parse().unwrap(),
        dst: "10.9.0.3".parse().unwrap(),
        proto: 1,
        len: 84,
        tos: 0,
        ttl: 64,
        id: 1,
        frag: 0x4000,
        flowlabel: 0,
        l4: L4::Icmp {
            icmp_type: 8,
            code: 0,
            id: 1,
            seq: 1,
            quoted: Vec::new(),
        },
    }
}

fn ports(physin: Option<&str>, physout: Option<&str>) -> BridgeInfo {
    BridgeInfo {
        bridged: true,
        physin_ifindex: 4,
        physin: physin.map(Into::into),
        physout_ifindex: if physout.is_some() { 5 } else { 0 },
        physout: physout.map(Into::into),
    }
}

/// Does `-A FORWARD -m physdev <opts> -j ACCEPT` match (FORWARD, in = out = br0)? None: the
/// evaluator branched.
fn matches(opts: &str, bridge: Option<&BridgeInfo>, ctx: &NetContext) -> Option<bool> {
    let dump = format!(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         -A FORWARD -m physdev {opts} -j ACCEPT\nCOMMIT\n"
    );
    let ev = Evaluator::new(rules::parse(&dump).unwrap());
    let state = PacketState {
        headers: icmp().into(),
        mark: 0,
        ct: None,
    };
    let input = EvalInput {
        hook: Hook::Forward,
        in_dev: Some("br0"),
        out_dev: Some("br0"),
        mac: None,
        uid: None,
        gid: None,
        state: &state,
        nf_trace: false,
        tuples: Default::default(),
        dst_local: None,
        bridge,
    };
    let t = ev.evaluate(Table::Filter, &input, ctx).unwrap();
    if t.candidates.len() != 1 {
        return None;
    }
    let step = ev
        .step_id(Table::Filter, &t.candidates[0].steps[0])
        .to_string();
    Some(step == "filter:FORWARD:rule:1")
}

#[test]
fn bridged_forward_packet() {
    let ctx = NetContext::unknown();
    let b = ports(Some("vetha"), Some("vethb"));
    let m = |opts| matches(opts, Some(&b), &ctx);
    assert_eq!(m("--physdev-in vetha"), Some(true));
    assert_eq!(m("--physdev-in veth+"), Some(true));
    assert_eq!(m("--physdev-in vethb"), Some(false));
    assert_eq!(m("! --physdev-in vethb"), Some(true));
    assert_eq!(m("--physdev-out vethb"), Some(true));
    assert_eq!(m("! --physdev-out vethb"), Some(false));
    assert_eq!(m("--physdev-is-bridged"), Some(true));
    assert_eq!(m("! --physdev-is-bridged"), Some(false));
    assert_eq!(m("--physdev-is-in --physdev-is-out"), Some(true));
    assert_eq!(m("--physdev-in vetha --physdev-out vethb"), Some(true));
    assert_eq!(m("--physdev-in vetha --physdev-out vetha"), Some(false));
}

/// Before the bridge's FORWARD (PREROUTING, or a bridged packet routed up to the host) there
/// is no output port: `--physdev-is-bridged` and `--physdev-out` fail, negated or not for
/// the latter; a vanished input port makes `--physdev-in` pass and `--physdev-is-in` fail.
#[test]
fn missing_ports() {
    let ctx = NetContext::unknown();
    let b = ports(Some("vetha"), None);
    let m = |opts| matches(opts, Some(&b), &ctx);
    assert_eq!(m("--physdev-is-bridged"), Some(false));
    assert_eq!(m("! --physdev-is-bridged"), Some(true));
    assert_eq!(m("--physdev-out vethb"), Some(false));
    assert_eq!(m("! --physdev-out vethb"), Some(false));
    assert_eq!(m("! --physdev-is-out"), Some(true));
    let gone = ports(None, Some("vethb"));
    let m = |opts| matches(opts, Some(&gone), &ctx);
    assert_eq!(m("--physdev-in vetha"), Some(true));
    assert_eq!(m("--physdev-is-in"), Some(false));
    assert_eq!(m("! --physdev-is-in"), Some(true));
}

/// No bridge info: options without `!` fail, negated ones match, whatever the netns's bridges.
/// Not captured (None) on a bridge input device: a branch point.
#[test]
fn unbridged_and_uncaptured() {
    let mut ctx = NetContext::unknown();
    ctx.bridges = vec!["br0".into()];
    ctx.bridges_known = true;
    let none = BridgeInfo::NONE;
    let m = |opts| matches(opts, Some(&none), &ctx);
    assert_eq!(m("--physdev-in vetha"), Some(false));
    assert_eq!(m("! --physdev-in vetha"), Some(true));
    assert_eq!(m("! --physdev-is-bridged ! --physdev-is-in"), Some(true));
    assert_eq!(matches("--physdev-in vetha", None, &ctx), None);
}
