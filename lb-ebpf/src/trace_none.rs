//! The data plane's build of `trace`: state is written, nothing is traced.
//! `explain.rs` builds the same modules with `trace_explain.rs` instead.
//! Every call below is on a path guarded by [`WRITES`] or does nothing, so
//! the data plane's programs compile exactly as without this module.
use lb_common::GlobalCounter;

/// The program writes state: flow entries, counters, caches.
pub const WRITES: bool = true;

#[inline(always)]
pub fn counter(_counter: GlobalCounter) {}
#[inline(always)]
pub fn counted(_vip_index: u32, _backend: u32, _new_flow: bool) {}
#[inline(always)]
pub fn reply(_backend: u32) {}
#[inline(always)]
pub fn place(_buckets: (u32, u32), _hit: u32, _victim: u32) {}
#[inline(always)]
pub fn entry(_backend_ref: u32, _flags: u16) {}
#[inline(always)]
pub fn pinned(_outcome: u32) {}
#[inline(always)]
pub fn insert_way(_way: u32) {}
#[inline(always)]
pub fn ring(_index: u32, _backend_ref: u32) {}
