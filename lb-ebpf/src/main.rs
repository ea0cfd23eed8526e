//! xdplb's XDP program: a layer-4 NAT load balancer.
//!
//! Layout, one concern per module (as Katran's `lib/bpf/`):
//! - `consts`: protocol constants, pre-swapped to network order.
//! - `maps`: every map, sized from `lb_common::limits`.
//! - `parse`: bounds-checked access, IPv4/TCP/ICMP validation.
//! - `host`: this host's MACs and addresses (what is ours to touch).
//! - `select`: flow table, then the VIP's Maglev ring.
//! - `nat`, `csum`: the rewrites, checksum updates and completion.
//! - `icmp`: ICMP errors translated for the flow they belong to.
//! - `answer`: packets the program answers itself (RST, frag-needed).
//! - `direct`: direct server return, by MAC (`dsr`) or IPIP (`tunnel`).
//! - `forward`: next hop (cached FIB), MTU, MACs, TTL, redirect.
//! - `verdict`, `stats`: per-CPU counters; one verdict per packet.
//! - IPv6: `six` (the IPv6 path), `parse6`, `nat6`, `icmp6`, `answer6`;
//!   `select`, `forward` and `direct` serve both families.
//!
//! Every packet is counted in exactly one verdict counter (user space sums
//! them into `Rx`, which saves a counter update per packet).
#![no_std]
#![no_main]

mod answer;
mod answer6;
mod consts;
mod csum;
mod direct;
mod forward;
mod host;
mod icmp;
mod icmp6;
mod maps;
mod nat;
mod nat6;
mod parse;
mod parse6;
mod select;
mod six;
mod stats;
mod verdict;

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext};
use lb_common::{
    FlowKey, GlobalCounter, L4Addr, ReplyEntry, VipMeta, TAIL_IPV6, TAIL_UDP4, VIP_F_DSR,
    VIP_F_REJECT_EMPTY, VIP_F_TUNNEL,
};

use crate::{
    consts::{
        BE_IP_DF, ICMP_FRAG_NEEDED, ICMP_PORT_UNREACH, MIN_FORWARD_TTL, TCP_FLAG_FIN, TCP_FLAG_RST,
    },
    forward::{aggregate, fits, next_hop, send, Next},
    host::{for_us, is_local},
    maps::{REPLIES, TAILS, VIPS},
    parse::{parse, Family, Ipv4Hdr, L4Packet, Parsed},
    stats::{count, count_backend, count_rejected, count_reply, count_vip},
    verdict::{answered, drop, pass, pass_because},
};

#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    match parse::family(&ctx) {
        Family::Main => ipv4::<false>(&ctx),
        Family::Ipv6 => tail(&ctx, TAIL_IPV6),
        Family::Udp4 => tail(&ctx, TAIL_UDP4),
    }
}

/// IPv6 TCP and ICMPv6 (see `lb_common::TAIL_IPV6` for why a program of
/// its own); it hands UDP on to `xdplb_udp6`.
#[xdp]
pub fn xdplb_ipv6(ctx: XdpContext) -> u32 {
    six::ipv6::<false>(&ctx)
}

/// IPv6 UDP.
#[xdp]
pub fn xdplb_udp6(ctx: XdpContext) -> u32 {
    six::ipv6::<true>(&ctx)
}

/// ICMPv6 errors about IPv6 flows.
#[xdp]
pub fn xdplb_icmp6(ctx: XdpContext) -> u32 {
    icmp6::program(&ctx)
}

/// IPv4 UDP.
#[xdp]
pub fn xdplb_udp4(ctx: XdpContext) -> u32 {
    ipv4::<true>(&ctx)
}

/// Hands the frame to the program in `TAILS[slot]`; returns only if that
/// slot is empty (a data plane loaded by hand, half set up): the kernel
/// gets the frame.
#[inline(always)]
pub fn tail(ctx: &XdpContext, slot: u32) -> u32 {
    // SAFETY: a tail call either leaves this program for good or fails
    // and returns.
    unsafe { TAILS.tail_call(ctx, slot) };
    pass_because(GlobalCounter::PassTailMissing)
}

#[inline(always)]
fn ipv4<const UDP: bool>(ctx: &XdpContext) -> u32 {
    match parse::<UDP>(ctx) {
        Parsed::L4(pkt) => balance(ctx, &pkt),
        Parsed::IcmpError(p) => icmp::translate(&ctx, &p),
        Parsed::IcmpUnparsed => pass_because(GlobalCounter::PassIcmpUnparsed),
        Parsed::NotTcp => pass(),
        Parsed::LaterFragment => pass_because(GlobalCounter::PassFragment),
        Parsed::Special { key, reason } => {
            if vip_of(&key).is_some() && for_us(&ctx) {
                drop(&ctx, reason)
            } else {
                pass()
            }
        }
        Parsed::Malformed(reason) => {
            if for_us(&ctx) {
                drop(&ctx, reason)
            } else {
                pass_because(GlobalCounter::PassNotForUs)
            }
        }
    }
}

#[inline(always)]
fn vip_of(key: &FlowKey) -> Option<&'static VipMeta> {
    if !host::may_be(0, key.dst_addr) {
        return None;
    }
    let vip = L4Addr {
        addr: key.dst_addr,
        port: key.dst_port,
        proto: key.proto,
        _pad: 0,
    };
    // SAFETY: the reference lives while the program runs (RCU).
    unsafe { VIPS.get(&vip) }
}

#[inline(always)]
fn balance(ctx: &XdpContext, pkt: &L4Packet) -> u32 {
    if let Some(vip) = vip_of(&pkt.key) {
        if !for_us(ctx) {
            return pass_because(GlobalCounter::PassNotForUs);
        }
        return to_backend(ctx, pkt, vip);
    }
    if !host::may_be(lb_common::ADDR_FILTER_BACKENDS, pkt.key.src_addr) {
        return pass();
    }
    let from = L4Addr {
        addr: pkt.key.src_addr,
        port: pkt.key.src_port,
        proto: pkt.key.proto,
        _pad: 0,
    };
    // SAFETY: as in `vip_of`.
    if let Some(reply) = unsafe { REPLIES.get(&from) } {
        // Traffic between a backend and this host (health checks, agents)
        // is the kernel's; everything else from a backend's service port is
        // a reply, flow entry or not (stateless reverse NAT).
        if is_local(pkt.key.dst_addr) {
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
fn ip(pkt: &L4Packet) -> &Ipv4Hdr {
    // SAFETY: bounds-checked by parse.
    unsafe { &*pkt.ip }
}

#[inline(always)]
fn dont_fragment(pkt: &L4Packet) -> bool {
    ip(pkt).frag_off & BE_IP_DF != 0
}

#[inline(always)]
fn to_backend(ctx: &XdpContext, pkt: &L4Packet, vip: &VipMeta) -> u32 {
    if ip(pkt).ttl < MIN_FORWARD_TTL {
        return pass();
    }
    let now = coarse_now();
    let choice = match select::select(&pkt.key, vip, pkt.flags, now) {
        Ok(choice) => choice,
        Err(GlobalCounter::DropNoBackend) if vip.flags & VIP_F_REJECT_EMPTY != 0 => {
            return reject(ctx, pkt, vip);
        }
        Err(reason) => return drop(ctx, reason),
    };
    let bytes = pkt.ip_len as u64;
    count_vip(vip.index, bytes, choice.new_flow);
    count_backend(choice.backend, bytes, choice.new_flow);
    let (addr, port) = (choice.meta.addr, choice.meta.port);
    let partial = nat::is_partial(pkt);
    if nat::no_checksum(pkt) {
        count(GlobalCounter::UdpNoChecksum);
    }
    if vip.flags & (VIP_F_DSR | VIP_F_TUNNEL) != 0 {
        // The frame leaves the kernel's offload state behind either way.
        if partial {
            if !nat::complete(ctx, pkt) {
                return drop(ctx, GlobalCounter::DropInternal);
            }
            count(GlobalCounter::PartialChecksum);
        }
        if vip.flags & VIP_F_DSR != 0 {
            return direct::dsr(ctx, addr, now);
        }
        return direct::tunnel(ctx, addr, now);
    }
    let hop = match next_hop(ctx, pkt.key.src_addr, addr, ip(pkt).tos, pkt.key.proto, now) {
        Next::Send(hop) => hop,
        Next::Kernel => {
            nat::to_backend(pkt, addr, port, partial);
            return pass();
        }
        Next::Drop(reason) => return drop(ctx, reason),
    };
    if let Err(mtu) = fits(ctx, &hop) {
        if dont_fragment(pkt) && !aggregate(ctx) {
            // Answer before any rewrite: the quote must be what the client
            // sent, or its stack cannot match it.
            return match answer::unreachable(ctx, ICMP_FRAG_NEEDED, mtu) {
                Some(()) => answered(ctx, GlobalCounter::FragNeededSent),
                None => drop(ctx, GlobalCounter::DropInternal),
            };
        }
        // The kernel fragments what it forwards.
        nat::to_backend(pkt, addr, port, partial);
        return pass_because(GlobalCounter::PassTooBig);
    }
    nat::to_backend(pkt, addr, port, partial);
    finish(ctx, pkt, partial, &hop)
}

#[inline(always)]
fn reject(ctx: &XdpContext, pkt: &L4Packet, vip: &VipMeta) -> u32 {
    let answer = if pkt.udp() {
        answer::unreachable(ctx, ICMP_PORT_UNREACH, 0)
    } else {
        answer::reset(ctx, pkt)
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
fn from_backend(ctx: &XdpContext, pkt: &L4Packet, reply: &ReplyEntry) -> u32 {
    if ip(pkt).ttl < MIN_FORWARD_TTL {
        return pass();
    }
    let (vip, vip_port) = (reply.vip_addr, reply.vip_port);
    let partial = nat::is_partial(pkt);
    let now = coarse_now();
    if pkt.flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
        let client_side = FlowKey {
            src_addr: pkt.key.dst_addr,
            dst_addr: vip,
            src_port: pkt.key.dst_port,
            dst_port: vip_port,
            proto: pkt.key.proto,
            _pad: [0; 3],
        };
        select::note_backend_close(&client_side, pkt.flags, now);
    }
    let hop = match next_hop(ctx, vip, pkt.key.dst_addr, ip(pkt).tos, pkt.key.proto, now) {
        Next::Send(hop) => hop,
        Next::Kernel => {
            nat::from_backend(pkt, vip, vip_port, partial);
            return pass();
        }
        Next::Drop(reason) => return drop(ctx, reason),
    };
    if fits(ctx, &hop).is_err() {
        if !dont_fragment(pkt) || aggregate(ctx) {
            nat::from_backend(pkt, vip, vip_port, partial);
            count_reply(reply.backend, pkt.ip_len as u64);
        }
        // A DF reply goes up as the backend sent it: the kernel, the
        // router on this path, sends the backend its fragmentation-needed
        // quoting exactly what the backend's stack will match.
        return pass_because(GlobalCounter::PassTooBig);
    }
    nat::from_backend(pkt, vip, vip_port, partial);
    count_reply(reply.backend, pkt.ip_len as u64);
    finish(ctx, pkt, partial, &hop)
}

/// Sends a rewritten TCP/UDP packet to `hop`, completing a partial checksum
/// first (the redirected frame leaves the kernel's offload state behind).
#[inline(always)]
fn finish(ctx: &XdpContext, pkt: &L4Packet, partial: bool, hop: &lb_common::FibEntry) -> u32 {
    if partial {
        if !nat::complete(ctx, pkt) {
            // Still a valid partial frame: the kernel can finish it.
            return pass();
        }
        count(GlobalCounter::PartialChecksum);
    }
    send(ctx, pkt.ip, hop)
}

/// Forwards an already rewritten packet (an ICMP error) from `saddr` to
/// `daddr`.
#[inline(always)]
pub fn emit(ctx: &XdpContext, ip: *mut Ipv4Hdr, saddr: u32, daddr: u32) -> u32 {
    // SAFETY: bounds-checked by parse.
    let (tos, proto) = unsafe { ((*ip).tos, (*ip).proto) };
    match next_hop(ctx, saddr, daddr, tos, proto, coarse_now()) {
        Next::Send(hop) => match fits(ctx, &hop) {
            Ok(()) => send(ctx, ip, &hop),
            Err(_) => pass_because(GlobalCounter::PassTooBig),
        },
        Next::Kernel => pass(),
        Next::Drop(reason) => drop(ctx, reason),
    }
}

/// Clock for flow recency and FIB-cache expiry: jiffy resolution is
/// plenty for both, and the coarse clock reads no hardware counter.
#[inline(always)]
pub fn coarse_now() -> u64 {
    // SAFETY: helper call without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
