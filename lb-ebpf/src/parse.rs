//! Packet parsing: bounds-checked access, the headers, and each family's
//! checks up to TCP/UDP or an ICMP error, into one [`Parsed`] both
//! families share.
//!
//! Headers are declared with 2-byte alignment (addresses as `[u16; N]`):
//! after a 14-byte Ethernet header the IP header is only 2-aligned, and
//! halfword loads are what the BPF JIT can do there without splitting into
//! byte loads.
//!
//! IPv6 extension headers (RFC 8200 §4): hop-by-hop and destination
//! options are skipped as they are (a router forwards them untouched); a
//! routing header is skipped only when no segments are left (the
//! destination is final, so rewriting it is NAT and not a detour around
//! the source route); a fragment header with offset 0 and no more
//! fragments (an atomic fragment) is skipped, a first fragment to a VIP is
//! dropped (its later fragments carry no ports), later fragments pass.
//! Anything else before the L4 header (ESP, AH, an unknown header) means
//! the packet is not a TCP/UDP packet we can read, and it passes.
use aya_ebpf::programs::XdpContext;
use lb_common::{
    Addr6, FlowKey, FlowKey6, GlobalCounter, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IPIP,
    IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP, TAIL_UDP6,
};

use crate::{
    consts::*,
    family::{Family, Ipv4, Ipv6},
    host::may_be_backend,
    select::Flow,
};

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: [u16; 2],
    pub daddr: [u16; 2],
}

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

#[repr(C)]
pub struct TcpHdr {
    pub source: u16,
    pub dest: u16,
    pub seq: [u16; 2],
    pub ack_seq: [u16; 2],
    /// Data offset in the high nibble of the first byte.
    pub doff_res: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

#[repr(C)]
pub struct UdpHdr {
    pub source: u16,
    pub dest: u16,
    pub len: u16,
    pub check: u16,
}

#[repr(C)]
pub struct IcmpHdr {
    pub ty: u8,
    pub code: u8,
    pub check: u16,
    /// Unused, or (too big) the next-hop MTU.
    pub rest: [u16; 2],
}

/// The one bounds-checked way to the packet: `T` fits between `offset` and
/// the end of the frame, or `None`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// A u32 kept as two halfwords, in memory order (so network order stays).
#[inline(always)]
pub fn load32(p: &[u16; 2]) -> u32 {
    (p[0] as u32) | ((p[1] as u32) << 16)
}

#[inline(always)]
pub fn store32(p: &mut [u16; 2], v: u32) {
    p[0] = v as u16;
    p[1] = (v >> 16) as u16;
}

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

/// What the attached program makes of a frame before parsing it (see
/// `pipeline::entry`).
pub enum Entry {
    /// IPv6: the IPv6 program's (see `lb_common::TAIL_IPV6`).
    Ipv6,
    /// IPv4 with 20 bytes of IP header in the frame: the VIP prefilter is
    /// asked about its destination first.
    Ipv4(*const Ipv4Hdr),
    /// Not IP, or too short to tell (which the parse counts): the main
    /// program's, its prefilter unasked.
    Other,
}

#[inline(always)]
pub fn entry_of(ctx: &XdpContext) -> Entry {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return match ptr_at::<EthHdr>(ctx, 0) {
            // SAFETY: bounds checked by ptr_at.
            Some(eth) if (unsafe { (*eth).proto }) == BE_ETH_P_IPV6 => Entry::Ipv6,
            _ => Entry::Other,
        };
    };
    // SAFETY: ptr_at checked that Ethernet and 20 bytes of IP are there.
    match unsafe { (*(ctx.data() as *const EthHdr)).proto } {
        BE_ETH_P_IPV6 => Entry::Ipv6,
        BE_ETH_P_IP => Entry::Ipv4(ip),
        _ => Entry::Other,
    }
}

/// Whether an IPv4 TCP or UDP packet to no VIP (as the prefilter proved)
/// is transit traffic, to be passed before the parse (a UDP datagram is
/// spared its tail call too). Only a packet the parse would take as far as
/// its ports qualifies: its verdict then depends on its addresses alone
/// (to no VIP and from no backend: passed), as the parse's `L4` and
/// `Special` outcomes do; anything malformed before the ports is left to
/// the parse, which drops it (`Parsed::Malformed`) whatever its addresses.
/// So a packet to no VIP that is not transit and reaches the pipeline's
/// `balance` (well-formed) is one whose source the backends' prefilter
/// may hold.
#[inline(always)]
pub fn transit(ctx: &XdpContext, iph: &Ipv4Hdr) -> bool {
    let tot_len = u16::from_be(iph.tot_len) as usize;
    let frame_ip_len = ctx.data_end() - ctx.data() - ETH_HLEN;
    iph.ver_ihl == 0x45
        && iph.frag_off & BE_IP_OFFSET_MASK == 0
        && tot_len >= IPV4_MIN_HLEN
        && tot_len <= frame_ip_len
        && ptr_at::<[u16; 2]>(ctx, ETH_HLEN + IPV4_MIN_HLEN).is_some()
        && !may_be_backend(load32(&iph.saddr))
}

/// What parsing decided about a frame.
pub enum Parsed<F: Family> {
    /// A well-formed TCP segment or UDP datagram, neither fragmented nor
    /// carrying IPv4 options.
    L4(L4Packet<F>),
    /// Not ours to look at (not IP, an ICMPv6 message of the link): the
    /// kernel's.
    NotOurs,
    /// An IP packet of another protocol (or ICMP message) than the program
    /// handles, to `dst`: the kernel's, unless `dst` is a VIP address.
    Other { dst: F::Addr },
    /// An ICMP echo request: answered if to a VIP address whose pool can
    /// serve.
    Echo(EchoPacket<F>),
    /// Read as far as the ports, but not balanceable (IPv4 options, a
    /// first fragment, a TCP or UDP header cut short): passed unless
    /// addressed to a VIP, in which case it is dropped with `reason`.
    Special { key: F::Key, reason: GlobalCounter },
    /// A non-first fragment: no ports; its first fragment decided.
    Fragment(FragPacket<F>),
    /// Malformed at the IP layer (or too short to hold ports): dropped and
    /// counted under this reason, as the kernel's `ip_rcv` would.
    Malformed(GlobalCounter),
    /// An ICMP error quoting a TCP or UDP packet: may belong to a flow.
    IcmpError(IcmpPacket<F>),
    /// A fragmentation-needed (packet-too-big) quoting an outer packet of
    /// this family inside this family: may be about a tunnel pool's
    /// packet (`icmp::tunnel_too_big` reads it).
    TunnelTooBig,
    /// An ICMP error whose quoted packet cannot be read (cut short, IP
    /// options, extension headers): nobody's flow can be found from it,
    /// so it passes.
    IcmpUnparsed,
    /// An IPv6 extension header chain longer than we follow.
    ExtUnparsed,
    /// Another program's (a tail call to this `TAILS` slot).
    Tail(u32),
}

/// A TCP segment or UDP datagram, checked whole.
pub struct L4Packet<F: Family> {
    pub ip: *mut F::Hdr,
    /// The L4 header (TCP or UDP: both start with the ports).
    pub l4: *mut [u16; 2],
    /// The L4 checksum field.
    pub check: *mut u16,
    pub key: F::Key,
    /// TCP flags; 0 for UDP.
    pub flags: u8,
    /// Bytes from the IP header on (what counters count).
    pub ip_len: u16,
    /// Frame offset of the L4 header (after any extension headers).
    pub l4_off: usize,
    /// Bytes the L4 checksum covers (TCP: the segment; UDP: its length
    /// field, which may be less than the IP payload).
    pub l4_len: u16,
    /// IPv6 extension headers were skipped to reach the L4 header.
    pub ext_headers: bool,
    /// The first fragment of a datagram with this identification (as
    /// loaded): its L4 checksum covers the whole datagram, and the
    /// fragments after it follow its decision.
    pub fragment: Option<u32>,
}

impl<F: Family> L4Packet<F> {
    #[inline(always)]
    pub fn udp(&self) -> bool {
        self.key.proto() == IPPROTO_UDP
    }

    #[inline(always)]
    pub fn hdr(&self) -> &F::Hdr {
        // SAFETY: bounds-checked by the parse.
        unsafe { &*self.ip }
    }
}

/// An ICMP error quoting a TCP or UDP packet: outer header, ICMP header,
/// quoted IP header and ports.
pub struct IcmpPacket<F: Family> {
    pub ip: *mut F::Hdr,
    pub icmp: *mut IcmpHdr,
    pub inner: *mut F::Hdr,
    pub inner_ports: *mut [u16; 2],
}

/// A datagram's later fragment: no L4 header, only its IP header.
pub struct FragPacket<F: Family> {
    pub ip: *mut F::Hdr,
    /// The identification, as loaded.
    pub id: u32,
    /// The datagram's protocol.
    pub proto: u8,
}

/// An ICMP echo request (its header checked present).
pub struct EchoPacket<F: Family> {
    pub ip: *mut F::Hdr,
    pub icmp: *mut IcmpHdr,
}

/// `UDP`: the IPv4 UDP program's parse (UDP only; everything else is the
/// main program's). Otherwise TCP and ICMP; UDP is `NotOurs` here, as the
/// main program hands UDP to its own program before parsing.
#[inline(always)]
pub fn ipv4<const UDP: bool>(ctx: &XdpContext) -> Parsed<Ipv4> {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Malformed(GlobalCounter::DropTruncatedEth);
    };
    // SAFETY: ptr_at checked the header is inside the frame.
    if unsafe { (*eth).proto } != BE_ETH_P_IP {
        return Parsed::NotOurs;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Parsed::Malformed(GlobalCounter::DropTruncatedIp);
    };
    // SAFETY: as above.
    let iph = unsafe { &*ip };
    if iph.ver_ihl >> 4 != 4 {
        return Parsed::Malformed(GlobalCounter::DropBadIpVersion);
    }
    let ihl = ((iph.ver_ihl & 0x0f) as usize) * 4;
    if ihl < IPV4_MIN_HLEN {
        return Parsed::Malformed(GlobalCounter::DropBadIhl);
    }
    let tot_len = u16::from_be(iph.tot_len) as usize;
    let frame_ip_len = ctx.data_end() - ctx.data() - ETH_HLEN;
    if tot_len < ihl || tot_len > frame_ip_len {
        return Parsed::Malformed(GlobalCounter::DropBadTotalLength);
    }
    // A later fragment of any protocol: its first fragment decided.
    if iph.frag_off & BE_IP_OFFSET_MASK != 0 {
        return Parsed::Fragment(FragPacket {
            ip,
            id: iph.id as u32,
            proto: iph.proto,
        });
    }
    let other = Parsed::Other {
        dst: load32(&iph.daddr),
    };
    if !UDP && iph.proto == IPPROTO_ICMP {
        if iph.frag_off & (BE_IP_MF | BE_IP_OFFSET_MASK) != 0 || ihl != IPV4_MIN_HLEN {
            return other;
        }
        return icmp4(ctx, ip, tot_len);
    }
    // A constant for each program, so every later `udp()` test folds away
    // at compile time.
    let l4_proto = if UDP { IPPROTO_UDP } else { IPPROTO_TCP };
    if iph.proto != l4_proto {
        return other;
    }
    let saddr = load32(&iph.saddr);
    let daddr = load32(&iph.daddr);
    // verifier: ihl is masked to at most 60, so the offset is bounded.
    let Some(ports) = ptr_at::<[u16; 2]>(ctx, ETH_HLEN + (ihl & 0x3c)) else {
        // Not even ports: garbage wherever it is addressed.
        return Parsed::Malformed(GlobalCounter::DropTruncatedTcp);
    };
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { *ports };
    let key = FlowKey {
        src_addr: saddr,
        dst_addr: daddr,
        src_port: ports[0],
        dst_port: ports[1],
        proto: l4_proto,
        _pad: [0; 3],
    };
    // Defects past the ports matter only if the packet is for a VIP; a
    // router forwards them for everyone else, so those pass.
    if ihl != IPV4_MIN_HLEN {
        return Parsed::Special {
            key,
            reason: GlobalCounter::DropIpOptions,
        };
    }
    let l4_off = ETH_HLEN + IPV4_MIN_HLEN;
    // The UDP length must fit the IP payload (the kernel trims any excess,
    // as `udp_rcv` does).
    let l4_room = tot_len - IPV4_MIN_HLEN;
    let fragment = (iph.frag_off & BE_IP_MF != 0).then_some(iph.id as u32);
    l4::<Ipv4, UDP>(ctx, ip, key, tot_len, l4_off, l4_room, false, fragment)
}

/// The TCP or UDP header at `off` of a packet whose IP layer was checked,
/// `l4_room` bytes from there to the end of the IP payload; `fragment`:
/// the first fragment of a datagram (a UDP length then covers the whole
/// datagram, more than this fragment holds).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn l4<F: Family, const UDP: bool>(
    ctx: &XdpContext,
    ip: *mut F::Hdr,
    key: F::Key,
    ip_len: usize,
    off: usize,
    l4_room: usize,
    ext_headers: bool,
    fragment: Option<u32>,
) -> Parsed<F> {
    if UDP {
        let truncated = Parsed::Special {
            key,
            reason: GlobalCounter::DropTruncatedUdp,
        };
        let Some(udp) = ptr_at::<UdpHdr>(ctx, off) else {
            return truncated;
        };
        // SAFETY: bounds checked by ptr_at.
        let (len, check) = unsafe { (u16::from_be((*udp).len) as usize, (*udp).check) };
        if len < UDP_HLEN || (len > l4_room && fragment.is_none()) {
            return truncated;
        }
        if !F::UDP_CHECKSUM_OPTIONAL && check == 0 {
            return Parsed::Special {
                key,
                reason: GlobalCounter::DropUdp6ZeroChecksum,
            };
        }
        return Parsed::L4(L4Packet {
            ip,
            l4: udp as *mut [u16; 2],
            check: unsafe { core::ptr::addr_of_mut!((*udp).check) },
            key,
            flags: 0,
            ip_len: ip_len as u16,
            l4_off: off,
            l4_len: len as u16,
            ext_headers,
            fragment,
        });
    }
    let truncated = Parsed::Special {
        key,
        reason: GlobalCounter::DropTruncatedTcp,
    };
    if l4_room < TCP_MIN_HLEN {
        return truncated;
    }
    let Some(tcp) = ptr_at::<TcpHdr>(ctx, off) else {
        return truncated;
    };
    // SAFETY: bounds checked by ptr_at.
    let tcph = unsafe { &*tcp };
    let doff = ((tcph.doff_res >> 4) as usize) * 4;
    if doff < TCP_MIN_HLEN || doff > l4_room {
        return truncated;
    }
    Parsed::L4(L4Packet {
        ip,
        l4: tcp as *mut [u16; 2],
        check: unsafe { core::ptr::addr_of_mut!((*tcp).check) },
        key,
        flags: tcph.flags,
        ip_len: ip_len as u16,
        l4_off: off,
        l4_len: l4_room as u16,
        ext_headers,
        fragment,
    })
}

/// Where an ICMP error's quoted header starts, from the frame's start.
pub const ICMP_INNER_OFF: usize = ETH_HLEN + IPV4_MIN_HLEN + ICMP_HLEN;

/// The ICMP message of an IPv4 packet whose header `ipv4` checked (no
/// options, not a fragment, `tot_len` within the frame).
#[inline(always)]
fn icmp4(ctx: &XdpContext, ip: *mut Ipv4Hdr, tot_len: usize) -> Parsed<Ipv4> {
    let Some(icmp) = ptr_at::<IcmpHdr>(ctx, ETH_HLEN + IPV4_MIN_HLEN) else {
        return Parsed::NotOurs;
    };
    // SAFETY: bounds checked by ptr_at.
    let ty = unsafe { (*icmp).ty };
    if ty == Ipv4::ECHO_REQUEST {
        return Parsed::Echo(EchoPacket { ip, icmp });
    }
    let other = Parsed::Other {
        // SAFETY: `ipv4` checked the header.
        dst: load32(unsafe { &(*ip).daddr }),
    };
    if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED {
        return other;
    }
    // The quoted header must be whole and without options, and its ports
    // present: RFC 792 quotes the header and 64 bits of data.
    if tot_len < IPV4_MIN_HLEN + ICMP_HLEN + IPV4_MIN_HLEN + 8 {
        return Parsed::IcmpUnparsed;
    }
    let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, ICMP_INNER_OFF) else {
        return Parsed::IcmpUnparsed;
    };
    let Some(inner_ports) = ptr_at::<[u16; 2]>(ctx, ICMP_INNER_OFF + IPV4_MIN_HLEN) else {
        return Parsed::IcmpUnparsed;
    };
    // SAFETY: bounds checked by ptr_at.
    let (ver_ihl, proto) = unsafe { ((*inner).ver_ihl, (*inner).proto) };
    if ver_ihl != 0x45 {
        return Parsed::IcmpUnparsed;
    }
    if proto == IPPROTO_IPIP && ty == ICMP_DEST_UNREACH {
        // SAFETY: bounds checked by ptr_at above.
        if unsafe { (*icmp).code } == ICMP_FRAG_NEEDED {
            return Parsed::TunnelTooBig;
        }
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return other;
    }
    Parsed::IcmpError(IcmpPacket {
        ip,
        icmp,
        inner,
        inner_ports,
    })
}

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers followed before giving up (a hop-by-hop, a
/// destination options, a routing and a fragment header is the longest
/// chain RFC 8200 §4.1 recommends, less its second destination options).
const MAX_EXT_HEADERS: usize = 4;

/// `UDP`: the IPv6 UDP program's parse (UDP only); otherwise TCP and
/// ICMPv6, with UDP handed on (`Parsed::Tail`). As for IPv4, the protocol
/// is a constant in each program, so its tests fold away.
#[inline(always)]
pub fn ipv6<const UDP: bool>(ctx: &XdpContext) -> Parsed<Ipv6> {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else {
        return Parsed::Malformed(GlobalCounter::DropTruncatedIp);
    };
    // SAFETY: ptr_at checked the header is inside the frame.
    let iph = unsafe { &*ip };
    if (iph.vtc_flow[0] as u8) >> 4 != 6 {
        return Parsed::Malformed(GlobalCounter::DropBadIpVersion);
    }
    let payload_len = u16::from_be(iph.payload_len) as usize;
    let frame_ip_len = ctx.data_end() - ctx.data() - ETH_HLEN;
    if IPV6_HLEN + payload_len > frame_ip_len {
        return Parsed::Malformed(GlobalCounter::DropBadTotalLength);
    }
    let ip_len = IPV6_HLEN + payload_len;
    let mut next = iph.nexthdr;
    if !UDP && next == IPPROTO_ICMPV6 {
        return icmp6(ctx, ip, payload_len);
    }
    let mut off = ETH_HLEN + IPV6_HLEN;
    let mut reason = None;
    let mut skipped = false;
    let mut fragment = None;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_DEST | NEXTHDR_ROUTING => {
                // Next header, length in 8-octet units less one, and (for
                // routing) type and segments left.
                let Some(h) = ptr_at::<[u8; 4]>(ctx, off) else {
                    return Parsed::Malformed(GlobalCounter::DropIpv6Extension);
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
                    return Parsed::Malformed(GlobalCounter::DropIpv6Extension);
                };
                // SAFETY: bounds checked by ptr_at.
                let h = unsafe { *h };
                let frag = u16::from_be(h[1]);
                let id = load32(&[h[2], h[3]]);
                if frag & 0xfff8 != 0 {
                    return Parsed::Fragment(FragPacket {
                        ip,
                        id,
                        proto: h[0] as u8,
                    });
                }
                if frag & 1 != 0 {
                    fragment = Some(id);
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
        return Parsed::ExtUnparsed;
    }
    if next == IPPROTO_UDP && !UDP {
        return Parsed::Tail(TAIL_UDP6);
    }
    let l4_proto = if UDP { IPPROTO_UDP } else { IPPROTO_TCP };
    if next != l4_proto {
        return Parsed::Other {
            dst: load_addr6(&iph.daddr),
        };
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
        return Parsed::Malformed(if UDP {
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
        return Parsed::Special { key, reason };
    }
    // Bytes from the L4 header to the end of the IPv6 payload.
    let l4_room = (ETH_HLEN + ip_len).saturating_sub(off);
    l4::<Ipv6, UDP>(ctx, ip, key, ip_len, off, l4_room, skipped, fragment)
}

/// The ICMPv6 program's parse: an ICMPv6 error right after the IPv6
/// header (`ipv6` sent the frame there only if so).
#[inline(always)]
pub fn icmp6_only(ctx: &XdpContext) -> Parsed<Ipv6> {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else {
        return Parsed::NotOurs;
    };
    // SAFETY: bounds checked by ptr_at.
    let (next, payload_len) = unsafe { ((*ip).nexthdr, u16::from_be((*ip).payload_len) as usize) };
    if next != IPPROTO_ICMPV6 || IPV6_HLEN + payload_len > ctx.data_end() - ctx.data() - ETH_HLEN {
        return Parsed::NotOurs;
    }
    icmp6(ctx, ip, payload_len)
}

/// Where an ICMPv6 error's quoted header starts.
pub const ICMP6_INNER_OFF: usize = ETH_HLEN + IPV6_HLEN + ICMP_HLEN;

/// An ICMPv6 message directly after the IPv6 header.
#[inline(always)]
fn icmp6(ctx: &XdpContext, ip: *mut Ipv6Hdr, payload_len: usize) -> Parsed<Ipv6> {
    let Some(icmp) = ptr_at::<IcmpHdr>(ctx, ETH_HLEN + IPV6_HLEN) else {
        return Parsed::NotOurs;
    };
    // SAFETY: bounds checked by ptr_at.
    let ty = unsafe { (*icmp).ty };
    if ty == Ipv6::ECHO_REQUEST {
        return Parsed::Echo(EchoPacket { ip, icmp });
    }
    // Neighbour discovery and router traffic are informational (type ≥
    // 128) and of the link: the kernel's.
    if ty != ICMPV6_DEST_UNREACH && ty != ICMPV6_PKT_TOOBIG && ty != ICMPV6_TIME_EXCEED {
        return Parsed::NotOurs;
    }
    if payload_len < ICMP_HLEN + IPV6_HLEN + 8 {
        return Parsed::IcmpUnparsed;
    }
    let Some(inner) = ptr_at::<Ipv6Hdr>(ctx, ICMP6_INNER_OFF) else {
        return Parsed::IcmpUnparsed;
    };
    let Some(inner_ports) = ptr_at::<[u16; 2]>(ctx, ICMP6_INNER_OFF + IPV6_HLEN) else {
        return Parsed::IcmpUnparsed;
    };
    // SAFETY: bounds checked by ptr_at.
    let (version, next) = unsafe { ((*inner).vtc_flow[0] as u8 >> 4, (*inner).nexthdr) };
    if version != 6 {
        return Parsed::IcmpUnparsed;
    }
    if next == IPPROTO_IPV6 && ty == ICMPV6_PKT_TOOBIG {
        return Parsed::TunnelTooBig;
    }
    if next != IPPROTO_TCP && next != IPPROTO_UDP {
        // Behind extension headers, or another protocol: not a flow of
        // ours we could find.
        return Parsed::IcmpUnparsed;
    }
    Parsed::IcmpError(IcmpPacket {
        ip,
        icmp,
        inner,
        inner_ports,
    })
}
