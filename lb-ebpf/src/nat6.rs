//! NAT66: the IPv6 rewrites. No IP header checksum; the L4 checksum covers
//! the pseudo-header's addresses (RFC 8200 §8.1), so each rewritten
//! address and port is an incremental update, and a partial checksum is
//! re-made or completed as in `nat`.
use aya_ebpf::programs::XdpContext;
use lb_common::Addr6;

use crate::{
    csum::{fold, replace16, replace32, sum_bytes},
    nat::l4_check,
    parse6::{load_addr6, store_addr6, L4Packet6},
};

/// The IPv6 pseudo-header's sum, folded, not complemented (what a sender
/// with checksum offload leaves in the L4 checksum field).
#[inline(always)]
pub fn pseudo_sum6(saddr: &Addr6, daddr: &Addr6, proto: u8, l4_len: u16) -> u16 {
    let mut sum = ((proto as u32) << 8) + (l4_len.to_be() as u32);
    let mut i = 0;
    while i < 4 {
        let (s, d) = (saddr.words[i], daddr.words[i]);
        sum += (s & 0xffff) + (s >> 16) + (d & 0xffff) + (d >> 16);
        i += 1;
    }
    fold(sum)
}

/// A checksum covering `from`, after it became `to`.
#[inline(always)]
pub fn replace_addr6(check: u16, from: &Addr6, to: &Addr6) -> u16 {
    let mut c = check;
    let mut i = 0;
    while i < 4 {
        c = replace32(c, from.words[i], to.words[i]);
        i += 1;
    }
    c
}

#[inline(always)]
pub fn is_partial(pkt: &L4Packet6) -> bool {
    // SAFETY: `pkt` holds pointers `parse6` bounds-checked.
    let check = unsafe { *pkt.check };
    check
        == pseudo_sum6(
            &pkt.key.src_addr,
            &pkt.key.dst_addr,
            pkt.key.proto,
            pkt.l4_len,
        )
}

/// Client → VIP becomes client → backend.
#[inline(always)]
pub fn to_backend(pkt: &L4Packet6, addr: &Addr6, port: u16, partial: bool) {
    // SAFETY: `pkt` holds pointers `parse6` bounds-checked; nothing moved
    // the packet since.
    let (ip, ports) = unsafe { (&mut *pkt.ip, &mut *pkt.l4) };
    let old_addr = load_addr6(&ip.daddr);
    let old_port = ports[1];
    store_addr6(&mut ip.daddr, addr);
    ports[1] = port;
    update_l4(pkt, &old_addr, addr, old_port, port, partial);
}

/// Backend → client becomes VIP → client.
#[inline(always)]
pub fn from_backend(pkt: &L4Packet6, addr: &Addr6, port: u16, partial: bool) {
    // SAFETY: as in `to_backend`.
    let (ip, ports) = unsafe { (&mut *pkt.ip, &mut *pkt.l4) };
    let old_addr = load_addr6(&ip.saddr);
    let old_port = ports[0];
    store_addr6(&mut ip.saddr, addr);
    ports[0] = port;
    update_l4(pkt, &old_addr, addr, old_port, port, partial);
}

#[inline(always)]
fn update_l4(pkt: &L4Packet6, old: &Addr6, new: &Addr6, old_port: u16, port: u16, partial: bool) {
    // SAFETY: as in `to_backend`.
    let (ip, check) = unsafe { (&*pkt.ip, &mut *pkt.check) };
    *check = if partial {
        pseudo_sum6(
            &load_addr6(&ip.saddr),
            &load_addr6(&ip.daddr),
            pkt.key.proto,
            pkt.l4_len,
        )
    } else {
        l4_check(
            pkt.udp(),
            replace16(replace_addr6(*check, old, new), old_port, port),
        )
    };
}

/// As `nat::complete`, for the L4 header wherever the extension headers
/// left it.
#[inline(always)]
pub fn complete(ctx: &XdpContext, pkt: &L4Packet6) -> bool {
    let Some(sum) = sum_bytes(ctx, pkt.l4_off, pkt.l4_len as usize) else {
        return false;
    };
    let check = l4_check(pkt.udp(), !fold(sum));
    // SAFETY: as in `to_backend`.
    unsafe { *pkt.check = check };
    true
}
