//! `xdplb explain`'s object: the data plane's program (`main.rs`) built
//! again from the same modules with `trace_explain.rs` as `trace`, so that
//! nothing shared is written (no flow entry, counter, FIB cache, fragment
//! or outbound entry) and every step is recorded in the `EXPLAIN` map.
//! Loaded over the running data plane's pinned maps, run on one frame with
//! BPF_PROG_TEST_RUN, never attached. Its entry points have the data
//! plane's names, and its `TAILS` is its own (not pinned): the frame goes
//! through the same tail calls, each to an explain program. Its
//! unpinned maps (`ANSWER_TOKENS`, `INSERT_RATE`, `FRAG_SCRATCH`) are its
//! own too: the data plane's answer credit and insert window cannot be
//! read, and explain runs as if both had room.
//! Its entry points mirror `main.rs`'s, each marking itself in the trace.
#![no_std]
#![no_main]
// `atomic_cxchg` in select.rs: see main.rs.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod answer;
mod consts;
mod csum;
mod direct;
mod family;
mod forward;
mod host;
mod icmp;
mod maps;
mod nat;
mod parse;
mod pipeline;
mod select;
mod stats;
#[path = "trace_explain.rs"]
mod trace;
mod verdict;

use aya_ebpf::{
    macros::{map, xdp},
    maps::ProgramArray,
    programs::XdpContext,
};
use lb_common::{
    EXPLAIN_PROG_FRAG4, EXPLAIN_PROG_FRAG6, EXPLAIN_PROG_ICMP6, EXPLAIN_PROG_IPV6,
    EXPLAIN_PROG_MAIN, EXPLAIN_PROG_UDP4, EXPLAIN_PROG_UDP4_REPLY, EXPLAIN_PROG_UDP6, TAIL_SLOTS,
};

use crate::{
    family::{Ipv4, Ipv6},
    pipeline::run,
};

/// The explain programs by `lb_common::TAIL_*` slot, filled by `xdplb
/// explain` after loading; not pinned (the pinned `TAILS` is the data
/// plane's).
#[map]
pub static TAILS: ProgramArray = ProgramArray::with_max_entries(TAIL_SLOTS, 0);

#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    trace::program(EXPLAIN_PROG_MAIN);
    pipeline::entry(&ctx)
}

/// IPv4 UDP that may be to a VIP.
#[xdp]
pub fn xdplb_udp4(ctx: XdpContext) -> u32 {
    trace::program(EXPLAIN_PROG_UDP4);
    run::<Ipv4, true>(&ctx, || true)
}

/// IPv4 UDP to no VIP: a backend's replies.
#[xdp]
pub fn xdplb_udp4_reply(ctx: XdpContext) -> u32 {
    trace::program(EXPLAIN_PROG_UDP4_REPLY);
    run::<Ipv4, true>(&ctx, || false)
}

/// IPv6 TCP and ICMPv6 (see `lb_common::TAIL_IPV6` for why a program of
/// its own); it hands UDP on to `xdplb_udp6`.
#[xdp]
pub fn xdplb_ipv6(ctx: XdpContext) -> u32 {
    trace::program(EXPLAIN_PROG_IPV6);
    run::<Ipv6, false>(&ctx, || true)
}

/// IPv6 UDP.
#[xdp]
pub fn xdplb_udp6(ctx: XdpContext) -> u32 {
    trace::program(EXPLAIN_PROG_UDP6);
    run::<Ipv6, true>(&ctx, || true)
}

/// ICMPv6 errors about IPv6 flows.
#[xdp]
pub fn xdplb_icmp6(ctx: XdpContext) -> u32 {
    trace::program(EXPLAIN_PROG_ICMP6);
    icmp::program6(&ctx)
}

/// IPv4 fragments after a datagram's first.
#[xdp]
pub fn xdplb_frag4(ctx: XdpContext) -> u32 {
    trace::program(EXPLAIN_PROG_FRAG4);
    pipeline::run_fragment::<Ipv4>(&ctx)
}

/// IPv6 fragments after a datagram's first.
#[xdp]
pub fn xdplb_frag6(ctx: XdpContext) -> u32 {
    trace::program(EXPLAIN_PROG_FRAG6);
    pipeline::run_fragment::<Ipv6>(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
