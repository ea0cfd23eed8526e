//! Packets the program answers itself over IPv6, from the VIP: a TCP RST
//! for a pool with no usable backend, ICMPv6 port unreachable for a UDP
//! one, ICMPv6 packet too big for a packet larger than the path to its
//! backend. Built in place, as `answer` does for IPv4.
use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{Addr6, IPPROTO_ICMPV6, IPPROTO_TCP};

use crate::{
    answer::{truncate, Rst},
    consts::*,
    csum::{fold, sum_words},
    nat6::pseudo_sum6,
    parse::{ptr_at, store32, EthHdr, IcmpHdr, TcpHdr},
    parse6::{load_addr6, store_addr6, Ipv6Hdr, L4Packet6},
};

#[inline(always)]
fn ip_header(ip: &mut Ipv6Hdr, next: u8, payload_len: u16, saddr: &Addr6, daddr: &Addr6) {
    ip.vtc_flow = [0x0060, 0];
    ip.payload_len = payload_len.to_be();
    ip.nexthdr = next;
    ip.hop_limit = ORIGIN_TTL;
    store_addr6(&mut ip.saddr, saddr);
    store_addr6(&mut ip.daddr, daddr);
}

const RST6_FRAME_LEN: usize = ETH_HLEN + IPV6_HLEN + TCP_MIN_HLEN;

/// A RST from the VIP for `pkt`, by the rules `answer::reset` follows.
/// `None` for a RST (never answered), a segment behind extension headers
/// (not worth the arithmetic), or a frame that could not be shrunk.
#[inline(always)]
pub fn reset(ctx: &XdpContext, pkt: &L4Packet6) -> Option<()> {
    if pkt.flags & TCP_FLAG_RST != 0 || pkt.ext_headers {
        return None;
    }
    // SAFETY: parse6 bounds-checked the headers.
    // verifier: re-checked, as in `answer::reset`.
    let tcp = ptr_at::<TcpHdr>(ctx, ETH_HLEN + IPV6_HLEN)?;
    let (eth, tcp) = unsafe { (&*ptr_at::<EthHdr>(ctx, 0)?, &*tcp) };
    let (client_mac, our_mac) = (eth.src, eth.dst);
    let (client, vip) = (pkt.key.src_addr, pkt.key.dst_addr);
    let rst = Rst::answering(tcp, pkt.flags, pkt.l4_len);
    if !truncate(ctx, RST6_FRAME_LEN) {
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    let tcp = ptr_at::<TcpHdr>(ctx, ETH_HLEN + IPV6_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip, tcp) = unsafe { (&mut *eth, &mut *ip, &mut *tcp) };
    eth.dst = client_mac;
    eth.src = our_mac;
    ip_header(ip, IPPROTO_TCP, TCP_MIN_HLEN as u16, &vip, &client);
    rst.write(
        tcp,
        pseudo_sum6(&vip, &client, IPPROTO_TCP, TCP_MIN_HLEN as u16),
    );
    Some(())
}

/// Bytes of the offending packet quoted: its IPv6 header and 8 bytes of
/// what follows (the ports), which is all any stack needs to find the
/// connection. RFC 4443 allows up to the minimum MTU; less is enough.
const QUOTED6: usize = IPV6_HLEN + 8;
const ICMP6_MESSAGE_LEN: usize = ICMP_HLEN + QUOTED6;

/// An ICMPv6 error of type `ty` and `code` from the packet's destination
/// (the VIP) to its source, quoting it; `mtu` goes in the packet-too-big
/// message. The packet must not have been rewritten yet.
#[inline(always)]
pub fn error(ctx: &XdpContext, ty: u8, code: u8, mtu: u32) -> Option<()> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip) = unsafe { (&*eth, &*ip) };
    let (client_mac, our_mac) = (eth.src, eth.dst);
    let (client, vip) = (load_addr6(&ip.saddr), load_addr6(&ip.daddr));
    if !truncate(ctx, ETH_HLEN + QUOTED6) {
        return None;
    }
    let room = (IPV6_HLEN + ICMP_HLEN) as i32;
    // SAFETY: growing the head by a constant; pointers re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -room) } != 0 {
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    let message = ptr_at::<[u16; ICMP6_MESSAGE_LEN / 2]>(ctx, ETH_HLEN + IPV6_HLEN)?;
    let icmp = message as *mut IcmpHdr;
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip, icmp) = unsafe { (&mut *eth, &mut *ip, &mut *icmp) };
    eth.dst = client_mac;
    eth.src = our_mac;
    eth.proto = BE_ETH_P_IPV6;
    ip_header(ip, IPPROTO_ICMPV6, ICMP6_MESSAGE_LEN as u16, &vip, &client);
    icmp.ty = ty;
    icmp.code = code;
    icmp.check = 0;
    let mut rest = [0u16; 2];
    store32(&mut rest, mtu.to_be());
    icmp.rest = rest;
    let pseudo = pseudo_sum6(&vip, &client, IPPROTO_ICMPV6, ICMP6_MESSAGE_LEN as u16);
    // SAFETY: `message` is in bounds (checked above).
    icmp.check = !fold(pseudo as u32 + sum_words(unsafe { &*message }));
    Some(())
}
