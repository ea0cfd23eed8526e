//! The verdicts, each counted once per packet (user space derives `Rx`
//! from their sum).
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::GlobalCounter;

use crate::{maps::TX_PORTS, stats::count};

#[inline(always)]
pub fn pass() -> u32 {
    count(GlobalCounter::Passed);
    xdp_action::XDP_PASS
}

/// Passed with a notable reason.
#[inline(always)]
pub fn pass_because(event: GlobalCounter) -> u32 {
    count(event);
    pass()
}

#[inline(always)]
pub fn drop(ctx: &XdpContext, reason: GlobalCounter) -> u32 {
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

/// The program answered the packet itself (RST, ICMP error): back out of
/// the interface it came in on.
#[inline(always)]
pub fn answered(ctx: &XdpContext, event: GlobalCounter) -> u32 {
    count(event);
    count(GlobalCounter::Answered);
    hairpin(ctx)
}

/// Sends the frame back out of its ingress interface. Through `TX_PORTS`,
/// not XDP_TX: on a veth, an XDP_TX frame wakes the peer only if the peer
/// runs an XDP program of its own, so to a container or a namespace with
/// just GRO on it is never delivered, while a redirect is (veth.c,
/// `veth_xdp_flush`). XDP_TX remains the fallback for an interface outside
/// `TX_PORTS` (a test run).
#[inline(always)]
pub fn hairpin(ctx: &XdpContext) -> u32 {
    let ingress = ctx.ingress_ifindex() as u32;
    match TX_PORTS.redirect(ingress, xdp_action::XDP_TX as u64) {
        Ok(action) | Err(action) => action,
    }
}
