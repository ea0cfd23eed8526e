//! Packets the program answers itself, from the address the client
//! spoke to, sent back out of the interface the packet came in on (see
//! `verdict::hairpin`): a RST when the pool has no usable backend, and an ICMP
//! fragmentation-needed when a DF packet will not fit the backend's link.
//!
//! Both shrink the frame to a fixed size first, so every header after that
//! sits at a constant offset and the checksums are sums over fixed words.
use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{IPPROTO_ICMP, IPPROTO_TCP};

use crate::{
    consts::*,
    csum::{fold, pseudo_sum, sum_words},
    parse::{load32, ptr_at, store32, EthHdr, IcmpHdr, Ipv4Hdr, L4Packet, TcpHdr},
};

/// Shrinks (never grows) the frame to `len` bytes.
#[inline(always)]
pub fn truncate(ctx: &XdpContext, len: usize) -> bool {
    let have = ctx.data_end() - ctx.data();
    if have <= len {
        return have == len;
    }
    let delta = len as i32 - have as i32;
    // SAFETY: valid context; the helper checks the delta.
    unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) == 0 }
}

#[inline(always)]
fn ip_header(ip: &mut Ipv4Hdr, proto: u8, tot_len: u16, saddr: u32, daddr: u32, df: bool) {
    ip.ver_ihl = 0x45;
    ip.tos = 0;
    ip.tot_len = tot_len.to_be();
    ip.id = 0;
    ip.frag_off = if df { BE_IP_DF } else { 0 };
    ip.ttl = ORIGIN_TTL;
    ip.proto = proto;
    ip.check = 0;
    store32(&mut ip.saddr, saddr);
    store32(&mut ip.daddr, daddr);
    // SAFETY: Ipv4Hdr is 20 bytes of plain integers, 2-aligned.
    let words = unsafe { &*(ip as *const Ipv4Hdr as *const [u16; 10]) };
    ip.check = !fold(sum_words(words));
}

/// A RST from the VIP for `pkt` (RFC 9293 §3.10.7.1, as a closed port
/// answers): to a segment with ACK, `seq = SEG.ACK`; otherwise RST|ACK with
/// `ack = SEG.SEQ + SEG.LEN`. `None` for a RST (never answered) or if the
/// frame could not be shrunk.
#[inline(always)]
pub fn reset(ctx: &XdpContext, pkt: &L4Packet) -> Option<()> {
    if pkt.flags & TCP_FLAG_RST != 0 {
        return None;
    }
    // SAFETY: `pkt` holds pointers `parse` bounds-checked.
    // verifier: the TCP header re-checked here, as the verifier cannot
    // tie `pkt.flags` to the header parse checked.
    let tcp = ptr_at::<TcpHdr>(ctx, ETH_HLEN + IPV4_MIN_HLEN)?;
    let (eth, ip, tcp) = unsafe { (&*ptr_at::<EthHdr>(ctx, 0)?, &*pkt.ip, &*tcp) };
    let (client_mac, our_mac) = (eth.src, eth.dst);
    let (client, vip) = (load32(&ip.saddr), load32(&ip.daddr));
    let rst = Rst::answering(tcp, pkt.flags, pkt.l4_len);
    if !truncate(ctx, RST_FRAME_LEN) {
        return None;
    }
    // Every pointer is stale after the resize: derive them again.
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    let tcp = ptr_at::<TcpHdr>(ctx, ETH_HLEN + IPV4_MIN_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip, tcp) = unsafe { (&mut *eth, &mut *ip, &mut *tcp) };
    eth.dst = client_mac;
    eth.src = our_mac;
    ip_header(
        ip,
        IPPROTO_TCP,
        (IPV4_MIN_HLEN + TCP_MIN_HLEN) as u16,
        vip,
        client,
        true,
    );
    rst.write(
        tcp,
        pseudo_sum(vip, client, IPPROTO_TCP, TCP_MIN_HLEN as u16),
    );
    Some(())
}

/// The RST answering a segment (RFC 9293 §3.10.7.1, as a closed port
/// does): to a segment with ACK, `seq = SEG.ACK`; otherwise RST|ACK with
/// `ack = SEG.SEQ + SEG.LEN`. The same for both families.
pub struct Rst {
    seq: u32,
    ack: u32,
    flags: u8,
    client_port: u16,
    vip_port: u16,
}

impl Rst {
    /// For the segment with header `tcp`, TCP flags `flags` and `l4_len`
    /// bytes from its TCP header on.
    #[inline(always)]
    pub fn answering(tcp: &TcpHdr, flags: u8, l4_len: u16) -> Rst {
        let doff = ((tcp.doff_res >> 4) as u32) * 4;
        let mut seg_len = (l4_len as u32).saturating_sub(doff);
        if flags & TCP_FLAG_SYN != 0 {
            seg_len += 1;
        }
        if flags & TCP_FLAG_FIN != 0 {
            seg_len += 1;
        }
        let (seq, ack) = (
            u32::from_be(load32(&tcp.seq)),
            u32::from_be(load32(&tcp.ack_seq)),
        );
        let (seq, ack, flags) = if flags & TCP_FLAG_ACK != 0 {
            (ack, 0, TCP_FLAG_RST)
        } else {
            (0, seq.wrapping_add(seg_len), TCP_FLAG_RST | TCP_FLAG_ACK)
        };
        Rst {
            seq,
            ack,
            flags,
            client_port: tcp.source,
            vip_port: tcp.dest,
        }
    }

    /// Writes the RST's header over `tcp` (no options), its checksum
    /// from the pseudo-header sum `pseudo`.
    #[inline(always)]
    pub fn write(&self, tcp: &mut TcpHdr, pseudo: u16) {
        tcp.source = self.vip_port;
        tcp.dest = self.client_port;
        store32(&mut tcp.seq, self.seq.to_be());
        store32(&mut tcp.ack_seq, self.ack.to_be());
        tcp.doff_res = ((TCP_MIN_HLEN / 4) as u8) << 4;
        tcp.flags = self.flags;
        tcp.window = 0;
        tcp.check = 0;
        tcp.urg_ptr = 0;
        // SAFETY: TcpHdr is 20 bytes of plain integers, 2-aligned.
        let words = unsafe { &*(tcp as *const TcpHdr as *const [u16; 10]) };
        tcp.check = !fold(pseudo as u32 + sum_words(words));
    }
}

/// Bytes of the offending packet an ICMP error quotes: its IP header and
/// the first 64 bits of its data (RFC 792), enough for any stack to find
/// the connection.
const QUOTED: usize = IPV4_MIN_HLEN + 8;
/// The ICMP error's frame: Ethernet, IP, ICMP, quote.
const ICMP_FRAME_LEN: usize = ETH_HLEN + IPV4_MIN_HLEN + ICMP_HLEN + QUOTED;

/// An ICMP destination-unreachable with `code` from the packet's
/// destination (the VIP) to its source, quoting it: fragmentation needed
/// with the egress `mtu` (as Katran's `send_icmp_too_big`), or port
/// unreachable (a UDP pool with no usable backend; `mtu` 0). The packet
/// must not have been rewritten yet: the client must recognise the quote as
/// its own.
#[inline(always)]
pub fn unreachable(ctx: &XdpContext, code: u8, mtu: u32) -> Option<()> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip) = unsafe { (&*eth, &*ip) };
    let (client_mac, our_mac) = (eth.src, eth.dst);
    let (client, vip) = (load32(&ip.saddr), load32(&ip.daddr));
    // Keep the original IP header and 8 bytes, then make room in front
    // for the new IP and ICMP headers (the old Ethernet header is reused).
    if !truncate(ctx, ETH_HLEN + QUOTED) {
        return None;
    }
    let room = (IPV4_MIN_HLEN + ICMP_HLEN) as i32;
    // SAFETY: valid context; the helper checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -room) } != 0 {
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // verifier: one pointer for the ICMP header and the whole message, so
    // the bounds check of the larger covers every access through it.
    let message = ptr_at::<[u16; (ICMP_HLEN + QUOTED) / 2]>(ctx, ETH_HLEN + IPV4_MIN_HLEN)?;
    let icmp = message as *mut IcmpHdr;
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip, icmp) = unsafe { (&mut *eth, &mut *ip, &mut *icmp) };
    eth.dst = client_mac;
    eth.src = our_mac;
    eth.proto = BE_ETH_P_IP;
    ip_header(
        ip,
        IPPROTO_ICMP,
        (ICMP_FRAME_LEN - ETH_HLEN) as u16,
        vip,
        client,
        false,
    );
    icmp.ty = ICMP_DEST_UNREACH;
    icmp.code = code;
    icmp.check = 0;
    icmp.rest = [0, (mtu.min(u16::MAX as u32) as u16).to_be()];
    // SAFETY: bounds checked by ptr_at above; it covers the ICMP header
    // and the quote, which are plain bytes.
    icmp.check = !fold(sum_words(unsafe { &*message }));
    Some(())
}
