//! The NAT rewrites, with incremental IPv4 and TCP/UDP checksum updates, and
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
    consts::{ETH_HLEN, IPV4_MIN_HLEN},
    csum::{fold, pseudo_sum, replace16, replace32, sum_bytes},
    parse::{load32, store32, L4Packet},
};

/// Where the L4 header starts (the NAT paths take no IPv4 options).
const L4_OFF: usize = ETH_HLEN + IPV4_MIN_HLEN;

/// Whether the datagram carries no checksum at all: UDP over IPv4 may
/// send 0 (RFC 768), and then it must stay 0 — an incremental update would
/// invent a wrong one.
#[inline(always)]
pub fn no_checksum(pkt: &L4Packet) -> bool {
    // SAFETY: `pkt` holds pointers `parse` bounds-checked.
    pkt.udp() && unsafe { *pkt.check } == 0
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
pub fn is_partial(pkt: &L4Packet) -> bool {
    // SAFETY: `pkt` holds pointers `parse` bounds-checked.
    let check = unsafe { *pkt.check };
    check
        == pseudo_sum(
            pkt.key.src_addr,
            pkt.key.dst_addr,
            pkt.key.proto,
            pkt.l4_len,
        )
}

/// Client → VIP becomes client → backend: destination address and port.
#[inline(always)]
pub fn to_backend(pkt: &L4Packet, addr: u32, port: u16, partial: bool) {
    // SAFETY: `pkt` holds pointers `parse` bounds-checked; nothing moved
    // the packet since.
    let (ip, ports) = unsafe { (&mut *pkt.ip, &mut *pkt.l4) };
    let old_addr = load32(&ip.daddr);
    let old_port = ports[1];
    store32(&mut ip.daddr, addr);
    ports[1] = port;
    ip.check = replace32(ip.check, old_addr, addr);
    update_l4(pkt, old_addr, addr, old_port, port, partial);
}

/// Backend → client becomes VIP → client: source address and port.
#[inline(always)]
pub fn from_backend(pkt: &L4Packet, addr: u32, port: u16, partial: bool) {
    // SAFETY: as in `to_backend`.
    let (ip, ports) = unsafe { (&mut *pkt.ip, &mut *pkt.l4) };
    let old_addr = load32(&ip.saddr);
    let old_port = ports[0];
    store32(&mut ip.saddr, addr);
    ports[0] = port;
    ip.check = replace32(ip.check, old_addr, addr);
    update_l4(pkt, old_addr, addr, old_port, port, partial);
}

/// The L4 checksum after one address and one port changed (it covers the
/// pseudo-header's addresses and the ports); a partial one is re-made for
/// the packet's new addresses.
#[inline(always)]
fn update_l4(pkt: &L4Packet, old_addr: u32, addr: u32, old_port: u16, port: u16, partial: bool) {
    if no_checksum(pkt) {
        return;
    }
    // SAFETY: as in `to_backend`.
    let (ip, check) = unsafe { (&*pkt.ip, &mut *pkt.check) };
    *check = if partial {
        pseudo_sum(
            load32(&ip.saddr),
            load32(&ip.daddr),
            pkt.key.proto,
            pkt.l4_len,
        )
    } else {
        l4_check(
            pkt.udp(),
            replace16(replace32(*check, old_addr, addr), old_port, port),
        )
    };
}

/// Turns a partial checksum (pseudo-header sum in the field) into the full
/// one: the sum of the segment as it stands, field included, complemented
/// — what the device would have computed. `false` if the segment could not
/// be summed (then the frame must go to the kernel, still partial).
#[inline(always)]
pub fn complete(ctx: &XdpContext, pkt: &L4Packet) -> bool {
    let Some(sum) = sum_bytes(ctx, L4_OFF, pkt.l4_len as usize) else {
        return false;
    };
    let check = l4_check(pkt.udp(), !fold(sum));
    // SAFETY: as in `to_backend` (sum_bytes only read the packet).
    unsafe { *pkt.check = check };
    true
}

/// One router hop: TTL minus one (the caller checked it stays above zero).
#[inline(always)]
pub fn decrement_ttl(ip: &mut crate::parse::Ipv4Hdr) {
    // TTL and protocol share one 16-bit word of the header; in memory
    // order (as loaded) TTL is its low byte.
    let old = (ip.ttl as u16) | ((ip.proto as u16) << 8);
    ip.ttl -= 1;
    let new = (ip.ttl as u16) | ((ip.proto as u16) << 8);
    ip.check = replace16(ip.check, old, new);
}
