//! `xdplb decap`: the backend side of a `tunnel` pool, for hosts whose
//! kernel has no ipip module. IPv4-in-IPv4 and IPv6-in-IPv6 packets
//! addressed to this host, from an allowed outer source (the gateways'
//! `tunnel_source`), lose their outer header here and go to the kernel as
//! the inner packet, whose destination (the VIP, held on a loopback) must
//! be an address of this host too. An outer CE mark is carried inside
//! (RFC 6040, normal mode). Anything not addressed to this host passes
//! untouched; tunnels to it that fail a check are dropped. Counted per
//! outcome (`lb_common::decap`).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{
        lpm_trie::{Key, LpmTrie},
        HashMap, PerCpuArray,
    },
    programs::XdpContext,
};
use lb_common::{
    decap::{DecapCounter, MAX_ADDRS, MAX_ALLOW},
    Addr6, IPPROTO_IPIP, IPPROTO_IPV6,
};

/// This host's addresses (network order → 1), written by `xdplb decap`.
#[map]
static DECAP_ADDRS: HashMap<u32, u32> = HashMap::pinned(MAX_ADDRS, 0);

#[map]
static DECAP_ADDRS6: HashMap<Addr6, u32> = HashMap::pinned(MAX_ADDRS, 0);

/// Outer IPv4 sources whose tunnels are opened (`--allow`).
#[map]
static DECAP_ALLOW: LpmTrie<u32, u32> = LpmTrie::pinned(MAX_ALLOW, 0);

#[map]
static DECAP_ALLOW6: LpmTrie<Addr6, u32> = LpmTrie::pinned(MAX_ALLOW, 0);

#[map]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::pinned(DecapCounter::COUNT, 0);

const ETH_HLEN: usize = 14;
const IP_HLEN: usize = 20;
const BE_ETH_P_IP: u16 = 0x0800u16.to_be();
const BE_ETH_P_IPV6: u16 = 0x86ddu16.to_be();
const IPV6_HLEN: usize = 40;

/// The ECN field (RFC 3168): low two bits of the TOS / traffic class.
const ECN_MASK: u8 = 0b11;
const ECN_NOT_ECT: u8 = 0b00;
const ECN_CE: u8 = 0b11;

#[repr(C)]
struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20), as on the wire.
    vtc_flow: [u8; 4],
    payload_len: u16,
    nexthdr: u8,
    hop_limit: u8,
    saddr: [u16; 8],
    daddr: [u16; 8],
}
/// frag_off bits as loaded (network order): more fragments, offset.
const BE_IP_MF_OFFSET: u16 = 0x3fffu16.to_be();

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
}

#[repr(C)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: [u16; 2],
    daddr: [u16; 2],
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    if ctx.data() + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((ctx.data() + offset) as *mut T)
}

#[inline(always)]
fn count(c: DecapCounter) {
    if let Some(v) = DECAP_STATS.get_ptr_mut(c as u32) {
        // SAFETY: a per-CPU slot only this CPU writes while we run.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
fn verdict(c: DecapCounter) -> u32 {
    count(c);
    match c {
        DecapCounter::Passed | DecapCounter::Decapsulated => xdp_action::XDP_PASS,
        DecapCounter::DropMalformed
        | DecapCounter::DropSource
        | DecapCounter::DropNotLocal
        | DecapCounter::DropEcn => xdp_action::XDP_DROP,
    }
}

#[xdp]
pub fn xdplb_decap(ctx: XdpContext) -> u32 {
    verdict(decap(&ctx))
}

#[inline(always)]
fn decap(ctx: &XdpContext) -> DecapCounter {
    let (Some(eth), Some(outer)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN))
    else {
        return DecapCounter::Passed;
    };
    // SAFETY: bounds checked by ptr_at.
    let (eth, outer) = unsafe { (&*eth, &*outer) };
    if eth.proto == BE_ETH_P_IPV6 {
        return decap6(ctx);
    }
    if eth.proto != BE_ETH_P_IP || outer.proto != IPPROTO_IPIP {
        return DecapCounter::Passed;
    }
    let daddr = (outer.daddr[0] as u32) | ((outer.daddr[1] as u32) << 16);
    // SAFETY: the reference lives while the program runs (RCU).
    if unsafe { DECAP_ADDRS.get(&daddr) }.is_none() {
        return DecapCounter::Passed;
    }
    // A tunnel for us from here on: what cannot be opened is dropped (the
    // kernel, without an ipip module, would drop it too), and counted.
    // Only a gateway may wrap: anyone else could hand the host a packet
    // from any inner source (a spoofed SYN) that no filter saw.
    let saddr = (outer.saddr[0] as u32) | ((outer.saddr[1] as u32) << 16);
    if DECAP_ALLOW.get(Key::new(32, saddr)).is_none() {
        return DecapCounter::DropSource;
    }
    let frame = ctx.data_end() - ctx.data();
    let outer_len = u16::from_be(outer.tot_len) as usize;
    if outer.ver_ihl != 0x45
        || outer.frag_off & BE_IP_MF_OFFSET != 0
        || outer_len < 2 * IP_HLEN
        || ETH_HLEN + outer_len > frame
    {
        return DecapCounter::DropMalformed;
    }
    let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN + IP_HLEN) else {
        return DecapCounter::DropMalformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let inner = unsafe { &mut *inner };
    if inner.ver_ihl >> 4 != 4 || u16::from_be(inner.tot_len) as usize + IP_HLEN != outer_len {
        return DecapCounter::DropMalformed;
    }
    let inner_daddr = (inner.daddr[0] as u32) | ((inner.daddr[1] as u32) << 16);
    // SAFETY: as above.
    if unsafe { DECAP_ADDRS.get(&inner_daddr) }.is_none() {
        return DecapCounter::DropNotLocal;
    }
    if outer.tos & ECN_MASK == ECN_CE {
        match inner.tos & ECN_MASK {
            ECN_NOT_ECT => return DecapCounter::DropEcn,
            ECN_CE => {}
            _ => {
                // The TOS byte is the low byte of the header's first
                // 16-bit word: update the checksum for that word (RFC 1624).
                let old = u16::from_be_bytes([inner.ver_ihl, inner.tos]);
                inner.tos |= ECN_CE;
                let new = u16::from_be_bytes([inner.ver_ihl, inner.tos]);
                inner.check = csum_replace16(inner.check, old, new);
            }
        }
    }
    let (dst, src) = (eth.dst, eth.src);
    // SAFETY: valid context; the helper checks the frame keeps a header.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, IP_HLEN as i32) } != 0 {
        return DecapCounter::DropMalformed;
    }
    // The Ethernet header moves up onto the old outer header's tail.
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return DecapCounter::DropMalformed;
    };
    // SAFETY: bounds checked by ptr_at (pointers re-derived after the move).
    let eth = unsafe { &mut *eth };
    eth.dst = dst;
    eth.src = src;
    eth.proto = BE_ETH_P_IP;
    DecapCounter::Decapsulated
}

/// IPv6-in-IPv6 (RFC 2473) addressed to this host: the outer header is
/// stripped as for IPIP. An outer header with extension headers is not
/// ours (xdplb never adds any): it passes.
#[inline(always)]
fn decap6(ctx: &XdpContext) -> DecapCounter {
    let (Some(eth), Some(outer)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN))
    else {
        return DecapCounter::Passed;
    };
    // SAFETY: bounds checked by ptr_at.
    let (eth, outer) = unsafe { (&*eth, &*outer) };
    if outer.nexthdr != IPPROTO_IPV6 {
        return DecapCounter::Passed;
    }
    let w = |i: usize| (outer.daddr[2 * i] as u32) | ((outer.daddr[2 * i + 1] as u32) << 16);
    let daddr = Addr6 {
        words: [w(0), w(1), w(2), w(3)],
    };
    if unsafe { DECAP_ADDRS6.get(&daddr) }.is_none() {
        return DecapCounter::Passed;
    }
    let s = |i: usize| (outer.saddr[2 * i] as u32) | ((outer.saddr[2 * i + 1] as u32) << 16);
    let saddr = Addr6 {
        words: [s(0), s(1), s(2), s(3)],
    };
    if DECAP_ALLOW6.get(Key::new(128, saddr)).is_none() {
        return DecapCounter::DropSource;
    }
    let frame = ctx.data_end() - ctx.data();
    let outer_payload = u16::from_be(outer.payload_len) as usize;
    if outer_payload < IPV6_HLEN || ETH_HLEN + IPV6_HLEN + outer_payload > frame {
        return DecapCounter::DropMalformed;
    }
    let Some(inner) = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN + IPV6_HLEN) else {
        return DecapCounter::DropMalformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let inner = unsafe { &mut *inner };
    if inner.vtc_flow[0] >> 4 != 6
        || u16::from_be(inner.payload_len) as usize + IPV6_HLEN != outer_payload
    {
        return DecapCounter::DropMalformed;
    }
    let d = |i: usize| (inner.daddr[2 * i] as u32) | ((inner.daddr[2 * i + 1] as u32) << 16);
    let inner_daddr = Addr6 {
        words: [d(0), d(1), d(2), d(3)],
    };
    // SAFETY: the reference lives while the program runs (RCU).
    if unsafe { DECAP_ADDRS6.get(&inner_daddr) }.is_none() {
        return DecapCounter::DropNotLocal;
    }
    // The ECN bits are the traffic class's low two: bits 5 and 4 of the
    // header's second byte. No checksum covers them.
    if ecn6(&outer.vtc_flow) == ECN_CE {
        match ecn6(&inner.vtc_flow) {
            ECN_NOT_ECT => return DecapCounter::DropEcn,
            _ => inner.vtc_flow[1] |= ECN_CE << 4,
        }
    }
    let (dst, src) = (eth.dst, eth.src);
    // SAFETY: shrinking the head by a constant; pointers re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, IPV6_HLEN as i32) } != 0 {
        return DecapCounter::DropMalformed;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return DecapCounter::DropMalformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &mut *eth };
    eth.dst = dst;
    eth.src = src;
    eth.proto = BE_ETH_P_IPV6;
    DecapCounter::Decapsulated
}

#[inline(always)]
fn ecn6(vtc_flow: &[u8; 4]) -> u8 {
    (vtc_flow[1] >> 4) & ECN_MASK
}

/// The Internet checksum `check` (as stored) after one 16-bit word of what
/// it covers changed from `old` to `new` (host-order values of the word):
/// HC' = ~(~HC + ~m + m'), RFC 1624 eqn. 3.
#[inline(always)]
fn csum_replace16(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!u16::from_be(check)) as u32 + (!old) as u32 + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
