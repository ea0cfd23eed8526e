//! The NAT rewrites of both families, with incremental checksum updates
//! (the IPv4 header's in `Family::set_src`/`set_dst`; the L4 checksum,
//! which covers the pseudo-header's addresses and the ports, here), and
//! the completion of checksums a sender left partial.
//!
//! A sender with checksum offload (every veth and virtio NIC by default)
//! leaves CHECKSUM_PARTIAL frames: the L4 checksum field holds only the
//! pseudo-header sum, for the device to complete. The kernel keeps that
//! state on the skb, so a partial frame we pass up must stay partial (its
//! pseudo-header sum re-made for the new addresses); a frame we redirect
//! or transmit leaves the skb behind, so its checksum must be completed.
use aya_ebpf::programs::XdpContext;

use crate::{
    csum::{fold, replace16, sum_bytes},
    family::Family,
    parse::L4Packet,
    select::Flow,
};

/// Whether the datagram carries no checksum at all: UDP over IPv4 may
/// send 0 (RFC 768), and then it must stay 0 — an incremental update would
/// invent a wrong one.
#[inline(always)]
pub fn no_checksum<F: Family>(pkt: &L4Packet<F>) -> bool {
    // SAFETY: `pkt` holds pointers the parse bounds-checked.
    F::UDP_CHECKSUM_OPTIONAL && pkt.udp() && unsafe { *pkt.check } == 0
}

/// A computed UDP checksum of 0 is sent as 0xffff (RFC 768): 0 means
/// "none". TCP has no such rule (its checksum is never omitted).
#[inline(always)]
pub fn l4_check(pkt_udp: bool, check: u16) -> u16 {
    if pkt_udp && check == 0 {
        0xffff
    } else {
        check
    }
}

/// Whether the L4 checksum field holds just the pseudo-header sum. A
/// complete checksum that happens to equal it is completed to the same
/// value by [`complete`], so treating it as partial is harmless.
#[inline(always)]
pub fn is_partial<F: Family>(pkt: &L4Packet<F>) -> bool {
    // SAFETY: `pkt` holds pointers the parse bounds-checked.
    let check = unsafe { *pkt.check };
    let k = &pkt.key;
    check == F::pseudo_sum(&k.src(), &k.dst(), k.proto(), pkt.l4_len)
}

/// Client → VIP becomes client → backend: destination address and port.
#[inline(always)]
pub fn to_backend<F: Family>(pkt: &L4Packet<F>, addr: &F::Addr, port: u16, partial: bool) {
    // SAFETY: `pkt` holds pointers the parse bounds-checked; nothing moved
    // the packet since.
    let (ip, ports) = unsafe { (&mut *pkt.ip, &mut *pkt.l4) };
    let old_addr = F::set_dst(ip, addr);
    let old_port = ports[1];
    ports[1] = port;
    update_l4(pkt, &old_addr, addr, old_port, port, partial);
}

/// Backend → client becomes VIP → client: source address and port.
#[inline(always)]
pub fn from_backend<F: Family>(pkt: &L4Packet<F>, addr: &F::Addr, port: u16, partial: bool) {
    // SAFETY: as in `to_backend`.
    let (ip, ports) = unsafe { (&mut *pkt.ip, &mut *pkt.l4) };
    let old_addr = F::set_src(ip, addr);
    let old_port = ports[0];
    ports[0] = port;
    update_l4(pkt, &old_addr, addr, old_port, port, partial);
}

/// The L4 checksum after one address and one port changed; a partial one
/// is re-made for the packet's new addresses.
#[inline(always)]
fn update_l4<F: Family>(
    pkt: &L4Packet<F>,
    old_addr: &F::Addr,
    addr: &F::Addr,
    old_port: u16,
    port: u16,
    partial: bool,
) {
    if no_checksum(pkt) {
        return;
    }
    // SAFETY: as in `to_backend`.
    let (ip, check) = unsafe { (&*pkt.ip, &mut *pkt.check) };
    *check = if partial {
        F::pseudo_sum(&F::src(ip), &F::dst(ip), pkt.key.proto(), pkt.l4_len)
    } else {
        l4_check(
            pkt.udp(),
            replace16(F::replace_addr(*check, old_addr, addr), old_port, port),
        )
    };
}

/// Turns a partial checksum (pseudo-header sum in the field) into the full
/// one: the sum of the segment as it stands, field included, complemented
/// — what the device would have computed. `false` if the segment could not
/// be summed (then the frame must go to the kernel, still partial).
#[inline(always)]
pub fn complete<F: Family>(ctx: &XdpContext, pkt: &L4Packet<F>) -> bool {
    let Some(sum) = sum_bytes(ctx, pkt.l4_off, pkt.l4_len as usize) else {
        return false;
    };
    let check = l4_check(pkt.udp(), !fold(sum));
    // SAFETY: as in `to_backend` (sum_bytes only read the packet).
    unsafe { *pkt.check = check };
    true
}
