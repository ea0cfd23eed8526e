//! Sending a rewritten packet on: next hop from the FIB (cached), the
//! egress MTU, MACs, TTL, then XDP_TX or a redirect through `TX_PORTS`.
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_BLACKHOLE,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LKUP_RET_UNREACHABLE,
    },
    helpers::{bpf_check_mtu, bpf_fib_lookup},
    programs::XdpContext,
};
use lb_common::{limits::FIB_CACHE_TTL_NS, FibEntry, GlobalCounter};

use crate::{
    consts::ETH_HLEN,
    family::Family,
    maps::TX_PORTS,
    parse::{ptr_at, EthHdr},
    stats::count,
};

/// `FibEntry::tx_port`: the egress interface is in `TX_PORTS`.
const TX_PORT: u32 = 1;

pub enum Next {
    /// We send it ourselves (XDP_TX or a redirect through `TX_PORTS`).
    Send(FibEntry),
    /// Let the kernel finish: neighbour unresolved (it will resolve and
    /// forward the already rewritten packet), local delivery, an egress
    /// that is not ours, … Right for NAT; the direct modes cannot (see
    /// `direct`) and drop instead.
    Kernel,
    Drop(GlobalCounter),
}

/// What a packet from `saddr` to `daddr` needs to be sent on. The FIB
/// answer is cached per destination for `FIB_CACHE_TTL_NS`; what changes
/// faster than that (a moved neighbour) heals within the TTL. Policy
/// routing by source is not distinguished.
#[inline(always)]
pub fn next_hop<F: Family>(
    ctx: &XdpContext,
    saddr: &F::Addr,
    daddr: &F::Addr,
    tos: u8,
    proto: u8,
    now: u64,
) -> Next {
    let mut hop = FibEntry::default();
    match next_hop_into::<F>(ctx, saddr, daddr, tos, proto, now, &mut hop) {
        NEXT_SEND => usable(ctx, hop),
        NEXT_KERNEL => Next::Kernel,
        _ => Next::Drop(GlobalCounter::DropUnroutable),
    }
}

const NEXT_SEND: u32 = 0;
const NEXT_KERNEL: u32 = 1;
const NEXT_UNROUTABLE: u32 = 2;

/// The lookup, its hop written to `out`. verifier: written this way
/// (rather than returning `Next`) the IPv6 programs' frames stay within the
/// 512-byte stack; LLVM lays out the returned enum's copies less tightly.
#[inline(always)]
fn next_hop_into<F: Family>(
    ctx: &XdpContext,
    saddr: &F::Addr,
    daddr: &F::Addr,
    tos: u8,
    proto: u8,
    now: u64,
    out: &mut FibEntry,
) -> u32 {
    if let Some(hit) = F::fib_cached(daddr) {
        // SAFETY: valid map value pointer.
        if unsafe { (*hit).expires_ns } > now {
            *out = unsafe { *hit };
            return NEXT_SEND;
        }
    }
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers/unions).
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    F::fib_params(&mut params, saddr, daddr, tos, proto);
    match resolve(ctx, &mut params, now) {
        Ok(hop) => {
            F::fib_store(daddr, &hop);
            *out = hop;
            NEXT_SEND
        }
        Err(Next::Drop(_)) => NEXT_UNROUTABLE,
        Err(_) => NEXT_KERNEL,
    }
}

#[inline(always)]
fn usable(ctx: &XdpContext, hop: FibEntry) -> Next {
    if hop.tx_port != TX_PORT && hop.ifindex != ctx.ingress_ifindex() as u32 {
        // Redirecting to a device outside `TX_PORTS` would fail in the
        // kernel after we return; the kernel's own forwarding can do it.
        count(GlobalCounter::RedirectFallback);
        return Next::Kernel;
    }
    Next::Send(hop)
}

/// Runs a prepared FIB lookup and turns its answer into a hop.
#[inline(always)]
fn resolve(ctx: &XdpContext, params: &mut FibParams, now: u64) -> Result<FibEntry, Next> {
    // tot_len stays 0: given a length, the lookup judges the MTU itself
    // and answers FRAG_NEEDED without a next hop, and its answer is cached
    // per destination, not per size. `fits` checks every packet against
    // the egress device instead.
    params.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: params is a valid, fully initialised struct of the size given.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let ifindex = params.ifindex;
            let mut mtu: u32 = 0;
            // SAFETY: valid context and out-pointer; with mtu_len 0 the
            // helper reports the device's MTU whatever the frame's size.
            unsafe { bpf_check_mtu(ctx.ctx.cast(), ifindex, &mut mtu, 0, 0) };
            let entry = FibEntry {
                ifindex,
                tx_port: if TX_PORTS.get(ifindex).is_some() {
                    TX_PORT
                } else {
                    0
                },
                src_mac: params.smac,
                dst_mac: params.dmac,
                mtu,
                expires_ns: now + FIB_CACHE_TTL_NS,
            };
            Ok(entry)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            count(GlobalCounter::PassNeighUnresolved);
            Err(Next::Kernel)
        }
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            Err(Next::Drop(GlobalCounter::DropUnroutable))
        }
        _ => Err(Next::Kernel),
    }
}

/// `Err(mtu)` if the frame as it stands would not fit the egress device
/// of `hop`. Every packet is checked, against the device MTU learned with
/// the route (so an MTU change is seen within `FIB_CACHE_TTL_NS`, as a
/// moved neighbour is): asking the kernel per packet (bpf_check_mtu finds
/// the device by ifindex) costs more than the rest of the send.
#[inline(always)]
pub fn fits(ctx: &XdpContext, hop: &FibEntry) -> Result<(), u32> {
    fits_grown(ctx, hop, 0)
}

/// [`fits`] for the frame once `grow` bytes (an outer header) are put in
/// front of its IP packet: `Err(mtu)` of the egress device if it would not.
#[inline(always)]
pub fn fits_grown(ctx: &XdpContext, hop: &FibEntry, grow: u32) -> Result<(), u32> {
    let l3 = (ctx.data_end() - ctx.data()) as u32 - ETH_HLEN as u32 + grow;
    if hop.mtu == 0 || l3 <= hop.mtu {
        Ok(())
    } else {
        Err(hop.mtu)
    }
}

/// Whether the frame is longer than its ingress interface's MTU: not one
/// packet off the wire but an aggregate of segments, which generic (skb)
/// XDP hands over whole — a GSO packet from a veth or tap peer (a
/// container's or VM's TCP sends 64 KB at once), or a GRO one. It cannot
/// be redirected (the kernel refuses frames over the egress MTU), nor
/// answered with fragmentation-needed (each of its segments fits): it is
/// rewritten and given to the kernel, which segments it on the way out.
#[inline(always)]
pub fn aggregate(ctx: &XdpContext) -> bool {
    let mut mtu_len: u32 = 0;
    // SAFETY: a valid context; the helper writes the MTU into `mtu_len`.
    // ifindex 0: the ingress interface. Errors (< 0) read as "no".
    unsafe { aya_ebpf::helpers::bpf_check_mtu(ctx.ctx as *mut _, 0, &mut mtu_len, 0, 0) > 0 }
}

/// Rewrite MACs and TTL (hop limit) for `hop` and emit. Returns the XDP
/// action.
#[inline(always)]
pub fn send<F: Family>(ctx: &XdpContext, ip: *mut F::Hdr, hop: &FibEntry) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        // The parse checked this header; still, every packet gets a verdict.
        count(GlobalCounter::DropInternal);
        count(GlobalCounter::Dropped);
        return xdp_action::XDP_DROP;
    };
    // SAFETY: bounds checked by ptr_at; `ip` was bounds-checked by the
    // parse and nothing moved the packet since.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    eth.src = hop.src_mac;
    eth.dst = hop.dst_mac;
    F::decrement_hop_limit(ip);
    transmit(ctx, hop)
}

/// Sends a packet the program made itself (its hop limit fresh, so not
/// decremented) from `saddr` to `daddr`: the kernel's if the next hop
/// needs it, or if it would not fit.
#[inline(always)]
pub fn originate<F: Family>(
    ctx: &XdpContext,
    saddr: &F::Addr,
    daddr: &F::Addr,
    proto: u8,
    now: u64,
) -> u32 {
    let hop = match next_hop::<F>(ctx, saddr, daddr, 0, proto, now) {
        Next::Send(hop) => hop,
        Next::Kernel => return crate::verdict::pass(),
        Next::Drop(reason) => return crate::verdict::drop(ctx, reason),
    };
    if fits(ctx, &hop).is_err() {
        return crate::verdict::pass_because(GlobalCounter::PassTooBig);
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return crate::verdict::drop(ctx, GlobalCounter::DropInternal);
    };
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &mut *eth };
    eth.src = hop.src_mac;
    eth.dst = hop.dst_mac;
    transmit(ctx, &hop)
}

#[inline(always)]
fn transmit(ctx: &XdpContext, hop: &FibEntry) -> u32 {
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        count(GlobalCounter::Redirected);
        return crate::verdict::hairpin(ctx);
    }
    match TX_PORTS.redirect(hop.ifindex, xdp_action::XDP_PASS as u64) {
        Ok(action) => {
            count(GlobalCounter::Redirected);
            action
        }
        Err(action) => {
            // Removed from TX_PORTS since the hop was cached: the kernel
            // forwards the (already rewritten) packet.
            count(GlobalCounter::RedirectFallback);
            count(GlobalCounter::Passed);
            action
        }
    }
}
