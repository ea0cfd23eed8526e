//! What belongs to this host: the MACs of the attached interfaces (written
//! by the controller), and the IPv4 address prefilter. The host's own
//! addresses are a family's lookup (`Family::is_local`).
use aya_ebpf::programs::XdpContext;
use lb_common::{addr_filter_word, ADDR_FILTER_BACKENDS, IFACE_SLOTS};

use crate::{
    maps::{ADDR_FILTER, EXTRA_MACS, IFACES},
    parse::{ptr_at, EthHdr},
};

/// Whether an address hashed to `(word, bit)` may be in the quarter of
/// `ADDR_FILTER` from word `quarter` (`0`: IPv4 VIPs,
/// `ADDR_FILTER_BACKENDS`: IPv4 backends, `ADDR_FILTER_VIPS6`,
/// `ADDR_FILTER_BACKENDS6`). `false` is sure; `true` means: look it up.
#[inline(always)]
pub fn may_be(quarter: u32, (word, bit): (u32, u64)) -> bool {
    match ADDR_FILTER.get(quarter + word) {
        Some(w) => w & bit != 0,
        None => true,
    }
}

/// Whether the VIP prefilter may hold IPv4 address `addr` (`false` is
/// sure).
#[inline(always)]
pub fn may_be_vip(addr: u32) -> bool {
    may_be(0, addr_filter_word(addr))
}

/// Whether the backends' prefilter may hold IPv4 address `addr` (`false`
/// is sure).
#[inline(always)]
pub fn may_be_backend(addr: u32) -> bool {
    may_be(ADDR_FILTER_BACKENDS, addr_filter_word(addr))
}

/// Whether the frame is addressed to the interface it arrived on (or to
/// one of the host's `extra_macs`). In
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
    let ifindex = ctx.ingress_ifindex() as u32;
    match IFACES.get(ifindex % IFACE_SLOTS) {
        Some(iface) if iface.ifindex == ifindex => {
            // Two loads a side instead of six byte compares: this runs for
            // every packet we rewrite.
            // SAFETY: the Ethernet header is in bounds (ptr_at); both MACs
            // are 6 bytes, read unaligned.
            let (dst_lo, dst_hi, ours) = unsafe {
                let dst = (*eth).dst.as_ptr();
                let ours = iface.mac.as_ptr();
                let dst_lo = core::ptr::read_unaligned(dst as *const u32);
                let dst_hi = core::ptr::read_unaligned(dst.add(4) as *const u16);
                let ours = dst_lo == core::ptr::read_unaligned(ours as *const u32)
                    && dst_hi == core::ptr::read_unaligned(ours.add(4) as *const u16);
                (dst_lo, dst_hi, ours)
            };
            // Another MAC of this host (`extra_macs`): looked up only for
            // frames to another MAC than the interface's own.
            ours || {
                let key = dst_lo as u64 | (dst_hi as u64) << 32;
                // SAFETY: the reference is dropped at once.
                unsafe { EXTRA_MACS.get(&key) }.is_some()
            }
        }
        _ => true,
    }
}
