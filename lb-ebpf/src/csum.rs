//! Internet checksums: incremental updates (RFC 1624, eqn. 3:
//! HC' = ~(~HC + ~m + m')), pseudo-header sums, and full sums over a
//! segment for frames whose checksum was left partial by the sender.
//!
//! The one's-complement sum does not care about byte order, so raw
//! (network-order) loads go in and come out unchanged: every word here is
//! a little-endian load of big-endian data, consistently.
use aya_ebpf::{helpers::bpf_csum_diff, programs::XdpContext};

#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum after a 16-bit word of the covered data changed `from` → `to`.
#[inline(always)]
pub fn replace16(check: u16, from: u16, to: u16) -> u16 {
    !fold(!check as u32 + !from as u32 + to as u32)
}

/// Checksum after a 32-bit field of the covered data changed `from` → `to`.
#[inline(always)]
pub fn replace32(check: u16, from: u32, to: u32) -> u16 {
    let nf = !from;
    !fold(!check as u32 + (nf & 0xffff) + (nf >> 16) + (to & 0xffff) + (to >> 16))
}

/// The IPv4 pseudo-header's sum, folded but not complemented: what a
/// sender using checksum offload (CHECKSUM_PARTIAL) leaves in the L4
/// checksum field for the device to complete.
#[inline(always)]
pub fn pseudo_sum(saddr: u32, daddr: u32, proto: u8, l4_len: u16) -> u16 {
    fold(
        (saddr & 0xffff)
            + (saddr >> 16)
            + (daddr & 0xffff)
            + (daddr >> 16)
            + ((proto as u32) << 8)
            + (l4_len.to_be() as u32),
    )
}

/// Sum of `n` bytes at `off`, `n` a constant multiple of 4, added to `sum`.
macro_rules! sum_chunk {
    ($ctx:expr, $off:expr, $n:expr, $sum:expr) => {{
        let p = $ctx.data() + $off;
        if p + $n > $ctx.data_end() {
            return None;
        }
        // SAFETY: `$n` bytes at `p` are inside the frame (checked above);
        // bpf_csum_diff only reads them.
        let s = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, $n, $sum) };
        if s < 0 {
            return None;
        }
        s as u32
    }};
}

/// Largest L4 segment summed: single-buffer XDP frames are at most a page.
const MAX_SEGMENT: usize = 8 * 512;

/// One's-complement sum (unfolded) of the `len` bytes at `off`, as found.
/// `None` if they are not all in the frame or `len` exceeds a page.
///
/// verifier: bpf_csum_diff takes at most 512 bytes, a multiple of 4, and
/// a constant size proven in bounds; so whole 512-byte chunks in a bounded
/// loop, then the rest in constant power-of-two pieces, then 0–3 bytes by
/// hand. Every path adds constants to `off`, so each access is provable.
#[inline(always)]
pub fn sum_bytes(ctx: &XdpContext, off: usize, len: usize) -> Option<u32> {
    let sum = sum_bytes_outlined(ctx, off, len);
    if sum > u32::MAX as u64 {
        None
    } else {
        Some(sum as u32)
    }
}

/// [`sum_bytes`] as a BPF function of its own, `u64::MAX` for `None`:
/// the verifier then walks its chunk loop once per caller state instead of
/// once per path through an inlined copy, which kept the whole program
/// under its one-million-instruction budget; partial frames are the only
/// callers, and they pay one call.
#[inline(never)]
fn sum_bytes_outlined(ctx: &XdpContext, off: usize, len: usize) -> u64 {
    match sum_bytes_inline(ctx, off, len) {
        Some(s) => s as u64,
        None => u64::MAX,
    }
}

#[inline(always)]
fn sum_bytes_inline(ctx: &XdpContext, off: usize, len: usize) -> Option<u32> {
    if len > MAX_SEGMENT {
        return None;
    }
    let mut sum = 0u32;
    let mut off = off;
    let mut left = len;
    for _ in 0..(MAX_SEGMENT / 512) {
        if left < 512 {
            break;
        }
        sum = sum_chunk!(ctx, off, 512, sum);
        off += 512;
        left -= 512;
    }
    macro_rules! piece {
        ($n:expr) => {
            if left >= $n {
                sum = sum_chunk!(ctx, off, $n, sum);
                off += $n;
                left -= $n;
            }
        };
    }
    piece!(256);
    piece!(128);
    piece!(64);
    piece!(32);
    piece!(16);
    piece!(8);
    piece!(4);
    if left >= 2 {
        let p = ctx.data() + off;
        if p + 2 > ctx.data_end() {
            return None;
        }
        // SAFETY: bounds checked above.
        sum = add(sum, unsafe { core::ptr::read_unaligned(p as *const u16) }
            as u32);
        off += 2;
        left -= 2;
    }
    if left == 1 {
        let p = ctx.data() + off;
        // verifier: the bound through an opaque copy. Seen as `p + 1 >
        // end`, LLVM may test `p >= end` instead (it did once the pipeline
        // became generic), which the verifier does not take as a bound
        // for the byte at `p`.
        if core::hint::black_box(p + 1) > ctx.data_end() {
            return None;
        }
        // A lone last byte is the high-order byte of a zero-padded word;
        // in a little-endian load of network data that is the low byte.
        // SAFETY: bounds checked above.
        sum = add(sum, unsafe { *(p as *const u8) } as u32);
    }
    Some(sum)
}

/// One's-complement addition of two 32-bit partial sums (end-around carry):
/// bpf_csum_diff's sums use all 32 bits, so a plain add could overflow.
#[inline(always)]
pub fn add(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s + carry as u32
}

/// The checksum of a 20-byte header (IPv4) or any `N`-word region we
/// wrote ourselves, summed by hand: small, fixed, verifier-trivial.
#[inline(always)]
pub fn sum_words<const N: usize>(words: &[u16; N]) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i < N {
        s += words[i] as u32;
        i += 1;
    }
    s
}
