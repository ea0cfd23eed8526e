use super::*;

const SECRET: &str = "0123456789abcdef-pair";

fn entry(i: u64) -> SyncEntry {
    SyncEntry {
        tag: (0x1234_5678_9abc_de00 ^ (i << 8)) | 0x100,
        flags: CARRIED_FLAGS & lb_common::FLOW_F_ACKED as u8,
        proto: lb_common::IPPROTO_TCP,
        vip: "198.18.2.10:80".parse().unwrap(),
        backend: "198.18.1.14:8080".parse().unwrap(),
    }
}

fn entry6(i: u64) -> SyncEntry {
    SyncEntry {
        vip: "[2001:2:0:2::10]:80".parse().unwrap(),
        backend: "[2001:2:0:1::14]:8080".parse().unwrap(),
        ..entry(i)
    }
}

#[test]
fn messages_round_trip_both_families() {
    let keys = SyncKeys::new(SECRET);
    let entries = vec![entry(1), entry6(2), entry(3)];
    let mut seq = 7;
    let msgs = keys.encode(42, &mut seq, 1_000, &entries);
    assert_eq!(msgs.len(), 1);
    assert_eq!(seq, 8);
    let m = keys.decode(&msgs[0]).unwrap();
    assert_eq!(
        m,
        Message {
            incarnation: 42,
            seq: 7,
            sent_unix_ms: 1_000,
            entries
        }
    );
}

#[test]
fn many_entries_split_into_bounded_messages() {
    let keys = SyncKeys::new(SECRET);
    let entries: Vec<_> = (0..500)
        .map(|i| if i % 3 == 0 { entry6(i) } else { entry(i) })
        .collect();
    let mut seq = 0;
    let msgs = keys.encode(1, &mut seq, 5, &entries);
    assert!(msgs.len() > 1);
    assert_eq!(seq, msgs.len() as u64);
    let mut back = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        assert!(m.len() <= MAX_MESSAGE, "message {i} is {} bytes", m.len());
        let d = keys.decode(m).unwrap();
        assert_eq!(d.seq, i as u64);
        back.extend(d.entries);
    }
    assert_eq!(back, entries);
    // No entries: one message (a heartbeat: the peer sees this one alive).
    assert_eq!(keys.encode(1, &mut seq, 5, &[]).len(), 1);
}

#[test]
fn wrong_secret_tampering_and_oversize_are_rejected() {
    let keys = SyncKeys::new(SECRET);
    let mut seq = 0;
    let msg = keys.encode(1, &mut seq, 5, &[entry(1)]).remove(0);
    assert_eq!(
        SyncKeys::new("another secret, 16+ bytes").decode(&msg),
        Err(Rejected::Unauthenticated)
    );
    for at in [4, HEADER_LEN + 3, msg.len() - 1] {
        let mut bad = msg.clone();
        bad[at] ^= 1;
        assert_eq!(
            keys.decode(&bad),
            Err(Rejected::Unauthenticated),
            "byte {at}"
        );
    }
    let mut bad = msg.clone();
    bad[0] = b'Y';
    assert_eq!(keys.decode(&bad), Err(Rejected::Magic));
    assert_eq!(keys.decode(&msg[..20]), Err(Rejected::Malformed));
    let mut big = msg.clone();
    big.resize(MAX_MESSAGE + 1, 0);
    assert_eq!(keys.decode(&big), Err(Rejected::Oversize));
    // An authentic message whose count says more than it holds.
    let mut body = msg[..msg.len() - MAC_LEN].to_vec();
    body[HEADER_LEN - 1] = 2;
    let mut mac = keys.mac();
    mac.update(&body);
    body.extend_from_slice(&mac.finalize().into_bytes());
    assert_eq!(keys.decode(&body), Err(Rejected::Malformed));
}

#[test]
fn keys_differ_by_secret_and_purpose() {
    assert_eq!(tag_seed(SECRET), tag_seed(SECRET));
    assert_ne!(tag_seed(SECRET), tag_seed("0123456789abcdef-paiR"));
    assert_ne!(
        derive(SECRET, MAC_LABEL)[..8],
        tag_seed(SECRET).to_le_bytes()[..]
    );
}

fn msg(incarnation: u64, seq: u64, sent: u64) -> Message {
    Message {
        incarnation,
        seq,
        sent_unix_ms: sent,
        entries: vec![],
    }
}

#[test]
fn replayed_duplicate_and_old_messages_are_refused() {
    let now = 1_000_000;
    let mut w = ReplayWindow::default();
    assert!(w.accept(&msg(9, 10, now), now));
    assert!(!w.accept(&msg(9, 10, now), now), "duplicate");
    assert!(w.accept(&msg(9, 12, now), now));
    assert!(w.accept(&msg(9, 11, now), now), "late but new");
    assert!(!w.accept(&msg(9, 11, now), now), "late duplicate");
    assert!(w.accept(&msg(9, 200, now), now));
    assert!(!w.accept(&msg(9, 100, now), now), "below the window");
    assert!(
        !w.accept(&msg(9, 201, now - MAX_AGE_MS - 1), now),
        "too old"
    );
    // A restarted sender (new incarnation, later clock) starts afresh; an
    // old incarnation's message is not taken back.
    assert!(w.accept(&msg(10, 0, now + 5), now + 5));
    assert!(!w.accept(&msg(9, 202, now), now + 5));
    assert!(!w.accept(&msg(11, 0, now + 1), now + 6), "stamped earlier");
}

#[test]
fn rate_bound_holds_the_rate() {
    let mut r = RateBound::new(100, 10, 0);
    let burst = (0..50).filter(|_| r.take(0)).count();
    assert_eq!(burst, 10);
    // One second later: another 100 at most (bounded by the burst).
    let mut taken = 0;
    for ms in 1..=1000 {
        while r.take(ms) {
            taken += 1;
        }
    }
    assert!((99..=101).contains(&taken), "{taken} in a second");
}

#[test]
fn entries_map_to_local_backends_or_are_ignored() {
    let mut local = LocalBackends::default();
    let e = entry(1);
    local.insert(
        e.proto,
        e.vip,
        e.backend,
        lb_common::backend_ref(3, 7),
        true,
    );
    let down: SocketAddr = "198.18.1.15:8080".parse().unwrap();
    local.insert(e.proto, e.vip, down, lb_common::backend_ref(4, 1), false);
    assert_eq!(local.resolve(&e), Some(lb_common::backend_ref(3, 7)));
    assert_eq!(
        local.name(lb_common::backend_ref(3, 7)),
        Some((e.proto, e.vip, e.backend))
    );
    let unknown = SyncEntry {
        backend: "198.18.1.99:8080".parse().unwrap(),
        ..e
    };
    assert_eq!(local.resolve(&unknown), None);
    assert_eq!(
        local.resolve(&SyncEntry { backend: down, ..e }),
        None,
        "down"
    );
    let udp = SyncEntry {
        proto: lb_common::IPPROTO_UDP,
        ..e
    };
    assert_eq!(local.resolve(&udp), None, "another VIP (protocol)");
}

fn key(i: u32) -> lb_common::FlowKey {
    lb_common::FlowKey {
        src_addr: u32::from(Ipv4Addr::new(198, 18, (i >> 16) as u8, (i >> 8) as u8)).to_be(),
        dst_addr: u32::from(Ipv4Addr::new(198, 18, 2, 10)).to_be(),
        src_port: ((i & 0xff) as u16 + 1024).to_be(),
        dst_port: 80u16.to_be(),
        proto: lb_common::IPPROTO_TCP,
        _pad: [0; 3],
    }
}

#[test]
fn a_tag_carries_its_ring_hash_and_the_secret_keys_the_rest() {
    let seed = tag_seed(SECRET);
    for i in 0..1000 {
        let k = key(i);
        let tag = lb_common::flow_tag(&k, seed);
        assert_eq!(lb_common::flow_tag_ring_hash(tag), lb_common::flow_hash(&k));
        assert_eq!(tag & lb_common::FLOW_TAG_FLAGS, 0);
        assert_ne!(tag, 0);
        // Another key: same ring hash, other keyed bits (all but 1 in 2^23
        // flows), so other buckets.
        let other = lb_common::flow_tag(&k, seed ^ 1);
        assert_eq!(other >> 32, tag >> 32);
    }
    let differ = (0..1000)
        .filter(|&i| lb_common::flow_tag(&key(i), seed) != lb_common::flow_tag(&key(i), !seed))
        .count();
    assert!(differ >= 999, "{differ}");
    let k6 = lb_common::FlowKey6 {
        src_addr: lb_common::Addr6::from_octets([
            0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
        ]),
        dst_addr: lb_common::Addr6::from_octets([
            0x20, 1, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ]),
        src_port: 40000u16.to_be(),
        dst_port: 80u16.to_be(),
        proto: lb_common::IPPROTO_TCP,
        _pad: [0; 3],
    };
    let tag6 = lb_common::flow_tag6(&k6, seed);
    assert_eq!(
        lb_common::flow_tag_ring_hash(tag6),
        lb_common::flow_hash6(&k6)
    );
}

#[test]
fn buckets_come_from_the_keyed_bits_only_and_spread() {
    let seed = tag_seed(SECRET);
    let buckets = 1 << 17; // the default million-flow table
    let mut load = vec![0u32; buckets as usize];
    let n = 200_000;
    let mut same = 0;
    for i in 0..n {
        let tag = lb_common::flow_tag(&key(i), seed);
        let (a, b) = lb_common::flow_bucket_pair(tag, buckets);
        // The public high word does not choose the buckets.
        assert_eq!(
            (a, b),
            lb_common::flow_bucket_pair(tag ^ 0xffff_ffff_0000_0000, buckets)
        );
        same += u32::from(a == b);
        // Two choices: the emptier bucket.
        let w = if load[b as usize] < load[a as usize] {
            b
        } else {
            a
        };
        load[w as usize] += 1;
    }
    assert!(same < 10, "{same} flows got one bucket twice");
    let max = *load.iter().max().unwrap();
    // 200k flows in 131k buckets: two choices keep every bucket at a few.
    assert!(max <= 5, "fullest bucket {max}");
}

#[test]
fn only_live_flows_off_the_ring_are_sent_and_mapped_back() {
    use lb_common::{backend_ref, FlowSlot, FLOW_F_ACKED, FLOW_F_CLOSING, FLOW_F_REPLIED};
    let vip: SocketAddr = "198.18.2.10:80".parse().unwrap();
    let old: SocketAddr = "198.18.1.12:8080".parse().unwrap();
    let new: SocketAddr = "198.18.1.14:8080".parse().unwrap();
    let (r_old, r_new) = (backend_ref(1, 1), backend_ref(3, 1));
    let mut sender = LocalBackends::default();
    sender.insert(lb_common::IPPROTO_TCP, vip, old, r_old, true);
    sender.insert(lb_common::IPPROTO_TCP, vip, new, r_new, true);
    let seed = tag_seed(SECRET);
    let slot = |i: u32, backend: u32, flags: u16| FlowSlot {
        tag: lb_common::flow_tag(&key(i), seed) | u64::from(flags),
        backend,
        seen: 1,
    };
    let live = FLOW_F_ACKED | FLOW_F_REPLIED;
    // The ring now sends even ring hashes to `new`, odd ones to `old`.
    let ring = |_: u8, v: SocketAddr, h: u32| {
        (v == vip).then_some(if h.is_multiple_of(2) { r_new } else { r_old })
    };
    let slots: Vec<FlowSlot> = (0..40)
        .map(|i| match i % 4 {
            0 => slot(i, r_old, live),
            1 => slot(i, r_old, live | FLOW_F_CLOSING),
            2 => slot(i, r_old, 0),
            _ => slot(i, backend_ref(9, 1), live),
        })
        .collect();
    let sent = unrecomputable(slots.iter().copied(), &sender, ring);
    let want: Vec<u64> = slots
        .iter()
        .filter(|s| {
            s.flags() == live
                && s.backend == r_old
                && lb_common::flow_tag_ring_hash(s.tag).is_multiple_of(2)
        })
        .map(|s| s.tag & !lb_common::FLOW_TAG_FLAGS)
        .collect();
    assert!(!want.is_empty());
    assert_eq!(sent.iter().map(|e| e.tag).collect::<Vec<_>>(), want);
    assert!(sent.iter().all(|e| e.backend == old && e.vip == vip));
    // The receiver names the same backends with its own slots; it lacks
    // `old` for one VIP only if it never had it: then nothing is inserted.
    let mut receiver = LocalBackends::default();
    receiver.insert(lb_common::IPPROTO_TCP, vip, old, backend_ref(7, 4), true);
    let (inserts, ignored) = to_local(&sent, &receiver);
    assert_eq!(ignored, 0);
    assert!(inserts
        .iter()
        .all(|&(tag, r)| r == backend_ref(7, 4) && tag & 0xff == u64::from(live)));
    let (inserts, ignored) = to_local(&sent, &LocalBackends::default());
    assert!(inserts.is_empty());
    assert_eq!(ignored, sent.len());
}
