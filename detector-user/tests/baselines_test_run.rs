//! The bench's baselines (the test object's programs) are what the bench says they are. The
//! minimal responder is the floor `cargo xtask bench` compares the cookie path with, so it
//! must really answer: a SYN-ACK a client would take, not a cheaper imitation; the drop
//! floor must really drop and account, and only blocked sources. Needs root.

mod common;

use common::{Detector, SERVER4, XDP_DROP, XDP_PASS, XDP_TX};
use detector_common::{
    closed_filter::{self, ClosedLine},
    config::Config,
    state::{SourceKey, SourceState},
};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};

const SEC: u64 = 1_000_000_000;
const CLIENT4: [u8; 4] = [198, 18, 0, 2];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// A Linux client's SYN with 20 bytes of padding after it, as the bench sends (the
/// baselines read at fixed offsets and want 60 bytes of TCP header room).
fn padded_syn() -> Vec<u8> {
    let options = [
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(7, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ];
    let tcp = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ipv4(CLIENT4, SERVER4, 64)
        .tcp(40_000, 8080, 1000, 64240)
        .syn()
        .options(&options)
        .unwrap();
    let mut frame = Vec::new();
    tcp.write(&mut frame, &[]).unwrap();
    frame.extend_from_slice(&[0; 20]);
    frame
}

#[test]
fn the_minimal_responder_answers_with_a_syn_ack_a_client_takes() {
    // The raw helper needs neither a listener nor the detector's config; the config is
    // only there because loading writes one.
    let det = Detector::load(Config::new(0, 0, SEC, 3 * SEC), &["baseline_min_responder"]);
    let (verdict, reply) = det.run("baseline_min_responder", &padded_syn());
    assert_eq!(verdict, XDP_TX);
    assert_eq!(reply.len(), 14 + 20 + 24, "trimmed to the reply: no padding, no SYN options left");
    assert_eq!((&reply[..6], &reply[6..12]), (&CLIENT_MAC[..], &SERVER_MAC[..]), "MACs swapped");

    let sliced = SlicedPacket::from_ethernet(&reply).expect("etherparse decodes the SYN-ACK");
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else { panic!("no IPv4 in the reply") };
    let ip4 = ip.header().to_header();
    assert_eq!((ip4.source, ip4.destination), (SERVER4, CLIENT4));
    assert_eq!(ip4.header_checksum, ip4.calc_header_checksum(), "IPv4 header checksum");
    let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else { panic!("no TCP in the reply") };
    let header = tcp.to_header();
    assert_eq!(header.checksum, header.calc_checksum_ipv4(&ip4, tcp.payload()).unwrap(), "TCP checksum");
    assert_eq!((header.source_port, header.destination_port), (8080, 40_000));
    assert_eq!(header.acknowledgment_number, 1001, "acks the client's ISN + 1");
    assert!(header.syn && header.ack && !header.rst && !header.fin && !header.psh);
    let options: Vec<_> = header.options_iterator().collect::<Result<_, _>>().unwrap();
    let [TcpOptionElement::MaximumSegmentSize(mss)] = options[..] else {
        panic!("one MSS option, got {options:?}")
    };
    // The helper's MSS table (`msstab`) for a 1460-byte client MSS.
    assert_eq!(mss, 1460);
    assert!(tcp.payload().is_empty(), "a SYN-ACK carries no data");
}

#[test]
fn the_drop_floor_drops_and_accounts_only_blocked_sources() {
    let mut det = Detector::load(Config::new(0, 0, SEC, 3 * SEC), &["baseline_drop_floor"]);
    let blocked = SourceKey { addr: detector_common::parse::ipv4_mapped(CLIENT4) };
    let mut sources: aya::maps::HashMap<_, SourceKey, SourceState> =
        aya::maps::HashMap::try_from(det.ebpf.map_mut("FLOOR_SOURCES").unwrap()).unwrap();
    let state =
        SourceState { blocked_until_ns: u64::MAX, ..SourceState::new(0, &Config::new(1, 0, SEC, 3 * SEC)) };
    sources.insert(blocked, state, 0).unwrap();
    assert_eq!(det.run("baseline_drop_floor", &padded_syn()).0, XDP_DROP);
    let sources: aya::maps::HashMap<_, SourceKey, SourceState> =
        aya::maps::HashMap::try_from(det.ebpf.map("FLOOR_SOURCES").unwrap()).unwrap();
    assert_eq!(sources.get(&blocked, 0).unwrap().syns_total, 1, "the dropped SYN is accounted");
    let mut stranger = padded_syn();
    stranger[29] = 3; // the IPv4 source's last byte
    assert_eq!(det.run("baseline_drop_floor", &stranger).0, XDP_PASS);
}

/// The table drop floor stands for a blocked-source table read in place: it must find a
/// source in either slot of its bucket, drop and count its SYN there while the block runs,
/// and pass a source it does not hold and one whose block has ended.
#[test]
fn the_table_drop_floor_drops_and_counts_only_sources_blocked_in_its_table() {
    use detector_common::blocked_table::{BlockedBucket, BlockedSlot};
    let mut det = Detector::load(Config::new(0, 0, SEC, 3 * SEC), &["baseline_drop_table_floor"]);
    let addr = |last: u8| detector_common::parse::ipv4_mapped([CLIENT4[0], CLIENT4[1], CLIENT4[2], last]);
    let at = detector_common::block_filter::bucket(&addr(CLIENT4[3]));
    let slot = |last: u8, until_ns: u64| BlockedSlot {
        addr: detector_common::parse::two_words(addr(last)),
        until_ns,
        ..BlockedSlot::default()
    };
    let set = |det: &mut Detector, bucket: BlockedBucket| {
        let mut table: aya::maps::Array<_, BlockedBucket> =
            aya::maps::Array::try_from(det.ebpf.map_mut("FLOOR_TABLE").unwrap()).unwrap();
        table.set(at, bucket, 0).unwrap();
    };
    // The blocked client in the second slot, behind another source's ended block.
    set(&mut det, BlockedBucket { slots: [slot(77, 1), slot(CLIENT4[3], u64::MAX)] });
    for _ in 0..2 {
        assert_eq!(det.run("baseline_drop_table_floor", &padded_syn()).0, XDP_DROP);
    }
    let table: aya::maps::Array<_, BlockedBucket> =
        aya::maps::Array::try_from(det.ebpf.map("FLOOR_TABLE").unwrap()).unwrap();
    assert_eq!(table.get(&at, 0).unwrap().slots[1].unfolded, 2, "both SYNs counted in the client's slot");
    let mut stranger = padded_syn();
    stranger[29] = 3; // the IPv4 source's last byte
    assert_eq!(det.run("baseline_drop_table_floor", &stranger).0, XDP_PASS, "not in the table");
    // The same client with its block over.
    set(&mut det, BlockedBucket { slots: [slot(77, 1), slot(CLIENT4[3], 1)] });
    assert_eq!(det.run("baseline_drop_table_floor", &padded_syn()).0, XDP_PASS, "the block has ended");
}

/// Writes entry `i` of the ruled responder's closed filter.
fn set_ruled_closed(det: &mut Detector, i: u32, value: ClosedLine) {
    let mut closed: aya::maps::Array<_, ClosedLine> =
        aya::maps::Array::try_from(det.ebpf.map_mut("RULED_CLOSED").unwrap()).unwrap();
    closed.set(i, value, 0).unwrap();
}

/// The ruled responder is the minimal responder behind our rules' random reads, so it must
/// answer exactly as the minimal one does, count the SYN as cookie mode counts a light
/// source (in the sketch's first row only: the cascade), and leave a flow its closed filter says may be in TIME_WAIT to the kernel.
#[test]
fn the_ruled_responder_counts_the_syn_checks_the_closed_filter_and_answers_as_the_minimal_one() {
    let programs = ["baseline_min_responder", "baseline_ruled_responder"];
    let mut det = Detector::load(Config::new(0, 0, SEC, 3 * SEC), &programs);
    let (minimal, expected) = det.run("baseline_min_responder", &padded_syn());
    assert_eq!(minimal, XDP_TX);
    let (verdict, reply) = det.run("baseline_ruled_responder", &padded_syn());
    assert_eq!(verdict, XDP_TX);
    assert_eq!(reply, expected, "the minimal responder's SYN-ACK, byte for byte");

    let sketch: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(det.ebpf.map("RULED_SKETCH").unwrap()).unwrap();
    let words: Vec<u64> = sketch.iter().filter_map(Result::ok).collect();
    // The ruled responder's sketch settings (baseline.rs `RULED`): 16,384 cells a row.
    let mut ruled = Config::new(u32::MAX, 0, 0, 0);
    ruled.sketch_width = 16_384;
    ruled.sketch_seed = 0x5eed_1234;
    let client = detector_common::state::SourceKey { addr: detector_common::parse::ipv4_mapped(CLIENT4) };
    let counts = detector_common::sketch::counts(&words, &client, &ruled, None).unwrap();
    assert_eq!(counts, [1, 0, 0, 0], "counted once, in the first row only");
    assert_eq!(words.iter().filter(|&&w| w != 0).count(), 1, "and nothing else written");

    let flow = detector_common::state::FlowKey {
        src: detector_common::parse::ipv4_mapped(CLIENT4),
        dst: detector_common::parse::ipv4_mapped(SERVER4),
        src_port: 40_000,
        dst_port: 8080,
    };
    let now = common::monotonic_ns();
    let at = closed_filter::spot(&flow, closed_filter::DEFAULT_LINE_BITS);
    let (mut line, mut latest) = (ClosedLine::default(), ClosedLine::default());
    line.stamp_flow(&at, closed_filter::stamp(now));
    latest.stamp_latest(&at, closed_filter::stamp(now));
    set_ruled_closed(&mut det, at.line, line);
    // As ours: the line is read only when its latest stamp is recent.
    assert_eq!(det.run("baseline_ruled_responder", &padded_syn()).0, XDP_TX, "no recent latest stamp");
    set_ruled_closed(&mut det, at.latest, latest);
    assert_eq!(
        det.run("baseline_ruled_responder", &padded_syn()).0,
        XDP_PASS,
        "a flow that may be in TIME_WAIT"
    );
}
