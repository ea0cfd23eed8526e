//! [`parse`]: the raw file checked and converted into a [`Config`].
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use lb_common::limits::{DEFAULT_FLOW_TABLE_SIZE, DEFAULT_RING_SIZE, MAX_BACKENDS, MAX_VIPS};

use super::raw;
use super::schema::*;
use super::ConfigError;

/// `IFNAMSIZ - 1`: the kernel rejects longer interface names.
const MAX_IFNAME_LEN: usize = 15;

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

/// "IPv4" or "IPv6".
fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
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

pub(super) struct Source<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
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

    pub(super) fn err(&self, span: Range<usize>, reason: impl Into<String>) -> ConfigError {
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
    let sync = raw.sync.map(|s| convert_sync(src, s)).transpose()?;

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
        sync,
        pools,
    })
}

fn convert_sync(src: &Source, s: raw::FlowSync) -> Result<FlowSyncConfig, ConfigError> {
    let listen = *s.listen.get_ref();
    if listen.ip().is_unspecified() || listen.port() == 0 {
        return Err(src.err(
            s.listen.span(),
            format!(
                "listen {listen} must name this gateway's address and a port: peers send to it"
            ),
        ));
    }
    let Some(secret) = s.secret else {
        return Err(src.err(
            s.listen.span(),
            "[sync] needs secret: every message is authenticated with it, and it keys the \
             flow tables alike on every gateway",
        ));
    };
    if secret.get_ref().len() < MIN_SYNC_SECRET_LEN {
        return Err(src.err(
            secret.span(),
            format!(
                "secret is {} bytes: at least {MIN_SYNC_SECRET_LEN} (it authenticates every \
                 message and keys the flow table)",
                secret.get_ref().len()
            ),
        ));
    }
    let peers_span = s.peers.span();
    let raw_peers = s.peers.into_inner();
    if raw_peers.is_empty() || raw_peers.len() > MAX_SYNC_PEERS {
        return Err(src.err(
            peers_span,
            format!(
                "peers: {} given, 1..={MAX_SYNC_PEERS} (the other gateways' listen addresses)",
                raw_peers.len()
            ),
        ));
    }
    let mut peers: Vec<std::net::SocketAddr> = Vec::with_capacity(raw_peers.len());
    for p in raw_peers {
        let addr = *p.get_ref();
        let reason = if addr == listen {
            Some("is this gateway's own listen address")
        } else if peers.contains(&addr) {
            Some("is listed twice")
        } else if addr.ip().is_unspecified() || addr.port() == 0 {
            Some("is not a gateway's address and port")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(src.err(p.span(), format!("peer {addr} {reason}")));
        }
        peers.push(addr);
    }
    Ok(FlowSyncConfig {
        listen,
        peers,
        secret: secret.into_inner(),
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

/// A unicast MAC address written as six hex bytes with colons
/// (`00:00:5e:00:01:33`), or why not.
fn parse_mac(s: &str) -> Result<[u8; 6], &'static str> {
    const WHAT: &str = "is not a MAC address (six hex bytes separated by colons)";
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
        return Err(WHAT);
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(&parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| WHAT)?;
    }
    if mac[0] & 1 != 0 {
        // A router forwards only frames sent to it, never group-addressed
        // ones (the kernel's ip_forward drops them).
        return Err("is a group (multicast or broadcast) address, not a host's");
    }
    if mac == [0; 6] {
        return Err("is all zero, not a host's");
    }
    Ok(mac)
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
    let extra_macs = match &d.extra_macs {
        Some(list) => {
            let max = lb_common::limits::MAX_EXTRA_MACS as usize;
            if list.get_ref().len() > max {
                return Err(src.err(
                    list.span(),
                    format!("extra_macs takes at most {max} addresses"),
                ));
            }
            let mut macs: Vec<[u8; 6]> = Vec::new();
            for m in list.get_ref() {
                let mac = parse_mac(m.get_ref()).map_err(|why| {
                    src.err(m.span(), format!("extra_macs: {:?} {why}", m.get_ref()))
                })?;
                if !macs.contains(&mac) {
                    macs.push(mac);
                }
            }
            macs
        }
        None => Vec::new(),
    };
    let mut tunnel_source_v4 = None;
    let mut tunnel_source_v6 = None;
    if let Some(ts) = &d.tunnel_source {
        for text in ts.get_ref() {
            let net = parse_tunnel_source(text).map_err(|why| src.err(ts.span(), why))?;
            let dup = match net {
                IpNet::V4(n) => tunnel_source_v4.replace(n).is_some(),
                IpNet::V6(n) => tunnel_source_v6.replace(n).is_some(),
            };
            if dup {
                return Err(src.err(
                    ts.span(),
                    "tunnel_source takes one address (or prefix) per family",
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
            answers_per_sec: d
                .answers_per_sec
                .unwrap_or(lb_common::limits::DEFAULT_ANSWERS_PER_SEC),
            extra_macs,
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

/// One `tunnel_source` entry: an address (a prefix of one), or a prefix
/// whose addresses the outer sources spread over, at most
/// `MAX_TUNNEL_SOURCE_HOST_BITS` host bits of it, written as its first
/// address (as `ip route` prints it).
fn parse_tunnel_source(text: &str) -> Result<IpNet, String> {
    let net = match text.parse::<IpAddr>() {
        Ok(a) => IpNet::from(a),
        Err(_) => text.parse::<IpNet>().map_err(|_| {
            format!("tunnel_source {text:?} is neither an address nor a prefix (198.18.1.1, 198.18.1.0/28)")
        })?,
    };
    let a = net.addr();
    if a.is_unspecified() || a.is_multicast() || is_v4_mapped(a) {
        return Err(format!("tunnel_source {text} is not a host address"));
    }
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    let most = lb_common::limits::MAX_TUNNEL_SOURCE_HOST_BITS;
    if host_bits > most {
        return Err(format!(
            "tunnel_source {text} is too large: at most {} addresses (/{} for IPv4, /{} for IPv6)",
            1u32 << most,
            32 - most,
            128 - most
        ));
    }
    if net.network() != a {
        return Err(format!(
            "tunnel_source {text} has host bits set: write the prefix as {}",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_prime_small_values() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(is_prime(MAX_RING_SIZE));
    }
}
