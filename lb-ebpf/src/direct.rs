//! Direct server return: the packet reaches the backend with the VIP still
//! its destination, and the backend (which holds the VIP on a loopback)
//! answers the client itself, so replies never cross the gateway.
//!
//! - `dsr` (L2): only the MACs change; the backend must be on a segment of
//!   the egress interface (config checks this at start).
//! - `tunnel` (IPIP, IPv6-in-IPv6): an outer header from the tunnel source
//!   to the backend is prepended; the backend strips it (`xdplb decap`, or
//!   the kernel's ipip / ip6tnl device). The outer header adds 20 (40)
//!   bytes, so a packet that no longer fits is answered with
//!   fragmentation-needed (packet-too-big) quoting the MTU less the outer
//!   header, and the client's path-MTU discovery works.
//!
//! Neither mode can let the kernel finish a send: a dsr frame is still
//! addressed to the VIP (the kernel would route it back to itself), and an
//! outer packet's source is one of this host's addresses, which the kernel
//! drops as martian when it forwards it. A frame we cannot send ourselves
//! is dropped and counted as `direct_unreachable`.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{Addr6, FibEntry, GlobalCounter, IPPROTO_IPIP, IPPROTO_IPV6};

use crate::{
    answer, answer6,
    consts::{BE_IP_DF, ETH_HLEN, ICMPV6_PKT_TOOBIG, IPV4_MIN_HLEN, IPV6_HLEN, ORIGIN_TTL},
    csum::{fold, sum_words},
    forward::{fits, fits_grown, next_hop, next_hop6, Next},
    maps::TX_PORTS,
    parse::{load32, ptr_at, store32, EthHdr, Ipv4Hdr},
    parse6::{load_addr6, store_addr6, Ipv6Hdr},
    stats::count,
    verdict::{answered, drop},
};

/// `tunnel_source` for IPv4 (network order), set by user space with
/// `override_global` before the program loads; 0 when none is configured.
#[no_mangle]
static TUNNEL_SOURCE_V4: u32 = 0;

/// `tunnel_source` for IPv6, as `TUNNEL_SOURCE_V4`; all zero when none.
#[no_mangle]
static TUNNEL_SOURCE_V6: Addr6 = Addr6 { words: [0; 4] };

/// The frame's IPv4 header fields a direct send needs.
struct Inner {
    saddr: u32,
    tos: u8,
    tot_len: u16,
    df: bool,
    proto: u8,
}

#[inline(always)]
fn inner(ctx: &XdpContext) -> Option<Inner> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    Some(Inner {
        saddr: load32(&ip.saddr),
        tos: ip.tos,
        tot_len: u16::from_be(ip.tot_len),
        df: ip.frag_off & BE_IP_DF != 0,
        proto: ip.proto,
    })
}

/// Sends the frame from `hop`'s interface to `hop`'s next hop MAC.
#[inline(always)]
fn emit_l2(ctx: &XdpContext, hop: &FibEntry) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return drop(ctx, GlobalCounter::DropInternal);
    };
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &mut *eth };
    eth.src = hop.src_mac;
    eth.dst = hop.dst_mac;
    count(GlobalCounter::Redirected);
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        return crate::verdict::hairpin(ctx);
    }
    match TX_PORTS.redirect(hop.ifindex, xdp_action::XDP_PASS as u64) {
        Ok(action) => action,
        Err(action) => {
            count(GlobalCounter::RedirectFallback);
            action
        }
    }
}

/// The frame, unchanged but for its MACs, to the backend at `backend`.
#[inline(always)]
pub fn dsr(ctx: &XdpContext, backend: u32, now: u64) -> u32 {
    let Some(p) = inner(ctx) else {
        return drop(ctx, GlobalCounter::DropInternal);
    };
    let hop = match next_hop(ctx, p.saddr, backend, p.tos, p.proto, now) {
        Next::Send(hop) => hop,
        // The kernel would route the frame by its destination, the VIP:
        // nothing but an L2 send is right. Health probes keep the
        // backend's neighbour entry fresh, so this is rare.
        Next::Kernel => return drop(ctx, GlobalCounter::DropDirectUnreachable),
        Next::Drop(reason) => return drop(ctx, reason),
    };
    if let Err(mtu) = fits(ctx, &hop) {
        if p.df {
            return match answer::unreachable(ctx, crate::consts::ICMP_FRAG_NEEDED, mtu) {
                Some(()) => answered(ctx, GlobalCounter::FragNeededSent),
                None => drop(ctx, GlobalCounter::DropInternal),
            };
        }
        // L2 cannot fragment, and the kernel would route by the VIP.
        return drop(ctx, GlobalCounter::DropDirectUnreachable);
    }
    count(GlobalCounter::DsrSent);
    emit_l2(ctx, &hop)
}

/// The frame's IP packet inside an outer IPv4 header to `backend`.
#[inline(always)]
pub fn tunnel(ctx: &XdpContext, backend: u32, now: u64) -> u32 {
    // verifier: volatile so the loaded value (set at load time) is used.
    let source = unsafe { core::ptr::read_volatile(&TUNNEL_SOURCE_V4) };
    if source == 0 {
        return drop(ctx, GlobalCounter::DropInternal);
    }
    let Some(p) = inner(ctx) else {
        return drop(ctx, GlobalCounter::DropInternal);
    };
    let hop = match next_hop(ctx, source, backend, p.tos, IPPROTO_IPIP, now) {
        Next::Send(hop) => hop,
        // Neighbour unresolved, or an egress that is not ours: the kernel
        // would drop the outer packet (its source is ours, a martian to
        // forwarding). Health probes go through the kernel to the backend
        // and keep its neighbour entry resolved, so this is rare; `check`
        // refuses a backend routed out of an interface that is not ours.
        Next::Kernel => return drop(ctx, GlobalCounter::DropDirectUnreachable),
        Next::Drop(reason) => return drop(ctx, reason),
    };
    if let Err(mtu) = fits_grown(ctx, &hop, IPV4_MIN_HLEN as u32) {
        // DF or not (as Katran): nothing on the way could deliver the outer
        // packet whole (we cannot fragment, the kernel would drop it as
        // above, and `xdplb decap` drops outer fragments), so the client
        // is told to send less. Before any rewrite: it must recognise the
        // quote.
        let room = mtu.saturating_sub(IPV4_MIN_HLEN as u32);
        return match answer::unreachable(ctx, crate::consts::ICMP_FRAG_NEEDED, room) {
            Some(()) => answered(ctx, GlobalCounter::FragNeededSent),
            None => drop(ctx, GlobalCounter::DropInternal),
        };
    }
    if !encapsulate(ctx, source, backend, &p) {
        return drop(ctx, GlobalCounter::DropInternal);
    }
    count(GlobalCounter::TunnelSent);
    emit_l2(ctx, &hop)
}

/// Prepends the outer header; the Ethernet header moves to the new front.
#[inline(always)]
fn encapsulate(ctx: &XdpContext, source: u32, backend: u32, p: &Inner) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    let (dst, src) = unsafe { ((*eth).dst, (*eth).src) };
    // SAFETY: valid context; the helper checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV4_MIN_HLEN as i32)) } != 0 {
        return false;
    }
    // Every packet pointer is stale after the resize: derive them again.
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    eth.dst = dst;
    eth.src = src;
    eth.proto = crate::consts::BE_ETH_P_IP;
    ip.ver_ihl = 0x45;
    // DSCP and ECN copied (RFC 2003 §3.1, RFC 6040 normal mode).
    ip.tos = p.tos;
    ip.tot_len = (p.tot_len + IPV4_MIN_HLEN as u16).to_be();
    ip.id = 0;
    ip.frag_off = if p.df { BE_IP_DF } else { 0 };
    ip.ttl = ORIGIN_TTL;
    ip.proto = IPPROTO_IPIP;
    ip.check = 0;
    store32(&mut ip.saddr, source);
    store32(&mut ip.daddr, backend);
    // SAFETY: Ipv4Hdr is 20 bytes of plain integers, 2-aligned.
    let words = unsafe { &*(ip as *const Ipv4Hdr as *const [u16; 10]) };
    ip.check = !fold(sum_words(words));
    true
}

/// The frame's IPv6 header fields a direct send needs.
struct Inner6 {
    saddr: Addr6,
    /// Version, traffic class and flow label, as on the wire.
    vtc_flow: [u16; 2],
    payload_len: u16,
    next: u8,
}

#[inline(always)]
fn inner6(ctx: &XdpContext) -> Option<Inner6> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    Some(Inner6 {
        saddr: load_addr6(&ip.saddr),
        vtc_flow: ip.vtc_flow,
        payload_len: u16::from_be(ip.payload_len),
        next: ip.nexthdr,
    })
}

/// Packet too big from the VIP, quoting the packet: IPv6 is never
/// fragmented on the way, so a packet that does not fit is answered.
#[inline(always)]
fn too_big6(ctx: &XdpContext, mtu: u32) -> u32 {
    match answer6::error(ctx, ICMPV6_PKT_TOOBIG, 0, mtu) {
        Some(()) => answered(ctx, GlobalCounter::FragNeededSent),
        None => drop(ctx, GlobalCounter::DropInternal),
    }
}

/// [`dsr`] for IPv6: only the MACs change.
#[inline(always)]
pub fn dsr6(ctx: &XdpContext, backend: &Addr6, now: u64) -> u32 {
    let Some(p) = inner6(ctx) else {
        return drop(ctx, GlobalCounter::DropInternal);
    };
    let hop = match next_hop6(ctx, &p.saddr, backend, p.next, now) {
        Next::Send(hop) => hop,
        Next::Kernel => return drop(ctx, GlobalCounter::DropDirectUnreachable),
        Next::Drop(reason) => return drop(ctx, reason),
    };
    if let Err(mtu) = fits(ctx, &hop) {
        return too_big6(ctx, mtu);
    }
    count(GlobalCounter::DsrSent);
    emit_l2(ctx, &hop)
}

/// [`tunnel`] for IPv6: the packet inside an outer IPv6 header
/// (IPv6-in-IPv6, RFC 2473) from `TUNNEL_SOURCE_V6` to `backend`.
#[inline(always)]
pub fn tunnel6(ctx: &XdpContext, backend: &Addr6, now: u64) -> u32 {
    // verifier: volatile so the loaded value, not the default, is used.
    let source = unsafe { core::ptr::read_volatile(&TUNNEL_SOURCE_V6) };
    if source.words == [0; 4] {
        return drop(ctx, GlobalCounter::DropInternal);
    }
    let Some(p) = inner6(ctx) else {
        return drop(ctx, GlobalCounter::DropInternal);
    };
    let hop = match next_hop6(ctx, &source, backend, IPPROTO_IPV6, now) {
        Next::Send(hop) => hop,
        // As in `tunnel`: the kernel would drop an outer packet from one of
        // its own addresses; rare, since probes keep the neighbour fresh.
        Next::Kernel => return drop(ctx, GlobalCounter::DropDirectUnreachable),
        Next::Drop(reason) => return drop(ctx, reason),
    };
    if let Err(mtu) = fits_grown(ctx, &hop, IPV6_HLEN as u32) {
        return too_big6(ctx, mtu.saturating_sub(IPV6_HLEN as u32));
    }
    if !encapsulate6(ctx, &source, backend, &p) {
        return drop(ctx, GlobalCounter::DropInternal);
    }
    count(GlobalCounter::TunnelSent);
    emit_l2(ctx, &hop)
}

#[inline(always)]
fn encapsulate6(ctx: &XdpContext, source: &Addr6, backend: &Addr6, p: &Inner6) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    let (dst, src) = unsafe { ((*eth).dst, (*eth).src) };
    // SAFETY: growing the head by a constant; pointers re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV6_HLEN as i32)) } != 0 {
        return false;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    eth.dst = dst;
    eth.src = src;
    eth.proto = crate::consts::BE_ETH_P_IPV6;
    // The inner word whole: version 6; the traffic class, DSCP and ECN
    // copied (RFC 2473 §6.5, RFC 6040 normal mode); and the client's flow
    // label, constant per flow, so ECMP on the way to the backend spreads
    // flows and keeps each on one path (RFC 6438's aim). The ring hash is
    // not at hand here: a flow found in the table was never hashed.
    ip.vtc_flow = p.vtc_flow;
    ip.payload_len = p.payload_len.wrapping_add(IPV6_HLEN as u16).to_be();
    ip.nexthdr = IPPROTO_IPV6;
    ip.hop_limit = ORIGIN_TTL;
    store_addr6(&mut ip.saddr, source);
    store_addr6(&mut ip.daddr, backend);
    true
}
