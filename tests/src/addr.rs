//! The lab's names and addresses. Everything lives in 198.18.0.0/15, the
//! benchmarking range (RFC 2544), so no lab packet can mean anything
//! elsewhere.
//!
//! | segment  | subnet          | who                                        |
//! |----------|-----------------|--------------------------------------------|
//! | clients  | 198.18.0.0/24   | gateway `gwc` .1, clients `cl0` .2, .3, …  |
//! | backends | 198.18.1.0/24   | gateway `gwb` .1, backends `eth0` .11, .12, … |
//! | VIPs     | 198.18.2.0/24   | .10, .11, … routed to the gateway          |
//! | transit  | 198.18.3.0/24   | with a router: gateway `gwc` .1, router `rtg` .2 |
//! | tunnel sources | 198.18.4.0/27 | a gateway's `tunnel_source` prefix (a `local` route on its lo) |
//!
//! In a direct-return lab the router also sits on the backend segment
//! (`rtb` 198.18.1.254), the backends' default route.
//!
//! An IPv6 lab (`LabBuilder::ipv6`) is dual-stack: every IPv4 address
//! 198.18.N.H above also has its twin [`v6_of`] in 2001:2::/48, the IPv6
//! benchmarking range (RFC 5180): segment N becomes 2001:2:0:N::/64 and host
//! number H is written with the same digits (198.18.1.11 ↔ 2001:2:0:1::11),
//! so clients are 2001:2:0:0::/64, backends 2001:2:0:1::/64, VIPs
//! 2001:2:0:2::/64.
//!
//! With a router (`LabBuilder::router_mtu`) the router takes the gateway's
//! place on the client segment (`rtc` 198.18.0.1, still the clients'
//! default route) and the gateway's `gwc` moves to the transit segment.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A `tunnel_source` prefix a gateway holds whole (`ip route add local
/// … dev lo`): its 32 addresses are tunnelled flows' outer sources.
pub const TUNNEL_PREFIX: &str = "198.18.4.0/27";

/// The gateway's client-side interface.
pub const GW_CLIENT_IF: &str = "gwc";
/// The gateway's backend-side interface.
pub const GW_BACKEND_IF: &str = "gwb";
/// Every client's interface (one client per namespace).
pub const CLIENT_IF: &str = "cl0";
/// Every backend's interface (one backend per namespace).
pub const BACKEND_IF: &str = "eth0";
/// The bridge in the switch namespace joining `gwb` and the backends.
pub const BACKEND_BRIDGE: &str = "br0";
/// The bridge joining `gwc` and the clients when there is more than one.
pub const CLIENT_BRIDGE: &str = "br1";

/// The gateway's address on the client segment (the clients' default route).
pub const GW_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The gateway's address on the backend segment (the backends' default route).
pub const GW_BACKEND_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The router's interface on the client segment (with a router).
pub const ROUTER_CLIENT_IF: &str = "rtc";
/// The router's interface on the transit segment, facing `gwc`.
pub const ROUTER_GW_IF: &str = "rtg";
/// The router's address on the client segment: the clients' default route,
/// the same address the gateway has there without a router.
pub const ROUTER_CLIENT_ADDR: Ipv4Addr = GW_CLIENT_ADDR;
/// The router's interface on the backends' segment (direct-return labs).
pub const ROUTER_BACKEND_IF: &str = "rtb";
/// The router's address on the backends' segment: the backends' default
/// route in a direct-return lab (the top of the segment, away from the
/// gateways' .1–.10 and the backends' .11–.250).
pub const ROUTER_BACKEND_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);
/// The gateway's `gwc` on the transit segment (with a router).
pub const GW_TRANSIT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 1);
/// The router's `rtg` on the transit segment.
pub const ROUTER_TRANSIT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
/// The client, backend and VIP subnets, for routes.
pub const CLIENT_NET: &str = "198.18.0.0/24";
pub const BACKEND_NET: &str = "198.18.1.0/24";
pub const VIP_NET: &str = "198.18.2.0/24";
/// The MSS a client behind a small-MTU link advertises anyway (as a host on
/// a 1500-byte LAN behind a tunnel does): 1500 − 40.
pub const CLIENT_ADVMSS: u16 = 1460;

/// Prefix length of every segment.
pub const PREFIX_LEN: u8 = 24;

/// First client host number: client `i` is 198.18.0.(2 + i).
const FIRST_CLIENT: u8 = 2;
/// First backend host number: backend `i` is 198.18.1.(11 + i); .2–.10 stay
/// free for extra gateways.
const FIRST_BACKEND: u8 = 11;
/// First VIP host number: VIP `i` is 198.18.2.(10 + i).
const FIRST_VIP: u8 = 10;

/// Most clients a lab can hold (host numbers .2 ..= .251).
pub const MAX_CLIENTS: usize = 250;
/// Most backends a lab can hold (host numbers .11 ..= .250).
pub const MAX_BACKENDS: usize = 240;
/// Most VIPs (host numbers .10 ..= .250).
pub const MAX_VIPS: usize = 241;

/// Address of client `i` (0-based).
///
/// # Panics
/// If `i >= MAX_CLIENTS`.
pub fn client_addr(i: usize) -> Ipv4Addr {
    assert!(i < MAX_CLIENTS, "client index {i} out of range");
    Ipv4Addr::new(198, 18, 0, FIRST_CLIENT + i as u8)
}

/// Address of backend `i` (0-based): `backend_addr(0)` is 198.18.1.11.
///
/// # Panics
/// If `i >= MAX_BACKENDS`.
pub fn backend_addr(i: usize) -> Ipv4Addr {
    assert!(i < MAX_BACKENDS, "backend index {i} out of range");
    Ipv4Addr::new(198, 18, 1, FIRST_BACKEND + i as u8)
}

/// VIP `i` (0-based): `vip(0)` is 198.18.2.10.
///
/// # Panics
/// If `i >= MAX_VIPS`.
pub fn vip(i: usize) -> Ipv4Addr {
    assert!(i < MAX_VIPS, "vip index {i} out of range");
    Ipv4Addr::new(198, 18, 2, FIRST_VIP + i as u8)
}

/// The lab's IPv6 twin of a lab IPv4 address: 198.18.N.H →
/// 2001:2:0:N::H, H written with the same decimal digits read as hex, so a
/// reader sees the same host number in both (198.18.1.11 ↔ 2001:2:0:1::11).
///
/// # Panics
/// If `v4` is not in 198.18.0.0/16 (not a lab address: a test bug).
pub fn v6_of(v4: Ipv4Addr) -> Ipv6Addr {
    let [a, b, n, h] = v4.octets();
    assert!(
        (a, b) == (198, 18),
        "{v4} is not a lab address (198.18.0.0/16)"
    );
    let host = u16::from_str_radix(&h.to_string(), 16).expect("decimal digits are hex digits");
    Ipv6Addr::new(0x2001, 2, 0, n as u16, 0, 0, 0, host)
}

/// The IPv6 twin of a lab IPv4 prefix (`"198.18.2.0/24"` →
/// `"2001:2:0:2::/64"`), for routes.
///
/// # Panics
/// If `net` is not a 198.18.N.0/24 prefix.
pub fn v6_net(net: &str) -> String {
    let (a, len) = net.split_once('/').expect("a prefix");
    assert_eq!(len, PREFIX_LEN.to_string(), "{net}: not a lab segment");
    let v4: Ipv4Addr = a.parse().expect("an IPv4 prefix");
    format!("2001:2:0:{:x}::/{PREFIX_LEN6}", v4.octets()[2])
}

/// Prefix length of every IPv6 segment.
pub const PREFIX_LEN6: u8 = 64;

/// IPv6 address of client `i` (0-based): 2001:2::2, ::3, …
pub fn client_addr6(i: usize) -> Ipv6Addr {
    v6_of(client_addr(i))
}

/// IPv6 address of backend `i` (0-based): 2001:2:0:1::11, ::12, …
pub fn backend_addr6(i: usize) -> Ipv6Addr {
    v6_of(backend_addr(i))
}

/// IPv6 VIP `i` (0-based): 2001:2:0:2::10, ::11, …
pub fn vip6(i: usize) -> Ipv6Addr {
    v6_of(vip(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(client_addr(0), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(backend_addr(0), Ipv4Addr::new(198, 18, 1, 11));
        assert_eq!(backend_addr(10), Ipv4Addr::new(198, 18, 1, 21));
        assert_eq!(vip(0), Ipv4Addr::new(198, 18, 2, 10));
        assert_eq!(client_addr(MAX_CLIENTS - 1), Ipv4Addr::new(198, 18, 0, 251));
        assert_eq!(
            backend_addr(MAX_BACKENDS - 1),
            Ipv4Addr::new(198, 18, 1, 250)
        );
        assert_eq!(vip(MAX_VIPS - 1), Ipv4Addr::new(198, 18, 2, 250));
    }

    #[test]
    fn ipv6_twins_keep_the_host_digits() {
        let p = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(client_addr6(0), p("2001:2::2"));
        assert_eq!(backend_addr6(0), p("2001:2:0:1::11"));
        assert_eq!(backend_addr6(MAX_BACKENDS - 1), p("2001:2:0:1::250"));
        assert_eq!(vip6(0), p("2001:2:0:2::10"));
        assert_eq!(v6_of(GW_CLIENT_ADDR), p("2001:2::1"));
        assert_eq!(v6_of(ROUTER_BACKEND_ADDR), p("2001:2:0:1::254"));
        assert_eq!(v6_net(VIP_NET), "2001:2:0:2::/64");
        assert_eq!(v6_net(CLIENT_NET), "2001:2:0:0::/64");
        // Inside the IPv6 benchmarking range 2001:2::/48.
        for a in [client_addr6(249), backend_addr6(0), vip6(240)] {
            assert_eq!(a.segments()[..3], [0x2001, 2, 0], "{a}");
        }
    }
}
