//! `xdplb decap`: the backend side of a `tunnel` pool, for hosts whose
//! kernel has no ipip module. IPv4-in-IPv4 and IPv6-in-IPv6 packets
//! addressed to this host lose their outer header here and go to the
//! kernel as the inner packet (whose destination, the VIP, the host holds
//! on a loopback). Everything else passes untouched. Counted per outcome
//! (`lb_common::decap`).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    decap::{DecapCounter, MAX_ADDRS},
    Addr6, IPPROTO_IPIP, IPPROTO_IPV6,
};

/// This host's addresses (network order → 1), written by `xdplb decap`.
#[map]
static DECAP_ADDRS: HashMap<u32, u32> = HashMap::pinned(MAX_ADDRS, 0);

#[map]
static DECAP_ADDRS6: HashMap<Addr6, u32> = HashMap::pinned(MAX_ADDRS, 0);

#[map]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::pinned(DecapCounter::COUNT, 0);

const ETH_HLEN: usize = 14;
const IP_HLEN: usize = 20;
const BE_ETH_P_IP: u16 = 0x0800u16.to_be();
const BE_ETH_P_IPV6: u16 = 0x86ddu16.to_be();
const IPV6_HLEN: usize = 40;

#[repr(C)]
struct Ipv6Hdr {
    vtc_flow: [u16; 2],
    payload_len: u16,
    nexthdr: u8,
    hop_limit: u8,
    saddr: [u16; 8],
    daddr: [u16; 8],
}
/// frag_off bits as loaded (network order): more fragments, offset.
const BE_IP_MF_OFFSET: u16 = 0x3fffu16.to_be();

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
}

#[repr(C)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: [u16; 2],
    daddr: [u16; 2],
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    if ctx.data() + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((ctx.data() + offset) as *mut T)
}

#[inline(always)]
fn count(c: DecapCounter) {
    if let Some(v) = DECAP_STATS.get_ptr_mut(c as u32) {
        // SAFETY: a per-CPU slot only this CPU writes while we run.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
fn verdict(c: DecapCounter) -> u32 {
    count(c);
    match c {
        DecapCounter::DropMalformed => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

#[xdp]
pub fn xdplb_decap(ctx: XdpContext) -> u32 {
    verdict(decap(&ctx))
}

#[inline(always)]
fn decap(ctx: &XdpContext) -> DecapCounter {
    let (Some(eth), Some(outer)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN))
    else {
        return DecapCounter::Passed;
    };
    // SAFETY: bounds checked by ptr_at.
    let (eth, outer) = unsafe { (&*eth, &*outer) };
    if eth.proto == BE_ETH_P_IPV6 {
        return decap6(ctx);
    }
    if eth.proto != BE_ETH_P_IP || outer.proto != IPPROTO_IPIP {
        return DecapCounter::Passed;
    }
    let daddr = (outer.daddr[0] as u32) | ((outer.daddr[1] as u32) << 16);
    // SAFETY: the reference lives while the program runs (RCU).
    if unsafe { DECAP_ADDRS.get(&daddr) }.is_none() {
        return DecapCounter::Passed;
    }
    // A tunnel for us from here on: what cannot be opened is dropped (the
    // kernel, without an ipip module, would drop it too), and counted.
    let frame = ctx.data_end() - ctx.data();
    let outer_len = u16::from_be(outer.tot_len) as usize;
    if outer.ver_ihl != 0x45
        || outer.frag_off & BE_IP_MF_OFFSET != 0
        || outer_len < 2 * IP_HLEN
        || ETH_HLEN + outer_len > frame
    {
        return DecapCounter::DropMalformed;
    }
    let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN + IP_HLEN) else {
        return DecapCounter::DropMalformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let inner = unsafe { &*inner };
    if inner.ver_ihl >> 4 != 4 || u16::from_be(inner.tot_len) as usize + IP_HLEN != outer_len {
        return DecapCounter::DropMalformed;
    }
    let (dst, src) = (eth.dst, eth.src);
    // SAFETY: valid context; the helper checks the frame keeps a header.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, IP_HLEN as i32) } != 0 {
        return DecapCounter::DropMalformed;
    }
    // The Ethernet header moves up onto the old outer header's tail.
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return DecapCounter::DropMalformed;
    };
    // SAFETY: bounds checked by ptr_at (pointers re-derived after the move).
    let eth = unsafe { &mut *eth };
    eth.dst = dst;
    eth.src = src;
    eth.proto = BE_ETH_P_IP;
    DecapCounter::Decapsulated
}

/// IPv6-in-IPv6 (RFC 2473) addressed to this host: the outer header is
/// stripped as for IPIP. An outer header with extension headers is not
/// ours (xdplb never adds any): it passes.
#[inline(always)]
fn decap6(ctx: &XdpContext) -> DecapCounter {
    let (Some(eth), Some(outer)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN))
    else {
        return DecapCounter::Passed;
    };
    // SAFETY: bounds checked by ptr_at.
    let (eth, outer) = unsafe { (&*eth, &*outer) };
    if outer.nexthdr != IPPROTO_IPV6 {
        return DecapCounter::Passed;
    }
    let w = |i: usize| (outer.daddr[2 * i] as u32) | ((outer.daddr[2 * i + 1] as u32) << 16);
    let daddr = Addr6 {
        words: [w(0), w(1), w(2), w(3)],
    };
    if unsafe { DECAP_ADDRS6.get(&daddr) }.is_none() {
        return DecapCounter::Passed;
    }
    let frame = ctx.data_end() - ctx.data();
    let outer_payload = u16::from_be(outer.payload_len) as usize;
    if outer_payload < IPV6_HLEN || ETH_HLEN + IPV6_HLEN + outer_payload > frame {
        return DecapCounter::DropMalformed;
    }
    let Some(inner) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN + IPV6_HLEN) else {
        return DecapCounter::DropMalformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let inner = unsafe { &*inner };
    if (inner.vtc_flow[0] as u8) >> 4 != 6
        || u16::from_be(inner.payload_len) as usize + IPV6_HLEN != outer_payload
    {
        return DecapCounter::DropMalformed;
    }
    let (dst, src) = (eth.dst, eth.src);
    // SAFETY: shrinking the head by a constant; pointers re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, IPV6_HLEN as i32) } != 0 {
        return DecapCounter::DropMalformed;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return DecapCounter::DropMalformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &mut *eth };
    eth.dst = dst;
    eth.src = src;
    eth.proto = BE_ETH_P_IPV6;
    DecapCounter::Decapsulated
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
