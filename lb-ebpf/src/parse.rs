//! Packet parsing: bounds-checked access and the IPv4/TCP header checks.
//!
//! Headers are declared with 2-byte alignment (addresses as `[u16; 2]`):
//! after a 14-byte Ethernet header the IP header is only 2-aligned, and
//! halfword loads are what the BPF JIT can do there without splitting into
//! byte loads.
use aya_ebpf::programs::XdpContext;
use lb_common::{FlowKey, GlobalCounter, IPPROTO_ICMP, IPPROTO_TCP};

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

/// What parsing decided about a frame.
pub enum Parsed {
    /// A well-formed IPv4/TCP packet without options or fragmentation.
    Tcp(TcpPacket),
    /// Not ours to look at (not IPv4, not TCP): the kernel's.
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
    /// An ICMP error quoting an IPv4/TCP packet: may belong to a flow.
    IcmpError(IcmpPacket),
    /// An ICMP error whose quoted packet cannot be read (cut short, IP
    /// options, not IPv4): nobody's flow can be found from it, so it passes.
    IcmpUnparsed,
}

pub struct TcpPacket {
    pub ip: *mut Ipv4Hdr,
    pub tcp: *mut TcpHdr,
    pub key: FlowKey,
    pub flags: u8,
    /// Bytes from the IP header on (what counters count).
    pub ip_len: u16,
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
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
    if iph.proto == IPPROTO_ICMP {
        if iph.frag_off & (BE_IP_MF | BE_IP_OFFSET_MASK) != 0 || ihl != IPV4_MIN_HLEN {
            return Parsed::NotTcp;
        }
        return parse_icmp(ctx, ip, tot_len);
    }
    if iph.proto != IPPROTO_TCP {
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
        proto: IPPROTO_TCP,
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
    Parsed::Tcp(TcpPacket {
        ip,
        tcp,
        key,
        flags: tcph.flags,
        ip_len: tot_len as u16,
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
    if proto != IPPROTO_TCP {
        return Parsed::NotTcp;
    }
    Parsed::IcmpError(IcmpPacket {
        ip,
        icmp,
        inner,
        inner_ports,
    })
}
