//! IPv6 and UDP through the real maps: what user space writes (VIPs,
//! backend slots, replies, host addresses) reads back as written, and the
//! flow census counts both families' flows. No packets: the program's handling
//! of them is `packet.rs`'s.
mod common;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use aya::maps::{HashMap, Map, MapData};
use common::{TestNs, TestPlane};
use lb_common::{
    flow_seen, maps, Addr6, FlowKey, FlowKey6, FlowSlot, L4Addr6, ReplyEntry6, BACKEND_ACTIVE,
    FLOW_F_ACKED, FLOW_F_BACKEND_FIN, FLOW_F_CLOSING, FLOW_F_UDP, IPPROTO_TCP, IPPROTO_UDP,
    NO_BACKEND,
};
use xdplb::{
    config::{Endpoint, Protocol, DEFAULT_UDP_FLOW_IDLE_MS},
    dataplane::{self, BackendSlot, CounterReader, DataplaneError, FlowTable},
};

const RING: u32 = 1009;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn pinned<K: aya::Pod, V: aya::Pod>(pin: &Path, name: &str) -> HashMap<MapData, K, V> {
    let md = MapData::from_pin(pin.join(name)).unwrap();
    HashMap::try_from(Map::from_map_data(md).unwrap()).unwrap()
}

fn a6(s: &str) -> Addr6 {
    match s.parse::<IpAddr>().unwrap() {
        IpAddr::V6(a) => dataplane::addr6(a),
        IpAddr::V4(_) => panic!("not v6: {s}"),
    }
}

#[test]
fn ipv6_and_udp_endpoints_round_trip_through_the_maps() {
    // TestNs gives out0 2001:2:0:1::1/64: an IPv6 address of this host.
    let _ns = TestNs::new(0);
    let mut tp = TestPlane::new(RING, 1024);
    let pin = tp.pin_path.clone();
    let dp = tp.dp();

    let backend6 = sa("[2001:2:0:1::11]:8080");
    let backend4 = sa("198.18.1.11:53");
    for (slot, addr) in [(0, backend6), (1, backend4)] {
        dp.write_backend(&BackendSlot {
            slot,
            vip_index: slot,
            addr,
            state: BACKEND_ACTIVE,
            flags: 0,
        })
        .unwrap();
    }
    let web6 = Endpoint::tcp(sa("[2001:2:0:2::10]:80"));
    let dns4 = Endpoint::udp(sa("198.18.2.53:53"));
    let dns6 = Endpoint::udp(sa("[2001:2:0:2::10]:53"));
    let ring = |slot: u32| vec![slot; RING as usize];
    dp.publish_vip(web6, 0, &ring(0), lb_common::VIP_F_REJECT_EMPTY)
        .unwrap();
    dp.publish_vip(dns4, 1, &ring(1), 0).unwrap();
    dp.publish_vip_idle(dns6, 2, &vec![NO_BACKEND; RING as usize], 0, 5000)
        .unwrap();
    // The same address and port as TCP is another VIP.
    let web4 = Endpoint::tcp(sa("198.18.2.53:53"));
    dp.publish_vip(web4, 3, &ring(1), 0).unwrap();

    let mut vips: Vec<_> = dp
        .read_vips()
        .unwrap()
        .into_iter()
        .map(|(e, m)| (m.index, e, m.flow_idle_ms, m.flags))
        .collect();
    vips.sort_by_key(|v| v.0);
    assert_eq!(
        vips,
        vec![
            (0, web6, 0, lb_common::VIP_F_REJECT_EMPTY),
            (1, dns4, DEFAULT_UDP_FLOW_IDLE_MS, 0),
            (2, dns6, 5000, 0),
            (3, web4, 0, 0),
        ]
    );
    // Republishing with another idle time takes effect.
    dp.publish_vip_idle(dns6, 2, &vec![NO_BACKEND; RING as usize], 0, 7000)
        .unwrap();
    let idle6 = dp.read_vips().unwrap().into_iter().find(|v| v.0 == dns6);
    assert_eq!(idle6.map(|v| v.1.flow_idle_ms), Some(7000));

    let slots = dp.read_backends().unwrap();
    assert_eq!(
        slots.iter().map(|b| (b.slot, b.addr)).collect::<Vec<_>>(),
        vec![(0, backend6), (1, backend4)]
    );

    // Replies: keyed by the backend's address, port and protocol.
    dp.write_reply(Endpoint::tcp(backend6), web6.addr, 0, 0)
        .unwrap();
    let replies6: HashMap<MapData, L4Addr6, ReplyEntry6> = pinned(&pin, maps::REPLIES6);
    let key = |proto| L4Addr6 {
        addr: a6("2001:2:0:1::11"),
        port: 8080u16.to_be(),
        proto,
        _pad: 0,
    };
    let entry = replies6.get(&key(IPPROTO_TCP), 0).unwrap();
    assert_eq!(
        (entry.vip_addr, u16::from_be(entry.vip_port), entry.backend),
        (a6("2001:2:0:2::10"), 80, 0)
    );
    assert!(replies6.get(&key(IPPROTO_UDP), 0).is_err());
    let err = dp
        .write_reply(Endpoint::udp(backend6), dns4.addr, 0, 1)
        .unwrap_err();
    assert!(
        matches!(err, DataplaneError::FamilyMismatch { .. }),
        "{err}"
    );
    dp.remove_reply(Endpoint::udp(backend6)).unwrap();
    assert!(
        replies6.get(&key(IPPROTO_TCP), 0).is_ok(),
        "UDP removal kept TCP"
    );
    dp.remove_reply(Endpoint::tcp(backend6)).unwrap();
    assert!(replies6.get(&key(IPPROTO_TCP), 0).is_err());

    // The counters name both families and protocols.
    let c = CounterReader::open(&pin).unwrap().read().unwrap();
    let vip_of = |i: u32| {
        c.vips
            .iter()
            .find(|v| v.index == i)
            .map(|v| (v.vip, v.protocol))
    };
    assert_eq!(vip_of(0), Some((web6.addr, Protocol::Tcp)));
    assert_eq!(vip_of(2), Some((dns6.addr, Protocol::Udp)));
    assert_eq!(c.backends[0].addr, backend6);

    // Removing the UDP VIP leaves the TCP one on the same address and port.
    dp.remove_vip(dns4).unwrap();
    dp.remove_vip(dns6).unwrap();
    dp.remove_vip(dns6).unwrap();
    let left: Vec<Endpoint> = dp.read_vips().unwrap().into_iter().map(|v| v.0).collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&web4) && left.contains(&web6), "{left:?}");

    // This namespace's addresses of both families.
    dp.sync_host(&["in0".to_string(), "out0".to_string()])
        .unwrap();
    let local = dp.local_addrs();
    for a in ["198.18.1.1", "198.18.0.1", "2001:2:0:1::1", "::1"] {
        assert!(local.contains(&a.parse().unwrap()), "{a} not in {local:?}");
    }
}

#[test]
fn the_census_counts_both_tables_and_reaps_idle_flows() {
    let mut tp = TestPlane::new(RING, 1024);
    let pin = tp.pin_path.clone();
    let dp = tp.dp();
    // VIP 0: IPv6 TCP; 1: IPv4 UDP (30 s idle); 2: IPv6 UDP (5 s idle).
    dp.publish_vip(
        Endpoint::tcp(sa("[2001:2:0:2::10]:80")),
        0,
        &vec![NO_BACKEND; RING as usize],
        0,
    )
    .unwrap();
    dp.publish_vip(
        Endpoint::udp(sa("198.18.2.53:53")),
        1,
        &vec![NO_BACKEND; RING as usize],
        0,
    )
    .unwrap();
    dp.publish_vip_idle(
        Endpoint::udp(sa("[2001:2:0:2::10]:53")),
        2,
        &vec![NO_BACKEND; RING as usize],
        0,
        5000,
    )
    .unwrap();

    // The census finds a flow's VIP (for its flow_idle_ms) through its
    // backend slot: slot i serves VIP i.
    for (slot, addr) in [
        (0, "[2001:2:0:1::11]:80"),
        (1, "198.18.1.11:53"),
        (2, "[2001:2:0:1::12]:53"),
    ] {
        dp.write_backend(&BackendSlot {
            slot,
            vip_index: slot,
            addr: sa(addr),
            state: BACKEND_ACTIVE,
            flags: 0,
        })
        .unwrap();
    }

    let now = common::coarse_now_ns();
    let secs = |s: u64| now - s * 1_000_000_000;
    let table = FlowTable::open(&pin).unwrap();
    let entry = |tag: u64, backend, flags: u16, seen_ns| FlowSlot {
        tag: tag | flags as u64,
        backend,
        seen: flow_seen(seen_ns),
    };
    let key6 = |port: u16, proto| FlowKey6 {
        src_addr: a6("2001:2::2"),
        dst_addr: a6("2001:2:0:2::10"),
        src_port: port.to_be(),
        dst_port: 80u16.to_be(),
        proto,
        _pad: [0; 3],
    };
    let key4 = |port: u16, proto| FlowKey {
        src_addr: u32::from_ne_bytes([198, 18, 0, 2]),
        dst_addr: u32::from_ne_bytes([198, 18, 2, 53]),
        src_port: port.to_be(),
        dst_port: 53u16.to_be(),
        proto,
        _pad: [0; 3],
    };
    let t6 = |port, proto| table.tag6(&key6(port, proto));
    let t4 = |port, proto| table.tag(&key4(port, proto));
    let udp = FLOW_F_UDP | FLOW_F_ACKED;
    let closed = FLOW_F_ACKED | FLOW_F_CLOSING | FLOW_F_BACKEND_FIN;
    let flows = [
        // IPv6 established TCP: counted.
        (entry(t6(1000, IPPROTO_TCP), 0, FLOW_F_ACKED, now), true),
        // IPv6 UDP seen 1 s ago: counted, no ACK needed.
        (entry(t6(1001, IPPROTO_UDP), 2, udp, secs(1)), true),
        // IPv6 UDP quiet for 10 s, past its VIP's 5 s (+1 s resolution):
        // reaped.
        (entry(t6(1002, IPPROTO_UDP), 2, udp, secs(10)), false),
        // IPv4 UDP quiet 10 s, within the VIP's 30 s: counted.
        (entry(t4(2000, IPPROTO_UDP), 1, udp, secs(10)), true),
        // IPv4 UDP quiet 40 s: reaped.
        (entry(t4(2001, IPPROTO_UDP), 1, udp, secs(40)), false),
        // TCP without the client's ACK: half open.
        (entry(t4(2002, IPPROTO_TCP), 1, 0, now), true),
        // TCP closed both ways, past its linger: reaped.
        (entry(t4(2003, IPPROTO_TCP), 1, closed, secs(10)), false),
    ];
    for (e, _) in &flows {
        assert!(table.put(*e));
    }

    let census = dataplane::flow_census(&pin, 1000, Duration::from_secs(30)).unwrap();
    assert_eq!(
        census.established,
        [(0, 1), (2, 1), (1, 1)].into_iter().collect()
    );
    assert_eq!(census.half_open, [(1, 1)].into_iter().collect());
    for (e, kept) in &flows {
        let tag = e.tag & !lb_common::FLOW_TAG_FLAGS;
        assert_eq!(table.find(tag).is_some(), *kept, "{e:?}");
    }
    // The limit bounds the count over both families together.
    let bounded = dataplane::flow_census(&pin, 1, Duration::from_secs(30)).unwrap();
    let counted: u64 = bounded
        .established
        .values()
        .chain(bounded.half_open.values())
        .sum();
    assert_eq!(counted, 1);
}

/// The census reads the whole mapped table: ten thousand flows spread
/// over its buckets are counted entry for entry, and a limit stops it.
#[test]
fn the_census_counts_a_table_of_many_flows() {
    let mut tp = TestPlane::new(RING, 65536);
    let pin = tp.pin_path.clone();
    tp.dp()
        .publish_vip(
            Endpoint::tcp(sa("198.18.2.10:80")),
            0,
            &vec![NO_BACKEND; RING as usize],
            0,
        )
        .unwrap();
    let now = common::coarse_now_ns();
    let table = FlowTable::open(&pin).unwrap();
    const N: u32 = 10_007;
    for i in 0..N {
        let key = FlowKey {
            src_addr: u32::from_ne_bytes([198, 18, 0, 2 + (i >> 14) as u8]),
            dst_addr: u32::from_ne_bytes([198, 18, 2, 10]),
            src_port: (1024 + (i & 0x3fff) as u16).to_be(),
            dst_port: 80u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let entry = FlowSlot {
            tag: table.tag(&key) | FLOW_F_ACKED as u64,
            backend: i % 3,
            seen: flow_seen(now),
        };
        assert!(table.put(entry), "bucket of flow {i} full");
    }
    let census = dataplane::flow_census(&pin, 1 << 20, Duration::from_secs(30)).unwrap();
    let per_slot = |s: u32| (N + 2 - s) / 3;
    assert_eq!(
        census.established,
        (0..3).map(|s| (s, per_slot(s) as u64)).collect()
    );
    let bounded = dataplane::flow_census(&pin, 5000, Duration::from_secs(30)).unwrap();
    assert_eq!(bounded.established.values().sum::<u64>(), 5000);
}
