//! The backend-side load agent (`xdplb agent`): a [`Sampler`] of this host's
//! utilisation and [`serve_agent`], which answers every TCP connection with
//! one HAProxy-compatible line, then closes.
//!
//! The weight percent is a fixed, operator-chosen number (100 unless set):
//! the utilisation fields already carry the load, and the controller turns
//! them into `weight × (1 − load)` itself, so deriving the percent from load
//! too would count it twice. Plain HAProxy reads the percent and the state
//! word and ignores the rest.

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::procfs;
use super::{parse_agent_reply, AgentReply, AgentState, LoadError, Utilisation};

/// How often the /proc sampler takes a sample. One second smooths
/// sub-second bursts while following real load within a poll or two.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// Capacity assumed for an interface that reports no link speed (virtual
/// ones report -1): 10 Gb/s.
pub const DEFAULT_NET_CAPACITY_BPS: u64 = 10_000_000_000;
/// A client that does not take its line within this long is dropped, so slow
/// or stuck clients cannot pile up connections.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections answered at once by default. A controller holds at most one
/// per backend at a time; a few gateways polling leave this far from full,
/// and a flood of clients cannot make the agent hold unbounded sockets.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// An address block, `198.18.1.0/24` or `2001:2::/48` (a bare address is a
/// block of one); parsed by ipnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(ipnet::IpNet);

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Cidr(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Cidr(ipnet::IpNet::from(ip)));
        }
        Err(match s.split_once('/') {
            Some((a, _)) if a.parse::<IpAddr>().is_ok() => {
                let max = if a.contains(':') { 128 } else { 32 };
                format!("{s:?}: prefix length must be 0..={max}")
            }
            _ => format!("{s:?} is not an address or ADDR/PREFIX"),
        })
    }
}

impl Cidr {
    /// Whether `ip` is in the block (an IPv4 peer seen as `::ffff:a.b.c.d`
    /// on a dual-stack socket counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

/// Who the agent answers, and how many at once.
#[derive(Clone, Debug)]
pub struct AgentPolicy {
    /// Peers allowed; empty allows every peer.
    pub allow: Vec<Cidr>,
    pub max_connections: usize,
}

impl Default for AgentPolicy {
    fn default() -> Self {
        AgentPolicy {
            allow: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl AgentPolicy {
    pub fn allows(&self, peer: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(peer))
    }
}

enum Source {
    /// Measured from /proc by the task [`Sampler::spawn`] starts.
    Proc { net_capacity_bps: Option<u64> },
    /// A fixed reply fragment (`--fixed`).
    Fixed(AgentReply),
    /// A reply fragment re-read on every connection (`--fixed-file`), so a
    /// test can raise and lower the load while the agent runs.
    FixedFile(PathBuf),
}

/// Where the agent's numbers come from.
pub struct Sampler {
    source: Source,
    weight_pct: u8,
    latest: Mutex<Utilisation>,
}

impl Sampler {
    /// Measures this host from /proc (call [`Sampler::spawn`]).
    /// `net_capacity_bps` overrides every interface's link speed.
    pub fn from_proc(net_capacity_bps: Option<u64>) -> Self {
        Self::with_source(Source::Proc { net_capacity_bps })
    }

    /// Always reports `util`.
    pub fn fixed(util: Utilisation) -> Self {
        Self::with_source(Source::Fixed(AgentReply {
            util,
            ..AgentReply::default()
        }))
    }

    /// Parses a `--fixed` value: agent-reply tokens, e.g.
    /// `"cpu=0.9 mem=0.9 disk=0.9 net=0.9"`, optionally with a state word and
    /// a percent (`"drain 50% cpu=0.1"`) which then override the defaults.
    pub fn fixed_str(spec: &str) -> Result<Self, LoadError> {
        Ok(Self::with_source(Source::Fixed(parse_agent_reply(spec)?)))
    }

    /// Re-reads `path` (same syntax as [`Sampler::fixed_str`]) on every
    /// connection.
    pub fn fixed_file(path: PathBuf) -> Self {
        Self::with_source(Source::FixedFile(path))
    }

    /// The percent sent when the source does not give one (default 100).
    pub fn with_weight_percent(mut self, pct: u8) -> Self {
        self.weight_pct = pct.min(100);
        self
    }

    fn with_source(source: Source) -> Self {
        Sampler {
            source,
            weight_pct: 100,
            latest: Mutex::new(Utilisation::default()),
        }
    }

    /// Starts the once-a-second /proc sampling task; `None` for fixed
    /// sources, which need none. The task ends when `shutdown` becomes true.
    pub fn spawn(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        let Source::Proc { net_capacity_bps } = self.source else {
            return None;
        };
        let me = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut prev = ProcSample::read().await;
            if let Some(mem) = prev.mem {
                me.store(Utilisation {
                    mem: Some(mem),
                    ..Utilisation::all(0.0, 0.0, 0.0, 0.0)
                });
            }
            let mut ticker = tokio::time::interval(SAMPLE_PERIOD);
            ticker.tick().await;
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|s| *s) => return,
                    _ = ticker.tick() => {}
                }
                let cur = ProcSample::read().await;
                let util = cur.utilisation_since(&prev, |ifname| {
                    net_capacity_bps.unwrap_or_else(|| link_capacity(ifname))
                });
                me.store(util);
                prev = cur;
            }
        }))
    }

    /// Keeps `u` as the published utilisation, stepped with hysteresis
    /// ([`Utilisation::published`]) so gateways polling at different
    /// moments read the same line while the load only jitters.
    fn store(&self, u: Utilisation) {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        *latest = u.published(&latest);
    }

    /// The reply to send now.
    pub fn reply(&self) -> Result<AgentReply, LoadError> {
        let mut r = match &self.source {
            Source::Proc { .. } => AgentReply {
                util: *self.latest.lock().unwrap_or_else(|e| e.into_inner()),
                ..AgentReply::default()
            },
            Source::Fixed(r) => r.clone(),
            Source::FixedFile(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| LoadError::ReadFile {
                    path: path.clone(),
                    source,
                })?;
                parse_agent_reply(text.trim()).map_err(|e| LoadError::FixedFile {
                    path: path.clone(),
                    source: Box::new(e),
                })?
            }
        };
        if r.oper.is_none() && r.admin.is_none() {
            r.oper = Some(AgentState::Up);
        }
        if r.weight_pct.is_none() {
            r.weight_pct = Some(self.weight_pct);
        }
        Ok(r)
    }

    /// The line to send, with its newline.
    pub fn reply_line(&self) -> Result<String, LoadError> {
        Ok(format!("{}\n", self.reply()?.to_line()))
    }
}

fn link_capacity(ifname: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/speed"))
        .ok()
        .and_then(|t| procfs::parse_link_speed(&t))
        .unwrap_or(DEFAULT_NET_CAPACITY_BPS)
}

/// One reading of the /proc counters; fields a host lacks stay empty.
struct ProcSample {
    at: Instant,
    cpu: Option<procfs::CpuTimes>,
    mem: Option<f64>,
    disks: Vec<(String, u64)>,
    nets: Vec<(String, u64)>,
}

impl ProcSample {
    async fn read() -> Self {
        let read = |p: &'static str| async move { tokio::fs::read_to_string(p).await.ok() };
        let stat = read("/proc/stat").await;
        let meminfo = read("/proc/meminfo").await;
        let diskstats = read("/proc/diskstats").await;
        let netdev = read("/proc/net/dev").await;
        ProcSample {
            at: Instant::now(),
            cpu: stat.as_deref().and_then(procfs::parse_stat),
            mem: meminfo.as_deref().and_then(procfs::parse_meminfo),
            disks: diskstats
                .as_deref()
                .map(procfs::parse_diskstats)
                .unwrap_or_default(),
            nets: netdev
                .as_deref()
                .map(procfs::parse_net_dev)
                .unwrap_or_default(),
        }
    }

    fn utilisation_since(&self, prev: &ProcSample, capacity: impl Fn(&str) -> u64) -> Utilisation {
        let wall_ms = self.at.duration_since(prev.at).as_millis() as u64;
        Utilisation {
            cpu: match (prev.cpu, self.cpu) {
                (Some(a), Some(b)) => Some(procfs::cpu_utilisation(a, b)),
                _ => None,
            },
            mem: self.mem,
            disk: Some(procfs::disk_utilisation(&prev.disks, &self.disks, wall_ms)),
            net: Some(procfs::net_utilisation(
                &prev.nets, &self.nets, wall_ms, capacity,
            )),
        }
    }
}

/// Answers every connection on `listener` with one line from `sampler`, then
/// closes it, until `shutdown` completes. A reply that cannot be produced (an
/// unreadable or malformed `--fixed-file`) closes the connection without a
/// line, which the controller counts as a failed query.
pub async fn serve_agent(
    listener: TcpListener,
    sampler: Arc<Sampler>,
    shutdown: impl Future<Output = ()>,
) {
    serve_agent_with(listener, sampler, AgentPolicy::default(), shutdown).await
}

/// [`serve_agent`] answering only peers `policy` allows, and at most
/// `policy.max_connections` at once: others are closed without a line.
pub async fn serve_agent_with(
    listener: TcpListener,
    sampler: Arc<Sampler>,
    policy: AgentPolicy,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(policy.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let conn = tokio::select! {
            _ = &mut shutdown => return,
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, peer)) => {
                if !policy.allows(peer.ip()) {
                    tracing::debug!(%peer, "agent: peer not in --allow; closed");
                    continue;
                }
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::debug!(%peer, "agent: at --max-connections; closed");
                    continue;
                };
                let sampler = Arc::clone(&sampler);
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &sampler).await {
                        tracing::debug!(%peer, error = %e, "agent reply not sent");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "agent accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, sampler: &Sampler) -> Result<(), String> {
    let line = sampler.reply_line().map_err(|e| e.to_string())?;
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(line.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| "client too slow".to_string())?
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::client::query_agent;

    const T: Duration = Duration::from_millis(500);

    #[test]
    fn fixed_lines() {
        let s = Sampler::fixed(Utilisation::all(0.9, 0.9, 0.9, 0.9));
        assert_eq!(
            s.reply_line().unwrap(),
            "up 100% cpu=0.90 mem=0.90 disk=0.90 net=0.90\n"
        );
        let s = Sampler::fixed_str("drain 40% cpu=0.1").unwrap();
        assert_eq!(s.reply_line().unwrap(), "drain 40% cpu=0.10\n");
        let s = Sampler::fixed_str("cpu=0.5")
            .unwrap()
            .with_weight_percent(60);
        assert_eq!(s.reply_line().unwrap(), "up 60% cpu=0.50\n");
        assert!(Sampler::fixed_str("cpu=2").is_err());
    }

    #[tokio::test]
    async fn fixed_file_is_reread_per_connection() {
        let dir = std::env::temp_dir().join(format!("xdplb-agent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("load");
        std::fs::write(&path, "cpu=0.1 mem=0.1 disk=0.1 net=0.1\n").unwrap();

        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let sampler = Arc::new(Sampler::fixed_file(path.clone()));
        let (stop_tx, mut stop) = watch::channel(false);
        let server = tokio::spawn(serve_agent(l, sampler, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));

        assert_eq!(query_agent(addr, T).await.unwrap().util.cpu, Some(0.1));
        std::fs::write(&path, "cpu=0.9 mem=0.9 disk=0.9 net=0.9\n").unwrap();
        assert_eq!(query_agent(addr, T).await.unwrap().util.cpu, Some(0.9));
        std::fs::write(&path, "not a load\n").unwrap();
        assert!(query_agent(addr, T).await.is_err());
        std::fs::remove_file(&path).unwrap();
        assert!(query_agent(addr, T).await.is_err());

        stop_tx.send(true).unwrap();
        tokio::time::timeout(T, server).await.unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "198.18.1.0/24".parse().unwrap();
        assert!(c.contains("198.18.1.200".parse().unwrap()));
        assert!(!c.contains("198.18.2.1".parse().unwrap()));
        assert!(c.contains("::ffff:198.18.1.7".parse().unwrap()));
        let one: Cidr = "198.18.0.2".parse().unwrap();
        assert!(one.contains("198.18.0.2".parse().unwrap()));
        assert!(!one.contains("198.18.0.3".parse().unwrap()));
        let v6: Cidr = "2001:2::/48".parse().unwrap();
        assert!(v6.contains("2001:2:0:1::11".parse().unwrap()));
        assert!(!v6.contains("198.18.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        for bad in ["198.18.1.0/33", "nope", "198.18.1.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn only_allowed_peers_get_a_line() {
        let serve = |policy: AgentPolicy| async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let sampler = Arc::new(Sampler::fixed(Utilisation::all(0.5, 0.5, 0.5, 0.5)));
            let (stop_tx, mut stop) = watch::channel(false);
            let task = tokio::spawn(serve_agent_with(l, sampler, policy, async move {
                let _ = stop.wait_for(|s| *s).await;
            }));
            (addr, stop_tx, task)
        };
        // 127.0.0.1 is not in the list: closed without a line.
        let (addr, stop, task) = serve(AgentPolicy {
            allow: vec!["198.18.0.0/15".parse().unwrap()],
            ..AgentPolicy::default()
        })
        .await;
        assert!(query_agent(addr, T).await.is_err());
        stop.send(true).unwrap();
        task.await.unwrap();
        let (addr, stop, task) = serve(AgentPolicy {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            ..AgentPolicy::default()
        })
        .await;
        assert_eq!(query_agent(addr, T).await.unwrap().util.cpu, Some(0.5));
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn proc_sampler_reports_this_host() {
        let sampler = Arc::new(Sampler::from_proc(None));
        let (stop_tx, stop) = watch::channel(false);
        let task = sampler.spawn(stop).expect("proc sampler runs a task");
        // The first reading (memory) is stored before the first tick.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = sampler.reply().unwrap();
        if std::path::Path::new("/proc/meminfo").exists() {
            let mem = r.util.mem.expect("memory measured");
            assert!((0.0..=1.0).contains(&mem));
        }
        assert_eq!(r.oper, Some(AgentState::Up));
        stop_tx.send(true).unwrap();
        tokio::time::timeout(T, task).await.unwrap().unwrap();
    }
}
