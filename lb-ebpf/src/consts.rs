//! Protocol constants, pre-swapped where the packet holds them in network
//! order, so the hot path compares raw loads without a byte swap (as
//! Katran's `BE_ETH_P_IP`).

/// ETH_P_IP (0x0800) as a little-endian load of the big-endian field sees it.
pub const BE_ETH_P_IP: u16 = 0x0800u16.to_be();
pub const BE_ETH_P_IPV6: u16 = 0x86ddu16.to_be();

pub const ETH_HLEN: usize = 14;
pub const IPV4_MIN_HLEN: usize = 20;
pub const TCP_MIN_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const IPV6_HLEN: usize = 40;
pub const ICMP_HLEN: usize = 8;

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PORT_UNREACH: u8 = 3;

pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PKT_TOOBIG: u8 = 2;
pub const ICMPV6_TIME_EXCEED: u8 = 3;
pub const ICMPV6_PORT_UNREACH: u8 = 4;

/// frag_off bits, network order as loaded: "more fragments" and the offset.
pub const BE_IP_MF: u16 = 0x2000u16.to_be();
pub const BE_IP_OFFSET_MASK: u16 = 0x1fffu16.to_be();
pub const BE_IP_DF: u16 = 0x4000u16.to_be();

/// TTL of packets the program originates (RSTs, ICMP errors), as Linux's
/// default `ip_default_ttl`.
pub const ORIGIN_TTL: u8 = 64;

/// TCP flag bits in the byte after the data offset.
pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// A packet whose TTL would expire here goes to the kernel, which sends the
/// ICMP time-exceeded a router owes the sender.
pub const MIN_FORWARD_TTL: u8 = 2;
