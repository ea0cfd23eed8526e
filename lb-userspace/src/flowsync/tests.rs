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
