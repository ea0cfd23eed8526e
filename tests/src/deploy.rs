//! xdplb deployed on a [`Lab`]: backends running `lab-backend` (or, for
//! UDP pools, `lab-udp-backend`; optionally `xdplb agent`), the daemon
//! `xdplb run` on the gateway, and
//! helpers that drive it only through the `xdplb` binary and its config,
//! as an operator would.
//!
//! Every wait here is bounded (see [`wait_until`]); every process is a
//! [`LabChild`], killed when the lab goes.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::Output,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::{addr::v6_of, http_get, wait_until, xdplb_bin, Lab, LabChild, UdpFlow};

/// The port lab backends serve HTTP on.
pub const BACKEND_PORT: u16 = 8080;
/// The port of a UDP pool's VIP ([`PoolSpec::udp`]), DNS's.
pub const UDP_VIP_PORT: u16 = 53;
/// The port `lab-udp-backend` serves a UDP pool on (not the VIP's: the NAT
/// must rewrite the port both ways for the client to accept the answer).
pub const UDP_BACKEND_PORT: u16 = 5300;
/// What a UDP pool's health probe sends (`payload`).
pub const UDP_HEALTH_PAYLOAD: &str = "ping";
/// The port the load agents answer on.
pub const AGENT_PORT: u16 = 9777;
/// Where the daemon's Prometheus endpoint listens, inside the gateway.
pub const METRICS_LISTEN: &str = "127.0.0.1:9434";

/// One backend of the pool under test.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    pub name: String,
    /// Index into the lab's backend namespaces.
    pub lab_index: usize,
    pub weight: u32,
    pub spare: bool,
}

/// The pool under test and its knobs; renders the TOML an operator would
/// write.
#[derive(Clone, Debug)]
pub struct PoolSpec {
    pub name: String,
    pub vip: SocketAddrV4,
    pub min_active: u32,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    /// `on_empty = "…"` when set (else the default, reject).
    pub on_empty: Option<String>,
    /// The port of every backend's `addr` (default [`BACKEND_PORT`], where
    /// `lab-backend` listens; a test serving on another port sets it).
    pub backend_port: u16,
    /// `kind = "tcp"` health checks (connect to `backend_port`) instead of
    /// `kind = "http"` on `/healthz`.
    pub tcp_health: bool,
    /// `port = …` in `[pool.health]`: probes go to this side port of each
    /// backend instead of `backend_port` (a test's own server there).
    pub health_port: Option<u16>,
    /// `protocol = "udp"`, health `kind = "udp"` with `payload =`
    /// [`UDP_HEALTH_PAYLOAD`]; backends run `lab-udp-backend` on
    /// `backend_port`. See [`PoolSpec::udp`].
    pub udp: bool,
    /// An IPv6 pool: its VIP and backend addresses are the IPv6 twins
    /// ([`v6_of`]) of `vip` and of the lab backends' addresses. A
    /// [`Deployment`] of such a pool builds a dual-stack lab. See
    /// [`PoolSpec::in_ipv6`].
    pub ipv6: bool,
    /// `Some((high, low, up_ms, down_ms, slow_start_ms))` adds `[pool.load]`.
    pub load: Option<LoadSpec>,
    /// `on_down = "..."` when set.
    pub on_down: Option<String>,
    /// Pool-level `slow_start_ms` when set.
    pub slow_start_ms: Option<u64>,
    /// `mode = "…"` (`nat`, `dsr`, `tunnel`) when set (else the default,
    /// nat). Direct-return pools need a [`LabBuilder::direct_return`]
    /// lab; [`Deployment`] puts their VIP on each backend's loopback.
    ///
    /// [`LabBuilder::direct_return`]: crate::LabBuilder::direct_return
    pub mode: Option<String>,
    pub backends: Vec<BackendSpec>,
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub interval_ms: u64,
    pub high: f64,
    pub low: f64,
    pub scale_up_after_ms: u64,
    pub scale_down_after_ms: u64,
    pub slow_start_ms: u64,
}

impl PoolSpec {
    /// `primaries` primaries then `spares` spares, on lab backends 0.. in
    /// order, named web-1.. and spare-1...
    pub fn new(primaries: usize, spares: usize) -> PoolSpec {
        let mut backends = Vec::new();
        for i in 0..primaries {
            backends.push(BackendSpec {
                name: format!("web-{}", i + 1),
                lab_index: i,
                weight: 100,
                spare: false,
            });
        }
        for i in 0..spares {
            backends.push(BackendSpec {
                name: format!("spare-{}", i + 1),
                lab_index: primaries + i,
                weight: 100,
                spare: true,
            });
        }
        PoolSpec {
            name: "web".into(),
            vip: SocketAddrV4::new(Lab::vip(0), 80),
            min_active: primaries as u32,
            interval_ms: 200,
            timeout_ms: 100,
            rise: 2,
            fall: 2,
            on_empty: None,
            backend_port: BACKEND_PORT,
            tcp_health: false,
            health_port: None,
            udp: false,
            ipv6: false,
            load: None,
            on_down: None,
            slow_start_ms: None,
            mode: None,
            backends,
        }
    }

    /// `primaries` primaries in `mode` (`"dsr"` or `"tunnel"`): the VIP
    /// port is the backends' own ([`BACKEND_PORT`]), as direct return
    /// needs (the backend answers from the VIP and port the client used).
    pub fn direct(mode: &str, primaries: usize) -> PoolSpec {
        let mut p = PoolSpec::new(primaries, 0);
        p.mode = Some(mode.to_string());
        p.vip.set_port(p.backend_port);
        p
    }

    /// `primaries` primaries in a UDP pool: VIP port [`UDP_VIP_PORT`],
    /// backends on [`UDP_BACKEND_PORT`], `kind = "udp"` health checks.
    pub fn udp(primaries: usize) -> PoolSpec {
        let mut p = PoolSpec::new(primaries, 0);
        p.name = "dns".into();
        p.udp = true;
        p.vip.set_port(UDP_VIP_PORT);
        p.backend_port = UDP_BACKEND_PORT;
        p.backends
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| b.name = format!("dns-{}", i + 1));
        p
    }

    /// The same pool in IPv6 (see [`PoolSpec::ipv6`]).
    pub fn in_ipv6(mut self) -> PoolSpec {
        self.ipv6 = true;
        self
    }

    /// The VIP as clients address it: `vip`, or its IPv6 twin.
    pub fn vip_addr(&self) -> SocketAddr {
        self.family_addr(*self.vip.ip(), self.vip.port())
    }

    /// The `addr` of the backend on lab backend `lab_index`.
    pub fn backend_addr(&self, lab_index: usize) -> SocketAddr {
        self.family_addr(Lab::backend_addr(lab_index), self.backend_port)
    }

    fn family_addr(&self, v4: Ipv4Addr, port: u16) -> SocketAddr {
        let ip = if self.ipv6 {
            IpAddr::V6(v6_of(v4))
        } else {
            IpAddr::V4(v4)
        };
        SocketAddr::new(ip, port)
    }

    /// Whether backends answer clients directly (`dsr` or `tunnel`).
    pub fn is_direct(&self) -> bool {
        matches!(self.mode.as_deref(), Some("dsr" | "tunnel"))
    }

    pub fn backend(&self, name: &str) -> &BackendSpec {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// The longest a dead backend may keep getting new flows.
    pub fn detection_bound(&self) -> Duration {
        Duration::from_millis(self.interval_ms * self.fall as u64 + self.timeout_ms)
    }
}

/// How far the share of fresh flows a backend gets may be from its
/// weight's share in the spread checks (`spread.rs`, `pools`, `direct`).
/// A ring that ignored weights (1:2:3 read as 1:1:1) is off by 0.17.
pub const SPREAD_TOLERANCE: f64 = 0.07;

/// Fresh flows a spread check over `backends` weighted backends needs so
/// that a correct build fails it less than once in 10,000 runs, each
/// backend's share within `tolerance` of its weight's.
///
/// Each fresh flow lands on backend i with probability p_i, its share of
/// the ring, independently of the others (the kernel picks the source
/// port, the flow hash mixes it). The ring's shares match the weights to
/// within 0.0002 (Maglev, 4,099 entries, the lab's ring), so p_i is the
/// weight's share. By Hoeffding's inequality the observed share p̂_i of n
/// flows strays by t or more with P(|p̂_i − p_i| ≥ t) ≤ 2·exp(−2·n·t²);
/// any of k backends, by the union bound, with at most 2k·exp(−2·n·t²).
/// That is ≤ 10⁻⁴ for n ≥ ln(2k · 10⁴) / (2t²): for k = 3 and t = 0.07,
/// ln(60,000) = 11.00, / (2 × 0.0049) → n ≥ 1,123.
pub fn spread_flows(backends: usize, tolerance: f64) -> usize {
    let k = backends.max(1) as f64;
    ((2.0 * k * 1e4).ln() / (2.0 * tolerance * tolerance)).ceil() as usize
}

/// The `[dataplane]` knobs a test may turn (the rest is fixed by the lab).
#[derive(Clone, Debug)]
pub struct DataplaneSpec {
    /// `flow_table_size`: flow-table entries (the lab default is small, 65,536,
    /// to keep labs cheap; the product's default is 1,048,576).
    pub flow_table_size: u32,
    /// `max_flow_inserts_per_sec` (per CPU; 0 = no cap); `None` leaves it
    /// out, so the product's default applies.
    pub max_flow_inserts_per_sec: Option<u32>,
    /// `tunnel_source = ["…", …]`: the outer sources of `tunnel` pools, at
    /// most one per family (the gateway's backend-side address,
    /// [`GW_BACKEND_ADDR`], and its IPv6 twin); empty leaves the key out.
    ///
    /// [`GW_BACKEND_ADDR`]: crate::addr::GW_BACKEND_ADDR
    pub tunnel_source: Vec<IpAddr>,
    /// An IPv4 prefix written in `tunnel_source` instead of the IPv4
    /// address above (e.g. [`TUNNEL_PREFIX`](crate::addr::TUNNEL_PREFIX)).
    pub tunnel_prefix4: Option<&'static str>,
    /// `xdp_mode`: "auto" (native on the lab's veths), "native", "generic".
    pub xdp_mode: &'static str,
}

impl Default for DataplaneSpec {
    fn default() -> Self {
        DataplaneSpec {
            xdp_mode: "auto",
            flow_table_size: 65536,
            max_flow_inserts_per_sec: None,
            tunnel_source: Vec::new(),
            tunnel_prefix4: None,
        }
    }
}

impl DataplaneSpec {
    /// The lab defaults plus `tunnel_source` = the gateway's backend-side
    /// address, for `tunnel` pools.
    pub fn tunnel() -> DataplaneSpec {
        DataplaneSpec {
            tunnel_source: vec![crate::addr::GW_BACKEND_ADDR.into()],
            ..DataplaneSpec::default()
        }
    }

    /// [`tunnel`](DataplaneSpec::tunnel) with both families' sources: the
    /// gateway's backend-side address and its IPv6 twin, for IPv6 `tunnel`
    /// pools (in a dual-stack lab).
    pub fn tunnel_dual() -> DataplaneSpec {
        DataplaneSpec {
            tunnel_source: tunnel_sources(),
            ..DataplaneSpec::default()
        }
    }
}

/// Every `tunnel_source` a lab gateway uses: its backend-side address and
/// that address's IPv6 twin. Backends' `xdplb decap --allow` these.
pub fn tunnel_sources() -> Vec<IpAddr> {
    let v4 = crate::addr::GW_BACKEND_ADDR;
    vec![v4.into(), v6_of(v4).into()]
}

/// The config file for `pools` on `lab`, with the lab's default
/// `[dataplane]`.
pub fn render_config(lab: &Lab, pools: &[PoolSpec]) -> String {
    render_config_with(lab, &DataplaneSpec::default(), pools)
}

/// The config file for `pools` on `lab` with the `[dataplane]` knobs of
/// `dp`.
pub fn render_config_with(lab: &Lab, dp: &DataplaneSpec, pools: &[PoolSpec]) -> String {
    let mut s = String::new();
    let [c, b] = Lab::gw_ifaces();
    writeln!(
        s,
        "[dataplane]\ninterfaces = [\"{c}\", \"{b}\"]\nxdp_mode = \"{}\"\npin_path = \"{}\"\nflow_table_size = {}\nring_size = 4099",
        dp.xdp_mode,
        lab.pin_path().display(),
        dp.flow_table_size,
    )
    .unwrap();
    if let Some(cap) = dp.max_flow_inserts_per_sec {
        writeln!(s, "max_flow_inserts_per_sec = {cap}").unwrap();
    }
    if !dp.tunnel_source.is_empty() {
        let list: Vec<String> = dp
            .tunnel_source
            .iter()
            .map(|a| match dp.tunnel_prefix4 {
                Some(prefix) if a.is_ipv4() => format!("\"{prefix}\""),
                _ => format!("\"{a}\""),
            })
            .collect();
        writeln!(s, "tunnel_source = [{}]", list.join(", ")).unwrap();
    }
    writeln!(s).unwrap();
    writeln!(
        s,
        "[control]\nadmin_socket = \"{}\"\nmetrics_listen = \"{METRICS_LISTEN}\"\nstate_file = \"{}\"\n",
        lab.socket_path().display(),
        lab.dir().join("state.json").display()
    )
    .unwrap();
    for p in pools {
        writeln!(
            s,
            "[[pool]]\nname = \"{}\"\nvip = \"{}\"\nmin_active = {}\n{}\n  [pool.health]\n{}{}  interval_ms = {}\n  timeout_ms = {}\n  rise = {}\n  fall = {}\n",
            p.name,
            p.vip_addr(),
            p.min_active,
            p.on_empty
                .as_ref()
                .map(|o| format!("on_empty = \"{o}\"\n"))
                .unwrap_or_default(),
            if p.udp {
                format!("  kind = \"udp\"\n  payload = \"{UDP_HEALTH_PAYLOAD}\"\n")
            } else if p.tcp_health {
                "  kind = \"tcp\"\n".to_string()
            } else {
                "  kind = \"http\"\n  path = \"/healthz\"\n".to_string()
            },
            p.health_port
                .map(|port| format!("  port = {port}\n"))
                .unwrap_or_default(),
            p.interval_ms,
            p.timeout_ms,
            p.rise,
            p.fall
        )
        .unwrap();
        // Pool keys after [pool.health] would land in it: insert them
        // before it.
        let mut pool_keys = String::new();
        if let Some(o) = &p.on_down {
            writeln!(pool_keys, "on_down = \"{o}\"").unwrap();
        }
        if let Some(ms) = p.slow_start_ms {
            writeln!(pool_keys, "slow_start_ms = {ms}").unwrap();
        }
        if let Some(m) = &p.mode {
            writeln!(pool_keys, "mode = \"{m}\"").unwrap();
        }
        if p.udp {
            writeln!(pool_keys, "protocol = \"udp\"").unwrap();
        }
        if !pool_keys.is_empty() {
            let at = s.rfind("\n  [pool.health]").expect("just written");
            s.insert_str(at + 1, &pool_keys);
        }
        if let Some(l) = &p.load {
            writeln!(
                s,
                "  [pool.load]\n  agent_port = {AGENT_PORT}\n  interval_ms = {}\n  factors = {{ cpu = 0.4, mem = 0.2, disk = 0.1, net = 0.3 }}\n  high_watermark = {}\n  low_watermark = {}\n  scale_up_after_ms = {}\n  scale_down_after_ms = {}\n  slow_start_ms = {}\n",
                l.interval_ms, l.high, l.low, l.scale_up_after_ms, l.scale_down_after_ms, l.slow_start_ms
            )
            .unwrap();
        }
        for b in &p.backends {
            writeln!(
                s,
                "  [[pool.backend]]\n  name = \"{}\"\n  addr = \"{}\"\n  weight = {}\n  role = \"{}\"\n",
                b.name,
                p.backend_addr(b.lab_index),
                b.weight,
                if b.spare { "spare" } else { "primary" }
            )
            .unwrap();
        }
    }
    s
}

/// A lab with backends serving, and (once started) the daemon.
pub struct Deployment {
    pub lab: Lab,
    pub pools: Vec<PoolSpec>,
    pub config_path: PathBuf,
    pub daemon: Option<LabChild>,
    /// `lab-backend` per lab backend index (behind a lock so a test can
    /// kill and restart servers while other threads use the lab).
    pub servers: std::sync::Mutex<BTreeMap<usize, LabChild>>,
    /// `xdplb agent` per lab backend index.
    pub agents: BTreeMap<usize, LabChild>,
}

impl Drop for Deployment {
    /// A daemon still running is stopped as an operator would (SIGTERM), so
    /// it releases its pin-path lock and removes the lock file; the lab
    /// then kills whatever is left.
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            if d.signal(libc::SIGTERM).is_ok() {
                let _ = d.wait_exit(Duration::from_secs(5));
            }
        }
    }
}

/// `lab-backend`, built beside the test binaries (cargo puts test
/// executables in `target/<profile>/deps/`, binaries one level up);
/// `LAB_BACKEND_BIN` overrides.
pub fn lab_backend_bin() -> PathBuf {
    lab_bin("lab-backend", "LAB_BACKEND_BIN")
}

/// `lab-udp-backend`, found like [`lab_backend_bin`];
/// `LAB_UDP_BACKEND_BIN` overrides.
pub fn lab_udp_backend_bin() -> PathBuf {
    lab_bin("lab-udp-backend", "LAB_UDP_BACKEND_BIN")
}

fn lab_bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(std::path::Path::new("."));
    let beside = dir.join(name);
    if beside.is_file() {
        return beside;
    }
    dir.parent().unwrap_or(dir).join(name)
}

impl Deployment {
    /// Builds the lab (enough backends for `pools`) and starts every
    /// backend's server, and its agent when a pool polls agents.
    pub fn new(pools: Vec<PoolSpec>) -> Result<Deployment> {
        Deployment::configured(Lab::builder(), pools, DataplaneSpec::default())
    }

    /// [`new`](Deployment::new) on a lab configured by `builder` (e.g. with
    /// a router); its backend count is raised to what `pools` need.
    pub fn on(builder: crate::LabBuilder, pools: Vec<PoolSpec>) -> Result<Deployment> {
        Deployment::configured(builder, pools, DataplaneSpec::default())
    }

    /// [`new`](Deployment::new) with the `[dataplane]` knobs of `dp`.
    pub fn with_dataplane(pools: Vec<PoolSpec>, dp: DataplaneSpec) -> Result<Deployment> {
        Deployment::configured(Lab::builder(), pools, dp)
    }

    /// A lab from `builder`, and a config with `dp`'s knobs and `pools`.
    pub fn configured(
        builder: crate::LabBuilder,
        pools: Vec<PoolSpec>,
        dp: DataplaneSpec,
    ) -> Result<Deployment> {
        let n = pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| b.lab_index + 1))
            .max()
            .unwrap_or(1);
        // An IPv6 pool needs the dual-stack lab.
        let builder = if pools.iter().any(|p| p.ipv6) {
            builder.ipv6(true)
        } else {
            builder
        };
        let lab = builder.backends(n).build()?;
        let config_path = lab.dir().join("xdplb.toml");
        std::fs::write(&config_path, render_config_with(&lab, &dp, &pools))?;
        let mut d = Deployment {
            lab,
            pools,
            config_path,
            daemon: None,
            servers: Default::default(),
            agents: BTreeMap::new(),
        };
        let with_agents = d.pools.iter().any(|p| p.load.is_some());
        for p in d.pools.clone() {
            for b in p.backends.iter().filter(|_| p.is_direct()) {
                d.lab.vip_on_loopback(b.lab_index, p.vip_addr().ip())?;
            }
            for b in &p.backends {
                d.start_server(b.lab_index, &b.name)?;
                if with_agents {
                    d.set_load(b.lab_index, 0.1)?;
                    d.start_agent(b.lab_index)?;
                }
            }
        }
        Ok(d)
    }

    /// Starts the server of lab backend `i`, answering `name`: the UDP
    /// server if a UDP pool has a backend there, else the HTTP server; on
    /// `[::]` (both families) in a dual-stack lab. Waits until it answers.
    pub fn start_server(&self, i: usize, name: &str) -> Result<()> {
        let udp_pool = self
            .pools
            .iter()
            .find(|p| p.udp && p.backends.iter().any(|b| b.lab_index == i));
        if let Some(p) = udp_pool {
            return self.start_udp_server(i, name, p.backend_port);
        }
        let any: IpAddr = if self.lab.is_ipv6() {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let child = self.lab.spawn(
            self.lab.backend_ns(i),
            &[
                lab_backend_bin().to_string_lossy().as_ref(),
                "--listen",
                &SocketAddr::new(any, BACKEND_PORT).to_string(),
                "--name",
                name,
            ],
        )?;
        let addr = SocketAddr::from((Lab::backend_addr(i), BACKEND_PORT));
        let ns = self.lab.backend_ns(i).to_string();
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            self.lab
                .run_in(&ns, || http_get(addr, "/healthz"))
                .ok()
                .and_then(|r| r.ok())
                .is_some_and(|(s, _)| s == 200)
        });
        ensure!(up, "backend {name} did not come up: {}", child.log());
        self.servers.lock().unwrap().insert(i, child);
        Ok(())
    }

    fn start_udp_server(&self, i: usize, name: &str, port: u16) -> Result<()> {
        let any: IpAddr = if self.lab.is_ipv6() {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let child = self.lab.spawn(
            self.lab.backend_ns(i),
            &[
                lab_udp_backend_bin().to_string_lossy().as_ref(),
                "--listen",
                &SocketAddr::new(any, port).to_string(),
                "--name",
                name,
            ],
        )?;
        let mut asked = vec![SocketAddr::from((Lab::backend_addr(i), port))];
        if self.lab.is_ipv6() {
            asked.push(SocketAddr::from((Lab::backend_addr6(i), port)));
        }
        let ns = self.lab.backend_ns(i).to_string();
        for addr in asked {
            let mut last = String::new();
            let up = wait_until(
                Duration::from_secs(10),
                Duration::from_millis(20),
                || match self.lab.run_in(&ns, || UdpFlow::open(addr)?.ask()) {
                    Ok(Ok(answer)) if answer == name => true,
                    Ok(Ok(answer)) => {
                        last = format!("answered {answer:?}");
                        false
                    }
                    Ok(Err(e)) | Err(e) => {
                        last = format!("{e:#}");
                        false
                    }
                },
            );
            ensure!(
                up,
                "UDP backend {name} did not answer on {addr} ({last}): {}",
                child.log()
            );
        }
        self.servers.lock().unwrap().insert(i, child);
        Ok(())
    }

    /// `xdplb decap ARGS` on backend `i` with the default pin path, as an
    /// operator runs it: per network namespace, so it pins into the host's
    /// bpffs under [`Lab::decap_pin_path`]; must succeed; its stdout.
    pub fn decap(&self, i: usize, args: &[&str]) -> Result<String> {
        let bin = xdplb_bin()?;
        let mut full: Vec<String> = vec![bin.to_string_lossy().into_owned(), "decap".into()];
        full.extend(args.iter().map(|s| s.to_string()));
        let out = self.lab.exec_net(self.lab.backend_ns(i), &full)?;
        ensure!(
            out.status.success(),
            "xdplb decap {} on b{}: {}",
            args.join(" "),
            i + 1,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `xdplb decap --interface IFACE --allow …` on backend `i`, allowing
    /// the gateways' [`tunnel_sources`] (what an operator copies from the
    /// gateway's `tunnel_source`); its stdout.
    pub fn decap_up(&self, i: usize, iface: &str) -> Result<String> {
        let allow: Vec<String> = tunnel_sources()
            .iter()
            .map(|a| format!("{a}/{}", if a.is_ipv4() { 32 } else { 128 }))
            .collect();
        let mut args = vec!["--interface", iface];
        for a in &allow {
            args.extend(["--allow", a.as_str()]);
        }
        self.decap(i, &args)
    }

    /// `xdplb decap --stats --json --interface eth0` of backend `i`.
    pub fn decap_stats(&self, i: usize) -> Result<Value> {
        Ok(serde_json::from_str(&self.decap(
            i,
            &["--stats", "--json", "--interface", crate::addr::BACKEND_IF],
        )?)?)
    }

    /// Kills backend `i`'s server (SIGKILL: a crash, not a goodbye).
    pub fn kill_server(&self, i: usize) {
        let child = self.servers.lock().unwrap().remove(&i);
        if let Some(c) = child {
            c.kill();
            let _ = c.wait_exit(Duration::from_secs(5));
        }
    }

    fn load_file(&self, i: usize) -> PathBuf {
        self.lab.dir().join(format!("load-b{i}"))
    }

    /// What backend `i`'s agent reports from now on: every utilisation at
    /// `u`.
    pub fn set_load(&self, i: usize, u: f64) -> Result<()> {
        std::fs::write(
            self.load_file(i),
            format!("up 100% cpu={u:.2} mem={u:.2} disk={u:.2} net={u:.2}\n"),
        )?;
        Ok(())
    }

    fn start_agent(&mut self, i: usize) -> Result<()> {
        let bin = xdplb_bin()?;
        let child = self.lab.spawn(
            self.lab.backend_ns(i),
            &[
                bin.to_string_lossy().as_ref(),
                "agent",
                "--listen",
                &format!("{}:{AGENT_PORT}", Lab::backend_addr(i)),
                // Only the gateway, whose polls come from its backend-side
                // address, gets an answer.
                "--allow",
                &crate::addr::GW_BACKEND_ADDR.to_string(),
                "--fixed-file",
                self.load_file(i).to_string_lossy().as_ref(),
            ],
        )?;
        self.agents.insert(i, child);
        Ok(())
    }

    /// Starts `xdplb run` on the gateway (network namespace only: see
    /// [`Lab::exec_net`]) and waits until it reports every
    /// backend probed and the state it should settle in (`settled`).
    pub fn start_daemon(&mut self) -> Result<()> {
        self.start_daemon_via(false, &[])
    }

    /// [`start_daemon`](Deployment::start_daemon), but started the way
    /// most people run a program in a namespace: `ip netns exec` (a private
    /// mount namespace with a fresh `/sys`).
    pub fn start_daemon_ip_netns_exec(&mut self) -> Result<()> {
        self.start_daemon_via(true, &[])
    }

    /// [`Deployment::start_daemon`] with extra environment variables
    /// (e.g. systemd's `NOTIFY_SOCKET`).
    pub fn start_daemon_with_env(&mut self, env: &[(&str, &str)]) -> Result<()> {
        self.start_daemon_via(false, env)
    }

    fn start_daemon_via(&mut self, ip_netns_exec: bool, env: &[(&str, &str)]) -> Result<()> {
        let bin = xdplb_bin()?;
        let args = [
            bin.to_string_lossy().into_owned(),
            "run".into(),
            "--config".into(),
            self.config_path.to_string_lossy().into_owned(),
        ];
        let mut env = env.to_vec();
        env.push(("RUST_LOG", "info"));
        let child = if ip_netns_exec {
            self.lab.spawn_env(self.lab.gw_ns(), &args, &env)?
        } else {
            self.lab.spawn_net(self.lab.gw_ns(), &args, &env)?
        };
        let sock = self.lab.socket_path();
        // A daemon that exited (a config it refused) ends the wait at once.
        let up = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            !child.is_running() || sock.exists() && self.status().is_ok_and(|s| all_probed(&s))
        });
        if !up || !child.is_running() {
            bail!("xdplb run did not come up: {}", child.log());
        }
        self.daemon = Some(child);
        Ok(())
    }

    /// SIGTERM to the daemon; waits for it to exit.
    pub fn stop_daemon(&mut self) -> Result<()> {
        let d = self.daemon.take().context("no daemon")?;
        d.signal(libc::SIGTERM)?;
        let st = d
            .wait_exit(Duration::from_secs(10))
            .with_context(|| format!("daemon did not exit on SIGTERM: {}", d.log()))?;
        ensure!(st.success(), "daemon exit {st}: {}", d.log());
        Ok(())
    }

    pub fn daemon_log(&self) -> String {
        self.daemon.as_ref().map(|d| d.log()).unwrap_or_default()
    }

    /// Runs `xdplb ARGS` in the gateway namespace.
    pub fn xdplb(&self, args: &[&str]) -> Result<Output> {
        let bin = xdplb_bin()?;
        let mut full: Vec<String> = vec![bin.to_string_lossy().into_owned()];
        full.extend(args.iter().map(|s| s.to_string()));
        self.lab.exec_net(self.lab.gw_ns(), &full)
    }

    /// `xdplb ARGS --socket S`, which must succeed; its stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let sock = self.lab.socket_path();
        let mut a = args.to_vec();
        let s = sock.to_string_lossy().into_owned();
        a.extend(["--socket", &s]);
        let out = self.xdplb(&a)?;
        ensure!(
            out.status.success(),
            "xdplb {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `xdplb status --json`.
    pub fn status(&self) -> Result<Value> {
        Ok(serde_json::from_str(&self.ctl(&["status", "--json"])?)?)
    }

    /// `xdplb stats --json --pin-path P`.
    /// Downloads `bytes` of lab-backend's pattern from `vip` in the client
    /// namespace within `deadline`, checking status, length and content;
    /// how long it took. A failure carries `xdplb stats`.
    pub fn download(&self, vip: SocketAddr, bytes: usize, deadline: Duration) -> Result<Duration> {
        let started = Instant::now();
        let (status, body) = self
            .lab
            .run_in("client", || {
                crate::http::http_get_bytes(vip, &format!("/bytes/{bytes}"), bytes, deadline)
            })?
            .with_context(|| {
                format!(
                    "{bytes} bytes through {vip}; stats: {}",
                    self.stats().map(|s| s.to_string()).unwrap_or_default()
                )
            })?;
        let took = started.elapsed();
        ensure!(status == 200, "status {status}");
        ensure!(body.len() == bytes, "{} bytes", body.len());
        ensure!(
            body == crate::http::pattern(bytes),
            "the body differs from what was sent"
        );
        ensure!(took < deadline, "took {took:?}");
        Ok(took)
    }

    pub fn stats(&self) -> Result<Value> {
        let pin = self.lab.pin_path();
        let out = self.xdplb(&["stats", "--json", "--pin-path", &pin.to_string_lossy()])?;
        ensure!(
            out.status.success(),
            "stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The Prometheus exposition text from the daemon's `METRICS_LISTEN`.
    pub fn scrape(&self) -> Result<String> {
        use std::io::{Read, Write};
        let text = self.lab.run_in(self.lab.gw_ns(), || -> Result<String> {
            let mut s = std::net::TcpStream::connect(METRICS_LISTEN)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        })??;
        let (head, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
        ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
        Ok(body.to_string())
    }

    /// The status entry of one pool.
    pub fn pool_status(&self, pool: &str) -> Result<Value> {
        let s = self.status()?;
        s["pools"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == pool).cloned())
            .with_context(|| format!("pool {pool} not in {s}"))
    }

    /// The status entry of one backend.
    pub fn backend_status(&self, pool: &str, backend: &str) -> Result<Value> {
        let s = self.status()?;
        find_backend(&s, pool, backend).with_context(|| format!("{pool}/{backend} not in {s}"))
    }

    /// Waits until `backend`'s status field `field` equals `want`.
    pub fn wait_state(
        &self,
        backend: &str,
        field: &str,
        want: &str,
        within: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        let ok = wait_until(within, Duration::from_millis(20), || {
            self.backend_status(&self.pools[0].name, backend)
                .is_ok_and(|b| b[field] == want)
        });
        ensure!(
            ok,
            "{backend}.{field} never became {want} within {within:?}; status: {}\nlog:\n{}",
            self.status().map(|s| s.to_string()).unwrap_or_default(),
            self.daemon_log()
        );
        Ok(start.elapsed())
    }

    /// `n` fresh connections to the VIP of pool 0 from the client (for a
    /// UDP pool: `n` fresh flows, each from a new source port, asked
    /// once): who answered each (`Err` text for failures).
    pub fn spread(&self, n: usize) -> Result<BTreeMap<String, usize>> {
        let vip = self.pools[0].vip_addr();
        let udp = self.pools[0].udp;
        self.lab.run_in("client", || {
            let mut seen = BTreeMap::new();
            for _ in 0..n {
                let who = if udp {
                    match crate::udp_ask(vip) {
                        Ok(name) => name,
                        Err(e) => format!("error: {e}"),
                    }
                } else {
                    match http_get(vip, "/") {
                        Ok((200, body)) => body.trim().to_string(),
                        Ok((s, _)) => format!("status {s}"),
                        Err(e) => format!("error: {e}"),
                    }
                };
                *seen.entry(who).or_insert(0) += 1;
            }
            seen
        })
    }
}

impl Deployment {
    /// A UDP flow from the client to pool 0's VIP (an ephemeral source
    /// port, fixed for the flow's life).
    pub fn udp_flow(&self) -> Result<UdpFlow> {
        let vip = self.pools[0].vip_addr();
        self.lab.run_in("client", || UdpFlow::open(vip))?
    }
}

/// True when the status lists every backend with a settled health.
fn all_probed(s: &Value) -> bool {
    s["pools"].as_array().is_some_and(|pools| {
        pools.iter().all(|p| {
            p["backends"]
                .as_array()
                .is_some_and(|bs| bs.iter().all(|b| b["reason"] != "not_probed"))
        })
    })
}

pub fn find_backend(s: &Value, pool: &str, backend: &str) -> Option<Value> {
    s["pools"].as_array()?.iter().find(|p| p["name"] == pool)?["backends"]
        .as_array()?
        .iter()
        .find(|b| b["name"] == backend)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_sample_sizes() {
        // The arithmetic of `spread_flows`' comment.
        assert_eq!(spread_flows(3, 0.07), 1123);
        // Halving the tolerance quadruples the flows.
        assert_eq!(spread_flows(3, 0.035), 4491);
        // The bound it promises, checked back: 2k·exp(−2nt²) ≤ 1e-4.
        let n = spread_flows(3, SPREAD_TOLERANCE) as f64;
        assert!(6.0 * (-2.0 * n * SPREAD_TOLERANCE * SPREAD_TOLERANCE).exp() <= 1e-4);
    }
}
