//! xdplb's XDP program: a layer-4 NAT load balancer.
//!
//! Layout, one concern per module (as Katran's `lib/bpf/`):
//! - `consts`: protocol constants, pre-swapped to network order.
//! - `maps`: every map, sized from `lb_common::limits`.
//! - `parse`: bounds-checked access, IPv4/TCP validation.
//! - `select`: flow table, then the VIP's Maglev ring.
//! - `nat`, `csum`: the rewrites and their checksum updates.
//! - `forward`: next hop (cached FIB), MACs, TTL, redirect.
//! - `stats`: per-CPU counters.
//!
//! Every packet is counted in exactly one verdict counter (user space sums
//! them into `Rx`, which saves a counter update per packet).
#![no_std]
#![no_main]

mod consts;
mod csum;
mod forward;
mod maps;
mod nat;
mod parse;
mod select;
mod stats;

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext,
};
use lb_common::{FlowKey, GlobalCounter, L4Addr, ReplyEntry, VipMeta, IPPROTO_TCP};

use crate::{
    consts::{MIN_FORWARD_TTL, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    forward::{next_hop, send, Next},
    maps::{FLOWS, REPLIES, VIPS},
    parse::{parse, Parsed, TcpPacket},
    stats::{count, count_backend, count_reply, count_vip},
};

#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    match parse(&ctx) {
        Parsed::Tcp(pkt) => balance(&ctx, &pkt),
        Parsed::NotTcp => pass(),
        Parsed::LaterFragment => {
            count(GlobalCounter::PassFragment);
            pass()
        }
        Parsed::Special { key, reason } => {
            if vip_of(&key).is_some() {
                drop(&ctx, reason)
            } else {
                pass()
            }
        }
        Parsed::Malformed(reason) => drop(&ctx, reason),
    }
}

#[inline(always)]
fn pass() -> u32 {
    count(GlobalCounter::Passed);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn drop(ctx: &XdpContext, reason: GlobalCounter) -> u32 {
    count(reason);
    count(GlobalCounter::Dropped);
    if reason == GlobalCounter::DropInternal {
        // Never on the hot path: this means a map the controller keeps
        // consistent was not (a slot or ring index out of range).
        aya_log_ebpf::error!(
            ctx,
            "xdplb: internal drop: a map lookup that cannot fail failed"
        );
    }
    xdp_action::XDP_DROP
}

#[inline(always)]
fn vip_of(key: &FlowKey) -> Option<&'static VipMeta> {
    let vip = L4Addr {
        addr: key.dst_addr,
        port: key.dst_port,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    // SAFETY: the reference lives while the program runs (RCU).
    unsafe { VIPS.get(&vip) }
}

#[inline(always)]
fn balance(ctx: &XdpContext, pkt: &TcpPacket) -> u32 {
    if let Some(vip) = vip_of(&pkt.key) {
        return to_backend(ctx, pkt, vip);
    }
    let from = L4Addr {
        addr: pkt.key.src_addr,
        port: pkt.key.src_port,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    // SAFETY: as in `vip_of`.
    if let Some(reply) = unsafe { REPLIES.get(&from) } {
        return from_backend(ctx, pkt, reply);
    }
    pass()
}

#[inline(always)]
fn ttl_expires(pkt: &TcpPacket) -> bool {
    // SAFETY: bounds-checked by parse.
    unsafe { (*pkt.ip).ttl < MIN_FORWARD_TTL }
}

#[inline(always)]
fn to_backend(ctx: &XdpContext, pkt: &TcpPacket, vip: &VipMeta) -> u32 {
    if ttl_expires(pkt) {
        return pass();
    }
    let syn = pkt.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    let closing = pkt.flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0;
    let now = coarse_now();
    let choice = match select::select(&pkt.key, vip, syn, closing, now) {
        Ok(choice) => choice,
        Err(reason) => return drop(ctx, reason),
    };
    nat::to_backend(pkt, choice.meta.addr, choice.meta.port);
    let bytes = pkt.ip_len as u64;
    count_vip(vip.index, bytes, choice.new_flow);
    count_backend(choice.backend, bytes, choice.new_flow);
    emit(ctx, pkt, now)
}

#[inline(always)]
fn from_backend(ctx: &XdpContext, pkt: &TcpPacket, reply: &ReplyEntry) -> u32 {
    let client_side = FlowKey {
        src_addr: pkt.key.dst_addr,
        dst_addr: reply.vip_addr,
        src_port: pkt.key.dst_port,
        dst_port: reply.vip_port,
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    // Only a flow pinned to this backend is ours to rewrite: anything else
    // from the backend's port (the controller's own health checks, say)
    // is the kernel's.
    // SAFETY: as in `vip_of`.
    match unsafe { FLOWS.get(&client_side) } {
        Some(flow) if flow.backend == reply.backend => {}
        _ => return pass(),
    }
    if ttl_expires(pkt) {
        return pass();
    }
    nat::from_backend(pkt, reply.vip_addr, reply.vip_port);
    count_reply(reply.backend, pkt.ip_len as u64);
    emit(ctx, pkt, coarse_now())
}

#[inline(always)]
fn emit(ctx: &XdpContext, pkt: &TcpPacket, now: u64) -> u32 {
    match next_hop(ctx, pkt, now) {
        Next::Send(hop) => send(ctx, pkt, &hop),
        Next::Kernel => pass(),
        Next::Drop(reason) => drop(ctx, reason),
    }
}

/// Clock for flow recency and FIB-cache expiry: jiffy resolution is
/// plenty for both, and the coarse clock reads no hardware counter.
#[inline(always)]
fn coarse_now() -> u64 {
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
