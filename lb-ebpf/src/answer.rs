//! Packets the program answers itself, from the address the client
//! spoke to, sent back out of the interface the packet came in on (see
//! `verdict::hairpin`): a RST when the pool has no usable backend, an ICMP
//! port unreachable for a UDP one, and a too-big message (fragmentation
//! needed, packet too big) when a packet will not fit the backend's link.
//!
//! Each shrinks the frame to a fixed size first, so every header after
//! that sits at a constant offset and the checksums are sums over fixed
//! words. An echo request to a VIP is answered in place.
//!
//! Every answer spends this CPU's credit (`answers_per_sec`, a token
//! bucket, [`may_answer`]): a flood of packets that each earn an answer
//! gets at most that many a second, so the gateway is never a reflector.
use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{AnswerTokens, GlobalCounter, IPPROTO_TCP};

use crate::{
    consts::*,
    csum::{fold, replace16, sum_words},
    family::{Family, Words},
    maps::ANSWER_TOKENS,
    parse::{load32, ptr_at, store32, EchoPacket, EthHdr, IcmpHdr, L4Packet, TcpHdr},
    pipeline::coarse_now,
    select::Flow,
};

/// What one answer costs of a CPU's credit, ns: `1e9 / answers_per_sec`
/// (`u64::MAX`: answers are off). Set by user space with
/// `override_global` before the program loads.
#[no_mangle]
static ANSWER_COST_NS: u64 = 1_000_000_000 / lb_common::limits::DEFAULT_ANSWERS_PER_SEC as u64;

/// Credit a CPU saves up at most: one second's worth of answers.
const ANSWER_BURST_NS: u64 = 1_000_000_000;

/// Whether this CPU may answer one more packet now (and if so, the
/// answer is paid for).
#[inline(always)]
pub fn may_answer() -> bool {
    // verifier: volatile so the loaded value (set at load time) is used.
    let cost = unsafe { core::ptr::read_volatile(&ANSWER_COST_NS) };
    let Some(b) = ANSWER_TOKENS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot only this CPU writes while we run.
    let b: &mut AnswerTokens = unsafe { &mut *b };
    let now = coarse_now();
    let credit = b
        .credit_ns
        .saturating_add(now.wrapping_sub(b.last_ns))
        .min(ANSWER_BURST_NS);
    b.last_ns = now;
    if credit < cost {
        b.credit_ns = credit;
        return false;
    }
    b.credit_ns = credit - cost;
    true
}

/// Answers the packet with what `$build` (an `Option<()>`) makes of it,
/// if this CPU's credit allows: counted under `$event`; dropped under
/// `$otherwise` if it could not be made, or as `DropAnswerLimited` over
/// the rate. verifier: a macro, not a function taking a closure, which
/// LLVM outlined into BPF functions whose frames put the IPv4 program's
/// call chain over 512 bytes of stack.
macro_rules! answer_with {
    ($ctx:expr, $event:expr, $otherwise:expr, $build:expr) => {
        if !$crate::answer::may_answer() {
            $crate::verdict::drop($ctx, lb_common::GlobalCounter::DropAnswerLimited)
        } else {
            match $build {
                Some(()) => $crate::verdict::answered($ctx, $event),
                None => $crate::verdict::drop($ctx, $otherwise),
            }
        }
    };
}
pub(crate) use answer_with;

/// Whether `pkt` is one the program never answers with a RST (a RST
/// itself; a segment behind IPv6 extension headers).
#[inline(always)]
pub fn unanswerable<F: Family>(pkt: &L4Packet<F>) -> bool {
    !pkt.udp() && (pkt.flags & TCP_FLAG_RST != 0 || pkt.ext_headers)
}

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

/// A RST from the VIP for `pkt` (RFC 9293 §3.10.7.1, as a closed port
/// answers). `None` for a RST (never answered), a segment behind IPv6
/// extension headers (not worth the arithmetic), or if the frame could not
/// be shrunk.
#[inline(always)]
pub fn reset<F: Family>(ctx: &XdpContext, pkt: &L4Packet<F>) -> Option<()> {
    if pkt.flags & TCP_FLAG_RST != 0 || pkt.ext_headers {
        return None;
    }
    // verifier: the TCP header re-checked here, as the verifier cannot
    // tie `pkt.flags` to the header the parse checked.
    let tcp = ptr_at::<TcpHdr>(ctx, ETH_HLEN + F::HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let (eth, tcp) = unsafe { (&*ptr_at::<EthHdr>(ctx, 0)?, &*tcp) };
    let (client_mac, our_mac) = (eth.src, eth.dst);
    let (client, vip) = (pkt.key.src(), pkt.key.dst());
    let rst = Rst::answering(tcp, pkt.flags, pkt.l4_len);
    if !truncate(ctx, ETH_HLEN + F::HLEN + TCP_MIN_HLEN) {
        return None;
    }
    // Every pointer is stale after the resize: derive them again.
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<F::Hdr>(ctx, ETH_HLEN)?;
    let tcp = ptr_at::<TcpHdr>(ctx, ETH_HLEN + F::HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip, tcp) = unsafe { (&mut *eth, &mut *ip, &mut *tcp) };
    eth.dst = client_mac;
    eth.src = our_mac;
    F::write_answer_header(ip, IPPROTO_TCP, TCP_MIN_HLEN as u16, &vip, &client);
    rst.write(
        tcp,
        F::pseudo_sum(&vip, &client, IPPROTO_TCP, TCP_MIN_HLEN as u16),
    );
    Some(())
}

/// The RST answering a segment (RFC 9293 §3.10.7.1, as a closed port
/// does): to a segment with ACK, `seq = SEG.ACK`; otherwise RST|ACK with
/// `ack = SEG.SEQ + SEG.LEN`.
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

/// An ICMP error of `(type, code)` from the packet's destination (the
/// VIP) to its source, quoting the packet's header and 8 bytes after it;
/// `mtu` goes in a too-big message (as Katran's `send_icmp_too_big`). The
/// packet must not have been rewritten yet: the client must recognise the
/// quote as its own.
#[inline(always)]
pub fn icmp_error<F: Family>(ctx: &XdpContext, kind: (u8, u8), mtu: u32) -> Option<()> {
    let message_len = core::mem::size_of::<F::IcmpMessage>();
    let quoted = message_len - ICMP_HLEN;
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<F::Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip) = unsafe { (&*eth, &*ip) };
    let (client_mac, our_mac) = (eth.src, eth.dst);
    let (client, vip) = (F::src(ip), F::dst(ip));
    // Keep the original IP header and 8 bytes, then make room in front
    // for the new IP and ICMP headers (the old Ethernet header is reused).
    if !truncate(ctx, ETH_HLEN + quoted) {
        return None;
    }
    let room = (F::HLEN + ICMP_HLEN) as i32;
    // SAFETY: valid context; the helper checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -room) } != 0 {
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<F::Hdr>(ctx, ETH_HLEN)?;
    // verifier: one pointer for the ICMP header and the whole message, so
    // the bounds check of the larger covers every access through it.
    let message = ptr_at::<F::IcmpMessage>(ctx, ETH_HLEN + F::HLEN)?;
    let icmp = message as *mut IcmpHdr;
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip, icmp) = unsafe { (&mut *eth, &mut *ip, &mut *icmp) };
    eth.dst = client_mac;
    eth.src = our_mac;
    eth.proto = F::BE_ETH_P;
    F::write_answer_header(ip, F::ICMP_PROTO, message_len as u16, &vip, &client);
    icmp.ty = kind.0;
    icmp.code = kind.1;
    icmp.check = 0;
    icmp.rest = F::icmp_rest(mtu);
    let pseudo = F::icmp_pseudo(&vip, &client, message_len as u16);
    // SAFETY: `message` is in bounds (checked above); it covers the ICMP
    // header and the quote, which are plain bytes.
    icmp.check = !fold(pseudo + unsafe { &*message }.sum());
    Some(())
}

/// Turns a too-big message about an outer packet (router → tunnel
/// source, quoting the outer header, then the client's packet's header and
/// 8 bytes) into one from `vip` to `client` quoting `mtu` and the client's
/// packet: the quoted outer header is cut out (the frame's first `HLEN`
/// bytes go, and the new headers are written where the old ones ended, so
/// the client's quote stays where it is), and the rest after those 8 bytes.
#[inline(always)]
pub fn unwrap_too_big<F: Family>(
    ctx: &XdpContext,
    client: &F::Addr,
    vip: &F::Addr,
    mtu: u32,
) -> Option<()> {
    let message_len = core::mem::size_of::<F::IcmpMessage>();
    // Ethernet, outer IP, ICMP, quoted outer header, then the quote kept.
    if !truncate(ctx, ETH_HLEN + F::HLEN + F::HLEN + message_len) {
        return None;
    }
    // SAFETY: valid context; the frame is longer than the delta.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, F::HLEN as i32) } != 0 {
        return None;
    }
    // Every pointer is stale after the resize: derive them again.
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<F::Hdr>(ctx, ETH_HLEN)?;
    // verifier: one pointer for the ICMP header and the whole message, as
    // in `icmp_error`.
    let message = ptr_at::<F::IcmpMessage>(ctx, ETH_HLEN + F::HLEN)?;
    let icmp = message as *mut IcmpHdr;
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip, icmp) = unsafe { (&mut *eth, &mut *ip, &mut *icmp) };
    // The MACs are the next hop's, written when it is sent.
    eth.proto = F::BE_ETH_P;
    F::write_answer_header(ip, F::ICMP_PROTO, message_len as u16, vip, client);
    icmp.ty = F::TOO_BIG.0;
    icmp.code = F::TOO_BIG.1;
    icmp.check = 0;
    icmp.rest = F::icmp_rest(mtu);
    let pseudo = F::icmp_pseudo(vip, client, message_len as u16);
    // SAFETY: `message` is in bounds (checked above), plain bytes.
    icmp.check = !fold(pseudo + unsafe { &*message }.sum());
    Some(())
}

/// The packet answered with "too big for the next link", quoting `mtu`;
/// counted.
#[inline(always)]
pub fn too_big<F: Family>(ctx: &XdpContext, mtu: u32) -> u32 {
    answer_with!(
        ctx,
        GlobalCounter::FragNeededSent,
        GlobalCounter::DropInternal,
        icmp_error::<F>(ctx, F::TOO_BIG, mtu)
    )
}

/// Turns an echo request into its reply, in place: addresses and MACs
/// swapped, a fresh TTL, the type changed (the ICMP checksum mended for
/// it; the swap changes no sum).
#[inline(always)]
pub fn echo_reply<F: Family>(ctx: &XdpContext, e: &EchoPacket<F>) -> Option<()> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: the parse bounds-checked `ip` and `icmp`; ptr_at `eth`.
    let (eth, ip, icmp) = unsafe { (&mut *eth, &mut *e.ip, &mut *e.icmp) };
    core::mem::swap(&mut eth.src, &mut eth.dst);
    F::swap_addrs(ip);
    F::set_hop_limit(ip, ORIGIN_TTL);
    // Type and code are one word; in memory order (as loaded) the type is
    // its low byte.
    let old = (icmp.ty as u16) | ((icmp.code as u16) << 8);
    icmp.ty = F::ECHO_REPLY;
    let new = (icmp.ty as u16) | ((icmp.code as u16) << 8);
    icmp.check = replace16(icmp.check, old, new);
    Some(())
}
