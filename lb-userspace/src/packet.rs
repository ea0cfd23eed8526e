//! Ethernet frames built byte by byte (IPv4 TCP in [`TcpFrame`]; IPv4 UDP
//! and IPv6 TCP/UDP, with extension headers, in [`L4Frame`]; ICMP and
//! ICMPv6 messages), and checksums computed in full from scratch by summing
//! bytes. Pure: used by the data-plane tests (as the independent
//! recomputation the XDP program's incremental updates are checked
//! against), by the benchmark, and by the hostile-input scenario.
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4};

pub const ETH_HLEN: usize = 14;
pub const IP_HLEN: usize = 20;
pub const TCP_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
pub const ICMP_HLEN: usize = 8;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_DEST: u8 = 60;

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

/// An IPv6 extension header a sender puts between the IPv6 header and the
/// L4 header (RFC 8200 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext6 {
    /// Hop-by-hop options: one PadN option, 8 bytes in all.
    HopByHop,
    /// Destination options: one PadN option, 8 bytes in all.
    DestOpts,
    /// A routing header (experimental type 253, RFC 4727) carrying one
    /// address, with `segments_left`.
    Routing { segments_left: u8 },
    /// A fragment header: `offset` in 8-byte units, `more` the M flag.
    Fragment { offset: u16, more: bool },
}

impl Ext6 {
    pub fn number(self) -> u8 {
        match self {
            Ext6::HopByHop => NEXTHDR_HOP,
            Ext6::DestOpts => NEXTHDR_DEST,
            Ext6::Routing { .. } => NEXTHDR_ROUTING,
            Ext6::Fragment { .. } => NEXTHDR_FRAGMENT,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            // PadN (type 1) with 4 bytes of padding fills the header to 8.
            Ext6::HopByHop | Ext6::DestOpts => vec![next, 0, 1, 4, 0, 0, 0, 0],
            Ext6::Routing { segments_left } => {
                let mut h = vec![next, 2, 253, segments_left, 0, 0, 0, 0];
                h.extend_from_slice(&"2001:2:0:3::1".parse::<Ipv6Addr>().unwrap().octets());
                h
            }
            Ext6::Fragment { offset, more } => {
                let mut h = vec![next, 0];
                h.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                h.extend_from_slice(&0x1234_5678u32.to_be_bytes());
                h
            }
        }
    }
}

/// The L4 header of an [`L4Frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
    },
    Udp,
}

/// What an [`L4Frame`]'s L4 checksum field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// The correct checksum.
    Full,
    /// Only the folded, uncomplemented pseudo-header sum, as a sender with
    /// checksum offload (a veth) hands a frame over (CHECKSUM_PARTIAL).
    Partial,
    /// 0: "no checksum", allowed for IPv4 UDP only (RFC 768; RFC 8200 §8.1
    /// makes it invalid for IPv6).
    Zero,
}

/// A TCP segment or UDP datagram in IPv4 or IPv6 in an Ethernet frame.
/// [`TcpFrame`] remains the IPv4 TCP builder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Both of one family: it picks IPv4 or IPv6.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TTL or hop limit.
    pub ttl: u8,
    pub l4: L4,
    /// IPv6 only: extension headers before the L4 header, in order.
    pub ext: Vec<Ext6>,
    pub checksum: Checksum,
    pub payload: Vec<u8>,
}

impl L4Frame {
    pub fn tcp(src: SocketAddr, dst: SocketAddr, flags: u8) -> L4Frame {
        L4Frame::new(
            src,
            dst,
            L4::Tcp {
                flags,
                seq: 0x0102_0304,
                ack: 0,
                window: 64240,
            },
        )
    }

    pub fn udp(src: SocketAddr, dst: SocketAddr) -> L4Frame {
        L4Frame::new(src, dst, L4::Udp)
    }

    fn new(src: SocketAddr, dst: SocketAddr, l4: L4) -> L4Frame {
        assert_eq!(src.is_ipv6(), dst.is_ipv6(), "one family");
        L4Frame {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src,
            dst,
            ttl: 64,
            l4,
            ext: Vec::new(),
            checksum: Checksum::Full,
            payload: Vec::new(),
        }
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp => IPPROTO_UDP,
        }
    }

    /// The L4 header and payload with a zero checksum field.
    fn segment(&self) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&self.src.port().to_be_bytes());
        s.extend_from_slice(&self.dst.port().to_be_bytes());
        match self.l4 {
            L4::Tcp {
                flags,
                seq,
                ack,
                window,
            } => {
                s.extend_from_slice(&seq.to_be_bytes());
                s.extend_from_slice(&ack.to_be_bytes());
                s.push(5 << 4);
                s.push(flags);
                s.extend_from_slice(&window.to_be_bytes());
                s.extend_from_slice(&[0, 0, 0, 0]);
            }
            L4::Udp => {
                let len = (UDP_HLEN + self.payload.len()) as u16;
                s.extend_from_slice(&len.to_be_bytes());
                s.extend_from_slice(&[0, 0]);
            }
        }
        s.extend_from_slice(&self.payload);
        s
    }

    /// The frame's bytes (for IPv4, with a correct header checksum).
    pub fn build(&self) -> Vec<u8> {
        let proto = self.proto();
        let mut seg = self.segment();
        let (src, dst) = (ip_octets(self.src), ip_octets(self.dst));
        let check = match self.checksum {
            Checksum::Full => l4_checksum(&src, &dst, proto, &seg),
            Checksum::Partial => !finish(pseudo_sum(&src, &dst, proto, seg.len())),
            Checksum::Zero => 0,
        };
        let at = check_offset(proto);
        seg[at..at + 2].copy_from_slice(&check.to_be_bytes());
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if self.src.is_ipv6() {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ext = Vec::new();
            for (i, h) in self.ext.iter().enumerate() {
                let next = self.ext.get(i + 1).map_or(proto, |n| n.number());
                ext.extend_from_slice(&h.bytes(next));
            }
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&((ext.len() + seg.len()) as u16).to_be_bytes());
            f.push(self.ext.first().map_or(proto, |h| h.number()));
            f.push(self.ttl);
            f.extend_from_slice(&src);
            f.extend_from_slice(&dst);
            f.extend_from_slice(&ext);
        } else {
            assert!(self.ext.is_empty(), "extension headers are IPv6's");
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&((IP_HLEN + seg.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0x42, 0x42, 0x40, 0, self.ttl, proto, 0, 0]);
            f.extend_from_slice(&src);
            f.extend_from_slice(&dst);
            let c = ipv4_checksum(&f[ETH_HLEN..]);
            f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
        }
        f.extend_from_slice(&seg);
        f
    }
}

fn ip_octets(a: SocketAddr) -> Vec<u8> {
    match a {
        SocketAddr::V4(a) => a.ip().octets().to_vec(),
        SocketAddr::V6(a) => a.ip().octets().to_vec(),
    }
}

/// Where the checksum field of a TCP, UDP or ICMP(v6) header is.
fn check_offset(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        _ => 2,
    }
}

/// The unfolded sum of the pseudo-header for either family (RFC 793 /
/// RFC 8200 §8.1: for IPv6 a 32-bit length and the next header in the
/// last byte of 4; the sum of the words is the same either way).
fn pseudo_sum(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    if src.len() == 16 {
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
    }
    sum16(&p, 0)
}

/// The checksum to send in the TCP, UDP or ICMPv6 header of `segment`
/// (its checksum field counted as zero) between `src` and `dst` (4 or 16
/// bytes each); for UDP a computed 0 is sent as 0xffff (RFC 768). ICMPv4
/// has no pseudo-header: see [`icmp_checksum`].
pub fn l4_checksum(src: &[u8], dst: &[u8], proto: u8, segment: &[u8]) -> u16 {
    let mut seg = segment.to_vec();
    let at = check_offset(proto);
    seg[at] = 0;
    seg[at + 1] = 0;
    let c = finish(sum16(&seg, pseudo_sum(src, dst, proto, seg.len())));
    if proto == IPPROTO_UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// The L4 header of an Ethernet/IPv6 frame: its offset and protocol, past
/// any hop-by-hop, routing, destination options and fragment headers.
pub fn l4_offset6(frame: &[u8]) -> (usize, u8) {
    let mut next = frame[ETH_HLEN + 6];
    let mut off = ETH_HLEN + IPV6_HLEN;
    loop {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                next = frame[off];
                off += (frame[off + 1] as usize + 1) * 8;
            }
            NEXTHDR_FRAGMENT => {
                next = frame[off];
                off += 8;
            }
            _ => return (off, next),
        }
    }
}

/// The L4 (TCP, UDP or ICMPv6) checksum an Ethernet/IPv6 frame carries and
/// the one a full recomputation over its pseudo-header gives:
/// `(found, computed)`.
pub fn checksums6(frame: &[u8]) -> (u16, u16) {
    let ip = ETH_HLEN;
    let payload_len = u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]) as usize;
    let (off, proto) = l4_offset6(frame);
    let seg = &frame[off..ip + IPV6_HLEN + payload_len];
    let at = check_offset(proto);
    let found = u16::from_be_bytes([seg[at], seg[at + 1]]);
    let computed = l4_checksum(
        &frame[ip + 8..ip + 24],
        &frame[ip + 24..ip + 40],
        proto,
        seg,
    );
    (found, computed)
}

/// As [`checksums`], for an Ethernet/IPv4(no options)/UDP frame:
/// `(ip_found, ip_computed, udp_found, udp_computed)`.
pub fn checksums_udp4(frame: &[u8]) -> (u16, u16, u16, u16) {
    let ip = ETH_HLEN;
    let tot_len = u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]) as usize;
    let ip_found = u16::from_be_bytes([frame[ip + 10], frame[ip + 11]]);
    let ip_computed = ipv4_checksum(&frame[ip..ip + IP_HLEN]);
    let seg = &frame[ip + IP_HLEN..ip + tot_len];
    let udp_found = u16::from_be_bytes([seg[6], seg[7]]);
    let udp_computed = l4_checksum(
        &frame[ip + 12..ip + 16],
        &frame[ip + 16..ip + 20],
        IPPROTO_UDP,
        seg,
    );
    (ip_found, ip_computed, udp_found, udp_computed)
}

/// `frame` (Ethernet, then an IPv4 packet with a 20-byte header or an IPv6
/// packet without extension headers) cut into fragments of `chunk` bytes
/// of payload each (a multiple of 8; the last holds the rest), as a sender
/// fragments: identification `id`, IPv4 headers with DF clear and their
/// checksums recomputed, IPv6 fragments with a fragment header (RFC 8200
/// §4.5) after the fixed header.
pub fn fragments(frame: &[u8], id: u32, chunk: usize) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0, "fragment offsets are in 8-byte units");
    let v6 = frame[12..14] == [0x86, 0xdd];
    let hlen = if v6 { IPV6_HLEN } else { IP_HLEN };
    let (head, payload) = frame.split_at(ETH_HLEN + hlen);
    let pieces: Vec<&[u8]> = payload.chunks(chunk).collect();
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let offset = (i * chunk / 8) as u16;
            let more = i + 1 < pieces.len();
            let mut f = head.to_vec();
            if v6 {
                let next = f[ETH_HLEN + 6];
                f[ETH_HLEN + 6] = NEXTHDR_FRAGMENT;
                let len = (8 + piece.len()) as u16;
                f[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&len.to_be_bytes());
                f.extend_from_slice(&[next, 0]);
                f.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                f.extend_from_slice(&id.to_be_bytes());
            } else {
                let ip = ETH_HLEN;
                let len = (IP_HLEN + piece.len()) as u16;
                f[ip + 2..ip + 4].copy_from_slice(&len.to_be_bytes());
                f[ip + 4..ip + 6].copy_from_slice(&(id as u16).to_be_bytes());
                let frag = offset | if more { 0x2000 } else { 0 };
                f[ip + 6..ip + 8].copy_from_slice(&frag.to_be_bytes());
                f[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
                let c = ipv4_checksum(&f[ip..ip + IP_HLEN]);
                f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
            }
            f.extend_from_slice(piece);
            f
        })
        .collect()
}

/// An ICMPv6 message (an error quoting a packet, or any other type with
/// `rest` and `body` as its fields) in an Ethernet frame, hop limit 64,
/// with a correct checksum over the IPv6 pseudo-header (RFC 4443 §2.3).
#[allow(clippy::too_many_arguments)]
pub fn icmp6(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ty: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = l4_checksum(&src.octets(), &dst.octets(), IPPROTO_ICMPV6, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(m.len() as u16).to_be_bytes());
    f.extend_from_slice(&[IPPROTO_ICMPV6, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&m);
    f
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

    /// A correct checksum makes the pseudo-header and segment, checksum
    /// included, sum to 0xffff: a check of a different form from the
    /// computation.
    fn verifies(src: &[u8], dst: &[u8], proto: u8, seg: &[u8]) -> bool {
        finish(sum16(seg, pseudo_sum(src, dst, proto, seg.len()))) == 0
    }

    #[test]
    fn built_ipv6_and_udp_frames_verify() {
        let c6: SocketAddr = "[2001:2::2]:40000".parse().unwrap();
        let v6: SocketAddr = "[2001:2:0:2::10]:80".parse().unwrap();
        let c4: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let v4: SocketAddr = "198.18.2.10:53".parse().unwrap();
        let mut frames = vec![L4Frame::tcp(c6, v6, TCP_SYN), L4Frame::udp(c6, v6)];
        let mut ext = L4Frame::tcp(c6, v6, TCP_SYN);
        ext.ext = vec![Ext6::HopByHop, Ext6::DestOpts];
        frames.push(ext);
        let mut u4 = L4Frame::udp(c4, v4);
        u4.payload = b"odd".to_vec();
        frames.push(u4);
        for f in frames {
            let bytes = f.build();
            if f.src.is_ipv6() {
                let (found, computed) = checksums6(&bytes);
                assert_eq!(found, computed);
                let (off, proto) = l4_offset6(&bytes);
                assert_eq!(off, ETH_HLEN + IPV6_HLEN + 8 * f.ext.len());
                assert!(verifies(
                    &bytes[22..38],
                    &bytes[38..54],
                    proto,
                    &bytes[off..]
                ));
            } else {
                let (a, b, c, d) = checksums_udp4(&bytes);
                assert_eq!((a, c), (b, d));
                assert!(verifies(&bytes[26..30], &bytes[30..34], 17, &bytes[34..]));
            }
        }
    }

    #[test]
    fn a_partial_checksum_is_the_pseudo_header_sum() {
        let mut f = L4Frame::udp(
            "[2001:2::2]:40000".parse().unwrap(),
            "[2001:2:0:2::10]:53".parse().unwrap(),
        );
        f.payload = vec![1, 2, 3, 4];
        f.checksum = Checksum::Partial;
        let bytes = f.build();
        // Completing a partial checksum: the segment's sum (the field holds
        // the pseudo-header sum) complemented.
        let (off, _) = l4_offset6(&bytes);
        let completed = finish(sum16(&bytes[off..], 0));
        f.checksum = Checksum::Full;
        assert_eq!(checksums6(&f.build()).0, completed);
    }

    #[test]
    fn icmp6_messages_verify() {
        let m = icmp6(
            [2; 6],
            [3; 6],
            "2001:2::2".parse().unwrap(),
            "ff02::1:ff00:1".parse().unwrap(),
            135,
            0,
            [0; 4],
            &"2001:2::1".parse::<Ipv6Addr>().unwrap().octets(),
        );
        let (found, computed) = checksums6(&m);
        assert_eq!(found, computed);
        assert!(verifies(&m[22..38], &m[38..54], IPPROTO_ICMPV6, &m[54..]));
    }
}
