//! The keepalived pair lab: two gateways `gwa` and `gwb`, each running
//! `xdplb run` with the same pool and a keepalived of its own (VRRPv3,
//! adverts every 0.1 s) whose sync group moves the clients' route address
//! and the backends' default-route address together
//! (`tests/tests/pair.rs`, `cargo xtask demo pair`).
//!
//! ```text
//!  clients "c1".."cN"           switch ns "sw"                gateways
//!  cl0 198.18.0.(2+i) ─── to-cI ─── br1 ─── to-gac ─── gwc 198.18.0.251  "gwa"  (VRRP 198.18.0.1 on the master)
//!  VIPs via 198.18.0.1                 └─── to-gbc ─── gwc 198.18.0.252  "gwb"
//!                                                      gwb 198.18.1.2    "gwa"  (VRRP 198.18.1.1 on the master)
//!  backends "b1".."bM"                 ┌─── to-gab ───┘
//!  eth0 198.18.1.(11+j) ─── to-bJ ─── br0 ─── to-gbb ─── gwb 198.18.1.3  "gwb"
//!  default via 198.18.1.1
//! ```
//!
//! `gwa` has the higher priority and is master once both run. NAT pools
//! with stateless replies: whichever gateway holds the two VRRP addresses
//! carries both directions, and a flow it has never seen goes where the
//! other's ring sent it (identical configs, identical Maglev rings). What
//! breaks on a takeover is a flow pinned to a backend the new master's ring
//! no longer gives: flows opened before a ring change (flow sync's job).
//!
//! keepalived runs in the gateway namespaces only (entered with `nsenter
//! --net`, so its track script sees the host's bpffs as `xdplb run` does),
//! with configs, pid files and logs under the lab's directory; `-P`: VRRP
//! only. The lab kills every process in its namespaces when it goes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::addr::{
    self, BACKEND_BRIDGE, BACKEND_IF, CLIENT_BRIDGE, CLIENT_IF, GW_BACKEND_IF, GW_CLIENT_IF,
};
use crate::deploy::{lab_backend_bin, BACKEND_PORT};
use crate::lab::{bridge, ip, port, up_with_addr, veth};
use crate::{wait_until, xdplb_bin, Lab, LabBuilder, LabChild};

/// The two gateways' namespaces, `gwa` first (the higher priority).
pub const GATEWAYS: [&str; 2] = ["gwa", "gwb"];
/// The VRRP address on the clients' segment: the clients' route to the VIPs.
pub const CLIENT_VRRP_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The VRRP address on the backends' segment: their default route.
pub const BACKEND_VRRP_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// VRRP router ids of the two instances (same on both gateways).
pub const CLIENT_VRID: u8 = 24;
pub const BACKEND_VRID: u8 = 25;
/// VRRP priorities: `gwa` wins while both can serve.
pub const PRIORITIES: [u8; 2] = [150, 100];
/// The pool both gateways serve.
pub const POOL: &str = "web";
/// Where a test's sync-message drop rule lives in a gateway (`nft`).
pub const SYNC_DROP_TABLE: &str = "xdplb_lab_sync_drop";
/// Flow sync's UDP port on both gateways (`[sync]`, on their backend-side
/// addresses).
pub const SYNC_PORT: u16 = 7946;
/// The lab's `[sync] secret` (both gateways).
const SYNC_SECRET: &str = "xdplb-pair-lab-sync-secret";

/// Gateway `gw`'s own address on the clients' segment.
pub fn gateway_client_addr(gw: &str) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 251 + index(gw) as u8)
}

/// Gateway `gw`'s own address on the backends' segment (.2 and .3: the
/// segment keeps .2–.10 for gateways).
pub fn gateway_backend_addr(gw: &str) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 2 + index(gw) as u8)
}

fn index(gw: &str) -> usize {
    GATEWAYS
        .iter()
        .position(|g| *g == gw)
        .unwrap_or_else(|| panic!("{gw} is not a pair gateway ({GATEWAYS:?})"))
}

/// The VIP of the pair's pool.
pub fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(Lab::vip(0), 80)
}

impl LabBuilder {
    /// The pair topology (see [`crate::pair`]): gateways `gwa` and `gwb`
    /// instead of one `gw`, the clients on a bridge with both.
    pub fn pair(mut self, on: bool) -> Self {
        self.pair = on;
        self
    }
}

impl Lab {
    /// Creates the pair's namespaces and links (called by `build`).
    pub(crate) fn create_pair(&mut self, clients: usize, backends: usize) -> Result<()> {
        let sw = self.add_ns("sw")?;
        let gws: Vec<String> = GATEWAYS
            .iter()
            .map(|g| self.add_ns(g))
            .collect::<Result<_>>()?;
        let cls: Vec<String> = (1..=clients)
            .map(|i| self.add_ns(&format!("c{i}")))
            .collect::<Result<_>>()?;
        let bes: Vec<String> = (1..=backends)
            .map(|j| self.add_ns(&format!("b{j}")))
            .collect::<Result<_>>()?;
        bridge(&sw, CLIENT_BRIDGE)?;
        bridge(&sw, BACKEND_BRIDGE)?;
        for (gw, full) in GATEWAYS.iter().zip(&gws) {
            self.sysctl(gw, "net.ipv4.ip_forward", "1")?;
            self.sysctl(gw, "net.ipv4.conf.all.forwarding", "1")?;
            let letter = &gw[2..];
            let (c, b) = (format!("to-g{letter}c"), format!("to-g{letter}b"));
            veth(full, GW_CLIENT_IF, &sw, &c)?;
            port(&sw, &c, CLIENT_BRIDGE)?;
            veth(full, GW_BACKEND_IF, &sw, &b)?;
            port(&sw, &b, BACKEND_BRIDGE)?;
            // The far ends of the gateway's veths take XDP-redirected frames.
            self.gro_on("sw", &c)?;
            self.gro_on("sw", &b)?;
            up_with_addr(full, GW_CLIENT_IF, gateway_client_addr(gw))?;
            up_with_addr(full, GW_BACKEND_IF, gateway_backend_addr(gw))?;
        }
        for (i, cl) in cls.iter().enumerate() {
            let p = format!("to-c{}", i + 1);
            veth(cl, CLIENT_IF, &sw, &p)?;
            port(&sw, &p, CLIENT_BRIDGE)?;
            up_with_addr(cl, CLIENT_IF, addr::client_addr(i))?;
            ip(&[
                "-n",
                cl,
                "route",
                "add",
                addr::VIP_NET,
                "via",
                &CLIENT_VRRP_ADDR.to_string(),
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
                &BACKEND_VRRP_ADDR.to_string(),
            ])?;
        }
        Ok(())
    }
}

/// Gateway `gw`'s keepalived.conf: deploy/keepalived's with lab addresses
/// and paths. `serving` is the track script's command line.
pub fn keepalived_conf(gw: &str, serving: &str) -> String {
    let priority = PRIORITIES[index(gw)];
    format!(
        "# Lab gateway {gw}: deploy/keepalived/keepalived-gwa.conf with lab addresses.\n\
         global_defs {{\n  router_id xdplb-{gw}\n  vrrp_version 3\n  \
         enable_script_security\n  script_user root\n}}\n\
         vrrp_script xdplb_serving {{\n  script \"{serving}\"\n  interval 1\n  timeout 1\n  \
         fall 1\n  rise 2\n}}\n\
         vrrp_sync_group xdplb {{\n  group {{\n    clients\n    backends\n  }}\n  \
         track_script {{\n    xdplb_serving\n  }}\n}}\n\
         vrrp_instance clients {{\n  state BACKUP\n  interface {GW_CLIENT_IF}\n  \
         virtual_router_id {CLIENT_VRID}\n  priority {priority}\n  advert_int 0.1\n  \
         virtual_ipaddress {{\n    {CLIENT_VRRP_ADDR}/24 dev {GW_CLIENT_IF}\n  }}\n}}\n\
         vrrp_instance backends {{\n  state BACKUP\n  interface {GW_BACKEND_IF}\n  \
         virtual_router_id {BACKEND_VRID}\n  priority {priority}\n  advert_int 0.1\n  \
         virtual_ipaddress {{\n    {BACKEND_VRRP_ADDR}/24 dev {GW_BACKEND_IF}\n  }}\n}}\n"
    )
}

/// A pair deployed: backends serving, and per gateway `xdplb run` and
/// keepalived.
pub struct Pair {
    pub lab: Lab,
    /// Backend namespaces (all serve; the pool uses the first
    /// [`pool_size`](Pair::pool_size)).
    pub backends: usize,
    pool_size: Mutex<usize>,
    keepaliveds: Mutex<BTreeMap<&'static str, LabChild>>,
    daemons: Mutex<BTreeMap<&'static str, LabChild>>,
    _servers: Vec<LabChild>,
}

impl Drop for Pair {
    /// keepalived first (SIGKILL: nobody takes over a lab that goes),
    /// then the daemons get SIGTERM (they release their pin-path locks);
    /// the lab then kills everything else in its namespaces.
    fn drop(&mut self) {
        for k in lock(&self.keepaliveds).values() {
            k.kill();
        }
        let daemons = std::mem::take(&mut *lock(&self.daemons));
        for d in daemons.values() {
            if d.signal(libc::SIGTERM).is_ok() {
                let _ = d.wait_exit(Duration::from_secs(5));
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn static_name(gw: &str) -> &'static str {
    GATEWAYS[index(gw)]
}

impl Pair {
    /// Builds the lab with `clients` clients and `backends` backends
    /// serving, starts xdplb on both gateways with the first `pool_size`
    /// backends in the pool, then keepalived on both, and waits until
    /// `gwa` is master (it holds both VRRP addresses, `gwb` neither).
    pub fn start(clients: usize, backends: usize, pool_size: usize) -> Result<Pair> {
        ensure!(
            Path::new("/usr/sbin/keepalived").is_file(),
            "`keepalived` not found: run `cargo xtask setup` (installs keepalived)"
        );
        ensure!(
            (1..=backends).contains(&pool_size),
            "pool_size must be 1..={backends}, not {pool_size}"
        );
        let lab = Lab::builder()
            .clients(clients)
            .backends(backends)
            .pair(true)
            .build()?;
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
        let pair = Pair {
            lab,
            backends,
            pool_size: Mutex::new(pool_size),
            keepaliveds: Mutex::new(BTreeMap::new()),
            daemons: Mutex::new(BTreeMap::new()),
            _servers: servers,
        };
        for gw in GATEWAYS {
            pair.start_daemon(gw)?;
        }
        for gw in GATEWAYS {
            pair.start_keepalived(gw)?;
        }
        if pair.wait_master("gwa", Duration::from_secs(10)).is_none() {
            bail!(
                "gwa never became the only master: holders {:?}\n{}",
                pair.holders(),
                pair.keepalived_log("gwa")
            );
        }
        Ok(pair)
    }

    pub fn config_path(&self, gw: &str) -> PathBuf {
        self.lab.dir().join(format!("{gw}.toml"))
    }
    pub fn admin_socket(&self, gw: &str) -> PathBuf {
        self.lab.dir().join(format!("{gw}.sock"))
    }
    pub fn pin_path(&self, gw: &str) -> PathBuf {
        self.lab.pin_path().join(gw)
    }
    pub fn keepalived_conf_path(&self, gw: &str) -> PathBuf {
        self.lab.dir().join(format!("{gw}-keepalived.conf"))
    }

    /// How many backends the pool has now.
    pub fn pool_size(&self) -> usize {
        *lock(&self.pool_size)
    }

    /// Gateway `gw`'s xdplb config: the pool on the first
    /// [`pool_size`](Pair::pool_size) backends, `[sync]` with the other
    /// gateway (on the backend-side addresses, [`SYNC_PORT`]), no
    /// `[announce]`.
    pub fn render_config(&self, gw: &str) -> String {
        let peer = GATEWAYS[1 - index(gw)];
        let mut s = format!(
            "[dataplane]\ninterfaces = [\"{GW_CLIENT_IF}\", \"{GW_BACKEND_IF}\"]\npin_path = \"{}\"\n\
             flow_table_size = 65536\nring_size = 4099\n\n\
             [control]\nadmin_socket = \"{}\"\nmetrics_listen = \"\"\nstate_file = \"{}\"\n\n\
             [sync]\nlisten = \"{}:{SYNC_PORT}\"\npeers = [\"{}:{SYNC_PORT}\"]\nsecret = \"{SYNC_SECRET}\"\n\n\
             [[pool]]\nname = \"{POOL}\"\nvip = \"{}\"\n\n  [pool.health]\n  kind = \"http\"\n  path = \"/healthz\"\n  \
             interval_ms = 200\n  timeout_ms = 150\n  rise = 2\n  fall = 2\n\n",
            self.pin_path(gw).display(),
            self.admin_socket(gw).display(),
            self.lab.dir().join(format!("{gw}-state.json")).display(),
            gateway_backend_addr(gw),
            gateway_backend_addr(peer),
            vip(),
        );
        for j in 0..self.pool_size() {
            s.push_str(&format!(
                "  [[pool.backend]]\n  name = \"web-{}\"\n  addr = \"{}:{BACKEND_PORT}\"\n\n",
                j + 1,
                addr::backend_addr(j)
            ));
        }
        s
    }

    /// The track script's command line for gateway `gw`.
    pub fn serving_command(&self, gw: &str) -> Result<String> {
        Ok(format!(
            "{} serving --config {}",
            xdplb_bin()?.display(),
            self.config_path(gw).display()
        ))
    }

    /// Starts `xdplb run` on `gw` and waits until it answers `status` with
    /// every pool backend up.
    pub fn start_daemon(&self, gw: &str) -> Result<()> {
        std::fs::write(self.config_path(gw), self.render_config(gw))?;
        let xdplb = xdplb_bin()?;
        let cfg = self.config_path(gw);
        let child = self.lab.spawn_net(
            gw,
            &[
                xdplb.to_str().context("path")?,
                "run",
                "--config",
                cfg.to_str().context("path")?,
            ],
            &[("RUST_LOG", "info")],
        )?;
        lock(&self.daemons).insert(static_name(gw), child);
        let want = self.pool_size();
        let ok = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
            self.status(gw).is_ok_and(|s| {
                s["pools"][0]["backends"].as_array().is_some_and(|b| {
                    b.len() == want
                        && b.iter()
                            .all(|b| b["health"] == "up" && b["state"] == "active")
                })
            })
        });
        ensure!(
            ok,
            "xdplb on {gw} did not come up:\n{}",
            self.daemon_log(gw)
        );
        Ok(())
    }

    /// Stops `gw`'s controller (SIGTERM): its data plane stays pinned and
    /// forwarding, but it no longer answers on its admin socket.
    pub fn stop_daemon(&self, gw: &str) -> Result<()> {
        let d = lock(&self.daemons)
            .remove(static_name(gw))
            .context("no daemon")?;
        d.signal(libc::SIGTERM)?;
        ensure!(
            d.wait_exit(Duration::from_secs(5)).is_some(),
            "xdplb on {gw} did not stop"
        );
        Ok(())
    }

    /// Starts `gw`'s keepalived (VRRP only, foreground, logging to its
    /// log file).
    pub fn start_keepalived(&self, gw: &str) -> Result<()> {
        let conf = self.keepalived_conf_path(gw);
        std::fs::write(&conf, keepalived_conf(gw, &self.serving_command(gw)?))?;
        let dir = self.lab.dir();
        let pid = |what: &str| dir.join(format!("{gw}-{what}.pid"));
        let (main, vrrp, checkers) = (pid("keepalived"), pid("vrrp"), pid("checkers"));
        // In a session of its own (setsid execs it: same pid): keepalived
        // signals a timed-out track script's process group, and a script
        // left in ours would take the test (or the demo) with it.
        let child = self.lab.spawn_net(
            gw,
            &[
                "setsid",
                "keepalived",
                "-n",
                "-l",
                "-D",
                "-P",
                "-f",
                conf.to_str().context("path")?,
                "-p",
                main.to_str().context("path")?,
                "-r",
                vrrp.to_str().context("path")?,
                "-c",
                checkers.to_str().context("path")?,
            ],
            &[],
        )?;
        lock(&self.keepaliveds).insert(static_name(gw), child);
        Ok(())
    }

    pub fn keepalived_log(&self, gw: &str) -> String {
        lock(&self.keepaliveds)
            .get(gw)
            .map(LabChild::log)
            .unwrap_or_default()
    }

    pub fn daemon_log(&self, gw: &str) -> String {
        lock(&self.daemons)
            .get(gw)
            .map(LabChild::log)
            .unwrap_or_default()
    }

    /// Which VRRP addresses `gw` holds now: (clients' side, backends' side).
    pub fn holds(&self, gw: &str) -> Result<(bool, bool)> {
        let has = |ifname: &str, a: Ipv4Addr| -> Result<bool> {
            let out = self
                .lab
                .exec_ok(gw, &["ip", "-4", "-o", "addr", "show", "dev", ifname, "up"])?;
            Ok(out.contains(&format!(" {a}/")))
        };
        Ok((
            has(GW_CLIENT_IF, CLIENT_VRRP_ADDR)?,
            has(GW_BACKEND_IF, BACKEND_VRRP_ADDR)?,
        ))
    }

    /// The gateways holding a VRRP address, with what they hold: e.g.
    /// `[("gwa", (true, true))]`. Only interfaces that are up count: a
    /// gateway cut off (links down, keepalived killed) may keep the
    /// addresses its keepalived had no time to remove, but nobody reaches
    /// them. Errors read as holding nothing.
    pub fn holders(&self) -> Vec<(&'static str, (bool, bool))> {
        GATEWAYS
            .iter()
            .filter_map(|gw| match self.holds(gw) {
                Ok(h) if h != (false, false) => Some((*gw, h)),
                _ => None,
            })
            .collect()
    }

    /// The one gateway holding both VRRP addresses while the other holds
    /// neither; `None` otherwise (no master, both, or a sync group split).
    pub fn master(&self) -> Option<&'static str> {
        match self.holders().as_slice() {
            [(gw, (true, true))] => Some(gw),
            _ => None,
        }
    }

    /// Waits until `gw` is the only master; returns how long that took.
    /// Polls every 10 ms.
    pub fn wait_master(&self, gw: &str, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        wait_until(within, Duration::from_millis(10), || {
            self.master() == Some(static_name(gw))
        })
        .then(|| start.elapsed())
    }

    /// Cuts `gw` off as a host that died: both its links go down, then
    /// its keepalived processes get SIGKILL without a chance to act (the
    /// parent stopped first, so it neither respawns its VRRP child nor lets
    /// it see the parent die: the child's parent-death signal would make it
    /// resign with a priority-0 advert, a graceful handover no dead host
    /// gives). Its xdplb and pinned data plane stay, unreachable.
    pub fn cut_off(&self, gw: &str) -> Result<()> {
        for ifname in [GW_CLIENT_IF, GW_BACKEND_IF] {
            ip(&["-n", self.lab.ns(gw), "link", "set", ifname, "down"])?;
        }
        if let Some(k) = lock(&self.keepaliveds).remove(static_name(gw)) {
            k.signal(libc::SIGSTOP)?;
            let vrrp = self.lab.dir().join(format!("{gw}-vrrp.pid"));
            let child: Option<libc::pid_t> = std::fs::read_to_string(&vrrp)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            if let Some(pid) = child {
                // SAFETY: kill(2) on the VRRP child keepalived wrote to its
                // pid file; its stopped parent cannot reap it, so the pid
                // still names it.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            k.kill();
        }
        Ok(())
    }

    /// Sets the pool to the first `n` backends on both gateways (config
    /// rewritten, `xdplb reload`), and waits until both show `n` active
    /// backends. A ring change when `n` differs from before.
    pub fn set_pool_size(&self, n: usize) -> Result<()> {
        ensure!((1..=self.backends).contains(&n), "pool size {n}");
        *lock(&self.pool_size) = n;
        for gw in GATEWAYS {
            std::fs::write(self.config_path(gw), self.render_config(gw))?;
            let sock = self.admin_socket(gw);
            let out = self.xdplb(gw, &["reload", "--socket", sock.to_str().context("path")?])?;
            ensure!(
                out.status.success(),
                "reload {gw}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for gw in GATEWAYS {
            let ok = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
                self.status(gw).is_ok_and(|s| {
                    s["pools"][0]["backends"]
                        .as_array()
                        .is_some_and(|b| b.iter().filter(|b| b["state"] == "active").count() == n)
                })
            });
            ensure!(ok, "{gw} never had {n} active backends after the reload");
        }
        Ok(())
    }

    /// Drops UDP to and from `port` in `gw` (nft, input and output): for
    /// flow sync's messages, to show a pair whose sync is cut behaves as
    /// one without sync. XDP passes such packets to the stack first, so the
    /// rule sees them. [`allow_udp`](Pair::allow_udp) removes it.
    pub fn drop_udp(&self, gw: &str, port: u16) -> Result<()> {
        let rules = format!(
            "table inet {SYNC_DROP_TABLE} {{\n  \
             chain input {{ type filter hook input priority 0; udp dport {port} drop; udp sport {port} drop; }}\n  \
             chain output {{ type filter hook output priority 0; udp dport {port} drop; udp sport {port} drop; }}\n}}\n"
        );
        let file = self.lab.dir().join(format!("{gw}-drop-{port}.nft"));
        std::fs::write(&file, rules)?;
        self.lab
            .exec_ok(gw, &["nft", "-f", file.to_str().context("path")?])?;
        Ok(())
    }

    /// Removes [`drop_udp`](Pair::drop_udp)'s rules from `gw`.
    pub fn allow_udp(&self, gw: &str) -> Result<()> {
        self.lab
            .exec_ok(gw, &["nft", "delete", "table", "inet", SYNC_DROP_TABLE])?;
        Ok(())
    }

    /// `xdplb ARGS` in `gw`'s network namespace.
    pub fn xdplb(&self, gw: &str, args: &[&str]) -> Result<std::process::Output> {
        let xdplb = xdplb_bin()?;
        let mut all = vec![xdplb.to_str().context("path")?];
        all.extend_from_slice(args);
        self.lab.exec_net(gw, &all)
    }

    /// `xdplb serving --config` of `gw`: (exit status, its one line).
    pub fn serving(&self, gw: &str) -> Result<(i32, String)> {
        let cfg = self.config_path(gw);
        let out = self.xdplb(gw, &["serving", "--config", cfg.to_str().context("path")?])?;
        let line = if out.status.success() {
            String::from_utf8_lossy(&out.stdout)
        } else {
            String::from_utf8_lossy(&out.stderr)
        };
        Ok((out.status.code().unwrap_or(-1), line.trim().to_string()))
    }

    /// Tries a fresh connection from client 0 (and one `GET /`) every few
    /// milliseconds, each from a new source port above `first`, until one
    /// answers within 10 s; returns how long after `since` that was: the
    /// takeover as clients see it.
    pub fn first_new_connection(&self, first: u16, since: Instant) -> Result<Option<Duration>> {
        let client = Lab::client_addr(0);
        self.lab.run_in("client", move || {
            let mut port = first;
            let mut at = None;
            wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
                port += 1;
                let src = SocketAddrV4::new(client, port);
                let ok = crate::connect_from(src, vip(), Duration::from_millis(50))
                    .and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_millis(200)))?;
                        crate::get_on(&mut s, "/")
                    })
                    .is_ok_and(|(status, _)| status == 200);
                if ok {
                    at = Some(since.elapsed());
                }
                ok
            });
            at
        })
    }

    /// `xdplb status` (human) of `gw`, or why not.
    pub fn status_text(&self, gw: &str) -> String {
        let sock = self.admin_socket(gw);
        match self.xdplb(gw, &["status", "--socket", &sock.to_string_lossy()]) {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => format!("{e:#}"),
        }
    }

    /// `xdplb status --json` of `gw`.
    pub fn status(&self, gw: &str) -> Result<Value> {
        let sock = self.admin_socket(gw);
        let out = self.xdplb(
            gw,
            &[
                "status",
                "--json",
                "--socket",
                sock.to_str().context("path")?,
            ],
        )?;
        ensure!(
            out.status.success(),
            "status {gw}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// New flows `gw`'s data plane has balanced for the VIP (pinned
    /// counters: readable while its controller is down).
    pub fn new_flows(&self, gw: &str) -> Result<u64> {
        let pins = self.pin_path(gw);
        let out = self.xdplb(
            gw,
            &[
                "stats",
                "--json",
                "--pin-path",
                pins.to_str().context("path")?,
            ],
        )?;
        ensure!(
            out.status.success(),
            "stats {gw}: {}",
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
}
