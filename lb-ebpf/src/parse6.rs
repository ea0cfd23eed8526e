//! IPv6 parsing: the fixed header, the extension headers we may skip, and
//! TCP/UDP or an ICMPv6 error behind them.
//!
//! Extension headers (RFC 8200 §4): hop-by-hop and destination options are
//! skipped as they are (a router forwards them untouched); a routing header
//! is skipped only when no segments are left (the destination is final, so
//! rewriting it is NAT and not a detour around the source route); a
//! fragment header with offset 0 and no more fragments (an atomic
//! fragment) is skipped, a first fragment to a VIP is dropped (its later
//! fragments carry no ports), later fragments pass. Anything else before
//! the L4 header (ESP, AH, an unknown header) means the packet is not a
//! TCP/UDP packet we can read, and it passes.
use aya_ebpf::programs::XdpContext;
use lb_common::{Addr6, FlowKey6, GlobalCounter, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    consts::*,
    parse::{load32, ptr_at, store32, IcmpHdr, TcpHdr, UdpHdr},
};

#[repr(C)]
pub struct Ipv6Hdr {
    /// Version, traffic class, flow label.
    pub vtc_flow: [u16; 2],
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u16; 8],
    pub daddr: [u16; 8],
}

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers followed before giving up (a hop-by-hop, a
/// destination options, a routing and a fragment header is the longest
/// chain RFC 8200 §4.1 recommends, less its second destination options).
const MAX_EXT_HEADERS: usize = 4;

#[inline(always)]
pub fn load_addr6(a: &[u16; 8]) -> Addr6 {
    Addr6 {
        words: [
            load32(&[a[0], a[1]]),
            load32(&[a[2], a[3]]),
            load32(&[a[4], a[5]]),
            load32(&[a[6], a[7]]),
        ],
    }
}

#[inline(always)]
pub fn store_addr6(a: &mut [u16; 8], v: &Addr6) {
    let mut w = [0u16; 2];
    let mut i = 0;
    while i < 4 {
        store32(&mut w, v.words[i]);
        a[2 * i] = w[0];
        a[2 * i + 1] = w[1];
        i += 1;
    }
}

/// An IPv6 TCP segment or UDP datagram, checked whole.
pub struct L4Packet6 {
    pub ip: *mut Ipv6Hdr,
    pub l4: *mut [u16; 2],
    pub check: *mut u16,
    pub key: FlowKey6,
    /// TCP flags; 0 for UDP.
    pub flags: u8,
    /// Bytes from the IPv6 header on.
    pub ip_len: u16,
    /// Frame offset of the L4 header (after any extension headers).
    pub l4_off: usize,
    /// Bytes the L4 checksum covers.
    pub l4_len: u16,
    /// Extension headers were skipped to reach the L4 header.
    pub ext_headers: bool,
}

impl L4Packet6 {
    #[inline(always)]
    pub fn udp(&self) -> bool {
        self.key.proto == IPPROTO_UDP
    }
}

/// An ICMPv6 error (destination unreachable, packet too big, time
/// exceeded) quoting an IPv6 TCP/UDP packet with no extension headers.
pub struct Icmp6Packet {
    pub ip: *mut Ipv6Hdr,
    pub icmp: *mut IcmpHdr,
    pub inner: *mut Ipv6Hdr,
    pub inner_ports: *mut [u16; 2],
}

pub enum Parsed6 {
    L4(L4Packet6),
    /// Not TCP/UDP (or behind a header we do not read): the kernel's.
    NotOurs,
    /// Read as far as the ports, but not balanceable: dropped with
    /// `reason` if addressed to a VIP, passed otherwise.
    Special {
        key: FlowKey6,
        reason: GlobalCounter,
    },
    LaterFragment,
    Malformed(GlobalCounter),
    IcmpError(Icmp6Packet),
    IcmpUnparsed,
    /// An extension header chain longer than we follow.
    ExtUnparsed,
    /// UDP, seen by the TCP program: the UDP program's.
    Udp,
}

/// Where an ICMPv6 error's quoted header starts.
pub const ICMP6_INNER_OFF: usize = ETH_HLEN + IPV6_HLEN + ICMP_HLEN;

/// `UDP`: the IPv6 UDP program's parse (UDP only); otherwise TCP and
/// ICMPv6, with UDP handed on (`Parsed6::Udp`). As for IPv4, the protocol
/// is a constant in each program, so its tests fold away.
#[inline(always)]
pub fn parse6<const UDP: bool>(ctx: &XdpContext) -> Parsed6 {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else {
        return Parsed6::Malformed(GlobalCounter::DropTruncatedIp);
    };
    // SAFETY: ptr_at checked the header is inside the frame.
    let iph = unsafe { &*ip };
    if (iph.vtc_flow[0] as u8) >> 4 != 6 {
        return Parsed6::Malformed(GlobalCounter::DropBadIpVersion);
    }
    let payload_len = u16::from_be(iph.payload_len) as usize;
    let frame_ip_len = ctx.data_end() - ctx.data() - ETH_HLEN;
    if IPV6_HLEN + payload_len > frame_ip_len {
        return Parsed6::Malformed(GlobalCounter::DropBadTotalLength);
    }
    let ip_len = IPV6_HLEN + payload_len;
    let mut next = iph.nexthdr;
    if !UDP && next == IPPROTO_ICMPV6 {
        return parse_icmp6(ctx, ip, payload_len);
    }
    let mut off = ETH_HLEN + IPV6_HLEN;
    let mut reason = None;
    let mut skipped = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_DEST | NEXTHDR_ROUTING => {
                // Next header, length in 8-octet units less one, and (for
                // routing) type and segments left.
                let Some(h) = ptr_at::<[u8; 4]>(ctx, off) else {
                    return Parsed6::Malformed(GlobalCounter::DropIpv6Extension);
                };
                // SAFETY: bounds checked by ptr_at.
                let h = unsafe { *h };
                if next == NEXTHDR_ROUTING && h[3] != 0 {
                    reason = Some(GlobalCounter::DropIpv6Extension);
                }
                next = h[0];
                off += (h[1] as usize + 1) * 8;
                skipped = true;
            }
            NEXTHDR_FRAGMENT => {
                let Some(h) = ptr_at::<[u16; 4]>(ctx, off) else {
                    return Parsed6::Malformed(GlobalCounter::DropIpv6Extension);
                };
                // SAFETY: bounds checked by ptr_at.
                let h = unsafe { *h };
                let frag = u16::from_be(h[1]);
                if frag & 0xfff8 != 0 {
                    return Parsed6::LaterFragment;
                }
                if frag & 1 != 0 {
                    reason = Some(GlobalCounter::DropFragment);
                }
                next = h[0] as u8;
                off += 8;
                skipped = true;
            }
            _ => break,
        }
    }
    if next == NEXTHDR_HOP
        || next == NEXTHDR_DEST
        || next == NEXTHDR_ROUTING
        || next == NEXTHDR_FRAGMENT
    {
        return Parsed6::ExtUnparsed;
    }
    if next == IPPROTO_UDP && !UDP {
        return Parsed6::Udp;
    }
    let l4_proto = if UDP { IPPROTO_UDP } else { IPPROTO_TCP };
    if next != l4_proto {
        return Parsed6::NotOurs;
    }
    // verifier: every chain of extension headers would otherwise reach
    // this point with its own offset, and the rest of the program would be
    // verified once per chain (it ran out of its budget). Laundered through
    // an opaque value the verifier cannot see through (x ^ s ^ s, with s
    // from the context), every chain arrives with one offset range and the
    // rest is verified once. The chain added at most 4 × 2048 bytes.
    let salt = ctx.ingress_ifindex() as usize;
    let ext_len = core::hint::black_box((off - ETH_HLEN - IPV6_HLEN) ^ salt) ^ salt;
    let off = ETH_HLEN + IPV6_HLEN + (ext_len & 0x3fff);
    let Some(ports) = ptr_at::<[u16; 2]>(ctx, off) else {
        return Parsed6::Malformed(if UDP {
            GlobalCounter::DropTruncatedUdp
        } else {
            GlobalCounter::DropTruncatedTcp
        });
    };
    // SAFETY: bounds checked by ptr_at.
    let p = unsafe { *ports };
    let key = FlowKey6 {
        src_addr: load_addr6(&iph.saddr),
        dst_addr: load_addr6(&iph.daddr),
        src_port: p[0],
        dst_port: p[1],
        proto: l4_proto,
        _pad: [0; 3],
    };
    if let Some(reason) = reason {
        return Parsed6::Special { key, reason };
    }
    // Bytes from the L4 header to the end of the IPv6 payload.
    let l4_room = (ETH_HLEN + ip_len).saturating_sub(off);
    if UDP {
        let truncated = Parsed6::Special {
            key,
            reason: GlobalCounter::DropTruncatedUdp,
        };
        let Some(udp) = ptr_at::<UdpHdr>(ctx, off) else {
            return truncated;
        };
        // SAFETY: bounds checked by ptr_at.
        let (len, check) = unsafe { (u16::from_be((*udp).len) as usize, (*udp).check) };
        if len < UDP_HLEN || len > l4_room {
            return truncated;
        }
        if check == 0 {
            return Parsed6::Special {
                key,
                reason: GlobalCounter::DropUdp6ZeroChecksum,
            };
        }
        return Parsed6::L4(L4Packet6 {
            ip,
            l4: udp as *mut [u16; 2],
            check: unsafe { core::ptr::addr_of_mut!((*udp).check) },
            key,
            flags: 0,
            ip_len: ip_len as u16,
            l4_off: off,
            l4_len: len as u16,
            ext_headers: skipped,
        });
    }
    let truncated = Parsed6::Special {
        key,
        reason: GlobalCounter::DropTruncatedTcp,
    };
    let Some(tcp) = ptr_at::<TcpHdr>(ctx, off) else {
        return truncated;
    };
    // SAFETY: bounds checked by ptr_at.
    let tcph = unsafe { &*tcp };
    let doff = ((tcph.doff_res >> 4) as usize) * 4;
    if doff < TCP_MIN_HLEN || doff > l4_room {
        return truncated;
    }
    Parsed6::L4(L4Packet6 {
        ip,
        l4: tcp as *mut [u16; 2],
        check: unsafe { core::ptr::addr_of_mut!((*tcp).check) },
        key,
        flags: tcph.flags,
        ip_len: ip_len as u16,
        l4_off: off,
        l4_len: l4_room as u16,
        ext_headers: skipped,
    })
}

/// The ICMPv6 program's parse: an ICMPv6 error right after the IPv6
/// header, or `None` (`parse6` already sent the frame here only if so).
#[inline(always)]
pub fn icmp6_only(ctx: &XdpContext) -> Parsed6 {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else {
        return Parsed6::NotOurs;
    };
    // SAFETY: bounds checked by ptr_at.
    let (next, payload_len) = unsafe { ((*ip).nexthdr, u16::from_be((*ip).payload_len) as usize) };
    if next != IPPROTO_ICMPV6 || IPV6_HLEN + payload_len > ctx.data_end() - ctx.data() - ETH_HLEN {
        return Parsed6::NotOurs;
    }
    parse_icmp6(ctx, ip, payload_len)
}

/// An ICMPv6 message directly after the IPv6 header.
#[inline(always)]
fn parse_icmp6(ctx: &XdpContext, ip: *mut Ipv6Hdr, payload_len: usize) -> Parsed6 {
    let Some(icmp) = ptr_at::<IcmpHdr>(ctx, ETH_HLEN + IPV6_HLEN) else {
        return Parsed6::NotOurs;
    };
    // SAFETY: bounds checked by ptr_at.
    let ty = unsafe { (*icmp).ty };
    // Neighbour discovery, router traffic and echo are informational
    // (type ≥ 128): the kernel's.
    if ty != ICMPV6_DEST_UNREACH && ty != ICMPV6_PKT_TOOBIG && ty != ICMPV6_TIME_EXCEED {
        return Parsed6::NotOurs;
    }
    if payload_len < ICMP_HLEN + IPV6_HLEN + 8 {
        return Parsed6::IcmpUnparsed;
    }
    let Some(inner) = ptr_at::<Ipv6Hdr>(ctx, ICMP6_INNER_OFF) else {
        return Parsed6::IcmpUnparsed;
    };
    let Some(inner_ports) = ptr_at::<[u16; 2]>(ctx, ICMP6_INNER_OFF + IPV6_HLEN) else {
        return Parsed6::IcmpUnparsed;
    };
    // SAFETY: bounds checked by ptr_at.
    let (version, next) = unsafe { ((*inner).vtc_flow[0] as u8 >> 4, (*inner).nexthdr) };
    if version != 6 {
        return Parsed6::IcmpUnparsed;
    }
    if next != IPPROTO_TCP && next != IPPROTO_UDP {
        // Behind extension headers, or another protocol: not a flow of
        // ours we could find.
        return Parsed6::IcmpUnparsed;
    }
    Parsed6::IcmpError(Icmp6Packet {
        ip,
        icmp,
        inner,
        inner_ports,
    })
}
