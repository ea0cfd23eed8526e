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
use lb_common::{FibEntry, GlobalCounter};

use crate::{
    answer::too_big,
    consts::ETH_HLEN,
    family::Family,
    forward::{fits, fits_grown, next_hop, Next},
    maps::TX_PORTS,
    parse::{ptr_at, EthHdr},
    stats::count,
    verdict::drop,
};

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
pub fn dsr<F: Family>(ctx: &XdpContext, backend: &F::Addr, now: u64) -> u32 {
    let Some(ip) = ptr_at::<F::Hdr>(ctx, ETH_HLEN) else {
        return drop(ctx, GlobalCounter::DropInternal);
    };
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let (saddr, unfragmentable) = (F::src(ip), F::must_not_fragment(ip));
    let hop = match next_hop::<F>(ctx, &saddr, backend, F::tos(ip), F::proto(ip), now) {
        Next::Send(hop) => hop,
        // The kernel would route the frame by its destination, the VIP:
        // nothing but an L2 send is right. Health probes keep the
        // backend's neighbour entry fresh, so this is rare.
        Next::Kernel => return drop(ctx, GlobalCounter::DropDirectUnreachable),
        Next::Drop(reason) => return drop(ctx, reason),
    };
    if let Err(mtu) = fits(ctx, &hop) {
        if unfragmentable {
            return too_big::<F>(ctx, mtu);
        }
        // L2 cannot fragment, and the kernel would route by the VIP.
        return drop(ctx, GlobalCounter::DropDirectUnreachable);
    }
    count(GlobalCounter::DsrSent);
    emit_l2(ctx, &hop)
}

/// The frame's IP packet inside an outer header of its own family, from
/// the tunnel source to `backend` (IPIP, RFC 2003; IPv6-in-IPv6, RFC 2473).
/// `hash` is the flow's ring hash: it picks the outer source within a
/// `tunnel_source` prefix, so a flow keeps one outer (source, backend)
/// pair and a backend's NIC spreads a gateway's flows over its queues.
#[inline(always)]
pub fn tunnel<F: Family>(ctx: &XdpContext, backend: &F::Addr, hash: u32, now: u64) -> u32 {
    let Some(source) = F::tunnel_source(hash) else {
        return drop(ctx, GlobalCounter::DropInternal);
    };
    let Some(ip) = ptr_at::<F::Hdr>(ctx, ETH_HLEN) else {
        return drop(ctx, GlobalCounter::DropInternal);
    };
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let inner = F::inner(ip);
    let hop = match next_hop::<F>(ctx, &source, backend, F::tos(ip), F::ENCAP_PROTO, now) {
        Next::Send(hop) => hop,
        // Neighbour unresolved, or an egress that is not ours: the kernel
        // would drop the outer packet (its source is ours, a martian to
        // forwarding). Health probes go through the kernel to the backend
        // and keep its neighbour entry resolved, so this is rare; `check`
        // refuses a backend routed out of an interface that is not ours.
        Next::Kernel => return drop(ctx, GlobalCounter::DropDirectUnreachable),
        Next::Drop(reason) => return drop(ctx, reason),
    };
    if let Err(mtu) = fits_grown(ctx, &hop, F::HLEN as u32) {
        // DF or not (as Katran): nothing on the way could deliver the outer
        // packet whole (we cannot fragment, the kernel would drop it as
        // above, and `xdplb decap` drops outer fragments), so the client
        // is told to send less. Before any rewrite: it must recognise the
        // quote.
        return too_big::<F>(ctx, mtu.saturating_sub(F::HLEN as u32));
    }
    if !encapsulate::<F>(ctx, &source, backend, &inner, hash) {
        return drop(ctx, GlobalCounter::DropInternal);
    }
    count(GlobalCounter::TunnelSent);
    emit_l2(ctx, &hop)
}

/// Prepends the outer header; the Ethernet header moves to the new front.
#[inline(always)]
fn encapsulate<F: Family>(
    ctx: &XdpContext,
    source: &F::Addr,
    backend: &F::Addr,
    inner: &F::Inner,
    hash: u32,
) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    let (dst, src) = unsafe { ((*eth).dst, (*eth).src) };
    // SAFETY: valid context; the helper checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(F::HLEN as i32)) } != 0 {
        return false;
    }
    // Every packet pointer is stale after the resize: derive them again.
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    let Some(ip) = ptr_at::<F::Hdr>(ctx, ETH_HLEN) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    eth.dst = dst;
    eth.src = src;
    eth.proto = F::BE_ETH_P;
    F::write_outer(ip, inner, source, backend, hash);
    true
}
