//! Packet parsing: bounds-checked access and the IPv4 TCP/UDP header
//! checks (IPv6 is `parse6`).
//!
//! Headers are declared with 2-byte alignment (addresses as `[u16; 2]`):
//! after a 14-byte Ethernet header the IP header is only 2-aligned, and
//! halfword loads are what the BPF JIT can do there without splitting into
//! byte loads.
use aya_ebpf::programs::XdpContext;
use lb_common::{FlowKey, GlobalCounter, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::consts::*;

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

/// Which program a frame is for (see `lb_common::TAIL_IPV6`).
pub enum Family {
    Ipv6,
    Udp4,
    /// IPv4 TCP, ICMP, anything else, and frames too short to tell (which
    /// `parse` counts).
    Main,
}

#[inline(always)]
pub fn family(ctx: &XdpContext) -> Family {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return match ptr_at::<EthHdr>(ctx, 0) {
            // SAFETY: bounds checked by ptr_at.
            Some(eth) if (unsafe { (*eth).proto }) == BE_ETH_P_IPV6 => Family::Ipv6,
            _ => Family::Main,
        };
    };
    // SAFETY: ptr_at checked that Ethernet and 20 bytes of IP are there.
    let proto = unsafe { (*(ctx.data() as *const EthHdr)).proto };
    if proto == BE_ETH_P_IPV6 {
        return Family::Ipv6;
    }
    // SAFETY: as above.
    if proto == BE_ETH_P_IP && unsafe { (*ip).proto } == IPPROTO_UDP {
        return Family::Udp4;
    }
    Family::Main
}

/// What parsing decided about a frame.
pub enum Parsed {
    /// A well-formed IPv4 TCP or UDP packet without options or
    /// fragmentation.
    L4(L4Packet),
    /// Not ours to look at (not IP, not TCP or UDP): the kernel's.
    NotTcp,
    /// IPv4 with options, a first fragment, or a TCP header that is cut
    /// short or has a bad data offset: passed unless addressed to a VIP, in
    /// which case it is dropped with `reason` (it cannot be balanced safely).
    Special { key: FlowKey, reason: GlobalCounter },
    /// A non-first fragment: no ports to match, so it passes.
    LaterFragment,
    /// Malformed at the IP layer (or too short to hold ports): dropped and
    /// counted under this reason. The kernel's `ip_rcv` drops these too.
    Malformed(GlobalCounter),
    /// An ICMP error quoting an IPv4 TCP or UDP packet: may belong to a
    /// flow.
    IcmpError(IcmpPacket),
    /// An ICMP error whose quoted packet cannot be read (cut short, IP
    /// options, not IPv4): nobody's flow can be found from it, so it passes.
    IcmpUnparsed,
}

/// A TCP segment or UDP datagram, checked whole.
pub struct L4Packet {
    pub ip: *mut Ipv4Hdr,
    /// The L4 header (TCP or UDP: both start with the ports).
    pub l4: *mut [u16; 2],
    /// The L4 checksum field.
    pub check: *mut u16,
    pub key: FlowKey,
    /// TCP flags; 0 for UDP.
    pub flags: u8,
    /// Bytes from the IP header on (what counters count).
    pub ip_len: u16,
    /// Bytes the L4 checksum covers (TCP: the segment; UDP: its length
    /// field, which may be less than the IP payload).
    pub l4_len: u16,
}

impl L4Packet {
    #[inline(always)]
    pub fn udp(&self) -> bool {
        self.key.proto == IPPROTO_UDP
    }
}

#[inline(always)]
/// `UDP`: the IPv4 UDP program's parse (UDP only; everything else is the
/// main program's). Otherwise TCP and ICMP; UDP is `NotTcp` here, as the
/// main program hands UDP to its own program before parsing.
pub fn parse<const UDP: bool>(ctx: &XdpContext) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Malformed(GlobalCounter::DropTruncatedEth);
    };
    // SAFETY: ptr_at checked the header is inside the frame.
    if unsafe { (*eth).proto } != BE_ETH_P_IP {
        return Parsed::NotTcp;
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
    if !UDP && iph.proto == IPPROTO_ICMP {
        if iph.frag_off & (BE_IP_MF | BE_IP_OFFSET_MASK) != 0 || ihl != IPV4_MIN_HLEN {
            return Parsed::NotTcp;
        }
        return parse_icmp(ctx, ip, tot_len);
    }
    // A constant for each program, so every later `udp()` test folds away
    // at compile time.
    let l4_proto = if UDP { IPPROTO_UDP } else { IPPROTO_TCP };
    if iph.proto != l4_proto {
        return Parsed::NotTcp;
    }
    if iph.frag_off & BE_IP_OFFSET_MASK != 0 {
        return Parsed::LaterFragment;
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
    if iph.frag_off & BE_IP_MF != 0 {
        return Parsed::Special {
            key,
            reason: GlobalCounter::DropFragment,
        };
    }
    if ihl != IPV4_MIN_HLEN {
        return Parsed::Special {
            key,
            reason: GlobalCounter::DropIpOptions,
        };
    }
    if UDP {
        return parse_udp(ctx, ip, key, tot_len);
    }
    let truncated = Parsed::Special {
        key,
        reason: GlobalCounter::DropTruncatedTcp,
    };
    if tot_len < IPV4_MIN_HLEN + TCP_MIN_HLEN {
        return truncated;
    }
    let Some(tcp) = ptr_at::<TcpHdr>(ctx, ETH_HLEN + IPV4_MIN_HLEN) else {
        return truncated;
    };
    // SAFETY: bounds checked by ptr_at.
    let tcph = unsafe { &*tcp };
    let doff = ((tcph.doff_res >> 4) as usize) * 4;
    if doff < TCP_MIN_HLEN || doff > tot_len - IPV4_MIN_HLEN {
        return truncated;
    }
    Parsed::L4(L4Packet {
        ip,
        l4: tcp as *mut [u16; 2],
        check: unsafe { core::ptr::addr_of_mut!((*tcp).check) },
        key,
        flags: tcph.flags,
        ip_len: tot_len as u16,
        l4_len: (tot_len - IPV4_MIN_HLEN) as u16,
    })
}

/// The UDP header of an IPv4 packet `parse` checked (no options, not a
/// fragment). Its length field must fit the IP payload (the kernel trims
/// any excess, as `udp_rcv` does).
#[inline(always)]
fn parse_udp(ctx: &XdpContext, ip: *mut Ipv4Hdr, key: FlowKey, tot_len: usize) -> Parsed {
    let truncated = Parsed::Special {
        key,
        reason: GlobalCounter::DropTruncatedUdp,
    };
    let Some(udp) = ptr_at::<UdpHdr>(ctx, ETH_HLEN + IPV4_MIN_HLEN) else {
        return truncated;
    };
    // SAFETY: bounds checked by ptr_at.
    let len = u16::from_be(unsafe { (*udp).len }) as usize;
    if len < UDP_HLEN || len > tot_len - IPV4_MIN_HLEN {
        return truncated;
    }
    Parsed::L4(L4Packet {
        ip,
        l4: udp as *mut [u16; 2],
        check: unsafe { core::ptr::addr_of_mut!((*udp).check) },
        key,
        flags: 0,
        ip_len: tot_len as u16,
        l4_len: len as u16,
    })
}

#[repr(C)]
pub struct IcmpHdr {
    pub ty: u8,
    pub code: u8,
    pub check: u16,
    /// Unused, or (fragmentation needed) unused and the next-hop MTU.
    pub rest: [u16; 2],
}

/// An ICMP error (destination unreachable, time exceeded) quoting an
/// IPv4/TCP packet: outer header, ICMP header, quoted IP header and ports.
pub struct IcmpPacket {
    pub ip: *mut Ipv4Hdr,
    pub icmp: *mut IcmpHdr,
    pub inner: *mut Ipv4Hdr,
    pub inner_ports: *mut [u16; 2],
}

/// Where an ICMP error's quoted header starts, from the frame's start.
pub const ICMP_INNER_OFF: usize = ETH_HLEN + IPV4_MIN_HLEN + ICMP_HLEN;

/// Parses the ICMP message of an IPv4 packet whose header `parse` checked
/// (no options, not a fragment, `tot_len` within the frame).
#[inline(always)]
fn parse_icmp(ctx: &XdpContext, ip: *mut Ipv4Hdr, tot_len: usize) -> Parsed {
    let Some(icmp) = ptr_at::<IcmpHdr>(ctx, ETH_HLEN + IPV4_MIN_HLEN) else {
        return Parsed::NotTcp;
    };
    // SAFETY: bounds checked by ptr_at.
    let ty = unsafe { (*icmp).ty };
    if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED {
        return Parsed::NotTcp;
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
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Parsed::NotTcp;
    }
    Parsed::IcmpError(IcmpPacket {
        ip,
        icmp,
        inner,
        inner_ports,
    })
}
