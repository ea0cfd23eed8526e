//! The balancer's pipeline, once for both families (as Katran's
//! `process_packet`): parse, then a VIP's packet to its backend or a
//! backend's reply back from the VIP. Each stage returns the verdict.
use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use lb_common::{
    limits::FRAG_TTL_NS, FibEntry, GlobalCounter, VipMeta, FRAG_DSR, FRAG_NAT, FRAG_REPLY,
    FRAG_TUNNEL, IPPROTO_TCP, IPPROTO_UDP, REPLY_F_OPENS, TAIL_IPV6, TAIL_UDP4, TAIL_UDP4_REPLY,
    VIP_F_DSR, VIP_F_REJECT_EMPTY, VIP_F_TUNNEL,
};

use crate::{
    answer::{self, answer_with, too_big, unanswerable},
    consts::{MIN_FORWARD_TTL, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    direct,
    family::{Family, Ipv4, Reply, VipMatch},
    forward::{aggregate, backend_next_hop, fits, next_hop, send, Next},
    host::{for_us, may_be_vip},
    nat,
    parse::{self, load32, EchoPacket, Entry, FragPacket, L4Packet, Parsed},
    select::{self, Flow},
    stats::{count, count_backend, count_rejected, count_reply, count_vip},
    verdict::{answered, drop, pass, pass_because},
};

/// The attached program's work (`xdplb`): IPv6 handed to its program;
/// IPv4 first to the VIP prefilter, once for the whole pipeline (here
/// nothing but the context and the header are live across the read, where
/// the parse's fields would be spilled around it later): TCP and UDP
/// transit traffic passed, UDP handed to the program for its answer
/// (`TAIL_UDP4` or `TAIL_UDP4_REPLY`: a tail call carries nothing else),
/// TCP and the rest balanced here.
#[inline(always)]
pub fn entry(ctx: &XdpContext) -> u32 {
    let dst_may_be_vip = 'asked: {
        let iph = match parse::entry_of(ctx) {
            Entry::Ipv6 => return tail(ctx, TAIL_IPV6),
            Entry::Other => break 'asked true,
            // SAFETY: `entry_of` checked the header is in the frame.
            Entry::Ipv4(ip) => unsafe { &*ip },
        };
        let dst_may_be_vip = may_be_vip(load32(&iph.daddr));
        match iph.proto {
            IPPROTO_UDP => {
                return if dst_may_be_vip {
                    tail(ctx, TAIL_UDP4)
                } else if parse::transit(ctx, iph) {
                    pass()
                } else {
                    tail(ctx, TAIL_UDP4_REPLY)
                };
            }
            IPPROTO_TCP if !dst_may_be_vip && parse::transit(ctx, iph) => return pass(),
            _ => dst_may_be_vip,
        }
    };
    // Kept on the stack until `balance` reads it: a register carried
    // through the parse spilled more of its fields, and two copies of the
    // pipeline, one for each answer, doubled the program's code.
    let mut asked = 0u64;
    // SAFETY: a local, written and read whole.
    unsafe { core::ptr::write_volatile(&mut asked, dst_may_be_vip as u64) };
    run::<Ipv4, false>(ctx, || unsafe { core::ptr::read_volatile(&asked) } != 0)
}

/// One program's work: family `F`, its UDP program if `UDP`.
/// `dst_may_be_vip` (`entry` asks the VIP prefilter of every IPv4 packet,
/// and so of every TCP or UDP one that reaches `balance`): true, the
/// prefilter may hold the destination, which is looked up in the VIP maps
/// without asking it again; false, it does not, and (the packet being no
/// transit traffic) the backends' prefilter may hold the source, which is
/// looked up in `REPLIES` without asking that again.
#[inline(always)]
pub fn run<F: Family, const UDP: bool>(ctx: &XdpContext, dst_may_be_vip: impl Fn() -> bool) -> u32 {
    match F::parse::<UDP>(ctx) {
        Parsed::L4(pkt) => balance(ctx, &pkt, dst_may_be_vip()),
        Parsed::IcmpError(p) => F::icmp_error(ctx, &p),
        Parsed::TunnelTooBig => F::tunnel_too_big(ctx),
        Parsed::IcmpUnparsed => pass_because(GlobalCounter::PassIcmpUnparsed),
        Parsed::NotOurs => pass(),
        Parsed::Other { dst } => {
            if F::vip_addr(&dst).is_some() && for_us(ctx) {
                drop(ctx, GlobalCounter::DropNoPool)
            } else {
                pass()
            }
        }
        Parsed::Echo(e) => echo(ctx, &e),
        Parsed::Tail(slot) => tail(ctx, slot),
        Parsed::Fragment(_) => tail(ctx, F::TAIL_FRAGMENT),
        Parsed::ExtUnparsed => pass_because(GlobalCounter::PassIpv6ExtUnparsed),
        Parsed::Special { key, reason } => {
            let ours = !matches!(
                F::vip_match(&key.dst(), key.dst_port(), key.proto()),
                VipMatch::None
            );
            if ours && for_us(ctx) {
                drop(ctx, reason)
            } else {
                pass()
            }
        }
        Parsed::Malformed(reason) => {
            if for_us(ctx) {
                drop(ctx, reason)
            } else {
                pass_because(GlobalCounter::PassNotForUs)
            }
        }
    }
}

/// Hands the frame to the program in `TAILS[slot]`; returns only if that
/// slot is empty (a data plane loaded by hand, half set up): the kernel
/// gets the frame.
#[inline(always)]
pub fn tail(ctx: &XdpContext, slot: u32) -> u32 {
    // SAFETY: a tail call either leaves this program for good or fails
    // and returns.
    unsafe { crate::TAILS.tail_call(ctx, slot) };
    pass_because(GlobalCounter::PassTailMissing)
}

#[inline(always)]
fn balance<F: Family>(ctx: &XdpContext, pkt: &L4Packet<F>, dst_may_be_vip: bool) -> u32 {
    let key = &pkt.key;
    let vip = if dst_may_be_vip {
        F::vip_lookup(&key.dst(), key.dst_port(), key.proto())
    } else {
        VipMatch::None
    };
    match vip {
        VipMatch::Pool(vip) => {
            if !for_us(ctx) {
                return pass_because(GlobalCounter::PassNotForUs);
            }
            return to_backend(ctx, pkt, vip);
        }
        VipMatch::Address => {
            if !for_us(ctx) {
                return pass_because(GlobalCounter::PassNotForUs);
            }
            return no_pool(ctx, pkt);
        }
        VipMatch::None => {}
    }
    let reply = if dst_may_be_vip {
        F::reply(&key.src(), key.src_port(), key.proto())
    } else {
        F::reply_lookup(&key.src(), key.src_port(), key.proto())
    };
    if let Some(reply) = reply {
        // Traffic between a backend and this host (health checks, agents)
        // is the kernel's; everything else from a backend's service port is
        // a reply, flow entry or not (stateless reverse NAT).
        if F::is_local(&key.dst()) {
            return pass();
        }
        if !for_us(ctx) {
            return pass_because(GlobalCounter::PassNotForUs);
        }
        if !pkt.udp() && opened_by_backend(pkt, &reply) {
            return pass_because(GlobalCounter::PassBackendOpened);
        }
        return from_backend(ctx, pkt, &reply);
    }
    pass()
}

/// Whether a TCP segment from a backend's service endpoint belongs to a
/// connection the backend opened (and is no reply): its SYN without ACK,
/// and whatever the backend sends on that 5-tuple afterwards, which is
/// looked up only for endpoints that ever opened one. A SYN-ACK on such a
/// tuple is a client's new connection through the VIP: a reply again.
/// (What comes back is addressed to the backend, not to a VIP: the
/// kernel's anyway.) UDP has no handshake to tell by: every datagram from
/// a service endpoint is a reply.
#[inline(always)]
fn opened_by_backend<F: Family>(pkt: &L4Packet<F>, reply: &Reply<F>) -> bool {
    let key = &pkt.key;
    let handshake = pkt.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK);
    if handshake == TCP_FLAG_SYN {
        if reply.flags & REPLY_F_OPENS == 0 {
            F::mark_opener(&key.src(), key.src_port(), key.proto());
        }
        F::outbound_put(key, coarse_now());
        return true;
    }
    if reply.flags & REPLY_F_OPENS == 0 || !F::outbound(key) {
        return false;
    }
    if handshake == TCP_FLAG_SYN | TCP_FLAG_ACK {
        F::outbound_del(key);
        return false;
    }
    if pkt.flags & TCP_FLAG_RST != 0 {
        F::outbound_del(key);
    }
    true
}

#[inline(always)]
fn to_backend<F: Family>(ctx: &XdpContext, pkt: &L4Packet<F>, vip: &VipMeta) -> u32 {
    let ip = pkt.hdr();
    if F::hop_limit(ip) < MIN_FORWARD_TTL {
        return pass();
    }
    if pkt.ext_headers {
        count(GlobalCounter::Ipv6ExtSkipped);
    }
    let now = coarse_now();
    let choice = match select::select(&pkt.key, vip, pkt.flags, now) {
        Ok(choice) => choice,
        Err(GlobalCounter::DropNoBackend) if vip.flags & VIP_F_REJECT_EMPTY != 0 => {
            return reject(ctx, pkt, vip);
        }
        Err(reason) => return drop(ctx, reason),
    };
    let Some(addr) = F::backend_addr(choice.backend, &choice.meta) else {
        return drop(ctx, GlobalCounter::DropInternal);
    };
    let bytes = pkt.ip_len as u64;
    count_vip(vip.index, bytes, choice.new_flow);
    count_backend(choice.backend, bytes, choice.new_flow);
    let port = choice.meta.port;
    if let Some(id) = pkt.fragment {
        let kind = if vip.flags & VIP_F_DSR != 0 {
            FRAG_DSR
        } else if vip.flags & VIP_F_TUNNEL != 0 {
            FRAG_TUNNEL
        } else {
            FRAG_NAT
        };
        let key = &pkt.key;
        F::frag_put(
            &key.src(),
            &key.dst(),
            id,
            key.proto(),
            &addr,
            choice.backend,
            vip.index,
            kind,
            now + FRAG_TTL_NS,
        );
    }
    // A fragment's checksum is complete: a sender completes it before it
    // fragments, as it covers the whole datagram.
    let partial = pkt.fragment.is_none() && nat::is_partial(pkt);
    if nat::no_checksum(pkt) {
        count(GlobalCounter::UdpNoChecksum);
    }
    if vip.flags & (VIP_F_DSR | VIP_F_TUNNEL) != 0 {
        // The frame leaves the kernel's offload state behind either way.
        if partial {
            if !nat::complete(ctx, pkt) {
                return drop(ctx, GlobalCounter::DropInternal);
            }
            count(GlobalCounter::PartialChecksum);
        }
        if vip.flags & VIP_F_DSR != 0 {
            return direct::dsr::<F>(ctx, choice.backend, &addr, now);
        }
        return direct::tunnel::<F>(ctx, choice.backend, &addr, choice.hash, now);
    }
    let src = pkt.key.src();
    let hop = match backend_next_hop::<F>(
        ctx,
        choice.backend,
        &src,
        &addr,
        F::tos(ip),
        pkt.key.proto(),
        now,
    ) {
        Next::Send(hop) => hop,
        Next::Kernel => {
            nat::to_backend(pkt, &addr, port, partial);
            return pass();
        }
        Next::Drop(reason) => return drop(ctx, reason),
    };
    if let Err(mtu) = fits(ctx, &hop) {
        if F::must_not_fragment(ip) && !aggregate(ctx) {
            // Answer before any rewrite: the quote must be what the client
            // sent, or its stack cannot match it.
            return too_big::<F>(ctx, mtu);
        }
        // The kernel fragments what it forwards (IPv4 without DF), or
        // re-makes the segments of an aggregate (generic XDP).
        nat::to_backend(pkt, &addr, port, partial);
        return pass_because(GlobalCounter::PassTooBig);
    }
    nat::to_backend(pkt, &addr, port, partial);
    finish(ctx, pkt, partial, &hop)
}

/// A pool with no usable backend (`on_empty = "reject"`): a RST or an
/// ICMP port unreachable from the VIP, as a closed port answers.
#[inline(always)]
fn reject<F: Family>(ctx: &XdpContext, pkt: &L4Packet<F>, vip: &VipMeta) -> u32 {
    if unanswerable(pkt) {
        return drop(ctx, GlobalCounter::DropNoBackend);
    }
    if !answer::may_answer() {
        return drop(ctx, GlobalCounter::DropAnswerLimited);
    }
    match closed_port(ctx, pkt) {
        Some(()) => {
            count_rejected(vip.index);
            answered(ctx, GlobalCounter::Rejected)
        }
        None => drop(ctx, GlobalCounter::DropNoBackend),
    }
}

/// A VIP address, but no pool at this port and protocol: answered as a
/// closed port, never handed to the kernel (which has no route for the
/// VIP but, on a gateway, a default route back upstream).
#[inline(always)]
fn no_pool<F: Family>(ctx: &XdpContext, pkt: &L4Packet<F>) -> u32 {
    if unanswerable(pkt) {
        return drop(ctx, GlobalCounter::DropNoPool);
    }
    answer_with!(
        ctx,
        GlobalCounter::NoPoolAnswered,
        GlobalCounter::DropNoPool,
        closed_port(ctx, pkt)
    )
}

/// What a closed port answers: TCP a RST, UDP an ICMP port unreachable.
#[inline(always)]
fn closed_port<F: Family>(ctx: &XdpContext, pkt: &L4Packet<F>) -> Option<()> {
    if pkt.udp() {
        answer::icmp_error::<F>(ctx, F::PORT_UNREACH, 0)
    } else {
        answer::reset(ctx, pkt)
    }
}

/// An echo request: answered from a VIP address whose pool can serve (ping
/// is how operators check a VIP); dropped at one that cannot.
#[inline(always)]
fn echo<F: Family>(ctx: &XdpContext, e: &EchoPacket<F>) -> u32 {
    // SAFETY: bounds-checked by the parse.
    let dst = F::dst(unsafe { &*e.ip });
    let Some(addr) = F::vip_addr(&dst) else {
        return pass();
    };
    if !for_us(ctx) {
        return pass_because(GlobalCounter::PassNotForUs);
    }
    if addr.serving == 0 {
        return drop(ctx, GlobalCounter::DropNoPool);
    }
    answer_with!(
        ctx,
        GlobalCounter::EchoReplied,
        GlobalCounter::DropInternal,
        answer::echo_reply(ctx, e)
    )
}

#[inline(always)]
fn from_backend<F: Family>(ctx: &XdpContext, pkt: &L4Packet<F>, reply: &Reply<F>) -> u32 {
    let ip = pkt.hdr();
    if F::hop_limit(ip) < MIN_FORWARD_TTL {
        return pass();
    }
    let (vip, vip_port) = (reply.vip, reply.port);
    let partial = pkt.fragment.is_none() && nat::is_partial(pkt);
    let now = coarse_now();
    let key = &pkt.key;
    if let Some(id) = pkt.fragment {
        F::frag_put(
            &key.src(),
            &key.dst(),
            id,
            key.proto(),
            &vip,
            reply.backend,
            0,
            FRAG_REPLY,
            now + FRAG_TTL_NS,
        );
    }
    // The SYN-ACK (the flow saw both directions once the client acks it),
    // FIN and RST are noted in the flow's entry; other replies are
    // rewritten without a lookup.
    if pkt.flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
        let client_side = F::Key::new(&key.dst(), &vip, key.dst_port(), vip_port, key.proto());
        select::note_backend(&client_side, pkt.flags, now);
    }
    let hop = match next_hop::<F>(ctx, &vip, &key.dst(), F::tos(ip), key.proto(), now) {
        Next::Send(hop) => hop,
        Next::Kernel => {
            nat::from_backend(pkt, &vip, vip_port, partial);
            return pass();
        }
        Next::Drop(reason) => return drop(ctx, reason),
    };
    if fits(ctx, &hop).is_err() {
        if !F::must_not_fragment(ip) || aggregate(ctx) {
            nat::from_backend(pkt, &vip, vip_port, partial);
            count_reply(reply.backend, pkt.ip_len as u64);
        }
        // Otherwise up as the backend sent it: the kernel, the router on
        // this path, sends the backend its fragmentation-needed (packet
        // too big) quoting exactly what the backend's stack will match.
        return pass_because(GlobalCounter::PassTooBig);
    }
    nat::from_backend(pkt, &vip, vip_port, partial);
    count_reply(reply.backend, pkt.ip_len as u64);
    finish(ctx, pkt, partial, &hop)
}

/// The later-fragment program of family `F`: the frame parsed again.
#[inline(always)]
pub fn run_fragment<F: Family>(ctx: &XdpContext) -> u32 {
    match F::parse::<false>(ctx) {
        Parsed::Fragment(f) => fragment(ctx, &f),
        _ => pass(),
    }
}

/// A datagram's later fragment: sent where its first fragment went, and
/// rewritten as it was; if its first fragment was not seen (or too long
/// ago), dropped when it is ours (to a VIP address, from a backend), passed
/// otherwise.
#[inline(always)]
fn fragment<F: Family>(ctx: &XdpContext, f: &FragPacket<F>) -> u32 {
    // SAFETY: bounds-checked by the parse; nothing moved the packet.
    let ip = unsafe { &mut *f.ip };
    let (src, dst) = (F::src(ip), F::dst(ip));
    if F::vip_addr(&dst).is_none() && !F::reply_addr(&src) {
        return pass_because(GlobalCounter::PassFragment);
    }
    if !for_us(ctx) {
        return pass_because(GlobalCounter::PassNotForUs);
    }
    if F::hop_limit(ip) < MIN_FORWARD_TTL {
        return pass();
    }
    let now = coarse_now();
    let Some(e) = F::frag_get(&src, &dst, f.id, f.proto) else {
        return drop(ctx, GlobalCounter::DropFragment);
    };
    // SAFETY: a map value valid while the program runs.
    let e = unsafe { &*e };
    if e.expires_ns <= now {
        return drop(ctx, GlobalCounter::DropFragment);
    }
    let (addr, backend, kind) = (F::frag_addr(e), e.backend, e.kind);
    let bytes = ctx.data_end() as u64 - ctx.data() as u64 - crate::consts::ETH_HLEN as u64;
    count(GlobalCounter::FragmentFollowed);
    match kind {
        FRAG_REPLY => {
            count_reply(backend, bytes);
            F::set_src(ip, &addr);
            emit::<F>(ctx, f.ip, &addr, &dst)
        }
        FRAG_NAT => {
            count_vip(e.vip_index, bytes, false);
            count_backend(backend, bytes, false);
            F::set_dst(ip, &addr);
            emit::<F>(ctx, f.ip, &src, &addr)
        }
        FRAG_DSR => {
            count_vip(e.vip_index, bytes, false);
            count_backend(backend, bytes, false);
            direct::dsr::<F>(ctx, backend, &addr, now)
        }
        FRAG_TUNNEL => {
            count_vip(e.vip_index, bytes, false);
            count_backend(backend, bytes, false);
            // No ports here: the outer source may differ from the first
            // fragment's (the backend reassembles the inner datagram,
            // whatever the outer headers were).
            let hash = F::Key::new(&src, &dst, 0, 0, f.proto).hash();
            direct::tunnel::<F>(ctx, backend, &addr, hash, now)
        }
        _ => drop(ctx, GlobalCounter::DropInternal),
    }
}

/// Sends a rewritten TCP/UDP packet to `hop`, completing a partial checksum
/// first (the redirected frame leaves the kernel's offload state behind).
#[inline(always)]
fn finish<F: Family>(ctx: &XdpContext, pkt: &L4Packet<F>, partial: bool, hop: &FibEntry) -> u32 {
    if partial {
        if !nat::complete(ctx, pkt) {
            // Still a valid partial frame: the kernel can finish it.
            return pass();
        }
        count(GlobalCounter::PartialChecksum);
    }
    send::<F>(ctx, pkt.ip, hop)
}

/// Forwards an already rewritten packet (an ICMP error) from `saddr` to
/// `daddr`.
#[inline(always)]
pub fn emit<F: Family>(ctx: &XdpContext, ip: *mut F::Hdr, saddr: &F::Addr, daddr: &F::Addr) -> u32 {
    // SAFETY: bounds-checked by the parse.
    let (tos, proto) = unsafe { (F::tos(&*ip), F::proto(&*ip)) };
    match next_hop::<F>(ctx, saddr, daddr, tos, proto, coarse_now()) {
        Next::Send(hop) => match fits(ctx, &hop) {
            Ok(()) => send::<F>(ctx, ip, &hop),
            Err(_) => pass_because(GlobalCounter::PassTooBig),
        },
        Next::Kernel => pass(),
        Next::Drop(reason) => drop(ctx, reason),
    }
}

/// Clock for flow recency and FIB-cache expiry: jiffy resolution is
/// plenty for both, and the coarse clock reads no hardware counter.
#[inline(always)]
pub fn coarse_now() -> u64 {
    // SAFETY: helper call without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}
