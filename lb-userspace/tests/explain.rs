//! `xdplb explain` against the real program: for each frame, explain's
//! verdict, backend and output bytes equal what the data plane's program
//! does to the same frame (run after it, with BPF_PROG_TEST_RUN), and
//! explain leaves every counter (each CPU's), the whole flow table, the
//! FIB caches, fragment and outbound tables and reply entries exactly as
//! they were.
mod common;

use std::{net::SocketAddr, path::Path};

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use common::{backend_mac, TestNs, TestPlane, IN_MAC, OUT_MAC};
use lb_common::{
    flow_hash, flow_hash6, limits::MAX_VIPS, maps, Addr6, BackendCounters, FibEntry, FlowBucket,
    FlowKey, FlowKey6, FragKey, FragKey6, GlobalCounter, L4Addr, ReplyEntry, VipCounters,
    BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, IPPROTO_TCP, IPPROTO_UDP, NO_BACKEND,
    VIP_F_DSR, VIP_F_REJECT_EMPTY, VIP_F_TUNNEL,
};
use xdplb::{
    dataplane::{backend_name_index, BackendSlot, DataplaneError, Endpoint, Explainer, Tuning},
    explain::{client_frame, explain, Question, Report, XDP_PASS, XDP_REDIRECT},
    packet::{TCP_ACK, TCP_SYN},
};

const RING: u32 = 1009;
/// Pools: 0 TCP IPv4 (slots 0..3), 1 TCP IPv6 (slots 4..6), 2 UDP IPv4
/// (slots 8..10).
const VIP4: &str = "198.18.2.10:80";
const VIP6: &str = "[2001:2:0:2::10]:80";
const VIP_UDP: &str = "198.18.2.10:53";
const BACKENDS: u32 = 3;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn slot(pool: u32, i: u32) -> u32 {
    pool * 4 + i
}

fn backend(pool: u32, i: u32) -> SocketAddr {
    match pool {
        0 => sa(&format!("198.18.1.{}:8080", 11 + i)),
        1 => sa(&format!("[2001:2:0:1::{}]:8080", 11 + i)),
        _ => sa(&format!("198.18.1.{}:5353", 11 + i)),
    }
}

fn vip(pool: u32) -> SocketAddr {
    sa([VIP4, VIP6, VIP_UDP][pool as usize])
}

struct Lab {
    // Dropped first: the explain programs hold the pinned maps open.
    explainer: Explainer,
    tp: TestPlane,
    ns: TestNs,
    rings: Vec<Vec<u32>>,
}

impl Lab {
    fn new() -> Lab {
        Lab::with(VIP_F_REJECT_EMPTY, Tuning::default())
    }

    /// Pool 0 published with `flags` (its mode), the program with `tuning`.
    fn with(flags: u32, tuning: Tuning) -> Lab {
        let ns = TestNs::new(BACKENDS as u8);
        let mut tp = TestPlane::tuned(RING, 4096, tuning);
        let dp = tp.dp();
        let mut rings = Vec::new();
        for pool in 0..3 {
            dp.write_name(pool, ["web", "web6", "dns"][pool as usize])
                .unwrap();
            for i in 0..BACKENDS {
                dp.write_backend(&BackendSlot {
                    slot: slot(pool, i),
                    vip_index: pool,
                    addr: backend(pool, i),
                    state: BACKEND_ACTIVE,
                    flags: 0,
                })
                .unwrap();
                dp.write_name(backend_name_index(slot(pool, i)), &format!("b{pool}-{i}"))
                    .unwrap();
                let ep = if pool == 2 {
                    Endpoint::udp(backend(pool, i))
                } else {
                    Endpoint::tcp(backend(pool, i))
                };
                dp.write_reply(ep, vip(pool), slot(pool, i), pool).unwrap();
            }
            let ring: Vec<u32> = (0..RING).map(|k| slot(pool, k % BACKENDS)).collect();
            let ep = if pool == 2 {
                Endpoint::udp(vip(pool))
            } else {
                Endpoint::tcp(vip(pool))
            };
            let f = if pool == 0 { flags } else { VIP_F_REJECT_EMPTY };
            dp.publish_vip(ep, pool, &ring, f).unwrap();
            rings.push(ring);
        }
        dp.sync_host(&["in0".to_string(), "out0".to_string()])
            .unwrap();
        let explainer = Explainer::open(&tp.pin_path, &tuning).unwrap();
        Lab {
            explainer,
            tp,
            ns,
            rings,
        }
    }

    fn question(&self, client: &str, to: SocketAddr, udp: bool, flags: u8) -> Question {
        Question {
            client: sa(client),
            vip: to,
            udp,
            tcp_flags: flags,
            ingress: self.ns.in_ifindex,
        }
    }

    /// Explains `q`, checks that nothing changed, then runs the real
    /// program on the same frame and checks that it did what explain said.
    fn check(&mut self, q: Question) -> Report {
        let before = State::read(&self.tp.pin_path);
        let report = explain(&mut self.explainer, &q).unwrap();
        let after = State::read(&self.tp.pin_path);
        assert!(
            before == after,
            "explain changed the data plane's state: {}",
            before.differences(&after)
        );
        assert_eq!(
            report.sent,
            client_frame(q.client, q.vip, q.udp, q.tcp_flags, IN_MAC),
            "explain's frame is the client's, to the ingress interface's MAC"
        );
        let (action, left) = self.tp.run(&report.sent, q.ingress);
        assert_eq!(report.action, action, "verdict: {report:#?}");
        assert_eq!(report.left, left, "output bytes: {report:#?}");
        report
    }

    fn ring_choice(&self, pool: u32, client: &str) -> u32 {
        self.rings[pool as usize][self.ring_position(pool, client) as usize]
    }

    /// The flow's entry in its VIP's ring.
    fn ring_position(&self, pool: u32, client: &str) -> u32 {
        let (c, v) = (sa(client), vip(pool));
        let proto = if pool == 2 { IPPROTO_UDP } else { IPPROTO_TCP };
        let hash = match (c, v) {
            (SocketAddr::V4(c), SocketAddr::V4(v)) => flow_hash(&FlowKey {
                src_addr: u32::from_ne_bytes(c.ip().octets()),
                dst_addr: u32::from_ne_bytes(v.ip().octets()),
                src_port: c.port().to_be(),
                dst_port: v.port().to_be(),
                proto,
                _pad: [0; 3],
            }),
            (SocketAddr::V6(c), SocketAddr::V6(v)) => flow_hash6(&FlowKey6 {
                src_addr: Addr6::from_octets(c.ip().octets()),
                dst_addr: Addr6::from_octets(v.ip().octets()),
                src_port: c.port().to_be(),
                dst_port: v.port().to_be(),
                proto,
                _pad: [0; 3],
            }),
            _ => unreachable!(),
        };
        hash % RING
    }

    fn set_state(&mut self, pool: u32, s: u32, state: u8) {
        self.tp
            .dp()
            .write_backend(&BackendSlot {
                slot: s,
                vip_index: pool,
                addr: backend(pool, s - slot(pool, 0)),
                state,
                flags: 0,
            })
            .unwrap();
    }

    fn publish(&mut self, pool: u32, ring: Vec<u32>) {
        self.tp
            .dp()
            .publish_vip(Endpoint::tcp(vip(pool)), pool, &ring, VIP_F_REJECT_EMPTY)
            .unwrap();
        self.rings[pool as usize] = ring;
    }
}

/// Everything the program may write that explain must not: counters on
/// every CPU, every flow bucket, and the keyed tables.
#[derive(Debug, PartialEq)]
struct State {
    global: Vec<Vec<u64>>,
    vips: Vec<Vec<VipCounters>>,
    backends: Vec<Vec<BackendCounters>>,
    flows: Vec<FlowBucket>,
    fib: Vec<(u32, FibEntry)>,
    fib6: Vec<(Addr6, FibEntry)>,
    frags: Vec<FragKey>,
    frags6: Vec<FragKey6>,
    outbound: Vec<FlowKey>,
    replies: Vec<(L4Addr, ReplyEntry)>,
}

fn open<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(pin: &Path, name: &str) -> T {
    let md = MapData::from_pin(pin.join(name)).unwrap();
    T::try_from(aya::maps::Map::from_map_data(md).unwrap()).unwrap()
}

impl State {
    /// What differs, briefly: the fields, and the flow buckets by index.
    fn differences(&self, other: &State) -> String {
        let mut d = Vec::new();
        macro_rules! field {
            ($($f:ident),*) => {$(
                if self.$f != other.$f {
                    d.push(stringify!($f).to_string());
                }
            )*};
        }
        field!(global, vips, backends, fib, fib6, frags, frags6, outbound, replies);
        for (i, (a, b)) in self.flows.iter().zip(&other.flows).enumerate() {
            if a != b {
                d.push(format!("flow bucket {i}: {a:?} -> {b:?}"));
            }
        }
        d.join("; ")
    }

    fn read(pin: &Path) -> State {
        let per_cpu = |name: &str, n: u32| -> Vec<Vec<u64>> {
            let m: PerCpuArray<MapData, u64> = open(pin, name);
            (0..n).map(|i| m.get(&i, 0).unwrap().to_vec()).collect()
        };
        let vips: PerCpuArray<MapData, VipCounters> = open(pin, maps::VIP_STATS);
        let backends: PerCpuArray<MapData, BackendCounters> = open(pin, maps::BACKEND_STATS);
        let flows: Array<MapData, FlowBucket> = open(pin, maps::FLOWS);
        let mut fib: Vec<(u32, FibEntry)> =
            open::<HashMap<MapData, u32, FibEntry>>(pin, maps::FIB_CACHE)
                .iter()
                .map(Result::unwrap)
                .collect();
        fib.sort_by_key(|(k, _)| *k);
        let mut fib6: Vec<(Addr6, FibEntry)> =
            open::<HashMap<MapData, Addr6, FibEntry>>(pin, maps::FIB_CACHE6)
                .iter()
                .map(Result::unwrap)
                .collect();
        fib6.sort_by_key(|(k, _)| k.words);
        let frags: Vec<FragKey> =
            open::<HashMap<MapData, FragKey, lb_common::FragEntry>>(pin, maps::FRAGS)
                .keys()
                .map(Result::unwrap)
                .collect();
        let frags6: Vec<FragKey6> =
            open::<HashMap<MapData, FragKey6, lb_common::FragEntry>>(pin, maps::FRAGS6)
                .keys()
                .map(Result::unwrap)
                .collect();
        let outbound: Vec<FlowKey> = open::<HashMap<MapData, FlowKey, u64>>(pin, maps::OUTBOUND)
            .keys()
            .map(Result::unwrap)
            .collect();
        let mut replies: Vec<(L4Addr, ReplyEntry)> =
            open::<HashMap<MapData, L4Addr, ReplyEntry>>(pin, maps::REPLIES)
                .iter()
                .map(Result::unwrap)
                .collect();
        replies.sort_by_key(|(k, _)| (k.addr, k.port));
        State {
            global: per_cpu(maps::GLOBAL_STATS, GlobalCounter::COUNT),
            vips: (0..MAX_VIPS)
                .map(|i| vips.get(&i, 0).unwrap().to_vec())
                .collect(),
            backends: (0..16)
                .map(|i| backends.get(&i, 0).unwrap().to_vec())
                .collect(),
            flows: (0..flows.len())
                .map(|i| flows.get(&i, 0).unwrap())
                .collect(),
            fib,
            fib6,
            frags,
            frags6,
            outbound,
            replies,
        }
    }
}

fn out_dst(r: &Report) -> String {
    r.out.as_ref().expect("a frame out").dst.clone()
}

#[test]
fn explain_matches_the_program_and_changes_nothing_ipv4_tcp() {
    let mut lab = Lab::new();
    let client = "198.18.0.2:40001";

    // A new flow's SYN: a miss, the ring's backend, an entry to insert.
    let q = lab.question(client, vip(0), false, TCP_SYN);
    let chosen = lab.ring_choice(0, client);
    let r = lab.check(q);
    assert_eq!(r.verdict, "XDP_REDIRECT");
    assert_eq!(r.action, XDP_REDIRECT);
    assert_eq!(r.programs, ["xdplb"]);
    assert_eq!(r.flow.lookup, "miss");
    assert!(r.flow.insert && r.flow.insert_way.is_some(), "{r:#?}");
    assert!(r.new_flow);
    assert_eq!(r.backend.as_ref().unwrap().slot, chosen);
    assert_eq!(r.backend.as_ref().unwrap().name, format!("b0-{chosen}"));
    assert_eq!(r.ring_backend, Some(chosen));
    assert_eq!(r.ring_index, Some(lab.ring_position(0, client)));
    assert_eq!(r.ring_live, Some(0));
    assert_eq!(r.pool.as_deref(), Some("web"));
    // A SYN is not a miss (`flow_miss` counts non-SYN packets the table
    // did not know); it is an insert.
    assert!(r.path.contains(&"flow_insert"), "{:?}", r.path);
    assert!(!r.path.contains(&"flow_miss"), "{:?}", r.path);
    let out = r.out.as_ref().unwrap();
    assert_eq!(out.dst, backend(0, chosen).to_string());
    assert_eq!(out.src, client);
    assert_eq!(out.dst_mac, mac(backend_mac(chosen as u8)));
    assert_eq!(out.src_mac, mac(OUT_MAC));
    assert_eq!(out.egress.as_deref(), Some("out0"));
    assert!(r.why.contains("not in the flow table"), "{}", r.why);

    // The real program inserted the flow (check ran it): explain now
    // finds it, at the way it said a new entry would take.
    let q = lab.question(client, vip(0), false, TCP_ACK);
    let way = r.flow.insert_way;
    let r = lab.check(q);
    assert_eq!(r.flow.lookup, "hit");
    assert_eq!(r.flow.way, way);
    assert_eq!(r.flow.entry, Some("kept"));
    assert_eq!(r.flow.entry_backend, Some(chosen));
    assert_eq!(r.backend.as_ref().unwrap().slot, chosen);
    assert!(!r.new_flow);
    assert!(r.why.starts_with("established flow"), "{}", r.why);

    // Drained: the established flow stays.
    lab.set_state(0, chosen, BACKEND_DRAINING);
    let r = lab.check(lab.question(client, vip(0), false, TCP_ACK));
    assert_eq!(r.backend.as_ref().unwrap().state, "draining");
    assert_eq!(r.backend.as_ref().unwrap().slot, chosen);
    assert!(r.why.contains("draining"), "{}", r.why);

    // Down (and out of the ring, as the controller does it): selected
    // again, to the ring's new choice.
    let others: Vec<u32> = (0..BACKENDS)
        .map(|i| slot(0, i))
        .filter(|&s| s != chosen)
        .collect();
    let ring: Vec<u32> = (0..RING)
        .map(|k| others[k as usize % others.len()])
        .collect();
    lab.publish(0, ring);
    lab.set_state(0, chosen, BACKEND_DOWN);
    let again = lab.ring_choice(0, client);
    let r = lab.check(lab.question(client, vip(0), false, TCP_ACK));
    assert_eq!(r.flow.entry, Some("backend down"));
    assert_eq!(r.flow.entry_backend, Some(chosen));
    assert_eq!(r.backend.as_ref().unwrap().slot, again);
    assert_ne!(again, chosen);
    // Published again: the other of the VIP's two rings is live.
    assert_eq!(r.ring_index, Some(lab.ring_position(0, client)));
    assert_eq!(r.ring_live, Some(1));
    assert!(r.path.contains(&"resteered"), "{:?}", r.path);
    assert_eq!(out_dst(&r), backend(0, again).to_string());

    // A VIP address, no pool at that port: answered as a closed port.
    let r = lab.check(lab.question(client, sa("198.18.2.10:81"), false, TCP_SYN));
    assert!(r.path.contains(&"no_pool_answered"), "{:?}", r.path);
    assert!(r.why.contains("no pool"), "{}", r.why);
    assert!(r.backend.is_none());
    let out = r.out.as_ref().unwrap();
    assert_eq!(
        (out.src.as_str(), out.dst.as_str()),
        ("198.18.2.10:81", client)
    );

    // Not a VIP at all: the kernel's.
    let r = lab.check(lab.question(client, sa("198.18.2.99:80"), false, TCP_SYN));
    assert_eq!(r.action, XDP_PASS);
    assert!(r.why.contains("not a VIP"), "{}", r.why);

    // An empty pool (on_empty = "reject"): a RST from the VIP.
    lab.publish(0, vec![NO_BACKEND; RING as usize]);
    let r = lab.check(lab.question("198.18.0.2:40002", vip(0), false, TCP_SYN));
    assert!(r.path.contains(&"rejected"), "{:?}", r.path);
    assert!(r.ring_index.is_some() && r.ring_backend.is_none(), "{r:#?}");
    assert!(r.why.contains("no usable backend"), "{}", r.why);
}

#[test]
fn explain_matches_the_program_and_changes_nothing_ipv6_and_udp() {
    let mut lab = Lab::new();
    let client6 = "[2001:2::2]:40001";
    let chosen = lab.ring_choice(1, client6);
    let r = lab.check(lab.question(client6, vip(1), false, TCP_SYN));
    assert_eq!(r.programs, ["xdplb", "xdplb_ipv6"]);
    assert_eq!(r.flow.lookup, "miss");
    assert_eq!(r.backend.as_ref().unwrap().slot, chosen);
    assert_eq!(out_dst(&r), backend(1, chosen - slot(1, 0)).to_string());
    let r = lab.check(lab.question(client6, vip(1), false, TCP_ACK));
    assert_eq!(r.flow.lookup, "hit");
    assert_eq!(r.backend.as_ref().unwrap().slot, chosen);

    let client = "198.18.0.2:40005";
    let chosen = lab.ring_choice(2, client);
    let r = lab.check(lab.question(client, vip(2), true, 0));
    assert_eq!(r.programs, ["xdplb", "xdplb_udp4"]);
    assert_eq!(r.protocol, "udp");
    assert_eq!(r.backend.as_ref().unwrap().slot, chosen);
    assert_eq!(out_dst(&r), backend(2, chosen - slot(2, 0)).to_string());
    let r = lab.check(lab.question(client, vip(2), true, 0));
    assert_eq!(r.flow.lookup, "hit");
    // The backend's answer: the VIP prefilter says it is to no VIP, so
    // the entry hands it to the reply program, which rewrites it back.
    let from = backend(2, chosen - slot(2, 0)).to_string();
    let r = lab.check(lab.question(&from, sa(client), true, 0));
    assert_eq!(r.programs, ["xdplb", "xdplb_udp4_reply"]);
    assert_eq!(r.action, XDP_REDIRECT);
    assert!(r.why.contains("a reply from backend"), "{}", r.why);
    assert_eq!(r.out.as_ref().unwrap().src, vip(2).to_string());
    // Transit UDP (to no VIP, from no backend): passed by the entry.
    let r = lab.check(lab.question(client, sa("198.18.2.99:53"), true, 0));
    assert_eq!(r.programs, ["xdplb"]);
    assert_eq!(r.action, XDP_PASS);
    assert!(r.why.contains("not a VIP"), "{}", r.why);
}

#[test]
fn explain_matches_the_program_in_dsr_and_tunnel_modes() {
    let client = "198.18.0.2:40007";
    let mut lab = Lab::with(VIP_F_DSR, Tuning::default());
    let chosen = lab.ring_choice(0, client);
    let r = lab.check(lab.question(client, vip(0), false, TCP_SYN));
    assert_eq!(r.backend.as_ref().unwrap().slot, chosen);
    let out = r.out.as_ref().unwrap();
    // dsr: only the MACs change; the VIP stays the destination.
    assert_eq!(out.dst, VIP4);
    assert_eq!(out.dst_mac, mac(backend_mac(chosen as u8)));
    assert!(r.path.contains(&"dsr_sent"), "{:?}", r.path);
    drop(lab);

    let tuning = Tuning {
        tunnel_source_v4: Some("198.18.1.1/32".parse().unwrap()),
        ..Tuning::default()
    };
    let mut lab = Lab::with(VIP_F_TUNNEL, tuning);
    let chosen = lab.ring_choice(0, client);
    let r = lab.check(lab.question(client, vip(0), false, TCP_SYN));
    assert_eq!(r.backend.as_ref().unwrap().slot, chosen);
    let out = r.out.as_ref().unwrap();
    assert_eq!(out.outer_src.as_deref(), Some("198.18.1.1"));
    let backend_ip = backend(0, chosen).ip().to_string();
    assert_eq!(out.outer_dst.as_deref(), Some(backend_ip.as_str()));
    assert_eq!((out.src.as_str(), out.dst.as_str()), (client, VIP4));
    assert!(r.path.contains(&"tunnel_sent"), "{:?}", r.path);
}

#[test]
fn explain_without_a_data_plane_says_so() {
    let pin = format!("/sys/fs/bpf/xdplb-test-{}-absent", std::process::id());
    match Explainer::open(Path::new(&pin), &Tuning::default()) {
        Err(e @ DataplaneError::NotRunning { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("no running data plane") && msg.contains(&pin),
                "{msg}"
            );
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a data plane that does not exist"),
    }
    assert!(!Path::new(&pin).exists(), "explain created {pin}");
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
