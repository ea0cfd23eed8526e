//! Ethernet/IPv4/TCP frames built byte by byte, and checksums computed in
//! full from scratch. Pure: used by the data-plane tests (as the independent
//! recomputation the XDP program's incremental updates are checked
//! against), by the benchmark, and by the hostile-input scenario.
use std::net::SocketAddrV4;

pub const ETH_HLEN: usize = 14;
pub const IP_HLEN: usize = 20;
pub const TCP_HLEN: usize = 20;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// A TCP segment in an IPv4 packet in an Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpFrame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ttl: u8,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub ip_id: u16,
    pub window: u16,
    /// IPv4 "don't fragment".
    pub df: bool,
    pub payload: Vec<u8>,
}

impl TcpFrame {
    pub fn new(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> TcpFrame {
        TcpFrame {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src,
            dst,
            ttl: 64,
            flags,
            seq: 0x0102_0304,
            ack: 0,
            ip_id: 0x4242,
            window: 64240,
            df: true,
            payload: Vec::new(),
        }
    }

    /// The frame as a sender with checksum offload hands it over
    /// (CHECKSUM_PARTIAL): the TCP checksum field holds only the folded,
    /// uncomplemented pseudo-header sum.
    pub fn build_partial(&self) -> Vec<u8> {
        let mut f = self.build();
        let seg_len = (f.len() - ETH_HLEN - IP_HLEN) as u16;
        let (src, dst) = addrs(&f);
        let p = pseudo_header_sum(src, dst, 6, seg_len);
        f[ETH_HLEN + IP_HLEN + 16..ETH_HLEN + IP_HLEN + 18].copy_from_slice(&p.to_be_bytes());
        f
    }

    /// The frame's bytes, with correct IPv4 and TCP checksums.
    pub fn build(&self) -> Vec<u8> {
        let tot_len = (IP_HLEN + TCP_HLEN + self.payload.len()) as u16;
        let mut f = Vec::with_capacity(ETH_HLEN + tot_len as usize);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        // IPv4 header, no options.
        f.push(0x45);
        f.push(0);
        f.extend_from_slice(&tot_len.to_be_bytes());
        f.extend_from_slice(&self.ip_id.to_be_bytes());
        f.extend_from_slice(&(if self.df { 0x4000u16 } else { 0 }).to_be_bytes());
        f.push(self.ttl);
        f.push(6);
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.src.ip().octets());
        f.extend_from_slice(&self.dst.ip().octets());
        // TCP header, no options.
        f.extend_from_slice(&self.src.port().to_be_bytes());
        f.extend_from_slice(&self.dst.port().to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(&self.ack.to_be_bytes());
        f.push(5 << 4);
        f.push(self.flags);
        f.extend_from_slice(&self.window.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(&self.payload);
        fix_checksums(&mut f);
        f
    }
}

/// One's-complement sum of 16-bit big-endian words (odd byte padded).
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

fn finish(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The IPv4 header checksum of `ip` (the header, checksum field included
/// as found: a correct header sums to 0).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut h = header.to_vec();
    h[10] = 0;
    h[11] = 0;
    finish(sum16(&h, 0))
}

/// The folded (not complemented) sum of an IPv4 pseudo-header.
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u16 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&len.to_be_bytes());
    !finish(sum16(&pseudo, 0))
}

/// An IPv4 ICMP error in an Ethernet frame quoting `quoted` (an IPv4
/// packet, cut as the sender likes), with correct checksums.
#[allow(clippy::too_many_arguments)]
pub fn icmp_error(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ty: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let tot_len = (IP_HLEN + 8 + quoted.len()) as u16;
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&tot_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[ty, code, 0, 0]);
    f.extend_from_slice(&rest);
    f.extend_from_slice(quoted);
    let c = ipv4_checksum(&f[ETH_HLEN..ETH_HLEN + IP_HLEN]);
    f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
    let c = icmp_checksum(&f[ETH_HLEN + IP_HLEN..]);
    f[ETH_HLEN + IP_HLEN + 2..ETH_HLEN + IP_HLEN + 4].copy_from_slice(&c.to_be_bytes());
    f
}

/// The ICMP checksum of a message (checksum field zeroed).
pub fn icmp_checksum(message: &[u8]) -> u16 {
    let mut m = message.to_vec();
    m[2] = 0;
    m[3] = 0;
    finish(sum16(&m, 0))
}

/// The TCP checksum over pseudo-header and segment (checksum field zeroed).
pub fn tcp_checksum(src: [u8; 4], dst: [u8; 4], segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    let mut seg = segment.to_vec();
    seg[16] = 0;
    seg[17] = 0;
    finish(sum16(&seg, sum16(&pseudo, 0)))
}

/// Recomputes both checksums of an Ethernet/IPv4(no options)/TCP frame in
/// place.
pub fn fix_checksums(frame: &mut [u8]) {
    let ip = ETH_HLEN;
    let ihl = ((frame[ip] & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]) as usize;
    let c = ipv4_checksum(&frame[ip..ip + ihl]);
    frame[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    let (src, dst) = addrs(frame);
    let seg = &frame[ip + ihl..ip + tot_len];
    let c = tcp_checksum(src, dst, seg);
    frame[ip + ihl + 16..ip + ihl + 18].copy_from_slice(&c.to_be_bytes());
}

fn addrs(frame: &[u8]) -> ([u8; 4], [u8; 4]) {
    let ip = ETH_HLEN;
    let mut src = [0; 4];
    let mut dst = [0; 4];
    src.copy_from_slice(&frame[ip + 12..ip + 16]);
    dst.copy_from_slice(&frame[ip + 16..ip + 20]);
    (src, dst)
}

/// The checksums a frame carries and the ones a full recomputation gives:
/// `(ip_found, ip_computed, tcp_found, tcp_computed)`.
pub fn checksums(frame: &[u8]) -> (u16, u16, u16, u16) {
    let ip = ETH_HLEN;
    let ihl = ((frame[ip] & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]) as usize;
    let ip_found = u16::from_be_bytes([frame[ip + 10], frame[ip + 11]]);
    let ip_computed = ipv4_checksum(&frame[ip..ip + ihl]);
    let (src, dst) = addrs(frame);
    let seg = &frame[ip + ihl..ip + tot_len];
    let tcp_found = u16::from_be_bytes([seg[16], seg[17]]);
    let tcp_computed = tcp_checksum(src, dst, seg);
    (ip_found, ip_computed, tcp_found, tcp_computed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frame_checksums_verify() {
        let mut f = TcpFrame::new(
            "198.18.0.2:40000".parse().unwrap(),
            "198.18.2.10:80".parse().unwrap(),
            TCP_SYN,
        );
        f.payload = b"odd".to_vec();
        let bytes = f.build();
        let (a, b, c, d) = checksums(&bytes);
        assert_eq!(a, b);
        assert_eq!(c, d);
        // A correct IPv4 header sums to 0xffff, i.e. its checksum over
        // itself (checksum included) is 0.
        assert_eq!(finish(sum16(&bytes[14..34], 0)), 0);
    }

    #[test]
    fn known_ipv4_checksum() {
        // Example header from RFC 1071 discussions / Wikipedia: 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&h), 0xb861);
    }
}
