//! The controller side of the agent protocol: one query, and a poller task
//! per backend that queries every interval.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{parse_agent_reply_bytes, AgentReply, LoadError, MAX_REPLY_LEN};

/// Connects to `addr`, reads one line (up to `\n` or EOF, at most
/// [`MAX_REPLY_LEN`] bytes) and parses it; the whole exchange is bounded by
/// `timeout`.
pub async fn query_agent(addr: SocketAddr, timeout: Duration) -> Result<AgentReply, LoadError> {
    let exchange = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|source| LoadError::Connect { addr, source })?;
        let mut buf = Vec::with_capacity(128);
        let mut chunk = [0u8; 256];
        loop {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|source| LoadError::Io { addr, source })?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                buf.truncate(end);
                break;
            }
            if buf.len() > MAX_REPLY_LEN {
                return Err(LoadError::TooLong { len: buf.len() });
            }
        }
        parse_agent_reply_bytes(&buf)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(LoadError::Timeout {
            addr,
            timeout_ms: timeout.as_millis() as u64,
        }),
    }
}

/// A query timeout for a poll interval: long enough for a loaded backend to
/// answer, short enough that one query never overlaps the next.
pub fn agent_timeout(interval_ms: u64) -> Duration {
    Duration::from_millis((interval_ms / 2).clamp(1, 2000))
}

/// One query's outcome, sent by [`spawn_poller`].
#[derive(Debug)]
pub struct LoadReport {
    /// The caller's opaque id for this backend.
    pub id: u64,
    pub result: Result<AgentReply, LoadError>,
}

/// Queries the agent at `addr` every `interval` until `shutdown` becomes
/// true (or its sender or the report receiver goes away). One task per
/// backend, so a silent agent delays only its own reports.
pub fn spawn_poller(
    id: u64,
    addr: SocketAddr,
    interval: Duration,
    timeout: Duration,
    tx: mpsc::Sender<LoadReport>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = ticker.tick() => {}
            }
            let result = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                r = query_agent(addr, timeout) => r,
            };
            if tx.send(LoadReport { id, result }).await.is_err() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::agent::{serve_agent, Sampler};
    use crate::load::{AgentState, Utilisation};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_millis(500);

    fn local(l: &TcpListener) -> SocketAddr {
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn round_trip_with_served_agent() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = local(&l);
        let sampler = Arc::new(Sampler::fixed(Utilisation::all(0.7, 0.6, 0.5, 0.8)));
        let (stop_tx, mut stop) = watch::channel(false);
        let server = tokio::spawn(serve_agent(l, sampler, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        for _ in 0..3 {
            let r = query_agent(addr, T).await.unwrap();
            assert_eq!(r.oper, Some(AgentState::Up));
            assert_eq!(r.weight_pct, Some(100));
            assert_eq!(r.util, Utilisation::all(0.7, 0.6, 0.5, 0.8));
        }
        stop_tx.send(true).unwrap();
        tokio::time::timeout(T, server).await.unwrap().unwrap();
    }

    /// An IPv6 backend's agent answers on its own address.
    #[tokio::test]
    async fn agent_on_ipv6() {
        let l = TcpListener::bind("[::1]:0").await.unwrap();
        let addr = local(&l);
        assert!(addr.is_ipv6());
        let sampler = Arc::new(Sampler::fixed(Utilisation::all(0.1, 0.2, 0.3, 0.4)));
        let (stop_tx, mut stop) = watch::channel(false);
        let server = tokio::spawn(serve_agent(l, sampler, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        let r = query_agent(addr, T).await.unwrap();
        assert_eq!(r.util, Utilisation::all(0.1, 0.2, 0.3, 0.4));
        stop_tx.send(true).unwrap();
        tokio::time::timeout(T, server).await.unwrap().unwrap();
        let err = query_agent(addr, T).await.unwrap_err();
        assert!(err.to_string().contains(&format!("agent {addr}")), "{err}");
    }

    /// A one-shot server that runs `behave` on each connection.
    async fn server<F, Fut>(behave: F) -> SocketAddr
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = local(&l);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(behave(s));
            }
        });
        addr
    }

    #[tokio::test]
    async fn misbehaving_agents_are_errors() {
        let garbage = server(|mut s| async move {
            let _ = s.write_all(b"\xff\xfe\x00garbage\n").await;
        })
        .await;
        assert!(matches!(
            query_agent(garbage, T).await,
            Err(LoadError::NotUtf8)
        ));

        let words = server(|mut s| async move {
            let _ = s.write_all(b"hello there\n").await;
        })
        .await;
        assert!(matches!(
            query_agent(words, T).await,
            Err(LoadError::NothingUseful { .. })
        ));

        let endless = server(|mut s| async move {
            let _ = s.write_all(&[b'x'; 4096]).await;
        })
        .await;
        assert!(matches!(
            query_agent(endless, T).await,
            Err(LoadError::TooLong { .. })
        ));

        let silent = server(|s| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        })
        .await;
        assert!(matches!(
            query_agent(silent, Duration::from_millis(100)).await,
            Err(LoadError::Timeout { .. })
        ));

        let closes = server(|s| async move { drop(s) }).await;
        assert!(matches!(
            query_agent(closes, T).await,
            Err(LoadError::Empty)
        ));

        // No trailing newline is fine: EOF ends the line.
        let no_newline = server(|mut s| async move {
            let _ = s.write_all(b"up 42%").await;
        })
        .await;
        assert_eq!(
            query_agent(no_newline, T).await.unwrap().weight_pct,
            Some(42)
        );

        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = local(&l);
        drop(l);
        assert!(matches!(
            query_agent(closed, T).await,
            Err(LoadError::Connect { .. })
        ));
    }

    #[tokio::test]
    async fn poller_reports_and_stops() {
        let addr = server(|mut s| async move {
            let _ = s.write_all(b"drain 50%\n").await;
        })
        .await;
        let (tx, mut rx) = mpsc::channel(8);
        let (stop_tx, stop) = watch::channel(false);
        let h = spawn_poller(9, addr, Duration::from_millis(20), T, tx, stop);
        for _ in 0..2 {
            let r = rx.recv().await.unwrap();
            assert_eq!(r.id, 9);
            assert_eq!(r.result.unwrap().effective_state(), Some(AgentState::Drain));
        }
        stop_tx.send(true).unwrap();
        tokio::time::timeout(T, h).await.unwrap().unwrap();
    }

    #[test]
    fn timeout_for_interval() {
        assert_eq!(agent_timeout(1000), Duration::from_millis(500));
        assert_eq!(agent_timeout(60_000), Duration::from_millis(2000));
        assert_eq!(agent_timeout(0), Duration::from_millis(1));
    }
}
