//! Incremental Internet checksum updates (RFC 1624, eqn. 3:
//! HC' = ~(~HC + ~m + m')). The one's-complement sum does not care about
//! byte order, so raw (network-order) loads go in and come out unchanged.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
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
