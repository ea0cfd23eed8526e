//! The ring hash (`lb_common::flow_hash` / `flow_hash6`) spreads the flows
//! real clients open — one client's consecutive source ports, or many
//! clients' consecutive addresses — evenly over ring positions: Maglev's
//! balance is only as good as the hash in front of it.
use lb_common::{flow_hash, flow_hash6, Addr6, FlowKey, FlowKey6, IPPROTO_TCP, IPPROTO_UDP};

const BINS: usize = 64;
const FLOWS: u32 = 64_000;
/// χ² with 63 degrees of freedom: its 99.9 % quantile.
const CHI2_999: f64 = 103.4;

fn chi2(hashes: impl Iterator<Item = u32>) -> f64 {
    let mut bins = [0u32; BINS];
    let mut n = 0u32;
    for h in hashes {
        // A ring position is the hash modulo the ring size: judge the
        // low bits as the ring does.
        bins[(h % 65_537) as usize % BINS] += 1;
        n += 1;
    }
    let expect = f64::from(n) / BINS as f64;
    bins.iter()
        .map(|&b| (f64::from(b) - expect).powi(2) / expect)
        .sum()
}

fn key4(src: u32, sport: u16, dst: u32, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src_addr: src.to_be(),
        dst_addr: dst.to_be(),
        src_port: sport.to_be(),
        dst_port: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

fn addr6(last: u32) -> Addr6 {
    Addr6 {
        words: [0x2001_0002u32.to_be(), 0, 0, last.to_be()],
    }
}

fn key6(src: Addr6, sport: u16, dst: Addr6, dport: u16, proto: u8) -> FlowKey6 {
    FlowKey6 {
        src_addr: src,
        dst_addr: dst,
        src_port: sport.to_be(),
        dst_port: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

const CLIENT: u32 = 0xc612_0002; // 198.18.0.2
const VIP: u32 = 0xc612_020a; // 198.18.2.10

#[test]
fn one_clients_consecutive_ports_spread_evenly() {
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let c = chi2((0..FLOWS).map(|i| flow_hash(&key4(CLIENT, 1024 + i as u16, VIP, 80, proto))));
        assert!(c < CHI2_999, "IPv4 proto {proto}: χ² {c:.1}");
        let c = chi2(
            (0..FLOWS)
                .map(|i| flow_hash6(&key6(addr6(2), 1024 + i as u16, addr6(0x10), 80, proto))),
        );
        assert!(c < CHI2_999, "IPv6 proto {proto}: χ² {c:.1}");
    }
}

#[test]
fn consecutive_client_addresses_spread_evenly() {
    let c = chi2((0..FLOWS).map(|i| flow_hash(&key4(CLIENT + i, 40000, VIP, 443, IPPROTO_TCP))));
    assert!(c < CHI2_999, "IPv4: χ² {c:.1}");
    let c = chi2((0..FLOWS).map(|i| {
        flow_hash6(&key6(
            addr6(0x1_0000 + i),
            40000,
            addr6(0x10),
            443,
            IPPROTO_TCP,
        ))
    }));
    assert!(c < CHI2_999, "IPv6: χ² {c:.1}");
    // Clients that differ in a high address word only (another /64).
    let c = chi2((0..FLOWS).map(|i| {
        let mut src = addr6(2);
        src.words[1] = i.to_be();
        flow_hash6(&key6(src, 40000, addr6(0x10), 443, IPPROTO_TCP))
    }));
    assert!(c < CHI2_999, "IPv6 by /64: χ² {c:.1}");
}
