//! Benchmark harness for BPF_PROG_TEST_RUN, never attached to an interface.
//!
//! With `repeat`, the kernel runs a program again and again on the buffer
//! it already rewrote, so a rewriting program would measure its own output
//! from the second iteration on. `bench_restore` copies the original frame
//! back first (optionally giving each iteration another source address and
//! port: a new flow each, or one of N flows already in the table in turn)
//! in whole u64 words, then tail-calls the program under test in
//! `TARGET[0]`. The floor, `bench_floor` (swap MACs, XDP_TX), is measured
//! through the same wrapper, so the wrapper's cost cancels out of
//! "net of the floor".
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};

use lb_common::bench::{BenchFrame, BENCH_FRAME_MAX};

#[map]
static FRAME: PerCpuArray<BenchFrame> = PerCpuArray::with_max_entries(1, 0);

/// The varied source's sequence. Shared, not per CPU: the benchmark's
/// runs land on whichever CPU the process is on, and per-CPU sequences
/// replayed each other's 4-tuples (a new flow then met its twin's entry).
#[map]
static SEQ: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

const SRC_ADDR_LOW: usize = 14 + 14; // last two octets of the IPv4 source
const SRC_PORT: usize = 14 + 20;

#[xdp]
pub fn bench_restore(ctx: XdpContext) -> u32 {
    let Some(frame) = FRAME.get_ptr(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: the map value is valid for the program's run.
    let frame = unsafe { &*frame };
    let len = frame.len as usize;
    if len > BENCH_FRAME_MAX {
        return xdp_action::XDP_ABORTED;
    }
    // A program that grew the frame at its head (IPIP) left it grown for
    // the next iteration: give the headroom back first.
    let have = ctx.data_end() - ctx.data();
    if have > len {
        // SAFETY: valid context; the helper checks the delta.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, (have - len) as i32) } != 0 {
            return xdp_action::XDP_ABORTED;
        }
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + len != end {
        return xdp_action::XDP_ABORTED;
    }
    // Whole words. verifier: a bounded loop, every store bounds-checked
    // against the frame's end.
    let words = len / 8;
    let src = frame.bytes.as_ptr() as *const u64;
    for i in 0..BENCH_FRAME_MAX / 8 {
        if i >= words {
            break;
        }
        let dst = start + i * 8;
        if dst + 8 > end {
            return xdp_action::XDP_ABORTED;
        }
        // SAFETY: `dst` is in bounds (checked); `src + i` is within the
        // map value (i < BENCH_FRAME_MAX / 8).
        unsafe { *(dst as *mut u64) = core::ptr::read_unaligned(src.add(i)) };
    }
    if len % 8 != 0 && len >= 8 {
        // The last 1–7 bytes: one more word, ending at the frame's end
        // (it overlaps the previous one). verifier: a byte loop at a
        // variable offset compiles to `dst >= end`, which proves nothing.
        // verifier: opaque to LLVM, which would otherwise prove the bounds
        // check below redundant (start + len == end) and drop it; masked so
        // the verifier sees a bounded offset.
        let at = core::hint::black_box(len - 8) & 0x7ff;
        let dst = start + at;
        if dst + 8 > end || at + 8 > BENCH_FRAME_MAX {
            return xdp_action::XDP_ABORTED;
        }
        // SAFETY: both ranges checked just above.
        unsafe {
            *(dst as *mut u64) =
                core::ptr::read_unaligned(frame.bytes.as_ptr().add(at) as *const u64)
        };
    }
    let period = frame.vary_period;
    if period != 0 {
        if start + SRC_PORT + 2 > end {
            return xdp_action::XDP_ABORTED;
        }
        if let Some(seq) = SEQ.get_ptr_mut(0) {
            // SAFETY: in bounds (checked above); the map value is valid.
            unsafe {
                // 1..=period, then 1 again: the same `period` flows over
                // and over (user space resets SEQ to 0 to start a cycle).
                *seq = if u64::from(*seq) >= period {
                    1
                } else {
                    *seq + 1
                };
                let s = *seq;
                *((start + SRC_PORT) as *mut u16) = (s as u16).to_be();
                // High bit set: never the unvaried 198.18.0.x source, whose
                // flow the benchmark seeds for the established path.
                *((start + SRC_ADDR_LOW) as *mut u16) = (((s >> 16) as u16) | 0x8000).to_be();
            }
        }
    }
    // SAFETY: a tail call with a valid context; on failure we fall through.
    unsafe { TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

#[xdp]
pub fn bench_floor(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 12 > end {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: bounds checked above.
    unsafe {
        let eth = &mut *(start as *mut [[u8; 6]; 2]);
        eth.swap(0, 1);
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
