//! xdplb's XDP program: a layer-4 NAT load balancer.
//!
//! Layout, one concern per module (as Katran's `lib/bpf/`):
//! - `consts`: protocol constants, pre-swapped to network order.
//! - `maps`: every map, sized from `lb_common::limits`.
//! - `family`: the `Family` trait — what differs between IPv4 and IPv6
//!   (header, address, key; lookups, checksums, headers we write) — and
//!   its two implementations. Everything below is written once over it
//!   and monomorphised into each program.
//! - `parse`: bounds-checked access; each family's header checks.
//! - `pipeline`: parse, then to the backend or back from it.
//! - `host`: this host's MACs (what is ours to touch).
//! - `select`: flow table, then the VIP's Maglev ring.
//! - `nat`, `csum`: the rewrites, checksum updates and completion.
//! - `icmp`: ICMP errors translated for the flow they belong to.
//! - `answer`: packets the program answers itself (RST, ICMP errors).
//! - `direct`: direct server return, by MAC (`dsr`) or IPIP (`tunnel`).
//! - `forward`: next hop (cached FIB), MTU, MACs, TTL, redirect.
//! - `verdict`, `stats`: per-CPU counters; one verdict per packet.
//!
//! The programs: `xdplb` (attached; IPv4 TCP and ICMP) passes IPv4 transit
//! traffic at once, hands IPv4 UDP to `xdplb_udp4` (to VIPs) or
//! `xdplb_udp4_reply` (from backends) and IPv6 to `xdplb_ipv6` (TCP),
//! which hands UDP to `xdplb_udp6` and ICMPv6 errors to `xdplb_icmp6`; a
//! datagram's later fragments go to `xdplb_frag4` / `xdplb_frag6` — each
//! verified on its own budget and stack (see `lb_common::TAIL_IPV6`).
//!
//! Every packet is counted in exactly one verdict counter (user space sums
//! them into `Rx`, which saves a counter update per packet).
//!
//! `explain.rs` builds these same modules a second time, as the object
//! `xdplb explain` runs: `trace` is the one module the two builds differ in
//! (here `trace_none.rs`: writes on, nothing traced).
#![no_std]
#![no_main]
// `atomic_cxchg`: the bpfel target has no 64-bit compare-and-swap in
// `core::sync::atomic` (it lacks `target_has_atomic = "64"`), yet the BPF
// ISA has one (BPF_CMPXCHG, kernel 5.12+), which LLVM emits for it.
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
#[path = "trace_none.rs"]
mod trace;
mod verdict;

use aya_ebpf::{
    macros::{map, xdp},
    maps::ProgramArray,
    programs::XdpContext,
};
use lb_common::TAIL_SLOTS;

use crate::{
    family::{Ipv4, Ipv6},
    pipeline::run,
};

/// The IPv6 and IPv4 UDP programs, by `lb_common::TAIL_*` slot (see
/// there). Filled by user space after loading.
#[map]
pub static TAILS: ProgramArray = ProgramArray::pinned(TAIL_SLOTS, 0);

#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    pipeline::entry(&ctx)
}

/// IPv4 UDP that may be to a VIP (as the prefilter says).
#[xdp]
pub fn xdplb_udp4(ctx: XdpContext) -> u32 {
    run::<Ipv4, true>(&ctx, || true)
}

/// IPv4 UDP to no VIP (as the prefilter proved): a backend's replies.
#[xdp]
pub fn xdplb_udp4_reply(ctx: XdpContext) -> u32 {
    run::<Ipv4, true>(&ctx, || false)
}

/// IPv6 TCP and ICMPv6 (see `lb_common::TAIL_IPV6` for why a program of
/// its own); it hands UDP on to `xdplb_udp6`.
#[xdp]
pub fn xdplb_ipv6(ctx: XdpContext) -> u32 {
    run::<Ipv6, false>(&ctx, || true)
}

/// IPv6 UDP.
#[xdp]
pub fn xdplb_udp6(ctx: XdpContext) -> u32 {
    run::<Ipv6, true>(&ctx, || true)
}

/// ICMPv6 errors about IPv6 flows.
#[xdp]
pub fn xdplb_icmp6(ctx: XdpContext) -> u32 {
    icmp::program6(&ctx)
}

/// IPv4 fragments after a datagram's first.
#[xdp]
pub fn xdplb_frag4(ctx: XdpContext) -> u32 {
    pipeline::run_fragment::<Ipv4>(&ctx)
}

/// IPv6 fragments after a datagram's first.
#[xdp]
pub fn xdplb_frag6(ctx: XdpContext) -> u32 {
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
