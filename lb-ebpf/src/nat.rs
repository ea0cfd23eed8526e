//! The NAT rewrites, with incremental IPv4 and TCP checksum updates, and
//! the completion of checksums a sender left partial.
//!
//! A sender with checksum offload (every veth and virtio NIC by default)
//! leaves CHECKSUM_PARTIAL frames: the TCP checksum field holds only the
//! pseudo-header sum, for the device to complete. The kernel keeps that
//! state on the skb, so a partial frame we pass up must stay partial (its
//! pseudo-header sum re-made for the new addresses); a frame we redirect
//! or transmit leaves the skb behind, so its checksum must be completed.
use aya_ebpf::programs::XdpContext;
use lb_common::IPPROTO_TCP;

use crate::{
    consts::{ETH_HLEN, IPV4_MIN_HLEN},
    csum::{fold, pseudo_sum, replace16, replace32, sum_bytes},
    parse::{load32, store32, TcpPacket},
};

/// Where the TCP header starts (the NAT paths take no IPv4 options).
const L4_OFF: usize = ETH_HLEN + IPV4_MIN_HLEN;

#[inline(always)]
fn segment_len(pkt: &TcpPacket) -> u16 {
    pkt.ip_len - IPV4_MIN_HLEN as u16
}

/// Whether the TCP checksum field holds just the pseudo-header sum. A
/// complete checksum that happens to equal it is completed to the same
/// value by [`complete`], so treating it as partial is harmless.
#[inline(always)]
pub fn is_partial(pkt: &TcpPacket) -> bool {
    // SAFETY: `pkt` holds pointers `parse` bounds-checked.
    let check = unsafe { (*pkt.tcp).check };
    check
        == pseudo_sum(
            pkt.key.src_addr,
            pkt.key.dst_addr,
            IPPROTO_TCP,
            segment_len(pkt),
        )
}

/// Client → VIP becomes client → backend: destination address and port.
#[inline(always)]
pub fn to_backend(pkt: &TcpPacket, addr: u32, port: u16, partial: bool) {
    // SAFETY: `pkt` holds pointers `parse` bounds-checked; nothing moved
    // the packet since.
    let (ip, tcp) = unsafe { (&mut *pkt.ip, &mut *pkt.tcp) };
    let old_addr = load32(&ip.daddr);
    let old_port = tcp.dest;
    store32(&mut ip.daddr, addr);
    tcp.dest = port;
    ip.check = replace32(ip.check, old_addr, addr);
    tcp.check = if partial {
        pseudo_sum(load32(&ip.saddr), addr, IPPROTO_TCP, segment_len(pkt))
    } else {
        // The TCP checksum covers the pseudo-header's addresses and the port.
        replace16(replace32(tcp.check, old_addr, addr), old_port, port)
    };
}

/// Backend → client becomes VIP → client: source address and port.
#[inline(always)]
pub fn from_backend(pkt: &TcpPacket, addr: u32, port: u16, partial: bool) {
    // SAFETY: as in `to_backend`.
    let (ip, tcp) = unsafe { (&mut *pkt.ip, &mut *pkt.tcp) };
    let old_addr = load32(&ip.saddr);
    let old_port = tcp.source;
    store32(&mut ip.saddr, addr);
    tcp.source = port;
    ip.check = replace32(ip.check, old_addr, addr);
    tcp.check = if partial {
        pseudo_sum(addr, load32(&ip.daddr), IPPROTO_TCP, segment_len(pkt))
    } else {
        replace16(replace32(tcp.check, old_addr, addr), old_port, port)
    };
}

/// Turns a partial checksum (pseudo-header sum in the field) into the full
/// one: the sum of the segment as it stands, field included, complemented
/// — what the device would have computed. `false` if the segment could not
/// be summed (then the frame must go to the kernel, still partial).
#[inline(always)]
pub fn complete(ctx: &XdpContext, pkt: &TcpPacket) -> bool {
    let Some(sum) = sum_bytes(ctx, L4_OFF, segment_len(pkt) as usize) else {
        return false;
    };
    let check = !fold(sum);
    // SAFETY: as in `to_backend` (sum_bytes only read the packet).
    unsafe { (*pkt.tcp).check = check };
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
