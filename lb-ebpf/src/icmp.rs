//! ICMP errors that belong to a balanced flow, translated as the NAT
//! translated the packet they quote (as IPVS does; Katran steers them).
//!
//! - To a VIP, quoting VIP:port → client (a router on the client's path
//!   could not deliver what the backend sent, e.g. fragmentation needed):
//!   sent to the backend that owns the flow, outer destination and quoted
//!   source rewritten to that backend, so its stack lowers the path MTU or
//!   aborts the connection.
//! - To a client, quoting client → backend:port (a router on the backend's
//!   side, or the backend itself): quoted destination rewritten to the VIP,
//!   and the outer source too when it is the backend, so the client's
//!   stack matches it to its connection to the VIP.
//!
//! The outer and quoted IPv4 header checksums and the ICMP checksum (which
//! covers the quote, and for ICMPv6 the outer addresses) are updated
//! incrementally; the quoted TCP checksum is left as it is (no stack checks
//! it). IPv4 errors are translated in the main program; ICMPv6 ones in a
//! program of their own (`xdplb_icmp6`), for a stack of their own.
use aya_ebpf::programs::XdpContext;
use lb_common::{GlobalCounter, VipMeta, IPPROTO_TCP, IPPROTO_UDP, VIP_F_DSR, VIP_F_TUNNEL};

use crate::{
    answer,
    consts::{ETH_HLEN, ICMP_HLEN, MIN_FORWARD_TTL},
    csum::replace16,
    direct,
    family::{Family, Ipv6, Reply},
    forward::originate,
    host::for_us,
    parse::{icmp6_only, ptr_at, IcmpHdr, IcmpPacket, Parsed},
    pipeline::{coarse_now, emit},
    select::{self, Flow},
    stats::count,
    verdict::{drop, pass, pass_because},
};

/// The ICMPv6 program (a tail call from the IPv6 one): the error the
/// IPv6 parse found, parsed again.
#[inline(always)]
pub fn program6(ctx: &XdpContext) -> u32 {
    match icmp6_only(ctx) {
        Parsed::IcmpError(p) => translate::<Ipv6>(ctx, &p),
        Parsed::TunnelTooBig => tunnel_too_big::<Ipv6>(ctx),
        Parsed::IcmpUnparsed => pass_because(GlobalCounter::PassIcmpUnparsed),
        _ => pass(),
    }
}

#[inline(always)]
pub fn translate<F: Family>(ctx: &XdpContext, p: &IcmpPacket<F>) -> u32 {
    // SAFETY: the parse bounds-checked all three.
    let (ip, inner, ports) = unsafe { (&*p.ip, &*p.inner, &*p.inner_ports) };
    if F::hop_limit(ip) < MIN_FORWARD_TTL {
        return pass();
    }
    let outer_dst = F::dst(ip);
    let inner_src = F::src(inner);
    if outer_dst != inner_src {
        return not_ours::<F>(ctx, &outer_dst);
    }
    let proto = F::proto(inner);
    // About a packet a VIP sent (VIP:port → client): to the flow's backend.
    if let Some(vip) = F::vip(&inner_src, ports[0], proto) {
        if !for_us(ctx) {
            return pass_because(GlobalCounter::PassNotForUs);
        }
        return to_backend(ctx, p, vip);
    }
    // About a packet a client sent to a backend: for the client, as if
    // the VIP had been its destination.
    if F::is_local(&outer_dst) {
        return pass();
    }
    if let Some(reply) = F::reply(&F::dst(inner), ports[1], proto) {
        if !for_us(ctx) {
            return pass_because(GlobalCounter::PassNotForUs);
        }
        return to_client(ctx, p, &reply);
    }
    not_ours::<F>(ctx, &outer_dst)
}

/// A router's fragmentation-needed (packet-too-big) about an outer packet
/// this gateway sent from `tunnel_source` (RFC 2003 §4 and RFC 2473 §8
/// leave relaying it to the tunnel's entry point): translated into one
/// from the VIP to the client, about the client's own packet, quoting the
/// router's MTU less the outer header (never less than `F::MIN_PMTU`). The
/// backend never sees it: its answers do not cross the tunnel. A message
/// the program makes, so rate-limited as the others; anything else of the
/// kind is the kernel's.
#[inline(always)]
pub fn tunnel_too_big<F: Family>(ctx: &XdpContext) -> u32 {
    let icmp_off = ETH_HLEN + F::HLEN;
    let outer_off = icmp_off + ICMP_HLEN;
    let inner_off = outer_off + F::HLEN;
    let (Some(ip), Some(icmp), Some(outer), Some(inner), Some(ports)) = (
        ptr_at::<F::Hdr>(ctx, ETH_HLEN),
        ptr_at::<IcmpHdr>(ctx, icmp_off),
        ptr_at::<F::Hdr>(ctx, outer_off),
        ptr_at::<F::Hdr>(ctx, inner_off),
        ptr_at::<[u16; 4]>(ctx, inner_off + F::HLEN),
    ) else {
        // The router quoted too little of the outer packet to find the
        // client's (RFC 792 asks for only 8 bytes after the header).
        return pass_because(GlobalCounter::PassIcmpUnparsed);
    };
    // SAFETY: bounds checked by ptr_at.
    let (ip, icmp, outer, inner, ports) = unsafe { (&*ip, &*icmp, &*outer, &*inner, &*ports) };
    let to = F::dst(ip);
    if !F::is_tunnel_source(&to) || F::src(outer) != to {
        return pass();
    }
    let proto = F::proto(inner);
    if !F::plain(inner) || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return pass_because(GlobalCounter::PassIcmpUnparsed);
    }
    let (client, vip) = (F::src(inner), F::dst(inner));
    match F::vip(&vip, ports[1], proto) {
        Some(meta) if meta.flags & VIP_F_TUNNEL != 0 => {}
        _ => return pass(),
    }
    if !for_us(ctx) {
        return pass_because(GlobalCounter::PassNotForUs);
    }
    let mtu = F::quoted_mtu(&icmp.rest)
        .saturating_sub(F::HLEN as u32)
        .max(F::MIN_PMTU);
    if !answer::may_answer() {
        return drop(ctx, GlobalCounter::DropAnswerLimited);
    }
    if answer::unwrap_too_big::<F>(ctx, &client, &vip, mtu).is_none() {
        return drop(ctx, GlobalCounter::DropInternal);
    }
    count(GlobalCounter::TunnelTooBig);
    originate::<F>(ctx, &vip, &client, F::ICMP_PROTO, coarse_now())
}

/// An error about no flow of ours: the kernel's, unless it is addressed
/// to a VIP address (the kernel would route it back upstream).
#[inline(always)]
fn not_ours<F: Family>(ctx: &XdpContext, outer_dst: &F::Addr) -> u32 {
    if F::vip_addr(outer_dst).is_some() && for_us(ctx) {
        drop(ctx, GlobalCounter::DropNoPool)
    } else {
        pass()
    }
}

#[inline(always)]
fn to_backend<F: Family>(ctx: &XdpContext, p: &IcmpPacket<F>, vip: &VipMeta) -> u32 {
    // SAFETY: the parse bounds-checked all four.
    let (ip, icmp, inner, ports) =
        unsafe { (&mut *p.ip, &mut *p.icmp, &mut *p.inner, &mut *p.inner_ports) };
    let flow = F::Key::new(
        &F::dst(inner),
        &F::src(inner),
        ports[1],
        ports[0],
        F::proto(inner),
    );
    let choice = match select::peek(&flow, vip) {
        Ok(c) => c,
        Err(reason) => return drop(ctx, reason),
    };
    let Some(addr) = F::backend_addr(choice.backend, &choice.meta) else {
        return drop(ctx, GlobalCounter::DropInternal);
    };
    count(GlobalCounter::IcmpToBackend);
    if vip.flags & (VIP_F_DSR | VIP_F_TUNNEL) != 0 {
        // The backend's socket is bound to the VIP: it must see the error
        // as it was sent, only delivered (as Katran does).
        let now = coarse_now();
        return if vip.flags & VIP_F_DSR != 0 {
            direct::dsr::<F>(ctx, choice.backend, &addr, now)
        } else {
            direct::tunnel::<F>(ctx, choice.backend, &addr, choice.hash, now)
        };
    }
    let outer_src = F::src(ip);
    let outer_dst = F::set_dst(ip, &addr);
    if F::ICMP_PSEUDO {
        icmp.check = F::replace_addr(icmp.check, &outer_dst, &addr);
    }
    requote::<F>(icmp, inner, ports, Quoted::Source, &addr, choice.meta.port);
    emit::<F>(ctx, p.ip, &outer_src, &addr)
}

#[inline(always)]
fn to_client<F: Family>(ctx: &XdpContext, p: &IcmpPacket<F>, reply: &Reply<F>) -> u32 {
    // SAFETY: the parse bounds-checked all four.
    let (ip, icmp, inner, ports) =
        unsafe { (&mut *p.ip, &mut *p.icmp, &mut *p.inner, &mut *p.inner_ports) };
    let backend = F::dst(inner);
    requote::<F>(
        icmp,
        inner,
        ports,
        Quoted::Destination,
        &reply.vip,
        reply.port,
    );
    let outer_src = F::src(ip);
    let mut src = outer_src;
    if outer_src == backend {
        F::set_src(ip, &reply.vip);
        if F::ICMP_PSEUDO {
            icmp.check = F::replace_addr(icmp.check, &outer_src, &reply.vip);
        }
        src = reply.vip;
    }
    count(GlobalCounter::IcmpToClient);
    let client = F::dst(ip);
    emit::<F>(ctx, p.ip, &src, &client)
}

/// Which end of the quoted packet a translation rewrites.
enum Quoted {
    Source,
    Destination,
}

/// Rewrites one end (address and port) of the quoted header, mending the
/// quoted header's checksum (IPv4) and the ICMP checksum, which covers
/// the whole quote.
#[inline(always)]
fn requote<F: Family>(
    icmp: &mut IcmpHdr,
    inner: &mut F::Hdr,
    ports: &mut [u16; 2],
    side: Quoted,
    addr: &F::Addr,
    port: u16,
) {
    let old_check = F::header_check(inner);
    let (old_addr, i) = match side {
        Quoted::Source => (F::set_src(inner, addr), 0),
        Quoted::Destination => (F::set_dst(inner, addr), 1),
    };
    let old_port = ports[i];
    ports[i] = port;
    let mut check = F::replace_addr(icmp.check, &old_addr, addr);
    if F::HEADER_CHECKSUM {
        check = replace16(check, old_check, F::header_check(inner));
    }
    icmp.check = replace16(check, old_port, port);
}
