//! What belongs to this host: the MACs of the attached interfaces and the
//! host's addresses, both written by the controller.
use aya_ebpf::programs::XdpContext;
use lb_common::IFACE_SLOTS;

use crate::{
    maps::{IFACES, LOCAL_ADDRS},
    parse::{ptr_at, EthHdr},
};

/// Whether the frame is addressed to the interface it arrived on. In
/// promiscuous mode (tcpdump, a bridge port) the driver hands us frames
/// for other hosts: those are not ours to balance. Group-addressed frames
/// are not either: a router forwards only frames sent to it (the kernel's
/// `ip_forward` drops anything but PACKET_HOST). An interface the
/// controller has not described (a test run) is taken as ours.
#[inline(always)]
pub fn for_us(ctx: &XdpContext) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return true;
    };
    // SAFETY: bounds checked by ptr_at.
    let dst = unsafe { (*eth).dst };
    let ifindex = ctx.ingress_ifindex() as u32;
    match IFACES.get(ifindex % IFACE_SLOTS) {
        Some(iface) if iface.ifindex == ifindex => iface.mac == dst,
        _ => true,
    }
}

/// Whether `addr` (network order) is one of this host's addresses.
#[inline(always)]
pub fn is_local(addr: u32) -> bool {
    // SAFETY: as in `for_us`.
    unsafe { LOCAL_ADDRS.get(&addr) }.is_some()
}
