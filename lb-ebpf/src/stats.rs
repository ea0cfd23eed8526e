//! Counters: per-CPU, so the hot path never contends; user space sums CPUs.
//! The explain object moves none: it records them (`trace`).
use lb_common::{GlobalCounter, EXPLAIN_NONE};

use crate::{
    maps::{BACKEND_STATS, GLOBAL_STATS, VIP_STATS},
    trace,
};

#[inline(always)]
pub fn count(counter: GlobalCounter) {
    if !trace::WRITES {
        return trace::counter(counter);
    }
    if let Some(c) = GLOBAL_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot only this CPU writes while we run.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_vip(vip_index: u32, bytes: u64, new_flow: bool) {
    if !trace::WRITES {
        return trace::counted(vip_index, EXPLAIN_NONE, new_flow);
    }
    if let Some(c) = VIP_STATS.get_ptr_mut(vip_index) {
        // SAFETY: per-CPU slot, see `count`.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).new_flows += new_flow as u64;
        }
    }
}

#[inline(always)]
pub fn count_backend(backend: u32, bytes: u64, new_flow: bool) {
    if !trace::WRITES {
        return trace::counted(EXPLAIN_NONE, backend, new_flow);
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: per-CPU slot, see `count`.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).new_flows += new_flow as u64;
        }
    }
}

#[inline(always)]
pub fn count_reply(backend: u32, bytes: u64) {
    if !trace::WRITES {
        return trace::reply(backend);
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: per-CPU slot, see `count`.
        unsafe {
            (*c).reply_packets += 1;
            (*c).reply_bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_rejected(vip_index: u32) {
    if !trace::WRITES {
        return trace::counted(vip_index, EXPLAIN_NONE, false);
    }
    if let Some(c) = VIP_STATS.get_ptr_mut(vip_index) {
        // SAFETY: per-CPU slot, see `count`.
        unsafe { (*c).rejected += 1 };
    }
}
