//! Sending a rewritten packet on: next hop from the FIB (cached), MACs,
//! TTL, then XDP_TX or a redirect.
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_BLACKHOLE,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LKUP_RET_UNREACHABLE,
    },
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{limits::FIB_CACHE_TTL_NS, FibEntry, GlobalCounter, IPPROTO_TCP};

use crate::{
    consts::AF_INET,
    maps::FIB_CACHE,
    nat::decrement_ttl,
    parse::{load32, ptr_at, EthHdr, TcpPacket},
    stats::count,
};

pub enum Next {
    Send(FibEntry),
    /// Let the kernel finish: neighbour unresolved (it will resolve and
    /// forward the already rewritten packet), local delivery, MTU, …
    Kernel,
    Drop(GlobalCounter),
}

/// Where `pkt` goes next. The FIB answer is cached per destination for
/// `FIB_CACHE_TTL_NS`; what changes faster than that (a moved neighbour)
/// heals within the TTL. Policy routing by source is not distinguished.
#[inline(always)]
pub fn next_hop(ctx: &XdpContext, pkt: &TcpPacket, now: u64) -> Next {
    // SAFETY: bounds-checked by parse.
    let ip = unsafe { &*pkt.ip };
    let daddr = load32(&ip.daddr);
    if let Some(hit) = FIB_CACHE.get_ptr(daddr) {
        // SAFETY: valid map value pointer.
        let hit = unsafe { *hit };
        if hit.expires_ns > now {
            return Next::Send(hit);
        }
    }
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers/unions).
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = IPPROTO_TCP;
    params.__bindgen_anon_1.tot_len = u16::from_be(ip.tot_len);
    params.__bindgen_anon_2.tos = ip.tos;
    params.__bindgen_anon_3.ipv4_src = load32(&ip.saddr);
    params.__bindgen_anon_4.ipv4_dst = daddr;
    params.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: params is a valid, fully initialised struct of the size given.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let entry = FibEntry {
                ifindex: params.ifindex,
                _pad: 0,
                src_mac: params.smac,
                dst_mac: params.dmac,
                _pad2: 0,
                expires_ns: now + FIB_CACHE_TTL_NS,
            };
            let _ = FIB_CACHE.insert(daddr, &entry, 0);
            Next::Send(entry)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            count(GlobalCounter::PassNeighUnresolved);
            Next::Kernel
        }
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            Next::Drop(GlobalCounter::DropUnroutable)
        }
        _ => Next::Kernel,
    }
}

/// Rewrite MACs and TTL for `hop` and emit. Returns the XDP action.
#[inline(always)]
pub fn send(ctx: &XdpContext, pkt: &TcpPacket, hop: &FibEntry) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        // parse() checked this header; still, every packet gets a verdict.
        count(GlobalCounter::DropInternal);
        count(GlobalCounter::Dropped);
        return xdp_action::XDP_DROP;
    };
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &mut *eth };
    eth.src = hop.src_mac;
    eth.dst = hop.dst_mac;
    decrement_ttl(pkt);
    count(GlobalCounter::Redirected);
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        return xdp_action::XDP_TX;
    }
    // SAFETY: helper with plain integer arguments.
    unsafe { bpf_redirect(hop.ifindex, 0) as u32 }
}
