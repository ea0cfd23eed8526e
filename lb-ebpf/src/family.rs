//! The two address families behind one trait. The pipeline (`pipeline`,
//! `nat`, `icmp`, `answer`, `direct`, `forward`, `select`) is written once
//! over [`Family`] and monomorphised into each program, so the verifier
//! sees per-family code exactly as if it had been written twice; only the
//! leaf operations below (and the parsers in `parse`) know a family.
//!
//! What differs, and where:
//! - addresses: a `u32` or an [`Addr6`], loaded as they sit in the packet;
//! - the IPv4 header has a checksum (mended on every rewrite here) and the
//!   IPv6 one has none, while ICMPv6's checksum covers a pseudo-header;
//! - IPv4 may be fragmented on the way unless DF is set; IPv6 never is, so
//!   a packet too big for the next link is always answered;
//! - the maps: IPv4 keys are small (and prefiltered by `ADDR_FILTER`),
//!   IPv6 ones have maps of their own (`*6`).
use aya_ebpf::{bindings::bpf_fib_lookup as FibParams, programs::XdpContext};
use lb_common::{
    addr_filter_word6, Addr6, BackendHop, BackendMeta, FibEntry, FlowKey, FlowKey6, FragEntry,
    L4Addr, L4Addr6, VipAddr, VipMeta, ADDR_FILTER_BACKENDS6, ADDR_FILTER_VIPS6, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_TCP, REPLY_F_OPENS,
};

use crate::{
    consts::*,
    csum::{fold, replace16, replace32, sum_words},
    host::{may_be, may_be_backend, may_be_vip},
    maps::{
        BACKEND_ADDRS6, BACKEND_HOPS, BACKEND_HOPS6, FIB_CACHE, FIB_CACHE6, FRAGS, FRAGS6,
        FRAG_SCRATCH, LOCAL_ADDRS, LOCAL_ADDRS6, OUTBOUND, OUTBOUND6, REPLIES, REPLIES6,
        REPLY_ADDRS, REPLY_ADDRS6, TUNNEL_IDS, VIPS, VIPS6, VIP_ADDRS, VIP_ADDRS6,
    },
    parse::{load32, load_addr6, store32, store_addr6, IcmpPacket, Ipv4Hdr, Ipv6Hdr, Parsed},
    select::Flow,
    trace,
};

/// `tunnel_source` for IPv4 (network order), set by user space with
/// `override_global` before the program loads; 0 when none is configured.
#[no_mangle]
static TUNNEL_SOURCE_V4: u32 = 0;

/// `tunnel_source` for IPv6, as `TUNNEL_SOURCE_V4`; all zero when none.
#[no_mangle]
static TUNNEL_SOURCE_V6: Addr6 = Addr6 { words: [0; 4] };

/// Host bits of the IPv4 `tunnel_source` prefix (0: one address), at
/// most `MAX_TUNNEL_SOURCE_HOST_BITS`; `TUNNEL_SOURCE_V4` is the prefix's
/// first address. Set by user space with `override_global`.
#[no_mangle]
static TUNNEL_HOST_BITS_V4: u32 = 0;

/// Host bits of the IPv6 `tunnel_source` prefix, as for IPv4 (they are
/// all in the address's last word).
#[no_mangle]
static TUNNEL_HOST_BITS_V6: u32 = 0;

/// The outer source for a flow of ring hash `hash`: `base` (the prefix,
/// network order) with the flow's host part (`lb_common::tunnel_host_part`)
/// in its low `bits`.
#[inline(always)]
fn spread_source(base: u32, bits: u32, hash: u32) -> u32 {
    base | lb_common::tunnel_host_part(hash, bits).to_be()
}

/// Whether `addr` (network order) is in the prefix of `base` and `bits`.
#[inline(always)]
fn in_prefix(addr: u32, base: u32, bits: u32) -> bool {
    let host = if bits == 0 || bits > 31 {
        0
    } else {
        (u32::MAX >> (32 - bits)).to_be()
    };
    addr & !host == base
}

/// Where a backend's replies must appear to come from (a `REPLIES` or
/// `REPLIES6` entry, copied out).
pub struct Reply<F: Family> {
    pub vip: F::Addr,
    /// Network order.
    pub port: u16,
    /// The backend's slot (its counters).
    pub backend: u32,
    /// `REPLY_F_*`.
    pub flags: u16,
}

/// What a packet's destination endpoint is.
pub enum VipMatch {
    /// A VIP: the pool there.
    Pool(&'static VipMeta),
    /// A VIP's address, but no pool at this port and protocol.
    Address,
    None,
}

/// A region of 16-bit words the program wrote and sums itself.
pub trait Words {
    fn sum(&self) -> u32;
}

impl<const N: usize> Words for [u16; N] {
    #[inline(always)]
    fn sum(&self) -> u32 {
        sum_words(self)
    }
}

/// One address family: its header, address and key types, and the leaf
/// operations the pipeline needs of it.
pub trait Family: Sized + 'static {
    /// The fixed IP header as it sits in the packet.
    type Hdr;
    /// An address as loaded from the packet (network order).
    type Addr: Copy + PartialEq;
    /// The client → VIP 5-tuple (the flow table's and the ring's input).
    type Key: Flow<Addr = Self::Addr>;
    /// What an encapsulation keeps of the inner header across the move.
    type Inner;
    /// An ICMP error the program builds: its header and the quote.
    type IcmpMessage: Words;

    /// Bytes of the fixed header (no options, no extension headers).
    const HLEN: usize;
    /// The EtherType, as loaded.
    const BE_ETH_P: u16;
    /// ICMP or ICMPv6.
    const ICMP_PROTO: u8;
    /// (type, code) of "too big for the next link" (fragmentation needed,
    /// packet too big).
    const TOO_BIG: (u8, u8);
    /// (type, code) of "port unreachable".
    const PORT_UNREACH: (u8, u8);
    /// Protocol number of this family inside an outer header of itself.
    const ENCAP_PROTO: u8;
    /// The least MTU a translated too-big message quotes
    /// (`lb_common::limits::MIN_TUNNEL_PMTU4` / `MIN_TUNNEL_PMTU6`).
    const MIN_PMTU: u32;
    /// `TAILS` slot of this family's later-fragment program.
    const TAIL_FRAGMENT: u32;
    /// UDP may go without a checksum (0): IPv4 only (RFC 768; RFC 8200
    /// §8.1 forbids it in IPv6, and `parse` drops those).
    const UDP_CHECKSUM_OPTIONAL: bool;
    /// The IP header has a checksum of its own (mended by `set_src`,
    /// `set_dst` and `decrement_hop_limit`).
    const HEADER_CHECKSUM: bool;
    /// The ICMP checksum covers the outer addresses (ICMPv6's
    /// pseudo-header, RFC 4443 §2.3).
    const ICMP_PSEUDO: bool;
    /// ICMP echo request and reply types.
    const ECHO_REQUEST: u8;
    const ECHO_REPLY: u8;

    /// Parses the frame (`UDP`: the family's UDP program).
    fn parse<const UDP: bool>(ctx: &XdpContext) -> Parsed<Self>;
    /// What becomes of an ICMP error `parse` found.
    fn icmp_error(ctx: &XdpContext, p: &IcmpPacket<Self>) -> u32;
    /// What becomes of a too-big message quoting an outer packet
    /// (`Parsed::TunnelTooBig`).
    fn tunnel_too_big(ctx: &XdpContext) -> u32;
    /// Whether a quoted header is one the program reads (IPv4 without
    /// options; IPv6).
    fn plain(ip: &Self::Hdr) -> bool;
    /// The MTU a too-big message quotes, from its header's last four bytes.
    fn quoted_mtu(rest: &[u16; 2]) -> u32;

    fn src(ip: &Self::Hdr) -> Self::Addr;
    fn dst(ip: &Self::Hdr) -> Self::Addr;
    /// Writes the source address and returns the old one.
    fn set_src(ip: &mut Self::Hdr, addr: &Self::Addr) -> Self::Addr;
    /// Writes the destination address and returns the old one.
    fn set_dst(ip: &mut Self::Hdr, addr: &Self::Addr) -> Self::Addr;
    /// The header's own checksum (0 where there is none).
    fn header_check(ip: &Self::Hdr) -> u16;
    /// Swaps source and destination (no checksum changes: the sums
    /// covering them do not depend on their order).
    fn swap_addrs(ip: &mut Self::Hdr);
    /// TTL or hop limit.
    fn hop_limit(ip: &Self::Hdr) -> u8;
    /// Sets the TTL or hop limit of a packet the program sends back.
    fn set_hop_limit(ip: &mut Self::Hdr, hops: u8);
    /// One router hop.
    fn decrement_hop_limit(ip: &mut Self::Hdr);
    /// What the FIB lookup is told of the packet's class (IPv4's TOS).
    fn tos(ip: &Self::Hdr) -> u8;
    /// The protocol after the fixed header.
    fn proto(ip: &Self::Hdr) -> u8;
    /// Whether the packet may not be fragmented on the way: a packet too
    /// big for the next link is then answered, not handed to the kernel
    /// to fragment.
    fn must_not_fragment(ip: &Self::Hdr) -> bool;

    /// A checksum covering `from`, after it became `to`.
    fn replace_addr(check: u16, from: &Self::Addr, to: &Self::Addr) -> u16;
    /// The L4 pseudo-header's sum, folded, not complemented.
    fn pseudo_sum(src: &Self::Addr, dst: &Self::Addr, proto: u8, l4_len: u16) -> u16;
    /// What an ICMP message of `len` bytes adds to its checksum for its
    /// addresses (0 for ICMPv4).
    fn icmp_pseudo(src: &Self::Addr, dst: &Self::Addr, len: u16) -> u32;
    /// The ICMP header's last four bytes for a too-big message quoting
    /// `mtu` (0 otherwise).
    fn icmp_rest(mtu: u32) -> [u16; 2];

    /// What is at this destination endpoint: a VIP's pool, a VIP address
    /// without one, or nothing of ours.
    fn vip_match(addr: &Self::Addr, port: u16, proto: u8) -> VipMatch;
    /// [`vip_match`](Family::vip_match) for a destination the VIP
    /// prefilter was already asked about (and may hold): the maps alone.
    fn vip_lookup(addr: &Self::Addr, port: u16, proto: u8) -> VipMatch;
    /// The VIP at this endpoint.
    #[inline(always)]
    fn vip(addr: &Self::Addr, port: u16, proto: u8) -> Option<&'static VipMeta> {
        match Self::vip_match(addr, port, proto) {
            VipMatch::Pool(vip) => Some(vip),
            _ => None,
        }
    }
    /// The pools at a VIP address.
    fn vip_addr(addr: &Self::Addr) -> Option<&'static VipAddr>;
    /// The VIP a backend endpoint's replies come from.
    fn reply(addr: &Self::Addr, port: u16, proto: u8) -> Option<Reply<Self>>;
    /// [`reply`](Family::reply) for a source the backends' prefilter was
    /// already asked about (and may hold): the map alone.
    fn reply_lookup(addr: &Self::Addr, port: u16, proto: u8) -> Option<Reply<Self>>;
    /// Whether `addr` is a backend's (it has reply endpoints).
    fn reply_addr(addr: &Self::Addr) -> bool;
    /// Marks a backend endpoint as one that opens connections
    /// (`REPLY_F_OPENS`).
    fn mark_opener(addr: &Self::Addr, port: u16, proto: u8);
    /// The connection a backend opened with this 5-tuple (as it sends).
    fn outbound(key: &Self::Key) -> bool;
    fn outbound_put(key: &Self::Key, now: u64);
    fn outbound_del(key: &Self::Key);
    /// Whether `addr` is one of this host's addresses.
    fn is_local(addr: &Self::Addr) -> bool;

    /// Records what was decided for a datagram's first fragment: `kind`
    /// (`FRAG_*`) toward `addr`, for the fragments of (`src`, `dst`, `id`,
    /// `proto`) until `expires_ns`.
    #[allow(clippy::too_many_arguments)]
    fn frag_put(
        src: &Self::Addr,
        dst: &Self::Addr,
        id: u32,
        proto: u8,
        addr: &Self::Addr,
        backend: u32,
        vip_index: u32,
        kind: u32,
        expires_ns: u64,
    );
    /// What was decided for the first fragment of this datagram.
    fn frag_get(src: &Self::Addr, dst: &Self::Addr, id: u32, proto: u8)
        -> Option<*const FragEntry>;
    /// A `FragEntry`'s address.
    fn frag_addr(e: &FragEntry) -> Self::Addr;
    /// The address of backend slot `slot`, whose meta is `meta`.
    fn backend_addr(slot: u32, meta: &BackendMeta) -> Option<Self::Addr>;

    /// A cached next hop toward `daddr`.
    fn fib_cached(daddr: &Self::Addr) -> Option<*const FibEntry>;
    fn fib_store(daddr: &Self::Addr, hop: &FibEntry);
    /// This CPU's next hop toward backend slot `slot` (`BACKEND_HOPS`).
    fn backend_hop(slot: u32) -> Option<*mut BackendHop<Self::Addr>>;
    /// Fills the lookup's family, addresses and protocol.
    fn fib_params(
        params: &mut FibParams,
        saddr: &Self::Addr,
        daddr: &Self::Addr,
        tos: u8,
        proto: u8,
    );

    /// The outer source of a tunnelled flow of ring hash `hash`: the
    /// configured `tunnel_source`, or the flow's address in its prefix.
    fn tunnel_source(hash: u32) -> Option<Self::Addr>;
    /// Whether `addr` is a `tunnel_source` address (in its prefix).
    fn is_tunnel_source(addr: &Self::Addr) -> bool;
    fn inner(ip: &Self::Hdr) -> Self::Inner;
    /// Writes an outer header around a packet of `inner`; `hash` (the
    /// flow's ring hash) varies what may vary per flow.
    fn write_outer(
        ip: &mut Self::Hdr,
        inner: &Self::Inner,
        src: &Self::Addr,
        dst: &Self::Addr,
        hash: u32,
    );
    /// Writes the header of a packet the program originates, carrying
    /// `payload_len` bytes of `proto`.
    fn write_answer_header(
        ip: &mut Self::Hdr,
        proto: u8,
        payload_len: u16,
        src: &Self::Addr,
        dst: &Self::Addr,
    );
}

pub struct Ipv4;
pub struct Ipv6;

/// The IPv4 header fields an encapsulation keeps.
pub struct Inner4 {
    tos: u8,
    tot_len: u16,
    df: bool,
}

/// The IPv6 header fields an encapsulation keeps.
pub struct Inner6 {
    /// Version, traffic class and flow label, as on the wire.
    vtc_flow: [u16; 2],
    payload_len: u16,
}

/// The IPv4 header's checksum, recomputed over the header as written.
#[inline(always)]
fn ipv4_check(ip: &mut Ipv4Hdr) {
    ip.check = 0;
    // SAFETY: Ipv4Hdr is 20 bytes of plain integers, 2-aligned.
    let words = unsafe { &*(ip as *const Ipv4Hdr as *const [u16; 10]) };
    ip.check = !fold(sum_words(words));
}

impl Family for Ipv4 {
    type Hdr = Ipv4Hdr;
    type Addr = u32;
    type Key = FlowKey;
    type Inner = Inner4;
    /// ICMP header, then the offending packet's header and the first 64
    /// bits of its data (RFC 792): enough for any stack to find the
    /// connection.
    type IcmpMessage = [u16; (ICMP_HLEN + IPV4_MIN_HLEN + 8) / 2];

    const HLEN: usize = IPV4_MIN_HLEN;
    const BE_ETH_P: u16 = BE_ETH_P_IP;
    const ICMP_PROTO: u8 = IPPROTO_ICMP;
    const TOO_BIG: (u8, u8) = (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED);
    const PORT_UNREACH: (u8, u8) = (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH);
    const ENCAP_PROTO: u8 = IPPROTO_IPIP;
    const MIN_PMTU: u32 = lb_common::limits::MIN_TUNNEL_PMTU4;
    const TAIL_FRAGMENT: u32 = lb_common::TAIL_FRAG4;
    const UDP_CHECKSUM_OPTIONAL: bool = true;
    const HEADER_CHECKSUM: bool = true;
    const ICMP_PSEUDO: bool = false;
    const ECHO_REQUEST: u8 = 8;
    const ECHO_REPLY: u8 = 0;

    #[inline(always)]
    fn parse<const UDP: bool>(ctx: &XdpContext) -> Parsed<Self> {
        crate::parse::ipv4::<UDP>(ctx)
    }

    #[inline(always)]
    fn icmp_error(ctx: &XdpContext, p: &IcmpPacket<Self>) -> u32 {
        crate::icmp::translate(ctx, p)
    }
    #[inline(always)]
    fn tunnel_too_big(ctx: &XdpContext) -> u32 {
        crate::icmp::tunnel_too_big::<Self>(ctx)
    }
    #[inline(always)]
    fn plain(ip: &Ipv4Hdr) -> bool {
        ip.ver_ihl == 0x45
    }
    /// The next-hop MTU of RFC 1191 (0 from a router older than it).
    #[inline(always)]
    fn quoted_mtu(rest: &[u16; 2]) -> u32 {
        u16::from_be(rest[1]) as u32
    }

    #[inline(always)]
    fn src(ip: &Ipv4Hdr) -> u32 {
        load32(&ip.saddr)
    }
    #[inline(always)]
    fn dst(ip: &Ipv4Hdr) -> u32 {
        load32(&ip.daddr)
    }
    #[inline(always)]
    fn set_src(ip: &mut Ipv4Hdr, addr: &u32) -> u32 {
        let old = load32(&ip.saddr);
        store32(&mut ip.saddr, *addr);
        ip.check = replace32(ip.check, old, *addr);
        old
    }
    #[inline(always)]
    fn set_dst(ip: &mut Ipv4Hdr, addr: &u32) -> u32 {
        let old = load32(&ip.daddr);
        store32(&mut ip.daddr, *addr);
        ip.check = replace32(ip.check, old, *addr);
        old
    }
    #[inline(always)]
    fn header_check(ip: &Ipv4Hdr) -> u16 {
        ip.check
    }
    #[inline(always)]
    fn swap_addrs(ip: &mut Ipv4Hdr) {
        core::mem::swap(&mut ip.saddr, &mut ip.daddr);
    }
    #[inline(always)]
    fn hop_limit(ip: &Ipv4Hdr) -> u8 {
        ip.ttl
    }
    #[inline(always)]
    fn set_hop_limit(ip: &mut Ipv4Hdr, hops: u8) {
        // TTL is the low byte of its word with the protocol (see
        // `decrement_hop_limit`).
        let old = (ip.ttl as u16) | ((ip.proto as u16) << 8);
        ip.ttl = hops;
        let new = (hops as u16) | ((ip.proto as u16) << 8);
        ip.check = replace16(ip.check, old, new);
    }
    #[inline(always)]
    fn decrement_hop_limit(ip: &mut Ipv4Hdr) {
        // TTL and protocol share one 16-bit word of the header; in memory
        // order (as loaded) TTL is its low byte.
        let old = (ip.ttl as u16) | ((ip.proto as u16) << 8);
        ip.ttl -= 1;
        let new = (ip.ttl as u16) | ((ip.proto as u16) << 8);
        ip.check = replace16(ip.check, old, new);
    }
    #[inline(always)]
    fn tos(ip: &Ipv4Hdr) -> u8 {
        ip.tos
    }
    #[inline(always)]
    fn proto(ip: &Ipv4Hdr) -> u8 {
        ip.proto
    }
    #[inline(always)]
    fn must_not_fragment(ip: &Ipv4Hdr) -> bool {
        ip.frag_off & BE_IP_DF != 0
    }

    #[inline(always)]
    fn replace_addr(check: u16, from: &u32, to: &u32) -> u16 {
        replace32(check, *from, *to)
    }
    #[inline(always)]
    fn pseudo_sum(src: &u32, dst: &u32, proto: u8, l4_len: u16) -> u16 {
        crate::csum::pseudo_sum(*src, *dst, proto, l4_len)
    }
    #[inline(always)]
    fn icmp_pseudo(_src: &u32, _dst: &u32, _len: u16) -> u32 {
        0
    }
    #[inline(always)]
    fn icmp_rest(mtu: u32) -> [u16; 2] {
        // Unused, then the next-hop MTU (RFC 1191).
        [0, (mtu.min(u16::MAX as u32) as u16).to_be()]
    }

    /// The prefilter first: most traffic through a gateway is for no VIP.
    #[inline(always)]
    fn vip_match(addr: &u32, port: u16, proto: u8) -> VipMatch {
        if !may_be_vip(*addr) {
            return VipMatch::None;
        }
        Self::vip_lookup(addr, port, proto)
    }
    #[inline(always)]
    fn vip_lookup(addr: &u32, port: u16, proto: u8) -> VipMatch {
        let vip = L4Addr {
            addr: *addr,
            port,
            proto,
            _pad: 0,
        };
        // SAFETY: the references live while the program runs (RCU).
        if let Some(vip) = unsafe { VIPS.get(&vip) } {
            return VipMatch::Pool(vip);
        }
        match unsafe { VIP_ADDRS.get(addr) } {
            Some(_) => VipMatch::Address,
            None => VipMatch::None,
        }
    }
    #[inline(always)]
    fn vip_addr(addr: &u32) -> Option<&'static VipAddr> {
        if !may_be_vip(*addr) {
            return None;
        }
        // SAFETY: as in `vip_match`.
        unsafe { VIP_ADDRS.get(addr) }
    }
    #[inline(always)]
    fn reply(addr: &u32, port: u16, proto: u8) -> Option<Reply<Self>> {
        if !may_be_backend(*addr) {
            return None;
        }
        Self::reply_lookup(addr, port, proto)
    }
    #[inline(always)]
    fn reply_lookup(addr: &u32, port: u16, proto: u8) -> Option<Reply<Self>> {
        let from = L4Addr {
            addr: *addr,
            port,
            proto,
            _pad: 0,
        };
        // SAFETY: as in `vip`; the entry is copied out at once.
        let r = unsafe { REPLIES.get(&from) }?;
        Some(Reply {
            vip: r.vip_addr,
            port: r.vip_port,
            backend: r.backend,
            flags: r.flags,
        })
    }
    #[inline(always)]
    fn mark_opener(addr: &u32, port: u16, proto: u8) {
        if !trace::WRITES {
            return;
        }
        let key = L4Addr {
            addr: *addr,
            port,
            proto,
            _pad: 0,
        };
        if let Some(r) = REPLIES.get_ptr_mut(&key) {
            // SAFETY: a map value; a racing user-space rewrite at worst
            // clears the mark, and the next SYN sets it again.
            unsafe { (*r).flags |= REPLY_F_OPENS };
        }
    }
    #[inline(always)]
    fn outbound(key: &FlowKey) -> bool {
        // SAFETY: the reference is dropped at once.
        unsafe { OUTBOUND.get(key) }.is_some()
    }
    #[inline(always)]
    fn outbound_put(key: &FlowKey, now: u64) {
        if !trace::WRITES {
            return;
        }
        let _ = OUTBOUND.insert(key, &now, 0);
    }
    #[inline(always)]
    fn outbound_del(key: &FlowKey) {
        if !trace::WRITES {
            return;
        }
        let _ = OUTBOUND.remove(key);
    }
    #[inline(always)]
    fn reply_addr(addr: &u32) -> bool {
        // SAFETY: the reference is dropped at once.
        may_be_backend(*addr) && unsafe { REPLY_ADDRS.get(addr) }.is_some()
    }
    #[inline(always)]
    fn is_local(addr: &u32) -> bool {
        // SAFETY: the reference is dropped at once.
        unsafe { LOCAL_ADDRS.get(addr) }.is_some()
    }
    #[inline(always)]
    fn frag_put(
        src: &u32,
        dst: &u32,
        id: u32,
        proto: u8,
        addr: &u32,
        backend: u32,
        vip_index: u32,
        kind: u32,
        expires_ns: u64,
    ) {
        if !trace::WRITES {
            return;
        }
        let Some(s) = FRAG_SCRATCH.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: a per-CPU slot only this CPU writes while we run.
        let s = unsafe { &mut *s };
        s.key4.src = *src;
        s.key4.dst = *dst;
        s.key4.id = id;
        s.key4.proto = proto;
        s.key4._pad = [0; 3];
        s.entry.addr = Addr6 {
            words: [*addr, 0, 0, 0],
        };
        s.entry.expires_ns = expires_ns;
        s.entry.backend = backend;
        s.entry.vip_index = vip_index;
        s.entry.kind = kind;
        s.entry._pad = 0;
        let _ = FRAGS.insert(&s.key4, &s.entry, 0);
    }
    #[inline(always)]
    fn frag_get(src: &u32, dst: &u32, id: u32, proto: u8) -> Option<*const FragEntry> {
        let key = lb_common::FragKey {
            src: *src,
            dst: *dst,
            id,
            proto,
            _pad: [0; 3],
        };
        FRAGS.get_ptr(&key)
    }
    #[inline(always)]
    fn frag_addr(e: &FragEntry) -> u32 {
        e.addr.words[0]
    }
    #[inline(always)]
    fn backend_addr(_slot: u32, meta: &BackendMeta) -> Option<u32> {
        Some(meta.addr)
    }

    #[inline(always)]
    fn fib_cached(daddr: &u32) -> Option<*const FibEntry> {
        FIB_CACHE.get_ptr(daddr)
    }
    #[inline(always)]
    fn backend_hop(slot: u32) -> Option<*mut BackendHop<u32>> {
        BACKEND_HOPS.get_ptr_mut(slot)
    }
    #[inline(always)]
    fn fib_store(daddr: &u32, hop: &FibEntry) {
        if !trace::WRITES {
            return;
        }
        let _ = FIB_CACHE.insert(daddr, hop, 0);
    }
    #[inline(always)]
    fn fib_params(params: &mut FibParams, saddr: &u32, daddr: &u32, tos: u8, proto: u8) {
        params.family = AF_INET;
        params.l4_protocol = proto;
        params.__bindgen_anon_2.tos = tos;
        params.__bindgen_anon_3.ipv4_src = *saddr;
        params.__bindgen_anon_4.ipv4_dst = *daddr;
    }

    #[inline(always)]
    fn tunnel_source(hash: u32) -> Option<u32> {
        // verifier: volatile so the loaded value (set at load time) is
        // used, not the compile-time default folded in.
        let source = unsafe { core::ptr::read_volatile(&TUNNEL_SOURCE_V4) };
        let bits = unsafe { core::ptr::read_volatile(&TUNNEL_HOST_BITS_V4) };
        (source != 0).then(|| spread_source(source, bits, hash))
    }
    #[inline(always)]
    fn is_tunnel_source(addr: &u32) -> bool {
        // SAFETY: as in `tunnel_source`.
        let source = unsafe { core::ptr::read_volatile(&TUNNEL_SOURCE_V4) };
        let bits = unsafe { core::ptr::read_volatile(&TUNNEL_HOST_BITS_V4) };
        source != 0 && in_prefix(*addr, source, bits)
    }
    #[inline(always)]
    fn inner(ip: &Ipv4Hdr) -> Inner4 {
        Inner4 {
            tos: ip.tos,
            tot_len: u16::from_be(ip.tot_len),
            df: ip.frag_off & BE_IP_DF != 0,
        }
    }
    #[inline(always)]
    fn write_outer(ip: &mut Ipv4Hdr, inner: &Inner4, src: &u32, dst: &u32, hash: u32) {
        ip.ver_ihl = 0x45;
        // DSCP and ECN copied (RFC 2003 §3.1, RFC 6040 normal mode).
        ip.tos = inner.tos;
        ip.tot_len = (inner.tot_len + IPV4_MIN_HLEN as u16).to_be();
        // DF copied from the inner header (RFC 2003 §3.1). With DF the
        // datagram is atomic and its ID may be 0 (RFC 6864 §4.1); without
        // it the outer packet may be fragmented on the way, and the
        // fragments of different outer packets must not share an ID:
        // this CPU's counter, offset by the flow's hash so flows on other
        // CPUs (whose counters run alike) rarely meet.
        ip.id = if inner.df { 0 } else { outer_id(hash) };
        ip.frag_off = if inner.df { BE_IP_DF } else { 0 };
        ip.ttl = ORIGIN_TTL;
        ip.proto = IPPROTO_IPIP;
        store32(&mut ip.saddr, *src);
        store32(&mut ip.daddr, *dst);
        ipv4_check(ip);
    }
    #[inline(always)]
    fn write_answer_header(ip: &mut Ipv4Hdr, proto: u8, payload_len: u16, src: &u32, dst: &u32) {
        ip.ver_ihl = 0x45;
        ip.tos = 0;
        ip.tot_len = (payload_len + IPV4_MIN_HLEN as u16).to_be();
        ip.id = 0;
        // A RST is as small as a packet gets; an ICMP error may be
        // fragmented on its way.
        ip.frag_off = if proto == IPPROTO_TCP { BE_IP_DF } else { 0 };
        ip.ttl = ORIGIN_TTL;
        ip.proto = proto;
        store32(&mut ip.saddr, *src);
        store32(&mut ip.daddr, *dst);
        ipv4_check(ip);
    }
}

impl Family for Ipv6 {
    type Hdr = Ipv6Hdr;
    type Addr = Addr6;
    type Key = FlowKey6;
    type Inner = Inner6;
    /// ICMPv6 header, then the offending packet's IPv6 header and 8 bytes
    /// of what follows (the ports), which is all any stack needs to find
    /// the connection. RFC 4443 allows up to the minimum MTU; less is
    /// enough.
    type IcmpMessage = [u16; (ICMP_HLEN + IPV6_HLEN + 8) / 2];

    const HLEN: usize = IPV6_HLEN;
    const BE_ETH_P: u16 = BE_ETH_P_IPV6;
    const ICMP_PROTO: u8 = IPPROTO_ICMPV6;
    const TOO_BIG: (u8, u8) = (ICMPV6_PKT_TOOBIG, 0);
    const PORT_UNREACH: (u8, u8) = (ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH);
    const ENCAP_PROTO: u8 = IPPROTO_IPV6;
    const MIN_PMTU: u32 = lb_common::limits::MIN_TUNNEL_PMTU6;
    const TAIL_FRAGMENT: u32 = lb_common::TAIL_FRAG6;
    const UDP_CHECKSUM_OPTIONAL: bool = false;
    const HEADER_CHECKSUM: bool = false;
    const ICMP_PSEUDO: bool = true;
    const ECHO_REQUEST: u8 = 128;
    const ECHO_REPLY: u8 = 129;

    #[inline(always)]
    fn parse<const UDP: bool>(ctx: &XdpContext) -> Parsed<Self> {
        crate::parse::ipv6::<UDP>(ctx)
    }

    /// To the ICMPv6 program: a stack of its own for the translation.
    #[inline(always)]
    fn icmp_error(ctx: &XdpContext, _p: &IcmpPacket<Self>) -> u32 {
        crate::pipeline::tail(ctx, lb_common::TAIL_ICMP6)
    }
    /// To the ICMPv6 program, as other errors.
    #[inline(always)]
    fn tunnel_too_big(ctx: &XdpContext) -> u32 {
        crate::pipeline::tail(ctx, lb_common::TAIL_ICMP6)
    }
    #[inline(always)]
    fn plain(ip: &Ipv6Hdr) -> bool {
        ip.vtc_flow[0] as u8 >> 4 == 6
    }
    #[inline(always)]
    fn quoted_mtu(rest: &[u16; 2]) -> u32 {
        u32::from_be(load32(rest))
    }

    #[inline(always)]
    fn src(ip: &Ipv6Hdr) -> Addr6 {
        load_addr6(&ip.saddr)
    }
    #[inline(always)]
    fn dst(ip: &Ipv6Hdr) -> Addr6 {
        load_addr6(&ip.daddr)
    }
    #[inline(always)]
    fn set_src(ip: &mut Ipv6Hdr, addr: &Addr6) -> Addr6 {
        let old = load_addr6(&ip.saddr);
        store_addr6(&mut ip.saddr, addr);
        old
    }
    #[inline(always)]
    fn set_dst(ip: &mut Ipv6Hdr, addr: &Addr6) -> Addr6 {
        let old = load_addr6(&ip.daddr);
        store_addr6(&mut ip.daddr, addr);
        old
    }
    #[inline(always)]
    fn header_check(_ip: &Ipv6Hdr) -> u16 {
        0
    }
    #[inline(always)]
    fn swap_addrs(ip: &mut Ipv6Hdr) {
        core::mem::swap(&mut ip.saddr, &mut ip.daddr);
    }
    #[inline(always)]
    fn hop_limit(ip: &Ipv6Hdr) -> u8 {
        ip.hop_limit
    }
    #[inline(always)]
    fn set_hop_limit(ip: &mut Ipv6Hdr, hops: u8) {
        ip.hop_limit = hops;
    }
    #[inline(always)]
    fn decrement_hop_limit(ip: &mut Ipv6Hdr) {
        ip.hop_limit -= 1;
    }
    #[inline(always)]
    fn tos(_ip: &Ipv6Hdr) -> u8 {
        0
    }
    #[inline(always)]
    fn proto(ip: &Ipv6Hdr) -> u8 {
        ip.nexthdr
    }
    /// IPv6 routers never fragment: the sender must learn the path MTU
    /// (RFC 8201).
    #[inline(always)]
    fn must_not_fragment(_ip: &Ipv6Hdr) -> bool {
        true
    }

    #[inline(always)]
    fn replace_addr(check: u16, from: &Addr6, to: &Addr6) -> u16 {
        let mut c = check;
        let mut i = 0;
        while i < 4 {
            c = replace32(c, from.words[i], to.words[i]);
            i += 1;
        }
        c
    }
    #[inline(always)]
    fn pseudo_sum(src: &Addr6, dst: &Addr6, proto: u8, l4_len: u16) -> u16 {
        fold(pseudo_sum6(src, dst, proto, l4_len as u32))
    }
    #[inline(always)]
    fn icmp_pseudo(src: &Addr6, dst: &Addr6, len: u16) -> u32 {
        fold(pseudo_sum6(src, dst, IPPROTO_ICMPV6, len as u32)) as u32
    }
    #[inline(always)]
    fn icmp_rest(mtu: u32) -> [u16; 2] {
        let mut rest = [0u16; 2];
        store32(&mut rest, mtu.to_be());
        rest
    }

    /// No prefilter before `VIPS6` (see `vip_match`): `vip_match` as it
    /// is.
    #[inline(always)]
    fn vip_lookup(addr: &Addr6, port: u16, proto: u8) -> VipMatch {
        Self::vip_match(addr, port, proto)
    }
    /// `VIPS6` first, unfiltered (so a VIP's packets pay no more than
    /// before the filter had IPv6 bits); the prefilter before the
    /// address lookup.
    #[inline(always)]
    fn vip_match(addr: &Addr6, port: u16, proto: u8) -> VipMatch {
        let vip = L4Addr6 {
            addr: *addr,
            port,
            proto,
            _pad: 0,
        };
        // SAFETY: the references live while the program runs (RCU).
        if let Some(vip) = unsafe { VIPS6.get(&vip) } {
            return VipMatch::Pool(vip);
        }
        match Self::vip_addr(addr) {
            Some(_) => VipMatch::Address,
            None => VipMatch::None,
        }
    }
    #[inline(always)]
    fn vip_addr(addr: &Addr6) -> Option<&'static VipAddr> {
        if !may_be(ADDR_FILTER_VIPS6, addr_filter_word6(addr)) {
            return None;
        }
        // SAFETY: as in `vip_match`.
        unsafe { VIP_ADDRS6.get(addr) }
    }
    /// No IPv6 program is told its packet is to no VIP (nothing asks the
    /// IPv6 prefilters before the parse), so nothing calls this: `reply`
    /// as it is, prefilter included.
    #[inline(always)]
    fn reply_lookup(addr: &Addr6, port: u16, proto: u8) -> Option<Reply<Self>> {
        Self::reply(addr, port, proto)
    }
    #[inline(always)]
    fn reply(addr: &Addr6, port: u16, proto: u8) -> Option<Reply<Self>> {
        if !may_be(ADDR_FILTER_BACKENDS6, addr_filter_word6(addr)) {
            return None;
        }
        let from = L4Addr6 {
            addr: *addr,
            port,
            proto,
            _pad: 0,
        };
        // SAFETY: as in `vip`; the entry is copied out at once.
        let r = unsafe { REPLIES6.get(&from) }?;
        Some(Reply {
            vip: r.vip_addr,
            port: r.vip_port,
            backend: r.backend,
            flags: r.flags,
        })
    }
    #[inline(always)]
    fn mark_opener(addr: &Addr6, port: u16, proto: u8) {
        if !trace::WRITES {
            return;
        }
        let key = L4Addr6 {
            addr: *addr,
            port,
            proto,
            _pad: 0,
        };
        if let Some(r) = REPLIES6.get_ptr_mut(&key) {
            // SAFETY: as for IPv4.
            unsafe { (*r).flags |= REPLY_F_OPENS };
        }
    }
    #[inline(always)]
    fn outbound(key: &FlowKey6) -> bool {
        // SAFETY: the reference is dropped at once.
        unsafe { OUTBOUND6.get(key) }.is_some()
    }
    #[inline(always)]
    fn outbound_put(key: &FlowKey6, now: u64) {
        if !trace::WRITES {
            return;
        }
        let _ = OUTBOUND6.insert(key, &now, 0);
    }
    #[inline(always)]
    fn outbound_del(key: &FlowKey6) {
        if !trace::WRITES {
            return;
        }
        let _ = OUTBOUND6.remove(key);
    }
    #[inline(always)]
    fn reply_addr(addr: &Addr6) -> bool {
        // SAFETY: the reference is dropped at once.
        may_be(ADDR_FILTER_BACKENDS6, addr_filter_word6(addr))
            && unsafe { REPLY_ADDRS6.get(addr) }.is_some()
    }
    #[inline(always)]
    fn is_local(addr: &Addr6) -> bool {
        // SAFETY: the reference is dropped at once.
        unsafe { LOCAL_ADDRS6.get(addr) }.is_some()
    }
    /// Key and entry built in the per-CPU scratch: 80 bytes the IPv6
    /// programs' stacks do not have.
    #[inline(always)]
    fn frag_put(
        src: &Addr6,
        dst: &Addr6,
        id: u32,
        proto: u8,
        addr: &Addr6,
        backend: u32,
        vip_index: u32,
        kind: u32,
        expires_ns: u64,
    ) {
        if !trace::WRITES {
            return;
        }
        let Some(s) = frag_key6(src, dst, id, proto) else {
            return;
        };
        // SAFETY: as in `frag_key6`.
        let s = unsafe { &mut *s };
        s.entry.addr = *addr;
        s.entry.expires_ns = expires_ns;
        s.entry.backend = backend;
        s.entry.vip_index = vip_index;
        s.entry.kind = kind;
        s.entry._pad = 0;
        let _ = FRAGS6.insert(&s.key, &s.entry, 0);
    }
    #[inline(always)]
    fn frag_get(src: &Addr6, dst: &Addr6, id: u32, proto: u8) -> Option<*const FragEntry> {
        let s = frag_key6(src, dst, id, proto)?;
        // SAFETY: as in `frag_key6`.
        FRAGS6.get_ptr(unsafe { &(*s).key })
    }
    #[inline(always)]
    fn frag_addr(e: &FragEntry) -> Addr6 {
        e.addr
    }
    /// IPv6 addresses live in `BACKEND_ADDRS6` (state, port and
    /// generation stay in `BACKENDS`).
    #[inline(always)]
    fn backend_addr(slot: u32, _meta: &BackendMeta) -> Option<Addr6> {
        BACKEND_ADDRS6.get(slot).copied()
    }

    #[inline(always)]
    fn fib_cached(daddr: &Addr6) -> Option<*const FibEntry> {
        FIB_CACHE6.get_ptr(daddr)
    }
    #[inline(always)]
    fn backend_hop(slot: u32) -> Option<*mut BackendHop<Addr6>> {
        BACKEND_HOPS6.get_ptr_mut(slot)
    }
    #[inline(always)]
    fn fib_store(daddr: &Addr6, hop: &FibEntry) {
        if !trace::WRITES {
            return;
        }
        let _ = FIB_CACHE6.insert(daddr, hop, 0);
    }
    #[inline(always)]
    fn fib_params(params: &mut FibParams, saddr: &Addr6, daddr: &Addr6, _tos: u8, proto: u8) {
        params.family = AF_INET6;
        params.l4_protocol = proto;
        params.__bindgen_anon_3.ipv6_src = saddr.words;
        params.__bindgen_anon_4.ipv6_dst = daddr.words;
    }

    #[inline(always)]
    fn tunnel_source(hash: u32) -> Option<Addr6> {
        // verifier: volatile, as for IPv4.
        let mut source = unsafe { core::ptr::read_volatile(&TUNNEL_SOURCE_V6) };
        let bits = unsafe { core::ptr::read_volatile(&TUNNEL_HOST_BITS_V6) };
        if source.words == [0; 4] {
            return None;
        }
        source.words[3] = spread_source(source.words[3], bits, hash);
        Some(source)
    }
    #[inline(always)]
    fn is_tunnel_source(addr: &Addr6) -> bool {
        // SAFETY: as in `tunnel_source`.
        let source = unsafe { core::ptr::read_volatile(&TUNNEL_SOURCE_V6) };
        let bits = unsafe { core::ptr::read_volatile(&TUNNEL_HOST_BITS_V6) };
        source.words != [0; 4]
            && addr.words[0] == source.words[0]
            && addr.words[1] == source.words[1]
            && addr.words[2] == source.words[2]
            && in_prefix(addr.words[3], source.words[3], bits)
    }
    #[inline(always)]
    fn inner(ip: &Ipv6Hdr) -> Inner6 {
        Inner6 {
            vtc_flow: ip.vtc_flow,
            payload_len: u16::from_be(ip.payload_len),
        }
    }
    #[inline(always)]
    fn write_outer(ip: &mut Ipv6Hdr, inner: &Inner6, src: &Addr6, dst: &Addr6, _hash: u32) {
        // The inner word whole: version 6; the traffic class, DSCP and ECN
        // copied (RFC 2473 §6.5, RFC 6040 normal mode); and the client's
        // flow label, constant per flow, so ECMP on the way to the backend
        // spreads flows and keeps each on one path (RFC 6438's aim).
        ip.vtc_flow = inner.vtc_flow;
        ip.payload_len = inner.payload_len.wrapping_add(IPV6_HLEN as u16).to_be();
        ip.nexthdr = IPPROTO_IPV6;
        ip.hop_limit = ORIGIN_TTL;
        store_addr6(&mut ip.saddr, src);
        store_addr6(&mut ip.daddr, dst);
    }
    #[inline(always)]
    fn write_answer_header(
        ip: &mut Ipv6Hdr,
        proto: u8,
        payload_len: u16,
        src: &Addr6,
        dst: &Addr6,
    ) {
        ip.vtc_flow = [0x0060, 0];
        ip.payload_len = payload_len.to_be();
        ip.nexthdr = proto;
        ip.hop_limit = ORIGIN_TTL;
        store_addr6(&mut ip.saddr, src);
        store_addr6(&mut ip.daddr, dst);
    }
}

/// The ID of an outer IPv4 packet without DF (network order): this
/// CPU's count of them, plus the flow's hash.
#[inline(always)]
fn outer_id(hash: u32) -> u16 {
    let Some(n) = TUNNEL_IDS.get_ptr_mut(0) else {
        return (hash >> 16) as u16;
    };
    // SAFETY: a per-CPU slot only this CPU writes while we run.
    let n = unsafe { &mut *n };
    *n = n.wrapping_add(1);
    ((*n as u16).wrapping_add((hash >> 16) as u16)).to_be()
}

/// The per-CPU scratch with its IPv6 fragment key filled in.
#[inline(always)]
fn frag_key6(
    src: &Addr6,
    dst: &Addr6,
    id: u32,
    proto: u8,
) -> Option<*mut crate::maps::FragScratch> {
    let s = FRAG_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot only this CPU writes while we run.
    let k = unsafe { &mut (*s).key };
    k.src = *src;
    k.dst = *dst;
    k.id = id;
    k.proto = proto;
    k._pad = [0; 3];
    Some(s)
}

/// The IPv6 pseudo-header's sum, unfolded.
#[inline(always)]
fn pseudo_sum6(src: &Addr6, dst: &Addr6, proto: u8, l4_len: u32) -> u32 {
    let mut sum = ((proto as u32) << 8) + ((l4_len as u16).to_be() as u32);
    let mut i = 0;
    while i < 4 {
        let (s, d) = (src.words[i], dst.words[i]);
        sum += (s & 0xffff) + (s >> 16) + (d & 0xffff) + (d >> 16);
        i += 1;
    }
    sum
}
