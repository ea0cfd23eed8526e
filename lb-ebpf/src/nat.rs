//! The NAT rewrites, with incremental IPv4 and TCP checksum updates.
use crate::{
    csum::{replace16, replace32},
    parse::{load32, store32, TcpPacket},
};

/// Client → VIP becomes client → backend: destination address and port.
#[inline(always)]
pub fn to_backend(pkt: &TcpPacket, addr: u32, port: u16) {
    // SAFETY: `pkt` holds pointers `parse` bounds-checked; nothing moved
    // the packet since.
    let (ip, tcp) = unsafe { (&mut *pkt.ip, &mut *pkt.tcp) };
    let old_addr = load32(&ip.daddr);
    let old_port = tcp.dest;
    store32(&mut ip.daddr, addr);
    tcp.dest = port;
    ip.check = replace32(ip.check, old_addr, addr);
    // The TCP checksum covers the pseudo-header's addresses and the port.
    tcp.check = replace16(replace32(tcp.check, old_addr, addr), old_port, port);
}

/// Backend → client becomes VIP → client: source address and port.
#[inline(always)]
pub fn from_backend(pkt: &TcpPacket, addr: u32, port: u16) {
    // SAFETY: as in `to_backend`.
    let (ip, tcp) = unsafe { (&mut *pkt.ip, &mut *pkt.tcp) };
    let old_addr = load32(&ip.saddr);
    let old_port = tcp.source;
    store32(&mut ip.saddr, addr);
    tcp.source = port;
    ip.check = replace32(ip.check, old_addr, addr);
    tcp.check = replace16(replace32(tcp.check, old_addr, addr), old_port, port);
}

/// One router hop: TTL minus one (the caller checked it stays above zero).
#[inline(always)]
pub fn decrement_ttl(pkt: &TcpPacket) {
    // SAFETY: as in `to_backend`.
    let ip = unsafe { &mut *pkt.ip };
    // TTL and protocol share one 16-bit word of the header; in memory
    // order (as loaded) TTL is its low byte.
    let old = (ip.ttl as u16) | ((ip.proto as u16) << 8);
    ip.ttl -= 1;
    let new = (ip.ttl as u16) | ((ip.proto as u16) << 8);
    ip.check = replace16(ip.check, old, new);
}
