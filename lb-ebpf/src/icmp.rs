//! ICMP errors that belong to a balanced flow, translated as the NAT
//! translated the packet they quote (as IPVS does; Katran steers them).
//!
//! - To a VIP, quoting VIP:port → client (a router on the client's path
//!   could not deliver what the backend sent, e.g. fragmentation needed):
//!   sent to the backend that owns the flow, outer destination and quoted
//!   source rewritten to that backend, so its stack lowers the path MTU or
//!   aborts the connection.
//! - To a client, quoting client → backend:port (a router on the backend's
//!   side, or the backend itself): quoted destination rewritten to the VIP,
//!   and the outer source too when it is the backend, so the client's
//!   stack matches it to its connection to the VIP.
//!
//! The outer IP, quoted IP and ICMP checksums are updated incrementally;
//! the quoted TCP checksum is left as it is (no stack checks it).
use aya_ebpf::programs::XdpContext;
use lb_common::{FlowKey, GlobalCounter, L4Addr, VIP_F_DSR, VIP_F_TUNNEL};

use crate::{
    consts::MIN_FORWARD_TTL,
    csum::{replace16, replace32},
    emit,
    host::{for_us, is_local},
    maps::{REPLIES, VIPS},
    parse::{load32, store32, IcmpHdr, IcmpPacket, Ipv4Hdr},
    select,
    stats::count,
    verdict::{drop, pass, pass_because},
};

#[inline(always)]
pub fn translate(ctx: &XdpContext, p: &IcmpPacket) -> u32 {
    // SAFETY: `p` holds pointers `parse` bounds-checked.
    let (ip, icmp, inner, ports) =
        unsafe { (&mut *p.ip, &mut *p.icmp, &mut *p.inner, &mut *p.inner_ports) };
    let (outer_src, outer_dst) = (load32(&ip.saddr), load32(&ip.daddr));
    let (inner_src, inner_dst) = (load32(&inner.saddr), load32(&inner.daddr));
    let (inner_sport, inner_dport) = (ports[0], ports[1]);
    let proto = inner.proto;
    if ip.ttl < MIN_FORWARD_TTL {
        return pass();
    }

    if outer_dst == inner_src {
        let vip_key = L4Addr {
            addr: inner_src,
            port: inner_sport,
            proto,
            _pad: 0,
        };
        // SAFETY: the reference lives while the program runs (RCU).
        if let Some(vip) = unsafe { VIPS.get(&vip_key) } {
            if !for_us(ctx) {
                return pass_because(GlobalCounter::PassNotForUs);
            }
            let flow = FlowKey {
                src_addr: inner_dst,
                dst_addr: inner_src,
                src_port: inner_dport,
                dst_port: inner_sport,
                proto,
                _pad: [0; 3],
            };
            let choice = match select::peek(&flow, vip) {
                Ok(c) => c,
                Err(reason) => return drop(ctx, reason),
            };
            if vip.flags & (VIP_F_DSR | VIP_F_TUNNEL) != 0 {
                // The backend's socket is bound to the VIP: it must see the
                // error as it was sent, only delivered (as Katran does).
                count(GlobalCounter::IcmpToBackend);
                let now = crate::coarse_now();
                return if vip.flags & VIP_F_DSR != 0 {
                    crate::direct::dsr(ctx, choice.meta.addr, now)
                } else {
                    crate::direct::tunnel(ctx, choice.meta.addr, now)
                };
            }
            let (addr, port) = (choice.meta.addr, choice.meta.port);
            store32(&mut ip.daddr, addr);
            ip.check = replace32(ip.check, outer_dst, addr);
            requote(icmp, inner, ports, Quoted::Source, addr, port);
            count(GlobalCounter::IcmpToBackend);
            return emit(ctx, p.ip, outer_src, addr);
        }
    }

    if outer_dst == inner_src && !is_local(outer_dst) {
        let backend_key = L4Addr {
            addr: inner_dst,
            port: inner_dport,
            proto,
            _pad: 0,
        };
        // SAFETY: as above.
        if let Some(reply) = unsafe { REPLIES.get(&backend_key) } {
            if !for_us(ctx) {
                return pass_because(GlobalCounter::PassNotForUs);
            }
            let (vip, vip_port) = (reply.vip_addr, reply.vip_port);
            requote(icmp, inner, ports, Quoted::Destination, vip, vip_port);
            let mut src = outer_src;
            if outer_src == inner_dst {
                store32(&mut ip.saddr, vip);
                ip.check = replace32(ip.check, outer_src, vip);
                src = vip;
            }
            count(GlobalCounter::IcmpToClient);
            return emit(ctx, p.ip, src, outer_dst);
        }
    }
    pass()
}

/// Which end of the quoted packet a translation rewrites.
enum Quoted {
    Source,
    Destination,
}

/// Rewrites one end (address and port) of the quoted header, updating the
/// quoted IP checksum and the ICMP checksum, which covers both.
#[inline(always)]
fn requote(
    icmp: &mut IcmpHdr,
    inner: &mut Ipv4Hdr,
    ports: &mut [u16; 2],
    side: Quoted,
    addr: u32,
    port: u16,
) {
    let (field, i) = match side {
        Quoted::Source => (&mut inner.saddr, 0),
        Quoted::Destination => (&mut inner.daddr, 1),
    };
    let old_addr = load32(field);
    store32(field, addr);
    let old_port = ports[i];
    ports[i] = port;
    let old_check = inner.check;
    inner.check = replace32(old_check, old_addr, addr);
    icmp.check = replace16(
        replace16(
            replace32(icmp.check, old_addr, addr),
            old_check,
            inner.check,
        ),
        old_port,
        port,
    );
}
