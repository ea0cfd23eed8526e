//! The IPv6 path: the same decisions as the IPv4 path in `main`, on
//! `parse6`'s packets, the `*6` maps and NAT66.
use aya_ebpf::programs::XdpContext;
use lb_common::{
    Addr6, FlowKey6, GlobalCounter, L4Addr6, ReplyEntry6, VipMeta, VIP_F_DSR, VIP_F_REJECT_EMPTY,
    VIP_F_TUNNEL,
};

use crate::{
    answer6, coarse_now,
    consts::{
        ICMPV6_DEST_UNREACH, ICMPV6_PKT_TOOBIG, ICMPV6_PORT_UNREACH, MIN_FORWARD_TTL, TCP_FLAG_FIN,
        TCP_FLAG_RST,
    },
    direct,
    forward::{aggregate, fits, next_hop6, send6, Next},
    host::{for_us, is_local6},
    maps::{BACKEND_ADDRS6, REPLIES6, VIPS6},
    nat6,
    parse6::{parse6, Ipv6Hdr, L4Packet6, Parsed6},
    select,
    stats::{count, count_backend, count_rejected, count_reply, count_vip},
    verdict::{answered, drop, pass, pass_because},
};

#[inline(always)]
pub fn ipv6<const UDP: bool>(ctx: &XdpContext) -> u32 {
    match parse6::<UDP>(ctx) {
        Parsed6::Udp => crate::tail(ctx, lb_common::TAIL_UDP6),
        Parsed6::L4(pkt) => l4(ctx, &pkt),
        Parsed6::IcmpError(_) => crate::tail(ctx, lb_common::TAIL_ICMP6),
        Parsed6::IcmpUnparsed => pass_because(GlobalCounter::PassIcmpUnparsed),
        Parsed6::NotOurs => pass(),
        Parsed6::LaterFragment => pass_because(GlobalCounter::PassFragment),
        Parsed6::ExtUnparsed => pass_because(GlobalCounter::PassIpv6ExtUnparsed),
        Parsed6::Special { key, reason } => {
            if vip_of6(&key).is_some() && for_us(ctx) {
                drop(ctx, reason)
            } else {
                pass()
            }
        }
        Parsed6::Malformed(reason) => {
            if for_us(ctx) {
                drop(ctx, reason)
            } else {
                pass_because(GlobalCounter::PassNotForUs)
            }
        }
    }
}

#[inline(always)]
pub fn vip_of6(key: &FlowKey6) -> Option<&'static VipMeta> {
    let vip = L4Addr6 {
        addr: key.dst_addr,
        port: key.dst_port,
        proto: key.proto,
        _pad: 0,
    };
    // SAFETY: the reference lives while the program runs (RCU).
    unsafe { VIPS6.get(&vip) }
}

#[inline(always)]
fn l4(ctx: &XdpContext, pkt: &L4Packet6) -> u32 {
    if let Some(vip) = vip_of6(&pkt.key) {
        if !for_us(ctx) {
            return pass_because(GlobalCounter::PassNotForUs);
        }
        return to_backend(ctx, pkt, vip);
    }
    let from = L4Addr6 {
        addr: pkt.key.src_addr,
        port: pkt.key.src_port,
        proto: pkt.key.proto,
        _pad: 0,
    };
    // SAFETY: as in `vip_of6`.
    if let Some(reply) = unsafe { REPLIES6.get(&from) } {
        // As for IPv4: a backend talking to this host is the kernel's.
        if is_local6(&pkt.key.dst_addr) {
            return pass();
        }
        if !for_us(ctx) {
            return pass_because(GlobalCounter::PassNotForUs);
        }
        return from_backend(ctx, pkt, reply);
    }
    pass()
}

#[inline(always)]
fn ip(pkt: &L4Packet6) -> &Ipv6Hdr {
    // SAFETY: bounds-checked by parse6.
    unsafe { &*pkt.ip }
}

/// The IPv6 address of backend slot `slot`.
#[inline(always)]
pub fn backend_addr6(slot: u32) -> Option<Addr6> {
    BACKEND_ADDRS6.get(slot).copied()
}

#[inline(always)]
fn to_backend(ctx: &XdpContext, pkt: &L4Packet6, vip: &VipMeta) -> u32 {
    if ip(pkt).hop_limit < MIN_FORWARD_TTL {
        return pass();
    }
    if pkt.ext_headers {
        count(GlobalCounter::Ipv6ExtSkipped);
    }
    let now = coarse_now();
    let choice = match select::select(&pkt.key, vip, pkt.flags, now) {
        Ok(choice) => choice,
        Err(GlobalCounter::DropNoBackend) if vip.flags & VIP_F_REJECT_EMPTY != 0 => {
            return reject(ctx, pkt, vip);
        }
        Err(reason) => return drop(ctx, reason),
    };
    let Some(addr) = backend_addr6(choice.backend) else {
        return drop(ctx, GlobalCounter::DropInternal);
    };
    let bytes = pkt.ip_len as u64;
    count_vip(vip.index, bytes, choice.new_flow);
    count_backend(choice.backend, bytes, choice.new_flow);
    let port = choice.meta.port;
    let partial = nat6::is_partial(pkt);
    if vip.flags & (VIP_F_DSR | VIP_F_TUNNEL) != 0 {
        if partial {
            if !nat6::complete(ctx, pkt) {
                return drop(ctx, GlobalCounter::DropInternal);
            }
            count(GlobalCounter::PartialChecksum);
        }
        if vip.flags & VIP_F_DSR != 0 {
            return direct::dsr6(ctx, &addr, now);
        }
        return direct::tunnel6(ctx, &addr, now);
    }
    let hop = match next_hop6(ctx, &pkt.key.src_addr, &addr, pkt.key.proto, now) {
        Next::Send(hop) => hop,
        Next::Kernel => {
            nat6::to_backend(pkt, &addr, port, partial);
            return pass();
        }
        Next::Drop(reason) => return drop(ctx, reason),
    };
    if let Err(mtu) = fits(ctx, &hop) {
        if aggregate(ctx) {
            // Segments the kernel re-makes on the way out (generic XDP).
            nat6::to_backend(pkt, &addr, port, partial);
            return pass_because(GlobalCounter::PassTooBig);
        }
        // IPv6 routers never fragment: the sender must learn the path MTU
        // (RFC 8201), from the address it sent to, about what it sent.
        return match answer6::error(ctx, ICMPV6_PKT_TOOBIG, 0, mtu) {
            Some(()) => answered(ctx, GlobalCounter::FragNeededSent),
            None => drop(ctx, GlobalCounter::DropInternal),
        };
    }
    nat6::to_backend(pkt, &addr, port, partial);
    finish(ctx, pkt, partial, &hop)
}

#[inline(always)]
fn reject(ctx: &XdpContext, pkt: &L4Packet6, vip: &VipMeta) -> u32 {
    let answer = if pkt.udp() {
        answer6::error(ctx, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, 0)
    } else {
        answer6::reset(ctx, pkt)
    };
    match answer {
        Some(()) => {
            count_rejected(vip.index);
            answered(ctx, GlobalCounter::Rejected)
        }
        None => drop(ctx, GlobalCounter::DropNoBackend),
    }
}

#[inline(always)]
fn from_backend(ctx: &XdpContext, pkt: &L4Packet6, reply: &ReplyEntry6) -> u32 {
    if ip(pkt).hop_limit < MIN_FORWARD_TTL {
        return pass();
    }
    let (vip, vip_port) = (reply.vip_addr, reply.vip_port);
    let partial = nat6::is_partial(pkt);
    let now = coarse_now();
    if pkt.flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
        let client_side = FlowKey6 {
            src_addr: pkt.key.dst_addr,
            dst_addr: vip,
            src_port: pkt.key.dst_port,
            dst_port: vip_port,
            proto: pkt.key.proto,
            _pad: [0; 3],
        };
        select::note_backend_close(&client_side, pkt.flags, now);
    }
    let hop = match next_hop6(ctx, &vip, &pkt.key.dst_addr, pkt.key.proto, now) {
        Next::Send(hop) => hop,
        Next::Kernel => {
            nat6::from_backend(pkt, &vip, vip_port, partial);
            return pass();
        }
        Next::Drop(reason) => return drop(ctx, reason),
    };
    if fits(ctx, &hop).is_err() {
        if aggregate(ctx) {
            // Segments the kernel re-makes on the way out (generic XDP).
            nat6::from_backend(pkt, &vip, vip_port, partial);
            count_reply(reply.backend, pkt.ip_len as u64);
        }
        // Otherwise up as the backend sent it: the kernel sends the
        // backend its packet-too-big, quoting what the backend's stack
        // will match.
        return pass_because(GlobalCounter::PassTooBig);
    }
    nat6::from_backend(pkt, &vip, vip_port, partial);
    count_reply(reply.backend, pkt.ip_len as u64);
    finish(ctx, pkt, partial, &hop)
}

#[inline(always)]
fn finish(ctx: &XdpContext, pkt: &L4Packet6, partial: bool, hop: &lb_common::FibEntry) -> u32 {
    if partial {
        if !nat6::complete(ctx, pkt) {
            return pass();
        }
        count(GlobalCounter::PartialChecksum);
    }
    send6(ctx, pkt.ip, hop)
}

/// Forwards an already rewritten IPv6 packet (an ICMPv6 error).
#[inline(always)]
pub fn emit6(ctx: &XdpContext, ip: *mut Ipv6Hdr, saddr: &Addr6, daddr: &Addr6) -> u32 {
    // SAFETY: bounds-checked by parse6.
    let proto = unsafe { (*ip).nexthdr };
    match next_hop6(ctx, saddr, daddr, proto, coarse_now()) {
        Next::Send(hop) => match fits(ctx, &hop) {
            Ok(()) => send6(ctx, ip, &hop),
            Err(_) => pass_because(GlobalCounter::PassTooBig),
        },
        Next::Kernel => pass(),
        Next::Drop(reason) => drop(ctx, reason),
    }
}
