//! The XDP program under BPF_PROG_TEST_RUN with crafted frames: exact
//! output bytes, checksums against a full recomputation, verdicts and
//! counters. Each test runs in its own namespace with its own pin path.
mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::programs::{TestRun, TestRunOptions};
use common::{
    backend_mac, expected_dsr, xdp_md, DecapLab, TestNs, TestPlane, CLIENT_MAC, DECAP_GATEWAY,
    IN_MAC, OUT_MAC,
};
use lb_common::{
    flow_hash, FlowKey, GlobalCounter, BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, IPPROTO_TCP,
    VIP_F_REJECT_EMPTY,
};
use xdplb::{
    dataplane::{backend_name_index, BackendSlot, Counters, Dataplane, Tuning},
    packet::{checksums, TcpFrame, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const RING: u32 = 1009;
const VIP: &str = "198.18.2.10:80";
const CLIENT: &str = "198.18.0.2";

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn backend_addr(i: u32) -> SocketAddrV4 {
    sa(&format!("198.18.1.{}:8080", 11 + i))
}

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT.parse().unwrap(), port)
}

struct Lab {
    // Field order matters: the plane is dropped (pins removed) before the
    // namespace is left.
    tp: TestPlane,
    ns: TestNs,
    ring: Vec<u32>,
    flags: u32,
}

impl Lab {
    /// VIP index 0 with `n` active backends in slots 0..n and a ring that
    /// cycles through them.
    fn new(n: u32) -> Lab {
        Lab::tuned(n, Tuning::default())
    }

    fn tuned(n: u32, tuning: Tuning) -> Lab {
        Lab::with(n, VIP_F_REJECT_EMPTY, tuning)
    }

    /// A pool published with VIP `flags` (its mode and on_empty).
    fn with(n: u32, flags: u32, tuning: Tuning) -> Lab {
        Lab::with_table(n, flags, tuning, 4096)
    }

    /// [`Lab::with`] and a flow table of `flow_table` entries.
    fn with_table(n: u32, flags: u32, tuning: Tuning, flow_table: u32) -> Lab {
        let ns = TestNs::new(n as u8);
        let mut tp = TestPlane::tuned(RING, flow_table, tuning);
        let dp = tp.dp();
        dp.write_name(0, "web").unwrap();
        for i in 0..n {
            set_backend(dp, i, BACKEND_ACTIVE);
            dp.write_name(backend_name_index(i), &format!("web-{}", i + 1))
                .unwrap();
            dp.write_reply(backend_addr(i), sa(VIP), i, 0).unwrap();
        }
        let ring: Vec<u32> = (0..RING).map(|i| i % n).collect();
        dp.publish_vip(sa(VIP), 0, &ring, flags).unwrap();
        dp.sync_host(&["in0".to_string(), "out0".to_string()])
            .unwrap();
        Lab {
            tp,
            ns,
            ring,
            flags,
        }
    }

    fn dp(&mut self) -> &mut Dataplane {
        self.tp.dp()
    }

    fn publish(&mut self, ring: Vec<u32>) {
        let flags = self.flags;
        self.tp.dp().publish_vip(sa(VIP), 0, &ring, flags).unwrap();
        self.ring = ring;
    }

    /// The backend slot the ring names for a flow.
    fn ring_choice(&self, src: SocketAddrV4, dst: SocketAddrV4) -> u32 {
        self.ring[(flow_hash(&flow_key(src, dst)) % RING) as usize]
    }

    fn run_on(&mut self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        self.tp.run(frame, ifindex)
    }

    /// A frame arriving from the client side.
    fn arrive_from_client(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let i = self.ns.in_ifindex;
        self.run_on(frame, i)
    }

    /// A frame arriving from the backend side.
    fn arrive_from_backends(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let i = self.ns.out_ifindex;
        self.run_on(frame, i)
    }

    /// The flow table's entry for a client port, if any.
    fn flow(&self, port: u16) -> Option<lb_common::FlowSlot> {
        xdplb::dataplane::FlowTable::open(&self.tp.pin_path)
            .unwrap()
            .get(&flow_key(client(port), sa(VIP)))
    }

    fn counters(&self) -> Counters {
        self.tp.counters()
    }
}

fn flow_key(src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    FlowKey {
        src_addr: u32::from_ne_bytes(src.ip().octets()),
        dst_addr: u32::from_ne_bytes(dst.ip().octets()),
        src_port: src.port().to_be(),
        dst_port: dst.port().to_be(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    }
}

fn set_backend(dp: &mut Dataplane, slot: u32, state: u8) {
    dp.write_backend(&BackendSlot {
        slot,
        vip_index: 0,
        addr: backend_addr(slot).into(),
        state,
        flags: 0,
    })
    .unwrap();
}

/// What the client sends to the VIP.
fn to_vip(port: u16, flags: u8) -> TcpFrame {
    let mut f = TcpFrame::new(client(port), sa(VIP), flags);
    f.src_mac = CLIENT_MAC;
    f.dst_mac = IN_MAC;
    f
}

/// What the gateway must send to backend `b` for `sent`: independently
/// rebuilt with full checksums.
fn expected_to_backend(sent: &TcpFrame, b: u32) -> Vec<u8> {
    let mut e = sent.clone();
    e.dst = backend_addr(b);
    e.src_mac = OUT_MAC;
    e.dst_mac = backend_mac(b as u8);
    e.ttl -= 1;
    e.build()
}

/// `out` is the VIP's fragmentation-needed to the client about `sent`,
/// quoting next-hop MTU `mtu` and the first 28 bytes, checksums valid.
fn assert_frag_needed(out: &[u8], sent: &[u8], mtu: u16) {
    let want = xdplb::packet::icmp_error(
        IN_MAC,
        CLIENT_MAC,
        sa(VIP).ip().octets(),
        client(0).ip().octets(),
        3,
        4,
        [0, 0, (mtu >> 8) as u8, (mtu & 0xff) as u8],
        &sent[14..14 + 28],
    );
    assert_eq!(out, want);
    assert_icmp_checksums_valid(out);
}

fn assert_checksums_valid(frame: &[u8]) {
    let (ip_found, ip_computed, tcp_found, tcp_computed) = checksums(frame);
    assert_eq!(ip_found, ip_computed, "IPv4 checksum");
    assert_eq!(tcp_found, tcp_computed, "TCP checksum");
}

/// Sends a SYN and returns which backend it was rewritten to.
fn backend_of(out: &[u8]) -> u32 {
    let last = out[14 + 19];
    u32::from(last) - 11
}

#[test]
fn syn_to_vip_goes_to_the_rings_backend_with_correct_checksums() {
    let mut lab = Lab::new(3);
    for port in [40000u16, 40001, 51234, 65535, 1024] {
        let syn = to_vip(port, TCP_SYN);
        let want = lab.ring_choice(client(port), sa(VIP));
        let (action, out) = lab.arrive_from_client(&syn.build());
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(out, expected_to_backend(&syn, want), "port {port}");
        assert_checksums_valid(&out);
    }
}

#[test]
fn payload_checksums_stay_correct() {
    let mut lab = Lab::new(3);
    let mut f = to_vip(40100, TCP_ACK | TCP_PSH);
    // Odd length and bytes that make carries likely.
    f.payload = vec![0xff; 1001];
    f.seq = 0xffff_fffe;
    let want = lab.ring_choice(client(40100), sa(VIP));
    let (action, out) = lab.arrive_from_client(&f.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, expected_to_backend(&f, want));
    assert_checksums_valid(&out);
}

#[test]
fn backend_reply_is_rewritten_back_to_the_vip() {
    let mut lab = Lab::new(3);
    let syn = to_vip(40200, TCP_SYN);
    let (_, out) = lab.arrive_from_client(&syn.build());
    let b = backend_of(&out);
    let mut synack = TcpFrame::new(backend_addr(b), client(40200), TCP_SYN | TCP_ACK);
    synack.src_mac = backend_mac(b as u8);
    synack.dst_mac = OUT_MAC;
    synack.payload = b"hello".to_vec();
    let (action, out) = lab.arrive_from_backends(&synack.build());
    assert_eq!(action, XDP_REDIRECT);
    let mut want = synack.clone();
    want.src = sa(VIP);
    want.src_mac = IN_MAC;
    want.dst_mac = CLIENT_MAC;
    want.ttl -= 1;
    assert_eq!(out, want.build());
    assert_checksums_valid(&out);
    let c = lab.counters();
    let be = c.backends.iter().find(|s| s.slot == b).unwrap();
    assert_eq!(be.counters.reply_packets, 1);
}

#[test]
fn backend_traffic_to_this_host_passes_untouched() {
    // The controller's own health check: gateway → backend and back. The
    // gateway's address (198.18.1.1 on out0) is in LOCAL_ADDRS.
    let mut lab = Lab::new(2);
    let mut reply = TcpFrame::new(backend_addr(0), sa("198.18.1.1:45000"), TCP_SYN | TCP_ACK);
    reply.dst_mac = OUT_MAC;
    let bytes = reply.build();
    let (action, out) = lab.arrive_from_backends(&bytes);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, bytes);
    assert_eq!(lab.counters().backends[0].counters.reply_packets, 0);
}

#[test]
fn a_reply_without_a_flow_entry_is_rewritten_to_the_vip() {
    // Evicted, expired, or seen first by this gateway (ECMP): the reverse
    // NAT needs no state. The server speaks first here, on a flow the
    // table never saw.
    let mut lab = Lab::new(2);
    let mut push = TcpFrame::new(backend_addr(1), client(40300), TCP_ACK | TCP_PSH);
    push.src_mac = backend_mac(1);
    push.dst_mac = OUT_MAC;
    push.payload = b"220 banner\r\n".to_vec();
    let (action, out) = lab.arrive_from_backends(&push.build());
    assert_eq!(action, XDP_REDIRECT);
    let mut want = push.clone();
    want.src = sa(VIP);
    want.src_mac = IN_MAC;
    want.dst_mac = CLIENT_MAC;
    want.ttl -= 1;
    assert_eq!(out, want.build());
    assert_checksums_valid(&out);
    let c = lab.counters();
    assert_eq!(c.backends[1].counters.reply_packets, 1);
}

#[test]
fn established_flow_keeps_its_backend_after_the_ring_changes() {
    let mut lab = Lab::new(3);
    let port = 40400;
    let (_, out) = lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
    let b = backend_of(&out);
    let other = (b + 1) % 3;
    lab.publish(vec![other; RING as usize]);
    let ack = to_vip(port, TCP_ACK);
    let (action, out) = lab.arrive_from_client(&ack.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, expected_to_backend(&ack, b));
    // A new flow follows the new ring.
    let (_, out) = lab.arrive_from_client(&to_vip(40401, TCP_SYN).build());
    assert_eq!(backend_of(&out), other);
}

#[test]
fn flow_whose_backend_went_down_is_selected_again() {
    let mut lab = Lab::new(3);
    let port = 40500;
    let (_, out) = lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
    let b = backend_of(&out);
    set_backend(lab.dp(), b, BACKEND_DOWN);
    let survivors: Vec<u32> = (0..3).filter(|&i| i != b).collect();
    lab.publish((0..RING).map(|i| survivors[(i % 2) as usize]).collect());
    let ack = to_vip(port, TCP_ACK);
    let want = lab.ring_choice(client(port), sa(VIP));
    assert_ne!(want, b);
    let (action, out) = lab.arrive_from_client(&ack.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, expected_to_backend(&ack, want));
    // Re-steered once, then pinned to the new backend.
    let (_, out) = lab.arrive_from_client(&ack.build());
    assert_eq!(backend_of(&out), want);
    assert_eq!(lab.counters().get(GlobalCounter::Resteered), 1);
}

#[test]
fn draining_backend_keeps_established_flows_and_gets_no_new_one() {
    let mut lab = Lab::new(3);
    // Find a flow on backend 0.
    let port = (41000u16..42000)
        .find(|&p| lab.ring_choice(client(p), sa(VIP)) == 0)
        .unwrap();
    let (_, out) = lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
    assert_eq!(backend_of(&out), 0);
    set_backend(lab.dp(), 0, BACKEND_DRAINING);
    lab.publish((0..RING).map(|i| 1 + i % 2).collect());
    for _ in 0..3 {
        let (action, out) = lab.arrive_from_client(&to_vip(port, TCP_ACK).build());
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(
            backend_of(&out),
            0,
            "established flow stays on the draining backend"
        );
    }
    for p in 42000u16..42100 {
        let (action, out) = lab.arrive_from_client(&to_vip(p, TCP_SYN).build());
        assert_eq!(action, XDP_REDIRECT);
        assert_ne!(backend_of(&out), 0, "new flow on a draining backend");
    }
    // Once that connection is over (RST), a SYN reusing the port pair is a
    // new connection: it must not land on the draining backend either.
    lab.arrive_from_client(&to_vip(port, TCP_RST).build());
    let (_, out) = lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
    assert_ne!(backend_of(&out), 0);
}

#[test]
fn non_vip_packet_passes_unchanged() {
    let mut lab = Lab::new(2);
    // (Another port of the VIP's address is answered: see
    // a_vip_address_without_a_pool_is_answered_never_routed.)
    for dst in ["198.18.2.11:80", "198.18.1.11:8080"] {
        let mut f = TcpFrame::new(client(43000), sa(dst), TCP_SYN);
        f.dst_mac = IN_MAC;
        let bytes = f.build();
        let (action, out) = lab.arrive_from_client(&bytes);
        assert_eq!(action, XDP_PASS, "{dst}");
        assert_eq!(out, bytes, "{dst}");
    }
    // A UDP datagram: passed at the program's entry, before its tail call.
    let udp = udp_to(43001, "198.18.2.99:53");
    let (action, out) = lab.arrive_from_client(&udp);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, udp);
    // Not IPv4 at all: an ARP request.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let (action, out) = lab.arrive_from_client(&arp);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, arp);
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::Rx), 4);
    assert_eq!(c.get(GlobalCounter::Passed), 4);
}

/// What the program must answer to `sent` when the pool is empty: a RST
/// from the VIP, rebuilt independently.
fn expected_rst(sent: &TcpFrame, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let mut r = TcpFrame::new(sent.dst, sent.src, flags);
    r.src_mac = sent.dst_mac;
    r.dst_mac = sent.src_mac;
    r.seq = seq;
    r.ack = ack;
    r.ip_id = 0;
    r.window = 0;
    r.build()
}

#[test]
fn an_empty_pool_answers_a_syn_with_a_rst_from_the_vip() {
    let mut lab = Lab::new(2);
    lab.publish(vec![lb_common::NO_BACKEND; RING as usize]);
    let mut syn = to_vip(43100, TCP_SYN);
    // Options and a payload must not leak into the answer.
    syn.payload = vec![7; 33];
    let (action, out) = lab.arrive_from_client(&syn.build());
    assert_eq!(action, XDP_REDIRECT, "answered through TX_PORTS");
    let want = expected_rst(&syn, 0, syn.seq.wrapping_add(1 + 33), TCP_RST | TCP_ACK);
    assert_eq!(out, want);
    assert_checksums_valid(&out);
    // A segment with ACK gets a RST whose sequence number is that ACK.
    let mut ack = to_vip(43101, TCP_ACK);
    ack.ack = 0xdead_beef;
    let (action, out) = lab.arrive_from_client(&ack.build());
    assert_eq!(action, XDP_REDIRECT, "answered through TX_PORTS");
    assert_eq!(out, expected_rst(&ack, 0xdead_beef, 0, TCP_RST));
    // A RST is never answered.
    let (action, _) = lab.arrive_from_client(&to_vip(43102, TCP_RST).build());
    assert_eq!(action, XDP_DROP);
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::Answered), 2);
    assert_eq!(c.get(GlobalCounter::Rejected), 2);
    assert_eq!(c.vips[0].counters.rejected, 2);
    assert_eq!(c.get(GlobalCounter::DropNoBackend), 1);
    assert_eq!(c.get(GlobalCounter::Rx), 3);
}

#[test]
fn an_empty_pool_with_on_empty_drop_drops() {
    let mut lab = Lab::new(2);
    lab.tp
        .dp()
        .publish_vip(sa(VIP), 0, &vec![lb_common::NO_BACKEND; RING as usize], 0)
        .unwrap();
    let (action, _) = lab.arrive_from_client(&to_vip(43100, TCP_SYN).build());
    assert_eq!(action, XDP_DROP);
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::DropNoBackend), 1);
    assert_eq!(c.vips[0].counters.rejected, 0);
}

#[test]
fn a_stale_ring_entry_is_never_used() {
    // The controller takes a backend out of the ring before it frees,
    // reassigns or marks it down; a ring that still names it is one caught
    // mid-rewrite, and must not steer anything there.
    let mut lab = Lab::new(2);
    let port = 43200;
    let b = lab.ring_choice(client(port), sa(VIP));
    type MakeStale = fn(&mut Dataplane, u32);
    let cases: [(&str, MakeStale); 3] = [
        ("freed slot", |dp, b| dp.free_backend(b).unwrap()),
        ("slot of another VIP", |dp, b| {
            dp.write_backend(&BackendSlot {
                slot: b,
                vip_index: 1,
                addr: backend_addr(b).into(),
                state: BACKEND_ACTIVE,
                flags: 0,
            })
            .unwrap()
        }),
        ("down backend", |dp, b| set_backend(dp, b, BACKEND_DOWN)),
    ];
    for (i, (name, make_stale)) in cases.iter().enumerate() {
        make_stale(lab.dp(), b);
        let (action, _) = lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
        assert_eq!(action, XDP_DROP, "{name}");
        assert_eq!(
            lab.counters().get(GlobalCounter::DropStaleRing),
            i as u64 + 1,
            "{name}"
        );
        set_backend(lab.dp(), b, BACKEND_ACTIVE);
        let ring = lab.ring.clone();
        lab.publish(ring);
    }
}

#[test]
fn a_reused_slot_does_not_inherit_its_predecessors_ring_entries_or_flows() {
    let mut lab = Lab::new(2);
    let port = (43300u16..44000)
        .find(|&p| lab.ring_choice(client(p), sa(VIP)) == 0)
        .unwrap();
    let (_, out) = lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
    assert_eq!(backend_of(&out), 0);
    // Slot 0 is freed and given to a new backend of the same pool, while
    // the published ring and the flow still name the old occupant.
    lab.dp().free_backend(0).unwrap();
    set_backend(lab.dp(), 0, BACKEND_ACTIVE);
    let other_port = (45000u16..46000)
        .find(|&p| lab.ring_choice(client(p), sa(VIP)) == 0)
        .unwrap();
    let (action, _) = lab.arrive_from_client(&to_vip(other_port, TCP_SYN).build());
    assert_eq!(action, XDP_DROP, "a ring entry of the old occupant");
    // The established flow's entry is stale too: a miss, steered by the
    // ring, which still names only the old generation for this flow.
    let (action, _) = lab.arrive_from_client(&to_vip(port, TCP_ACK).build());
    assert_eq!(action, XDP_DROP);
    // Once the ring is republished for the new occupant, both work.
    let ring = lab.ring.clone();
    lab.publish(ring);
    let (action, out) = lab.arrive_from_client(&to_vip(port, TCP_ACK).build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(backend_of(&out), 0);
    assert!(lab.counters().get(GlobalCounter::FlowMisses) >= 1);
}

/// The next hop toward a backend is kept per backend slot (and per CPU):
/// a slot given to a backend at another address must not inherit its
/// predecessor's next hop, however fresh.
#[test]
fn a_reused_slot_at_another_address_is_sent_to_its_own_next_hop() {
    // One CPU for both packets: the next hop is cached per CPU, and the
    // second packet must meet the first one's entry.
    // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    let mut lab = Lab::new(3);
    lab.publish((0..RING).map(|_| 0).collect());
    let sent = to_vip(47000, TCP_SYN);
    let (action, out) = lab.arrive_from_client(&sent.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, expected_to_backend(&sent, 0));
    // Slot 0 now holds the backend at backend 2's address (and MAC).
    lab.dp().free_backend(0).unwrap();
    lab.dp()
        .write_backend(&BackendSlot {
            slot: 0,
            vip_index: 0,
            addr: backend_addr(2).into(),
            state: BACKEND_ACTIVE,
            flags: 0,
        })
        .unwrap();
    lab.publish((0..RING).map(|_| 0).collect());
    let sent = to_vip(47001, TCP_SYN);
    let (action, out) = lab.arrive_from_client(&sent.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        out,
        expected_to_backend(&sent, 2),
        "backend 2's address and MAC"
    );
}

/// A malformed or special frame, what must happen to it, and the counter
/// that must say so.
struct Case {
    name: String,
    frame: Vec<u8>,
    action: u32,
    counter: Option<GlobalCounter>,
}

fn vip_syn() -> Vec<u8> {
    to_vip(44000, TCP_SYN).build()
}

fn non_vip_syn() -> Vec<u8> {
    let mut f = TcpFrame::new(client(44000), sa("198.18.2.99:80"), TCP_SYN);
    f.dst_mac = IN_MAC;
    f.build()
}

/// Inserts IPv4 options (4 bytes of NOPs) into a frame.
fn with_ip_options(mut f: Vec<u8>) -> Vec<u8> {
    f[14] = 0x46;
    let tot = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f.splice(34..34, [1u8, 1, 1, 1]);
    f
}

fn cases() -> Vec<Case> {
    use GlobalCounter::*;
    let mut v = Vec::new();
    let mut c = |name: &str, frame, action, counter| {
        v.push(Case {
            name: name.to_string(),
            frame,
            action,
            counter,
        })
    };
    // Ethernet header only, IPv4 ethertype: no IP header at all.
    c(
        "truncated ip (eth only)",
        vip_syn()[..14].to_vec(),
        XDP_DROP,
        Some(DropTruncatedIp),
    );
    c(
        "truncated ip (10 bytes)",
        vip_syn()[..24].to_vec(),
        XDP_DROP,
        Some(DropTruncatedIp),
    );
    let mut f = vip_syn();
    f[14] = 0x65;
    c(
        "ip version 6 in an IPv4 frame",
        f,
        XDP_DROP,
        Some(DropBadIpVersion),
    );
    let mut f = vip_syn();
    f[14] = 0x44;
    c("ihl 4", f, XDP_DROP, Some(DropBadIhl));
    let mut f = vip_syn();
    f[16..18].copy_from_slice(&1500u16.to_be_bytes());
    c(
        "total length beyond the frame",
        f,
        XDP_DROP,
        Some(DropBadTotalLength),
    );
    let mut f = vip_syn();
    f[16..18].copy_from_slice(&10u16.to_be_bytes());
    c(
        "total length below the header",
        f,
        XDP_DROP,
        Some(DropBadTotalLength),
    );
    let f = vip_syn()[..36].to_vec();
    let mut f = f;
    f[16..18].copy_from_slice(&22u16.to_be_bytes());
    c("tcp without ports", f, XDP_DROP, Some(DropTruncatedTcp));
    let mut f = vip_syn()[..44].to_vec();
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    c(
        "tcp header cut short (to a VIP)",
        f,
        XDP_DROP,
        Some(DropTruncatedTcp),
    );
    let mut f = vip_syn();
    f[46] = 0x40;
    c(
        "tcp data offset 4 (to a VIP)",
        f,
        XDP_DROP,
        Some(DropTruncatedTcp),
    );
    let mut f = vip_syn();
    f[46] = 0xf0;
    c(
        "tcp data offset past the end (to a VIP)",
        f,
        XDP_DROP,
        Some(DropTruncatedTcp),
    );
    c(
        "ip options (to a VIP)",
        with_ip_options(vip_syn()),
        XDP_DROP,
        Some(DropIpOptions),
    );
    // (A first fragment is balanced, and its later fragments follow it:
    // packet6.rs, fragments_*.)
    let mut f = vip_syn();
    f[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
    c(
        "later fragment without its first (to a VIP)",
        f,
        XDP_DROP,
        Some(DropFragment),
    );
    let mut f = non_vip_syn();
    f[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
    c(
        "later fragment (not to a VIP)",
        f,
        XDP_PASS,
        Some(PassFragment),
    );
    c(
        "ip options (not to a VIP)",
        with_ip_options(non_vip_syn()),
        XDP_PASS,
        None,
    );
    let mut f = non_vip_syn();
    f[46] = 0x40;
    c("tcp data offset 4 (not to a VIP)", f, XDP_PASS, None);
    let mut f = vip_syn();
    f[22] = 1;
    c("ttl 1 (to a VIP): the kernel answers", f, XDP_PASS, None);
    // The IP-layer defects again, to no VIP and from no backend, TCP and
    // UDP: dropped and counted all the same. (Transit traffic leaves at
    // the program's entry, before the parse, only when it is well-formed
    // as far as its ports.)
    for (proto, frame) in [
        ("tcp", non_vip_syn()),
        ("udp", udp_to(44001, "198.18.2.99:53")),
    ] {
        let mut f = frame.clone();
        f[14] = 0x65;
        c(
            &format!("ip version 6 in an IPv4 frame ({proto}, not to a VIP)"),
            f,
            XDP_DROP,
            Some(DropBadIpVersion),
        );
        let mut f = frame.clone();
        f[14] = 0x44;
        c(
            &format!("ihl 4 ({proto}, not to a VIP)"),
            f,
            XDP_DROP,
            Some(DropBadIhl),
        );
        let mut f = frame.clone();
        f[16..18].copy_from_slice(&1500u16.to_be_bytes());
        c(
            &format!("total length beyond the frame ({proto}, not to a VIP)"),
            f,
            XDP_DROP,
            Some(DropBadTotalLength),
        );
        let mut f = frame.clone();
        f[16..18].copy_from_slice(&10u16.to_be_bytes());
        c(
            &format!("total length below the header ({proto}, not to a VIP)"),
            f,
            XDP_DROP,
            Some(DropBadTotalLength),
        );
        let mut f = frame[..36].to_vec();
        f[16..18].copy_from_slice(&22u16.to_be_bytes());
        c(
            &format!("{proto} without ports (not to a VIP)"),
            f,
            XDP_DROP,
            Some(DropTruncatedTcp),
        );
        c(
            &format!("{proto} well-formed (not to a VIP)"),
            frame,
            XDP_PASS,
            None,
        );
    }
    v
}

#[test]
fn malformed_frames_are_never_rewritten_and_are_counted() {
    let mut lab = Lab::new(2);
    let cases = cases();
    assert!(cases.len() >= 10);
    for case in &cases {
        let before = lab.counters();
        let (action, out) = lab.arrive_from_client(&case.frame);
        assert_eq!(action, case.action, "{}: verdict", case.name);
        if action == XDP_PASS {
            assert_eq!(
                out, case.frame,
                "{}: passed frame must be untouched",
                case.name
            );
        }
        let after = lab.counters();
        assert_eq!(
            after.get(GlobalCounter::Rx),
            before.get(GlobalCounter::Rx) + 1,
            "{}",
            case.name
        );
        let verdict = if action == XDP_DROP {
            GlobalCounter::Dropped
        } else {
            GlobalCounter::Passed
        };
        assert_eq!(after.get(verdict), before.get(verdict) + 1, "{}", case.name);
        if let Some(c) = case.counter {
            assert_eq!(
                after.get(c),
                before.get(c) + 1,
                "{}: counter {c:?}",
                case.name
            );
        }
        // Nothing reached a backend.
        for (a, b) in after.backends.iter().zip(before.backends.iter()) {
            assert_eq!(a.counters.packets, b.counters.packets, "{}", case.name);
        }
    }
}

#[test]
fn frames_shorter_than_ethernet_are_refused_before_the_program() {
    // BPF_PROG_TEST_RUN itself rejects frames under ETH_HLEN, as every
    // driver does: the program's own truncated-Ethernet branch cannot be
    // reached from here, so the test pins the kernel behaviour it relies on.
    let mut lab = Lab::new(1);
    let short = [0u8; 10];
    let md = xdp_md(short.len(), lab.ns.in_ifindex);
    let mut out = [0u8; 64];
    let res = lab.dp().program().test_run(TestRunOptions {
        data_in: Some(&short),
        data_out: Some(&mut out),
        ctx_in: Some(&md),
        ..Default::default()
    });
    assert!(res.is_err());
}

#[test]
fn counters_equal_what_was_sent() {
    let mut lab = Lab::new(3);
    let mut sent_bytes = [0u64; 3];
    let mut sent_packets = [0u64; 3];
    let mut new_flows = [0u64; 3];
    let mut total_bytes = 0;
    for port in 45000u16..45020 {
        for (i, flags) in [TCP_SYN, TCP_ACK, TCP_ACK | TCP_PSH]
            .into_iter()
            .enumerate()
        {
            let mut f = to_vip(port, flags);
            f.payload = vec![7; i * 10];
            let bytes = f.build();
            let (action, out) = lab.arrive_from_client(&bytes);
            assert_eq!(action, XDP_REDIRECT);
            let b = backend_of(&out) as usize;
            let ip_len = (bytes.len() - 14) as u64;
            sent_bytes[b] += ip_len;
            sent_packets[b] += 1;
            total_bytes += ip_len;
            if i == 0 {
                new_flows[b] += 1;
            }
        }
    }
    // One non-VIP and one malformed packet.
    lab.arrive_from_client(&non_vip_syn());
    lab.arrive_from_client(&vip_syn()[..20]);
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::Rx), 62);
    assert_eq!(c.get(GlobalCounter::Redirected), 60);
    assert_eq!(c.get(GlobalCounter::Passed), 1);
    assert_eq!(c.get(GlobalCounter::Dropped), 1);
    assert_eq!(c.get(GlobalCounter::FlowMisses), 0);
    assert_eq!(c.vips.len(), 1);
    assert_eq!(c.vips[0].pool, "web");
    assert_eq!(c.vips[0].counters.packets, 60);
    assert_eq!(c.vips[0].counters.bytes, total_bytes);
    assert_eq!(c.vips[0].counters.new_flows, 20);
    for b in &c.backends {
        let i = b.slot as usize;
        assert_eq!(b.name, format!("web-{}", i + 1));
        assert_eq!(b.pool, "web");
        assert_eq!(b.counters.packets, sent_packets[i]);
        assert_eq!(b.counters.bytes, sent_bytes[i]);
        assert_eq!(b.counters.new_flows, new_flows[i]);
    }
}

#[test]
fn non_syn_without_a_flow_is_a_counted_miss_and_still_balanced() {
    let mut lab = Lab::new(3);
    let ack = to_vip(46000, TCP_ACK);
    let want = lab.ring_choice(client(46000), sa(VIP));
    let (action, out) = lab.arrive_from_client(&ack.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, expected_to_backend(&ack, want));
    assert_eq!(lab.counters().get(GlobalCounter::FlowMisses), 1);
}

#[test]
fn ring_flip_is_published_atomically_through_the_idle_slot() {
    let mut lab = Lab::new(3);
    let first = lab.ring.clone();
    lab.publish(vec![2; RING as usize]);
    // The previous ring is still intact in the other slot.
    for i in [0u32, 1, 2, 500, RING - 1] {
        assert_eq!(lab.dp().ring_entry(0, 0, i).unwrap(), first[i as usize]);
        assert_eq!(lab.dp().ring_entry(0, 1, i).unwrap(), 2);
    }
    let vips = lab.dp().read_vips().unwrap();
    assert_eq!(vips[0].1.ring_slot, 1);
}

#[test]
fn a_flow_stops_counting_as_established_once_the_client_closes_it() {
    use std::time::Duration;
    let mut lab = Lab::new(3);
    let count = |lab: &Lab| -> u64 {
        xdplb::dataplane::flow_counts(&lab.tp.pin_path, 1000, Duration::from_secs(30))
            .unwrap()
            .values()
            .sum()
    };
    lab.arrive_from_client(&to_vip(47000, TCP_SYN).build());
    lab.arrive_from_client(&to_vip(47001, TCP_SYN).build());
    // A handshake is not established until the client's ACK.
    assert_eq!(count(&lab), 0);
    lab.arrive_from_client(&to_vip(47000, TCP_ACK).build());
    lab.arrive_from_client(&to_vip(47001, TCP_ACK).build());
    assert_eq!(count(&lab), 2);
    let (action, out) =
        lab.arrive_from_client(&to_vip(47000, TCP_ACK | xdplb::packet::TCP_FIN).build());
    assert_eq!(action, XDP_REDIRECT, "the FIN itself is still forwarded");
    let b = backend_of(&out);
    assert_eq!(count(&lab), 1);
    // Its last ACK still reaches the same backend.
    let (_, out) = lab.arrive_from_client(&to_vip(47000, TCP_ACK).build());
    assert_eq!(backend_of(&out), b);
    assert_eq!(count(&lab), 1);
    lab.arrive_from_client(&to_vip(47001, xdplb::packet::TCP_RST).build());
    assert_eq!(count(&lab), 0);
}

#[test]
fn veth_interfaces_are_recognised_for_the_redirect_warning() {
    let _ns = TestNs::new(1);
    assert_eq!(Dataplane::driver("in0").as_deref(), Some("veth"));
    assert_eq!(
        Dataplane::driver("lo"),
        None,
        "lo has no ethtool driver info"
    );
    assert_eq!(Dataplane::driver("no-such-if"), None);
}

#[test]
fn an_impossible_map_state_is_dropped_counted_and_logged() {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<String>>>);
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
        fn flush(&self) {}
    }

    let mut lab = Lab::new(2);
    let capture = Capture::default();
    let mut logger = lab.dp().logger(capture.clone()).unwrap();
    // A VIP whose index is past the rings: only a bug could write that,
    // and the program must neither forward nor crash.
    let vips = aya::maps::Map::HashMap(
        aya::maps::MapData::from_pin(lab.tp.pin_path.join(lb_common::maps::VIPS)).unwrap(),
    );
    let mut vips: aya::maps::HashMap<_, lb_common::L4Addr, lb_common::VipMeta> =
        vips.try_into().unwrap();
    vips.insert(
        xdplb::dataplane::l4addr(sa(VIP)),
        lb_common::VipMeta {
            index: lb_common::limits::MAX_VIPS + 7,
            ..Default::default()
        },
        0,
    )
    .unwrap();
    let (action, _) = lab.arrive_from_client(&to_vip(48000, TCP_SYN).build());
    assert_eq!(action, XDP_DROP);
    assert_eq!(lab.counters().get(GlobalCounter::DropInternal), 1);
    logger.flush();
    let logged = capture.0.lock().unwrap().clone();
    assert!(
        logged.iter().any(|m| m.contains("internal drop")),
        "logged: {logged:?}"
    );
}

// ---- Partial checksums (CHECKSUM_PARTIAL from veths and virtio) ----

#[test]
fn partial_checksums_are_completed_before_a_redirect() {
    let mut lab = Lab::new(3);
    // Sizes around every chunk boundary of the summing code.
    let sizes = [
        0usize, 1, 2, 3, 4, 5, 255, 511, 512, 513, 1023, 1024, 1400, 1460,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let port = 50000 + i as u16;
        let mut f = to_vip(port, TCP_ACK | TCP_PSH);
        f.payload = (0..n).map(|j| (j * 7 + n) as u8 | 0x80).collect();
        let want = lab.ring_choice(client(port), sa(VIP));
        let (action, out) = lab.arrive_from_client(&f.build_partial());
        assert_eq!(action, XDP_REDIRECT, "{n} bytes");
        assert_eq!(out, expected_to_backend(&f, want), "{n} bytes");
        assert_checksums_valid(&out);
    }
    // And replies.
    let mut r = TcpFrame::new(backend_addr(1), client(50100), TCP_ACK | TCP_PSH);
    r.src_mac = backend_mac(1);
    r.dst_mac = OUT_MAC;
    r.payload = vec![0xfe; 999];
    let (action, out) = lab.arrive_from_backends(&r.build_partial());
    assert_eq!(action, XDP_REDIRECT);
    assert_checksums_valid(&out);
    assert_eq!(
        lab.counters().get(GlobalCounter::PartialChecksum),
        sizes.len() as u64 + 1
    );
}

#[test]
fn a_complete_checksum_equal_to_the_pseudo_header_sum_stays_correct() {
    // Such a frame is indistinguishable from a partial one; completing it
    // must give the same (correct) checksum.
    let mut lab = Lab::new(3);
    let mut f = to_vip(50200, TCP_ACK | TCP_PSH);
    let pseudo = |f: &TcpFrame| {
        let len = (xdplb::packet::TCP_HLEN + f.payload.len()) as u16;
        xdplb::packet::pseudo_header_sum(f.src.ip().octets(), f.dst.ip().octets(), 6, len)
    };
    let found = (0..=u16::MAX).find(|&x| {
        f.payload = vec![1, 2, 3, 4, (x >> 8) as u8, x as u8];
        let b = f.build();
        u16::from_be_bytes([b[50], b[51]]) == pseudo(&f)
    });
    assert!(found.is_some(), "some payload makes the two equal");
    let want = lab.ring_choice(client(50200), sa(VIP));
    let (action, out) = lab.arrive_from_client(&f.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, expected_to_backend(&f, want));
}

#[test]
fn a_partial_frame_handed_to_the_kernel_stays_partial() {
    // The kernel keeps the skb's CHECKSUM_PARTIAL state on XDP_PASS and
    // lets the egress complete it: the field must hold the pseudo-header
    // sum of the rewritten addresses, not a full checksum.
    let mut lab = Lab::new(2);
    // Slot 2 at an address with no neighbour entry: the FIB says NO_NEIGH.
    let unresolved = sa("198.18.1.99:8080");
    lab.dp()
        .write_backend(&BackendSlot {
            slot: 2,
            vip_index: 0,
            addr: unresolved.into(),
            state: BACKEND_ACTIVE,
            flags: 0,
        })
        .unwrap();
    lab.publish(vec![2; RING as usize]);
    let mut f = to_vip(50300, TCP_ACK | TCP_PSH);
    f.payload = b"partial".to_vec();
    let (action, out) = lab.arrive_from_client(&f.build_partial());
    assert_eq!(action, XDP_PASS);
    let mut want = f.clone();
    want.dst = unresolved;
    assert_eq!(out, want.build_partial());
    assert_eq!(lab.counters().get(GlobalCounter::PassNeighUnresolved), 1);
}

// ---- MTU ----

/// A DF packet to the VIP whose IP total length is `ip_len`.
fn sized_to_vip(port: u16, ip_len: usize) -> TcpFrame {
    let mut f = to_vip(port, TCP_ACK | TCP_PSH);
    f.payload = vec![0x5a; ip_len - 40];
    f
}

#[test]
fn a_df_packet_too_big_for_the_backend_link_gets_frag_needed_from_the_vip() {
    let mut lab = Lab::new(2);
    lab.ns.set_mtu("out0", 1280);
    // Exactly fitting: forwarded.
    let fits = sized_to_vip(51000, 1280);
    let want = lab.ring_choice(client(51000), sa(VIP));
    let (action, out) = lab.arrive_from_client(&fits.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, expected_to_backend(&fits, want));
    // One byte over: answered before any rewrite.
    let over = sized_to_vip(51001, 1281);
    let sent = over.build();
    let (action, out) = lab.arrive_from_client(&sent);
    assert_eq!(action, XDP_REDIRECT, "answered through TX_PORTS");
    assert_frag_needed(&out, &sent, 1280);
    // Without DF the kernel fragments it: rewritten and passed.
    let mut nodf = sized_to_vip(51002, 1281);
    nodf.df = false;
    let (action, out) = lab.arrive_from_client(&nodf.build());
    assert_eq!(action, XDP_PASS);
    let mut want = nodf.clone();
    want.dst = backend_addr(lab.ring_choice(client(51002), sa(VIP)));
    assert_eq!(out, want.build());
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::FragNeededSent), 1);
    assert_eq!(c.get(GlobalCounter::Answered), 1);
    assert_eq!(c.get(GlobalCounter::PassTooBig), 1);
}

#[test]
fn a_df_reply_too_big_for_the_client_link_goes_to_the_kernel_unrewritten() {
    // The kernel, the router on this path, then sends the backend its
    // fragmentation-needed, quoting what the backend really sent.
    let mut lab = Lab::new(2);
    lab.ns.set_mtu("in0", 1280);
    let mut r = TcpFrame::new(backend_addr(0), client(51100), TCP_ACK);
    r.src_mac = backend_mac(0);
    r.dst_mac = OUT_MAC;
    r.payload = vec![1; 1241];
    let sent = r.build();
    let (action, out) = lab.arrive_from_backends(&sent);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, sent);
    r.payload.pop();
    let (action, _) = lab.arrive_from_backends(&r.build());
    assert_eq!(action, XDP_REDIRECT, "exactly fitting");
    assert_eq!(lab.counters().get(GlobalCounter::PassTooBig), 1);
}

// ---- ICMP errors ----

fn assert_icmp_checksums_valid(frame: &[u8]) {
    use xdplb::packet::{icmp_checksum, ipv4_checksum};
    let found = |o: usize| u16::from_be_bytes([frame[o], frame[o + 1]]);
    assert_eq!(found(24), ipv4_checksum(&frame[14..34]), "outer IPv4");
    assert_eq!(found(36), icmp_checksum(&frame[34..]), "ICMP");
    assert_eq!(found(52), ipv4_checksum(&frame[42..62]), "quoted IPv4");
}

const ROUTER: [u8; 4] = [198, 18, 0, 254];
const ROUTER_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 1];

/// What a client-side router sends the VIP about a packet the VIP sent
/// `port` (header and 8 bytes quoted, as RFC 792 asks).
fn icmp_to_vip(port: u16, ty: u8, code: u8, rest: [u8; 4]) -> (Vec<u8>, TcpFrame) {
    let mut reply = TcpFrame::new(sa(VIP), client(port), TCP_ACK);
    reply.payload = vec![9; 1400];
    let quoted = reply.build()[14..14 + 28].to_vec();
    let frame = xdplb::packet::icmp_error(
        ROUTER_MAC,
        IN_MAC,
        ROUTER,
        sa(VIP).ip().octets(),
        ty,
        code,
        rest,
        &quoted,
    );
    (frame, reply)
}

/// The ICMP error as the backend must receive it: outer destination and
/// quoted source rewritten to backend `b`, TTL less one.
fn expected_icmp_to_backend(sent: &[u8], reply: &TcpFrame, b: u32) -> Vec<u8> {
    let mut quoted_reply = reply.clone();
    quoted_reply.src = backend_addr(b);
    let quoted = &quoted_reply.build()[14..14 + 28];
    let mut want = xdplb::packet::icmp_error(
        OUT_MAC,
        backend_mac(b as u8),
        ROUTER,
        backend_addr(b).ip().octets(),
        sent[34],
        sent[35],
        [sent[38], sent[39], sent[40], sent[41]],
        quoted,
    );
    want[22] -= 1;
    let c = xdplb::packet::ipv4_checksum(&want[14..34]);
    want[24..26].copy_from_slice(&c.to_be_bytes());
    want
}

#[test]
fn an_icmp_error_about_a_vips_packet_reaches_the_flows_backend() {
    let mut lab = Lab::new(3);
    // An established flow, pinned: the ring is changed after, so only the
    // flow table knows its backend.
    let (_, out) = lab.arrive_from_client(&to_vip(52000, TCP_SYN).build());
    let b = backend_of(&out);
    lab.publish(vec![(b + 1) % 3; RING as usize]);
    for (ty, code, rest) in [
        (3u8, 4u8, [0, 0, 0x05, 0x00]), // fragmentation needed, MTU 1280
        (3, 1, [0; 4]),                 // host unreachable
        (11, 0, [0; 4]),                // time exceeded
    ] {
        let (sent, reply) = icmp_to_vip(52000, ty, code, rest);
        let (action, out) = lab.arrive_from_client(&sent);
        assert_eq!(action, XDP_REDIRECT, "type {ty} code {code}");
        assert_eq!(out, expected_icmp_to_backend(&sent, &reply, b));
        assert_icmp_checksums_valid(&out);
    }
    // A flow the table does not know follows the ring, as its packets would.
    let (sent, reply) = icmp_to_vip(52001, 3, 4, [0, 0, 0x05, 0x00]);
    let (action, out) = lab.arrive_from_client(&sent);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, expected_icmp_to_backend(&sent, &reply, (b + 1) % 3));
    assert_eq!(lab.counters().get(GlobalCounter::IcmpToBackend), 4);
}

#[test]
fn an_icmp_error_about_a_clients_packet_to_a_backend_is_translated_for_the_client() {
    let mut lab = Lab::new(2);
    let mut request = TcpFrame::new(client(52100), backend_addr(1), TCP_ACK);
    request.payload = vec![3; 100];
    let quoted = request.build()[14..14 + 28].to_vec();
    let mut as_client_sent = request.clone();
    as_client_sent.dst = sa(VIP);
    let want_quote = as_client_sent.build()[14..14 + 28].to_vec();
    let backend_ip = backend_addr(1).ip().octets();
    let router = [198, 18, 1, 254];
    let kinds = [
        (3u8, 3u8, [0u8; 4]),       // port unreachable
        (3, 4, [0, 0, 0x05, 0x78]), // fragmentation needed, next-hop MTU 1400
        (11, 0, [0; 4]),            // time exceeded in transit
        (11, 1, [0; 4]),            // fragment reassembly time exceeded
    ];
    // Each from a router on the backends' side (its address is the client's
    // to see: only the quote is translated) and from the backend itself
    // (the client knows no backend address: the VIP must say it).
    for (ty, code, rest) in kinds {
        for (from, want_from) in [(router, router), (backend_ip, sa(VIP).ip().octets())] {
            let what = format!("type {ty} code {code} from {from:?}");
            let sent = xdplb::packet::icmp_error(
                backend_mac(1),
                OUT_MAC,
                from,
                client(0).ip().octets(),
                ty,
                code,
                rest,
                &quoted,
            );
            let (action, out) = lab.arrive_from_backends(&sent);
            assert_eq!(action, XDP_REDIRECT, "{what}");
            let mut want = xdplb::packet::icmp_error(
                IN_MAC,
                CLIENT_MAC,
                want_from,
                client(0).ip().octets(),
                ty,
                code,
                rest,
                &want_quote,
            );
            want[22] -= 1;
            let c = xdplb::packet::ipv4_checksum(&want[14..34]);
            want[24..26].copy_from_slice(&c.to_be_bytes());
            assert_eq!(out, want, "{what}");
            // The next-hop MTU is the backend path's: the client's stack
            // lowers its path MTU to the VIP by it, so it must arrive as sent.
            assert_eq!(out[38..42], rest, "{what}: MTU field");
            assert_icmp_checksums_valid(&out);
        }
    }
    assert_eq!(
        lab.counters().get(GlobalCounter::IcmpToClient),
        2 * kinds.len() as u64
    );
}

#[test]
fn icmp_that_is_not_ours_or_cannot_be_read_is_never_misforwarded() {
    let mut lab = Lab::new(2);
    let (good, _) = icmp_to_vip(52200, 3, 4, [0, 0, 5, 0]);
    let fix = |mut f: Vec<u8>| {
        let tot = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&tot.to_be_bytes());
        let c = xdplb::packet::ipv4_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f
    };
    // Quote cut short (only 10 bytes of the quoted header).
    let cut = fix(good[..42 + 10].to_vec());
    // Quoted header with options (ihl 6).
    let mut opts = good.clone();
    opts[42] = 0x46;
    // Quoted packet is UDP: not a flow of ours, and addressed to a VIP
    // address, which the kernel would route back upstream: dropped.
    let mut udp = good.clone();
    udp[42 + 9] = 17;
    let cases = [
        (
            "quote cut short",
            cut,
            XDP_PASS,
            GlobalCounter::PassIcmpUnparsed,
        ),
        (
            "quote with options",
            opts,
            XDP_PASS,
            GlobalCounter::PassIcmpUnparsed,
        ),
        ("quoted udp", udp, XDP_DROP, GlobalCounter::DropNoPool),
    ];
    for (name, frame, want, counter) in cases {
        let before = lab.counters();
        let (action, out) = lab.arrive_from_client(&frame);
        assert_eq!(action, want, "{name}");
        if want == XDP_PASS {
            assert_eq!(out, frame, "{name}: untouched");
        }
        assert_eq!(
            lab.counters().get(counter),
            before.get(counter) + 1,
            "{name}"
        );
    }
    // About a VIP whose pool is empty: nobody to tell; dropped, counted.
    lab.publish(vec![lb_common::NO_BACKEND; RING as usize]);
    let (action, _) = lab.arrive_from_client(&good);
    assert_eq!(action, XDP_DROP);
    assert_eq!(lab.counters().get(GlobalCounter::IcmpToBackend), 0);
}

// ---- Frames not for this host, redirect targets ----

#[test]
fn frames_for_another_mac_pass_untouched() {
    let mut lab = Lab::new(2);
    for mac in [
        [0x02, 0x99, 0, 0, 0, 9],
        [0xff; 6],
        [0x01, 0x00, 0x5e, 0, 0, 1],
    ] {
        let mut f = to_vip(53000, TCP_SYN);
        f.dst_mac = mac;
        let bytes = f.build();
        let (action, out) = lab.arrive_from_client(&bytes);
        assert_eq!(action, XDP_PASS, "{mac:02x?}");
        assert_eq!(out, bytes);
        // Malformed, for someone else: not ours to judge either.
        let mut bad = bytes.clone();
        bad[14] = 0x44;
        let (action, _) = lab.arrive_from_client(&bad);
        assert_eq!(action, XDP_PASS, "{mac:02x?}");
    }
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::PassNotForUs), 6);
    assert_eq!(c.get(GlobalCounter::Dropped), 0);
}

/// keepalived's VRRP virtual MAC for router 51: the gateway's address
/// clients and backends resolve while it is master.
const VRRP_MAC: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x33];

/// Frames to one of `extra_macs` are this host's on every interface: a
/// client's SYN to the VRRP MAC is balanced, and the backend's answer to
/// that MAC leaves from the VIP. Other MACs still pass.
#[test]
fn frames_to_an_extra_mac_are_ours_both_ways() {
    let mut lab = Lab::new(2);
    lab.dp().sync_extra_macs(&[VRRP_MAC]).unwrap();
    let mut syn = to_vip(53100, TCP_SYN);
    syn.dst_mac = VRRP_MAC;
    let (action, out) = lab.arrive_from_client(&syn.build());
    assert_eq!(action, XDP_REDIRECT);
    let b = lab.ring_choice(client(53100), sa(VIP));
    assert_eq!(out, expected_to_backend(&syn, b));
    let mut synack = TcpFrame::new(backend_addr(b), client(53100), TCP_SYN | TCP_ACK);
    synack.src_mac = backend_mac(b as u8);
    synack.dst_mac = VRRP_MAC;
    let (action, out) = lab.arrive_from_backends(&synack.build());
    assert_eq!(action, XDP_REDIRECT);
    let mut want = synack.clone();
    want.src = sa(VIP);
    want.src_mac = IN_MAC;
    want.dst_mac = CLIENT_MAC;
    want.ttl -= 1;
    assert_eq!(out, want.build());
    let mut other = to_vip(53101, TCP_SYN);
    other.dst_mac = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x34];
    let (action, _) = lab.arrive_from_client(&other.build());
    assert_eq!(action, XDP_PASS);
    assert_eq!(lab.counters().get(GlobalCounter::PassNotForUs), 1);
    // Taken out of the config: someone else's again.
    lab.dp().sync_extra_macs(&[]).unwrap();
    let (action, _) = lab.arrive_from_client(&syn.build());
    assert_eq!(action, XDP_PASS);
}

/// A frame to the VIP as the client sends it, with VLAN `tags` (TPID and
/// TCI each) inserted after the MACs.
fn tagged(tags: &[[u8; 4]]) -> Vec<u8> {
    let mut f = to_vip(53050, TCP_SYN).build();
    let tail = f.split_off(12);
    for t in tags {
        f.extend_from_slice(t);
    }
    f.extend_from_slice(&tail);
    f
}

#[test]
fn vlan_tagged_frames_to_the_vip_pass_untouched() {
    let mut lab = Lab::new(2);
    let cases = [
        ("802.1Q, VLAN 100", tagged(&[[0x81, 0x00, 0x00, 0x64]])),
        (
            "802.1ad over 802.1Q, VLANs 200/100",
            tagged(&[[0x88, 0xa8, 0x00, 0xc8], [0x81, 0x00, 0x00, 0x64]]),
        ),
    ];
    for (name, frame) in &cases {
        let (action, out) = lab.arrive_from_client(frame);
        assert_eq!(action, XDP_PASS, "{name}");
        assert_eq!(&out, frame, "{name}: untouched");
    }
    // Not looked into at all: a plain pass, with no reason, no flow, no
    // VIP traffic (the README's limits say so).
    let c = lab.counters();
    let n = cases.len() as u64;
    for (i, &v) in c.global.iter().enumerate() {
        let want = if i == GlobalCounter::Rx as usize || i == GlobalCounter::Passed as usize {
            n
        } else {
            0
        };
        assert_eq!(v, want, "global counter {i}");
    }
    assert_eq!(c.vips[0].counters.packets, 0);
    assert!(lab.flow(53050).is_none());
}

#[test]
fn a_next_hop_outside_the_redirect_ports_goes_to_the_kernel() {
    let mut lab = Lab::new(2);
    lab.dp().sync_host(&["in0".to_string()]).unwrap();
    let f = to_vip(53100, TCP_SYN);
    let (action, out) = lab.arrive_from_client(&f.build_partial());
    assert_eq!(action, XDP_PASS);
    let mut want = f.clone();
    want.dst = backend_addr(lab.ring_choice(client(53100), sa(VIP)));
    assert_eq!(out, want.build_partial(), "rewritten, still partial");
    assert_eq!(lab.counters().get(GlobalCounter::RedirectFallback), 1);
}

// ---- Flow-table hygiene ----

#[test]
fn a_fin_or_rst_that_misses_the_table_inserts_nothing() {
    let mut lab = Lab::new(3);
    for (port, flags) in [(54000, TCP_RST), (54001, TCP_FIN | TCP_ACK)] {
        let (action, out) = lab.arrive_from_client(&to_vip(port, flags).build());
        assert_eq!(action, XDP_REDIRECT, "still steered");
        assert_eq!(backend_of(&out), lab.ring_choice(client(port), sa(VIP)));
        assert_eq!(lab.flow(port), None, "flags {flags:#x}");
    }
    assert_eq!(lab.counters().get(GlobalCounter::FlowInserts), 0);
}

#[test]
fn a_syn_on_an_established_flow_keeps_its_backend() {
    // A retransmitted or spoofed SYN must not re-steer a live connection.
    let mut lab = Lab::new(3);
    let (_, out) = lab.arrive_from_client(&to_vip(54100, TCP_SYN).build());
    let b = backend_of(&out);
    lab.publish(vec![(b + 1) % 3; RING as usize]);
    let (action, out) = lab.arrive_from_client(&to_vip(54100, TCP_SYN).build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(backend_of(&out), b);
    assert_eq!(
        lab.flow(54100).unwrap().backend & lb_common::BACKEND_SLOT_MASK,
        b
    );
}

#[test]
fn a_closed_flow_lingers_for_stragglers_then_a_syn_starts_afresh() {
    let mut lab = Lab::new(3);
    let port = 54200;
    let (_, out) = lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
    let b = backend_of(&out);
    let other = (b + 1) % 3;
    lab.publish(vec![other; RING as usize]);
    // FIN from the client, then from the backend (the reply path notes it).
    lab.arrive_from_client(&to_vip(port, TCP_FIN | TCP_ACK).build());
    let flow = lab.flow(port).unwrap();
    assert_eq!(
        flow.flags(),
        lb_common::FLOW_F_CLOSING | lb_common::FLOW_F_ACKED
    );
    let mut fin = TcpFrame::new(backend_addr(b), client(port), TCP_FIN | TCP_ACK);
    fin.dst_mac = OUT_MAC;
    let (action, _) = lab.arrive_from_backends(&fin.build());
    assert_eq!(action, XDP_REDIRECT);
    let flow = lab.flow(port).unwrap();
    assert!(lb_common::flow_closed(flow.flags()), "{:#x}", flow.flags());
    // The last ACK still reaches the old backend.
    let (_, out) = lab.arrive_from_client(&to_vip(port, TCP_ACK).build());
    assert_eq!(backend_of(&out), b);
    // A new connection on the same 4-tuple follows the ring.
    let (_, out) = lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
    assert_eq!(backend_of(&out), other);
    assert_eq!(lab.flow(port).unwrap().flags(), 0, "a fresh entry");
}

#[test]
fn a_reset_flow_is_closed_and_its_closing_mark_survives_a_resteer() {
    let mut lab = Lab::new(3);
    let port = 54300;
    let (_, out) = lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
    let b = backend_of(&out);
    // The client half-closes; then its backend goes down and the flow is
    // re-steered: the new entry must still say the client is closing.
    lab.arrive_from_client(&to_vip(port, TCP_FIN | TCP_ACK).build());
    set_backend(lab.dp(), b, BACKEND_DOWN);
    let survivors: Vec<u32> = (0..3).filter(|&i| i != b).collect();
    lab.publish((0..RING).map(|i| survivors[(i % 2) as usize]).collect());
    let (_, out) = lab.arrive_from_client(&to_vip(port, TCP_ACK).build());
    assert_ne!(backend_of(&out), b);
    let flow = lab.flow(port).unwrap();
    assert_eq!(
        flow.flags() & lb_common::FLOW_F_CLOSING,
        lb_common::FLOW_F_CLOSING
    );
    // A RST from the client closes it outright.
    lab.arrive_from_client(&to_vip(port, TCP_RST).build());
    assert!(lb_common::flow_closed(lab.flow(port).unwrap().flags()));
}

/// The insert cap is the host's: each CPU gets its share (the cap divided
/// by the possible CPUs), so N CPUs do not insert N times the cap. Above
/// its share a CPU balances new flows by the ring without recording them.
#[test]
fn above_the_insert_rate_new_flows_are_balanced_but_not_recorded() {
    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    const SHARE: usize = 2;
    let mut lab = Lab::tuned(
        3,
        Tuning {
            max_flow_inserts_per_sec: (SHARE * cpus) as u32,
            ..Default::default()
        },
    );
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut port = 54400u16;
    let mut recorded = Vec::new();
    for cpu in 0..online.min(2) {
        // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread only.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
        let first = port;
        for _ in 0..SHARE + 3 {
            let f = to_vip(port, TCP_SYN);
            let (action, out) = lab.arrive_from_client(&f.build());
            assert_eq!(action, XDP_REDIRECT, "balanced all the same");
            assert_eq!(
                out,
                expected_to_backend(&f, lab.ring_choice(client(port), sa(VIP)))
            );
            port += 1;
        }
        let mine: Vec<u16> = (first..port).filter(|&p| lab.flow(p).is_some()).collect();
        assert_eq!(
            mine,
            (first..first + SHARE as u16).collect::<Vec<_>>(),
            "CPU {cpu} records its share of the host's {} and no more",
            SHARE * cpus
        );
        recorded.extend(mine);
    }
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::FlowInserts), recorded.len() as u64);
    assert_eq!(
        c.get(GlobalCounter::FlowInsertsCapped),
        3 * online.min(2) as u64
    );
    // What is in the table is untouched by the capped ones.
    let pinned = lab.flow(54400).unwrap().backend & lb_common::BACKEND_SLOT_MASK;
    let (_, out) = lab.arrive_from_client(&to_vip(54400, TCP_ACK).build());
    assert_eq!(backend_of(&out), pinned);
    // Over the cap no victim is judged, but the tags are still read: a SYN
    // on a recorded flow keeps its pin when the ring has moved.
    let moved: Vec<u32> = lab.ring.iter().map(|b| (b + 1) % 3).collect();
    lab.publish(moved);
    let (_, out) = lab.arrive_from_client(&to_vip(54400, TCP_SYN).build());
    assert_eq!(backend_of(&out), pinned, "a SYN over the cap keeps its pin");
}

/// An entry's last-seen time follows its flow's packets to its ~1 ms unit
/// (it decides evictions: a live flow must not look older than an entry
/// made after its last packet), written only when the unit changed.
#[test]
fn last_seen_follows_every_packet_to_the_millisecond() {
    use common::coarse_now_ns;
    use lb_common::flow_seen;
    let mut lab = Lab::new(2);
    lab.arrive_from_client(&to_vip(54500, TCP_SYN).build());
    lab.arrive_from_client(&to_vip(54500, TCP_ACK).build());
    let mut last = lab.flow(54500).unwrap().seen;
    for _ in 0..5 {
        // Until the coarse clock enters a later unit (a jiffy at most),
        // bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while flow_seen(coarse_now_ns()) == last && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        let before = flow_seen(coarse_now_ns());
        assert!(before > last, "the coarse clock did not move in a second");
        lab.arrive_from_client(&to_vip(54500, TCP_ACK).build());
        let seen = lab.flow(54500).unwrap().seen;
        assert!(
            (before..=flow_seen(coarse_now_ns())).contains(&seen),
            "seen {seen}, the packet came in {before}"
        );
        last = seen;
    }
}

/// The flow table is set-associative: a new flow whose two buckets are
/// full takes the way of the flow seen longest ago, and no other. The
/// evicted flow's next packet is steered by the ring (its backend
/// unchanged while the ring is) and recorded again.
#[test]
fn a_full_bucket_pair_gives_up_its_least_recently_seen_flow() {
    const WAYS: usize = 2 * lb_common::FLOW_WAYS;
    // Two buckets: every flow whose pair is (0, 1) or (1, 0) may take any
    // of the same 16 ways.
    let mut lab = Lab::with_table(3, VIP_F_REJECT_EMPTY, Tuning::default(), WAYS as u32);
    let table = xdplb::dataplane::FlowTable::open(&lab.tp.pin_path).unwrap();
    assert_eq!(table.buckets(), 2);
    let split = |port: u16| {
        let (a, b) = lb_common::flow_bucket_pair(
            table.tag(&flow_key(client(port), sa(VIP))),
            table.buckets(),
        );
        a != b
    };
    let ports: Vec<u16> = (40000..u16::MAX)
        .filter(|&p| split(p))
        .take(WAYS + 1)
        .collect();
    assert_eq!(ports.len(), WAYS + 1);
    let newcomer = ports[WAYS];
    for &p in &ports[..WAYS] {
        lab.arrive_from_client(&to_vip(p, TCP_SYN).build());
    }
    assert!(ports[..WAYS].iter().all(|&p| lab.flow(p).is_some()));
    // The entry's clock ticks in ~1 ms units: let them age, then refresh
    // all but one in the middle (an ACK changes the flags, which rewrites
    // the time), so the oldest is neither the first nor the last way.
    std::thread::sleep(std::time::Duration::from_millis(30));
    let oldest = ports[11];
    let rest: Vec<u16> = ports[..WAYS]
        .iter()
        .copied()
        .filter(|&p| p != oldest)
        .collect();
    for &p in &rest {
        lab.arrive_from_client(&to_vip(p, TCP_ACK).build());
    }
    // One of them stamped by another CPU whose coarse clock ticked before
    // this one's (its `seen` a few units ahead of the clock this CPU
    // reads): the freshest of all, not (its age wrapped) the oldest.
    let ahead = lab.flow(rest[3]).unwrap();
    let stamp = lb_common::flow_seen(common::coarse_now_ns()) + 3;
    assert!(table.put(lb_common::FlowSlot {
        seen: stamp,
        ..ahead
    }));
    assert_eq!(lab.flow(rest[3]).unwrap().seen, stamp);
    let inserts = lab.counters().get(GlobalCounter::FlowInserts);
    lab.arrive_from_client(&to_vip(newcomer, TCP_SYN).build());
    assert_eq!(lab.counters().get(GlobalCounter::FlowInserts), inserts + 1);
    assert!(lab.flow(newcomer).is_some());
    assert!(lab.flow(oldest).is_none(), "the oldest flow gave its way");
    for &p in &rest {
        assert!(lab.flow(p).is_some(), "port {p} was evicted instead");
    }
    // The evicted flow goes on: the ring picks its backend again and the
    // table records it over the now oldest way.
    let misses = lab.counters().get(GlobalCounter::FlowMisses);
    let (action, out) = lab.arrive_from_client(&to_vip(oldest, TCP_ACK).build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(backend_of(&out), lab.ring_choice(client(oldest), sa(VIP)));
    assert_eq!(lab.counters().get(GlobalCounter::FlowMisses), misses + 1);
    assert!(lab.flow(oldest).is_some());
}

/// A way another CPU has claimed for an insert (its tag word
/// `FLOW_CLAIMED` while it writes backend and seen) is nobody's yet: no
/// packet reads its backend, no new flow takes it, user space neither
/// lists nor writes it. With every way of a flow's buckets claimed, the
/// flow is balanced by the ring and recorded nowhere (`flow_raced`).
#[test]
fn a_claimed_way_is_neither_read_nor_taken() {
    const WAYS: usize = 2 * lb_common::FLOW_WAYS;
    let mut lab = Lab::with_table(3, VIP_F_REJECT_EMPTY, Tuning::default(), WAYS as u32);
    let table = xdplb::dataplane::FlowTable::open(&lab.tp.pin_path).unwrap();
    let tag = |port: u16| table.tag(&flow_key(client(port), sa(VIP)));
    // A flow, then its slot claimed by another CPU's insert under way,
    // over a backend reference that names no backend of this VIP.
    let port = 41000;
    lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
    let index = table.find(tag(port)).expect("the SYN was recorded");
    table.write_tag_word(index, lb_common::FLOW_CLAIMED);
    assert!(table.occupied().all(|(i, _)| i != index));
    // Its next packet does not find it (the claim matches no flow): the
    // ring steers it, and it is recorded in another way.
    let (action, out) = lab.arrive_from_client(&to_vip(port, TCP_ACK).build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(backend_of(&out), lab.ring_choice(client(port), sa(VIP)));
    assert_eq!(table.slot(index).tag, lb_common::FLOW_CLAIMED);
    let elsewhere = table.find(tag(port)).expect("recorded again");
    assert_ne!(elsewhere, index);

    // Every way claimed: a SYN is balanced, nothing is written. (Every
    // way of the table: a flow's two buckets may be one, the table's
    // keyed hash is random per data plane.)
    for way in 0..WAYS {
        table.write_tag_word(way, lb_common::FLOW_CLAIMED);
    }
    assert_eq!(table.occupied().count(), 0);
    let before = lab.counters();
    let newcomer = 41001;
    let (action, out) = lab.arrive_from_client(&to_vip(newcomer, TCP_SYN).build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(backend_of(&out), lab.ring_choice(client(newcomer), sa(VIP)));
    let after = lab.counters();
    assert_eq!(
        after.get(GlobalCounter::FlowInserts),
        before.get(GlobalCounter::FlowInserts)
    );
    assert_eq!(
        after.get(GlobalCounter::FlowRaced),
        before.get(GlobalCounter::FlowRaced) + 1
    );
    for way in table.ways(tag(newcomer)) {
        assert_eq!(table.slot(way).tag, lb_common::FLOW_CLAIMED, "way {way}");
    }
    assert!(table.find(tag(newcomer)).is_none());
}

/// A connection through the gateway: the client's SYN, the backend's
/// SYN-ACK (through the reply path, which notes it) and the client's ACK.
fn establish(lab: &mut Lab, port: u16) -> u32 {
    let (_, out) = lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
    let b = backend_of(&out);
    let mut synack = TcpFrame::new(backend_addr(b), client(port), TCP_SYN | TCP_ACK);
    synack.src_mac = backend_mac(b as u8);
    synack.dst_mac = OUT_MAC;
    let (action, _) = lab.arrive_from_backends(&synack.build());
    assert_eq!(action, XDP_REDIRECT);
    lab.arrive_from_client(&to_vip(port, TCP_ACK).build());
    b
}

/// Eviction prefers what never saw both directions (conntrack's early
/// drop): in a full bucket pair of established connections and one flood
/// entry (a SYN never answered... an ACK never preceded by a SYN-ACK), the
/// flood entry goes, however recently it came; an established connection
/// gives its way only once every candidate is established, and then the
/// least recently seen.
#[test]
fn an_established_flow_is_evicted_only_when_every_candidate_is() {
    const WAYS: usize = 2 * lb_common::FLOW_WAYS;
    let mut lab = Lab::with_table(3, VIP_F_REJECT_EMPTY, Tuning::default(), WAYS as u32);
    let table = xdplb::dataplane::FlowTable::open(&lab.tp.pin_path).unwrap();
    let split = |port: u16| {
        let (a, b) = lb_common::flow_bucket_pair(
            table.tag(&flow_key(client(port), sa(VIP))),
            table.buckets(),
        );
        a != b
    };
    let ports: Vec<u16> = (40000..u16::MAX)
        .filter(|&p| split(p))
        .take(WAYS + 2)
        .collect();
    let flood = ports[5];
    for &p in &ports[..WAYS] {
        if p != flood {
            establish(&mut lab, p);
        }
    }
    // The flood's entry: an ACK for a tuple never seen, newer than all.
    std::thread::sleep(std::time::Duration::from_millis(5));
    lab.arrive_from_client(&to_vip(flood, TCP_ACK).build());
    assert!(lab.flow(flood).is_some());
    lab.arrive_from_client(&to_vip(ports[WAYS], TCP_SYN).build());
    assert!(lab.flow(ports[WAYS]).is_some());
    assert!(
        lab.flow(flood).is_none(),
        "the unestablished entry gave its way"
    );
    for &p in ports[..WAYS].iter().filter(|&&p| p != flood) {
        assert!(lab.flow(p).is_some(), "established port {p} was evicted");
    }
    // Every candidate established now: the least recently seen goes.
    establish(&mut lab, ports[WAYS]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let oldest = ports[9];
    for &p in ports[..=WAYS]
        .iter()
        .filter(|&&p| p != flood && p != oldest)
    {
        lab.arrive_from_client(&to_vip(p, TCP_ACK | TCP_PSH).build());
    }
    lab.arrive_from_client(&to_vip(ports[WAYS + 1], TCP_SYN).build());
    assert!(lab.flow(ports[WAYS + 1]).is_some());
    assert!(lab.flow(oldest).is_none(), "the least recently seen went");
}

/// Each flow has two buckets and a new one goes to the emptier: a table
/// filled to 63% keeps every flow. (With one bucket per flow, 8-way
/// buckets overflow long before: at this load ~68 of the 2,600 flows
/// would be evicted; putting a flow in its first bucket unless full still
/// loses ~6 — simulated over 1,000 seeds, where the emptier-bucket rule
/// lost none.)
#[test]
fn two_choices_keep_every_flow_of_a_table_filled_to_63_percent() {
    const FLOWS: u16 = 2600;
    let mut lab = Lab::new(3);
    let table = xdplb::dataplane::FlowTable::open(&lab.tp.pin_path).unwrap();
    assert_eq!(table.capacity(), 4096);
    let inserts = lab.counters().get(GlobalCounter::FlowInserts);
    for port in 20000..20000 + FLOWS {
        let (action, _) = lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
        assert_eq!(action, XDP_REDIRECT);
    }
    assert_eq!(
        lab.counters().get(GlobalCounter::FlowInserts),
        inserts + u64::from(FLOWS)
    );
    let missing: Vec<u16> = (20000..20000 + FLOWS)
        .filter(|&p| lab.flow(p).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "{} flows evicted: {missing:?}",
        missing.len()
    );
    assert_eq!(table.occupied().count(), usize::from(FLOWS));
}

#[test]
fn the_controllers_flow_walk_reaps_closed_flows_after_their_linger() {
    let mut lab = Lab::new(2);
    lab.arrive_from_client(&to_vip(54600, TCP_SYN).build());
    lab.arrive_from_client(&to_vip(54600, TCP_ACK).build());
    lab.arrive_from_client(&to_vip(54601, TCP_SYN).build());
    lab.arrive_from_client(&to_vip(54601, TCP_RST).build());
    let walk = |lab: &Lab| {
        xdplb::dataplane::flow_counts(&lab.tp.pin_path, 10_000, std::time::Duration::from_secs(30))
            .unwrap()
    };
    assert_eq!(walk(&lab).values().sum::<u64>(), 1);
    assert!(lab.flow(54601).is_some(), "lingers");
    let linger = std::time::Duration::from_nanos(lb_common::limits::FLOW_LINGER_NS);
    std::thread::sleep(linger + std::time::Duration::from_millis(300));
    assert_eq!(walk(&lab).values().sum::<u64>(), 1);
    assert!(lab.flow(54601).is_none(), "reaped");
    assert!(lab.flow(54600).is_some(), "the live flow stays");
}

// ---- Direct server return: dsr (L2) and tunnel (IPIP) ----

const TUNNEL_SOURCE: [u8; 4] = [198, 18, 1, 1];

fn dsr_lab(n: u32) -> Lab {
    Lab::with(
        n,
        VIP_F_REJECT_EMPTY | lb_common::VIP_F_DSR,
        Tuning::default(),
    )
}

fn tunnel_lab(n: u32) -> Lab {
    tunnel_lab_from(n, Ipv4Addr::from(TUNNEL_SOURCE).into())
}

/// A tunnel pool whose outer sources are `source` (an address or prefix).
fn tunnel_lab_from(n: u32, source: ipnet::Ipv4Net) -> Lab {
    Lab::with(
        n,
        VIP_F_REJECT_EMPTY | lb_common::VIP_F_TUNNEL,
        Tuning {
            tunnel_source_v4: Some(source),
            ..Default::default()
        },
    )
}

/// `sent`'s IP packet in an outer IPv4 header to backend `b`, rebuilt
/// independently (RFC 2003: TOS copied, DF copied, TTL 64, id 0).
fn expected_ipip(sent: &[u8], b: u32) -> Vec<u8> {
    expected_ipip_from(sent, b, TUNNEL_SOURCE, 0)
}

/// [`expected_ipip`] from outer source `source` with outer ID `id`.
fn expected_ipip_from(sent: &[u8], b: u32, source: [u8; 4], id: u16) -> Vec<u8> {
    let inner = &sent[14..];
    let mut f = Vec::new();
    f.extend_from_slice(&backend_mac(b as u8));
    f.extend_from_slice(&OUT_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.push(0x45);
    f.push(inner[1]);
    f.extend_from_slice(&((inner.len() + 20) as u16).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&(u16::from_be_bytes([inner[6], inner[7]]) & 0x4000).to_be_bytes());
    f.extend_from_slice(&[64, 4, 0, 0]);
    f.extend_from_slice(&source);
    f.extend_from_slice(&backend_addr(b).ip().octets());
    let c = xdplb::packet::ipv4_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(inner);
    f
}

#[test]
fn dsr_rewrites_only_the_macs_and_completes_partial_checksums() {
    let mut lab = dsr_lab(3);
    for port in [55000u16, 55001, 55002] {
        let mut f = to_vip(port, TCP_SYN);
        f.payload = vec![0x42; 77];
        let sent = f.build();
        let want = lab.ring_choice(client(port), sa(VIP));
        let (action, out) = lab.arrive_from_client(&sent);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(out, expected_dsr(&sent, want), "port {port}");
    }
    // Established packets follow the flow; a partial checksum is completed
    // (the frame leaves the kernel's offload state behind).
    let mut f = to_vip(55000, TCP_ACK | TCP_PSH);
    f.payload = vec![7; 1001];
    let (action, out) = lab.arrive_from_client(&f.build_partial());
    assert_eq!(action, XDP_REDIRECT);
    let want = lab.ring_choice(client(55000), sa(VIP));
    assert_eq!(out, expected_dsr(&f.build(), want));
    assert_checksums_valid(&out);
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::DsrSent), 4);
    assert_eq!(c.get(GlobalCounter::PartialChecksum), 1);
}

#[test]
fn dsr_mtu_edge_exactly_fitting_and_one_byte_over() {
    let mut lab = dsr_lab(2);
    lab.ns.set_mtu("out0", 1280);
    let fits = sized_to_vip(55100, 1280).build();
    let (action, out) = lab.arrive_from_client(&fits);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        out,
        expected_dsr(&fits, lab.ring_choice(client(55100), sa(VIP)))
    );
    let over = sized_to_vip(55101, 1281).build();
    let (action, out) = lab.arrive_from_client(&over);
    assert_eq!(action, XDP_REDIRECT, "answered through TX_PORTS");
    assert_eq!(out[14 + 9], 1, "ICMP");
    assert_eq!((out[34], out[35]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([out[40], out[41]]), 1280);
    assert_icmp_checksums_valid(&out);
    let mut nodf = sized_to_vip(55102, 1281);
    nodf.df = false;
    let (action, _) = lab.arrive_from_client(&nodf.build());
    assert_eq!(action, XDP_DROP, "L2 cannot fragment");
    assert_eq!(lab.counters().get(GlobalCounter::DropDirectUnreachable), 1);
}

#[test]
fn tunnel_encapsulates_to_the_backend_from_the_tunnel_source() {
    let mut lab = tunnel_lab(3);
    for (port, tos) in [(55200u16, 0u8), (55201, 0xb8), (55202, 0x02)] {
        let mut f = to_vip(port, TCP_SYN);
        f.payload = vec![0x33; 41];
        let mut sent = f.build();
        // DSCP/ECN bits travel to the outer header.
        sent[15] = tos;
        let c = xdplb::packet::ipv4_checksum(&sent[14..34]);
        sent[24..26].copy_from_slice(&c.to_be_bytes());
        let want = lab.ring_choice(client(port), sa(VIP));
        let (action, out) = lab.arrive_from_client(&sent);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(out, expected_ipip(&sent, want), "port {port} tos {tos:#x}");
        assert_eq!(
            xdplb::packet::ipv4_checksum(&out[14..34]),
            u16::from_be_bytes([out[24], out[25]]),
            "outer IPv4 checksum"
        );
    }
    // A partial checksum is completed before it is wrapped.
    let mut f = to_vip(55200, TCP_ACK | TCP_PSH);
    f.payload = vec![9; 513];
    let (action, out) = lab.arrive_from_client(&f.build_partial());
    assert_eq!(action, XDP_REDIRECT);
    let want = lab.ring_choice(client(55200), sa(VIP));
    assert_eq!(out, expected_ipip(&f.build(), want));
    assert_eq!(lab.counters().get(GlobalCounter::TunnelSent), 4);
}

#[test]
fn tunnel_mtu_edge_counts_the_outer_header() {
    let mut lab = tunnel_lab(2);
    lab.ns.set_mtu("out0", 1280);
    // 1260 + 20 = 1280: fits exactly.
    let fits = sized_to_vip(55300, 1260).build();
    let (action, out) = lab.arrive_from_client(&fits);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        out,
        expected_ipip(&fits, lab.ring_choice(client(55300), sa(VIP)))
    );
    // One byte over: frag-needed from the VIP, quoting the MTU less the
    // outer header, before any rewrite.
    let over = sized_to_vip(55301, 1261).build();
    let (action, out) = lab.arrive_from_client(&over);
    assert_eq!(action, XDP_REDIRECT, "answered through TX_PORTS");
    assert_frag_needed(&out, &over, 1260);
    // Without DF the same answer: nothing could deliver the outer packet
    // whole (the kernel drops it as martian, decap drops outer fragments).
    let mut nodf = sized_to_vip(55302, 1261);
    nodf.df = false;
    let sent = nodf.build();
    let (action, out) = lab.arrive_from_client(&sent);
    assert_eq!(action, XDP_REDIRECT, "answered through TX_PORTS");
    assert_frag_needed(&out, &sent, 1260);
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::FragNeededSent), 2);
    assert_eq!(c.get(GlobalCounter::TunnelSent), 1);
    assert_eq!(c.get(GlobalCounter::Passed), 0);
}

/// A `tunnel_source` prefix for the spread tests: 32 outer sources, away
/// from the lab's interface subnets. (A /27 at least: with the common RSS
/// key a /28's sources reach only 2 of 4 queues, see `tunnel_spread.rs`.)
const SPREAD_PREFIX: &str = "198.18.3.0/27";

/// The outer source of a tunnelled flow from `client(port)` to the VIP
/// within [`SPREAD_PREFIX`].
fn spread_source(port: u16) -> [u8; 4] {
    let host = lb_common::tunnel_host_part(flow_hash(&flow_key(client(port), sa(VIP))), 5);
    [198, 18, 3, host as u8]
}

#[test]
fn tunnel_flows_take_their_outer_source_from_the_prefix_and_keep_it() {
    let mut lab = tunnel_lab_from(2, SPREAD_PREFIX.parse().unwrap());
    let mut sources = std::collections::BTreeSet::new();
    for port in 56000u16..56064 {
        let sent = to_vip(port, TCP_SYN).build();
        let b = lab.ring_choice(client(port), sa(VIP));
        let source = spread_source(port);
        let (action, out) = lab.arrive_from_client(&sent);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(out, expected_ipip_from(&sent, b, source, 0), "port {port}");
        assert_eq!(&out[26..29], &[198, 18, 3], "in the prefix");
        assert!(out[29] < 32, "in the prefix: {:?}", &out[26..30]);
        // The flow's next packet leaves from the same source.
        let mut next = to_vip(port, TCP_ACK | TCP_PSH);
        next.payload = vec![1; 10];
        let (_, out) = lab.arrive_from_client(&next.build());
        assert_eq!(out[26..30], source, "port {port}: one source per flow");
        sources.insert(source);
    }
    // 64 flows over 32 addresses: about 28 distinct expected.
    assert!(
        sources.len() >= 20,
        "flows share too few sources: {sources:?}"
    );
    assert_eq!(lab.counters().get(GlobalCounter::TunnelSent), 128);
}

/// Pins the calling thread to CPU 0 (the outer IDs count per CPU).
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

#[test]
fn outer_ipv4_id_varies_without_df_and_df_is_copied() {
    pin_to_cpu0();
    let mut lab = tunnel_lab(2);
    let b = lab.ring_choice(client(56100), sa(VIP));
    let mut ids = Vec::new();
    for i in 0..4u8 {
        let mut f = to_vip(56100, TCP_ACK | TCP_PSH);
        f.df = false;
        f.payload = vec![i; 100];
        let sent = f.build();
        let (action, out) = lab.arrive_from_client(&sent);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(out[20] & 0x40, 0, "DF clear, as inside");
        let id = u16::from_be_bytes([out[18], out[19]]);
        // Everything else as rebuilt independently, the checksum over
        // the ID the program chose.
        assert_eq!(out, expected_ipip_from(&sent, b, TUNNEL_SOURCE, id));
        ids.push(id);
    }
    // RFC 6864: fragmentable datagrams of one source, destination and
    // protocol need distinct IDs.
    for w in ids.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1), "one CPU counts up: {ids:?}");
    }
    // With DF the outer packet is atomic: DF set, ID 0 (RFC 6864 §4.1).
    let mut f = to_vip(56100, TCP_ACK | TCP_PSH);
    f.payload = vec![9; 100];
    let sent = f.build();
    let (_, out) = lab.arrive_from_client(&sent);
    assert_eq!(out[20] & 0x40, 0x40, "DF copied");
    assert_eq!(out, expected_ipip_from(&sent, b, TUNNEL_SOURCE, 0));
}

const BACKEND_ROUTER: [u8; 4] = [198, 18, 1, 254];
const BACKEND_ROUTER_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 2];

/// A router's fragmentation-needed quoting `quote` bytes of `outer` (an
/// outer packet the gateway sent), next-hop MTU `mtu`, to `to`.
fn frag_needed_about(outer: &[u8], quote: usize, mtu: u16, to: [u8; 4]) -> Vec<u8> {
    xdplb::packet::icmp_error(
        BACKEND_ROUTER_MAC,
        OUT_MAC,
        BACKEND_ROUTER,
        to,
        3,
        4,
        [0, 0, (mtu >> 8) as u8, mtu as u8],
        &outer[14..14 + quote],
    )
}

#[test]
fn a_routers_frag_needed_about_an_outer_packet_reaches_the_client_translated() {
    let mut lab = tunnel_lab_from(2, SPREAD_PREFIX.parse().unwrap());
    let mut f = to_vip(56200, TCP_ACK | TCP_PSH);
    f.payload = vec![0x61; 1360];
    let sent = f.build();
    let (_, outer) = lab.arrive_from_client(&sent);
    let source = spread_source(56200);
    assert_eq!(outer[26..30], source);
    // Linux routers quote up to 576 bytes; RFC 792 asks for 8 after the
    // header, too little to find the client: the outer header, the
    // client's header and its ports (48) is the least translated.
    for (quote, mtu, quoted) in [
        (548usize, 1400u16, 1380u16),
        (48, 1400, 1380),
        // The outer MTU less 20 below the floor: 576 (RFC 5927 §7.2).
        (548, 500, 576),
        // A router older than RFC 1191 says 0: the floor.
        (548, 0, 576),
    ] {
        let icmp = frag_needed_about(&outer, quote, mtu, source);
        let (action, out) = lab.arrive_from_backends(&icmp);
        assert_eq!(action, XDP_REDIRECT, "quote {quote} mtu {mtu}");
        // From the VIP to the client, quoting the client's own packet as
        // it sent it, with the router's MTU less the outer header.
        assert_frag_needed(&out, &sent, quoted);
    }
    assert_eq!(lab.counters().get(GlobalCounter::TunnelTooBig), 4);
    // Not translated: a quote without the client's ports, a message to an
    // address outside the prefix, one about a packet to no VIP.
    let short = frag_needed_about(&outer, 28, 1400, source);
    assert_eq!(lab.arrive_from_backends(&short).0, XDP_PASS);
    let mut elsewhere = outer.clone();
    elsewhere[26..30].copy_from_slice(&TUNNEL_SOURCE);
    let icmp = frag_needed_about(&elsewhere, 548, 1400, TUNNEL_SOURCE);
    assert_eq!(lab.arrive_from_backends(&icmp).0, XDP_PASS);
    let mut other = outer.clone();
    other[14 + 20 + 16..14 + 20 + 20].copy_from_slice(&[198, 18, 2, 99]);
    let icmp = frag_needed_about(&other, 548, 1400, source);
    assert_eq!(lab.arrive_from_backends(&icmp).0, XDP_PASS);
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::TunnelTooBig), 4);
    assert_eq!(c.get(GlobalCounter::PassIcmpUnparsed), 1);
}

#[test]
fn translated_frag_needed_is_rate_limited_as_every_answer() {
    let mut lab = Lab::with(
        2,
        VIP_F_REJECT_EMPTY | lb_common::VIP_F_TUNNEL,
        Tuning {
            tunnel_source_v4: Some(SPREAD_PREFIX.parse().unwrap()),
            answers_per_sec: 0,
            ..Default::default()
        },
    );
    let mut f = to_vip(56300, TCP_ACK | TCP_PSH);
    f.payload = vec![0x61; 1360];
    let (_, outer) = lab.arrive_from_client(&f.build());
    let icmp = frag_needed_about(&outer, 548, 1400, spread_source(56300));
    assert_eq!(lab.arrive_from_backends(&icmp).0, XDP_DROP);
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::DropAnswerLimited), 1);
    assert_eq!(c.get(GlobalCounter::TunnelTooBig), 0);
}

/// Every new flow of `lab`'s VIP to a backend at an address with no
/// neighbour entry (the FIB answers NO_NEIGH), in slot `slot`.
fn send_all_to_unresolved(lab: &mut Lab, slot: u32) {
    lab.dp()
        .write_backend(&BackendSlot {
            slot,
            vip_index: 0,
            addr: sa("198.18.1.99:8080").into(),
            state: BACKEND_ACTIVE,
            flags: 0,
        })
        .unwrap();
    lab.publish(vec![slot; RING as usize]);
}

#[test]
fn direct_modes_drop_and_count_what_they_cannot_send_themselves() {
    // The kernel cannot finish these sends (a dsr frame is addressed to
    // the VIP; an outer packet comes from our own address, a martian):
    // they are dropped, counted, never passed.
    // One lab at a time: each enters its own namespace.
    for (mode, make) in [("dsr", dsr_lab as fn(u32) -> Lab), ("tunnel", tunnel_lab)] {
        let mut lab = make(2);
        send_all_to_unresolved(&mut lab, 2);
        let (action, _) = lab.arrive_from_client(&to_vip(55500, TCP_SYN).build());
        assert_eq!(action, XDP_DROP, "{mode}: unresolved neighbour");
        // An egress outside the redirect ports.
        lab.publish((0..RING).map(|i| i % 2).collect());
        lab.dp().sync_host(&["in0".to_string()]).unwrap();
        let (action, _) = lab.arrive_from_client(&to_vip(55501, TCP_SYN).build());
        assert_eq!(action, XDP_DROP, "{mode}: egress not ours");
        let c = lab.counters();
        assert_eq!(c.get(GlobalCounter::DropDirectUnreachable), 2, "{mode}");
        assert_eq!(c.get(GlobalCounter::Dropped), 2, "{mode}");
        assert_eq!(c.get(GlobalCounter::Passed), 0, "{mode}");
        assert_eq!(c.get(GlobalCounter::DsrSent), 0, "{mode}");
        assert_eq!(c.get(GlobalCounter::TunnelSent), 0, "{mode}");
    }
}

#[test]
fn an_icmp_error_for_a_direct_return_flow_reaches_its_backend_as_sent() {
    // The backend's socket is bound to the VIP: translating the quote
    // would hide it from the very connection it is about.
    let mut lab = dsr_lab(3);
    let (_, out) = lab.arrive_from_client(&to_vip(55400, TCP_SYN).build());
    let b = u32::from(out[5]) - 0x10;
    let (sent, _) = icmp_to_vip(55400, 3, 4, [0, 0, 5, 0]);
    let (action, out) = lab.arrive_from_client(&sent);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, expected_dsr(&sent, b));
    let mut lab = tunnel_lab(3);
    let (_, out) = lab.arrive_from_client(&to_vip(55401, TCP_SYN).build());
    let b = u32::from(out[5]) - 0x10;
    let (sent, _) = icmp_to_vip(55401, 11, 0, [0; 4]);
    let (action, out) = lab.arrive_from_client(&sent);
    assert_eq!(action, XDP_REDIRECT);
    // The error has no DF, so neither has its outer packet, whose ID is
    // the program's count (see `outer_ipv4_id_varies_without_df_...`).
    let id = u16::from_be_bytes([out[18], out[19]]);
    assert_eq!(out, expected_ipip_from(&sent, b, TUNNEL_SOURCE, id));
}

// ---- xdplb decap (the backend side of a tunnel pool) ----

/// What a gateway sends this backend for `inner` (an Ethernet frame whose
/// IP packet is wrapped), outer destination `dst`.
fn wrapped(inner: &[u8], dst: [u8; 4]) -> Vec<u8> {
    wrapped_from(inner, DECAP_GATEWAY.parse().unwrap(), dst, 0)
}

/// `inner` wrapped in IPIP from `src` to `dst`, outer TOS `tos`.
fn wrapped_from(inner: &[u8], src: Ipv4Addr, dst: [u8; 4], tos: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&OUT_MAC);
    f.extend_from_slice(&[0x02, 0x9a, 0, 0, 0, 9]);
    f.extend_from_slice(&[0x08, 0x00, 0x45, tos]);
    f.extend_from_slice(&((inner.len() - 14 + 20) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 4, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst);
    let c = xdplb::packet::ipv4_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&inner[14..]);
    f
}

/// `frame` (Ethernet + IPv4) with TOS `tos` and its IPv4 checksum
/// recomputed from scratch.
fn with_tos(frame: &[u8], tos: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[15] = tos;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = xdplb::packet::ipv4_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// What decap must hand the kernel for `inner`: the inner packet behind the
/// outer frame's Ethernet header.
fn opened(inner: &[u8]) -> Vec<u8> {
    let mut want = inner.to_vec();
    want[0..6].copy_from_slice(&OUT_MAC);
    want[6..12].copy_from_slice(&[0x02, 0x9a, 0, 0, 0, 9]);
    want
}

#[test]
fn decap_opens_tunnels_to_this_host_and_passes_the_inner_packet() {
    let lab = DecapLab::new();
    let mut inner = to_vip(56000, TCP_SYN);
    inner.payload = b"hello".to_vec();
    let inner = inner.build();
    let (action, out) = lab.run(&wrapped(&inner, [198, 18, 1, 1]));
    assert_eq!(action, XDP_PASS);
    let mut want = inner.clone();
    want[0..6].copy_from_slice(&OUT_MAC);
    want[6..12].copy_from_slice(&[0x02, 0x9a, 0, 0, 0, 9]);
    assert_eq!(
        out, want,
        "the inner packet, behind the same Ethernet header"
    );
    assert_checksums_valid(&out);
    assert_eq!(lab.counters()["decapsulated"], 1);
}

#[test]
fn decap_leaves_everything_else_untouched_and_counts_malformed_tunnels() {
    let lab = DecapLab::new();
    let inner = to_vip(56100, TCP_SYN).build();
    // Not IPIP; IPIP to another host.
    for frame in [inner.clone(), wrapped(&inner, [198, 18, 1, 77])] {
        let (action, out) = lab.run(&frame);
        assert_eq!(action, XDP_PASS);
        assert_eq!(out, frame);
    }
    // To us, but the inside is no IPv4 header; and an outer length that
    // runs past the frame.
    let mut not_v4 = wrapped(&inner, [198, 18, 1, 1]);
    not_v4[34] = 0x65;
    let mut long = wrapped(&inner, [198, 18, 1, 1]);
    long[16..18].copy_from_slice(&2000u16.to_be_bytes());
    for frame in [not_v4, long] {
        let (action, _) = lab.run(&frame);
        assert_eq!(action, XDP_DROP);
    }
    let c = lab.counters();
    assert_eq!(c["passed"], 2);
    assert_eq!(c["dropped_malformed"], 2);
    assert_eq!(c["decapsulated"], 0);
}

#[test]
fn decap_drops_tunnels_from_sources_outside_allow() {
    // The issue's case: an ordinary host on the backend's segment wraps a
    // SYN from a spoofed client. Only the gateway (198.18.1.99/32) may.
    let lab = DecapLab::new();
    let inner = to_vip(56200, TCP_SYN).build();
    let spoofer = wrapped_from(&inner, Ipv4Addr::new(198, 18, 1, 98), [198, 18, 1, 1], 0);
    let (action, _) = lab.run(&spoofer);
    assert_eq!(action, XDP_DROP, "a tunnel from a host outside --allow");
    let (action, out) = lab.run(&wrapped(&inner, [198, 18, 1, 1]));
    assert_eq!(action, XDP_PASS, "the gateway's tunnel");
    assert_eq!(out, opened(&inner));
    let c = lab.counters();
    assert_eq!(c["dropped_source"], 1);
    assert_eq!(c["decapsulated"], 1);

    // A prefix admits every source in it and nothing outside; the
    // "any" prefix (--allow-any) admits all.
    let lab = DecapLab::allowing(&["198.18.1.96/30"]);
    for (src, opens) in [([198, 18, 1, 98], true), ([198, 18, 1, 100], false)] {
        let frame = wrapped_from(&inner, Ipv4Addr::from(src), [198, 18, 1, 1], 0);
        let (action, out) = lab.run(&frame);
        if opens {
            assert_eq!((action, out), (XDP_PASS, opened(&inner)), "{src:?}");
        } else {
            assert_eq!(action, XDP_DROP, "{src:?}");
        }
    }
    assert_eq!(lab.counters()["dropped_source"], 1);
    let lab = DecapLab::allowing(&["0.0.0.0/0", "::/0"]);
    let frame = wrapped_from(&inner, Ipv4Addr::new(203, 0, 113, 5), [198, 18, 1, 1], 0);
    assert_eq!(lab.run(&frame), (XDP_PASS, opened(&inner)));
    assert_eq!(lab.counters()["dropped_source"], 0);
}

#[test]
fn decap_drops_tunnels_whose_inner_destination_is_not_this_host() {
    let lab = DecapLab::new();
    let mut elsewhere = to_vip(56300, TCP_SYN);
    elsewhere.dst = sa("198.18.2.11:80");
    let elsewhere = elsewhere.build();
    let (action, _) = lab.run(&wrapped(&elsewhere, [198, 18, 1, 1]));
    assert_eq!(action, XDP_DROP, "the inside is addressed to another host");
    let c = lab.counters();
    assert_eq!(c["dropped_not_local"], 1);
    assert_eq!(c["decapsulated"], 0);
}

#[test]
fn decap_carries_an_outer_ce_mark_inside() {
    // RFC 6040 normal mode: outer CE over inner ECT(0)/ECT(1) → inner CE
    // (IPv4 checksum fixed); over inner CE → unchanged; over Not-ECT →
    // dropped. Outer ECT or Not-ECT changes nothing.
    const NOT_ECT: u8 = 0;
    const ECT1: u8 = 1;
    const ECT0: u8 = 2;
    const CE: u8 = 3;
    let lab = DecapLab::new();
    let plain = to_vip(56400, TCP_SYN).build();
    let dscp = 0x28 << 2; // AF11, kept as it is
    for (outer, inner, want) in [
        (CE, ECT0, Some(CE)),
        (CE, ECT1, Some(CE)),
        (CE, CE, Some(CE)),
        (CE, NOT_ECT, None),
        (ECT0, NOT_ECT, Some(NOT_ECT)),
        (ECT0, ECT1, Some(ECT1)),
        (NOT_ECT, ECT0, Some(ECT0)),
    ] {
        let inner_frame = with_tos(&plain, dscp | inner);
        let frame = wrapped_from(
            &inner_frame,
            DECAP_GATEWAY.parse().unwrap(),
            [198, 18, 1, 1],
            outer,
        );
        let (action, out) = lab.run(&frame);
        match want {
            Some(ecn) => {
                assert_eq!(action, XDP_PASS, "outer {outer} inner {inner}");
                assert_eq!(
                    out,
                    opened(&with_tos(&plain, dscp | ecn)),
                    "outer {outer} inner {inner}: inner ECN {ecn}, checksum recomputed"
                );
                assert_checksums_valid(&out);
            }
            None => assert_eq!(action, XDP_DROP, "outer CE over Not-ECT"),
        }
    }
    let c = lab.counters();
    assert_eq!(c["dropped_ecn"], 1);
    assert_eq!(c["decapsulated"], 6);
}

#[test]
fn handshakes_that_never_complete_are_counted_half_open() {
    // What a dsr backend that cannot answer its clients looks like from the
    // gateway: SYNs (and their retransmissions), never an ACK.
    let mut lab = Lab::new(1);
    for port in 57000..57004u16 {
        lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
        lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
    }
    lab.arrive_from_client(&to_vip(57100, TCP_SYN).build());
    lab.arrive_from_client(&to_vip(57100, TCP_ACK).build());
    let census =
        xdplb::dataplane::flow_census(&lab.tp.pin_path, 10_000, std::time::Duration::from_secs(30))
            .unwrap();
    assert_eq!(census.half_open.get(&0), Some(&4));
    assert_eq!(census.established.get(&0), Some(&1));
}

#[test]
fn removing_what_is_not_there_is_no_error() {
    // A dsr or tunnel pool removes its backends' reverse-NAT entries on
    // install, at first start when there are none (found by the dsr
    // namespace test: the daemon exited on aya's ENOENT).
    let mut lab = Lab::new(1);
    lab.dp().remove_reply(sa("198.18.1.99:80")).unwrap();
    lab.dp().remove_vip(sa("198.18.2.99:80")).unwrap();
    lab.dp().remove_reply(backend_addr(0)).unwrap();
    lab.dp().remove_reply(backend_addr(0)).unwrap();
}

/// The IPv4 address prefilter (`ADDR_FILTER`) never hides a VIP or a
/// backend: its bits follow what `VIPS` and `REPLIES` hold, through adds
/// and removals, and traffic for what remains is still balanced.
#[test]
fn the_address_prefilter_follows_the_vips_and_backends() {
    use lb_common::{addr_filter_word, ADDR_FILTER_BACKENDS};
    let mut lab = Lab::new(2);
    let filter = |lab: &Lab| -> Vec<u64> {
        let md = aya::maps::MapData::from_pin(lab.tp.pin_path.join(lb_common::maps::ADDR_FILTER))
            .unwrap();
        let a: aya::maps::Array<_, u64> = aya::maps::Map::Array(md).try_into().unwrap();
        a.iter().map(|w| w.unwrap()).collect()
    };
    let has = |words: &[u64], half: u32, addr: &str| {
        let a: std::net::Ipv4Addr = addr.parse().unwrap();
        let (word, bit) = addr_filter_word(u32::from_ne_bytes(a.octets()));
        words[(half + word) as usize] & bit != 0
    };
    // The lab's VIP and backends are in, and little else is.
    let words = filter(&lab);
    assert!(has(&words, 0, "198.18.2.10"));
    assert!(has(&words, ADDR_FILTER_BACKENDS, "198.18.1.11"));
    assert!(has(&words, ADDR_FILTER_BACKENDS, "198.18.1.12"));
    assert_eq!(words.iter().map(|w| w.count_ones()).sum::<u32>(), 3);
    // The pool moves to a new address (whose bit differs): published
    // there, then removed from the old one.
    let second = "198.18.2.20:80";
    assert_ne!(
        addr_filter_word(u32::from_ne_bytes([198, 18, 2, 10])),
        addr_filter_word(u32::from_ne_bytes([198, 18, 2, 20]))
    );
    let ring = lab.ring.clone();
    lab.dp().publish_vip(sa(second), 0, &ring, 0).unwrap();
    assert!(has(&filter(&lab), 0, "198.18.2.20"));
    lab.dp().remove_vip(sa(VIP)).unwrap();
    let words = filter(&lab);
    assert!(
        !has(&words, 0, "198.18.2.10"),
        "a removed VIP's bit is cleared"
    );
    assert!(has(&words, 0, "198.18.2.20"));
    let mut to_second = TcpFrame::new(client(58000), sa(second), TCP_SYN);
    to_second.src_mac = CLIENT_MAC;
    to_second.dst_mac = IN_MAC;
    let (action, _) = lab.arrive_from_client(&to_second.build());
    assert_eq!(action, XDP_REDIRECT);
    let (action, _) = lab.arrive_from_client(&to_vip(58001, TCP_SYN).build());
    assert_eq!(
        action, XDP_PASS,
        "the removed VIP's traffic is the kernel's"
    );
    // A backend's reverse NAT entry removed: its bit goes with it.
    lab.dp().remove_reply(backend_addr(1)).unwrap();
    let words = filter(&lab);
    assert!(!has(&words, ADDR_FILTER_BACKENDS, "198.18.1.12"));
    assert!(has(&words, ADDR_FILTER_BACKENDS, "198.18.1.11"));
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// The verifier gives up with EAGAIN whenever a signal is pending for the
/// loading thread. Four signals spaced through the load interrupt more
/// BPF_PROG_LOAD calls than aya retries on its own (one); the data plane
/// must load all the same.
#[test]
fn a_verification_interrupted_by_signals_is_tried_again() {
    // SAFETY: a handler that does nothing, so the signal interrupts the
    // syscall without ending the process; pthread_self names this thread.
    let me = unsafe {
        libc::signal(
            libc::SIGUSR1,
            ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::pthread_self()
    };
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::thread::spawn({
        let done = std::sync::Arc::clone(&done);
        move || {
            let mut sent = 0;
            for _ in 0..4 {
                std::thread::sleep(std::time::Duration::from_millis(250));
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                // SAFETY: `me` outlives this thread: the test joins it
                // before returning.
                unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
                sent += 1;
            }
            sent
        }
    });
    let mut lab = Lab::new(2);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = sent.join().expect("signaller");
    assert!(sent >= 2, "only {sent} signals fell inside the load");
    // Loaded whole: it balances.
    let (action, out) = lab.arrive_from_client(&to_vip(40000, TCP_SYN).build());
    assert_eq!(action, XDP_REDIRECT);
    assert_checksums_valid(&out);
}

// ---- A VIP address without a pool; echo; the answer rate ----

/// An ICMP echo request (`ty` 8) or reply (0) between `src` and `dst`,
/// with id 0x4242, sequence 7 and a 24-byte payload.
fn echo(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], ty: u8) -> Vec<u8> {
    xdplb::packet::icmp_error(
        src_mac,
        dst_mac,
        src,
        dst,
        ty,
        0,
        [0x42, 0x42, 0, 7],
        &[0x5a; 24],
    )
}

const VIP_IP: [u8; 4] = [198, 18, 2, 10];
const CLIENT_IP: [u8; 4] = [198, 18, 0, 2];

/// A UDP datagram from the client to `dst`, 12 bytes of payload.
fn udp_to(port: u16, dst: &str) -> Vec<u8> {
    let mut f = xdplb::packet::L4Frame::udp(client(port).into(), sa(dst).into());
    f.src_mac = CLIENT_MAC;
    f.dst_mac = IN_MAC;
    f.payload = vec![0x33; 12];
    f.build()
}

/// A VIP address with no pool at a port (another port of the VIP, another
/// protocol) is answered as a closed port from the VIP, or dropped; never
/// handed to the kernel, which would route it back upstream. An echo
/// request gets its reply.
#[test]
fn a_vip_address_without_a_pool_is_answered_never_routed() {
    let mut lab = Lab::new(2);
    // TCP to an unused port: a RST from VIP:81 (as a closed port).
    let mut syn = TcpFrame::new(client(43200), sa("198.18.2.10:81"), TCP_SYN);
    syn.src_mac = CLIENT_MAC;
    syn.dst_mac = IN_MAC;
    let (action, out) = lab.arrive_from_client(&syn.build());
    assert_eq!(action, XDP_REDIRECT, "answered through TX_PORTS");
    assert_eq!(
        out,
        expected_rst(&syn, 0, syn.seq.wrapping_add(1), TCP_RST | TCP_ACK)
    );
    // UDP to the pool's port (the pool is TCP): port unreachable from the
    // VIP, quoting the datagram's header and 8 bytes.
    let sent = udp_to(43201, VIP);
    let (action, out) = lab.arrive_from_client(&sent);
    assert_eq!(action, XDP_REDIRECT);
    let want = xdplb::packet::icmp_error(
        IN_MAC,
        CLIENT_MAC,
        VIP_IP,
        CLIENT_IP,
        3,
        3,
        [0; 4],
        &sent[14..14 + 28],
    );
    assert_eq!(out, want);
    assert_icmp_checksums_valid(&out);
    // Another protocol (GRE): dropped.
    let mut gre = sent.clone();
    gre[14 + 9] = 47;
    gre[24..26].copy_from_slice(&[0, 0]);
    let c = xdplb::packet::ipv4_checksum(&gre[14..34]);
    gre[24..26].copy_from_slice(&c.to_be_bytes());
    let (action, _) = lab.arrive_from_client(&gre);
    assert_eq!(action, XDP_DROP);
    // A RST to an unused port: never answered, dropped.
    let mut rst = syn.clone();
    rst.flags = TCP_RST;
    let (action, _) = lab.arrive_from_client(&rst.build());
    assert_eq!(action, XDP_DROP);
    // An ICMP error addressed to the VIP about nothing of ours: dropped.
    let (mut err, _) = icmp_to_vip(43202, 3, 3, [0; 4]);
    err[42 + 9] = 17;
    let (action, _) = lab.arrive_from_client(&err);
    assert_eq!(action, XDP_DROP);
    // Ping: the pool can serve, so the VIP answers.
    let request = echo(CLIENT_MAC, IN_MAC, CLIENT_IP, VIP_IP, 8);
    let (action, out) = lab.arrive_from_client(&request);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, echo(IN_MAC, CLIENT_MAC, VIP_IP, CLIENT_IP, 0));
    let found = |o: usize| u16::from_be_bytes([out[o], out[o + 1]]);
    assert_eq!(found(24), xdplb::packet::ipv4_checksum(&out[14..34]));
    assert_eq!(found(36), xdplb::packet::icmp_checksum(&out[34..]));
    // The same to an address that is no VIP's: the kernel's.
    let other = echo(CLIENT_MAC, IN_MAC, CLIENT_IP, [198, 18, 2, 99], 8);
    let (action, out) = lab.arrive_from_client(&other);
    assert_eq!((action, &out), (XDP_PASS, &other));
    let (action, _) = lab.arrive_from_client(&udp_to(43203, "198.18.2.99:80"));
    assert_eq!(action, XDP_PASS);
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::NoPoolAnswered), 2);
    assert_eq!(c.get(GlobalCounter::EchoReplied), 1);
    assert_eq!(c.get(GlobalCounter::DropNoPool), 3);
    assert_eq!(c.get(GlobalCounter::Answered), 3);
    assert_eq!(c.get(GlobalCounter::Passed), 2);
    assert_eq!(c.get(GlobalCounter::Rx), 8);
}

/// Ping answers for a VIP whose pool can serve: with its pool emptied, an
/// echo request is dropped; with a backend back, answered again.
#[test]
fn an_echo_request_is_answered_only_while_a_pool_can_serve() {
    let mut lab = Lab::new(2);
    let request = echo(CLIENT_MAC, IN_MAC, CLIENT_IP, VIP_IP, 8);
    let ring = lab.ring.clone();
    lab.publish(vec![lb_common::NO_BACKEND; RING as usize]);
    let (action, _) = lab.arrive_from_client(&request);
    assert_eq!(action, XDP_DROP);
    assert_eq!(lab.counters().get(GlobalCounter::DropNoPool), 1);
    lab.publish(ring);
    let (action, _) = lab.arrive_from_client(&request);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(lab.counters().get(GlobalCounter::EchoReplied), 1);
    // The pool gone altogether: the address is no VIP's any more.
    lab.dp().remove_vip(sa(VIP)).unwrap();
    let (action, out) = lab.arrive_from_client(&request);
    assert_eq!((action, out), (XDP_PASS, request));
}

/// Every answer the program makes itself spends the CPU's credit: with
/// `answers_per_sec` 3, a burst of five packets that each earn one gets
/// three answers, and the rest are dropped and counted, whatever the
/// kind of answer.
#[test]
fn answers_are_rate_limited_per_cpu() {
    let mut lab = Lab::tuned(
        2,
        Tuning {
            answers_per_sec: 3,
            ..Default::default()
        },
    );
    // The credit is per CPU: run every packet on one.
    // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    let mut frames = vec![
        echo(CLIENT_MAC, IN_MAC, CLIENT_IP, VIP_IP, 8),
        udp_to(43300, VIP),
    ];
    for port in 43301..43304u16 {
        let mut syn = TcpFrame::new(client(port), sa("198.18.2.10:81"), TCP_SYN);
        syn.src_mac = CLIENT_MAC;
        syn.dst_mac = IN_MAC;
        frames.push(syn.build());
    }
    let actions: Vec<u32> = frames.iter().map(|f| lab.arrive_from_client(f).0).collect();
    assert_eq!(
        actions,
        [XDP_REDIRECT, XDP_REDIRECT, XDP_REDIRECT, XDP_DROP, XDP_DROP]
    );
    let c = lab.counters();
    assert_eq!(c.get(GlobalCounter::Answered), 3);
    assert_eq!(c.get(GlobalCounter::DropAnswerLimited), 2);
    // An empty pool's RSTs draw on the same credit.
    lab.publish(vec![lb_common::NO_BACKEND; RING as usize]);
    let (action, _) = lab.arrive_from_client(&to_vip(43305, TCP_SYN).build());
    assert_eq!(action, XDP_DROP);
    assert_eq!(lab.counters().get(GlobalCounter::DropAnswerLimited), 3);
    assert_eq!(lab.counters().vips[0].counters.rejected, 0);
}

// ---- Reverse NAT rewrites replies only ----

/// A host out on the client side, which a backend connects to itself.
fn foreign(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT.parse().unwrap(), port)
}

/// A segment backend `b` sends from its service endpoint to `to`.
fn from_service(b: u32, to: SocketAddrV4, flags: u8) -> TcpFrame {
    let mut f = TcpFrame::new(backend_addr(b), to, flags);
    f.src_mac = backend_mac(b as u8);
    f.dst_mac = OUT_MAC;
    f
}

/// A TCP SYN without ACK from a backend's service endpoint is a
/// connection the backend opens, not a reply: it and the rest of that
/// connection leave untouched (and what comes back is addressed to the
/// backend, not the VIP: the kernel's). Replies of connections through
/// the VIP from the same endpoint are still rewritten; a SYN-ACK on the
/// opened connection's 5-tuple is a client's new connection: rewritten.
/// UDP has no handshake: a datagram from a service endpoint is a reply
/// (packet6.rs covers UDP replies without a flow).
#[test]
fn a_connection_a_backend_opens_from_its_service_port_passes_untouched() {
    let mut lab = Lab::new(2);
    let out_port = 44300;
    let syn = from_service(0, foreign(out_port), TCP_SYN).build();
    let (action, out) = lab.arrive_from_backends(&syn);
    assert_eq!((action, &out), (XDP_PASS, &syn), "the backend's SYN");
    // What comes back, to the backend's own address.
    let mut synack = TcpFrame::new(foreign(out_port), backend_addr(0), TCP_SYN | TCP_ACK);
    synack.src_mac = CLIENT_MAC;
    synack.dst_mac = IN_MAC;
    let bytes = synack.build();
    let (action, out) = lab.arrive_from_client(&bytes);
    assert_eq!((action, &out), (XDP_PASS, &bytes), "the far end's SYN-ACK");
    for flags in [TCP_ACK, TCP_ACK | TCP_PSH, TCP_FIN | TCP_ACK] {
        let seg = from_service(0, foreign(out_port), flags).build();
        let (action, out) = lab.arrive_from_backends(&seg);
        assert_eq!((action, &out), (XDP_PASS, &seg), "flags {flags:#x}");
    }
    assert_eq!(lab.counters().get(GlobalCounter::PassBackendOpened), 4);
    // A client's connection through the VIP to the same backend: its
    // replies leave from the VIP as ever.
    let port = (45000..46000)
        .find(|&p| lab.ring_choice(client(p), sa(VIP)) == 0)
        .unwrap();
    lab.arrive_from_client(&to_vip(port, TCP_SYN).build());
    let reply = from_service(0, client(port), TCP_SYN | TCP_ACK);
    let (action, out) = lab.arrive_from_backends(&reply.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[26..30], &sa(VIP).ip().octets(), "from the VIP");
    // The opened connection's 5-tuple answered with a SYN-ACK: a client
    // connected through the VIP from that port since; a reply again.
    let reused = from_service(0, foreign(out_port), TCP_SYN | TCP_ACK);
    let (action, out) = lab.arrive_from_backends(&reused.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[26..30], &sa(VIP).ip().octets());
    let (action, _) =
        lab.arrive_from_backends(&from_service(0, foreign(out_port), TCP_ACK).build());
    assert_eq!(action, XDP_REDIRECT, "and the rest of it");
    // Another backend, which never opened a connection, pays no lookup
    // and is rewritten.
    let (action, _) = lab.arrive_from_backends(&from_service(1, foreign(44301), TCP_ACK).build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(lab.counters().get(GlobalCounter::PassBackendOpened), 4);
}

/// Flow sync's receiver (`FlowTable::insert_absent`) on a running
/// program: a peer's entry goes only into an empty way, and the program
/// then steers its flow to the peer's backend, not the ring's; an entry
/// already there stands; a claimed way and a live entry are never taken.
/// What the sender reads (`SyncMaps`) names the references the program
/// uses.
#[test]
fn a_peers_entry_is_recorded_only_where_absent_and_steers_its_flow() {
    const WAYS: usize = 2 * lb_common::FLOW_WAYS;
    let mut lab = Lab::with_table(3, VIP_F_REJECT_EMPTY, Tuning::default(), WAYS as u32);
    let table = xdplb::dataplane::FlowTable::open(&lab.tp.pin_path).unwrap();
    let maps = xdplb::dataplane::SyncMaps::open(&lab.tp.pin_path, RING).unwrap();
    let vips = maps.vips().unwrap();
    let (vip, meta) = vips[0];
    assert_eq!(vip.addr, std::net::SocketAddr::V4(sa(VIP)));
    let backends = maps.backends(&vips).unwrap();
    assert_eq!(backends.len(), 3);
    let reference = |slot: u32| {
        backends
            .iter()
            .find(|b| b.addr == std::net::SocketAddr::V4(backend_addr(slot)))
            .map(|b| b.r)
            .unwrap()
    };

    let port = 42000;
    let key = flow_key(client(port), sa(VIP));
    let tag = table.tag(&key);
    let ring = lab.ring_choice(client(port), sa(VIP));
    assert_eq!(
        maps.ring_choice(&meta, flow_hash(&key)).unwrap(),
        Some(reference(ring)),
        "the sender's ring read is the program's"
    );
    let peers = (ring + 1) % 3;
    let word = tag | lb_common::FLOW_F_ACKED as u64;
    let seen = xdplb::dataplane::flow_seen_now();
    assert!(table.insert_absent(word, reference(peers), seen));
    let ack = to_vip(port, TCP_ACK);
    let (action, out) = lab.arrive_from_client(&ack.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        out,
        expected_to_backend(&ack, peers),
        "the peer's pin, not the ring's"
    );
    // Present: the entry stands (another backend offered is refused).
    assert!(!table.insert_absent(word, reference(ring), seen));
    assert_eq!(table.get(&key).unwrap().backend, reference(peers));
    table.remove(tag);

    // No empty way: every way claimed by an insert under way, then every
    // way holding a live flow of its own. Nothing is taken.
    let live = |way: usize| ((way as u64 + 1) << 32) | 0x100 | lb_common::FLOW_F_ACKED as u64;
    for (what, word_of) in [
        (
            "claimed",
            &(|_| lb_common::FLOW_CLAIMED) as &dyn Fn(usize) -> u64,
        ),
        ("live", &live),
    ] {
        for way in 0..WAYS {
            table.write_tag_word(way, word_of(way));
        }
        assert!(!table.insert_absent(word, reference(peers), seen), "{what}");
        for way in 0..WAYS {
            assert_eq!(table.slot(way).tag, word_of(way), "{what}: way {way}");
        }
    }
    // A way freed again is taken.
    table.write_tag_word(table.ways(tag).next().unwrap(), 0);
    assert!(table.insert_absent(word, reference(peers), seen));
    assert_eq!(table.get(&key).unwrap().backend, reference(peers));
}

/// Flow sync in the direct modes: the flow table is the same for every
/// mode, so a peer's entry steers its flow in `dsr` and `tunnel` pools too
/// (to the peer's backend, by MAC or inside IPIP), not to the ring's.
#[test]
fn a_peers_entry_steers_its_flow_in_dsr_and_tunnel_pools() {
    for mode in ["dsr", "tunnel"] {
        // One lab at a time: each enters its own namespace.
        let mut lab = if mode == "dsr" {
            dsr_lab(3)
        } else {
            tunnel_lab(3)
        };
        let table = xdplb::dataplane::FlowTable::open(&lab.tp.pin_path).unwrap();
        let maps = xdplb::dataplane::SyncMaps::open(&lab.tp.pin_path, RING).unwrap();
        let vips = maps.vips().unwrap();
        let backends = maps.backends(&vips).unwrap();
        let reference = |slot: u32| {
            backends
                .iter()
                .find(|b| b.addr == std::net::SocketAddr::V4(backend_addr(slot)))
                .map(|b| b.r)
                .unwrap()
        };
        let port = 42100;
        let key = flow_key(client(port), sa(VIP));
        let peers = (lab.ring_choice(client(port), sa(VIP)) + 1) % 3;
        let word = table.tag(&key) | lb_common::FLOW_F_ACKED as u64;
        assert!(
            table.insert_absent(word, reference(peers), xdplb::dataplane::flow_seen_now()),
            "{mode}"
        );
        let ack = to_vip(port, TCP_ACK).build();
        let (action, out) = lab.arrive_from_client(&ack);
        assert_eq!(action, XDP_REDIRECT, "{mode}");
        let want = if mode == "dsr" {
            expected_dsr(&ack, peers)
        } else {
            expected_ipip(&ack, peers)
        };
        assert_eq!(out, want, "{mode}: the peer's pin, not the ring's");
    }
}
