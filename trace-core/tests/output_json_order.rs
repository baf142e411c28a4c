//! The JSON writer serializes borrowed views directly (no `serde_json::Value` per packet), but
//! the format has always been a `Value` printed with sorted keys: for every packet of the real
//! recordings in golden_lab/, the direct bytes must equal the sorted `Value` rendering.

use trace_core::output::json::{packet_json, push_json, write_json};
use trace_core::record::replay::Replayer;
use trace_core::record::RecordingReader;

#[test]
fn direct_json_equals_sorted_value_rendering_on_golden_recordings() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden_lab");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "iptrace"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "golden recordings in {dir}: {files:?}");
    let mut packets = 0;
    let mut buf = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let mut r = Replayer::new(None);
        let mut pkts = Vec::new();
        for item in RecordingReader::new(&bytes[..]).unwrap() {
            pkts.extend(r.push(item.unwrap().1));
        }
        pkts.extend(r.finish());
        for p in &pkts {
            let mut direct = Vec::new();
            write_json(&mut direct, p).unwrap();
            let want = serde_json::to_string(&packet_json(p)).unwrap() + "\n";
            assert_eq!(
                String::from_utf8(direct.clone()).unwrap(),
                want,
                "{} packet {}",
                f.display(),
                p.packet.id
            );
            buf.clear();
            push_json(&mut buf, p);
            assert_eq!(buf, direct);
            packets += 1;
        }
    }
    assert!(packets > 100, "{packets} packets");
}
