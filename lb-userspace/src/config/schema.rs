//! The validated configuration: plain values only, so two configs compare
//! equal when they mean the same thing, with the defaults and bounds they
//! are checked against.
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Largest accepted `ring_size`. The data plane allocates
/// `MAX_VIPS × 2 × ring_size` 4-byte entries up front (≈ 512 MiB at this
/// size), so anything larger is a typo rather than a plan.
pub const MAX_RING_SIZE: u32 = 1_000_003;
/// Maglev keeps per-backend imbalance near 1% only when the ring holds at
/// least this many entries per backend (Eisenbud et al., §5.3).
pub const RING_ENTRIES_PER_BACKEND: u32 = 100;
/// Weight bounds, as in HAProxy's `weight` (which allows 0..=256; we keep 0
/// out because a zero-weight backend is what drain is for).
pub const MIN_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: u32 = 1000;
/// Tolerance on `Σ factors = 1`: decimal literals like 0.1 are inexact.
pub const FACTOR_SUM_TOLERANCE: f64 = 1e-6;
/// `flow_idle_ms` of a `udp` pool when unset: as IPVS's and Cilium's UDP
/// timeouts, long enough for a DNS retry or a media stream's pauses.
pub const DEFAULT_UDP_FLOW_IDLE_MS: u32 = 30_000;
/// The shortest non-zero `flow_idle_ms`: a flow that goes quiet for less
/// than a second is not over (a retransmission timeout is a second).
pub const MIN_FLOW_IDLE_MS: u32 = 1000;
/// The largest UDP health-check payload: what one IPv4 UDP datagram
/// carries (65535 − 20 − 8).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native if the driver supports it, else generic (skb) mode.
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number the maps key endpoints with.
    pub const fn ipproto(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::IPPROTO_TCP,
            Protocol::Udp => lb_common::IPPROTO_UDP,
        }
    }

    pub fn from_ipproto(p: u8) -> Option<Protocol> {
        match p {
            lb_common::IPPROTO_TCP => Some(Protocol::Tcp),
            lb_common::IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// `flow_idle_ms` when the pool does not say: a TCP flow ends with
    /// FIN or RST (or eviction from the flow table), a UDP flow only by going quiet.
    pub const fn default_flow_idle_ms(self) -> u32 {
        match self {
            Protocol::Tcp => 0,
            Protocol::Udp => DEFAULT_UDP_FLOW_IDLE_MS,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the maps key a VIP, or a backend's replies, by: an address of
/// either family, its port, and the protocol (a TCP and a UDP service may
/// share an address and port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

impl Endpoint {
    pub fn tcp(addr: impl Into<SocketAddr>) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            protocol: Protocol::Tcp,
        }
    }

    pub fn udp(addr: impl Into<SocketAddr>) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            protocol: Protocol::Udp,
        }
    }
}

/// A bare address is a TCP endpoint (what every caller meant before UDP).
impl From<SocketAddrV4> for Endpoint {
    fn from(a: SocketAddrV4) -> Endpoint {
        Endpoint::tcp(a)
    }
}

impl From<SocketAddrV6> for Endpoint {
    fn from(a: SocketAddrV6) -> Endpoint {
        Endpoint::tcp(a)
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Endpoint {
        Endpoint::tcp(a)
    }
}

/// `198.18.2.10:53/udp`, `[2001:2:0:2::10]:80/tcp`.
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Nat,
    /// Direct server return at L2: the destination MAC is rewritten to the
    /// backend's; it holds the VIP on a loopback and answers directly.
    Dsr,
    /// Direct server return through IPIP from `tunnel_source`.
    Tunnel,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Dsr => "dsr",
            Mode::Tunnel => "tunnel",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a pool does with a new flow when no backend can take it (every
/// backend down, drained or standby): `on_empty` in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnEmpty {
    /// Answer from the VIP at once (TCP: RST), so clients fail fast instead
    /// of retrying SYNs for minutes. The operator contract's default.
    #[default]
    Reject,
    /// Drop silently (clients time out).
    Drop,
}

impl OnEmpty {
    pub const fn as_str(self) -> &'static str {
        match self {
            OnEmpty::Reject => "reject",
            OnEmpty::Drop => "drop",
        }
    }
}

/// What happens to a backend's established flows when health marks it
/// down (HAProxy's `on-marked-down`, Envoy's
/// `close_connections_on_host_health_failure`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnDown {
    /// Re-steered on their next packet, so clients fail fast (a RST from
    /// the new backend) instead of hanging on a dead server.
    #[default]
    Reset,
    /// They run out on the backend (for a health check that fails while the
    /// server still serves what it has, e.g. a deliberate 503).
    Keep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    #[default]
    Tcp,
    Http,
    /// Send `payload` on a connected UDP socket; any reply is success.
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Primary,
    Spare,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Spare => "spare",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    pub control: ControlConfig,
    /// `[announce]`: VIPs announced to routers through a BGP speaker.
    pub announce: Option<AnnounceConfig>,
    /// `[sync]`: pinned flows shared with the other gateways.
    pub sync: Option<FlowSyncConfig>,
    pub pools: Vec<PoolConfig>,
}

/// `[sync]` (see [`crate::flowsync`]).
#[derive(Clone, PartialEq, Serialize)]
pub struct FlowSyncConfig {
    /// UDP address this gateway receives its peers' messages on.
    pub listen: std::net::SocketAddr,
    /// The other gateways' `listen` addresses.
    pub peers: Vec<std::net::SocketAddr>,
    /// Shared by all gateways: authenticates every message and keys the
    /// flow table's tags alike on all of them. Never printed.
    #[serde(skip)]
    pub secret: String,
}

impl std::fmt::Debug for FlowSyncConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowSyncConfig")
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// `[sync] secret` at least this long (bytes): it is the only thing
/// between the network and the flow tables.
pub const MIN_SYNC_SECRET_LEN: usize = 16;
/// `[sync] peers` at most this many (a pair, or a fleet behind ECMP).
pub const MAX_SYNC_PEERS: usize = 16;

/// `[announce]` (see [`crate::announce`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnnounceConfig {
    /// The BGP speaker; only BIRD 2 so far.
    pub speaker: Speaker,
    /// BIRD's control socket (`bird -s`).
    pub control_socket: PathBuf,
    /// Where xdplb writes the VIP routes; the speaker's config includes it.
    pub routes_file: PathBuf,
    /// How long the VIPs stay announced once no controller runs (`xdplb
    /// withdraw --after-hold`, started by the unit when the controller
    /// exits): longer than a restart, short enough that a gateway whose
    /// controller is gone stops attracting traffic.
    pub hold_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    Bird,
}

pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";
pub const DEFAULT_ROUTES_FILE: &str = "/run/xdplb/vips.conf";
/// `[announce] hold_ms` by default: a restart (RestartSec=2s and a start
/// of about a second) fits in it twice.
pub const DEFAULT_HOLD_MS: u64 = 5000;
/// Bounds of `hold_ms`: below a second a restart cannot fit; above ten
/// minutes a dead controller's VIPs would attract traffic for too long.
pub const HOLD_MS_RANGE: std::ops::RangeInclusive<u64> = 1000..=600_000;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataplaneConfig {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub pin_path: PathBuf,
    pub flow_table_size: u32,
    pub ring_size: u32,
    /// New flows recorded per second per CPU; above it they are balanced by
    /// the ring without a table entry. 0: no cap.
    pub max_flow_inserts_per_sec: u32,
    /// Outer source of IPv4 `tunnel` pools' IPIP packets.
    pub tunnel_source_v4: Option<ipnet::Ipv4Net>,
    /// Outer source of IPv6 `tunnel` pools' IPv6-in-IPv6 packets.
    pub tunnel_source_v6: Option<ipnet::Ipv6Net>,
    /// Per CPU: RSTs, ICMP errors and echo replies the program makes
    /// itself, a second (a token bucket); more are dropped and counted.
    /// 0: none at all.
    pub answers_per_sec: u32,
    /// More destination MACs that are this host's on every interface (a
    /// VRRP virtual MAC, a secondary MAC).
    pub extra_macs: Vec<[u8; 6]>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ControlConfig {
    pub admin_socket: PathBuf,
    /// `None` when the file says `metrics_listen = ""`.
    pub metrics_listen: Option<SocketAddr>,
    /// Where operator drains are kept across restarts, `xdplb down` and
    /// reboots; `None` when the file says `state_file = ""`.
    pub state_file: Option<PathBuf>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            admin_socket: PathBuf::from(DEFAULT_ADMIN_SOCKET),
            metrics_listen: Some(DEFAULT_METRICS_LISTEN.parse().expect("valid literal")),
            state_file: Some(PathBuf::from(DEFAULT_STATE_FILE)),
        }
    }
}

pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xdplb";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/xdplb.sock";
/// Where operator drains are kept by default (survives reboots: not /run).
pub const DEFAULT_STATE_FILE: &str = "/var/lib/xdplb/state.json";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9434";
pub const DEFAULT_WEIGHT: u32 = 100;
/// The shortest health-check interval accepted. Probing a backend more
/// often than 20 times a second buys little detection speed for its cost
/// (1,000 backends would mean 20,000 probes a second from one gateway).
pub const MIN_HEALTH_INTERVAL_MS: u64 = 50;
pub const DEFAULT_MIN_ACTIVE: u32 = 1;
pub const DEFAULT_HTTP_PATH: &str = "/";
pub const DEFAULT_HTTP_STATUS: u16 = 200;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolConfig {
    pub name: String,
    /// Either family; every backend has the same one.
    pub vip: SocketAddr,
    pub protocol: Protocol,
    /// A flow with no packet for this long is forgotten (0: never; TCP
    /// flows end with FIN/RST or eviction). Whole seconds matter only.
    pub flow_idle_ms: u32,
    pub mode: Mode,
    pub min_active: u32,
    pub on_empty: OnEmpty,
    pub on_down: OnDown,
    /// Pool-level `slow_start_ms`; `None` when unset (then `[pool.load]`'s
    /// applies, see [`PoolConfig::ramp_ms`]).
    pub slow_start_ms: Option<u64>,
    pub health: HealthConfig,
    pub load: Option<LoadConfig>,
    pub backends: Vec<BackendConfig>,
}

impl PoolConfig {
    /// How long a newly active backend ramps its weight: the pool's
    /// `slow_start_ms` if set (agents or not), else `[pool.load]
    /// slow_start_ms`, else no ramp.
    pub fn ramp_ms(&self) -> u64 {
        self.slow_start_ms
            .or(self.load.as_ref().map(|l| l.slow_start_ms))
            .unwrap_or(0)
    }

    /// The VIP as the maps key it.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: self.vip,
            protocol: self.protocol,
        }
    }

    /// A backend's service address as the reply map keys it.
    pub fn backend_endpoint(&self, b: &BackendConfig) -> Endpoint {
        Endpoint {
            addr: b.addr,
            protocol: self.protocol,
        }
    }

    pub fn backend(&self, name: &str) -> Option<&BackendConfig> {
        self.backends.iter().find(|b| b.name == name)
    }

    pub fn primaries(&self) -> impl Iterator<Item = &BackendConfig> {
        self.backends.iter().filter(|b| b.role == Role::Primary)
    }

    pub fn spares(&self) -> impl Iterator<Item = &BackendConfig> {
        self.backends.iter().filter(|b| b.role == Role::Spare)
    }
}

impl Config {
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    pub fn total_backends(&self) -> usize {
        self.pools.iter().map(|p| p.backends.len()).sum()
    }
}

/// For `kind = "http"`, `path` and `expect_status` are always `Some` after
/// parsing (defaults filled in), otherwise `None`; likewise `payload` for
/// `kind = "udp"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthConfig {
    pub kind: HealthKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    pub path: Option<String>,
    pub expect_status: Option<u16>,
    /// Probe this port instead of the backend's (any kind): a UDP service
    /// is often checked over TCP or HTTP on a side port.
    pub port: Option<u16>,
    /// What a `udp` probe sends (may be empty: a zero-length datagram).
    pub payload: Option<String>,
}

impl HealthConfig {
    /// Where a backend at `addr` is probed: its address, on `port` if set.
    pub fn target(&self, addr: SocketAddr) -> SocketAddr {
        match self.port {
            Some(p) => SocketAddr::new(addr.ip(), p),
            None => addr,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: HealthKind::Tcp,
            interval_ms: 500,
            timeout_ms: 300,
            rise: 2,
            fall: 3,
            path: None,
            expect_status: None,
            port: None,
            payload: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Factors {
    #[serde(default)]
    pub cpu: f64,
    #[serde(default)]
    pub mem: f64,
    #[serde(default)]
    pub disk: f64,
    #[serde(default)]
    pub net: f64,
}

impl Default for Factors {
    fn default() -> Self {
        Factors {
            cpu: 0.4,
            mem: 0.2,
            disk: 0.1,
            net: 0.3,
        }
    }
}

impl Factors {
    pub fn sum(&self) -> f64 {
        self.cpu + self.mem + self.disk + self.net
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoadConfig {
    pub agent_port: u16,
    pub interval_ms: u64,
    pub factors: Factors,
    pub high_watermark: f64,
    pub low_watermark: f64,
    pub scale_up_after_ms: u64,
    pub scale_down_after_ms: u64,
    pub slow_start_ms: u64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            agent_port: 9777,
            interval_ms: 1000,
            factors: Factors::default(),
            high_watermark: 0.80,
            low_watermark: 0.30,
            scale_up_after_ms: 3000,
            scale_down_after_ms: 30000,
            slow_start_ms: 5000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub role: Role,
}
