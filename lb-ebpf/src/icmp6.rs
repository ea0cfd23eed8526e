//! ICMPv6 errors (destination unreachable, packet too big, time exceeded)
//! follow their flow, as `icmp` does for IPv4. The ICMPv6 checksum also
//! covers the outer addresses (its pseudo-header, RFC 4443 §2.3), so an
//! outer rewrite is folded into it too; there are no IP header checksums.
use aya_ebpf::programs::XdpContext;
use lb_common::{
    Addr6, FlowKey6, GlobalCounter, L4Addr6, ReplyEntry6, VipMeta, VIP_F_DSR, VIP_F_TUNNEL,
};

use crate::{
    consts::MIN_FORWARD_TTL,
    csum::replace16,
    direct,
    host::{for_us, is_local6},
    maps::{REPLIES6, VIPS6},
    nat6::replace_addr6,
    parse::IcmpHdr,
    parse6::{load_addr6, store_addr6, Icmp6Packet, Ipv6Hdr, Parsed6},
    select,
    six::{backend_addr6, emit6},
    stats::count,
    verdict::{drop, pass, pass_because},
};

/// The ICMPv6 program (a tail call from the IPv6 one, for a stack of its
/// own): the error `parse6` found, parsed again.
#[inline(always)]
pub fn program(ctx: &XdpContext) -> u32 {
    match crate::parse6::icmp6_only(ctx) {
        Parsed6::IcmpError(p) => translate(ctx, &p),
        Parsed6::IcmpUnparsed => pass_because(GlobalCounter::PassIcmpUnparsed),
        _ => pass(),
    }
}

/// Each direction is out of line, a BPF frame of its own.
#[inline(always)]
pub fn translate(ctx: &XdpContext, p: &Icmp6Packet) -> u32 {
    // SAFETY: parse6 bounds-checked all three.
    let (ip, inner, ports) = unsafe { (&*p.ip, &*p.inner, &*p.inner_ports) };
    if ip.hop_limit < MIN_FORWARD_TTL {
        return pass();
    }
    let outer_dst = load_addr6(&ip.daddr);
    let inner_src = load_addr6(&inner.saddr);
    if outer_dst != inner_src {
        return pass();
    }
    let proto = inner.nexthdr;
    // About a packet a VIP sent (VIP:port → client): to the flow's backend.
    let vip_key = L4Addr6 {
        addr: inner_src,
        port: ports[0],
        proto,
        _pad: 0,
    };
    // SAFETY: the reference lives while the program runs.
    if let Some(vip) = unsafe { VIPS6.get(&vip_key) } {
        if !for_us(ctx) {
            return pass_because(GlobalCounter::PassNotForUs);
        }
        return to_backend(ctx, p, vip);
    }
    // About a packet a client sent to a backend: for the client, as if
    // the VIP had been its destination.
    if is_local6(&outer_dst) {
        return pass();
    }
    let backend_key = L4Addr6 {
        addr: load_addr6(&inner.daddr),
        port: ports[1],
        proto,
        _pad: 0,
    };
    // SAFETY: as above.
    if let Some(reply) = unsafe { REPLIES6.get(&backend_key) } {
        if !for_us(ctx) {
            return pass_because(GlobalCounter::PassNotForUs);
        }
        return to_client(ctx, p, reply);
    }
    pass()
}

#[inline(never)]
fn to_backend(ctx: &XdpContext, p: &Icmp6Packet, vip: &VipMeta) -> u32 {
    // SAFETY: parse6 bounds-checked all four.
    let (ip, icmp, inner, ports) =
        unsafe { (&mut *p.ip, &mut *p.icmp, &mut *p.inner, &mut *p.inner_ports) };
    let flow = FlowKey6 {
        src_addr: load_addr6(&inner.daddr),
        dst_addr: load_addr6(&inner.saddr),
        src_port: ports[1],
        dst_port: ports[0],
        proto: inner.nexthdr,
        _pad: [0; 3],
    };
    let choice = match select::peek(&flow, vip) {
        Ok(c) => c,
        Err(reason) => return drop(ctx, reason),
    };
    let Some(addr) = backend_addr6(choice.backend) else {
        return drop(ctx, GlobalCounter::DropInternal);
    };
    count(GlobalCounter::IcmpToBackend);
    if vip.flags & (VIP_F_DSR | VIP_F_TUNNEL) != 0 {
        let now = crate::coarse_now();
        return if vip.flags & VIP_F_DSR != 0 {
            direct::dsr6(ctx, &addr, now)
        } else {
            direct::tunnel6(ctx, &addr, now)
        };
    }
    let outer_src = load_addr6(&ip.saddr);
    let outer_dst = load_addr6(&ip.daddr);
    store_addr6(&mut ip.daddr, &addr);
    icmp.check = replace_addr6(icmp.check, &outer_dst, &addr);
    requote(icmp, inner, ports, Quoted::Source, &addr, choice.meta.port);
    emit6(ctx, p.ip, &outer_src, &addr)
}

#[inline(never)]
fn to_client(ctx: &XdpContext, p: &Icmp6Packet, reply: &ReplyEntry6) -> u32 {
    // SAFETY: parse6 bounds-checked all four.
    let (ip, icmp, inner, ports) =
        unsafe { (&mut *p.ip, &mut *p.icmp, &mut *p.inner, &mut *p.inner_ports) };
    let (vip, vip_port) = (reply.vip_addr, reply.vip_port);
    let backend = load_addr6(&inner.daddr);
    requote(icmp, inner, ports, Quoted::Destination, &vip, vip_port);
    let outer_src = load_addr6(&ip.saddr);
    let mut src = outer_src;
    if outer_src == backend {
        store_addr6(&mut ip.saddr, &vip);
        icmp.check = replace_addr6(icmp.check, &outer_src, &vip);
        src = vip;
    }
    count(GlobalCounter::IcmpToClient);
    let client = load_addr6(&ip.daddr);
    emit6(ctx, p.ip, &src, &client)
}

enum Quoted {
    Source,
    Destination,
}

/// Rewrites one end of the quoted header; the ICMPv6 checksum covers it.
#[inline(always)]
fn requote(
    icmp: &mut IcmpHdr,
    inner: &mut Ipv6Hdr,
    ports: &mut [u16; 2],
    side: Quoted,
    addr: &Addr6,
    port: u16,
) {
    let (field, i) = match side {
        Quoted::Source => (&mut inner.saddr, 0),
        Quoted::Destination => (&mut inner.daddr, 1),
    };
    let old_addr = load_addr6(field);
    store_addr6(field, addr);
    let old_port = ports[i];
    ports[i] = port;
    icmp.check = replace16(replace_addr6(icmp.check, &old_addr, addr), old_port, port);
}
