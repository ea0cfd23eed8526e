//! A small UDP client for tests: send a datagram, wait for the answer
//! with a timeout, retry a bounded number of times, and check that the
//! answer comes from the address asked (through a NAT VIP: from the VIP
//! and its port, or the reverse NAT failed).
//!
//! Sockets belong to the network namespace of the thread that creates
//! them: open flows inside [`Lab::run_in`](crate::Lab::run_in). A
//! [`UdpFlow`] made there can be used from any thread afterwards.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// How long one datagram waits for its answer.
pub const UDP_TRY_TIMEOUT: Duration = Duration::from_millis(500);
/// Datagrams sent before giving up: a lost datagram (a neighbour entry
/// still resolving, a flow being inserted) is retried, a dead path is not
/// waited on forever.
pub const UDP_TRIES: u32 = 3;
/// What the client sends; `lab-udp-backend` answers any payload.
pub const UDP_QUERY: &[u8] = b"who\n";
/// Largest answer read (the lab's answers are one short line).
const MAX_ANSWER: usize = 2048;
/// Most stray datagrams (from another source) recorded for the error.
const MAX_STRAYS: usize = 4;

/// One UDP "flow": a socket with a fixed source port, talking to one
/// server address. Every [`ask`](UdpFlow::ask) is the same 5-tuple, so a
/// balancer must keep it on one backend.
pub struct UdpFlow {
    sock: UdpSocket,
    server: SocketAddr,
}

impl UdpFlow {
    /// A flow from an ephemeral port of the unspecified address of
    /// `server`'s family (the kernel picks the source address by route).
    pub fn open(server: SocketAddr) -> Result<UdpFlow> {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        UdpFlow::bind(local, server)
    }

    /// A flow from `local` (e.g. a fixed port: the same flow across
    /// sockets).
    pub fn bind(local: SocketAddr, server: SocketAddr) -> Result<UdpFlow> {
        let sock = UdpSocket::bind(local).with_context(|| format!("bind UDP {local}"))?;
        Ok(UdpFlow { sock, server })
    }

    /// The flow's source address and port as bound.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.sock.local_addr()?)
    }

    /// The address asked.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Sends [`UDP_QUERY`] and returns the answer (trimmed: a lab
    /// backend's name), with the default timeout and tries.
    pub fn ask(&self) -> Result<String> {
        self.ask_with(UDP_QUERY, UDP_TRY_TIMEOUT, UDP_TRIES)
    }

    /// Sends `payload` up to `tries` times, each waiting `per_try` for an
    /// answer from exactly [`server`](UdpFlow::server). Datagrams from
    /// any other source are not answers (a NAT that did not rewrite the
    /// reply back to the VIP); they are named in the error.
    pub fn ask_with(&self, payload: &[u8], per_try: Duration, tries: u32) -> Result<String> {
        let local = self.local_addr()?;
        let mut strays: Vec<SocketAddr> = Vec::new();
        let mut buf = [0u8; MAX_ANSWER];
        for _ in 0..tries.max(1) {
            self.sock
                .send_to(payload, self.server)
                .with_context(|| format!("send UDP {local} → {}", self.server))?;
            let deadline = Instant::now() + per_try;
            // Bounded by the deadline: every round either returns, or
            // waits at most the time left.
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                self.sock.set_read_timeout(Some(left))?;
                match self.sock.recv_from(&mut buf) {
                    Ok((n, from)) if from == self.server => {
                        return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string());
                    }
                    Ok((_, from)) => {
                        if strays.len() < MAX_STRAYS {
                            strays.push(from);
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        break
                    }
                    // An ICMP error queued for this socket (port
                    // unreachable): the next try may fare better.
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
                    Err(e) => {
                        return Err(e).with_context(|| format!("recv UDP on {local}"));
                    }
                }
            }
        }
        if strays.is_empty() {
            bail!(
                "no answer from {} to {} datagram(s) from {local}, {per_try:?} each",
                self.server,
                tries.max(1)
            );
        }
        bail!(
            "no answer from {} to {} datagram(s) from {local}; answers came from {strays:?} instead \
             (a reply not rewritten back to the address the client asked)",
            self.server,
            tries.max(1)
        )
    }
}

/// Source ports for [`udp_ask`]: each fresh flow gets one never used before
/// in this test process. Ephemeral ports repeat (600 random picks from the
/// ephemeral range share a port a few times), and a repeated port is the
/// same flow to the balancer while its entry lives (`flow_idle_ms`): a
/// "fresh" flow must really be one.
static NEXT_FRESH_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
const FRESH_PORTS: std::ops::Range<u32> = 20_000..32_000;

/// One question on a fresh flow (a source port not used before): who
/// answered.
pub fn udp_ask(server: SocketAddr) -> Result<String> {
    let n = NEXT_FRESH_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let port = (FRESH_PORTS.start + n % FRESH_PORTS.len() as u32) as u16;
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, port).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, port).into(),
    };
    UdpFlow::bind(local, server)?.ask()
}
