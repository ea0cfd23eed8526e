//! The verdicts, each counted once per packet (user space derives `Rx`
//! from their sum).
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::GlobalCounter;

use crate::stats::count;

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

/// The program answered the packet itself (RST, ICMP error) with XDP_TX.
#[inline(always)]
pub fn answered(event: GlobalCounter) -> u32 {
    count(event);
    count(GlobalCounter::Answered);
    xdp_action::XDP_TX
}
