//! The UDP side of flow sync: one socket on `[sync] listen`, messages to
//! and from the configured peers only, each peer's state for `xdplb
//! status` and the metrics.
use std::net::SocketAddr;

use tokio::net::UdpSocket;
use tracing::{info, warn};

pub use crate::status::SyncCounters;
use crate::status::{SyncPeerState, SyncPeerStatus};

use super::{
    RateBound, Rejected, ReplayWindow, SyncEntry, SyncKeys, MAX_MESSAGE, RECEIVE_MESSAGES_PER_SEC,
    SEND_MESSAGES_PER_SEC,
};

/// A peer that sent nothing valid for this long is down (senders send an
/// empty message every [`HEARTBEAT_MS`]).
pub const PEER_DOWN_AFTER_MS: u64 = 3_000;
/// How often a gateway tells its peers it is there, with or without
/// entries.
pub const HEARTBEAT_MS: u64 = 1_000;
/// Messages a peer may be sent at once (its rate bound's burst; then
/// [`SEND_MESSAGES_PER_SEC`]).
pub const SEND_BURST: u32 = 50;
/// The wait after a failed receive before the next.
const RECV_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

struct Peer {
    addr: SocketAddr,
    up: bool,
    last_message_unix_ms: Option<u64>,
    window: ReplayWindow,
    send_rate: RateBound,
    receive_rate: RateBound,
    /// The last send error was logged: a peer down is said once, not at
    /// every message.
    send_failing: bool,
}

/// A random number for this start (the clock if getrandom fails: it still
/// differs from the last start's).
fn incarnation(now_ms: u64) -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: writes at most 8 bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == bytes.len() as isize {
        u64::from_ne_bytes(bytes)
    } else {
        now_ms
    }
}

/// This gateway's flow sync socket.
pub struct Endpoint {
    socket: UdpSocket,
    keys: SyncKeys,
    incarnation: u64,
    seq: u64,
    peers: Vec<Peer>,
    pub counters: SyncCounters,
    /// The last receive failed (logged once until one succeeds).
    recv_failing: bool,
}

impl Endpoint {
    /// Binds `listen`; messages go to and are taken from `peers` only.
    pub async fn bind(
        listen: SocketAddr,
        peers: &[SocketAddr],
        secret: &str,
        now_ms: u64,
    ) -> std::io::Result<Endpoint> {
        let socket = UdpSocket::bind(listen).await?;
        Ok(Endpoint {
            socket,
            keys: SyncKeys::new(secret),
            incarnation: incarnation(now_ms),
            seq: 0,
            peers: peers
                .iter()
                .map(|&addr| Peer {
                    addr,
                    up: false,
                    last_message_unix_ms: None,
                    window: ReplayWindow::default(),
                    send_rate: RateBound::new(SEND_MESSAGES_PER_SEC, SEND_BURST, now_ms),
                    receive_rate: RateBound::new(RECEIVE_MESSAGES_PER_SEC, 100, now_ms),
                    send_failing: false,
                })
                .collect(),
            counters: SyncCounters::default(),
            recv_failing: false,
        })
    }

    /// The address bound (its port, if `listen` asked for any).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Sends `entries` (batched; none: a heartbeat) to every peer, within
    /// each peer's rate bound; what the bound or the socket refuses is
    /// counted and left to the next refresh. Returns messages sent.
    pub async fn send(&mut self, entries: &[SyncEntry], now_unix_ms: u64) -> usize {
        let msgs = self
            .keys
            .encode(self.incarnation, &mut self.seq, now_unix_ms, entries);
        let mut sent = 0;
        for peer in &mut self.peers {
            for (i, m) in msgs.iter().enumerate() {
                if !peer.send_rate.take(now_unix_ms) {
                    self.counters.messages_unsent += (msgs.len() - i) as u64;
                    break;
                }
                match self.socket.send_to(m, peer.addr).await {
                    Ok(_) => {
                        sent += 1;
                        self.counters.messages_sent += 1;
                        if peer.send_failing {
                            info!(peer = %peer.addr, "flow sync: sending to the peer again");
                            peer.send_failing = false;
                        }
                    }
                    Err(e) => {
                        self.counters.messages_unsent += 1;
                        if !peer.send_failing {
                            warn!(peer = %peer.addr, error = %e,
                                "flow sync: cannot send to the peer; retried at every message");
                            peer.send_failing = true;
                        }
                    }
                }
            }
        }
        self.counters.entries_sent += (entries.len() * sent / msgs.len().max(1)) as u64;
        sent
    }

    /// Waits for the next accepted message; returns its sender and its
    /// entries. Rejected datagrams are counted and skipped.
    pub async fn recv(&mut self, now_unix_ms: impl Fn() -> u64) -> (SocketAddr, Vec<SyncEntry>) {
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        loop {
            let (n, from) = match self.socket.recv_from(&mut buf).await {
                Ok(got) => {
                    if self.recv_failing {
                        info!("flow sync: receiving again");
                        self.recv_failing = false;
                    }
                    got
                }
                Err(e) => {
                    self.counters.errors += 1;
                    if !self.recv_failing {
                        warn!(error = %e, "flow sync: receiving failed; retrying");
                        self.recv_failing = true;
                    }
                    // Not a hot loop on an error that persists.
                    tokio::time::sleep(RECV_RETRY).await;
                    continue;
                }
            };
            let now = now_unix_ms();
            match self.accept(&buf[..n], from, now) {
                Ok(entries) => return (from, entries),
                Err(why) => {
                    self.counters.messages_rejected += 1;
                    tracing::debug!(%from, %why, "flow sync: message rejected");
                }
            }
        }
    }

    /// Checks one datagram from `from` at `now`.
    pub fn accept(
        &mut self,
        buf: &[u8],
        from: SocketAddr,
        now: u64,
    ) -> Result<Vec<SyncEntry>, Rejected> {
        let peer = self
            .peers
            .iter_mut()
            .find(|p| p.addr == from)
            .ok_or(Rejected::Unauthenticated)?;
        if !peer.receive_rate.take(now) {
            return Err(Rejected::Replayed);
        }
        let msg = self.keys.decode(buf)?;
        if !peer.window.accept(&msg, now) {
            return Err(Rejected::Replayed);
        }
        if !peer.up {
            info!(peer = %peer.addr, "flow sync: peer up");
        }
        peer.up = true;
        peer.last_message_unix_ms = Some(now);
        self.counters.messages_received += 1;
        self.counters.entries_received += msg.entries.len() as u64;
        Ok(msg.entries)
    }

    /// Marks peers silent for [`PEER_DOWN_AFTER_MS`] down (said once).
    pub fn expire(&mut self, now: u64) {
        for peer in &mut self.peers {
            let silent = peer
                .last_message_unix_ms
                .is_none_or(|t| now.saturating_sub(t) > PEER_DOWN_AFTER_MS);
            if peer.up && silent {
                warn!(peer = %peer.addr, "flow sync: peer down (no message for {PEER_DOWN_AFTER_MS} ms)");
                peer.up = false;
            }
        }
    }

    /// Each peer's state, in config order.
    pub fn status(&self) -> Vec<SyncPeerStatus> {
        self.peers
            .iter()
            .map(|p| SyncPeerStatus {
                peer: p.addr.to_string(),
                state: if p.up {
                    SyncPeerState::Up
                } else {
                    SyncPeerState::Down
                },
                last_message_unix_ms: p.last_message_unix_ms,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-pair";

    fn entry() -> SyncEntry {
        SyncEntry {
            tag: 0x1234_5678_9abc_de00 | 0x100,
            flags: 8,
            proto: lb_common::IPPROTO_TCP,
            vip: "198.18.2.10:80".parse().unwrap(),
            backend: "198.18.1.14:8080".parse().unwrap(),
        }
    }

    // Loopback sockets on ephemeral ports inside the test process: no
    // daemon, nothing left behind.
    async fn pair(secret_b: &str) -> (Endpoint, Endpoint) {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let probe_a = UdpSocket::bind(any).await.unwrap();
        let probe_b = UdpSocket::bind(any).await.unwrap();
        let (a_addr, b_addr) = (probe_a.local_addr().unwrap(), probe_b.local_addr().unwrap());
        drop((probe_a, probe_b));
        let a = Endpoint::bind(a_addr, &[b_addr], SECRET, 0).await.unwrap();
        let b = Endpoint::bind(b_addr, &[a_addr], secret_b, 0)
            .await
            .unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn peers_exchange_entries_and_show_up_then_down() {
        let (mut a, mut b) = pair(SECRET).await;
        assert_eq!(b.status()[0].state, SyncPeerState::Down);
        assert_eq!(a.send(&[entry(), entry()], 10_000).await, 1);
        let (from, got) =
            tokio::time::timeout(std::time::Duration::from_secs(5), b.recv(|| 10_001))
                .await
                .expect("a message within 5 s");
        assert_eq!(from, a.local_addr().unwrap());
        assert_eq!(got, vec![entry(), entry()]);
        let st = &b.status()[0];
        assert_eq!(
            (st.state, st.last_message_unix_ms),
            (SyncPeerState::Up, Some(10_001))
        );
        assert_eq!(b.counters.entries_received, 2);
        assert_eq!(a.counters.entries_sent, 2);
        b.expire(10_001 + PEER_DOWN_AFTER_MS);
        assert_eq!(b.status()[0].state, SyncPeerState::Up);
        b.expire(10_002 + PEER_DOWN_AFTER_MS);
        assert_eq!(b.status()[0].state, SyncPeerState::Down);
    }

    #[test]
    fn strangers_replays_and_other_secrets_are_rejected() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, mut b) = pair("another secret, 16+ bytes").await;
            let a_addr = a.local_addr().unwrap();
            let mut seq = 0;
            let msg = a
                .keys
                .encode(a.incarnation, &mut seq, 10_000, &[entry()])
                .remove(0);
            assert_eq!(
                b.accept(&msg, a_addr, 10_000),
                Err(Rejected::Unauthenticated)
            );
            let good = SyncKeys::new("another secret, 16+ bytes")
                .encode(7, &mut seq, 10_000, &[entry()])
                .remove(0);
            assert_eq!(b.accept(&good, a_addr, 10_000), Ok(vec![entry()]));
            assert_eq!(b.accept(&good, a_addr, 10_000), Err(Rejected::Replayed));
            let stranger: SocketAddr = "127.0.0.9:7946".parse().unwrap();
            let fresh = SyncKeys::new("another secret, 16+ bytes")
                .encode(7, &mut seq, 10_000, &[entry()])
                .remove(0);
            assert_eq!(
                b.accept(&fresh, stranger, 10_000),
                Err(Rejected::Unauthenticated)
            );
            // The receive bound: a burst of 100 (less the three messages
            // from the peer's address above), then about 400 a second.
            let mut ok = 0;
            for _ in 0..300 {
                let m = SyncKeys::new("another secret, 16+ bytes")
                    .encode(7, &mut seq, 10_000, &[])
                    .remove(0);
                ok += usize::from(b.accept(&m, a_addr, 10_000).is_ok());
            }
            assert_eq!(ok, 97, "of a 300 burst");
            let later = SyncKeys::new("another secret, 16+ bytes")
                .encode(7, &mut seq, 10_010, &[])
                .remove(0);
            assert!(
                b.accept(&later, a_addr, 10_010).is_ok(),
                "4 tokens 10 ms later"
            );
        });
    }
}
