//! Record → replay: a recording made of probe events (as the nfhook probes emit them for the
//! docker fixture's remote SYN), the fixture's rule dump and the node's addresses replays to
//! the kernel's TRACE path; a truncated copy still yields what precedes the damage and an
//! error naming the offset.

use std::path::PathBuf;
use trace_core::assemble::ProbePlan;
use trace_core::eval::{IfaceAddr, NetContext};
use trace_core::event::{tcp_flags, CtSnapshot, Event, Headers, ProbeEvent, L4};
use trace_core::netfilter::{Family, Hook, Table};
use trace_core::reconstruct::{ReconstructedPacket, Status};
use trace_core::record::replay::Replayer;
use trace_core::record::{RecordError, RecordingReader, RecordingWriter};

const NETNS: u32 = 4026532177;

fn dump() -> Option<String> {
    let p = std::env::var_os("IPTRACE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
        .join("docker/legacy-remote.iptables-save.txt");
    match std::fs::read_to_string(&p) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!(
                "SKIPPED: fixture {}: {e} (set IPTRACE_FIXTURES)",
                p.display()
            );
            None
        }
    }
}

fn syn(dst: &str, dport: u16, ttl: u8) -> Headers {
    Headers {
        src: "192.168.64.5".parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto: 6,
        len: 60,
        tos: 0,
        ttl,
        id: 52575,
        frag: 0x4000,
        flowlabel: 0,
        l4: L4::Tcp {
            sport: 50676,
            dport,
            seq: 1715775752,
            ack: 0,
            window: 64240,
            flags: tcp_flags::SYN,
            res: 0,
            urgp: 0,
            options: vec![2, 4, 5, 0xb4],
        },
    }
}

/// The events the probes of `plan` emit for the remote SYN (one skb through PREROUTING,
/// FORWARD, POSTROUTING of the node), headers only when they changed.
fn syn_events(plan: &ProbePlan) -> Vec<Event> {
    let mut out = Vec::new();
    let mut ts = 1_000;
    let mut last: Option<Headers> = None;
    for hook in [Hook::Prerouting, Hook::Forward, Hook::Postrouting] {
        let hp = plan.get(NETNS, Family::Ipv4, hook).unwrap();
        for &prio in hp.probes() {
            let dnat_done = hook != Hook::Prerouting || prio > -100;
            let h = match (hook, dnat_done) {
                (Hook::Prerouting, false) => syn("192.168.64.4", 10000, 64),
                (Hook::Prerouting, true) => syn("172.19.0.9", 80, 64),
                _ => syn("172.19.0.9", 80, 63),
            };
            let ct = if hook == Hook::Prerouting && prio < -200 {
                None
            } else {
                let mut status = if dnat_done { 0x120 } else { 0 };
                if hook == Hook::Postrouting && prio > 100 {
                    status |= 0x80;
                }
                Some(CtSnapshot {
                    ctinfo: 2,
                    status,
                    mark: 0,
                    id: 9,
                })
            };
            let headers = (last.as_ref() != Some(&h)).then(|| h.clone());
            last = Some(h);
            ts += 10;
            out.push(Event::Probe(ProbeEvent {
                ts_ns: ts,
                skb: 0xffff8881224d84e0,
                gen: 1000,
                netns: NETNS,
                family: Family::Ipv4,
                hook,
                priority: prio,
                in_ifindex: 2,
                out_ifindex: if hook == Hook::Prerouting { 0 } else { 5 },
                in_dev: Some("eth0".into()),
                out_dev: (hook != Hook::Prerouting).then(|| "br-00ea7870520a".into()),
                mark: 0,
                ct,
                headers,
                mac: Some(vec![
                    0x66, 0x6b, 0x9d, 0x86, 0x56, 0xc7, 0x4a, 0x70, 0xb2, 0xaa, 0x8f, 0x4f, 8, 0,
                ]),
                uid: None,
                gid: None,
                owner_read: false,
                prev: None,
                sparse: false,
                bridge: None,
            }));
        }
    }
    out
}

fn recording(dump: &str) -> Vec<u8> {
    let mut plan = ProbePlan::new();
    plan.insert_iptables(
        NETNS,
        Family::Ipv4,
        &[Table::Raw, Table::Mangle, Table::Nat, Table::Filter],
        true,
    );
    let mut w = RecordingWriter::new(Vec::new()).unwrap();
    w.write_plan(&plan, &[NETNS]).unwrap();
    w.write_ruleset(NETNS, 1, dump).unwrap();
    let a = |iface: &str, addr: &str, brd: &str| IfaceAddr {
        iface: iface.into(),
        addr: addr.parse().unwrap(),
        broadcast: Some(brd.parse().unwrap()),
    };
    w.write_netinfo(
        NETNS,
        &NetContext::from_addrs([
            a("eth0", "192.168.64.4", "192.168.64.255"),
            a("br-00ea7870520a", "172.19.0.1", "172.19.255.255"),
        ]),
    )
    .unwrap();
    for e in syn_events(&plan) {
        w.write_event(&e).unwrap();
    }
    w.write_lost(0).unwrap();
    w.into_inner()
}

fn replay(bytes: &[u8]) -> (Vec<ReconstructedPacket>, Option<RecordError>) {
    let mut r = Replayer::new(None);
    let mut out = Vec::new();
    let mut err = None;
    for item in RecordingReader::new(bytes).unwrap() {
        match item {
            Ok((_, rec)) => out.extend(r.push(rec)),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    out.extend(r.finish());
    (out, err)
}

#[test]
fn replayed_syn_follows_the_kernel_trace() {
    let Some(dump) = dump() else { return };
    let (pkts, err) = replay(&recording(&dump));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(pkts.len(), 1);
    let rp = &pkts[0];
    assert_eq!(rp.status, Status::Confirmed, "{:#?}", rp.hooks);
    let traced: Vec<String> = rp
        .steps()
        .filter(|(_, _, s)| s.traced)
        .map(|(_, _, s)| s.id.to_string())
        .collect();
    // The README's remote SYN, from where TRACE was enabled.
    assert_eq!(
        traced,
        [
            "raw:PREROUTING:policy:2",
            "mangle:PREROUTING:policy:1",
            "nat:PREROUTING:rule:1",
            "nat:DOCKER:rule:3",
            "mangle:FORWARD:policy:1",
            "filter:FORWARD:rule:1",
            "filter:DOCKER-USER:return:1",
            "filter:FORWARD:rule:2",
            "filter:DOCKER-ISOLATION-STAGE-1:return:3",
            "filter:FORWARD:rule:8",
            "filter:DOCKER:rule:1",
            "mangle:POSTROUTING:policy:1",
            "nat:POSTROUTING:policy:4"
        ]
    );
    // The TRACE line of the DNAT rule, with the kernel's fields (MAC on a received packet).
    let lines = trace_core::output::trace::trace_lines(
        rp,
        trace_core::output::trace::TraceFrom::TraceTarget,
    );
    assert_eq!(
        lines[3],
        "TRACE: nat:DOCKER:rule:3 IN=eth0 OUT= MAC=66:6b:9d:86:56:c7:4a:70:b2:aa:8f:4f:08:00 SRC=192.168.64.5 DST=192.168.64.4 LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID=52575 DF PROTO=TCP SPT=50676 DPT=10000 SEQ=1715775752 ACK=0 WINDOW=64240 RES=0x00 SYN URGP=0 OPT (020405B4) "
    );
    // JSON line carries the schema and the DNAT.
    let mut buf = Vec::new();
    trace_core::output::json::write_json(&mut buf, rp).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    assert_eq!(v["schema"], "iptrace.packet.v1");
    assert_eq!(
        v["hooks"][0]["tables"][2]["path"]["nat"]["to"],
        "172.19.0.9:80"
    );
}

#[test]
fn truncated_recording_reports_offset_after_processing_the_good_part() {
    let Some(dump) = dump() else { return };
    let bytes = recording(&dump);
    // Cut inside the last event record: every earlier event is still assembled (the packet
    // comes out of flush, incomplete) and the error names where the damaged record starts.
    let lines: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    let last_event_start = lines[lines.len() - 3] + 1;
    let cut = &bytes[..last_event_start + 20];
    let (pkts, err) = replay(cut);
    match err {
        Some(RecordError::Truncated { offset }) => assert_eq!(offset, last_event_start as u64),
        other => panic!("{other:?}"),
    }
    assert_eq!(pkts.len(), 1, "the packet assembled from the good records");
    assert!(pkts[0]
        .steps()
        .any(|(_, _, s)| s.id.to_string() == "nat:DOCKER:rule:3"));
}

#[test]
fn pretty_tree_shows_rules_nat_and_status_and_colors_only_on_request() {
    let Some(dump) = dump() else { return };
    let (pkts, _) = replay(&recording(&dump));
    let render = |color| {
        let mut buf = Vec::new();
        trace_core::output::pretty::write_pretty(
            &mut buf,
            &pkts[0],
            trace_core::output::pretty::Style { color },
        )
        .unwrap();
        String::from_utf8(buf).unwrap()
    };
    let plain = render(false);
    assert!(!plain.contains('\x1b'), "{plain}");
    assert!(plain.contains("[confirmed]"));
    assert!(plain.contains("PREROUTING in=eth0 ct=NEW"));
    assert!(plain.contains("nat:DOCKER:rule:3  ! -i br-00ea7870520a -p tcp -m tcp --dport 10000 -j DNAT --to-destination 172.19.0.9:80"));
    assert!(plain.contains("NAT 192.168.64.4:10000 → 172.19.0.9:80"));
    assert!(plain.contains("filter:DOCKER-USER:return:1  -j RETURN"));
    assert!(render(true).contains("\x1b[32mconfirmed\x1b[0m"));
}

/// docs/json-schema.md documents every key the JSON output emits (packet, hook, table, path,
/// step): the schema doc cannot silently drift from the producer.
#[test]
fn json_keys_are_documented() {
    let Some(dump) = dump() else { return };
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/json-schema.md"
    ))
    .unwrap();
    let documented = |key: &str| {
        doc.lines().any(|l| {
            l.starts_with('|')
                && l.split('|')
                    .nth(1)
                    .is_some_and(|c| c.contains(&format!("`{key}`")))
        })
    };
    let (pkts, _) = replay(&recording(&dump));
    let v = trace_core::output::json::packet_json(&pkts[0]);
    let mut objects = vec![&v];
    let hook = &v["hooks"][0];
    let table = &hook["tables"][2];
    let path = &table["path"];
    let step = &path["steps"][0];
    objects.extend([hook, table, path, step]);
    for o in objects {
        for k in o.as_object().unwrap().keys() {
            assert!(
                documented(k),
                "key `{k}` is not documented in docs/json-schema.md"
            );
        }
    }
}
