//! The operator's TOML configuration: its schema, its defaults and its
//! validation.
//!
//! Parsing happens in two layers. A private `raw` layer mirrors the file
//! exactly, with `deny_unknown_fields` everywhere and a source span on every
//! value that validation may need to point at; [`parse`] validates it and
//! converts it into the public [`Config`], which holds plain values only, so
//! two configs compare equal when they mean the same thing (reload diffs them)
//! wherever their keys sit in the file. Every error carries `FILE:LINE:COL`.
//!
//! Nothing here does I/O except [`load`] (which reads the file) and
//! [`check_interfaces_exist`] (which looks at `/sys/class/net`, and so runs at
//! `xdplb run`, never at `xdplb check` on another host).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::path::{Path, PathBuf};

use lb_common::limits::{DEFAULT_FLOW_TABLE_SIZE, DEFAULT_RING_SIZE, MAX_BACKENDS, MAX_VIPS};
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
/// `IFNAMSIZ - 1`: the kernel rejects longer interface names.
const MAX_IFNAME_LEN: usize = 15;
/// `flow_idle_ms` of a `udp` pool when unset: as IPVS's and Cilium's UDP
/// timeouts, long enough for a DNS retry or a media stream's pauses.
pub const DEFAULT_UDP_FLOW_IDLE_MS: u32 = 30_000;
/// The shortest non-zero `flow_idle_ms`: a flow entry's clock is only
/// rewritten once a second (`lb_common::limits::LAST_SEEN_RESOLUTION_NS`),
/// so a shorter idle time could not be told from a live flow.
pub const MIN_FLOW_IDLE_MS: u32 = 1000;
/// The largest UDP health-check payload: what one IPv4 UDP datagram
/// carries (65535 − 20 − 8).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {reason}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("dataplane.interfaces: no network interface {name:?} on this host")]
    MissingInterface { name: String },
    /// A config with every pool commented out (the packaged one) checks,
    /// but there is nothing to run.
    #[error("nothing to balance: no [[pool]] defined (uncomment or add one)")]
    NoPools,
    #[error(
        "pool {pool:?} is dsr but backend {backend:?} ({addr}) is on no segment of {ifaces}: \
         dsr sends frames by MAC, so a backend must share a subnet with an interface \
         (use mode = \"tunnel\" for a routed backend)"
    )]
    DsrNotAttached {
        pool: String,
        backend: String,
        addr: IpAddr,
        ifaces: String,
    },
    #[error(
        "pool {pool:?} is tunnel but backend {backend:?} ({addr}) {route}: the program \
         sends the outer packet itself, out of one of {ifaces} (the kernel would drop it \
         as martian: its source is this host's); route the backend through one of them"
    )]
    TunnelNotRouted {
        pool: String,
        backend: String,
        addr: IpAddr,
        /// What the kernel's route lookup said: "is routed out of eth9",
        /// "has no route".
        route: String,
        ifaces: String,
    },
}

impl ConfigError {
    /// A host check's error (an interface missing here, a dsr backend on no
    /// segment, a tunnel backend routed elsewhere) at the place in `path`
    /// it is about — the interface's name or the backend's `addr` — as a
    /// parse error names it. The checks run on the validated config, which
    /// keeps no positions, so the file is read again: this is the error
    /// path only. Any other error, or a file that no longer says so, is
    /// returned as it is.
    pub fn placed(self, path: &Path) -> ConfigError {
        let Ok(text) = std::fs::read_to_string(path) else {
            return self;
        };
        let Ok(raw) = toml::from_str::<raw::Config>(&text) else {
            return self;
        };
        let span = match &self {
            ConfigError::MissingInterface { name } => raw
                .dataplane
                .interfaces
                .get_ref()
                .iter()
                .find(|i| i.get_ref() == name)
                .map(|i| i.span()),
            ConfigError::DsrNotAttached { pool, backend, .. }
            | ConfigError::TunnelNotRouted { pool, backend, .. } => raw
                .pool
                .iter()
                .find(|p| p.name.get_ref() == pool)
                .and_then(|p| p.backend.iter().find(|b| b.name.get_ref() == backend))
                .map(|b| b.addr.span()),
            _ => None,
        };
        match span {
            Some(span) => Source {
                file: path,
                text: &text,
            }
            .err(span, self.to_string()),
            None => self,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native if the driver supports it, else generic (skb) mode.
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
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

/// "IPv4" or "IPv6".
fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
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

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    pub control: ControlConfig,
    /// `[announce]`: VIPs announced to routers through a BGP speaker.
    pub announce: Option<AnnounceConfig>,
    pub pools: Vec<PoolConfig>,
}

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
    pub tunnel_source_v4: Option<Ipv4Addr>,
    /// Outer source of IPv6 `tunnel` pools' IPv6-in-IPv6 packets.
    pub tunnel_source_v6: Option<Ipv6Addr>,
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

mod raw {
    //! The file as written, with spans. Optional keys are `Option` here so
    //! validation can tell "absent, defaulted" from "given" and point at the
    //! given value.
    use super::*;
    use toml::Spanned;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Config {
        pub dataplane: Dataplane,
        pub control: Option<Control>,
        pub announce: Option<Announce>,
        #[serde(default)]
        pub pool: Vec<Pool>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Announce {
        pub speaker: Option<Spanned<String>>,
        pub control_socket: Option<Spanned<PathBuf>>,
        pub routes_file: Option<Spanned<PathBuf>>,
        pub hold_ms: Option<Spanned<u64>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Dataplane {
        pub interfaces: Spanned<Vec<Spanned<String>>>,
        pub xdp_mode: Option<XdpMode>,
        pub pin_path: Option<PathBuf>,
        pub flow_table_size: Option<Spanned<u32>>,
        pub ring_size: Option<Spanned<u32>>,
        pub max_flow_inserts_per_sec: Option<u32>,
        pub tunnel_source: Option<Spanned<Vec<std::net::IpAddr>>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Control {
        pub admin_socket: Option<PathBuf>,
        pub metrics_listen: Option<Spanned<String>>,
        pub state_file: Option<PathBuf>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Pool {
        pub name: Spanned<String>,
        pub vip: Spanned<SocketAddr>,
        pub protocol: Option<Protocol>,
        pub flow_idle_ms: Option<Spanned<u32>>,
        pub mode: Option<Spanned<Mode>>,
        pub min_active: Option<Spanned<u32>>,
        /// A string checked by [`super::on_empty`], so an unknown value or a
        /// wrong type gets a message naming the key and the choices.
        pub on_empty: Option<Spanned<String>>,
        pub on_down: Option<OnDown>,
        pub slow_start_ms: Option<u64>,
        pub health: Option<Health>,
        pub load: Option<Load>,
        #[serde(default)]
        pub backend: Vec<Backend>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Health {
        pub kind: Option<HealthKind>,
        pub interval_ms: Option<Spanned<u64>>,
        pub timeout_ms: Option<Spanned<u64>>,
        pub rise: Option<Spanned<u32>>,
        pub fall: Option<Spanned<u32>>,
        pub path: Option<Spanned<String>>,
        pub expect_status: Option<Spanned<u16>>,
        pub port: Option<Spanned<u16>>,
        pub payload: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Load {
        pub agent_port: Option<Spanned<u16>>,
        pub interval_ms: Option<Spanned<u64>>,
        pub factors: Option<Spanned<Factors>>,
        pub high_watermark: Option<Spanned<f64>>,
        pub low_watermark: Option<Spanned<f64>>,
        pub scale_up_after_ms: Option<u64>,
        pub scale_down_after_ms: Option<u64>,
        pub slow_start_ms: Option<u64>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Backend {
        pub name: Spanned<String>,
        pub addr: Spanned<SocketAddr>,
        pub weight: Option<Spanned<u32>>,
        pub role: Option<Role>,
    }
}

/// Reads and parses the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and validates `text`; `path_for_messages` only names the file in
/// errors.
pub fn parse(path_for_messages: &Path, text: &str) -> Result<Config, ConfigError> {
    let src = Source {
        file: path_for_messages,
        text,
    };
    let raw: raw::Config = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        src.err(span, e.message().trim_end().replace('\n', " "))
    })?;
    convert(&src, raw)
}

/// Checks that every configured interface exists on this host. Kept apart
/// from [`parse`] so `xdplb check` validates a config meant for another host.
///
/// Asks the kernel in this process's network namespace (`if_nametoindex`)
/// rather than `/sys/class/net`, which shows the namespace sysfs was
/// mounted for: under `nsenter --net` those differ.
///
/// Also refuses a config without pools: `check` accepts one (the packaged
/// config ships its pools commented out), `run` has nothing to do with it.
pub fn check_interfaces_exist(cfg: &Config) -> Result<(), ConfigError> {
    if cfg.pools.is_empty() {
        return Err(ConfigError::NoPools);
    }
    for name in &cfg.dataplane.interfaces {
        let c = std::ffi::CString::new(name.as_bytes()).unwrap_or_default();
        // SAFETY: a valid NUL-terminated string; no other side effects.
        if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
            return Err(ConfigError::MissingInterface { name: name.clone() });
        }
    }
    check_dsr_attached(cfg)?;
    check_tunnel_routed(cfg)
}

/// What `xdplb check` can verify of this host when it is the gateway (all
/// the configured interfaces exist here): that every `dsr` backend is on a
/// segment of one of them, and every `tunnel` backend routed out of one. Elsewhere it checks nothing, so a config can be
/// checked on another host.
pub fn check_host_if_gateway(cfg: &Config) -> Result<(), ConfigError> {
    match check_interfaces_exist(cfg) {
        // No pools: nothing to check here (`run` refuses it).
        Err(ConfigError::MissingInterface { .. } | ConfigError::NoPools) => Ok(()),
        other => other,
    }
}

/// Every `dsr` backend shares a subnet with one of the configured
/// interfaces (their IPv4 and IPv6 addresses and prefixes, read from the
/// kernel).
fn check_dsr_attached(cfg: &Config) -> Result<(), ConfigError> {
    if cfg.pools.iter().all(|p| p.mode != Mode::Dsr) {
        return Ok(());
    }
    let nets = interface_subnets(&cfg.dataplane.interfaces);
    for pool in cfg.pools.iter().filter(|p| p.mode == Mode::Dsr) {
        for b in &pool.backends {
            let a = b.addr.ip();
            if !nets.iter().any(|&(net, mask)| same_subnet(a, net, mask)) {
                return Err(ConfigError::DsrNotAttached {
                    pool: pool.name.clone(),
                    backend: b.name.clone(),
                    addr: a,
                    ifaces: cfg.dataplane.interfaces.join(", "),
                });
            }
        }
    }
    Ok(())
}

/// Every `tunnel` backend is routed out of one of the configured interfaces:
/// the program redirects the outer packet there itself, and can hand it to
/// nothing else (see lb-ebpf's `direct`).
fn check_tunnel_routed(cfg: &Config) -> Result<(), ConfigError> {
    let ours: Vec<u32> = cfg
        .dataplane
        .interfaces
        .iter()
        .map(|name| {
            let c = std::ffi::CString::new(name.as_bytes()).unwrap_or_default();
            // SAFETY: a valid NUL-terminated string; no other side effects.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        })
        .collect();
    for pool in cfg.pools.iter().filter(|p| p.mode == Mode::Tunnel) {
        for b in &pool.backends {
            let a = b.addr.ip();
            let route = match route_oif(a) {
                Ok(Some(oif)) if ours.contains(&oif) => continue,
                Ok(Some(oif)) => format!("is routed out of {}", if_name(oif)),
                Ok(None) => "has no route".to_string(),
                Err(e) => format!("has a route this host would not tell ({e})"),
            };
            return Err(ConfigError::TunnelNotRouted {
                pool: pool.name.clone(),
                backend: b.name.clone(),
                addr: a,
                route,
                ifaces: cfg.dataplane.interfaces.join(", "),
            });
        }
    }
    Ok(())
}

/// The interface the kernel routes `dst` out of (one RTM_GETROUTE, as
/// `ip route get`), or None when it has no route. Routing by source is not
/// asked about, as the data plane's lookup does not distinguish it.
fn route_oif(dst: IpAddr) -> std::io::Result<Option<u32>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let (family, addr) = match dst {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    // struct nlmsghdr (16 bytes), struct rtmsg (12), one rtattr: RTA_DST.
    let len = 16 + 12 + 4 + addr.len();
    let mut req = Vec::with_capacity(len);
    req.extend_from_slice(&(len as u32).to_ne_bytes());
    req.extend_from_slice(&libc::RTM_GETROUTE.to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&[0; 8]); // sequence and port id: the kernel's
    req.extend_from_slice(&[family, addr.len() as u8 * 8, 0, 0, 0, 0, 0, 0]);
    req.extend_from_slice(&[0; 4]); // rtm_flags
    req.extend_from_slice(&((4 + addr.len()) as u16).to_ne_bytes());
    req.extend_from_slice(&libc::RTA_DST.to_ne_bytes());
    req.extend_from_slice(&addr);
    let os_err = std::io::Error::last_os_error;
    // SAFETY: plain socket(2); the descriptor is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(os_err());
    }
    // SAFETY: a descriptor just opened, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut buf = [0u8; 4096];
    // SAFETY: both buffers are valid for the lengths given.
    let n = unsafe {
        if libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) < 0 {
            return Err(os_err());
        }
        libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
    };
    let msg = buf
        .get(..usize::try_from(n).map_err(|_| os_err())?)
        .unwrap_or(&[]);
    let u16_at = |i: usize| msg.get(i..i + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    // An error answer (NLMSG_ERROR: ENETUNREACH, EHOSTUNREACH, …) means no
    // usable route.
    if u16_at(4) != Some(libc::RTM_NEWROUTE) {
        return Ok(None);
    }
    let mut at = 28;
    while let (Some(alen), Some(kind)) = (u16_at(at), u16_at(at + 2)) {
        if kind == libc::RTA_OIF {
            let oif = msg
                .get(at + 4..at + 8)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            return Ok(oif);
        }
        if alen < 4 {
            break;
        }
        at += (alen as usize + 3) & !3;
    }
    Ok(None)
}

/// An interface's name by index, or the index when it has none.
fn if_name(index: u32) -> String {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the IF_NAMESIZE bytes the call may write.
    let p = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
    if p.is_null() {
        return format!("interface {index}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Whether `a` is on the subnet of interface address `net` with netmask
/// `mask` (all three of one family; a mixed pair never matches).
fn same_subnet(a: IpAddr, net: IpAddr, mask: IpAddr) -> bool {
    match (a, net, mask) {
        (IpAddr::V4(a), IpAddr::V4(n), IpAddr::V4(m)) => {
            let (a, n, m) = (u32::from(a), u32::from(n), u32::from(m));
            a & m == n & m
        }
        (IpAddr::V6(a), IpAddr::V6(n), IpAddr::V6(m)) => {
            let (a, n, m) = (u128::from(a), u128::from(n), u128::from(m));
            a & m == n & m
        }
        _ => false,
    }
}

/// (address, netmask) of each IPv4 and IPv6 address on `ifaces`.
fn interface_subnets(ifaces: &[String]) -> Vec<(IpAddr, IpAddr)> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned; its name is a C
        // string; a non-null sockaddr of family AF_INET is a sockaddr_in,
        // of AF_INET6 a sockaddr_in6, and its netmask has the same family.
        unsafe {
            let ifa = &*cur;
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
            if !ifa.ifa_addr.is_null()
                && !ifa.ifa_netmask.is_null()
                && ifaces.iter().any(|i| *i == name)
            {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let v4 = |sa: *const libc::sockaddr| {
                            let raw = (*(sa as *const libc::sockaddr_in)).sin_addr.s_addr;
                            IpAddr::V4(Ipv4Addr::from(u32::from_be(raw)))
                        };
                        out.push((v4(ifa.ifa_addr), v4(ifa.ifa_netmask)));
                    }
                    libc::AF_INET6 => {
                        let v6 = |sa: *const libc::sockaddr| {
                            let raw = (*(sa as *const libc::sockaddr_in6)).sin6_addr.s6_addr;
                            IpAddr::V6(Ipv6Addr::from(raw))
                        };
                        out.push((v6(ifa.ifa_addr), v6(ifa.ifa_netmask)));
                    }
                    _ => {}
                }
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: the list getifaddrs allocated, freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// DSR rewrites only the destination MAC, so the backend sees the packet
/// addressed to the VIP's port: a backend listening on another port would
/// never see it. Returns the first offending backend's name.
pub fn check_dsr_ports(pool: &PoolConfig) -> Result<(), String> {
    match pool
        .backends
        .iter()
        .find(|b| b.addr.port() != pool.vip.port())
    {
        Some(b) => Err(b.name.clone()),
        None => Ok(()),
    }
}

struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.line_col(span.start).0
    }

    /// The value given, which must not be zero, or `default` when absent.
    fn nonzero<T: Copy + Default + PartialEq>(
        &self,
        value: &Option<toml::Spanned<T>>,
        default: T,
        reason: &str,
    ) -> Result<T, ConfigError> {
        match value {
            Some(v) if *v.get_ref() == T::default() => Err(self.err(v.span(), reason)),
            Some(v) => Ok(*v.get_ref()),
            None => Ok(default),
        }
    }

    fn err(&self, span: Range<usize>, reason: impl Into<String>) -> ConfigError {
        let (line, column) = self.line_col(span.start);
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            reason: reason.into(),
        }
    }
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    let mut d = 2u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

fn convert(src: &Source, raw: raw::Config) -> Result<Config, ConfigError> {
    let dataplane = convert_dataplane(src, &raw)?;
    let control = convert_control(src, raw.control)?;
    let announce = raw.announce.map(|a| convert_announce(src, a)).transpose()?;

    if raw.pool.len() > MAX_VIPS as usize {
        let extra = &raw.pool[MAX_VIPS as usize];
        return Err(src.err(
            extra.name.span(),
            format!(
                "too many pools: {} defined, the data plane holds {MAX_VIPS} VIPs",
                raw.pool.len()
            ),
        ));
    }

    let mut pools: Vec<PoolConfig> = Vec::with_capacity(raw.pool.len());
    let mut pool_spans: Vec<(Range<usize>, Range<usize>)> = Vec::new();
    let mut total_backends = 0usize;
    let mut backend_addrs: std::collections::HashMap<(SocketAddr, Protocol), (String, usize)> =
        std::collections::HashMap::new();
    for rp in raw.pool {
        let name_span = rp.name.span();
        let vip_span = rp.vip.span();
        if let Some(i) = pools.iter().position(|p| p.name == *rp.name.get_ref()) {
            return Err(src.err(
                name_span,
                format!(
                    "duplicate pool name {:?} (first at line {})",
                    rp.name.get_ref(),
                    src.line(&pool_spans[i].0)
                ),
            ));
        }
        let protocol = rp.protocol.unwrap_or_default();
        if let Some(i) = pools
            .iter()
            .position(|p| p.vip == *rp.vip.get_ref() && p.protocol == protocol)
        {
            return Err(src.err(
                vip_span.clone(),
                format!(
                    "duplicate vip {} ({protocol}; also used by pool {:?} at line {})",
                    rp.vip.get_ref(),
                    pools[i].name,
                    src.line(&pool_spans[i].1)
                ),
            ));
        }
        // The data plane recognises a backend's replies by its address,
        // port and protocol alone (lb_common::ReplyEntry), so one such
        // endpoint serves one pool.
        for rb in &rp.backend {
            let addr = *rb.addr.get_ref();
            if let Some((pool, line)) = backend_addrs.get(&(addr, protocol)) {
                return Err(src.err(
                    rb.addr.span(),
                    format!(
                        "backend address {addr} is already used in pool {pool:?} at line {line}: \
                         in nat mode a backend address serves one pool"
                    ),
                ));
            }
            backend_addrs.insert(
                (addr, protocol),
                (rp.name.get_ref().clone(), src.line(&rb.addr.span())),
            );
        }
        total_backends += rp.backend.len();
        if total_backends > MAX_BACKENDS as usize {
            return Err(src.err(
                name_span,
                format!("too many backends: more than {MAX_BACKENDS} across all pools (the data plane's limit)"),
            ));
        }
        let pool = convert_pool(src, rp, &dataplane.0)?;
        pools.push(pool);
        pool_spans.push((name_span, vip_span));
    }

    let (largest, largest_at) = pools
        .iter()
        .zip(&pool_spans)
        .map(|(p, s)| (p.backends.len() as u32, s.0.clone()))
        .max_by_key(|(n, _)| *n)
        .unwrap_or((0, 0..0));
    let needed = largest.saturating_mul(RING_ENTRIES_PER_BACKEND);
    if dataplane.0.ring_size < needed {
        let span = dataplane.1.clone().unwrap_or(largest_at);
        return Err(src.err(
            span,
            format!(
                "ring_size {} is smaller than {RING_ENTRIES_PER_BACKEND} × {largest} backends of the largest pool (need at least {needed}; pick a prime)",
                dataplane.0.ring_size
            ),
        ));
    }

    Ok(Config {
        dataplane: dataplane.0,
        control,
        announce,
        pools,
    })
}

fn convert_announce(src: &Source, a: raw::Announce) -> Result<AnnounceConfig, ConfigError> {
    let speaker = match &a.speaker {
        None => Speaker::Bird,
        Some(s) if s.get_ref() == "bird" => Speaker::Bird,
        Some(s) => {
            return Err(src.err(
                s.span(),
                format!(
                    "speaker {:?} is not supported: only \"bird\" (BIRD 2, driven through its control socket)",
                    s.get_ref()
                ),
            ))
        }
    };
    let path = |p: Option<toml::Spanned<PathBuf>>, key: &str, default: &str| match p {
        None => Ok(PathBuf::from(default)),
        Some(p) if p.get_ref().is_absolute() => Ok(p.into_inner()),
        Some(p) => Err(src.err(
            p.span(),
            format!(
                "{key} {:?} must be an absolute path",
                p.get_ref().display().to_string()
            ),
        )),
    };
    let control_socket = path(a.control_socket, "control_socket", DEFAULT_BIRD_SOCKET)?;
    let routes_file = path(a.routes_file, "routes_file", DEFAULT_ROUTES_FILE)?;
    let hold_ms = match a.hold_ms {
        None => DEFAULT_HOLD_MS,
        Some(h) if HOLD_MS_RANGE.contains(h.get_ref()) => h.into_inner(),
        Some(h) => {
            return Err(src.err(
                h.span(),
                format!(
                    "hold_ms {} is out of range {}..={}: it must outlast a restart and not keep \
                     a dead controller's VIPs announced for long",
                    h.get_ref(),
                    HOLD_MS_RANGE.start(),
                    HOLD_MS_RANGE.end()
                ),
            ))
        }
    };
    Ok(AnnounceConfig {
        speaker,
        control_socket,
        routes_file,
        hold_ms,
    })
}

/// Returns the dataplane section and the span of `ring_size` if given.
fn convert_dataplane(
    src: &Source,
    raw: &raw::Config,
) -> Result<(DataplaneConfig, Option<Range<usize>>), ConfigError> {
    let d = &raw.dataplane;
    let ifaces = d.interfaces.get_ref();
    if ifaces.is_empty() {
        return Err(src.err(
            d.interfaces.span(),
            "interfaces must name at least one interface",
        ));
    }
    let mut interfaces: Vec<String> = Vec::new();
    for (i, name) in ifaces.iter().enumerate() {
        let n = name.get_ref();
        if n.is_empty() || n.len() > MAX_IFNAME_LEN || n.contains(['/', ' ']) {
            return Err(src.err(
                name.span(),
                format!("invalid interface name {n:?} (1..={MAX_IFNAME_LEN} characters, no '/' or space)"),
            ));
        }
        if let Some(first) = ifaces[..i].iter().find(|f| f.get_ref() == n) {
            return Err(src.err(
                name.span(),
                format!(
                    "duplicate interface {n:?} (first at line {})",
                    src.line(&first.span())
                ),
            ));
        }
        interfaces.push(n.clone());
    }
    let flow_table_size = src.nonzero(
        &d.flow_table_size,
        DEFAULT_FLOW_TABLE_SIZE,
        "flow_table_size must be at least 1",
    )?;
    let ring_size = match &d.ring_size {
        Some(s) => {
            let r = *s.get_ref();
            if r > MAX_RING_SIZE {
                return Err(src.err(
                    s.span(),
                    format!("ring_size {r} is larger than the maximum {MAX_RING_SIZE}"),
                ));
            }
            if !is_prime(r) {
                return Err(src.err(
                    s.span(),
                    format!("ring_size {r} is not prime (Maglev needs a prime ring; e.g. 65537)"),
                ));
            }
            r
        }
        None => DEFAULT_RING_SIZE,
    };
    let mut tunnel_source_v4 = None;
    let mut tunnel_source_v6 = None;
    if let Some(ts) = &d.tunnel_source {
        for a in ts.get_ref() {
            let dup = match a {
                IpAddr::V4(a) => tunnel_source_v4.replace(*a).is_some(),
                IpAddr::V6(a) => tunnel_source_v6.replace(*a).is_some(),
            };
            if dup {
                return Err(src.err(ts.span(), "tunnel_source takes one address per family"));
            }
            if a.is_unspecified() || a.is_multicast() || is_v4_mapped(*a) {
                return Err(src.err(
                    ts.span(),
                    format!("tunnel_source {a} is not a host address"),
                ));
            }
        }
    }
    Ok((
        DataplaneConfig {
            interfaces,
            xdp_mode: d.xdp_mode.unwrap_or_default(),
            pin_path: d
                .pin_path
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_PATH)),
            flow_table_size,
            ring_size,
            max_flow_inserts_per_sec: d
                .max_flow_inserts_per_sec
                .unwrap_or(lb_common::limits::DEFAULT_MAX_FLOW_INSERTS_PER_SEC),
            tunnel_source_v4,
            tunnel_source_v6,
        },
        d.ring_size.as_ref().map(|s| s.span()),
    ))
}

fn convert_control(src: &Source, raw: Option<raw::Control>) -> Result<ControlConfig, ConfigError> {
    let mut out = ControlConfig::default();
    let Some(c) = raw else {
        return Ok(out);
    };
    if let Some(p) = c.admin_socket {
        out.admin_socket = p;
    }
    if let Some(p) = c.state_file {
        out.state_file = (!p.as_os_str().is_empty()).then_some(p);
    }
    if let Some(m) = c.metrics_listen {
        out.metrics_listen = if m.get_ref().is_empty() {
            None
        } else {
            Some(m.get_ref().parse().map_err(|_| {
                src.err(
                    m.span(),
                    format!(
                        "metrics_listen {:?} is not an address:port (or \"\" to disable)",
                        m.get_ref()
                    ),
                )
            })?)
        };
    }
    Ok(out)
}

/// An IPv4 address written as IPv6 (`::ffff:198.18.1.1`): the data plane
/// would never see such a packet, its IPv4 form is meant.
fn is_v4_mapped(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

/// What is wrong with `addr` as a VIP or backend address, if anything.
fn bad_endpoint(addr: SocketAddr) -> Option<&'static str> {
    let ip = addr.ip();
    if ip.is_unspecified() || addr.port() == 0 {
        Some("needs a specific address and a non-zero port")
    } else if ip.is_multicast() {
        Some("is a multicast address")
    } else if is_v4_mapped(ip) {
        Some("is an IPv4-mapped IPv6 address (write the IPv4 address)")
    } else {
        None
    }
}

fn convert_pool(
    src: &Source,
    rp: raw::Pool,
    dataplane: &DataplaneConfig,
) -> Result<PoolConfig, ConfigError> {
    let name_span = rp.name.span();
    let name = rp.name.into_inner();
    if name.trim().is_empty() {
        return Err(src.err(name_span, "pool name must not be empty"));
    }
    if name.len() > lb_common::NAME_MAX {
        return Err(src.err(
            name_span,
            format!("pool name is longer than {} bytes", lb_common::NAME_MAX),
        ));
    }
    let vip = *rp.vip.get_ref();
    if let Some(why) = bad_endpoint(vip) {
        return Err(src.err(rp.vip.span(), format!("vip {vip} {why}")));
    }
    let protocol = rp.protocol.unwrap_or_default();
    let flow_idle_ms = match &rp.flow_idle_ms {
        Some(v) if (1..MIN_FLOW_IDLE_MS).contains(v.get_ref()) => {
            return Err(src.err(
                v.span(),
                format!(
                    "flow_idle_ms {} is below {MIN_FLOW_IDLE_MS}: the flow table's clock has \
                     1 s resolution (0 = flows never idle out)",
                    v.get_ref()
                ),
            ))
        }
        Some(v) => *v.get_ref(),
        None => protocol.default_flow_idle_ms(),
    };
    let mode = rp.mode.as_ref().map_or(Mode::Nat, |m| *m.get_ref());

    if rp.backend.is_empty() {
        return Err(src.err(name_span, format!("pool {name:?} has no [[pool.backend]]")));
    }
    let mut backends: Vec<BackendConfig> = Vec::with_capacity(rp.backend.len());
    let mut backend_lines: Vec<usize> = Vec::new();
    for rb in rp.backend {
        let bname = rb.name.get_ref();
        if bname.trim().is_empty() {
            return Err(src.err(rb.name.span(), "backend name must not be empty"));
        }
        if bname.len() > lb_common::NAME_MAX {
            return Err(src.err(
                rb.name.span(),
                format!("backend name is longer than {} bytes", lb_common::NAME_MAX),
            ));
        }
        if let Some(i) = backends.iter().position(|b| b.name == *bname) {
            return Err(src.err(
                rb.name.span(),
                format!(
                    "duplicate backend name {bname:?} in pool {name:?} (first at line {})",
                    backend_lines[i]
                ),
            ));
        }
        let addr = *rb.addr.get_ref();
        if let Some(why) = bad_endpoint(addr) {
            return Err(src.err(rb.addr.span(), format!("backend addr {addr} {why}")));
        }
        if addr.is_ipv4() != vip.is_ipv4() {
            return Err(src.err(
                rb.addr.span(),
                format!(
                    "backend {bname:?} is {} ({addr}) but pool {name:?} is {} (vip {vip}): \
                     a pool is one address family",
                    family(addr.ip()),
                    family(vip.ip())
                ),
            ));
        }
        let weight = match &rb.weight {
            Some(w) if !(MIN_WEIGHT..=MAX_WEIGHT).contains(w.get_ref()) => {
                return Err(src.err(
                    w.span(),
                    format!(
                        "weight {} is out of range {MIN_WEIGHT}..={MAX_WEIGHT}",
                        w.get_ref()
                    ),
                ))
            }
            Some(w) => *w.get_ref(),
            None => DEFAULT_WEIGHT,
        };
        backend_lines.push(src.line(&rb.name.span()));
        backends.push(BackendConfig {
            name: bname.clone(),
            addr,
            weight,
            role: rb.role.unwrap_or_default(),
        });
    }

    let min_active = match &rp.min_active {
        Some(m) if *m.get_ref() as usize > backends.len() => {
            return Err(src.err(
                m.span(),
                format!(
                    "min_active {} is more than the {} backends of pool {name:?}",
                    m.get_ref(),
                    backends.len()
                ),
            ))
        }
        Some(m) => *m.get_ref(),
        None => DEFAULT_MIN_ACTIVE.min(backends.len() as u32),
    };

    let health = convert_health(src, rp.health, &name_span)?;
    let load = rp
        .load
        .map(|l| convert_load(src, l, &name_span))
        .transpose()?;

    let pool = PoolConfig {
        name,
        vip,
        protocol,
        flow_idle_ms,
        mode,
        min_active,
        on_empty: on_empty(src, rp.on_empty.as_ref())?,
        on_down: rp.on_down.unwrap_or_default(),
        slow_start_ms: rp.slow_start_ms,
        health,
        load,
        backends,
    };
    if pool.mode != Mode::Nat {
        if let Err(b) = check_dsr_ports(&pool) {
            let mode = if pool.mode == Mode::Dsr {
                "dsr"
            } else {
                "tunnel"
            };
            return Err(src.err(
                name_span,
                format!(
                    "pool {:?} is {mode} but backend {b:?} listens on another port than the vip ({}): {mode} cannot rewrite ports (the backend receives the packet addressed to the vip)",
                    pool.name,
                    pool.vip.port()
                ),
            ));
        }
    }
    let has_source = match pool.vip {
        SocketAddr::V4(_) => dataplane.tunnel_source_v4.is_some(),
        SocketAddr::V6(_) => dataplane.tunnel_source_v6.is_some(),
    };
    if pool.mode == Mode::Tunnel && !has_source {
        let span = rp.mode.as_ref().map_or(name_span, |m| m.span());
        return Err(src.err(
            span,
            format!(
                "pool {:?} is tunnel but [dataplane] has no {} tunnel_source (the outer source address, one of this host's)",
                pool.name,
                family(pool.vip.ip())
            ),
        ));
    }
    Ok(pool)
}

fn on_empty(src: &Source, raw: Option<&toml::Spanned<String>>) -> Result<OnEmpty, ConfigError> {
    let Some(v) = raw else {
        return Ok(OnEmpty::default());
    };
    match v.get_ref().as_str() {
        "reject" => Ok(OnEmpty::Reject),
        "drop" => Ok(OnEmpty::Drop),
        other => Err(src.err(
            v.span(),
            format!("on_empty {other:?} is not one of \"reject\" (answer with a RST from the VIP) or \"drop\""),
        )),
    }
}

fn convert_health(
    src: &Source,
    raw: Option<raw::Health>,
    pool_span: &Range<usize>,
) -> Result<HealthConfig, ConfigError> {
    let mut h = HealthConfig::default();
    let Some(r) = raw else {
        return Ok(h);
    };
    h.kind = r.kind.unwrap_or_default();
    h.rise = src.nonzero(&r.rise, h.rise, "rise must be at least 1")?;
    h.fall = src.nonzero(&r.fall, h.fall, "fall must be at least 1")?;
    if let Some(i) = &r.interval_ms {
        if *i.get_ref() < MIN_HEALTH_INTERVAL_MS {
            return Err(src.err(
                i.span(),
                format!(
                    "interval_ms must be at least {MIN_HEALTH_INTERVAL_MS}: faster probing costs \
                     the gateway and every backend CPU and detects a failure no sooner than \
                     fall × interval_ms anyway"
                ),
            ));
        }
        h.interval_ms = *i.get_ref();
    }
    h.timeout_ms = src.nonzero(&r.timeout_ms, h.timeout_ms, "timeout_ms must be at least 1")?;
    if h.timeout_ms >= h.interval_ms {
        let span = r
            .timeout_ms
            .as_ref()
            .or(r.interval_ms.as_ref())
            .map_or(pool_span.clone(), |s| s.span());
        return Err(src.err(
            span,
            format!(
                "health timeout_ms ({}) must be less than interval_ms ({}): a probe must end before the next starts",
                h.timeout_ms, h.interval_ms
            ),
        ));
    }
    if let Some(p) = &r.port {
        if *p.get_ref() == 0 {
            return Err(src.err(p.span(), "health port must not be 0"));
        }
        h.port = Some(*p.get_ref());
    }
    if h.kind != HealthKind::Http {
        if let Some(p) = &r.path {
            return Err(src.err(p.span(), "path applies only to kind = \"http\""));
        }
        if let Some(s) = &r.expect_status {
            return Err(src.err(s.span(), "expect_status applies only to kind = \"http\""));
        }
    }
    if h.kind != HealthKind::Udp {
        if let Some(p) = &r.payload {
            return Err(src.err(p.span(), "payload applies only to kind = \"udp\""));
        }
    }
    match h.kind {
        HealthKind::Tcp => {}
        HealthKind::Udp => {
            let payload = r
                .payload
                .as_ref()
                .map_or(String::new(), |p| p.get_ref().clone());
            if payload.len() > MAX_UDP_PAYLOAD {
                let span = r.payload.as_ref().map_or(pool_span.clone(), |p| p.span());
                return Err(src.err(
                    span,
                    format!(
                        "payload is {} bytes; a UDP datagram carries at most {MAX_UDP_PAYLOAD}",
                        payload.len()
                    ),
                ));
            }
            h.payload = Some(payload);
        }
        HealthKind::Http => {
            let path = match &r.path {
                Some(p) => {
                    let v = p.get_ref();
                    // The path goes verbatim into the request line.
                    if !v.starts_with('/') || v.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return Err(src.err(
                            p.span(),
                            format!("http path {v:?} must start with '/' and contain no spaces or control characters"),
                        ));
                    }
                    v.clone()
                }
                None => DEFAULT_HTTP_PATH.to_string(),
            };
            let status = match &r.expect_status {
                Some(s) if !(100..=599).contains(s.get_ref()) => {
                    return Err(src.err(
                        s.span(),
                        format!(
                            "expect_status {} is not an HTTP status (100..=599)",
                            s.get_ref()
                        ),
                    ))
                }
                Some(s) => *s.get_ref(),
                None => DEFAULT_HTTP_STATUS,
            };
            h.path = Some(path);
            h.expect_status = Some(status);
        }
    }
    Ok(h)
}

fn convert_load(
    src: &Source,
    r: raw::Load,
    pool_span: &Range<usize>,
) -> Result<LoadConfig, ConfigError> {
    let mut l = LoadConfig::default();
    l.agent_port = src.nonzero(&r.agent_port, l.agent_port, "agent_port must not be 0")?;
    l.interval_ms = src.nonzero(
        &r.interval_ms,
        l.interval_ms,
        "load interval_ms must be at least 1",
    )?;
    if let Some(f) = &r.factors {
        let fs = *f.get_ref();
        for (key, v) in [
            ("cpu", fs.cpu),
            ("mem", fs.mem),
            ("disk", fs.disk),
            ("net", fs.net),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(src.err(f.span(), format!("factor {key} = {v} is outside [0, 1]")));
            }
        }
        if (fs.sum() - 1.0).abs() > FACTOR_SUM_TOLERANCE {
            return Err(src.err(
                f.span(),
                format!("factors must sum to 1 (they sum to {})", fs.sum()),
            ));
        }
        l.factors = fs;
    }
    for (value, key, slot) in [
        (&r.high_watermark, "high_watermark", &mut l.high_watermark),
        (&r.low_watermark, "low_watermark", &mut l.low_watermark),
    ] {
        if let Some(v) = value {
            if !(0.0..=1.0).contains(v.get_ref()) {
                return Err(src.err(v.span(), format!("{key} {} is outside [0, 1]", v.get_ref())));
            }
            *slot = *v.get_ref();
        }
    }
    if l.low_watermark >= l.high_watermark {
        let span = r
            .low_watermark
            .as_ref()
            .or(r.high_watermark.as_ref())
            .map_or(pool_span.clone(), |s| s.span());
        return Err(src.err(
            span,
            format!(
                "low_watermark ({}) must be below high_watermark ({})",
                l.low_watermark, l.high_watermark
            ),
        ));
    }
    if let Some(v) = r.scale_up_after_ms {
        l.scale_up_after_ms = v;
    }
    if let Some(v) = r.scale_down_after_ms {
        l.scale_down_after_ms = v;
    }
    if let Some(v) = r.slow_start_ms {
        l.slow_start_ms = v;
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = include_str!("../../config/xdplb.toml");
    const MINIMAL: &str = include_str!("../../config/minimal.toml");

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("xdplb.toml"), text)
    }

    /// Parses, expects an error, and checks it names `line` and contains
    /// every fragment.
    fn rejects(text: &str, line: usize, fragments: &[&str]) {
        let err = p(text).expect_err("config should be rejected").to_string();
        assert!(
            err.starts_with(&format!("xdplb.toml:{line}:")),
            "expected line {line}: {err}"
        );
        for f in fragments {
            assert!(err.contains(f), "expected {f:?} in: {err}");
        }
        assert!(!err.contains('\n'), "one line: {err}");
    }

    const HEAD: &str = "[dataplane]\ninterfaces = [\"eth0\"]\n";

    fn pool_with(extra_pool: &str, backends: &str) -> String {
        format!("{HEAD}[[pool]]\nname = \"web\"\nvip = \"198.18.2.10:80\"\n{extra_pool}{backends}")
    }

    const ONE_BACKEND: &str = "[[pool.backend]]\nname = \"web-1\"\naddr = \"198.18.1.11:8080\"\n";

    #[test]
    fn full_example_parses_to_expected_values() {
        let c = p(FULL).unwrap();
        assert_eq!(c.dataplane.interfaces, vec!["eth0", "eth1"]);
        assert_eq!(c.dataplane.xdp_mode, XdpMode::Auto);
        assert_eq!(c.dataplane.pin_path, PathBuf::from("/sys/fs/bpf/xdplb"));
        assert_eq!(c.dataplane.flow_table_size, 1_048_576);
        assert_eq!(c.dataplane.ring_size, 65_537);
        assert_eq!(c.control.admin_socket, PathBuf::from("/run/xdplb.sock"));
        assert_eq!(
            c.control.state_file.as_deref(),
            Some(Path::new("/var/lib/xdplb/state.json"))
        );
        let off = p(&FULL.replace(
            "state_file = \"/var/lib/xdplb/state.json\"",
            "state_file = \"\"",
        ))
        .map(|c| c.control.state_file)
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(off, None);
        assert_eq!(
            c.control.metrics_listen,
            Some("127.0.0.1:9434".parse().unwrap())
        );
        assert_eq!(c.pools.len(), 1);
        let pool = &c.pools[0];
        assert_eq!(pool.name, "web");
        assert_eq!(pool.vip, "198.18.2.10:80".parse().unwrap());
        assert_eq!(pool.mode, Mode::Nat);
        assert_eq!(pool.protocol, Protocol::Tcp);
        assert_eq!(pool.min_active, 3);
        assert_eq!(
            pool.health,
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
        );
        assert_eq!(pool.flow_idle_ms, 0);
        assert_eq!(pool.load, Some(LoadConfig::default()));
        assert_eq!(pool.backends.len(), 4);
        assert_eq!(pool.primaries().count(), 3);
        let spare = pool.backend("web-spare-1").unwrap();
        assert_eq!(spare.role, Role::Spare);
        assert_eq!(spare.weight, 100);
        assert_eq!(spare.addr, "198.18.1.21:8080".parse().unwrap());
        assert_eq!(pool.backend("web-2").unwrap().weight, 100);
    }

    #[test]
    fn minimal_example_gets_defaults() {
        let c = p(MINIMAL).unwrap();
        assert_eq!(c.control, ControlConfig::default());
        assert_eq!(c.dataplane.ring_size, DEFAULT_RING_SIZE);
        let pool = &c.pools[0];
        assert_eq!(pool.min_active, 1);
        assert_eq!(pool.mode, Mode::Nat);
        assert_eq!(pool.health, HealthConfig::default());
        assert_eq!(pool.load, None);
        assert_eq!(
            (pool.on_down, pool.slow_start_ms, pool.ramp_ms()),
            (OnDown::Reset, None, 0)
        );
        assert!(pool.backends.iter().all(|b| b.role == Role::Primary));
    }

    #[test]
    fn on_down_and_pool_slow_start_parse() {
        let c = p(&pool_with(
            "on_down = \"keep\"\nslow_start_ms = 3000\n",
            ONE_BACKEND,
        ))
        .unwrap();
        assert_eq!(c.pools[0].on_down, OnDown::Keep);
        assert_eq!(c.pools[0].ramp_ms(), 3000);
        let err = p(&pool_with("on_down = \"linger\"\n", ONE_BACKEND))
            .unwrap_err()
            .to_string();
        assert!(err.contains("linger") && err.contains("keep"), "{err}");
    }

    #[test]
    fn load_reads_the_file_and_names_it_in_errors() {
        let dir = std::env::temp_dir().join(format!("xdplb-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[dataplane]\ninterfaces = [\"eth0\"]\nbogus = 1\n").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:3:1:", path.display())),
            "{err}"
        );
        let err = load(&dir.join("absent.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn http_defaults() {
        let c = p(&pool_with("[pool.health]\nkind = \"http\"\n", ONE_BACKEND)).unwrap();
        assert_eq!(c.pools[0].health.path.as_deref(), Some("/"));
        assert_eq!(c.pools[0].health.expect_status, Some(200));
    }

    #[test]
    fn metrics_can_be_disabled() {
        let text = format!(
            "{HEAD}[control]\nmetrics_listen = \"\"\n[[pool]]\nname = \"web\"\nvip = \"198.18.2.10:80\"\n{ONE_BACKEND}"
        );
        assert_eq!(p(&text).unwrap().control.metrics_listen, None);
    }

    #[test]
    fn no_pools_checks_but_does_not_run() {
        let cfg = p(HEAD).unwrap();
        assert!(cfg.pools.is_empty());
        assert!(matches!(
            check_interfaces_exist(&cfg),
            Err(ConfigError::NoPools)
        ));
        assert!(check_host_if_gateway(&cfg).is_ok());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        rejects(
            &pool_with("colour = \"blue\"\n", ONE_BACKEND),
            6,
            &["unknown field", "colour"],
        );
        rejects(
            &pool_with(
                "",
                "[[pool.backend]]\nname = \"a\"\naddr = \"198.18.1.1:80\"\nwieght = 5\n",
            ),
            9,
            &["wieght"],
        );
    }

    #[test]
    fn syntax_and_type_errors_carry_positions() {
        rejects("[dataplane\n", 1, &[]);
        rejects(
            &pool_with("min_active = \"two\"\n", ONE_BACKEND),
            6,
            &["invalid type"],
        );
        rejects(
            &pool_with(
                "",
                "[[pool.backend]]\nname = \"a\"\naddr = \"198.18.1.300:80\"\n",
            ),
            8,
            &["invalid"],
        );
        rejects(
            &pool_with("protocol = \"sctp\"\n", ONE_BACKEND),
            6,
            &["sctp"],
        );
        rejects(
            "[dataplane]\ninterfaces = [\"eth0\"]\nxdp_mode = \"turbo\"\n",
            3,
            &["turbo"],
        );
    }

    #[test]
    fn duplicate_backend_names_point_at_both() {
        let text = pool_with(
            "",
            "[[pool.backend]]\nname = \"web-1\"\naddr = \"198.18.1.11:8080\"\n[[pool.backend]]\nname = \"web-1\"\naddr = \"198.18.1.12:8080\"\n",
        );
        let err = p(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "xdplb.toml:10:8: duplicate backend name \"web-1\" in pool \"web\" (first at line 7)"
        );
    }

    #[test]
    fn backend_address_serves_one_pool_and_names_fit_the_map() {
        let text = r#"
[dataplane]
interfaces = ["eth0"]
[[pool]]
name = "a"
vip = "198.18.2.10:80"
  [[pool.backend]]
  name = "x"
  addr = "198.18.1.11:8080"
[[pool]]
name = "b"
vip = "198.18.2.11:80"
  [[pool.backend]]
  name = "y"
  addr = "198.18.1.11:8080"
"#;
        let e = parse(Path::new("x.toml"), text).unwrap_err().to_string();
        assert!(e.starts_with("x.toml:15:10: backend address 198.18.1.11:8080 is already used in pool \"a\" at line 9"), "{e}");
        let mut long = text.replace("name = \"y\"", &format!("name = \"{}\"", "y".repeat(64)));
        // Pool b's backend gets an address of its own.
        let at = long.rfind("198.18.1.11").unwrap();
        long.replace_range(at..at + 11, "198.18.1.12");
        let e = parse(Path::new("x.toml"), &long).unwrap_err().to_string();
        assert!(e.contains("backend name is longer than 63 bytes"), "{e}");
    }

    #[test]
    fn duplicate_pools_and_vips() {
        let second = |name: &str, vip: &str| {
            format!("[[pool]]\nname = \"{name}\"\nvip = \"{vip}\"\n{ONE_BACKEND}")
        };
        let base = pool_with("", ONE_BACKEND);
        rejects(
            &format!("{base}{}", second("web", "198.18.2.11:80")),
            10,
            &["duplicate pool name \"web\"", "line 4"],
        );
        rejects(
            &format!("{base}{}", second("api", "198.18.2.10:80")),
            11,
            &["duplicate vip 198.18.2.10:80", "\"web\""],
        );
    }

    #[test]
    fn direct_return_modes_need_the_vip_port_and_tunnels_a_source() {
        const PORT_80: &str = "[[pool.backend]]\nname = \"web-1\"\naddr = \"198.18.1.11:80\"\n";
        let c = p(&pool_with("mode = \"dsr\"\n", PORT_80)).unwrap();
        assert_eq!(c.pools[0].mode, Mode::Dsr);
        rejects(
            &pool_with("mode = \"dsr\"\n", ONE_BACKEND),
            4,
            &["is dsr but backend \"web-1\" listens on another port"],
        );
        rejects(
            &pool_with("mode = \"tunnel\"\n", PORT_80),
            6,
            &["is tunnel but [dataplane] has no IPv4 tunnel_source"],
        );
        let with_source = |src: &str| {
            pool_with("mode = \"tunnel\"\n", PORT_80)
                .replace(HEAD, &format!("{HEAD}tunnel_source = [{src}]\n"))
        };
        let c = p(&with_source("\"198.18.1.1\"")).unwrap();
        assert_eq!(c.pools[0].mode, Mode::Tunnel);
        assert_eq!(
            c.dataplane.tunnel_source_v4,
            Some("198.18.1.1".parse().unwrap())
        );
        rejects(
            &with_source("\"198.18.1.1\", \"198.18.1.2\""),
            3,
            &["tunnel_source takes one address per family"],
        );
        rejects(
            &pool_with("mode = \"tunnel\"\n", ONE_BACKEND)
                .replace(HEAD, &format!("{HEAD}tunnel_source = [\"198.18.1.1\"]\n")),
            5,
            &["is tunnel but backend \"web-1\" listens on another port"],
        );
    }

    const V6_BACKEND: &str =
        "[[pool.backend]]\nname = \"web-1\"\naddr = \"[2001:2:0:1::11]:8080\"\n";

    fn pool6_with(extra_pool: &str, backends: &str) -> String {
        format!(
            "{HEAD}[[pool]]\nname = \"web\"\nvip = \"[2001:2:0:2::10]:80\"\n{extra_pool}{backends}"
        )
    }

    #[test]
    fn ipv6_pools_parse() {
        let c = p(&pool6_with("", V6_BACKEND)).unwrap();
        let pool = &c.pools[0];
        assert_eq!(pool.vip, "[2001:2:0:2::10]:80".parse().unwrap());
        assert_eq!(
            pool.backends[0].addr,
            "[2001:2:0:1::11]:8080".parse().unwrap()
        );
        assert_eq!(pool.endpoint().to_string(), "[2001:2:0:2::10]:80/tcp");
        assert_eq!(
            pool.backend_endpoint(&pool.backends[0]),
            Endpoint::tcp("[2001:2:0:1::11]:8080".parse::<SocketAddr>().unwrap())
        );
        rejects(
            &pool6_with("", V6_BACKEND).replace("[2001:2:0:1::11]:8080", "[2001:2:0:1::11]"),
            8,
            &["invalid socket address"],
        );
    }

    #[test]
    fn a_pool_is_one_family() {
        rejects(
            &pool6_with("", ONE_BACKEND),
            8,
            &[
                "backend \"web-1\" is IPv4 (198.18.1.11:8080) but pool \"web\" is IPv6",
                "one address family",
            ],
        );
        rejects(
            &pool_with("", V6_BACKEND),
            8,
            &[
                "backend \"web-1\" is IPv6",
                "pool \"web\" is IPv4 (vip 198.18.2.10:80)",
            ],
        );
        // The second backend is the odd one out: its line is named.
        rejects(
            &pool_with(
                "",
                &format!("{ONE_BACKEND}[[pool.backend]]\nname = \"web-2\"\naddr = \"[2001:2:0:1::12]:8080\"\n"),
            ),
            11,
            &["backend \"web-2\" is IPv6"],
        );
        rejects(
            &pool6_with("", V6_BACKEND).replace("[2001:2:0:1::11]", "[::ffff:198.18.1.11]"),
            8,
            &["IPv4-mapped"],
        );
        rejects(
            &pool6_with("", V6_BACKEND).replace("[2001:2:0:2::10]", "[ff02::1]"),
            5,
            &["vip [ff02::1]:80 is a multicast address"],
        );
        rejects(
            &pool6_with("", V6_BACKEND).replace("[2001:2:0:2::10]", "[::]"),
            5,
            &["needs a specific address"],
        );
    }

    #[test]
    fn udp_pools_and_flow_idle() {
        let c = p(&pool_with("protocol = \"udp\"\n", ONE_BACKEND)).unwrap();
        assert_eq!(c.pools[0].protocol, Protocol::Udp);
        assert_eq!(c.pools[0].flow_idle_ms, DEFAULT_UDP_FLOW_IDLE_MS);
        assert_eq!(c.pools[0].endpoint().to_string(), "198.18.2.10:80/udp");
        assert_eq!(
            c.pools[0].endpoint().protocol.ipproto(),
            lb_common::IPPROTO_UDP
        );
        assert_eq!(
            p(&pool_with("", ONE_BACKEND)).unwrap().pools[0].flow_idle_ms,
            0
        );
        let idle = |proto: &str, v: &str| {
            pool_with(
                &format!("protocol = \"{proto}\"\nflow_idle_ms = {v}\n"),
                ONE_BACKEND,
            )
        };
        assert_eq!(p(&idle("udp", "0")).unwrap().pools[0].flow_idle_ms, 0);
        assert_eq!(p(&idle("udp", "1000")).unwrap().pools[0].flow_idle_ms, 1000);
        assert_eq!(
            p(&idle("tcp", "900000")).unwrap().pools[0].flow_idle_ms,
            900_000
        );
        for v in ["1", "999"] {
            rejects(
                &idle("udp", v),
                7,
                &[&format!("flow_idle_ms {v} is below 1000"), "1 s resolution"],
            );
        }
        rejects(&idle("udp", "-5"), 7, &["-5", "expected u32"]);
        // A reload must see the idle time change.
        assert_ne!(
            p(&idle("udp", "1000")).unwrap(),
            p(&idle("udp", "2000")).unwrap()
        );
    }

    #[test]
    fn tcp_and_udp_share_a_vip_and_a_backend_but_not_twice() {
        let second = |name: &str, proto: &str| {
            format!(
                "[[pool]]\nname = \"{name}\"\nvip = \"198.18.2.10:80\"\nprotocol = \"{proto}\"\n{}",
                ONE_BACKEND.replace("web-1", &format!("{name}-1"))
            )
        };
        let base = pool_with("", ONE_BACKEND);
        let c = p(&format!("{base}{}", second("dns", "udp"))).unwrap();
        assert_eq!(c.pools[1].endpoint(), Endpoint::udp(c.pools[0].vip));
        assert_eq!(c.pools[1].backends[0].addr, c.pools[0].backends[0].addr);
        rejects(
            &format!("{base}{}", second("api", "tcp")),
            11,
            &["duplicate vip 198.18.2.10:80 (tcp; also used by pool \"web\""],
        );
        let c = p(&format!(
            "{}{}",
            pool_with("protocol = \"udp\"\n", ONE_BACKEND),
            second("dns", "tcp")
        ))
        .unwrap();
        assert_eq!(c.pools.len(), 2);
    }

    #[test]
    fn udp_health_and_the_port_override() {
        let h = |body: &str| pool_with(&format!("[pool.health]\n{body}"), ONE_BACKEND);
        let c = p(&h("kind = \"udp\"\npayload = \"ping\"\n")).unwrap();
        let health = &c.pools[0].health;
        assert_eq!(health.kind, HealthKind::Udp);
        assert_eq!(health.payload.as_deref(), Some("ping"));
        assert_eq!((health.path.as_ref(), health.port), (None, None));
        let addr: SocketAddr = "198.18.1.11:8080".parse().unwrap();
        assert_eq!(health.target(addr), addr);
        // No payload: an empty datagram.
        let c = p(&h("kind = \"udp\"\n")).unwrap();
        assert_eq!(c.pools[0].health.payload.as_deref(), Some(""));
        rejects(
            &h("payload = \"ping\"\n"),
            7,
            &["payload applies only to kind = \"udp\""],
        );
        rejects(
            &h("kind = \"http\"\npayload = \"ping\"\n"),
            8,
            &["payload applies only to kind = \"udp\""],
        );
        rejects(
            &h("kind = \"udp\"\npath = \"/x\"\n"),
            8,
            &["path applies only to kind = \"http\""],
        );
        let big = "x".repeat(MAX_UDP_PAYLOAD + 1);
        rejects(
            &h(&format!("kind = \"udp\"\npayload = \"{big}\"\n")),
            8,
            &["a UDP datagram carries at most 65507"],
        );
        for kind in ["tcp", "http", "udp"] {
            let c = p(&h(&format!("kind = \"{kind}\"\nport = 8081\n"))).unwrap();
            let health = &c.pools[0].health;
            assert_eq!(health.port, Some(8081), "{kind}");
            assert_eq!(health.target(addr), "198.18.1.11:8081".parse().unwrap());
            let v6: SocketAddr = "[2001:2:0:1::11]:53".parse().unwrap();
            assert_eq!(health.target(v6), "[2001:2:0:1::11]:8081".parse().unwrap());
        }
        rejects(&h("port = 0\n"), 7, &["health port must not be 0"]);
        rejects(&h("port = 70000\n"), 7, &["70000", "expected u16"]);
    }

    #[test]
    fn tunnel_sources_per_family() {
        const PORT_80: &str =
            "[[pool.backend]]\nname = \"web-1\"\naddr = \"[2001:2:0:1::11]:80\"\n";
        let tunnel6 = |sources: &str| {
            pool6_with("mode = \"tunnel\"\n", PORT_80)
                .replace(HEAD, &format!("{HEAD}tunnel_source = [{sources}]\n"))
        };
        rejects(
            &tunnel6("\"198.18.1.1\""),
            7,
            &["is tunnel but [dataplane] has no IPv6 tunnel_source"],
        );
        let c = p(&tunnel6("\"198.18.1.1\", \"2001:2:0:1::1\"")).unwrap();
        assert_eq!(
            (c.dataplane.tunnel_source_v4, c.dataplane.tunnel_source_v6),
            (
                Some("198.18.1.1".parse().unwrap()),
                Some("2001:2:0:1::1".parse().unwrap())
            )
        );
        rejects(
            &tunnel6("\"2001:2:0:1::1\", \"2001:2:0:1::2\""),
            3,
            &["tunnel_source takes one address per family"],
        );
        rejects(
            &tunnel6("\"::\""),
            3,
            &["tunnel_source :: is not a host address"],
        );
        // An IPv4 pool is not served by an IPv6 source.
        let tunnel4 = pool_with(
            "mode = \"tunnel\"\n",
            "[[pool.backend]]\nname = \"web-1\"\naddr = \"198.18.1.11:80\"\n",
        )
        .replace(
            HEAD,
            &format!("{HEAD}tunnel_source = [\"2001:2:0:1::1\"]\n"),
        );
        rejects(&tunnel4, 7, &["no IPv4 tunnel_source"]);
        // dsr's port rule holds for IPv6 pools too.
        rejects(
            &pool6_with("mode = \"dsr\"\n", V6_BACKEND),
            4,
            &["is dsr but backend \"web-1\" listens on another port"],
        );
    }

    #[test]
    fn subnets_of_both_families() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_subnet(
            ip("198.18.1.11"),
            ip("198.18.1.1"),
            ip("255.255.255.0")
        ));
        assert!(!same_subnet(
            ip("198.18.2.11"),
            ip("198.18.1.1"),
            ip("255.255.255.0")
        ));
        let m64 = ip("ffff:ffff:ffff:ffff::");
        assert!(same_subnet(ip("2001:2:0:1::11"), ip("2001:2:0:1::1"), m64));
        assert!(!same_subnet(ip("2001:2:0:2::11"), ip("2001:2:0:1::1"), m64));
        assert!(!same_subnet(ip("198.18.1.11"), ip("2001:2:0:1::1"), m64));
    }

    /// The host check reads the interface's IPv6 addresses from the
    /// kernel: loopback holds ::1/128 in any network namespace.
    #[test]
    fn dsr_backends_must_share_an_ipv6_subnet_with_an_interface() {
        let cfg = |backend: &str| {
            format!(
                "[dataplane]\ninterfaces = [\"lo\"]\n[[pool]]\nname = \"web\"\nvip = \"[2001:2:0:2::10]:80\"\nmode = \"dsr\"\n[[pool.backend]]\nname = \"web-1\"\naddr = \"{backend}\"\n"
            )
        };
        let on_lo = p(&cfg("[::1]:80")).unwrap();
        check_interfaces_exist(&on_lo).unwrap();
        let routed = p(&cfg("[2001:2:0:1::11]:80")).unwrap();
        let err = check_interfaces_exist(&routed).unwrap_err().to_string();
        assert!(
            err.contains("backend \"web-1\" (2001:2:0:1::11) is on no segment of lo"),
            "{err}"
        );
    }

    /// A host check's error names the file, line and column of what it is
    /// about, as a parse error does: the backend's `addr` for a dsr backend
    /// on no segment, the interface's name for one missing here.
    #[test]
    fn host_check_errors_name_file_line_and_column() {
        let dir = std::env::temp_dir().join(format!("xdplb-placed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("xdplb.toml");
        let text = "[dataplane]\ninterfaces = [\"lo\"]\n\n[[pool]]\nname = \"web\"\nvip = \"[2001:2:0:2::10]:80\"\nmode = \"dsr\"\n\n  [[pool.backend]]\n  name = \"web-1\"\n  addr = \"[::1]:80\"\n\n  [[pool.backend]]\n  name = \"web-2\"\n  addr = \"[2001:2:0:1::12]:80\"\n";
        // `text` written to `path`, loaded, refused by `check`, placed.
        let refused = |text: &str, check: fn(&Config) -> Result<(), ConfigError>| {
            std::fs::write(&path, text).unwrap();
            let cfg = load(&path).unwrap();
            check(&cfg).unwrap_err().placed(&path).to_string()
        };
        let err = refused(text, check_host_if_gateway);
        let want = format!(
            "{}:15:10: pool \"web\" is dsr but backend \"web-2\"",
            path.display()
        );
        assert!(err.starts_with(&want), "{err}");

        let missing = text.replace("[\"lo\"]", "[\"lo\", \"xdplb-none0\"]");
        let err = refused(&missing, check_interfaces_exist);
        let want = format!(
            "{}:2:21: dataplane.interfaces: no network interface \"xdplb-none0\"",
            path.display()
        );
        assert!(err.starts_with(&want), "{err}");
        // Other errors, and a file that no longer names the thing, stay as
        // they were.
        std::fs::write(&path, text).unwrap();
        let err = ConfigError::MissingInterface {
            name: "xdplb-none0".into(),
        };
        assert_eq!(
            err.placed(&path).to_string(),
            "dataplane.interfaces: no network interface \"xdplb-none0\" on this host"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tunnel_backends_must_be_routed_out_of_an_interface() {
        // Read-only route lookups in the test's own namespace: loopback
        // addresses leave through lo; 198.18.1.11 and 2001:2:0:1::11 are
        // routed elsewhere or not at all (nothing is configured for them).
        let cfg = |backend: &str, source: &str, vip: &str| {
            p(&format!(
                "[dataplane]\ninterfaces = [\"lo\"]\ntunnel_source = [\"{source}\"]\n[[pool]]\nname = \"web\"\nvip = \"{vip}\"\nmode = \"tunnel\"\n[[pool.backend]]\nname = \"web-1\"\naddr = \"{backend}\"\n"
            ))
            .unwrap()
        };
        const VIP4: &str = "198.18.2.10:80";
        const VIP6: &str = "[2001:2:0:2::10]:80";
        check_interfaces_exist(&cfg("127.0.0.1:80", "127.0.0.1", VIP4)).unwrap();
        check_interfaces_exist(&cfg("[::1]:80", "::1", VIP6)).unwrap();
        for (backend, source, vip, shown) in [
            ("198.18.1.11:80", "198.18.1.1", VIP4, "198.18.1.11"),
            (
                "[2001:2:0:1::11]:80",
                "2001:2:0:1::1",
                VIP6,
                "2001:2:0:1::11",
            ),
        ] {
            let err = check_interfaces_exist(&cfg(backend, source, vip))
                .unwrap_err()
                .to_string();
            let why = format!("is tunnel but backend \"web-1\" ({shown}) ");
            assert!(err.contains(&why), "{err}");
            assert!(
                err.contains("has no route") || err.contains("is routed out of "),
                "{err}"
            );
            assert!(err.contains("out of one of lo"), "{err}");
        }
    }

    #[test]
    fn ipv6_udp_example_parses() {
        let c = p(include_str!("../../config/ipv6-udp.toml")).unwrap();
        let by = |n: &str| c.pool(n).unwrap();
        assert!(by("web6").vip.is_ipv6());
        assert_eq!(by("web6").backends.len(), 3);
        assert_eq!(
            (by("dns").protocol, by("dns").flow_idle_ms),
            (Protocol::Udp, 10_000)
        );
        assert_eq!(by("dns").health.kind, HealthKind::Udp);
        assert_eq!(by("dns").health.payload.as_deref(), Some("ping"));
        assert_eq!(
            (by("quic6").mode, by("quic6").flow_idle_ms),
            (Mode::Tunnel, DEFAULT_UDP_FLOW_IDLE_MS)
        );
        assert_eq!(by("quic6").health.port, Some(8443));
        assert!(c.dataplane.tunnel_source_v6.is_some());
    }

    #[test]
    fn dsr_port_rule() {
        let mut c = p(&pool_with("", ONE_BACKEND)).unwrap();
        let pool = &mut c.pools[0];
        assert_eq!(check_dsr_ports(pool), Err("web-1".to_string()));
        pool.backends[0].addr.set_port(80);
        assert_eq!(check_dsr_ports(pool), Ok(()));
    }

    #[test]
    fn health_rules() {
        let h = |body: &str| pool_with(&format!("[pool.health]\n{body}"), ONE_BACKEND);
        rejects(&h("rise = 0\n"), 7, &["rise must be at least 1"]);
        rejects(&h("fall = 0\n"), 7, &["fall must be at least 1"]);
        rejects(
            &h("interval_ms = 0\n"),
            7,
            &["interval_ms must be at least 50"],
        );
        rejects(
            &h("interval_ms = 49\ntimeout_ms = 10\n"),
            7,
            &["at least 50"],
        );
        assert!(p(&h("interval_ms = 50\ntimeout_ms = 10\n")).is_ok());
        rejects(
            &h("interval_ms = 300\ntimeout_ms = 300\n"),
            8,
            &["timeout_ms (300) must be less than interval_ms (300)"],
        );
        rejects(&h("interval_ms = 200\n"), 7, &["timeout_ms (300)"]);
        rejects(
            &h("kind = \"http\"\npath = \"healthz\"\n"),
            8,
            &["must start with '/'"],
        );
        rejects(
            &h("kind = \"http\"\npath = \"/a b\"\n"),
            8,
            &["must start with '/'"],
        );
        rejects(&h("path = \"/x\"\n"), 7, &["only to kind = \"http\""]);
        rejects(
            &h("kind = \"http\"\nexpect_status = 42\n"),
            8,
            &["not an HTTP status"],
        );
        rejects(&h("kind = \"smtp\"\n"), 7, &["smtp"]);
    }

    #[test]
    fn load_rules() {
        let l = |body: &str| pool_with(&format!("[pool.load]\n{body}"), ONE_BACKEND);
        rejects(
            &l("factors = { cpu = 0.5, mem = 0.2, disk = 0.1, net = 0.1 }\n"),
            7,
            &["factors must sum to 1"],
        );
        rejects(
            &l("factors = { cpu = 1.5, mem = -0.5 }\n"),
            7,
            &["outside [0, 1]"],
        );
        rejects(&l("factors = { gpu = 1.0 }\n"), 7, &["gpu"]);
        rejects(
            &l("high_watermark = 0.5\nlow_watermark = 0.5\n"),
            8,
            &["low_watermark (0.5) must be below high_watermark (0.5)"],
        );
        rejects(&l("high_watermark = 1.2\n"), 7, &["outside [0, 1]"]);
        rejects(&l("low_watermark = -0.1\n"), 7, &["outside [0, 1]"]);
        rejects(
            &l("interval_ms = 0\n"),
            7,
            &["interval_ms must be at least 1"],
        );
        let ok = p(&l("factors = { cpu = 0.7, net = 0.3 }\n")).unwrap();
        let f = ok.pools[0].load.as_ref().unwrap().factors;
        assert_eq!((f.cpu, f.mem, f.disk, f.net), (0.7, 0.0, 0.0, 0.3));
    }

    #[test]
    fn backend_rules() {
        let b = |extra: &str| {
            pool_with(
                "",
                &format!(
                    "[[pool.backend]]\nname = \"web-1\"\naddr = \"198.18.1.11:8080\"\n{extra}"
                ),
            )
        };
        rejects(
            &b("weight = 0\n"),
            9,
            &["weight 0 is out of range 1..=1000"],
        );
        rejects(&b("weight = 1001\n"), 9, &["weight 1001"]);
        rejects(&b("role = \"backup\"\n"), 9, &["backup"]);
        rejects(&pool_with("", ""), 4, &["has no [[pool.backend]]"]);
        rejects(
            &pool_with(
                "",
                "[[pool.backend]]\nname = \"\"\naddr = \"198.18.1.11:80\"\n",
            ),
            7,
            &["backend name must not be empty"],
        );
        rejects(
            &format!("{HEAD}[[pool]]\nname = \"\"\nvip = \"198.18.2.10:80\"\n{ONE_BACKEND}"),
            4,
            &["pool name must not be empty"],
        );
        rejects(
            &pool_with("min_active = 2\n", ONE_BACKEND),
            6,
            &["min_active 2 is more than the 1 backends"],
        );
    }

    #[test]
    fn dataplane_rules() {
        let d = |body: &str| {
            format!("[dataplane]\n{body}[[pool]]\nname = \"web\"\nvip = \"198.18.2.10:80\"\n{ONE_BACKEND}")
        };
        rejects(
            &d("interfaces = [\"eth0\"]\nring_size = 65536\n"),
            3,
            &["ring_size 65536 is not prime"],
        );
        rejects(
            &d("interfaces = [\"eth0\"]\nring_size = 97\n"),
            3,
            &["smaller than 100 × 1 backends"],
        );
        rejects(
            &d("interfaces = [\"eth0\"]\nring_size = 2000003\n"),
            3,
            &["larger than the maximum"],
        );
        rejects(
            &d("interfaces = [\"eth0\"]\nflow_table_size = 0\n"),
            3,
            &["flow_table_size must be at least 1"],
        );
        rejects(&d("interfaces = []\n"), 2, &["at least one interface"]);
        rejects(
            &d("interfaces = [\"eth0\", \"eth1\",\n  \"eth0\"]\n"),
            3,
            &["duplicate interface \"eth0\" (first at line 2)"],
        );
        rejects(&d("xdp_mode = \"auto\"\n"), 1, &["interfaces"]);
        let text = format!(
            "{HEAD}[control]\nmetrics_listen = \"localhost\"\n[[pool]]\nname = \"web\"\nvip = \"198.18.2.10:80\"\n{ONE_BACKEND}"
        );
        rejects(&text, 4, &["metrics_listen \"localhost\""]);
    }

    #[test]
    fn ring_must_cover_the_largest_pool() {
        let mut backends = String::new();
        for i in 0..3 {
            backends.push_str(&format!(
                "[[pool.backend]]\nname = \"b{i}\"\naddr = \"198.18.1.{}:80\"\n",
                i + 1
            ));
        }
        let text = format!(
            "[dataplane]\ninterfaces = [\"eth0\"]\nring_size = 293\n[[pool]]\nname = \"web\"\nvip = \"198.18.2.10:80\"\n{backends}"
        );
        rejects(&text, 3, &["need at least 300"]);
        let ok = text.replace("293", "307");
        assert!(p(&ok).is_ok());
    }

    #[test]
    fn map_limits() {
        let mut text = HEAD.to_string();
        for i in 0..=MAX_VIPS {
            text.push_str(&format!(
                "[[pool]]\nname = \"p{i}\"\nvip = \"198.18.2.{}:{}\"\n{ONE_BACKEND}",
                i % 250 + 1,
                1000 + i
            ));
        }
        let err = p(&text).unwrap_err().to_string();
        assert!(err.contains("too many pools"), "{err}");

        // MAX_BACKENDS + 1 backends over several pools (a ring of
        // 100 × 1000 entries covers the largest).
        let mut text = "[dataplane]\ninterfaces = [\"eth0\"]\nring_size = 100003\n".to_string();
        let mut n = 0;
        for pool in 0..5 {
            text.push_str(&format!(
                "[[pool]]\nname = \"p{pool}\"\nvip = \"198.18.2.{}:80\"\n",
                pool + 1
            ));
            for _ in 0..1000 {
                if n > MAX_BACKENDS {
                    break;
                }
                text.push_str(&format!(
                    "[[pool.backend]]\nname = \"b{n}\"\naddr = \"198.18.1.1:{}\"\n",
                    n + 1
                ));
                n += 1;
            }
        }
        let err = p(&text).unwrap_err().to_string();
        assert!(err.contains("too many backends"), "{err}");
    }

    #[test]
    fn on_empty_defaults_to_reject_and_accepts_drop() {
        let c = p(&pool_with("", ONE_BACKEND)).unwrap();
        assert_eq!(c.pools[0].on_empty, OnEmpty::Reject);
        let c = p(&pool_with("on_empty = \"drop\"\n", ONE_BACKEND)).unwrap();
        assert_eq!(c.pools[0].on_empty, OnEmpty::Drop);
        let c = p(&pool_with("on_empty = \"reject\"\n", ONE_BACKEND)).unwrap();
        assert_eq!(c.pools[0].on_empty, OnEmpty::Reject);
        // The full example says so explicitly; the minimal one takes the default.
        assert_eq!(p(FULL).unwrap().pools[0].on_empty, OnEmpty::Reject);
        assert_eq!(p(MINIMAL).unwrap().pools[0].on_empty, OnEmpty::Reject);
    }

    #[test]
    fn on_empty_rejects_unknown_values_and_types_with_position() {
        let err = p(&pool_with("on_empty = \"bounce\"\n", ONE_BACKEND))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "xdplb.toml:6:12: on_empty \"bounce\" is not one of \"reject\" (answer with a RST \
             from the VIP) or \"drop\""
        );
        rejects(
            &pool_with("on_empty = \"Reject\"\n", ONE_BACKEND),
            6,
            &["Reject"],
        );
        rejects(
            &pool_with("on_empty = true\n", ONE_BACKEND),
            6,
            &["invalid type: boolean `true`, expected a string"],
        );
        // In the wrong table it is an unknown key, named with its line.
        rejects(
            &pool_with("[pool.health]\non_empty = \"drop\"\n", ONE_BACKEND),
            7,
            &["unknown field", "on_empty"],
        );
    }

    #[test]
    fn on_empty_is_part_of_the_meaning() {
        let a = p(&pool_with("", ONE_BACKEND)).unwrap();
        let b = p(&pool_with("on_empty = \"drop\"\n", ONE_BACKEND)).unwrap();
        assert_ne!(a, b, "a reload must see on_empty change");
    }

    #[test]
    fn configs_compare_by_meaning() {
        let a = p(&pool_with("", ONE_BACKEND)).unwrap();
        let b = p(&pool_with("\n\nmode = \"nat\"\n", ONE_BACKEND)).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn announce_defaults_and_values() {
        assert_eq!(p(&pool_with("", ONE_BACKEND)).unwrap().announce, None);
        let c = p(&format!("[announce]\n{}", pool_with("", ONE_BACKEND))).unwrap();
        let a = c.announce.unwrap();
        assert_eq!(a.speaker, Speaker::Bird);
        assert_eq!(a.control_socket, Path::new(DEFAULT_BIRD_SOCKET));
        assert_eq!(a.routes_file, Path::new(DEFAULT_ROUTES_FILE));
        assert_eq!(a.hold_ms, DEFAULT_HOLD_MS);
        let text = format!(
            "[announce]\nspeaker = \"bird\"\ncontrol_socket = \"/tmp/b.ctl\"\nroutes_file = \"/tmp/v.conf\"\nhold_ms = 2500\n{}",
            pool_with("", ONE_BACKEND)
        );
        let a = p(&text).unwrap().announce.unwrap();
        assert_eq!(a.control_socket, Path::new("/tmp/b.ctl"));
        assert_eq!(a.routes_file, Path::new("/tmp/v.conf"));
        assert_eq!(a.hold_ms, 2500);
    }

    #[test]
    fn fleet_example_announces_through_bird() {
        let c = p(include_str!("../../config/fleet.toml")).unwrap();
        let a = c.announce.expect("[announce]");
        assert_eq!(a.routes_file, Path::new("/run/xdplb/vips.conf"));
        assert_eq!(a.control_socket, Path::new("/run/bird/bird.ctl"));
        assert_eq!(p(FULL).unwrap().announce, None);
    }

    #[test]
    fn announce_errors_name_line_and_key() {
        let with = |section: &str| {
            format!(
                "{HEAD}{section}{}",
                &pool_with("", ONE_BACKEND)[HEAD.len()..]
            )
        };
        rejects(
            &with("[announce]\nspeaker = \"frr\"\n"),
            4,
            &["speaker \"frr\" is not supported", "bird"],
        );
        rejects(
            &with("[announce]\nroutes_file = \"vips.conf\"\n"),
            4,
            &["routes_file", "absolute"],
        );
        rejects(
            &with("[announce]\ncontrol_socket = \"bird.ctl\"\n"),
            4,
            &["control_socket", "absolute"],
        );
        rejects(&with("[announce]\npeers = 2\n"), 4, &["peers"]);
        rejects(
            &with("[announce]\nhold_ms = 500\n"),
            4,
            &["hold_ms 500", "1000..=600000", "restart"],
        );
    }

    #[test]
    fn is_prime_small_values() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(is_prime(MAX_RING_SIZE));
    }
}
