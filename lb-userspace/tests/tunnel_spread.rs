//! A backend's NIC spreads a gateway's tunnel traffic over its receive
//! queues only if the outer headers differ: for IPIP and IPv6-in-IPv6 it
//! hashes the outer (source, destination) with Toeplitz (RSS), and every
//! outer packet of one gateway to one backend has the same destination.
//! veth does not hash, so the hash is computed here, as a NIC with
//! Microsoft's default RSS key and the default indirection table (queue =
//! entry `hash % 128`, entries round-robin over the queues) would: the
//! outer sources are what the data plane picks (`tunnel_host_part` of the
//! flow's ring hash within the `tunnel_source` prefix; the packet tests
//! check the program sends exactly those).
use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{flow_hash, flow_hash6, tunnel_host_part, Addr6, FlowKey, FlowKey6, IPPROTO_TCP};

/// Microsoft's RSS verification key (the one most NIC drivers ship).
const RSS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

const QUEUES: usize = 4;
const FLOWS: usize = 1000;
/// Indirection table entries (ethtool's default size on most NICs).
const RETA: u32 = 128;

/// The Toeplitz hash of `input` under `key`: for every set input bit
/// (most significant first), the 32 key bits starting at its position.
fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let mut window = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    let mut hash = 0;
    for (next, byte) in (4..).zip(input) {
        for bit in (0..8).rev() {
            if byte >> bit & 1 == 1 {
                hash ^= window;
            }
            let incoming = key.get(next).map_or(0, |k| k >> bit & 1);
            window = window << 1 | u32::from(incoming);
        }
    }
    hash
}

/// The receive queue of a packet with these outer addresses.
fn queue(src: &[u8], dst: &[u8]) -> usize {
    let h = toeplitz(&RSS_KEY, &[src, dst].concat());
    ((h % RETA) as usize) % QUEUES
}

#[test]
fn toeplitz_matches_microsofts_verification_vectors() {
    // "Verifying the RSS Hash Calculation" (Microsoft): the IPv4 and IPv6
    // 2-tuple hashes of its first sample.
    let v4 = [
        Ipv4Addr::new(66, 9, 149, 187).octets(),
        Ipv4Addr::new(161, 142, 100, 80).octets(),
    ]
    .concat();
    assert_eq!(toeplitz(&RSS_KEY, &v4), 0x323e_8fc2);
    let src: Ipv6Addr = "3ffe:2501:200:1fff::7".parse().unwrap();
    let dst: Ipv6Addr = "3ffe:2501:200:3::1".parse().unwrap();
    assert_eq!(
        toeplitz(&RSS_KEY, &[src.octets(), dst.octets()].concat()),
        0x2cc1_8cd5
    );
}

/// Queue counts of 1,000 client flows (100 clients, 10 ports each) to the
/// IPv4 VIP, tunnelled from `prefix` with `host_bits` to one backend.
fn spread4(prefix: Ipv4Addr, host_bits: u32) -> [usize; QUEUES] {
    let backend = Ipv4Addr::new(198, 18, 1, 11).octets();
    let vip = u32::from_ne_bytes([198, 18, 2, 10]);
    let mut counts = [0; QUEUES];
    for i in 0..FLOWS {
        let client = Ipv4Addr::new(203, 0, 113, (i / 10) as u8 + 1);
        let key = FlowKey {
            src_addr: u32::from_ne_bytes(client.octets()),
            dst_addr: vip,
            src_port: (40000 + (i % 10) as u16 * 977).to_be(),
            dst_port: 80u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let host = tunnel_host_part(flow_hash(&key), host_bits);
        let source = Ipv4Addr::from(u32::from(prefix) | host).octets();
        counts[queue(&source, &backend)] += 1;
    }
    counts
}

/// As [`spread4`] for the IPv6 VIP, from an IPv6 prefix.
fn spread6(prefix: Ipv6Addr, host_bits: u32) -> [usize; QUEUES] {
    let backend: Ipv6Addr = "2001:2:0:1::11".parse().unwrap();
    let addr6 = |a: Ipv6Addr| {
        let o = a.octets();
        Addr6 {
            words: [0, 4, 8, 12].map(|i| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]])),
        }
    };
    let vip = addr6("2001:2:0:2::10".parse().unwrap());
    let mut counts = [0; QUEUES];
    for i in 0..FLOWS {
        let client: Ipv6Addr = format!("2001:db8::{:x}", i / 10 + 1).parse().unwrap();
        let key = FlowKey6 {
            src_addr: addr6(client),
            dst_addr: vip,
            src_port: (40000 + (i % 10) as u16 * 977).to_be(),
            dst_port: 80u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let host = tunnel_host_part(flow_hash6(&key), host_bits);
        let source = Ipv6Addr::from(u128::from(prefix) | u128::from(host)).octets();
        counts[queue(&source, &backend.octets())] += 1;
    }
    counts
}

/// Every queue's share within 10 % (points) of an even 25 %, and the
/// counts no less even than a random assignment of the flows would be:
/// Pearson's χ² over the queues below 16.27, its 99.9 % quantile at 3
/// degrees of freedom. (Within 10 % of 250 itself, 225 to 275, is 1.8
/// standard deviations of the binomial spread any per-flow hash has, so
/// a correct spread misses it for about one flow set in four.)
fn assert_even(counts: [usize; QUEUES], what: &str) {
    let even = FLOWS as f64 / QUEUES as f64;
    let mut chi2 = 0.0;
    for (q, &n) in counts.iter().enumerate() {
        let share = n as f64 / FLOWS as f64;
        assert!(
            (share - 0.25).abs() <= 0.10,
            "{what}: queue {q} got {n} of {FLOWS} flows ({counts:?}), want 25 % ± 10"
        );
        chi2 += (n as f64 - even).powi(2) / even;
    }
    assert!(
        chi2 < 16.27,
        "{what}: χ² {chi2:.1} over {counts:?}: less even than chance"
    );
    eprintln!("{what}: {counts:?}, χ² {chi2:.2}");
}

#[test]
fn a_prefix_spreads_a_thousand_flows_over_four_queues_within_ten_percent() {
    // One source (what every gateway sent before): one queue takes all.
    assert_eq!(
        spread4(Ipv4Addr::new(198, 18, 1, 1), 0)
            .iter()
            .filter(|&&n| n > 0)
            .count(),
        1
    );
    assert_even(spread4(Ipv4Addr::new(198, 18, 3, 0), 5), "198.18.3.0/27");
    assert_even(spread4(Ipv4Addr::new(198, 18, 3, 0), 8), "198.18.3.0/24");
    assert_even(
        spread6("2001:2:0:3::".parse().unwrap(), 4),
        "2001:2:0:3::/124",
    );
    assert_even(
        spread6("2001:2:0:3::".parse().unwrap(), 8),
        "2001:2:0:3::/120",
    );
}

/// Why the README asks for an IPv4 /27 or larger: the queue is the hash's
/// low two bits, and with this key the last four bits of an IPv4 source
/// move only one of them (Toeplitz is linear: a source bit flips a fixed
/// key window), so a /28's sixteen sources reach two queues of four.
#[test]
fn an_ipv4_slash_28_reaches_only_two_queues_with_the_default_key() {
    let counts = spread4(Ipv4Addr::new(198, 18, 3, 0), 4);
    assert_eq!(counts.iter().filter(|&&n| n > 0).count(), 2, "{counts:?}");
}
