//! Frames straight onto a lab wire: an `AF_PACKET` socket (so nothing in
//! the sender's kernel tidies, validates or rate-limits them) and a flood
//! generator of TCP segments from many spoofed 4-tuples.
//!
//! Create a [`RawSocket`] inside [`Lab::run_in`](crate::Lab::run_in): it
//! belongs to the network namespace of the thread that opened it.
//! Everything sent here stays on the lab's veths; the spoofed sources are
//! lab addresses (198.18.0.0/24), so replies to them can only go back
//! towards the lab's gateway.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};

/// Ethernet + IPv4 + TCP header, no options, no payload.
pub const TCP_FRAME_LEN: usize = 14 + 20 + 20;
/// Frames handed to the kernel per `sendmmsg` call.
const BATCH: usize = 64;
/// Lowest source port a flood uses (below are the well-known ports).
const FIRST_PORT: u32 = 1024;
/// Source ports per address (1024..=65535).
const PORTS: u32 = 65536 - FIRST_PORT;

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let v: Vec<u8> = s
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()?;
    v.try_into().map_err(|_| anyhow::anyhow!("bad mac {s:?}"))
}

/// A raw `AF_PACKET` socket bound to one interface, sending whole frames
/// (the caller writes the Ethernet header). Closed on drop.
pub struct RawSocket {
    fd: OwnedFd,
}

impl RawSocket {
    /// Opens a socket on `ifname` of the calling thread's namespace.
    /// Frames skip the qdisc (`PACKET_QDISC_BYPASS`), as a packet
    /// generator's would.
    pub fn open(ifname: &str) -> Result<RawSocket> {
        // SAFETY: plain socket/setsockopt/bind calls with valid arguments;
        // the fd is owned from the moment it exists.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            );
            ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let name = std::ffi::CString::new(ifname)?;
            let idx = libc::if_nametoindex(name.as_ptr());
            ensure!(idx != 0, "no interface {ifname}");
            let one: libc::c_int = 1;
            let rc = libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            ensure!(
                rc == 0,
                "PACKET_QDISC_BYPASS: {}",
                std::io::Error::last_os_error()
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = idx as i32;
            // Protocol 0: send only, so the socket queues no received
            // frames (a flood would fill its buffer for nothing).
            sll.sll_protocol = 0;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            ensure!(rc == 0, "bind: {}", std::io::Error::last_os_error());
            Ok(RawSocket { fd })
        }
    }

    /// Sends one frame; fails unless the kernel took all of it.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        ensure!(
            n == frame.len() as isize,
            "send of {} bytes: {}",
            frame.len(),
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Sends `frames` with one `sendmmsg`; how many the kernel took (a
    /// full device queue takes fewer, an error none).
    fn send_batch(&self, frames: &mut [[u8; TCP_FRAME_LEN]]) -> usize {
        let mut iov: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let n = frames.len().min(BATCH);
        for i in 0..n {
            iov[i].iov_base = frames[i].as_mut_ptr().cast();
            iov[i].iov_len = TCP_FRAME_LEN;
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: msgs[..n] point at live iovecs and frames.
        let rc = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        rc.max(0) as usize
    }
}

/// Writes an Ethernet + IPv4 + TCP segment (no options, no payload) with
/// correct checksums into `f`.
#[allow(clippy::too_many_arguments)]
pub fn write_tcp_frame(
    f: &mut [u8; TCP_FRAME_LEN],
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
    seq: u32,
    ack: u32,
) {
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = !fold(sum16(ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[16..20].copy_from_slice(&[0, 0, 0, 0]);
    let pseudo = sum16(&src.ip().octets()) + sum16(&dst.ip().octets()) + 6 + 20;
    let c = !fold(pseudo + sum16(tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
}

fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// A flood: TCP segments with flags `flags` to `dst`, each from a distinct
/// 4-tuple (source address in `sources`, source port in 1024..=65535),
/// in a pseudo-random order, until `duration` passes or `max_frames` are
/// sent, whichever comes first.
#[derive(Clone, Debug)]
pub struct FloodSpec {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub dst: SocketAddrV4,
    /// First source address and how many consecutive addresses to use.
    pub sources: (Ipv4Addr, u32),
    pub flags: u8,
    pub duration: Duration,
    pub max_frames: u64,
    /// Frames per second this sender keeps to (`None`: as fast as the
    /// socket takes them).
    pub max_rate: Option<u64>,
    /// Picks the order of the 4-tuples (and sequence numbers).
    pub seed: u64,
}

/// What a flood did.
#[derive(Clone, Copy, Debug)]
pub struct FloodReport {
    /// Frames the kernel accepted from the socket.
    pub sent: u64,
    /// Frames offered (accepted or refused by a full queue).
    pub offered: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    /// Frames accepted per second.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// xorshift64*: a tiny, seedable generator (no crate, no global state).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Sends the flood `spec` on `sock`. Every frame has its own 4-tuple as
/// long as fewer than `sources.1 × 64,512` frames are sent: the i-th frame
/// uses tuple `(start + i × stride) mod N` with `stride` coprime to `N`.
pub fn flood(sock: &RawSocket, spec: &FloodSpec) -> Result<FloodReport> {
    ensure!(
        spec.sources.1 > 0,
        "a flood needs at least one source address"
    );
    let n = u64::from(spec.sources.1) * u64::from(PORTS);
    let mut rng = Rng(spec.seed | 1);
    let start = rng.next() % n;
    let mut stride = (rng.next() % n) | 1;
    while gcd(stride, n) != 1 {
        stride += 2;
    }
    let base = u32::from(spec.sources.0);
    let mut frames = [[0u8; TCP_FRAME_LEN]; BATCH];
    let mut report = FloodReport {
        sent: 0,
        offered: 0,
        elapsed: Duration::ZERO,
    };
    let t0 = Instant::now();
    let mut i: u64 = 0;
    // Bounded by the deadline (checked every batch) and by max_frames
    // *sent*: on an idle machine the socket refuses frames whenever its
    // queue is full, and counting those would end the flood early.
    while report.sent < spec.max_frames && t0.elapsed() < spec.duration {
        let k = (spec.max_frames - report.sent).min(BATCH as u64) as usize;
        for f in frames.iter_mut().take(k) {
            let t = (start + i % n * stride) % n;
            i += 1;
            let addr = Ipv4Addr::from(base + (t / u64::from(PORTS)) as u32);
            let port = (FIRST_PORT + (t % u64::from(PORTS)) as u32) as u16;
            let r = rng.next();
            let ack = if spec.flags & 0x10 != 0 {
                (r >> 32) as u32
            } else {
                0
            };
            write_tcp_frame(
                f,
                spec.dst_mac,
                spec.src_mac,
                SocketAddrV4::new(addr, port),
                spec.dst,
                spec.flags,
                r as u32,
                ack,
            );
        }
        report.sent += sock.send_batch(&mut frames[..k]) as u64;
        report.offered += k as u64;
        if let Some(rate) = spec.max_rate.filter(|r| *r > 0) {
            // Ahead of the pace: wait until the sent frames are due.
            let due = Duration::from_secs_f64(report.sent as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(ahead.min(spec.duration));
            }
        }
    }
    report.elapsed = t0.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_checksums_verify() {
        let mut f = [0u8; TCP_FRAME_LEN];
        let src = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 200), 40000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 10), 80);
        write_tcp_frame(&mut f, [2; 6], [4; 6], src, dst, 0x02, 12345, 0);
        // A header with its checksum in place sums to 0xffff.
        assert_eq!(fold(sum16(&f[14..34])), 0xffff);
        let pseudo = sum16(&src.ip().octets()) + sum16(&dst.ip().octets()) + 6 + 20;
        assert_eq!(fold(pseudo + sum16(&f[34..54])), 0xffff);
        assert_eq!(
            parse_mac("02:04:06:08:0a:ff").unwrap(),
            [2, 4, 6, 8, 10, 255]
        );
    }

    #[test]
    fn flood_tuples_are_distinct() {
        // The same walk as `flood`, on a small space: a full period visits
        // every tuple once.
        let n = 3 * u64::from(PORTS);
        let mut stride = 63; // shares factors with n: the loop must fix it
        while gcd(stride, n) != 1 {
            stride += 2;
        }
        let mut seen = std::collections::HashSet::new();
        for i in 0..n {
            assert!(seen.insert((5 + i * stride) % n));
        }
    }
}
