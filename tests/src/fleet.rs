//! The fleet lab: several gateways behind one ECMP router, each running
//! `xdplb run` with `[announce]` and a BIRD 2 of its own that peers with
//! the router's BIRD over BGP with BFD (`tests/tests/fleet.rs`, `cargo
//! xtask demo fleet`).
//!
//! ```text
//!  client ns "c1"        router ns "rt"           switch ns "sw"            gateways "g1".."gN"
//!  cl0 198.18.0.2 ─── rtc 198.18.0.1
//!                       rtg 198.18.3.254 ─── br3 ─── to-gIc ─── gwc 198.18.3.I   (BGP + BFD to .254)
//!                       BIRD: ECMP (merge paths),              gwb 198.18.1.I ─── to-gIb ─── br0
//!                       L4 multipath hash                                                      │
//!                                                              backends "b1".."bM": eth0 198.18.1.(11+j)
//!                                                              default via 198.18.1.1 (g1)
//! ```
//!
//! NAT pools with stateless replies: a flow may enter through any gateway
//! (the router's hash decides), and every backend answers through g1, whose
//! data plane rewrites the reply to come from the VIP whatever its flow
//! table holds. So a test that takes a gateway away takes g2 or g3; g1 is
//! also the backends' way out (production gateways share a return address,
//! VRRP or an anycast next hop, instead).
//!
//! BIRD runs in the router and gateway namespaces only, with configs,
//! control sockets and logs under the lab's directory; the lab kills every
//! process in its namespaces when it goes, BIRD included.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::addr::{self, BACKEND_BRIDGE, BACKEND_IF, CLIENT_IF, GW_BACKEND_IF, GW_CLIENT_IF};
use crate::deploy::{lab_backend_bin, BACKEND_PORT};
use crate::lab::{bridge, ip, port, up_with_addr, veth};
use crate::{wait_until, xdplb_bin, Lab, LabBuilder, LabChild};

/// The router's interface on the client segment and on the transit segment.
pub const ROUTER_CLIENT_IF: &str = "rtc";
pub const ROUTER_TRANSIT_IF: &str = "rtg";
/// The bridge in the switch namespace joining the router and the gateways.
pub const TRANSIT_BRIDGE: &str = "br3";
/// The router on the transit segment (BGP neighbour of every gateway).
pub const ROUTER_TRANSIT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 254);
/// The router on the client segment (the client's default route).
pub const ROUTER_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// AS numbers: the router's, and the one all gateways share (same AS path
/// length from every gateway, so the router's best paths are equal).
pub const ROUTER_AS: u32 = 65000;
pub const GATEWAY_AS: u32 = 65001;
/// The pool every gateway serves.
pub const POOL: &str = "web";
/// BFD timers: 100 ms × 3 detects a silent peer in 300 ms.
const BFD_INTERVAL_MS: u32 = 100;
const BFD_MULTIPLIER: u32 = 3;
/// An empty routes file in the shape xdplb writes (both protocols, no
/// route), for BIRD's first start.
pub const EMPTY_ROUTES: &str =
    "protocol static xdplb_vips {\n  ipv4;\n}\nprotocol static xdplb_vips6 {\n  ipv6;\n}\n";
/// Most gateways a fleet lab has (their addresses are .1–.9).
pub const MAX_GATEWAYS: usize = 9;

/// Gateway `g` (1-based) on the transit segment.
pub fn gateway_transit_addr(g: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 3, g as u8)
}

/// Gateway `g` (1-based) on the backend segment.
pub fn gateway_backend_addr(g: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, g as u8)
}

/// The VIP of the fleet's pool.
pub fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(Lab::vip(0), 80)
}

impl LabBuilder {
    /// The fleet topology (see [`crate::fleet`]) with `gateways` gateway
    /// namespaces `g1..` instead of one `gw`; one client.
    pub fn fleet(mut self, gateways: usize) -> Self {
        self.fleet = Some(gateways);
        self
    }
}

impl Lab {
    /// Creates the fleet's namespaces and links (called by `build`).
    pub(crate) fn create_fleet(&mut self, gateways: usize, backends: usize) -> Result<()> {
        ensure!(
            (1..=MAX_GATEWAYS).contains(&gateways),
            "gateways must be 1..={MAX_GATEWAYS}, not {gateways}"
        );
        let rt = self.add_ns("rt")?;
        let sw = self.add_ns("sw")?;
        let client = self.add_ns("c1")?;
        let gws: Vec<String> = (1..=gateways)
            .map(|g| self.add_ns(&format!("g{g}")))
            .collect::<Result<_>>()?;
        let bes: Vec<String> = (1..=backends)
            .map(|j| self.add_ns(&format!("b{j}")))
            .collect::<Result<_>>()?;

        // Router: forwarding, multipath hashed on the 4-tuple so flows
        // from one client spread over the gateways.
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.forwarding", "1"),
            ("net.ipv4.fib_multipath_hash_policy", "1"),
        ] {
            self.sysctl("rt", k, v)?;
        }
        veth(&rt, ROUTER_CLIENT_IF, &client, CLIENT_IF)?;
        up_with_addr(&rt, ROUTER_CLIENT_IF, ROUTER_CLIENT_ADDR)?;
        up_with_addr(&client, CLIENT_IF, addr::client_addr(0))?;
        ip(&[
            "-n",
            &client,
            "route",
            "add",
            "default",
            "via",
            &ROUTER_CLIENT_ADDR.to_string(),
        ])?;
        bridge(&sw, TRANSIT_BRIDGE)?;
        veth(&rt, ROUTER_TRANSIT_IF, &sw, "to-rt")?;
        port(&sw, "to-rt", TRANSIT_BRIDGE)?;
        self.gro_on("rt", ROUTER_TRANSIT_IF)?;
        up_with_addr(&rt, ROUTER_TRANSIT_IF, ROUTER_TRANSIT_ADDR)?;

        bridge(&sw, BACKEND_BRIDGE)?;
        for (i, gw) in gws.iter().enumerate() {
            let g = i + 1;
            let short = format!("g{g}");
            self.sysctl(&short, "net.ipv4.ip_forward", "1")?;
            self.sysctl(&short, "net.ipv4.conf.all.forwarding", "1")?;
            let (c, b) = (format!("to-g{g}c"), format!("to-g{g}b"));
            veth(gw, GW_CLIENT_IF, &sw, &c)?;
            port(&sw, &c, TRANSIT_BRIDGE)?;
            veth(gw, GW_BACKEND_IF, &sw, &b)?;
            port(&sw, &b, BACKEND_BRIDGE)?;
            // The far ends of the gateway's veths take XDP-redirected frames.
            self.gro_on("sw", &c)?;
            self.gro_on("sw", &b)?;
            up_with_addr(gw, GW_CLIENT_IF, gateway_transit_addr(g))?;
            up_with_addr(gw, GW_BACKEND_IF, gateway_backend_addr(g))?;
            ip(&[
                "-n",
                gw,
                "route",
                "add",
                addr::CLIENT_NET,
                "via",
                &ROUTER_TRANSIT_ADDR.to_string(),
            ])?;
        }
        for (j, be) in bes.iter().enumerate() {
            let p = format!("to-b{}", j + 1);
            veth(be, BACKEND_IF, &sw, &p)?;
            port(&sw, &p, BACKEND_BRIDGE)?;
            up_with_addr(be, BACKEND_IF, addr::backend_addr(j))?;
            ip(&[
                "-n",
                be,
                "route",
                "add",
                "default",
                "via",
                &gateway_backend_addr(1).to_string(),
            ])?;
        }
        // Neighbours learnt now, so no first packet waits for ARP.
        for g in 1..=gateways {
            let short = format!("g{g}");
            self.exec_ok(
                &short,
                &["ping", "-c1", "-W1", &ROUTER_TRANSIT_ADDR.to_string()],
            )
            .ok();
        }
        Ok(())
    }
}

/// The router's BIRD: one eBGP session per gateway with BFD, ECMP into
/// the kernel (`merge paths`), nothing exported to the gateways.
pub fn router_bird_conf(gateways: usize) -> String {
    let mut s = format!(
        "# The lab router: deploy/bird/router.conf with lab addresses.\n\
         log stderr all;\n\
         router id {ROUTER_TRANSIT_ADDR};\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel {{\n  ipv4 {{ import none; export all; }};\n  merge paths on;\n}}\n\
         protocol bfd {{\n  interface \"{ROUTER_TRANSIT_IF}\" {{ min rx interval {BFD_INTERVAL_MS} ms; min tx interval {BFD_INTERVAL_MS} ms; multiplier {BFD_MULTIPLIER}; }};\n}}\n\
         template bgp lbs {{\n  local {ROUTER_TRANSIT_ADDR} as {ROUTER_AS};\n  bfd on;\n  \
         connect delay time 1;\n  connect retry time 1;\n  error wait time 1, 5;\n  \
         hold time 3;\n  keepalive time 1;\n  \
         ipv4 {{ import where net ~ [ 198.18.2.0/24{{32,32}} ]; export none; }};\n}}\n"
    );
    for g in 1..=gateways {
        s.push_str(&format!(
            "protocol bgp lb{g} from lbs {{ neighbor {} as {GATEWAY_AS}; }}\n",
            gateway_transit_addr(g)
        ));
    }
    s
}

/// Gateway `g`'s BIRD: the routes file xdplb writes, exported to the
/// router over BGP with BFD; nothing imported, nothing into the kernel.
pub fn gateway_bird_conf(g: usize, routes_file: &Path) -> String {
    format!(
        "# Lab gateway {g}: deploy/bird/gateway.conf with lab addresses, one router.\n\
         log stderr all;\n\
         router id {};\n\
         protocol device {{ scan time 10; }}\n\
         include \"{}\";\n\
         protocol bfd {{\n  interface \"{GW_CLIENT_IF}\" {{ min rx interval {BFD_INTERVAL_MS} ms; min tx interval {BFD_INTERVAL_MS} ms; multiplier {BFD_MULTIPLIER}; }};\n}}\n\
         protocol bgp router1 {{\n  local {} as {GATEWAY_AS};\n  neighbor {ROUTER_TRANSIT_ADDR} as {ROUTER_AS};\n  bfd on;\n  \
         connect delay time 1;\n  connect retry time 1;\n  error wait time 1, 5;\n  \
         hold time 3;\n  keepalive time 1;\n  \
         ipv4 {{ import none; export where proto = \"xdplb_vips\"; }};\n}}\n",
        gateway_transit_addr(g),
        routes_file.display(),
        gateway_transit_addr(g),
    )
}

/// A fleet deployed: backends serving, the router's BIRD, and per gateway
/// its BIRD and `xdplb run`.
pub struct Fleet {
    pub lab: Lab,
    pub gateways: usize,
    pub backends: usize,
    router_bird: Option<LabChild>,
    birds: Mutex<BTreeMap<usize, LabChild>>,
    daemons: Mutex<BTreeMap<usize, LabChild>>,
    _servers: Vec<LabChild>,
}

impl Drop for Fleet {
    /// Daemons get SIGTERM (they release their pin-path locks); the lab
    /// then kills everything else in its namespaces, BIRD included.
    fn drop(&mut self) {
        let daemons = std::mem::take(&mut *self.daemons.lock().unwrap_or_else(|e| e.into_inner()));
        for d in daemons.values() {
            if d.signal(libc::SIGTERM).is_ok() {
                let _ = d.wait_exit(Duration::from_secs(5));
            }
        }
        for b in self
            .birds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            b.kill();
        }
        if let Some(b) = &self.router_bird {
            b.kill();
        }
    }
}

impl Fleet {
    /// Builds the lab, starts backends, BIRDs and xdplb on every gateway,
    /// and waits until the router's route to the VIP has a next hop per
    /// gateway.
    pub fn start(gateways: usize, backends: usize) -> Result<Fleet> {
        ensure!(
            which_bird(),
            "`bird` not found: run `cargo xtask setup` (installs bird2)"
        );
        let lab = Lab::builder().backends(backends).fleet(gateways).build()?;
        let backend_bin = lab_backend_bin();
        let mut servers = Vec::new();
        for j in 0..backends {
            let name = format!("web-{}", j + 1);
            let listen = format!("0.0.0.0:{BACKEND_PORT}");
            servers.push(lab.spawn(
                &format!("b{}", j + 1),
                &[
                    backend_bin.to_str().context("path")?,
                    "--listen",
                    &listen,
                    "--name",
                    &name,
                ],
            )?);
        }
        let mut fleet = Fleet {
            lab,
            gateways,
            backends,
            router_bird: None,
            birds: Mutex::new(BTreeMap::new()),
            daemons: Mutex::new(BTreeMap::new()),
            _servers: servers,
        };
        let conf = fleet.lab.dir().join("rt-bird.conf");
        std::fs::write(&conf, router_bird_conf(gateways))?;
        let sock = fleet.router_socket();
        fleet.router_bird = Some(fleet.lab.spawn(
            "rt",
            &[
                "bird",
                "-f",
                "-c",
                conf.to_str().context("path")?,
                "-s",
                sock.to_str().context("path")?,
            ],
        )?);
        for g in 1..=gateways {
            // As an operator's boot would: the file BIRD includes exists
            // (empty) before BIRD starts; xdplb fills it.
            std::fs::write(fleet.routes_file(g), EMPTY_ROUTES)?;
            fleet.start_bird(g)?;
            fleet.start_daemon(g)?;
        }
        let all: Vec<Ipv4Addr> = (1..=gateways).map(gateway_transit_addr).collect();
        if fleet
            .wait_next_hops(&all, Duration::from_secs(30))?
            .is_none()
        {
            bail!(
                "the router's route to the VIP never got {gateways} next hops: {:?}\n{}",
                fleet.next_hops()?,
                fleet.birdc("rt", "show protocols").unwrap_or_default()
            );
        }
        Ok(fleet)
    }

    pub fn ns(g: usize) -> String {
        format!("g{g}")
    }

    pub fn config_path(&self, g: usize) -> PathBuf {
        self.lab.dir().join(format!("g{g}.toml"))
    }
    pub fn admin_socket(&self, g: usize) -> PathBuf {
        self.lab.dir().join(format!("g{g}.sock"))
    }
    pub fn pin_path(&self, g: usize) -> PathBuf {
        self.lab.pin_path().join(format!("g{g}"))
    }
    pub fn routes_file(&self, g: usize) -> PathBuf {
        self.lab.dir().join(format!("g{g}-vips.conf"))
    }
    pub fn bird_socket(&self, g: usize) -> PathBuf {
        self.lab.dir().join(format!("g{g}-bird.ctl"))
    }
    pub fn router_socket(&self) -> PathBuf {
        self.lab.dir().join("rt-bird.ctl")
    }

    /// Gateway `g`'s xdplb config: the pool on every backend, `[announce]`
    /// to its own BIRD.
    pub fn render_config(&self, g: usize) -> String {
        let mut s = format!(
            "[dataplane]\ninterfaces = [\"{GW_CLIENT_IF}\", \"{GW_BACKEND_IF}\"]\npin_path = \"{}\"\n\
             flow_table_size = 65536\nring_size = 4099\n\n\
             [control]\nadmin_socket = \"{}\"\nmetrics_listen = \"\"\nstate_file = \"{}\"\n\n\
             [announce]\nspeaker = \"bird\"\ncontrol_socket = \"{}\"\nroutes_file = \"{}\"\n\n\
             [[pool]]\nname = \"{POOL}\"\nvip = \"{}\"\n\n  [pool.health]\n  kind = \"http\"\n  path = \"/healthz\"\n  \
             interval_ms = 200\n  timeout_ms = 150\n  rise = 2\n  fall = 2\n\n",
            self.pin_path(g).display(),
            self.admin_socket(g).display(),
            self.lab.dir().join(format!("g{g}-state.json")).display(),
            self.bird_socket(g).display(),
            self.routes_file(g).display(),
            vip(),
        );
        for j in 0..self.backends {
            s.push_str(&format!(
                "  [[pool.backend]]\n  name = \"web-{}\"\n  addr = \"{}:{BACKEND_PORT}\"\n\n",
                j + 1,
                addr::backend_addr(j)
            ));
        }
        s
    }

    /// Starts gateway `g`'s BIRD (replacing one that runs).
    pub fn start_bird(&self, g: usize) -> Result<()> {
        let conf = self.lab.dir().join(format!("g{g}-bird.conf"));
        std::fs::write(&conf, gateway_bird_conf(g, &self.routes_file(g)))?;
        let sock = self.bird_socket(g);
        let child = self.lab.spawn(
            &Fleet::ns(g),
            &[
                "bird",
                "-f",
                "-c",
                conf.to_str().context("path")?,
                "-s",
                sock.to_str().context("path")?,
            ],
        )?;
        self.birds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(g, child);
        Ok(())
    }

    /// Starts `xdplb run` on gateway `g` and waits until it answers
    /// `status` with every backend probed.
    pub fn start_daemon(&self, g: usize) -> Result<()> {
        std::fs::write(self.config_path(g), self.render_config(g))?;
        let xdplb = xdplb_bin()?;
        let cfg = self.config_path(g);
        let child = self.lab.spawn_net(
            &Fleet::ns(g),
            &[
                xdplb.to_str().context("path")?,
                "run",
                "--config",
                cfg.to_str().context("path")?,
            ],
            &[("RUST_LOG", "info")],
        )?;
        self.daemons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(g, child);
        let ok = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
            self.status(g).is_ok_and(|s| {
                s["pools"][0]["backends"]
                    .as_array()
                    .is_some_and(|b| b.iter().all(|b| b["health"] == "up"))
            })
        });
        ensure!(ok, "xdplb on g{g} did not come up:\n{}", self.daemon_log(g));
        Ok(())
    }

    /// Stops gateway `g`'s controller as an operator would (SIGTERM): the
    /// data plane stays pinned and forwarding, the routes file untouched.
    pub fn stop_daemon(&self, g: usize) -> Result<()> {
        let d = self
            .daemons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&g)
            .context("no daemon")?;
        d.signal(libc::SIGTERM)?;
        ensure!(
            d.wait_exit(Duration::from_secs(5)).is_some(),
            "xdplb on g{g} did not stop"
        );
        Ok(())
    }

    pub fn daemon_log(&self, g: usize) -> String {
        self.daemons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&g)
            .map(LabChild::log)
            .unwrap_or_default()
    }

    /// Kills gateway `g` the hard way: xdplb and BIRD get SIGKILL and its
    /// link to the router goes down. Its pinned data plane stays (as after
    /// any crash) but no client packet reaches it.
    pub fn kill_gateway(&self, g: usize) -> Result<()> {
        ip(&[
            "-n",
            self.lab.ns(&Fleet::ns(g)),
            "link",
            "set",
            GW_CLIENT_IF,
            "down",
        ])?;
        if let Some(d) = self
            .daemons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&g)
        {
            d.kill();
        }
        if let Some(b) = self
            .birds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&g)
        {
            b.kill();
        }
        Ok(())
    }

    /// Brings gateway `g` back: link up, BIRD, then xdplb (which adopts
    /// the pinned data plane).
    pub fn revive_gateway(&self, g: usize) -> Result<()> {
        ip(&[
            "-n",
            self.lab.ns(&Fleet::ns(g)),
            "link",
            "set",
            GW_CLIENT_IF,
            "up",
        ])?;
        self.lab
            .exec_ok(
                &Fleet::ns(g),
                &["ping", "-c1", "-W1", &ROUTER_TRANSIT_ADDR.to_string()],
            )
            .ok();
        self.start_bird(g)?;
        self.start_daemon(g)
    }

    /// Takes gateway `g`'s backend-side link down (or up): its backends
    /// become unreachable from it alone.
    pub fn set_backend_link(&self, g: usize, up: bool) -> Result<()> {
        ip(&[
            "-n",
            self.lab.ns(&Fleet::ns(g)),
            "link",
            "set",
            GW_BACKEND_IF,
            if up { "up" } else { "down" },
        ])
    }

    /// `xdplb ARGS` in gateway `g`'s network namespace.
    pub fn xdplb(&self, g: usize, args: &[&str]) -> Result<std::process::Output> {
        let xdplb = xdplb_bin()?;
        let mut all = vec![xdplb.to_str().context("path")?];
        all.extend_from_slice(args);
        self.lab.exec_net(&Fleet::ns(g), &all)
    }

    /// `xdplb status --json` of gateway `g`.
    pub fn status(&self, g: usize) -> Result<Value> {
        let sock = self.admin_socket(g);
        let out = self.xdplb(
            g,
            &[
                "status",
                "--json",
                "--socket",
                sock.to_str().context("path")?,
            ],
        )?;
        ensure!(
            out.status.success(),
            "status g{g}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `xdplb status` (human) of gateway `g`.
    pub fn status_text(&self, g: usize) -> String {
        let sock = self.admin_socket(g);
        match self.xdplb(g, &["status", "--socket", &sock.to_string_lossy()]) {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => format!("{e:#}"),
        }
    }

    /// Whether gateway `g`'s status says it announces the pool.
    pub fn announced(&self, g: usize) -> Option<bool> {
        self.status(g).ok()?["pools"][0]["announced"].as_bool()
    }

    /// New flows gateway `g`'s data plane has balanced for the VIP (from
    /// its pinned counters: works while its controller is down).
    pub fn new_flows(&self, g: usize) -> Result<u64> {
        let pins = self.pin_path(g);
        let out = self.xdplb(
            g,
            &[
                "stats",
                "--json",
                "--pin-path",
                pins.to_str().context("path")?,
            ],
        )?;
        ensure!(
            out.status.success(),
            "stats g{g}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["vips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| x["pool"] == POOL)
            .filter_map(|x| x["new_flows"].as_u64())
            .sum())
    }

    /// The router's kernel route to the VIP: its next hops.
    pub fn next_hops(&self) -> Result<Vec<Ipv4Addr>> {
        let text = self.route_text()?;
        let mut hops: Vec<Ipv4Addr> = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect();
        hops.sort();
        Ok(hops)
    }

    /// `ip route show` of the VIP in the router.
    pub fn route_text(&self) -> Result<String> {
        self.lab.exec_ok(
            "rt",
            &[
                "ip",
                "-4",
                "route",
                "show",
                "exact",
                &format!("{}/32", vip().ip()),
            ],
        )
    }

    /// Waits until the router's next hops are exactly `want`; returns how
    /// long that took (`None`: not within `within`). Polls every 10 ms.
    pub fn wait_next_hops(&self, want: &[Ipv4Addr], within: Duration) -> Result<Option<Duration>> {
        let mut want = want.to_vec();
        want.sort();
        let start = Instant::now();
        let ok = wait_until(within, Duration::from_millis(10), || {
            self.next_hops().is_ok_and(|h| h == want)
        });
        Ok(ok.then(|| start.elapsed()))
    }

    /// `birdc -s SOCKET CMD` for the router (`"rt"`) or a gateway (`"gN"`).
    pub fn birdc(&self, who: &str, cmd: &str) -> Result<String> {
        let sock = if who == "rt" {
            self.router_socket()
        } else {
            let g: usize = who.trim_start_matches('g').parse().context("gateway")?;
            self.bird_socket(g)
        };
        let mut args = vec!["birdc", "-s", sock.to_str().context("path")?];
        args.extend(cmd.split_whitespace());
        self.lab.exec_ok(who, &args)
    }
}

fn which_bird() -> bool {
    ["/usr/sbin/bird", "/usr/bin/bird", "/sbin/bird"]
        .iter()
        .any(|p| Path::new(p).is_file())
}
