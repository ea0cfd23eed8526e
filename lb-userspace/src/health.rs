//! Backend health: the rise/fall state machine and the probes that feed it.
//!
//! [`HealthState`] is pure: it turns a stream of probe results into up/down
//! flips with HAProxy's hysteresis. [`Probe`] is the I/O edge (TCP connect,
//! HTTP status, a UDP exchange), for IPv4 and IPv6 alike, and
//! [`spawn_checker`] runs one task per backend, so a slow backend only ever
//! delays its own reports.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{HealthConfig, HealthKind, DEFAULT_HTTP_PATH, DEFAULT_HTTP_STATUS};

/// A UDP reply is read into this much; any datagram at all is success, so
/// its content (and a truncation) does not matter.
const UDP_REPLY_BUF: usize = 2048;

/// The longest status line we read. A real one is ~20 bytes; the bound keeps
/// a misbehaving server from feeding the checker forever.
const MAX_STATUS_LINE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: no answer within {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: malformed HTTP status line {line:?}")]
    BadStatusLine { addr: SocketAddr, line: String },
    #[error("{addr}: port unreachable (ICMP): nothing listens on this UDP port")]
    PortUnreachable { addr: SocketAddr },
    #[error("{addr}: HTTP status {got}, expected {expected}")]
    UnexpectedStatus {
        addr: SocketAddr,
        got: u16,
        expected: u16,
    },
}

/// Rise/fall hysteresis over probe results (HAProxy's `rise`/`fall`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthState {
    pub rise: u32,
    pub fall: u32,
    /// `None` until the first result.
    pub up: Option<bool>,
    /// Consecutive successes while down.
    pub successes: u32,
    /// Consecutive failures while up.
    pub failures: u32,
}

impl HealthState {
    pub fn new(rise: u32, fall: u32) -> Self {
        HealthState {
            rise: rise.max(1),
            fall: fall.max(1),
            up: None,
            successes: 0,
            failures: 0,
        }
    }

    /// A state recovered from the pinned data plane after a restart: the
    /// backend was serving (`up`) or marked down there, so it keeps that
    /// verdict until `fall` failures (or `rise` successes) change it, as if
    /// the controller had never gone away. One probe lost across a restart
    /// then resets nothing.
    pub fn seeded(rise: u32, fall: u32, up: bool) -> Self {
        HealthState {
            up: Some(up),
            ..HealthState::new(rise, fall)
        }
    }

    /// Feeds one result; returns `Some(up)` when the state flips.
    ///
    /// The first result decides at once for a backend with no history (a
    /// fresh start, a backend added by reload): the controller should
    /// neither wait `rise × interval` before serving from healthy backends
    /// nor keep sending new flows to a dead one for `fall × interval`. A
    /// restart adopting a forwarding data plane has history: see
    /// [`HealthState::seeded`].
    pub fn observe(&mut self, success: bool) -> Option<bool> {
        match self.up {
            None => {
                self.up = Some(success);
                self.successes = 0;
                self.failures = 0;
                Some(success)
            }
            Some(true) if success => {
                self.failures = 0;
                None
            }
            Some(true) => {
                self.failures += 1;
                if self.failures >= self.fall {
                    self.up = Some(false);
                    self.failures = 0;
                    return Some(false);
                }
                None
            }
            Some(false) if !success => {
                self.successes = 0;
                None
            }
            Some(false) => {
                self.successes += 1;
                if self.successes >= self.rise {
                    self.up = Some(true);
                    self.successes = 0;
                    return Some(true);
                }
                None
            }
        }
    }

    /// Applies new thresholds (a reload) without forgetting the state.
    pub fn reconfigure(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }
}

pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HealthError>> + Send + 'a>>;

/// One health check of one address. Implementations need not enforce the
/// timeout themselves ([`spawn_checker`] bounds every probe) but may use it
/// to report a more precise error.
pub trait Probe: Send + Sync {
    fn check(&self, addr: SocketAddr, timeout: Duration) -> ProbeFuture<'_>;
}

/// Healthy when a TCP connection is accepted. Bounded by the caller
/// ([`spawn_checker`]): a refused or reset connect ends it sooner.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpProbe;

impl Probe for TcpProbe {
    fn check(&self, addr: SocketAddr, _timeout: Duration) -> ProbeFuture<'_> {
        Box::pin(async move {
            let stream = connect(addr, Handshake::WithoutAck).await?;
            // Closing sends a RST instead of a FIN (SO_LINGER 0), as
            // HAProxy closes its TCP checks: the probe needs no orderly
            // goodbye, and a prober doing a thousand connects a second
            // would otherwise keep tens of thousands of sockets in
            // TIME_WAIT. Failure only means an ordinary close.
            let _ = stream.set_zero_linger();
            Ok(())
        })
    }
}

/// How much of the handshake a probe's connect completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handshake {
    /// All of it: the probe goes on to talk.
    Full,
    /// Delayed ACKs on from the start (TCP_QUICKACK 0 puts the socket in
    /// "pingpong" mode), so the kernel holds back the handshake's final
    /// ACK when the SYN-ACK arrives, and the RST of a zero-linger close
    /// goes in its place. A pure connect check then costs three packets
    /// (SYN, SYN-ACK, RST) and the backend never builds a full socket nor
    /// wakes its accept loop; HAProxy checks this way. Proof of life is the
    /// same: a SYN-ACK comes from a listening socket whose accept queue has
    /// room.
    WithoutAck,
}

/// Unbounded: the caller's timeout covers it ([`spawn_checker`]'s for a
/// TCP check, the exchange's for HTTP), so a check arms one timer, not one
/// per layer — a thousand checks a second each insert into and remove from
/// the timer wheel.
async fn connect(addr: SocketAddr, handshake: Handshake) -> Result<TcpStream, HealthError> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|source| HealthError::Connect { addr, source })?;
    if handshake == Handshake::WithoutAck {
        // Failure only means the handshake sends its ACK.
        let _ = socket2::SockRef::from(&socket).set_tcp_quickack(false);
    }
    socket
        .connect(addr)
        .await
        .map_err(|source| HealthError::Connect { addr, source })
}

/// Healthy when `GET path` answers with `expect_status`. HTTP/1.0 with
/// `Connection: close` so the server ends the exchange; only the status line
/// is read.
#[derive(Clone, Debug)]
pub struct HttpProbe {
    pub path: String,
    pub expect_status: u16,
}

impl Probe for HttpProbe {
    fn check(&self, addr: SocketAddr, timeout: Duration) -> ProbeFuture<'_> {
        Box::pin(async move {
            let exchange = async {
                let mut s = connect(addr, Handshake::Full).await?;
                let io = |source| HealthError::Io { addr, source };
                let req = format!(
                    "GET {} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: xdplb-health\r\nConnection: close\r\n\r\n",
                    self.path
                );
                s.write_all(req.as_bytes()).await.map_err(io)?;
                let line = read_line(&mut s, MAX_STATUS_LINE).await.map_err(io)?;
                let got = parse_status_line(&line).ok_or_else(|| HealthError::BadStatusLine {
                    addr,
                    line: line.chars().take(80).collect(),
                })?;
                if got == self.expect_status {
                    Ok(())
                } else {
                    Err(HealthError::UnexpectedStatus {
                        addr,
                        got,
                        expected: self.expect_status,
                    })
                }
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(r) => r,
                Err(_) => Err(HealthError::Timeout {
                    addr,
                    timeout_ms: timeout.as_millis() as u64,
                }),
            }
        })
    }
}

/// Reads up to the first `\n` (or EOF, or `max` bytes), lossily decoded.
async fn read_line(s: &mut TcpStream, max: usize) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while buf.len() < max && !buf.contains(&b'\n') {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    buf.truncate(end.min(max));
    Ok(String::from_utf8_lossy(&buf).trim_end().to_string())
}

/// `HTTP/1.x NNN reason` → `NNN`.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.split_ascii_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..=599).contains(c))
}

/// Healthy when a datagram sent from a connected UDP socket gets any
/// datagram back. UDP has no handshake, so silence is all a dead service
/// may give: it fails at the timeout. A closed port usually says so at
/// once: the host's ICMP port unreachable, which the kernel reports on a
/// connected socket as ECONNREFUSED.
#[derive(Clone, Debug)]
pub struct UdpProbe {
    pub payload: Vec<u8>,
}

impl Probe for UdpProbe {
    fn check(&self, addr: SocketAddr, timeout: Duration) -> ProbeFuture<'_> {
        Box::pin(async move {
            let io = |source: std::io::Error| {
                if source.kind() == std::io::ErrorKind::ConnectionRefused {
                    HealthError::PortUnreachable { addr }
                } else {
                    HealthError::Io { addr, source }
                }
            };
            let exchange = async {
                let local: SocketAddr = match addr {
                    SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
                    SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let sock = UdpSocket::bind(local).await.map_err(io)?;
                // Connected: only `addr` can answer, and its ICMP errors
                // come back to this socket.
                sock.connect(addr).await.map_err(io)?;
                sock.send(&self.payload).await.map_err(io)?;
                let mut buf = [0u8; UDP_REPLY_BUF];
                sock.recv(&mut buf).await.map_err(io)?;
                Ok(())
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(r) => r,
                Err(_) => Err(HealthError::Timeout {
                    addr,
                    timeout_ms: timeout.as_millis() as u64,
                }),
            }
        })
    }
}

/// The probe a pool's `[pool.health]` asks for. `port` is not the probe's:
/// the caller probes [`HealthConfig::target`].
pub fn probe_for(spec: &HealthConfig) -> Arc<dyn Probe> {
    match spec.kind {
        HealthKind::Tcp => Arc::new(TcpProbe),
        HealthKind::Udp => Arc::new(UdpProbe {
            payload: spec.payload.clone().unwrap_or_default().into_bytes(),
        }),
        HealthKind::Http => Arc::new(HttpProbe {
            path: spec
                .path
                .clone()
                .unwrap_or_else(|| DEFAULT_HTTP_PATH.to_string()),
            expect_status: spec.expect_status.unwrap_or(DEFAULT_HTTP_STATUS),
        }),
    }
}

/// One probe's outcome, sent by [`spawn_checker`].
#[derive(Clone, Debug, PartialEq)]
pub struct HealthReport {
    /// The caller's opaque id for this backend.
    pub id: u64,
    pub success: bool,
    /// How long the probe took (for the duration histogram).
    pub duration: Duration,
    pub error: Option<String>,
}

/// Phases are whole steps of `1 / PHASE_STEPS` of the interval (at least
/// `MIN_PHASE_STEP`): the backends whose phases share a step are probed in
/// one timer tick, so the prober wakes a hundred times an interval however
/// many backends it probes (one wake per backend, each a context switch or
/// two, cost more than the probes' own system calls at a thousand a
/// second), and a hundred instants still spread them well.
const PHASE_STEPS: u32 = 100;
/// Tokio's timer resolution: a finer step would coalesce nothing.
const MIN_PHASE_STEP: Duration = Duration::from_millis(1);

/// Where in each interval `addr` is probed: a hash of the address (FNV-1a)
/// spread over the period in whole steps (see [`PHASE_STEPS`]), stable
/// across restarts and the same on every gateway.
pub fn phase(addr: SocketAddr, period: Duration) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    for b in ip.into_iter().chain(addr.port().to_be_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let step = (period / PHASE_STEPS).max(MIN_PHASE_STEP);
    let steps = (period.as_nanos() / step.as_nanos()).max(1) as u64;
    step * (h % steps) as u32
}

/// The instant every checker's schedule is reckoned from, whenever the
/// checker started (a reload, a restarted checker), so that phases in the
/// same step land in the same timer tick.
fn schedule_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    Instant::from_std(*ORIGIN.get_or_init(|| Instant::now().into_std()))
}

/// The first regular probe of a checker started at `start`: on the
/// backend's phase of the common schedule, and at least `period` after
/// the immediate first probe (less than two periods after it).
fn first_tick(start: Instant, period: Duration, phase: Duration) -> Instant {
    let earliest = start + period;
    let origin = schedule_origin() + phase;
    let p = period.as_nanos().max(1) as i128;
    // Signed: a paused test clock may stand before the origin.
    let off = if earliest >= origin {
        (earliest - origin).as_nanos() as i128
    } else {
        -((origin - earliest).as_nanos() as i128)
    };
    // Periods from the origin to the first schedule point not before `earliest`.
    let k = off.div_euclid(p) + i128::from(off.rem_euclid(p) != 0);
    let shift = Duration::from_nanos((k.unsigned_abs() * p as u128) as u64);
    if k >= 0 {
        origin + shift
    } else {
        origin - shift
    }
}

/// Probes `addr` at once, then every `spec.interval_ms` on its phase,
/// until `shutdown` becomes true (or its sender or the report receiver
/// goes away). Each probe is bounded by `spec.timeout_ms`; a probe that
/// overruns delays this backend's next tick only
/// (`MissedTickBehavior::Delay`), never another backend's.
pub fn spawn_checker(
    id: u64,
    addr: SocketAddr,
    spec: HealthConfig,
    probe: Arc<dyn Probe>,
    tx: mpsc::Sender<HealthReport>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let timeout = Duration::from_millis(spec.timeout_ms);
        let period = Duration::from_millis(spec.interval_ms.max(1));
        // The first probe at once (a starting controller waits for every
        // first verdict); the rest on a phase of this backend's own, so a
        // thousand backends are not probed in one burst every interval.
        let start = tokio::time::Instant::now();
        let mut first = true;
        let mut ticker =
            tokio::time::interval_at(first_tick(start, period, phase(addr, period)), period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if !std::mem::take(&mut first) {
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    _ = ticker.tick() => {}
                }
            } else if *shutdown.borrow() {
                return;
            }
            let start = Instant::now();
            let result = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                r = tokio::time::timeout(timeout, probe.check(addr, timeout)) => r,
            };
            let error = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(
                    HealthError::Timeout {
                        addr,
                        timeout_ms: spec.timeout_ms,
                    }
                    .to_string(),
                ),
            };
            let report = HealthReport {
                id,
                success: error.is_none(),
                duration: start.elapsed(),
                error,
            };
            if tx.send(report).await.is_err() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn run(state: &mut HealthState, results: &[bool]) -> Vec<Option<bool>> {
        results.iter().map(|&r| state.observe(r)).collect()
    }

    #[test]
    fn first_result_decides() {
        let mut s = HealthState::new(2, 3);
        assert_eq!(s.observe(true), Some(true));
        let mut s = HealthState::new(2, 3);
        assert_eq!(s.observe(false), Some(false));
        assert_eq!(s.up, Some(false));
    }

    #[test]
    fn a_seeded_state_needs_fall_failures_or_rise_successes() {
        let mut s = HealthState::seeded(2, 3, true);
        assert_eq!(run(&mut s, &[false, false]), [None, None]);
        assert_eq!(s.up, Some(true));
        assert_eq!(s.observe(false), Some(false));
        let mut s = HealthState::seeded(2, 3, false);
        assert_eq!(run(&mut s, &[true, true]), [None, Some(true)]);
    }

    #[test]
    fn rise_and_fall_hysteresis() {
        // (rise, fall, results, flips)
        type Case<'a> = (u32, u32, &'a [bool], &'a [Option<bool>]);
        let cases: &[Case] = &[
            // Up, then fall = 3 failures to go down.
            (
                2,
                3,
                &[true, false, false, false],
                &[Some(true), None, None, Some(false)],
            ),
            // A success in between resets the failure count.
            (
                2,
                3,
                &[true, false, false, true, false, false, false],
                &[Some(true), None, None, None, None, None, Some(false)],
            ),
            // Down, then rise = 2 successes to go up.
            (2, 3, &[false, true, true], &[Some(false), None, Some(true)]),
            // A failure in between resets the success count.
            (
                2,
                3,
                &[false, true, false, true, true],
                &[Some(false), None, None, None, Some(true)],
            ),
            // rise = fall = 1 follows every result.
            (
                1,
                1,
                &[true, false, true],
                &[Some(true), Some(false), Some(true)],
            ),
        ];
        for (rise, fall, input, want) in cases {
            let mut s = HealthState::new(*rise, *fall);
            assert_eq!(
                &run(&mut s, input),
                want,
                "rise {rise} fall {fall} {input:?}"
            );
        }
    }

    #[test]
    fn flapping_never_flips_below_thresholds() {
        let mut s = HealthState::new(3, 3);
        s.observe(true);
        let flips: Vec<_> = (0..40)
            .map(|i| s.observe(i % 2 == 0))
            .filter(Option::is_some)
            .collect();
        assert!(flips.is_empty());
        assert_eq!(s.up, Some(true));
    }

    #[test]
    fn reconfigure_keeps_state() {
        let mut s = HealthState::new(2, 3);
        s.observe(true);
        s.reconfigure(1, 1);
        assert_eq!(s.observe(false), Some(false));
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line("HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status_line(""), None);
    }

    const SHORT: Duration = Duration::from_millis(300);

    fn loopback(l: &TcpListener) -> SocketAddr {
        l.local_addr().unwrap()
    }

    /// A port nothing listens on: bind, take the port, close.
    async fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        loopback(&l)
    }

    #[tokio::test]
    async fn tcp_probe_up_and_down() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = loopback(&l);
        assert!(TcpProbe.check(addr, SHORT).await.is_ok());
        let closed = closed_port().await;
        let err = TcpProbe.check(closed, SHORT).await.unwrap_err();
        assert!(matches!(err, HealthError::Connect { .. }), "{err}");
    }

    /// The check is SYN, SYN-ACK, RST: the final ACK is never sent, so the
    /// listener's accept queue never sees the probe (with the ACK sent, the
    /// connection would be queued before the RST and `accept` would return
    /// it).
    #[tokio::test]
    async fn tcp_probe_leaves_nothing_to_accept() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let l = TcpListener::bind(bind).await.unwrap();
            for _ in 0..5 {
                assert!(TcpProbe.check(loopback(&l), SHORT).await.is_ok());
            }
            let queued = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
            assert!(
                queued.is_err(),
                "{bind}: a probe completed its handshake: {queued:?}"
            );
        }
    }

    /// Serves every connection with `reply` (after reading the request), or
    /// holds it open silently when `reply` is `None`.
    async fn http_server(reply: Option<&'static str>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = loopback(&l);
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    assert!(req.starts_with("GET /healthz HTTP/1.0\r\n"), "{req}");
                    assert!(req.contains("\r\nHost: 127.0.0.1:"), "{req}");
                    match reply {
                        Some(r) => {
                            let _ = s.write_all(r.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(5)).await,
                    }
                });
            }
        });
        addr
    }

    fn http() -> HttpProbe {
        HttpProbe {
            path: "/healthz".into(),
            expect_status: 200,
        }
    }

    #[tokio::test]
    async fn http_probe_statuses_and_timeout() {
        let ok = http_server(Some("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")).await;
        assert!(http().check(ok, SHORT).await.is_ok());

        let unavailable = http_server(Some("HTTP/1.1 503 Service Unavailable\r\n\r\n")).await;
        let err = http().check(unavailable, SHORT).await.unwrap_err();
        assert!(
            matches!(
                err,
                HealthError::UnexpectedStatus {
                    got: 503,
                    expected: 200,
                    ..
                }
            ),
            "{err}"
        );

        let garbage = http_server(Some("hello\n")).await;
        let err = http().check(garbage, SHORT).await.unwrap_err();
        assert!(matches!(err, HealthError::BadStatusLine { .. }), "{err}");

        let silent = http_server(None).await;
        let start = std::time::Instant::now();
        let err = http().check(silent, SHORT).await.unwrap_err();
        assert!(matches!(err, HealthError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn tcp_probe_over_ipv6() {
        let l = TcpListener::bind("[::1]:0").await.unwrap();
        assert!(TcpProbe.check(loopback(&l), SHORT).await.is_ok());
        let closed = loopback(&l);
        drop(l);
        let err = TcpProbe.check(closed, SHORT).await.unwrap_err();
        assert!(matches!(err, HealthError::Connect { .. }), "{err}");
    }

    /// A UDP service on `bind` that answers every datagram with its own
    /// bytes reversed, and records what it got.
    async fn udp_echo(bind: &str) -> (SocketAddr, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
        let sock = UdpSocket::bind(bind).await.unwrap();
        let addr = sock.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                log.lock().unwrap().push(buf[..n].to_vec());
                let mut reply = buf[..n].to_vec();
                reply.reverse();
                let _ = sock.send_to(&reply, from).await;
            }
        });
        (addr, seen)
    }

    fn udp(payload: &str) -> UdpProbe {
        UdpProbe {
            payload: payload.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn udp_probe_answered_on_both_families() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let (addr, seen) = udp_echo(bind).await;
            udp("ping").check(addr, SHORT).await.unwrap();
            // An empty payload is a zero-length datagram, still answered.
            udp("").check(addr, SHORT).await.unwrap();
            assert_eq!(
                *seen.lock().unwrap(),
                vec![b"ping".to_vec(), vec![]],
                "{bind}"
            );
        }
    }

    #[tokio::test]
    async fn udp_probe_closed_port_is_refused_at_once() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            // Bind, take the port, close: the host answers ICMP port
            // unreachable, which the connected socket reports.
            let closed = UdpSocket::bind(bind).await.unwrap().local_addr().unwrap();
            let start = std::time::Instant::now();
            let err = udp("ping").check(closed, SHORT).await.unwrap_err();
            assert!(
                matches!(err, HealthError::PortUnreachable { addr } if addr == closed),
                "{bind}: {err}"
            );
            assert!(start.elapsed() < SHORT, "{bind}: refused, not timed out");
        }
    }

    #[tokio::test]
    async fn udp_probe_silence_is_a_timeout() {
        // Bound (so no ICMP error) but never answering.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let start = std::time::Instant::now();
        let err = udp("ping")
            .check(addr, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                HealthError::Timeout {
                    timeout_ms: 100,
                    ..
                }
            ),
            "{err}"
        );
        assert!(start.elapsed() >= Duration::from_millis(100));
        let mut buf = [0u8; 16];
        let (n, _) = silent.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping", "the probe reached the service");
    }

    #[tokio::test]
    async fn probe_for_udp_sends_the_configured_payload() {
        let (addr, seen) = udp_echo("127.0.0.1:0").await;
        let spec = HealthConfig {
            kind: HealthKind::Udp,
            payload: Some("health?".into()),
            ..HealthConfig::default()
        };
        probe_for(&spec).check(addr, SHORT).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![b"health?".to_vec()]);
    }

    /// Never answers; used to show a stuck backend delays nobody else.
    struct Stuck;
    impl Probe for Stuck {
        fn check(&self, _: SocketAddr, _: Duration) -> ProbeFuture<'_> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn slow_backend_does_not_delay_others() {
        let (tx, mut rx) = mpsc::channel(64);
        let (stop_tx, stop) = watch::channel(false);
        let spec = |interval_ms, timeout_ms| HealthConfig {
            interval_ms,
            timeout_ms,
            ..HealthConfig::default()
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fast_addr = loopback(&l);
        let slow = spawn_checker(
            1,
            fast_addr,
            spec(1000, 400),
            Arc::new(Stuck),
            tx.clone(),
            stop.clone(),
        );
        let fast = spawn_checker(2, fast_addr, spec(40, 30), Arc::new(TcpProbe), tx, stop);
        let mut fast_before_slow = 0;
        let slow_report = loop {
            let r = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            if r.id == 1 {
                break r;
            }
            assert!(r.success, "{r:?}");
            fast_before_slow += 1;
        };
        assert!(!slow_report.success);
        assert!(slow_report
            .error
            .as_deref()
            .unwrap()
            .contains("no answer within 400 ms"));
        assert!(slow_report.duration >= Duration::from_millis(400));
        // 400 ms of stuck probe is ten 40 ms ticks of the other backend.
        assert!(
            fast_before_slow >= 5,
            "only {fast_before_slow} fast reports"
        );

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), async {
            slow.await.unwrap();
            fast.await.unwrap();
        })
        .await
        .expect("checkers exit on shutdown");
    }

    /// Records when each address is probed (tokio's clock).
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<(SocketAddr, tokio::time::Instant)>>);

    impl Probe for Recorder {
        fn check(&self, addr: SocketAddr, _timeout: Duration) -> ProbeFuture<'_> {
            self.0
                .lock()
                .unwrap()
                .push((addr, tokio::time::Instant::now()));
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn probes_start_at_once_then_spread_over_the_interval() {
        let spec = HealthConfig {
            interval_ms: 1000,
            timeout_ms: 500,
            ..HealthConfig::default()
        };
        let rec = Arc::new(Recorder::default());
        let (tx, mut rx) = mpsc::channel(10_000);
        let (stop_tx, stop) = watch::channel(false);
        let t0 = tokio::time::Instant::now();
        let n = 100u16;
        for i in 0..n {
            let addr = SocketAddr::from((std::net::Ipv4Addr::new(198, 18, 1, 11), 8000 + i));
            let probe: Arc<dyn Probe> = rec.clone();
            spawn_checker(
                u64::from(i),
                addr,
                spec.clone(),
                probe,
                tx.clone(),
                stop.clone(),
            );
        }
        tokio::time::sleep(Duration::from_millis(3500)).await;
        while rx.try_recv().is_ok() {}
        let probes = rec.0.lock().unwrap().clone();
        // Every first probe at once...
        let first: Vec<_> = probes.iter().filter(|(_, t)| *t == t0).collect();
        assert_eq!(first.len(), n as usize);
        // ... then each backend once per interval, on its own phase: no
        // 100 ms slot holds more than a third of them.
        let mut per_slot = [0usize; 10];
        for (_, t) in probes
            .iter()
            .filter(|(_, t)| *t >= t0 + Duration::from_secs(2))
        {
            let ms = (*t - t0).as_millis() % 1000;
            per_slot[(ms / 100) as usize] += 1;
        }
        let steady: usize = per_slot.iter().sum();
        assert!(steady >= n as usize, "{per_slot:?}");
        assert!(
            per_slot.iter().all(|c| *c <= steady / 3),
            "probes bunch up: {per_slot:?}"
        );
        for i in 0..n {
            let addr = SocketAddr::from((std::net::Ipv4Addr::new(198, 18, 1, 11), 8000 + i));
            let times: Vec<_> = probes
                .iter()
                .filter(|(a, _)| *a == addr)
                .map(|(_, t)| *t)
                .collect();
            for w in times.windows(2).skip(1) {
                assert_eq!(w[1] - w[0], Duration::from_secs(1), "{addr}");
            }
        }
        stop_tx.send(true).unwrap();
    }

    #[test]
    fn phases_are_whole_steps_spread_over_the_interval() {
        let addrs: Vec<_> = (0..1000u16)
            .map(|i| {
                SocketAddr::from(std::net::SocketAddrV4::new(
                    std::net::Ipv4Addr::new(198, 18, 1 + (i / 250) as u8, 11),
                    10_000 + i % 250,
                ))
            })
            .collect();
        // (period, step)
        for (period_ms, step_ms) in [(1000, 10), (100, 1), (30, 1), (1, 1)] {
            let period = Duration::from_millis(period_ms);
            let step = Duration::from_millis(step_ms);
            let mut phases: Vec<Duration> = addrs.iter().map(|a| phase(*a, period)).collect();
            assert!(phases
                .iter()
                .all(|p| *p < period && p.as_nanos() % step.as_nanos() == 0));
            phases.sort();
            phases.dedup();
            let steps = (period_ms / step_ms) as usize;
            // A thousand addresses leave few of at most 100 steps empty.
            assert!(
                phases.len() * 10 >= steps.min(100) * 9,
                "{period_ms} ms: {}",
                phases.len()
            );
        }
        let a = addrs[0];
        assert_eq!(
            phase(a, Duration::from_secs(1)),
            phase(a, Duration::from_secs(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn checkers_started_apart_share_the_ticks_of_their_phase() {
        let period = Duration::from_secs(1);
        let ph = Duration::from_millis(370);
        let t0 = Instant::now();
        let mut firsts = Vec::new();
        for start_ms in [0, 1, 37, 999, 1000, 5321] {
            let start = t0 + Duration::from_millis(start_ms);
            let first = first_tick(start, period, ph);
            assert!(
                first >= start + period && first < start + 2 * period,
                "{start_ms}"
            );
            firsts.push(first);
        }
        // Every first tick is on the common schedule: whole periods apart.
        for f in &firsts {
            let gap = if *f >= firsts[0] {
                *f - firsts[0]
            } else {
                firsts[0] - *f
            };
            assert_eq!(gap.as_nanos() % period.as_nanos(), 0, "{gap:?}");
        }
        // A clock standing before the origin (a test's paused clock may).
        let early = schedule_origin() - Duration::from_secs(7);
        let first = first_tick(early, period, ph);
        assert!(first >= early + period && first < early + 2 * period);
        assert_eq!(
            (schedule_origin() + ph - first).as_nanos() % period.as_nanos(),
            0
        );
    }

    #[tokio::test]
    async fn checker_reports_failure_of_closed_port() {
        let (tx, mut rx) = mpsc::channel(4);
        let (_stop_tx, stop) = watch::channel(false);
        let addr = closed_port().await;
        let spec = HealthConfig {
            interval_ms: 50,
            timeout_ms: 40,
            ..HealthConfig::default()
        };
        let h = spawn_checker(7, addr, spec.clone(), probe_for(&spec), tx, stop);
        let r = rx.recv().await.unwrap();
        assert_eq!(r.id, 7);
        assert!(!r.success);
        assert!(r.error.is_some());
        drop(rx);
        // With the receiver gone the checker stops on its next send.
        tokio::time::timeout(Duration::from_secs(2), h)
            .await
            .unwrap()
            .unwrap();
    }
}
