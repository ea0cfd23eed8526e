//! The XDP program under BPF_PROG_TEST_RUN with crafted IPv6 (TCP, UDP,
//! ICMPv6) and IPv4 UDP frames: exact output bytes against independently
//! built frames, checksums against a full recomputation, verdicts and
//! counters. The main program is run; it reaches the IPv6, UDP and ICMPv6
//! programs by tail call, as a real frame does.
mod common;

use std::{
    net::{Ipv6Addr, SocketAddr},
    time::Duration,
};

use aya::maps::{Map, MapData};
use common::{
    backend_mac, expected_dsr, DecapLab, TestNs, TestPlane, CLIENT_MAC, DECAP_GATEWAY6, IN_MAC,
    OUT_MAC,
};
use lb_common::{
    flow_hash, flow_hash6, ref_slot, Addr6, FlowKey, FlowKey6, FlowSlot, GlobalCounter,
    BACKEND_ACTIVE, IPPROTO_TCP, IPPROTO_UDP, NO_BACKEND, VIP_F_DSR, VIP_F_REJECT_EMPTY,
    VIP_F_TUNNEL,
};
use xdplb::{
    dataplane::{backend_name_index, BackendSlot, Counters, Endpoint, Tuning},
    packet::{
        checksums6, checksums_udp4, icmp6, icmp_error, Checksum, Ext6, L4Frame, L4, TCP_ACK,
        TCP_PSH, TCP_RST, TCP_SYN,
    },
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const RING: u32 = 1009;
/// Backend slots per pool: pool `p`'s backend `i` is slot `p * SLOTS + i`.
const SLOTS: u32 = 4;
const CLIENT6: &str = "2001:2::2";
const CLIENT4: &str = "198.18.0.2";

/// The three kinds of pool under test, one VIP each (the VIP index is the
/// discriminant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pool {
    Tcp6 = 0,
    Udp6 = 1,
    Udp4 = 2,
}

const POOLS: [Pool; 3] = [Pool::Tcp6, Pool::Udp6, Pool::Udp4];

impl Pool {
    fn index(self) -> u32 {
        self as u32
    }

    fn slot(self, i: u32) -> u32 {
        self.index() * SLOTS + i
    }

    fn udp(self) -> bool {
        self != Pool::Tcp6
    }

    fn vip(self) -> SocketAddr {
        match self {
            Pool::Tcp6 => "[2001:2:0:2::10]:80",
            Pool::Udp6 => "[2001:2:0:2::10]:53",
            Pool::Udp4 => "198.18.2.10:53",
        }
        .parse()
        .unwrap()
    }

    fn endpoint(self, a: SocketAddr) -> Endpoint {
        if self.udp() {
            Endpoint::udp(a)
        } else {
            Endpoint::tcp(a)
        }
    }

    fn backend(self, i: u32) -> SocketAddr {
        match self {
            Pool::Udp4 => format!("198.18.1.{}:5353", 11 + i),
            _ => format!("[2001:2:0:1::{}]:8080", 11 + i),
        }
        .parse()
        .unwrap()
    }

    fn client(self, port: u16) -> SocketAddr {
        match self {
            Pool::Udp4 => format!("{CLIENT4}:{port}"),
            _ => format!("[{CLIENT6}]:{port}"),
        }
        .parse()
        .unwrap()
    }

    /// What the client sends the VIP first: a SYN or a datagram.
    fn first(self, port: u16) -> L4Frame {
        let (src, dst) = (self.client(port), self.vip());
        let mut f = if self.udp() {
            let mut f = L4Frame::udp(src, dst);
            f.payload = b"query, odd length".to_vec();
            f
        } else {
            L4Frame::tcp(src, dst, TCP_SYN)
        };
        f.src_mac = CLIENT_MAC;
        f.dst_mac = IN_MAC;
        f
    }

    /// A later packet of the same flow.
    fn next(self, port: u16) -> L4Frame {
        let mut f = self.first(port);
        if let L4::Tcp { flags, ack, .. } = &mut f.l4 {
            *flags = TCP_ACK | TCP_PSH;
            *ack = 0x5000;
        }
        f.payload = b"more data".to_vec();
        f
    }

    /// What backend `i` answers to the client's `port`.
    fn reply(self, i: u32, port: u16) -> L4Frame {
        let (src, dst) = (self.backend(i), self.client(port));
        let mut f = if self.udp() {
            L4Frame::udp(src, dst)
        } else {
            L4Frame::tcp(src, dst, TCP_SYN | TCP_ACK)
        };
        f.payload = b"answer".to_vec();
        f.src_mac = backend_mac(i as u8);
        f.dst_mac = OUT_MAC;
        f
    }

    fn flow_key(self, port: u16) -> Key {
        let proto = if self.udp() { IPPROTO_UDP } else { IPPROTO_TCP };
        let (src, dst) = (self.client(port), self.vip());
        match (src, dst) {
            (SocketAddr::V6(s), SocketAddr::V6(d)) => Key::V6(FlowKey6 {
                src_addr: Addr6::from_octets(s.ip().octets()),
                dst_addr: Addr6::from_octets(d.ip().octets()),
                src_port: s.port().to_be(),
                dst_port: d.port().to_be(),
                proto,
                _pad: [0; 3],
            }),
            (SocketAddr::V4(s), SocketAddr::V4(d)) => Key::V4(FlowKey {
                src_addr: u32::from_ne_bytes(s.ip().octets()),
                dst_addr: u32::from_ne_bytes(d.ip().octets()),
                src_port: s.port().to_be(),
                dst_port: d.port().to_be(),
                proto,
                _pad: [0; 3],
            }),
            _ => unreachable!("one family per pool"),
        }
    }
}

enum Key {
    V4(FlowKey),
    V6(FlowKey6),
}

/// The frame the gateway must send backend `i` for `sent`: destination
/// rewritten, hop limit less one, MACs from the FIB, checksum complete
/// (a zero IPv4 UDP checksum stays zero).
fn to_backend(pool: Pool, sent: &L4Frame, i: u32) -> Vec<u8> {
    let mut e = sent.clone();
    e.dst = pool.backend(i);
    e.src_mac = OUT_MAC;
    e.dst_mac = backend_mac(i as u8);
    e.ttl -= 1;
    if e.checksum == Checksum::Partial {
        e.checksum = Checksum::Full;
    }
    e.build()
}

/// The frame the client must get for a backend's `sent`: from the VIP.
fn to_client(pool: Pool, sent: &L4Frame) -> Vec<u8> {
    let mut e = sent.clone();
    e.src = pool.vip();
    e.src_mac = IN_MAC;
    e.dst_mac = CLIENT_MAC;
    e.ttl -= 1;
    if e.checksum == Checksum::Partial {
        e.checksum = Checksum::Full;
    }
    e.build()
}

fn assert_checksums_valid(frame: &[u8]) {
    if frame[12..14] == [0x86, 0xdd] {
        let (found, computed) = checksums6(frame);
        assert_eq!(found, computed, "IPv6 L4 checksum");
    } else {
        let (ip_found, ip_computed, udp_found, udp_computed) = checksums_udp4(frame);
        assert_eq!(ip_found, ip_computed, "IPv4 header checksum");
        assert_eq!(udp_found, udp_computed, "UDP checksum");
    }
}

/// Which of `pool`'s backends a forwarded frame is addressed to.
fn backend_of(pool: Pool, out: &[u8]) -> u32 {
    let dst: Vec<u8> = if pool == Pool::Udp4 {
        out[30..34].to_vec()
    } else {
        out[38..54].to_vec()
    };
    (0..SLOTS)
        .find(|&i| match pool.backend(i) {
            SocketAddr::V4(a) => a.ip().octets()[..] == dst[..],
            SocketAddr::V6(a) => a.ip().octets()[..] == dst[..],
        })
        .unwrap_or_else(|| panic!("not sent to a backend of {pool:?}: {dst:?}"))
}

struct Lab {
    // Field order matters: the plane is dropped (pins removed) before the
    // namespace is left.
    tp: TestPlane,
    ns: TestNs,
    /// Each pool's ring, as backend numbers within the pool.
    rings: [Vec<u32>; 3],
    /// Every pool's VIP flags.
    flags: u32,
}

impl Lab {
    /// The three pools, each with `n` active backends and a ring cycling
    /// through them, on_empty = reject.
    fn new(n: u32) -> Lab {
        Lab::with(n, VIP_F_REJECT_EMPTY, Tuning::default())
    }

    /// [`Lab::new`] with every pool published with VIP `flags` (its mode
    /// and on_empty), the data plane loaded with `tuning`.
    fn with(n: u32, flags: u32, tuning: Tuning) -> Lab {
        assert!(n <= SLOTS);
        let ns = TestNs::new(n as u8);
        let mut tp = TestPlane::tuned(RING, 4096, tuning);
        let dp = tp.dp();
        for pool in POOLS {
            dp.write_name(pool.index(), &format!("{pool:?}")).unwrap();
            for i in 0..n {
                let slot = pool.slot(i);
                dp.write_backend(&BackendSlot {
                    slot,
                    vip_index: pool.index(),
                    addr: pool.backend(i),
                    state: BACKEND_ACTIVE,
                    flags: 0,
                })
                .unwrap();
                dp.write_name(backend_name_index(slot), &format!("{pool:?}-{i}"))
                    .unwrap();
                dp.write_reply(
                    pool.endpoint(pool.backend(i)),
                    pool.vip(),
                    slot,
                    pool.index(),
                )
                .unwrap();
            }
        }
        dp.sync_host(&["in0".to_string(), "out0".to_string()])
            .unwrap();
        let ring: Vec<u32> = (0..RING).map(|i| i % n).collect();
        let mut lab = Lab {
            tp,
            ns,
            rings: [ring.clone(), ring.clone(), ring],
            flags,
        };
        for pool in POOLS {
            lab.publish(pool, lab.rings[pool.index() as usize].clone(), None);
        }
        lab
    }

    /// Publishes `pool`'s ring (backend numbers, or NO_BACKEND), with
    /// `idle_ms` as its flow_idle_ms (None: the protocol's default).
    fn publish(&mut self, pool: Pool, ring: Vec<u32>, idle_ms: Option<u32>) {
        let slots: Vec<u32> = ring
            .iter()
            .map(|&i| if i == NO_BACKEND { i } else { pool.slot(i) })
            .collect();
        let vip = pool.endpoint(pool.vip());
        let flags = self.flags;
        let dp = self.tp.dp();
        match idle_ms {
            Some(ms) => dp.publish_vip_idle(vip, pool.index(), &slots, flags, ms),
            None => dp.publish_vip(vip, pool.index(), &slots, flags),
        }
        .unwrap();
        self.rings[pool.index() as usize] = ring;
    }

    /// Every new flow of `pool` to backend `i` from now on.
    fn send_all_to(&mut self, pool: Pool, i: u32) {
        self.publish(pool, vec![i; RING as usize], None);
    }

    /// The backend the ring names for the client's `port`.
    fn ring_choice(&self, pool: Pool, port: u16) -> u32 {
        let h = match pool.flow_key(port) {
            Key::V4(k) => flow_hash(&k),
            Key::V6(k) => flow_hash6(&k),
        };
        self.rings[pool.index() as usize][(h % RING) as usize]
    }

    /// A client port whose flow the ring sends to backend `i`.
    fn port_for(&self, pool: Pool, i: u32) -> u16 {
        (40000u16..41000)
            .find(|&p| self.ring_choice(pool, p) == i)
            .expect("some port hashes to every backend")
    }

    fn run_on(&mut self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        self.tp.run(frame, ifindex)
    }

    fn arrive_from_client(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let i = self.ns.in_ifindex;
        self.run_on(frame, i)
    }

    fn arrive_from_backends(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let i = self.ns.out_ifindex;
        self.run_on(frame, i)
    }

    fn flow(&self, pool: Pool, port: u16) -> Option<FlowSlot> {
        let table = xdplb::dataplane::FlowTable::open(&self.tp.pin_path).unwrap();
        match pool.flow_key(port) {
            Key::V4(k) => table.get(&k),
            Key::V6(k) => table.get6(&k),
        }
    }

    fn counters(&self) -> Counters {
        self.tp.counters()
    }

    fn count(&self, c: GlobalCounter) -> u64 {
        self.counters().get(c)
    }
}

/// A pool's first packet goes to the ring's backend, exactly rewritten; the
/// flow is then pinned: after the ring changes, its next packet goes to the
/// same backend while a new flow follows the new ring; the backend's reply
/// comes back from the VIP. `partial` sends every frame with a partial
/// checksum, which must leave complete.
fn round_trip(pool: Pool, partial: bool) {
    let mut lab = Lab::new(3);
    let port = lab.port_for(pool, 1);
    let checksum = if partial {
        Checksum::Partial
    } else {
        Checksum::Full
    };
    let mut first = pool.first(port);
    first.checksum = checksum;
    let (action, out) = lab.arrive_from_client(&first.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, to_backend(pool, &first, 1));
    assert_checksums_valid(&out);
    let flow = lab
        .flow(pool, port)
        .expect("flow entry after the first packet");
    assert_eq!(ref_slot(flow.backend), pool.slot(1));
    assert_eq!(flow.flags() & lb_common::FLOW_F_UDP != 0, pool.udp());

    lab.send_all_to(pool, 2);
    let mut next = pool.next(port);
    next.checksum = checksum;
    let (action, out) = lab.arrive_from_client(&next.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, to_backend(pool, &next, 1), "pinned to its backend");
    assert_checksums_valid(&out);
    let other = pool.first(port + 1);
    let (_, out) = lab.arrive_from_client(&other.build());
    assert_eq!(backend_of(pool, &out), 2, "a new flow follows the new ring");

    let mut reply = pool.reply(1, port);
    reply.checksum = checksum;
    let (action, out) = lab.arrive_from_backends(&reply.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, to_client(pool, &reply));
    assert_checksums_valid(&out);

    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::Redirected), 4);
    assert_eq!(c.get(GlobalCounter::FlowInserts), 2);
    assert_eq!(
        c.get(GlobalCounter::PartialChecksum),
        if partial { 3 } else { 0 }
    );
    assert_eq!(c.get(GlobalCounter::UdpNoChecksum), 0);
    assert_eq!(c.get(GlobalCounter::Dropped), 0);
}

#[test]
fn ipv6_tcp_is_balanced_pinned_and_answered_from_the_vip() {
    round_trip(Pool::Tcp6, false);
}

#[test]
fn ipv6_tcp_partial_checksums_are_completed() {
    round_trip(Pool::Tcp6, true);
}

#[test]
fn ipv6_udp_is_balanced_pinned_and_answered_with_partial_checksums_completed() {
    round_trip(Pool::Udp6, true);
}

#[test]
fn ipv4_udp_is_balanced_pinned_and_answered_with_partial_checksums_completed() {
    round_trip(Pool::Udp4, true);
}

#[test]
fn ipv4_udp_with_full_checksums_stays_correct() {
    round_trip(Pool::Udp4, false);
}

#[test]
fn an_ipv6_reply_without_a_flow_entry_is_rewritten_to_come_from_the_vip() {
    let mut lab = Lab::new(2);
    for pool in [Pool::Tcp6, Pool::Udp6] {
        let port = 45000;
        assert!(lab.flow(pool, port).is_none());
        let mut reply = pool.reply(1, port);
        reply.payload = vec![0xab; 301];
        let (action, out) = lab.arrive_from_backends(&reply.build());
        assert_eq!(action, XDP_REDIRECT, "{pool:?}");
        assert_eq!(out, to_client(pool, &reply), "{pool:?}");
        assert_checksums_valid(&out);
        assert!(lab.flow(pool, port).is_none(), "replies insert no flow");
    }
    assert_eq!(lab.count(GlobalCounter::Redirected), 2);
}

#[test]
fn a_zero_udp_checksum_is_kept_on_ipv4_and_dropped_on_ipv6() {
    let mut lab = Lab::new(2);
    // IPv4: 0 means "no checksum" (RFC 768); it must stay 0, not become a
    // wrong incremental update of 0.
    let mut sent = Pool::Udp4.first(46000);
    sent.checksum = Checksum::Zero;
    let b = lab.ring_choice(Pool::Udp4, 46000);
    let (action, out) = lab.arrive_from_client(&sent.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, to_backend(Pool::Udp4, &sent, b));
    assert_eq!(out[40..42], [0, 0], "UDP checksum still 0");
    assert_eq!(lab.count(GlobalCounter::UdpNoChecksum), 1);
    let mut reply = Pool::Udp4.reply(b, 46000);
    reply.checksum = Checksum::Zero;
    let (action, out) = lab.arrive_from_backends(&reply.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, to_client(Pool::Udp4, &reply));
    let (ip_found, ip_computed, _, _) = checksums_udp4(&out);
    assert_eq!(ip_found, ip_computed);

    // IPv6: a zero UDP checksum is invalid (RFC 8200 §8.1).
    let mut sent = Pool::Udp6.first(46001);
    sent.checksum = Checksum::Zero;
    let frame = sent.build();
    let (action, out) = lab.arrive_from_client(&frame);
    assert_eq!(action, XDP_DROP);
    assert_eq!(out, frame);
    assert_eq!(lab.count(GlobalCounter::DropUdp6ZeroChecksum), 1);
    assert!(lab.flow(Pool::Udp6, 46001).is_none());
}

#[test]
fn an_idle_udp_flow_is_selected_afresh() {
    let mut lab = Lab::new(2);
    let pools = [Pool::Udp6, Pool::Udp4];
    let mut ports = Vec::new();
    for pool in pools {
        lab.publish(pool, (0..RING).map(|i| i % 2).collect(), Some(1000));
        let port = lab.port_for(pool, 0);
        let (_, out) = lab.arrive_from_client(&pool.first(port).build());
        assert_eq!(backend_of(pool, &out), 0);
        lab.publish(pool, vec![1; RING as usize], Some(1000));
        // Not idle yet: still pinned.
        let (_, out) = lab.arrive_from_client(&pool.next(port).build());
        assert_eq!(backend_of(pool, &out), 0, "{pool:?} pinned while active");
        ports.push(port);
    }
    assert_eq!(lab.count(GlobalCounter::FlowIdled), 0);
    // flow_idle_ms plus the last-seen clock's 1 s resolution, and a margin.
    std::thread::sleep(Duration::from_millis(2600));
    for (pool, port) in pools.into_iter().zip(ports) {
        let next = pool.next(port);
        let (action, out) = lab.arrive_from_client(&next.build());
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(out, to_backend(pool, &next, 1), "{pool:?} selected afresh");
        let flow = lab.flow(pool, port).expect("re-inserted");
        assert_eq!(ref_slot(flow.backend), pool.slot(1), "{pool:?}");
    }
    assert_eq!(lab.count(GlobalCounter::FlowIdled), 2);
}

/// A flow's entry stamped by another CPU whose coarse clock ticked before
/// this one's (`seen` a few units ahead of the clock the packet's CPU
/// reads) is fresh: neither idle nor re-steered.
#[test]
fn a_flow_stamped_ahead_of_the_clock_is_fresh() {
    let mut lab = Lab::new(2);
    let table = xdplb::dataplane::FlowTable::open(&lab.tp.pin_path).unwrap();
    for pool in [Pool::Udp4, Pool::Udp6] {
        lab.publish(pool, vec![0; RING as usize], Some(1000));
        let port = 46100;
        let (_, out) = lab.arrive_from_client(&pool.first(port).build());
        assert_eq!(backend_of(pool, &out), 0);
        lab.publish(pool, vec![1; RING as usize], Some(1000));
        let flow = lab.flow(pool, port).unwrap();
        let stamp = lb_common::flow_seen(common::coarse_now_ns()) + 3;
        assert!(table.put(FlowSlot {
            seen: stamp,
            ..flow
        }));
        let (action, out) = lab.arrive_from_client(&pool.next(port).build());
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(backend_of(pool, &out), 0, "{pool:?} still pinned");
        assert_eq!(
            ref_slot(lab.flow(pool, port).unwrap().backend),
            pool.slot(0)
        );
    }
    assert_eq!(lab.count(GlobalCounter::FlowIdled), 0);
}

#[test]
fn hop_by_hop_and_destination_options_are_skipped_and_preserved() {
    let mut lab = Lab::new(2);
    for pool in [Pool::Tcp6, Pool::Udp6] {
        let port = 47000;
        let b = lab.ring_choice(pool, port);
        let mut sent = pool.first(port);
        sent.ext = vec![Ext6::HopByHop, Ext6::DestOpts];
        sent.checksum = Checksum::Partial;
        let (action, out) = lab.arrive_from_client(&sent.build());
        assert_eq!(action, XDP_REDIRECT, "{pool:?}");
        assert_eq!(out, to_backend(pool, &sent, b), "{pool:?}");
        assert_checksums_valid(&out);
        // A routing header with no segments left is as harmless.
        let mut sent = pool.next(port);
        sent.ext = vec![Ext6::Routing { segments_left: 0 }];
        let (action, out) = lab.arrive_from_client(&sent.build());
        assert_eq!(action, XDP_REDIRECT, "{pool:?}");
        assert_eq!(out, to_backend(pool, &sent, b), "{pool:?}");
    }
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::Ipv6ExtSkipped), 4);
    assert_eq!(c.get(GlobalCounter::PartialChecksum), 2);
}

/// Runs `frame` from the client side and checks the verdict, that the
/// frame came out untouched, and that `counter` went up by one.
fn expect_untouched(lab: &mut Lab, name: &str, frame: &[u8], action: u32, counter: GlobalCounter) {
    let before = lab.count(counter);
    let (got, out) = lab.arrive_from_client(frame);
    assert_eq!(got, action, "{name}: verdict");
    assert_eq!(out, frame, "{name}: untouched");
    assert_eq!(lab.count(counter), before + 1, "{name}: {counter:?}");
}

#[test]
fn extension_headers_that_cannot_be_balanced_are_dropped_or_passed() {
    let mut lab = Lab::new(2);
    let with = |pool: Pool, port: u16, ext: Vec<Ext6>| {
        let mut f = pool.first(port);
        f.ext = ext;
        f.build()
    };
    for pool in [Pool::Tcp6, Pool::Udp6] {
        let cases = [
            (
                "routing header with segments left",
                with(pool, 47100, vec![Ext6::Routing { segments_left: 1 }]),
                XDP_DROP,
                GlobalCounter::DropIpv6Extension,
            ),
            // (A first fragment is balanced and its later fragments follow
            // it: fragments_* below.)
            (
                "later fragment without its first",
                with(
                    pool,
                    47102,
                    vec![Ext6::Fragment {
                        offset: 185,
                        more: false,
                    }],
                ),
                XDP_DROP,
                GlobalCounter::DropFragment,
            ),
            (
                "five extension headers",
                with(
                    pool,
                    47103,
                    vec![
                        Ext6::HopByHop,
                        Ext6::DestOpts,
                        Ext6::DestOpts,
                        Ext6::DestOpts,
                        Ext6::DestOpts,
                    ],
                ),
                XDP_PASS,
                GlobalCounter::PassIpv6ExtUnparsed,
            ),
        ];
        for (name, frame, action, counter) in cases {
            expect_untouched(
                &mut lab,
                &format!("{pool:?} {name}"),
                &frame,
                action,
                counter,
            );
        }
        assert!(lab.flow(pool, 47100).is_none());
    }
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::Redirected), 0);
    assert_eq!(c.get(GlobalCounter::FlowInserts), 0);
}

#[test]
fn malformed_ipv6_for_the_gateway_is_dropped_with_its_reason() {
    let mut lab = Lab::new(2);
    let syn = Pool::Tcp6.first(48000).build();
    let dgram = Pool::Udp6.first(48001).build();
    let mut bad_version = syn.clone();
    bad_version[14] = 0x40;
    let mut long_payload = syn.clone();
    long_payload[18..20].copy_from_slice(&(20u16 + 1).to_be_bytes());
    // A TCP header cut short, its IPv6 payload length telling the truth.
    let mut short_tcp = syn[..14 + 40 + 12].to_vec();
    short_tcp[18..20].copy_from_slice(&12u16.to_be_bytes());
    let mut short_udp = dgram[..14 + 40 + 6].to_vec();
    short_udp[18..20].copy_from_slice(&6u16.to_be_bytes());
    // A UDP length beyond the IPv6 payload.
    let mut long_udp = dgram.clone();
    long_udp[14 + 40 + 4..14 + 40 + 6].copy_from_slice(&200u16.to_be_bytes());
    let cases = [
        (
            "header cut at 30",
            syn[..14 + 30].to_vec(),
            GlobalCounter::DropTruncatedIp,
        ),
        (
            "header cut at 8",
            syn[..14 + 8].to_vec(),
            GlobalCounter::DropTruncatedIp,
        ),
        (
            "payload length beyond the frame",
            long_payload,
            GlobalCounter::DropBadTotalLength,
        ),
        (
            "version 4 in an IPv6 frame",
            bad_version,
            GlobalCounter::DropBadIpVersion,
        ),
        (
            "TCP header cut short",
            short_tcp,
            GlobalCounter::DropTruncatedTcp,
        ),
        (
            "UDP header cut short",
            short_udp,
            GlobalCounter::DropTruncatedUdp,
        ),
        (
            "UDP length beyond the payload",
            long_udp,
            GlobalCounter::DropTruncatedUdp,
        ),
    ];
    for (name, frame, counter) in &cases {
        expect_untouched(&mut lab, name, frame, XDP_DROP, *counter);
    }
    // The same frames for another host's MAC are not ours to judge.
    for (name, frame, _) in &cases {
        let mut other = frame.clone();
        other[..6].copy_from_slice(&[0x02, 0x55, 0, 0, 0, 1]);
        let (action, out) = lab.arrive_from_client(&other);
        assert_eq!(action, XDP_PASS, "{name} for another MAC");
        assert_eq!(out, other);
    }
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::Dropped), cases.len() as u64);
    assert_eq!(c.get(GlobalCounter::Redirected), 0);
    assert_eq!(c.get(GlobalCounter::FlowInserts), 0);
}

const ROUTER6: &str = "2001:2::fe";
const ROUTER_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 1];

fn v6(a: SocketAddr) -> Ipv6Addr {
    match a {
        SocketAddr::V6(a) => *a.ip(),
        SocketAddr::V4(_) => unreachable!("an IPv6 pool"),
    }
}

/// The IPv6 header and 8 bytes of `f` (its ports), as an ICMPv6 error
/// quotes it.
fn quote(f: &L4Frame) -> Vec<u8> {
    f.build()[14..14 + 48].to_vec()
}

#[test]
fn an_icmpv6_error_about_a_vips_packet_reaches_the_flows_backend() {
    let mut lab = Lab::new(3);
    let pool = Pool::Tcp6;
    let port = lab.port_for(pool, 1);
    let (_, out) = lab.arrive_from_client(&pool.first(port).build());
    assert_eq!(backend_of(pool, &out), 1);
    // Only the flow table knows the backend now.
    lab.send_all_to(pool, 2);
    // What the VIP "sent" the client, as a router on the way quotes it.
    let mut sent = L4Frame::tcp(pool.vip(), pool.client(port), TCP_SYN | TCP_ACK);
    sent.payload = vec![9; 1400];
    let mtu = 1280u32.to_be_bytes();
    let router: Ipv6Addr = ROUTER6.parse().unwrap();
    let frame = icmp6(
        ROUTER_MAC,
        IN_MAC,
        router,
        v6(pool.vip()),
        2,
        0,
        mtu,
        &quote(&sent),
    );
    let (action, out) = lab.arrive_from_client(&frame);
    assert_eq!(action, XDP_REDIRECT);
    let mut requoted = sent.clone();
    requoted.src = pool.backend(1);
    let mut want = icmp6(
        OUT_MAC,
        backend_mac(1),
        router,
        v6(pool.backend(1)),
        2,
        0,
        mtu,
        &quote(&requoted),
    );
    want[21] -= 1;
    assert_eq!(out, want);
    let (found, computed) = checksums6(&out);
    assert_eq!(found, computed, "ICMPv6 checksum");
    assert_eq!(lab.count(GlobalCounter::IcmpToBackend), 1);
}

#[test]
fn an_icmpv6_error_from_a_backend_about_a_clients_packet_comes_from_the_vip() {
    let mut lab = Lab::new(2);
    for pool in [Pool::Tcp6, Pool::Udp6] {
        let port = 49000;
        // What the client sent the backend (through us), quoted by the
        // backend's stack: port unreachable.
        let mut sent = L4Frame::udp(pool.client(port), pool.backend(1));
        if !pool.udp() {
            sent = L4Frame::tcp(pool.client(port), pool.backend(1), TCP_SYN);
        }
        let frame = icmp6(
            backend_mac(1),
            OUT_MAC,
            v6(pool.backend(1)),
            v6(pool.client(port)),
            1,
            4,
            [0; 4],
            &quote(&sent),
        );
        let (action, out) = lab.arrive_from_backends(&frame);
        assert_eq!(action, XDP_REDIRECT, "{pool:?}");
        let mut requoted = sent.clone();
        requoted.dst = pool.vip();
        let mut quoted = quote(&requoted);
        // The quote's own UDP checksum is left as the client computed it
        // (8 quoted bytes cannot be verified, and no stack checks them).
        if pool.udp() {
            quoted[46..48].copy_from_slice(&quote(&sent)[46..48]);
        }
        let mut want = icmp6(
            IN_MAC,
            CLIENT_MAC,
            v6(pool.vip()),
            v6(pool.client(port)),
            1,
            4,
            [0; 4],
            &quoted,
        );
        want[21] -= 1;
        assert_eq!(out, want, "{pool:?}");
        let (found, computed) = checksums6(&out);
        assert_eq!(found, computed, "{pool:?} ICMPv6 checksum");
    }
    assert_eq!(lab.count(GlobalCounter::IcmpToClient), 2);
}

#[test]
fn informational_icmpv6_passes_untouched() {
    let mut lab = Lab::new(1);
    let client: Ipv6Addr = CLIENT6.parse().unwrap();
    let gateway: Ipv6Addr = "2001:2::1".parse().unwrap();
    let solicited: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
    let cases = [
        (
            "neighbour solicitation",
            icmp6(
                CLIENT_MAC,
                IN_MAC,
                client,
                solicited,
                135,
                0,
                [0; 4],
                &gateway.octets(),
            ),
        ),
        (
            "neighbour advertisement",
            icmp6(
                CLIENT_MAC,
                IN_MAC,
                client,
                gateway,
                136,
                0,
                [0x60, 0, 0, 0],
                &client.octets(),
            ),
        ),
        (
            "echo request to an address that is no VIP's",
            icmp6(
                CLIENT_MAC,
                IN_MAC,
                client,
                "2001:2:0:2::99".parse().unwrap(),
                128,
                0,
                [0, 1, 0, 1],
                b"ping",
            ),
        ),
    ];
    for (name, frame) in cases {
        expect_untouched(&mut lab, name, &frame, XDP_PASS, GlobalCounter::Passed);
    }
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::Redirected), 0);
    assert_eq!(c.get(GlobalCounter::PassIcmpUnparsed), 0);
}

/// `pool` with every ring entry empty: on_empty = reject answers.
fn empty(pool: Pool) -> Lab {
    let mut lab = Lab::new(2);
    lab.publish(pool, vec![NO_BACKEND; RING as usize], None);
    lab
}

fn assert_rejected_once(lab: &Lab, pool: Pool) {
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::Rejected), 1);
    assert_eq!(c.get(GlobalCounter::Answered), 1);
    let vip = c.vips.iter().find(|v| v.index == pool.index()).unwrap();
    assert_eq!(vip.counters.rejected, 1);
}

#[test]
fn an_empty_ipv6_tcp_pool_answers_a_syn_with_a_rst_from_the_vip() {
    let pool = Pool::Tcp6;
    let mut lab = empty(pool);
    let mut syn = pool.first(50000);
    syn.payload = vec![7; 33];
    let (action, out) = lab.arrive_from_client(&syn.build());
    assert_eq!(action, XDP_REDIRECT, "answered through TX_PORTS");
    let mut rst = L4Frame::tcp(pool.vip(), pool.client(50000), TCP_RST | TCP_ACK);
    rst.l4 = L4::Tcp {
        flags: TCP_RST | TCP_ACK,
        seq: 0,
        ack: 0x0102_0304 + 1 + 33,
        window: 0,
    };
    rst.src_mac = IN_MAC;
    rst.dst_mac = CLIENT_MAC;
    assert_eq!(out, rst.build());
    assert_checksums_valid(&out);
    assert_rejected_once(&lab, pool);
}

#[test]
fn an_empty_ipv6_udp_pool_answers_port_unreachable_from_the_vip() {
    let pool = Pool::Udp6;
    let mut lab = empty(pool);
    let sent = pool.first(50001);
    let (action, out) = lab.arrive_from_client(&sent.build());
    assert_eq!(action, XDP_REDIRECT, "answered through TX_PORTS");
    let want = icmp6(
        IN_MAC,
        CLIENT_MAC,
        v6(pool.vip()),
        v6(pool.client(50001)),
        1,
        4,
        [0; 4],
        &quote(&sent),
    );
    assert_eq!(out, want);
    let (found, computed) = checksums6(&out);
    assert_eq!(found, computed, "ICMPv6 checksum");
    assert_rejected_once(&lab, pool);
}

#[test]
fn an_empty_ipv4_udp_pool_answers_port_unreachable_from_the_vip() {
    let pool = Pool::Udp4;
    let mut lab = empty(pool);
    let sent = pool.first(50002);
    let bytes = sent.build();
    let (action, out) = lab.arrive_from_client(&bytes);
    assert_eq!(action, XDP_REDIRECT, "answered through TX_PORTS");
    let ip = |a: SocketAddr| match a {
        SocketAddr::V4(a) => a.ip().octets(),
        SocketAddr::V6(_) => unreachable!(),
    };
    let want = icmp_error(
        IN_MAC,
        CLIENT_MAC,
        ip(pool.vip()),
        ip(pool.client(50002)),
        3,
        3,
        [0; 4],
        &bytes[14..14 + 28],
    );
    assert_eq!(out, want);
    assert_rejected_once(&lab, pool);
}

/// With a tunnel source of each family the tunnel paths are live code the
/// verifier must accept (with none it prunes them as dead); an undefined
/// register spilled on the IPv6 tunnel path once made every load fail.
#[test]
fn the_program_loads_with_tunnel_sources_of_both_families() {
    let mut tp = TestPlane::tuned(
        RING,
        4096,
        Tuning {
            tunnel_source_v4: Some("198.18.1.1/32".parse().unwrap()),
            tunnel_source_v6: Some("2001:2:0:1::1/128".parse().unwrap()),
            ..Default::default()
        },
    );
    // Every program was accepted, tunnel paths included (the kernel says
    // how much it verified of each).
    let verified = tp.dp().verified_instructions();
    // The eight programs (IPv4 TCP, IPv4 UDP to VIPs and from backends,
    // IPv6 TCP, IPv6 UDP, ICMPv6 errors, IPv4 and IPv6 later fragments),
    // each named once: an empty or short list would pass the check below
    // without checking anything.
    use lb_common::maps::*;
    let mut want = [
        PROGRAM,
        PROGRAM_UDP4,
        PROGRAM_UDP4_REPLY,
        PROGRAM_IPV6,
        PROGRAM_UDP6,
        PROGRAM_ICMP6,
        PROGRAM_FRAG4,
        PROGRAM_FRAG6,
    ];
    want.sort_unstable();
    let mut names: Vec<&str> = verified.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    assert_eq!(names, want, "verified instructions of: {verified:?}");
    assert!(
        verified.iter().all(|(_, n)| n.is_some_and(|n| n > 1000)),
        "{verified:?}"
    );
}

/// A data plane whose tail-call table lost a program (loaded by hand, half
/// set up) passes that program's frames to the kernel untouched, counted,
/// and keeps serving the others.
#[test]
fn a_missing_tail_program_passes_its_frames_counted() {
    let mut lab = Lab::new(1);
    let map =
        Map::ProgramArray(MapData::from_pin(lab.tp.pin_path.join(lb_common::maps::TAILS)).unwrap());
    let mut tails: aya::maps::ProgramArray<MapData> = map.try_into().unwrap();
    tails.clear_index(&lb_common::TAIL_UDP4).unwrap();
    let udp4 = Pool::Udp4.first(40001).build();
    let (action, out) = lab.arrive_from_client(&udp4);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, udp4, "untouched");
    assert_eq!(lab.counters().get(GlobalCounter::PassTailMissing), 1);
    // IPv6 still has its program.
    let (action, _) = lab.arrive_from_client(&Pool::Tcp6.first(40002).build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(lab.counters().get(GlobalCounter::PassTailMissing), 1);
}

// ---- Direct server return over IPv6: dsr6, tunnel6 and decap ----

const TUNNEL_SOURCE6: &str = "2001:2:0:1::1";

/// The three pools in one direct mode (`VIP_F_DSR` or `VIP_F_TUNNEL`), 3
/// backends each, tunnel sources of both families.
fn direct_lab(mode: u32) -> Lab {
    Lab::with(
        3,
        VIP_F_REJECT_EMPTY | mode,
        Tuning {
            tunnel_source_v4: Some("198.18.1.1/32".parse().unwrap()),
            tunnel_source_v6: Some(TUNNEL_SOURCE6.parse::<Ipv6Addr>().unwrap().into()),
            ..Default::default()
        },
    )
}

/// `sent`'s IPv6 packet inside an outer IPv6 header to `pool`'s backend
/// `i`, rebuilt field by field: version 6, the inner traffic class and flow
/// label, payload length, next header 41 (IPv6), hop limit 64, the tunnel
/// source and the backend.
fn expected_ip6ip6(pool: Pool, sent: &[u8], i: u32) -> Vec<u8> {
    let inner = &sent[14..];
    let word = u32::from_be_bytes([inner[0], inner[1], inner[2], inner[3]]);
    let (tclass, label) = ((word >> 20) & 0xff, word & 0xf_ffff);
    let mut f = Vec::new();
    f.extend_from_slice(&backend_mac(i as u8));
    f.extend_from_slice(&OUT_MAC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&(6 << 28 | tclass << 20 | label).to_be_bytes());
    f.extend_from_slice(&(inner.len() as u16).to_be_bytes());
    f.extend_from_slice(&[41, 64]);
    f.extend_from_slice(&TUNNEL_SOURCE6.parse::<Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&v6(pool.backend(i)).octets());
    f.extend_from_slice(inner);
    f
}

/// `f` built, with the version/traffic class/flow label word replaced
/// (none of it is under the L4 checksum).
fn with_vtc_flow(f: &L4Frame, word: u32) -> Vec<u8> {
    let mut b = f.build();
    b[14..18].copy_from_slice(&word.to_be_bytes());
    b
}

#[test]
fn dsr6_rewrites_only_the_macs_and_completes_partial_checksums() {
    let mut lab = direct_lab(VIP_F_DSR);
    for pool in [Pool::Tcp6, Pool::Udp6] {
        for port in [42000u16, 42001, 42002] {
            let sent = with_vtc_flow(&pool.first(port), 0x6b81_2345);
            let (action, out) = lab.arrive_from_client(&sent);
            assert_eq!(action, XDP_REDIRECT);
            let want = expected_dsr(&sent, lab.ring_choice(pool, port));
            assert_eq!(out, want, "{pool:?} port {port}");
        }
        // Pinned, and a partial checksum is completed (the frame leaves the
        // kernel's offload state behind).
        let mut next = pool.next(42000);
        next.checksum = Checksum::Partial;
        let (action, out) = lab.arrive_from_client(&next.build());
        assert_eq!(action, XDP_REDIRECT);
        next.checksum = Checksum::Full;
        let want = expected_dsr(&next.build(), lab.ring_choice(pool, 42000));
        assert_eq!(out, want, "{pool:?}");
        assert_checksums_valid(&out);
    }
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::DsrSent), 8);
    assert_eq!(c.get(GlobalCounter::PartialChecksum), 2);
    assert_eq!(c.get(GlobalCounter::Dropped), 0);
}

#[test]
fn tunnel6_wraps_the_packet_in_an_outer_ipv6_header_from_the_tunnel_source() {
    let mut lab = direct_lab(VIP_F_TUNNEL);
    // Traffic class (DSCP and ECN) and flow label travel outside: none;
    // EF with ECT(0) and a label; CS1 with CE and the largest label.
    let words = [0x6000_0000u32, 0x6b81_2345, 0x623f_ffff];
    for pool in [Pool::Tcp6, Pool::Udp6] {
        for (port, word) in (42100u16..).zip(words) {
            let sent = with_vtc_flow(&pool.first(port), word);
            let (action, out) = lab.arrive_from_client(&sent);
            assert_eq!(action, XDP_REDIRECT);
            let i = lab.ring_choice(pool, port);
            assert_eq!(
                out,
                expected_ip6ip6(pool, &sent, i),
                "{pool:?} port {port} word {word:#x}"
            );
            assert_eq!(&out[54..], &sent[14..], "the inner packet untouched");
            assert_eq!(
                u32::from_be_bytes([out[14], out[15], out[16], out[17]]),
                word,
                "version, traffic class, flow label"
            );
        }
        // A partial checksum is completed before it is wrapped.
        let mut next = pool.next(42100);
        next.checksum = Checksum::Partial;
        let (action, out) = lab.arrive_from_client(&next.build());
        assert_eq!(action, XDP_REDIRECT);
        next.checksum = Checksum::Full;
        let want = expected_ip6ip6(pool, &next.build(), lab.ring_choice(pool, 42100));
        assert_eq!(out, want, "{pool:?}");
        let (found, computed) = checksums6(&[&out[..14], &out[54..]].concat());
        assert_eq!(found, computed, "inner L4 checksum");
    }
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::TunnelSent), 8);
    assert_eq!(c.get(GlobalCounter::Dropped), 0);
}

/// A TCP packet from the client to the IPv6 VIP whose IPv6 packet is
/// `ip_len` bytes long (header included).
fn sized6(port: u16, ip_len: usize) -> L4Frame {
    let mut f = Pool::Tcp6.next(port);
    f.payload = vec![0x5a; ip_len - 40 - 20];
    f
}

/// `out` is the VIP's packet-too-big to the client of `port` about `over`,
/// quoting `mtu` and the first 48 bytes, with a valid checksum.
fn assert_packet_too_big(out: &[u8], over: &[u8], pool: Pool, port: u16, mtu: u32) {
    let want = icmp6(
        IN_MAC,
        CLIENT_MAC,
        v6(pool.vip()),
        v6(pool.client(port)),
        2,
        0,
        mtu.to_be_bytes(),
        &over[14..14 + 48],
    );
    assert_eq!(out, want);
    let (found, computed) = checksums6(out);
    assert_eq!(found, computed, "ICMPv6 checksum");
}

#[test]
fn tunnel6_mtu_edge_counts_the_outer_header() {
    let mut lab = direct_lab(VIP_F_TUNNEL);
    lab.ns.set_mtu("out0", 1280);
    let pool = Pool::Tcp6;
    // 1240 + 40 = 1280: fits exactly.
    let fits = sized6(42200, 1240).build();
    assert_eq!(fits.len(), 14 + 1240);
    let (action, out) = lab.arrive_from_client(&fits);
    assert_eq!(action, XDP_REDIRECT);
    let want = expected_ip6ip6(pool, &fits, lab.ring_choice(pool, 42200));
    assert_eq!(out, want);
    assert_eq!(out.len(), 14 + 1280);
    // One byte over: packet too big from the VIP, quoting the MTU less the
    // outer header, before any rewrite.
    let over = sized6(42201, 1241).build();
    let (action, out) = lab.arrive_from_client(&over);
    assert_eq!(action, XDP_REDIRECT, "answered through TX_PORTS");
    assert_packet_too_big(&out, &over, pool, 42201, 1240);
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::FragNeededSent), 1);
    assert_eq!(c.get(GlobalCounter::TunnelSent), 1);
    assert_eq!(c.get(GlobalCounter::Passed), 0);
}

/// An IPv6 `tunnel_source` prefix for the spread tests: 16 outer sources.
const SPREAD_PREFIX6: &str = "2001:2:0:3::/124";

/// The direct-mode lab with [`SPREAD_PREFIX6`] as the IPv6 tunnel source.
fn spread_lab6() -> Lab {
    Lab::with(
        3,
        VIP_F_REJECT_EMPTY | VIP_F_TUNNEL,
        Tuning {
            tunnel_source_v4: Some("198.18.1.1/32".parse().unwrap()),
            tunnel_source_v6: Some(SPREAD_PREFIX6.parse().unwrap()),
            ..Default::default()
        },
    )
}

/// The outer source of `pool`'s flow from `port` within [`SPREAD_PREFIX6`].
fn spread_source6(pool: Pool, port: u16) -> Ipv6Addr {
    let Key::V6(k) = pool.flow_key(port) else {
        panic!("an IPv6 pool");
    };
    let host = lb_common::tunnel_host_part(flow_hash6(&k), 4);
    let mut o = "2001:2:0:3::".parse::<Ipv6Addr>().unwrap().octets();
    o[15] = host as u8;
    o.into()
}

#[test]
fn tunnel6_flows_take_their_outer_source_from_the_prefix_and_keep_it() {
    let mut lab = spread_lab6();
    let pool = Pool::Tcp6;
    let mut sources = std::collections::BTreeSet::new();
    for port in 42300u16..42348 {
        let sent = pool.first(port).build();
        let (action, out) = lab.arrive_from_client(&sent);
        assert_eq!(action, XDP_REDIRECT);
        let source = spread_source6(pool, port);
        let mut want = expected_ip6ip6(pool, &sent, lab.ring_choice(pool, port));
        want[22..38].copy_from_slice(&source.octets());
        assert_eq!(out, want, "port {port}");
        assert_eq!(&out[22..37], &source.octets()[..15], "in the prefix");
        assert!(out[37] < 16, "in the prefix");
        let (_, out) = lab.arrive_from_client(&pool.next(port).build());
        assert_eq!(
            out[22..38],
            source.octets(),
            "port {port}: one source per flow"
        );
        sources.insert(source);
    }
    // 48 flows over 16 addresses: about 15 distinct expected.
    assert!(
        sources.len() >= 12,
        "flows share too few sources: {sources:?}"
    );
}

/// A router's packet-too-big quoting `quote` bytes of `outer` (an outer
/// packet the gateway sent), MTU `mtu`, to the outer packet's source.
fn too_big_about6(outer: &[u8], quote: usize, mtu: u32) -> Vec<u8> {
    let to: [u8; 16] = outer[22..38].try_into().unwrap();
    icmp6(
        [0x02, 0x77, 0, 0, 0, 2],
        OUT_MAC,
        "2001:2:0:1::fe".parse::<Ipv6Addr>().unwrap(),
        Ipv6Addr::from(to),
        2,
        0,
        mtu.to_be_bytes(),
        &outer[14..14 + quote],
    )
}

#[test]
fn a_routers_packet_too_big_about_an_outer_packet_reaches_the_client_translated() {
    let mut lab = spread_lab6();
    let pool = Pool::Tcp6;
    let port = 42400;
    let sent = sized6(port, 1400).build();
    let (action, outer) = lab.arrive_from_client(&sent);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(outer[22..38], spread_source6(pool, port).octets());
    // Routers quote as much as fits 1280 bytes (RFC 4443): the outer
    // header, the client's header and its ports (88) is the least
    // translated.
    for (quote, mtu, quoted) in [
        (1232usize, 1420u32, 1380u32),
        (88, 1420, 1380),
        // Less than 1280 after the outer header: 1280, IPv6's minimum.
        (1232, 1300, 1280),
        (1232, 1280, 1280),
    ] {
        let icmp = too_big_about6(&outer, quote, mtu);
        let (action, out) = lab.arrive_from_backends(&icmp);
        assert_eq!(action, XDP_REDIRECT, "quote {quote} mtu {mtu}");
        // From the VIP to the client about its own packet, checksum over
        // the new pseudo-header recomputed independently.
        assert_packet_too_big(&out, &sent, pool, port, quoted);
    }
    assert_eq!(lab.counters().get(GlobalCounter::TunnelTooBig), 4);
    // Not translated: a quote without the client's ports; one about a
    // packet to no VIP.
    let short = too_big_about6(&outer, 80, 1420);
    assert_eq!(lab.arrive_from_backends(&short).0, XDP_PASS);
    let mut other = outer.clone();
    other[14 + 40 + 24..14 + 40 + 40]
        .copy_from_slice(&"2001:2:0:2::99".parse::<Ipv6Addr>().unwrap().octets());
    let icmp = too_big_about6(&other, 1232, 1420);
    assert_eq!(lab.arrive_from_backends(&icmp).0, XDP_PASS);
    assert_eq!(lab.counters().get(GlobalCounter::TunnelTooBig), 4);
}

#[test]
fn dsr6_mtu_edge_exactly_fitting_and_one_byte_over() {
    let mut lab = direct_lab(VIP_F_DSR);
    lab.ns.set_mtu("out0", 1280);
    let pool = Pool::Tcp6;
    let fits = sized6(42250, 1280).build();
    let (action, out) = lab.arrive_from_client(&fits);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, expected_dsr(&fits, lab.ring_choice(pool, 42250)));
    // L2 cannot fragment, and IPv6 routers never do: packet too big.
    let over = sized6(42251, 1281).build();
    let (action, out) = lab.arrive_from_client(&over);
    assert_eq!(action, XDP_REDIRECT, "answered through TX_PORTS");
    assert_packet_too_big(&out, &over, pool, 42251, 1280);
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::FragNeededSent), 1);
    assert_eq!(c.get(GlobalCounter::DsrSent), 1);
}

#[test]
fn ipv6_direct_modes_drop_and_count_what_they_cannot_send_themselves() {
    // As for IPv4: the kernel cannot finish these sends, so they are
    // dropped and counted, never passed. One lab at a time: each enters
    // its own namespace.
    let pool = Pool::Tcp6;
    for mode in [VIP_F_DSR, VIP_F_TUNNEL] {
        let mut lab = direct_lab(mode);
        // Backend 3 at an address with no neighbour entry: NO_NEIGH.
        lab.tp
            .dp()
            .write_backend(&BackendSlot {
                slot: pool.slot(3),
                vip_index: pool.index(),
                addr: "[2001:2:0:1::99]:8080".parse().unwrap(),
                state: BACKEND_ACTIVE,
                flags: 0,
            })
            .unwrap();
        lab.send_all_to(pool, 3);
        let (action, _) = lab.arrive_from_client(&pool.first(42300).build());
        assert_eq!(action, XDP_DROP, "mode {mode:#x}: unresolved neighbour");
        // An egress outside the redirect ports.
        lab.publish(pool, (0..RING).map(|i| i % 3).collect(), None);
        lab.tp.dp().sync_host(&["in0".to_string()]).unwrap();
        let (action, _) = lab.arrive_from_client(&pool.first(42301).build());
        assert_eq!(action, XDP_DROP, "mode {mode:#x}: egress not ours");
        let c = lab.counters();
        assert_eq!(c.get(GlobalCounter::DropDirectUnreachable), 2);
        assert_eq!(c.get(GlobalCounter::Dropped), 2);
        assert_eq!(c.get(GlobalCounter::Passed), 0);
        assert_eq!(c.get(GlobalCounter::DsrSent), 0);
        assert_eq!(c.get(GlobalCounter::TunnelSent), 0);
    }
}

const TUNNEL_PEER_MAC: [u8; 6] = [0x02, 0x9a, 0, 0, 0, 9];

/// What a gateway sends this backend for `inner` (an Ethernet frame whose
/// IPv6 packet is wrapped), outer destination `dst`.
fn wrapped6(inner: &[u8], dst: &str) -> Vec<u8> {
    wrapped6_from(inner, DECAP_GATEWAY6, dst, 0)
}

/// `inner` wrapped in IPv6 from `src` to `dst`, outer traffic class `tclass`.
fn wrapped6_from(inner: &[u8], src: &str, dst: &str, tclass: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&OUT_MAC);
    f.extend_from_slice(&TUNNEL_PEER_MAC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&(6u32 << 28 | (tclass as u32) << 20).to_be_bytes());
    f.extend_from_slice(&((inner.len() - 14) as u16).to_be_bytes());
    f.extend_from_slice(&[41, 64]);
    f.extend_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&inner[14..]);
    f
}

/// What decap must hand the kernel for `inner`.
fn opened6(inner: &[u8]) -> Vec<u8> {
    let mut want = inner.to_vec();
    want[0..6].copy_from_slice(&OUT_MAC);
    want[6..12].copy_from_slice(&TUNNEL_PEER_MAC);
    want
}

#[test]
fn decap6_opens_tunnels_to_this_host_and_passes_the_inner_packet() {
    let lab = DecapLab::new();
    for pool in [Pool::Tcp6, Pool::Udp6] {
        let mut inner = pool.first(42400);
        inner.payload = b"hello".to_vec();
        let inner = inner.build();
        let (action, out) = lab.run(&wrapped6(&inner, TUNNEL_SOURCE6));
        assert_eq!(action, XDP_PASS);
        let mut want = inner.clone();
        want[0..6].copy_from_slice(&OUT_MAC);
        want[6..12].copy_from_slice(&TUNNEL_PEER_MAC);
        assert_eq!(
            out, want,
            "{pool:?}: the inner packet, behind the same Ethernet header"
        );
        assert_checksums_valid(&out);
    }
    assert_eq!(lab.counters()["decapsulated"], 2);
}

#[test]
fn decap6_leaves_everything_else_untouched_and_counts_malformed_tunnels() {
    let lab = DecapLab::new();
    let inner = Pool::Tcp6.first(42500).build();
    // Not a tunnel; a tunnel to another host.
    for frame in [inner.clone(), wrapped6(&inner, "2001:2:0:1::77")] {
        let (action, out) = lab.run(&frame);
        assert_eq!(action, XDP_PASS);
        assert_eq!(out, frame);
    }
    // To us, but: the inside is no IPv6 header; the inner length disagrees
    // with the outer; the outer length runs past the frame.
    let mut not_v6 = wrapped6(&inner, TUNNEL_SOURCE6);
    not_v6[54] = 0x45;
    let mut inner_short = wrapped6(&inner, TUNNEL_SOURCE6);
    inner_short[58..60].copy_from_slice(&1u16.to_be_bytes());
    let mut long = wrapped6(&inner, TUNNEL_SOURCE6);
    long[18..20].copy_from_slice(&2000u16.to_be_bytes());
    for (name, frame) in [
        ("not IPv6", not_v6),
        ("inner length", inner_short),
        ("outer length", long),
    ] {
        let (action, _) = lab.run(&frame);
        assert_eq!(action, XDP_DROP, "{name}");
    }
    let c = lab.counters();
    assert_eq!(c["passed"], 2);
    assert_eq!(c["dropped_malformed"], 3);
    assert_eq!(c["decapsulated"], 0);
}

/// As for IPv4: an IPv6 VIP address with no pool at a port is answered as
/// a closed port from the VIP (RST, ICMPv6 port unreachable), another
/// protocol to it is dropped, and an echo request gets its reply while a
/// pool at the address can serve.
#[test]
fn an_ipv6_vip_address_without_a_pool_is_answered_never_routed() {
    let mut lab = Lab::new(2);
    let vip = v6(Pool::Tcp6.vip());
    let client: Ipv6Addr = CLIENT6.parse().unwrap();
    let unused: SocketAddr = "[2001:2:0:2::10]:81".parse().unwrap();
    let mut syn = L4Frame::tcp(Pool::Tcp6.client(50100), unused, TCP_SYN);
    syn.src_mac = CLIENT_MAC;
    syn.dst_mac = IN_MAC;
    let (action, out) = lab.arrive_from_client(&syn.build());
    assert_eq!(action, XDP_REDIRECT);
    let mut rst = L4Frame::tcp(unused, Pool::Tcp6.client(50100), TCP_RST | TCP_ACK);
    rst.l4 = L4::Tcp {
        flags: TCP_RST | TCP_ACK,
        seq: 0,
        ack: 0x0102_0304 + 1,
        window: 0,
    };
    rst.src_mac = IN_MAC;
    rst.dst_mac = CLIENT_MAC;
    assert_eq!(out, rst.build());
    // UDP to a port no UDP pool has (53 has one, 54 none).
    let mut udp = L4Frame::udp(
        Pool::Udp6.client(50101),
        "[2001:2:0:2::10]:54".parse().unwrap(),
    );
    udp.src_mac = CLIENT_MAC;
    udp.dst_mac = IN_MAC;
    udp.payload = b"query".to_vec();
    let (action, out) = lab.arrive_from_client(&udp.build());
    assert_eq!(action, XDP_REDIRECT);
    let want = icmp6(IN_MAC, CLIENT_MAC, vip, client, 1, 4, [0; 4], &quote(&udp));
    assert_eq!(out, want);
    let (found, computed) = checksums6(&out);
    assert_eq!(found, computed, "ICMPv6 checksum");
    // Another protocol (GRE, 47) to the VIP address: dropped.
    let mut gre = udp.build();
    gre[14 + 6] = 47;
    let (action, _) = lab.arrive_from_client(&gre);
    assert_eq!(action, XDP_DROP);
    // Ping.
    let request = icmp6(
        CLIENT_MAC,
        IN_MAC,
        client,
        vip,
        128,
        0,
        [0, 1, 0, 9],
        b"ping!",
    );
    let (action, out) = lab.arrive_from_client(&request);
    assert_eq!(action, XDP_REDIRECT);
    let reply = icmp6(
        IN_MAC,
        CLIENT_MAC,
        vip,
        client,
        129,
        0,
        [0, 1, 0, 9],
        b"ping!",
    );
    assert_eq!(out, reply);
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::NoPoolAnswered), 2);
    assert_eq!(c.get(GlobalCounter::EchoReplied), 1);
    assert_eq!(c.get(GlobalCounter::DropNoPool), 1);
    assert_eq!(c.get(GlobalCounter::Answered), 3);
    // Every pool at the address emptied: ping is dropped.
    lab.publish(Pool::Tcp6, vec![NO_BACKEND; RING as usize], None);
    lab.publish(Pool::Udp6, vec![NO_BACKEND; RING as usize], None);
    let (action, _) = lab.arrive_from_client(&request);
    assert_eq!(action, XDP_DROP);
    assert_eq!(lab.count(GlobalCounter::DropNoPool), 2);
}

// ---- Fragments ----

/// A datagram of `pool` from the client's `port` with 3,000 bytes of
/// payload: three fragments of 1,232 bytes at an MTU of 1,280.
fn big(pool: Pool, port: u16) -> L4Frame {
    let mut f = pool.first(port);
    f.payload = (0..3000u32).map(|i| (i * 7) as u8).collect();
    f
}

const CHUNK: usize = 1232;

/// Ages every tracked fragmented datagram of `pool`'s family past its
/// deadline, as if its first fragment had come long ago.
fn age_fragments(lab: &Lab, pool: Pool) {
    let v6 = pool != Pool::Udp4;
    let name = if v6 {
        lb_common::maps::FRAGS6
    } else {
        lb_common::maps::FRAGS
    };
    let md = MapData::from_pin(lab.tp.pin_path.join(name)).unwrap();
    let map = Map::from_map_data(md).unwrap();
    fn age<K: aya::Pod>(map: Map) -> usize {
        let mut m: aya::maps::HashMap<MapData, K, lb_common::FragEntry> = map.try_into().unwrap();
        let keys: Vec<K> = m.keys().map(|k| k.unwrap()).collect();
        for k in &keys {
            let mut e = m.get(k, 0).unwrap();
            e.expires_ns = 1;
            m.insert(k, e, 0).unwrap();
        }
        keys.len()
    }
    let aged = if v6 {
        age::<lb_common::FragKey6>(map)
    } else {
        age::<lb_common::FragKey>(map)
    };
    assert!(aged > 0, "a datagram was tracked");
}

/// A datagram of 3,000 bytes to the VIP in three fragments, then the
/// backend's answer of 3,000 bytes in three: every fragment leaves as the
/// whole datagram's rewrite would have been cut (to the backend; from the
/// VIP), the first fragment's UDP checksum updated for the datagram.
fn fragments_both_ways(pool: Pool) {
    let mut lab = Lab::new(2);
    let port = lab.port_for(pool, 1);
    let sent = big(pool, port);
    let frags = xdplb::packet::fragments(&sent.build(), 0x04d2, CHUNK);
    assert_eq!(frags.len(), 3);
    let want = xdplb::packet::fragments(&to_backend(pool, &sent, 1), 0x04d2, CHUNK);
    for (i, (f, w)) in frags.iter().zip(&want).enumerate() {
        let (action, out) = lab.arrive_from_client(f);
        assert_eq!(action, XDP_REDIRECT, "fragment {i}");
        assert_eq!(&out, w, "fragment {i} to the backend");
    }
    let mut reply = pool.reply(1, port);
    reply.payload = (0..3000u32).map(|i| (i * 3) as u8).collect();
    let frags = xdplb::packet::fragments(&reply.build(), 0x0777, CHUNK);
    let want = xdplb::packet::fragments(&to_client(pool, &reply), 0x0777, CHUNK);
    for (i, (f, w)) in frags.iter().zip(&want).enumerate() {
        let (action, out) = lab.arrive_from_backends(f);
        assert_eq!(action, XDP_REDIRECT, "reply fragment {i}");
        assert_eq!(&out, w, "reply fragment {i} from the VIP");
    }
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::FragmentFollowed), 4);
    assert_eq!(c.get(GlobalCounter::DropFragment), 0);
    let b = c.backends.iter().find(|b| b.slot == pool.slot(1)).unwrap();
    assert_eq!(
        b.counters.packets, 3,
        "every fragment counted to its backend"
    );
    assert_eq!(b.counters.reply_packets, 3);
}

#[test]
fn ipv4_udp_fragments_follow_their_first_both_ways() {
    fragments_both_ways(Pool::Udp4);
}

#[test]
fn ipv6_udp_fragments_follow_their_first_both_ways() {
    fragments_both_ways(Pool::Udp6);
}

/// A fragment before its first has nowhere to go: dropped, counted; its
/// first and the rest still follow. A fragment whose first came longer
/// ago than the entry lives is dropped. Fragments between other hosts
/// pass.
fn fragments_out_of_order_and_expired(pool: Pool) {
    let mut lab = Lab::new(2);
    let port = lab.port_for(pool, 0);
    let sent = big(pool, port);
    let frags = xdplb::packet::fragments(&sent.build(), 0x0101, CHUNK);
    let want = xdplb::packet::fragments(&to_backend(pool, &sent, 0), 0x0101, CHUNK);
    let (action, _) = lab.arrive_from_client(&frags[1]);
    assert_eq!(action, XDP_DROP, "before its first");
    assert_eq!(lab.count(GlobalCounter::DropFragment), 1);
    for i in [0, 2] {
        let (action, out) = lab.arrive_from_client(&frags[i]);
        assert_eq!((action, &out), (XDP_REDIRECT, &want[i]), "fragment {i}");
    }
    // Another datagram, its entry aged past its deadline.
    let frags = xdplb::packet::fragments(&sent.build(), 0x0202, CHUNK);
    let (action, _) = lab.arrive_from_client(&frags[0]);
    assert_eq!(action, XDP_REDIRECT);
    age_fragments(&lab, pool);
    let (action, _) = lab.arrive_from_client(&frags[1]);
    assert_eq!(action, XDP_DROP, "expired");
    assert_eq!(lab.count(GlobalCounter::DropFragment), 2);
    assert_eq!(lab.count(GlobalCounter::FragmentFollowed), 1);
    // Fragments between a client and an address that is no VIP's.
    let mut other = big(pool, port);
    other.dst = match pool.vip() {
        SocketAddr::V4(_) => "198.18.2.99:53".parse().unwrap(),
        SocketAddr::V6(_) => "[2001:2:0:2::99]:53".parse().unwrap(),
    };
    for f in xdplb::packet::fragments(&other.build(), 0x0303, CHUNK) {
        let (action, out) = lab.arrive_from_client(&f);
        assert_eq!((action, out), (XDP_PASS, f));
    }
    assert_eq!(lab.count(GlobalCounter::PassFragment), 2);
}

#[test]
fn ipv4_fragments_out_of_order_and_expired() {
    fragments_out_of_order_and_expired(Pool::Udp4);
}

#[test]
fn ipv6_fragments_out_of_order_and_expired() {
    fragments_out_of_order_and_expired(Pool::Udp6);
}

#[test]
fn decap6_drops_tunnels_from_sources_outside_allow() {
    let lab = DecapLab::new();
    let inner = Pool::Tcp6.first(42600).build();
    let spoofer = wrapped6_from(&inner, "2001:2:0:1::98", TUNNEL_SOURCE6, 0);
    assert_eq!(lab.run(&spoofer).0, XDP_DROP, "a host outside --allow");
    assert_eq!(
        lab.run(&wrapped6(&inner, TUNNEL_SOURCE6)),
        (XDP_PASS, opened6(&inner)),
        "the gateway"
    );
    let c = lab.counters();
    assert_eq!(c["dropped_source"], 1);
    assert_eq!(c["decapsulated"], 1);

    let lab = DecapLab::allowing(&["2001:2:0:1::/112"]);
    let inside = wrapped6_from(&inner, "2001:2:0:1::98", TUNNEL_SOURCE6, 0);
    let outside = wrapped6_from(&inner, "2001:2:0:1::1:98", TUNNEL_SOURCE6, 0);
    assert_eq!(lab.run(&inside), (XDP_PASS, opened6(&inner)));
    assert_eq!(lab.run(&outside).0, XDP_DROP);
    assert_eq!(lab.counters()["dropped_source"], 1);
}

#[test]
fn decap6_drops_tunnels_whose_inner_destination_is_not_this_host() {
    let lab = DecapLab::new();
    let mut f = Pool::Tcp6.first(42700);
    f.dst = "[2001:2:0:2::11]:80".parse().unwrap();
    let (action, _) = lab.run(&wrapped6(&f.build(), TUNNEL_SOURCE6));
    assert_eq!(action, XDP_DROP);
    let c = lab.counters();
    assert_eq!(c["dropped_not_local"], 1);
    assert_eq!(c["decapsulated"], 0);
}

#[test]
fn decap6_carries_an_outer_ce_mark_inside() {
    // RFC 6040 normal mode, as for IPv4; IPv6 has no header checksum, and
    // the DSCP and flow label stay as they are.
    const NOT_ECT: u32 = 0;
    const ECT1: u32 = 1;
    const ECT0: u32 = 2;
    const CE: u32 = 3;
    let lab = DecapLab::new();
    let plain = Pool::Tcp6.first(42800);
    let word = |ecn: u32| 6 << 28 | (0x28 << 2 | ecn) << 20 | 0x1_2345;
    for (outer, inner, want) in [
        (CE, ECT0, Some(CE)),
        (CE, ECT1, Some(CE)),
        (CE, CE, Some(CE)),
        (CE, NOT_ECT, None),
        (ECT0, NOT_ECT, Some(NOT_ECT)),
        (NOT_ECT, ECT1, Some(ECT1)),
    ] {
        let inner_frame = with_vtc_flow(&plain, word(inner));
        let frame = wrapped6_from(&inner_frame, DECAP_GATEWAY6, TUNNEL_SOURCE6, outer as u8);
        let (action, out) = lab.run(&frame);
        match want {
            Some(ecn) => {
                assert_eq!(action, XDP_PASS, "outer {outer} inner {inner}");
                assert_eq!(
                    out,
                    opened6(&with_vtc_flow(&plain, word(ecn))),
                    "outer {outer} inner {inner}: inner ECN {ecn}"
                );
                assert_checksums_valid(&out);
            }
            None => assert_eq!(action, XDP_DROP, "outer CE over Not-ECT"),
        }
    }
    let c = lab.counters();
    assert_eq!(c["dropped_ecn"], 1);
    assert_eq!(c["decapsulated"], 5);
}

/// Flow sync end to end on a running program, for IPv6 TCP, IPv6 UDP and
/// IPv4 UDP pools: a peer's entry (named by VIP endpoint and backend
/// address, as a message carries it) is mapped to this data plane's
/// references and recorded, and the flow's next packet goes to the peer's
/// backend, not the ring's; the sender's scan of this table then finds
/// exactly those entries (pinned off the ring) and names them the same
/// way; a backend down here is left out.
#[test]
fn synced_entries_steer_their_flows_in_both_families_and_are_found_again() {
    use xdplb::flowsync::{to_local, unrecomputable, LocalBackends, SyncEntry};
    let mut lab = Lab::new(3);
    let pin = lab.tp.pin_path.clone();
    let table = xdplb::dataplane::FlowTable::open(&pin).unwrap();
    let maps = xdplb::dataplane::SyncMaps::open(&pin, RING).unwrap();
    let vips = maps.vips().unwrap();
    let mut local = LocalBackends::default();
    for b in maps.backends(&vips).unwrap() {
        local.insert(b.vip.protocol.ipproto(), b.vip.addr, b.addr, b.r, b.usable);
    }
    let mut sent = Vec::new();
    for pool in POOLS {
        let port = lab.port_for(pool, 0);
        let peers = 2;
        let (proto, flags) = if pool.udp() {
            (
                IPPROTO_UDP,
                (lb_common::FLOW_F_UDP | lb_common::FLOW_F_ACKED) as u8,
            )
        } else {
            (IPPROTO_TCP, lb_common::FLOW_F_ACKED as u8)
        };
        let tag = match pool.flow_key(port) {
            Key::V4(k) => table.tag(&k),
            Key::V6(k) => table.tag6(&k),
        };
        let entry = SyncEntry {
            tag,
            flags,
            proto,
            vip: pool.vip(),
            backend: pool.backend(peers),
        };
        let (inserts, ignored) = to_local(&[entry], &local);
        assert_eq!((inserts.len(), ignored), (1, 0), "{pool:?}");
        let (word, r) = inserts[0];
        assert_eq!(ref_slot(r), pool.slot(peers), "{pool:?}");
        assert!(
            table.insert_absent(word, r, xdplb::dataplane::flow_seen_now()),
            "{pool:?}"
        );
        let next = pool.next(port);
        let (action, out) = lab.arrive_from_client(&next.build());
        assert_eq!(action, XDP_REDIRECT, "{pool:?}");
        assert_eq!(
            out,
            to_backend(pool, &next, peers),
            "{pool:?}: the peer's backend, not the ring's (0)"
        );
        sent.push(entry);
    }
    // The sender's scan: this table's entries off the ring, named as the
    // peer named them.
    let ring_choice = |proto: u8, vip: SocketAddr, hash: u32| {
        let (_, meta) = vips
            .iter()
            .find(|(e, _)| e.protocol.ipproto() == proto && e.addr == vip)?;
        maps.ring_choice(meta, hash).unwrap()
    };
    let mut found = unrecomputable(table.occupied().map(|(_, s)| s), &local, ring_choice);
    found.sort_by_key(|e| e.tag);
    sent.sort_by_key(|e| e.tag);
    assert_eq!(found, sent);
    // A backend down here: its entries are left out on both sides.
    let down = Pool::Tcp6;
    lab.tp
        .dp()
        .write_backend(&BackendSlot {
            slot: down.slot(2),
            vip_index: down.index(),
            addr: down.backend(2),
            state: lb_common::BACKEND_DOWN,
            flags: 0,
        })
        .unwrap();
    let mut now_local = LocalBackends::default();
    for b in maps.backends(&vips).unwrap() {
        now_local.insert(b.vip.protocol.ipproto(), b.vip.addr, b.addr, b.r, b.usable);
    }
    let tcp6 = sent.iter().find(|e| e.vip == down.vip()).copied().unwrap();
    assert_eq!(to_local(&[tcp6], &now_local), (vec![], 1));
}
