//! [`Lab`]: a client, a gateway, a switch and N backends, each a network
//! namespace, built with `ip` and removed on drop — also when a test panics.
//!
//! ```text
//!  client ns "c1"             gw ns "gw"                 sw ns "sw"              backend ns "b1".."bN"
//!  cl0 198.18.0.2 ─── veth ── gwc 198.18.0.1
//!                             gwb 198.18.1.1 ── veth ─── to-gw ┐
//!                                                              br0 ── to-b1 ── veth ── eth0 198.18.1.11
//!                                                                 └─ to-b2 ── veth ── eth0 198.18.1.12
//! ```
//!
//! With more than one client, the clients join the client-side interface
//! through a second bridge `br1` in the switch namespace (ports `to-gwc`
//! (or `to-rt`), `to-c1`, …).
//!
//! With [`LabBuilder::router_mtu`], a router namespace `rt` sits between the
//! clients and the gateway, its client-side link at the given MTU:
//!
//! ```text
//!  cl0 198.18.0.2 ── MTU m ── rtc 198.18.0.1  [rt]  rtg 198.18.3.2 ── 1500 ── gwc 198.18.3.1  [gw]
//! ```
//!
//! Veths keep their default offloads (TX checksum offload on, as in every
//! container and VM) unless [`LabBuilder::tx_checksum_offload`] turns it off.
//!
//! With [`LabBuilder::ipv6`] the lab is dual-stack: every address above
//! also has its IPv6 twin in 2001:2::/48 ([`addr::v6_of`]: 198.18.1.11 ↔
//! 2001:2:0:1::11), every route its IPv6 twin, and the gateway (and
//! router) forward IPv6 too.
//!
//! Namespaces are named `xl<pid>-<n>-<role>` (`xl4242-0-gw`): the pid of the
//! creating process lets [`Lab::cleanup_stale`] remove leftovers of a dead
//! run without touching a live one. Interface names are fixed per namespace
//! (`gwc`, `cl0`, `eth0`, …), so they never approach the 15-character limit.
//! Nothing is created in the root namespace: every veth pair is created
//! inside a lab namespace with its peer placed directly in another.

use crate::addr::{self, *};
use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Namespace name prefix marking a lab (followed by the creator's pid).
const NS_MARK: &str = "xl";
/// Where `ip netns add` keeps its namespace files.
const NETNS_DIR: &str = "/run/netns";
/// bpffs root; each lab may pin under `/sys/fs/bpf/<prefix>`.
const BPFFS: &str = "/sys/fs/bpf";
/// `xdplb decap`'s default pin root under [`BPFFS`]: one directory per
/// network namespace, `ns-<name>`.
const DECAP_PINS: &str = "xdplb-decap";

/// Where `xdplb decap` run in namespace `full` pins by default.
fn decap_ns_root(full: &str) -> PathBuf {
    Path::new(BPFFS).join(DECAP_PINS).join(format!("ns-{full}"))
}
/// How long a killed child gets to be reaped before we give up waiting.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of each child's log printed when a lab is dropped during a panic.
const LOG_TAIL_LINES: usize = 30;

/// Labs created by this process, so two labs never share a prefix.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when running as root (labs need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Raises this process's open-file limit (soft and hard) to at least `n`,
/// for tests that hold many sockets. Processes the lab spawns afterwards
/// inherit it (so do `lab-backend`s serving those sockets). Root may raise
/// the hard limit up to `fs.nr_open`.
pub fn raise_nofile(n: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    ensure!(rc == 0, "getrlimit: {}", std::io::Error::last_os_error());
    if lim.rlim_cur >= n {
        return Ok(());
    }
    lim.rlim_cur = n;
    lim.rlim_max = lim.rlim_max.max(n);
    // SAFETY: valid in-pointer.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    ensure!(
        rc == 0,
        "setrlimit(RLIMIT_NOFILE, {n}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Set to `1` to let tests that cannot run here skip (pass without
/// running, recorded); unset, they fail. Nothing sets it for you.
pub const ALLOW_SKIP_ENV: &str = "XDPLB_ALLOW_SKIP";
/// Where skipped tests are recorded, one `binary::test<TAB>reason` line
/// each (`cargo xtask test` sets it and counts them in its summary).
pub const SKIP_LOG_ENV: &str = "XDPLB_SKIP_LOG";

/// For tests that need root: returns true when the test should return at
/// once, skipped — only when `XDPLB_ALLOW_SKIP=1` says a skip is wanted.
/// Otherwise a test that cannot run fails: no test passes by not running.
///
/// ```no_run
/// # fn t() -> anyhow::Result<()> {
/// if xdplb_tests::skip_unless_root() {
///     return Ok(());
/// }
/// # Ok(()) }
/// ```
pub fn skip_unless_root() -> bool {
    !is_root() && skip_or_fail("needs root (network namespaces, bpf)")
}

/// This test cannot run here, for `reason`. With `XDPLB_ALLOW_SKIP=1`:
/// records the skip (stderr, and `XDPLB_SKIP_LOG` if set) and returns true
/// (the caller returns at once). Without it: panics, failing the test.
pub fn skip_or_fail(reason: &str) -> bool {
    let test = current_test();
    if std::env::var_os(ALLOW_SKIP_ENV).is_none_or(|v| v != "1") {
        panic!("{test} {reason}: it cannot run here (set {ALLOW_SKIP_ENV}=1 to skip such tests instead)");
    }
    eprintln!("skipped: {test} {reason} ({ALLOW_SKIP_ENV}=1)");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
        use std::io::Write;
        // One short O_APPEND write per skip: whole lines even when test
        // binaries run side by side.
        let line = format!("{test}\t{reason}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!(
                "cannot record the skip of {test} in {}: {e}",
                Path::new(&log).display()
            );
        }
    }
    true
}

/// `binary::test` for the test running on this thread: libtest names each
/// test's thread after the test, and the binary is cargo's
/// `deps/<name>-<hash>`.
fn current_test() -> String {
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed test)")
        .to_string();
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .map(|f| match f.rsplit_once('-') {
            Some((stem, hash)) if hash.bytes().all(|b| b.is_ascii_hexdigit()) => stem.to_string(),
            _ => f,
        })
        .unwrap_or_default();
    format!("{binary}::{test}")
}

/// The release `xdplb` binary under test: `$XDPLB_BIN` (set by `cargo xtask
/// test`), else `<workspace>/target/release/xdplb` if it exists.
pub fn xdplb_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("XDPLB_BIN") {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "XDPLB_BIN={} is not a file", p.display());
        return Ok(p);
    }
    let guess = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/xdplb");
    ensure!(
        guess.is_file(),
        "set XDPLB_BIN to the xdplb binary (`cargo xtask test` does), or build it with `cargo build -p lb-userspace --release`"
    );
    Ok(guess)
}

/// Configures a [`Lab`]; [`build`](LabBuilder::build) creates it.
#[derive(Clone, Debug)]
pub struct LabBuilder {
    backends: usize,
    clients: usize,
    ipv6: bool,
    tx_checksum_offload: bool,
    router_mtu: Option<u32>,
    direct_return: bool,
    /// `Some(n)`: the fleet topology (`crate::fleet`) with `n` gateways.
    pub(crate) fleet: Option<usize>,
    /// The keepalived pair topology (`crate::pair`).
    pub(crate) pair: bool,
    queues: u32,
}

/// Smallest MTU an IPv4 link may have (RFC 791: every host accepts 576-byte
/// datagrams; below 68 the kernel refuses).
const MIN_ROUTER_MTU: u32 = 576;
/// Most queues [`LabBuilder::client_queues`] gives a veth.
const MAX_QUEUES: u32 = 16;
/// Largest: the veths' default MTU (the transit link and the gateway stay at
/// 1500, so a larger client link would not be a bottleneck).
const MAX_ROUTER_MTU: u32 = 1500;

impl Default for LabBuilder {
    fn default() -> Self {
        Self {
            backends: 2,
            clients: 1,
            ipv6: false,
            tx_checksum_offload: true,
            router_mtu: None,
            direct_return: false,
            fleet: None,
            pair: false,
            queues: 1,
        }
    }
}

impl LabBuilder {
    /// Number of backend namespaces `b1..bN` (default 2).
    pub fn backends(mut self, n: usize) -> Self {
        self.backends = n;
        self
    }

    /// Number of client namespaces `c1..cN` (default 1).
    pub fn clients(mut self, n: usize) -> Self {
        self.clients = n;
        self
    }

    /// A dual-stack lab (default: IPv6 disabled in every lab namespace, so
    /// no router solicitations or MLD reports show up in packet counters).
    /// Every interface that gets an IPv4 address also gets its twin from
    /// 2001:2::/48 ([`addr::v6_of`]), every route its IPv6 twin, and the
    /// gateway and router forward IPv6. Addresses are added `nodad` and
    /// duplicate address detection is off in every namespace (link-local
    /// addresses included), so nothing waits out DAD's second; router
    /// advertisements are ignored (`accept_ra = 0`), so no address or
    /// route appears that the lab did not make. Not with the fleet lab.
    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }

    /// TX checksum offload on the clients' and backends' veths (default: on,
    /// the veths' own default). With it on — as in every container and VM —
    /// frames reach the gateway with only a partial TCP checksum
    /// (CHECKSUM_PARTIAL) that xdplb must complete before it redirects them.
    /// `false` emulates NICs that deliver complete checksums; at most one
    /// test should use it (tests/README.md, "The lab").
    pub fn tx_checksum_offload(mut self, on: bool) -> Self {
        self.tx_checksum_offload = on;
        self
    }

    /// Puts a router namespace `rt` between the clients and the gateway
    /// (default: none, the clients are on the gateway's segment). The
    /// clients' link to it has MTU `mtu`; the router's link to the gateway
    /// (198.18.3.0/24) stays at 1500. The clients advertise an MSS of 1460
    /// anyway (route `advmss`, as a host on a 1500-byte LAN behind a
    /// smaller tunnel does), so backends send full-size DF segments and the
    /// router must answer them with ICMP fragmentation-needed: path-MTU
    /// discovery through the VIP.
    pub fn router_mtu(mut self, mtu: u32) -> Self {
        self.router_mtu = Some(mtu);
        self
    }

    /// A lab for direct server return (`dsr` and `tunnel` pools): a router
    /// namespace `rt` with three legs — the clients' segment (`rtc`
    /// 198.18.0.1, their default route), a transit link to the gateway
    /// (`rtg` 198.18.3.2 ↔ `gwc` 198.18.3.1, VIPs routed via the gateway)
    /// and the backends' bridge (`rtb` 198.18.1.254). The backends' default
    /// route is the router, not the gateway, so their replies reach the
    /// clients without crossing the gateway. Backends get `arp_ignore = 1`
    /// and `arp_announce = 2` (all and `eth0`), so a VIP held on their
    /// loopback ([`Lab::vip_on_loopback`]) is never answered or announced
    /// on the bridge. The router's reverse-path filter is off: replies from
    /// a VIP arrive on `rtb` while the router routes the VIP via `rtg`.
    /// NAT pools do not work in such a lab (their replies skip the
    /// gateway's reverse NAT). Combines with [`router_mtu`](Self::router_mtu).
    pub fn direct_return(mut self, on: bool) -> Self {
        self.direct_return = on;
        self
    }

    /// Queues of the link between the client and the gateway (default 1):
    /// `gwc` gets `n` RX queues and `cl0` `n` TX queues. A veth runs XDP
    /// in the NAPI of the RX queue the sender's TX queue maps to, on the
    /// sending CPU, so with several queues and senders on several CPUs
    /// the gateway's program runs on all of them at once, as on a NIC
    /// with RSS (one queue serialises it). One client, no router.
    pub fn client_queues(mut self, n: u32) -> Self {
        self.queues = n;
        self
    }

    /// Creates the namespaces and links. Removes stale labs of dead
    /// processes first. On error everything created so far is removed.
    pub fn build(self) -> Result<Lab> {
        ensure!(is_root(), "a lab needs root (network namespaces)");
        ensure!(
            (1..=MAX_CLIENTS).contains(&self.clients),
            "clients must be 1..={MAX_CLIENTS}, not {}",
            self.clients
        );
        ensure!(
            self.backends <= MAX_BACKENDS,
            "backends must be at most {MAX_BACKENDS}, not {}",
            self.backends
        );
        ensure!(
            !(self.ipv6 && self.fleet.is_some()),
            "the fleet lab is IPv4 only: ipv6(true) is not supported with it"
        );
        ensure!(
            !(self.pair && (self.ipv6 || self.fleet.is_some())),
            "the pair lab is IPv4 only and not a fleet"
        );
        ensure!(
            self.queues == 1
                || (self.clients == 1 && self.router_mtu.is_none() && !self.direct_return
                    && self.fleet.is_none() && !self.pair),
            "client_queues({}) needs one client on the gateway's segment (no router, fleet or pair)",
            self.queues
        );
        ensure!(
            (1..=MAX_QUEUES).contains(&self.queues),
            "client_queues must be 1..={MAX_QUEUES}, not {}",
            self.queues
        );
        if let Some(m) = self.router_mtu {
            ensure!(
                (MIN_ROUTER_MTU..=MAX_ROUTER_MTU).contains(&m),
                "router_mtu must be {MIN_ROUTER_MTU}..={MAX_ROUTER_MTU}, not {m}"
            );
        }
        for tool in ["ip", "ethtool"] {
            ensure!(
                which(tool),
                "`{tool}` not found: run `cargo xtask setup` (installs iproute2, ethtool)"
            );
        }
        Lab::cleanup_stale();
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NS_MARK}{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join("xdplb-lab").join(&prefix);
        let mut lab = Lab {
            prefix,
            spec: self.clone(),
            names: Vec::new(),
            children: Mutex::new(Vec::new()),
            dir,
            spawned: AtomicU32::new(0),
        };
        // `lab` is dropped on any error below, which removes what exists.
        std::fs::create_dir_all(&lab.dir)
            .with_context(|| format!("create {}", lab.dir.display()))?;
        lab.create(&self)?;
        Ok(lab)
    }
}

/// A running lab. Every method taking `ns` accepts a short name
/// (`"client"` (= `"c1"`), `"c2"`, `"gw"`, `"sw"`, `"b1"`, …) or the full
/// namespace name.
pub struct Lab {
    prefix: String,
    spec: LabBuilder,
    /// (short, full) names of the namespaces created, in creation order.
    names: Vec<(String, String)>,
    children: Mutex<Vec<Arc<Mutex<Child>>>>,
    dir: PathBuf,
    spawned: AtomicU32,
}

impl Lab {
    /// Starts configuring a lab (2 backends, 1 client by default).
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// This lab's prefix, e.g. `xl4242-0`; every namespace name starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Full name of a lab namespace.
    ///
    /// # Panics
    /// If `name` is not one of this lab's namespaces (a test bug).
    pub fn ns(&self, name: &str) -> &str {
        self.resolve(name)
            .unwrap_or_else(|| panic!("lab {} has no namespace {name:?}", self.prefix))
    }

    fn resolve(&self, name: &str) -> Option<&str> {
        let short = if name == "client" { "c1" } else { name };
        self.names
            .iter()
            .find(|(s, f)| s == short || f == name)
            .map(|(_, f)| f.as_str())
    }

    /// Full name of the gateway namespace (where xdplb runs).
    pub fn gw_ns(&self) -> &str {
        self.ns("gw")
    }

    /// Full name of client `i`'s namespace (0-based: `c1` is 0).
    pub fn client_ns(&self, i: usize) -> &str {
        self.ns(&format!("c{}", i + 1))
    }

    /// Full name of backend `i`'s namespace (0-based: `b1` is 0).
    pub fn backend_ns(&self, i: usize) -> &str {
        self.ns(&format!("b{}", i + 1))
    }

    /// Number of backends.
    pub fn backends(&self) -> usize {
        self.spec.backends
    }

    /// Number of clients.
    pub fn clients(&self) -> usize {
        self.spec.clients
    }

    /// The gateway's interfaces, client side first: what goes into
    /// `[dataplane] interfaces` of a lab config.
    pub fn gw_ifaces() -> [&'static str; 2] {
        [GW_CLIENT_IF, GW_BACKEND_IF]
    }

    /// Address of backend `i` (0-based): 198.18.1.11, .12, …
    pub fn backend_addr(i: usize) -> Ipv4Addr {
        addr::backend_addr(i)
    }

    /// Address of client `i` (0-based): 198.18.0.2, .3, …
    pub fn client_addr(i: usize) -> Ipv4Addr {
        addr::client_addr(i)
    }

    /// VIP `i` (0-based): 198.18.2.10, .11, …
    pub fn vip(i: usize) -> Ipv4Addr {
        addr::vip(i)
    }

    /// A per-lab directory for configs and logs, removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A per-lab bpffs pin path (`/sys/fs/bpf/<prefix>`, not created);
    /// removed on drop, so pins never leak into other tests.
    pub fn pin_path(&self) -> PathBuf {
        Path::new(BPFFS).join(&self.prefix)
    }

    /// A per-lab admin socket path (inside [`dir`](Lab::dir)).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("xdplb.sock")
    }

    /// Runs `args` in `ns` (`ip netns exec`) and returns its output,
    /// whatever the exit status.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, ns: &str, args: &[S]) -> Result<Output> {
        self.exec_via(ns, Entry::NetnsExec, args)
    }

    /// Like [`exec`](Lab::exec), but entering only the network namespace
    /// (`nsenter --net`), keeping this process's mount namespace. `ip netns
    /// exec` mounts a fresh /sys in a private mount namespace, where
    /// /sys/fs/bpf is empty: anything that pins BPF objects (xdplb) must
    /// run this way to pin into the host's bpffs.
    pub fn exec_net<S: AsRef<std::ffi::OsStr>>(&self, ns: &str, args: &[S]) -> Result<Output> {
        self.exec_via(ns, Entry::NetOnly, args)
    }

    fn exec_via<S: AsRef<std::ffi::OsStr>>(
        &self,
        ns: &str,
        entry: Entry,
        args: &[S],
    ) -> Result<Output> {
        let full = self.ns(ns);
        ensure!(!args.is_empty(), "exec in {full}: empty command");
        entry
            .command(full)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("ip netns exec {full} {}", show(args)))
    }

    /// Like [`exec`](Lab::exec), but fails on a non-zero exit (with its
    /// stderr) and returns stdout.
    pub fn exec_ok<S: AsRef<std::ffi::OsStr>>(&self, ns: &str, args: &[S]) -> Result<String> {
        let out = self.exec(ns, args)?;
        if !out.status.success() {
            bail!(
                "`ip netns exec {} {}` failed ({}): {}",
                self.ns(ns),
                show(args),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `args` in `ns`, with stdout and stderr going to a log file in
    /// [`dir`](Lab::dir). The process is killed when the returned handle or
    /// the lab is dropped, whichever comes first.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(&self, ns: &str, args: &[S]) -> Result<LabChild> {
        self.spawn_env(ns, args, &[])
    }

    /// [`spawn`](Lab::spawn) with extra environment variables.
    pub fn spawn_env<S: AsRef<std::ffi::OsStr>>(
        &self,
        ns: &str,
        args: &[S],
        env: &[(&str, &str)],
    ) -> Result<LabChild> {
        self.spawn_via(ns, Entry::NetnsExec, args, env)
    }

    /// [`spawn_env`](Lab::spawn_env) entering only the network namespace;
    /// see [`exec_net`](Lab::exec_net).
    pub fn spawn_net<S: AsRef<std::ffi::OsStr>>(
        &self,
        ns: &str,
        args: &[S],
        env: &[(&str, &str)],
    ) -> Result<LabChild> {
        self.spawn_via(ns, Entry::NetOnly, args, env)
    }

    fn spawn_via<S: AsRef<std::ffi::OsStr>>(
        &self,
        ns: &str,
        entry: Entry,
        args: &[S],
        env: &[(&str, &str)],
    ) -> Result<LabChild> {
        let full = self.ns(ns).to_owned();
        ensure!(!args.is_empty(), "spawn in {full}: empty command");
        let prog = Path::new(args[0].as_ref())
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cmd".into());
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let short = self.short_of(&full).to_owned();
        let log = self.dir.join(format!("{short}-{prog}-{n}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        // `ip netns exec` execs the command, so the child's pid is the
        // command's own and signals reach it directly.
        let child = entry
            .command(&full)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn `{}` in {full}", show(args)))?;
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        lock(&self.children).push(Arc::clone(&child));
        Ok(LabChild {
            child,
            pid,
            log,
            what: format!("{short}: {}", show(args)),
        })
    }

    /// Runs `f` on a thread that entered `ns` (setns on
    /// `/run/netns/<name>`, CLONE_NEWNET), and returns its result. Sockets
    /// created inside belong to `ns` for their whole life. A panic in `f`
    /// is propagated.
    pub fn run_in<T: Send, F: FnOnce() -> T + Send>(&self, ns: &str, f: F) -> Result<T> {
        run_in_netns(self.ns(ns), f)
    }

    /// Writes a sysctl inside `ns` (e.g. `"net.ipv4.ip_forward"`, `"1"`).
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let full = self.ns(ns);
        self.run_in(ns, || std::fs::write(&path, value))?
            .with_context(|| format!("sysctl {key}={value} in {full}"))
    }

    /// Bytes received and sent by `ifname` in `ns` so far (its
    /// `/sys/class/net/IF/statistics/{rx,tx}_bytes`): which way traffic
    /// went, e.g. that replies of a direct-return pool bypass the gateway.
    pub fn link_bytes(&self, ns: &str, ifname: &str) -> Result<(u64, u64)> {
        let read = |what: &str| -> Result<u64> {
            let path = format!("/sys/class/net/{ifname}/statistics/{what}_bytes");
            let out = self.exec_ok(ns, &["cat", &path])?;
            out.trim()
                .parse()
                .with_context(|| format!("{path} in {}: {out:?}", self.ns(ns)))
        };
        Ok((read("rx")?, read("tx")?))
    }

    /// Puts `vip` on backend `i`'s loopback (`ip addr add VIP/32 dev lo`,
    /// or `/128` for an IPv6 VIP), as a `dsr` or `tunnel` backend must hold
    /// it: packets to the VIP are then local, and the backend answers from
    /// it. An IPv6 VIP on `lo` needs no counterpart of `arp_ignore`: Linux
    /// answers a neighbour solicitation only for the receiving interface's
    /// own addresses. Idempotent.
    pub fn vip_on_loopback(&self, i: usize, vip: impl Into<IpAddr>) -> Result<()> {
        let vip = vip.into();
        let len = if vip.is_ipv4() { 32 } else { 128 };
        let ns = self.backend_ns(i).to_owned();
        let have = self.exec_ok(&ns, &["ip", "-o", "addr", "show", "dev", "lo"])?;
        if have.contains(&format!(" {vip}/{len} ")) {
            return Ok(());
        }
        self.exec_ok(
            &ns,
            &["ip", "addr", "add", &format!("{vip}/{len}"), "dev", "lo"],
        )
        .map(drop)
    }

    /// Where `xdplb decap --interface eth0` on backend `i` pins its program
    /// and maps by default: `/sys/fs/bpf/xdplb-decap/ns-<namespace>/eth0`
    /// (per network namespace, named as `ip netns identify` names it; not
    /// created); removed with the lab.
    pub fn decap_pin_path(&self, i: usize) -> PathBuf {
        decap_ns_root(self.backend_ns(i)).join(BACKEND_IF)
    }

    /// MAC address of `ifname` in `ns` (e.g. a backend's `eth0`, for dsr).
    pub fn mac(&self, ns: &str, ifname: &str) -> Result<String> {
        let path = format!("/sys/class/net/{ifname}/address");
        let out = self.exec_ok(ns, &["cat", &path])?;
        Ok(out.trim().to_owned())
    }

    /// Short name of a full namespace name of this lab.
    fn short_of<'a>(&'a self, full: &'a str) -> &'a str {
        self.names
            .iter()
            .find(|(_, f)| f == full)
            .map(|(s, _)| s.as_str())
            .unwrap_or(full)
    }

    pub(crate) fn add_ns(&mut self, short: &str) -> Result<String> {
        let full = format!("{}-{short}", self.prefix);
        ip(&["netns", "add", &full])?;
        self.names.push((short.to_owned(), full.clone()));
        ip(&["-n", &full, "link", "set", "lo", "up"])?;
        for key in ["all", "default"] {
            let conf = format!("net.ipv6.conf.{key}");
            if self.spec.ipv6 {
                // Before any interface exists, so every one inherits them
                // (`default`); `nodad` on each address covers the rest.
                self.sysctl(short, &format!("{conf}.accept_dad"), "0")?;
                self.sysctl(short, &format!("{conf}.accept_ra"), "0")?;
            } else {
                self.sysctl(short, &format!("{conf}.disable_ipv6"), "1")?;
            }
        }
        Ok(full)
    }

    fn create(&mut self, spec: &LabBuilder) -> Result<()> {
        if let Some(gateways) = spec.fleet {
            return self.create_fleet(gateways, spec.backends);
        }
        if spec.pair {
            return self.create_pair(spec.clients, spec.backends);
        }
        let gw = self.add_ns("gw")?;
        let sw = self.add_ns("sw")?;
        let router = if spec.router_mtu.is_some() || spec.direct_return {
            Some(self.add_ns("rt")?)
        } else {
            None
        };
        let clients: Vec<String> = (1..=spec.clients)
            .map(|i| self.add_ns(&format!("c{i}")))
            .collect::<Result<_>>()?;
        let backends: Vec<String> = (1..=spec.backends)
            .map(|i| self.add_ns(&format!("b{i}")))
            .collect::<Result<_>>()?;

        // Gateway: both sides, forwarding on (bpf_fib_lookup needs it too).
        self.sysctl("gw", "net.ipv4.ip_forward", "1")?;
        self.sysctl("gw", "net.ipv4.conf.all.forwarding", "1")?;
        self.forward_ipv6("gw")?;

        // Who the clients' segment ends at: the gateway, or the router
        // (whose other side then faces the gateway on the transit segment).
        let (edge, edge_if) = match &router {
            None => (gw.clone(), GW_CLIENT_IF),
            Some(rt) => (rt.clone(), ROUTER_CLIENT_IF),
        };
        if let Some(rt) = &router {
            self.sysctl("rt", "net.ipv4.ip_forward", "1")?;
            self.sysctl("rt", "net.ipv4.conf.all.forwarding", "1")?;
            self.forward_ipv6("rt")?;
            veth(&gw, GW_CLIENT_IF, rt, ROUTER_GW_IF)?;
            self.gro_on("rt", ROUTER_GW_IF)?;
        }

        // Client side.
        // (namespace, interface) of every link on the client segment.
        let mut client_links: Vec<(String, String)> = vec![(edge.clone(), edge_if.into())];
        if let [client] = clients.as_slice() {
            veth_queues(&edge, edge_if, client, CLIENT_IF, spec.queues)?;
            if router.is_none() {
                self.gro_on("c1", CLIENT_IF)?;
            }
            client_links.push((client.clone(), CLIENT_IF.into()));
        } else {
            let uplink = format!("to-{}", if router.is_some() { "rt" } else { "gwc" });
            bridge(&sw, CLIENT_BRIDGE)?;
            veth(&edge, edge_if, &sw, &uplink)?;
            port(&sw, &uplink, CLIENT_BRIDGE)?;
            if router.is_none() {
                self.gro_on("sw", &uplink)?;
            }
            client_links.push((sw.clone(), CLIENT_BRIDGE.into()));
            client_links.push((sw.clone(), uplink));
            for (i, client) in clients.iter().enumerate() {
                let p = format!("to-c{}", i + 1);
                veth(client, CLIENT_IF, &sw, &p)?;
                port(&sw, &p, CLIENT_BRIDGE)?;
                client_links.push((sw.clone(), p));
                client_links.push((client.clone(), CLIENT_IF.into()));
            }
        }
        if let Some(mtu) = spec.router_mtu {
            // Every interface of the client segment, so the link has one MTU.
            for (ns, ifname) in &client_links {
                ip(&["-n", ns, "link", "set", ifname, "mtu", &mtu.to_string()])?;
            }
        }
        // Backend side: one L2 segment on br0.
        bridge(&sw, BACKEND_BRIDGE)?;
        veth(&gw, GW_BACKEND_IF, &sw, "to-gw")?;
        port(&sw, "to-gw", BACKEND_BRIDGE)?;
        self.gro_on("sw", "to-gw")?;
        for (i, backend) in backends.iter().enumerate() {
            let p = format!("to-b{}", i + 1);
            veth(backend, BACKEND_IF, &sw, &p)?;
            port(&sw, &p, BACKEND_BRIDGE)?;
        }
        if let (true, Some(rt)) = (spec.direct_return, &router) {
            // The router's leg on the backends' segment: their way back.
            veth(rt, ROUTER_BACKEND_IF, &sw, "to-rt-b")?;
            port(&sw, "to-rt-b", BACKEND_BRIDGE)?;
            for key in ["all", "default", ROUTER_BACKEND_IF] {
                self.sysctl("rt", &format!("net.ipv4.conf.{key}.rp_filter"), "0")?;
            }
        }

        // Addresses and routes.
        match &router {
            None => self.up_dual(&gw, GW_CLIENT_IF, GW_CLIENT_ADDR)?,
            Some(rt) => {
                self.up_dual(&gw, GW_CLIENT_IF, GW_TRANSIT_ADDR)?;
                self.up_dual(rt, ROUTER_GW_IF, ROUTER_TRANSIT_ADDR)?;
                self.up_dual(rt, ROUTER_CLIENT_IF, ROUTER_CLIENT_ADDR)?;
                self.route_dual(rt, VIP_NET, GW_TRANSIT_ADDR, None)?;
                if spec.direct_return {
                    self.up_dual(rt, ROUTER_BACKEND_IF, ROUTER_BACKEND_ADDR)?;
                } else {
                    self.route_dual(rt, BACKEND_NET, GW_TRANSIT_ADDR, None)?;
                }
                self.route_dual(&gw, CLIENT_NET, ROUTER_TRANSIT_ADDR, None)?;
            }
        }
        self.up_dual(&gw, GW_BACKEND_IF, GW_BACKEND_ADDR)?;
        for (i, client) in clients.iter().enumerate() {
            self.up_dual(client, CLIENT_IF, addr::client_addr(i))?;
            let advmss = spec.router_mtu.map(|_| CLIENT_ADVMSS);
            self.route_dual(client, "default", GW_CLIENT_ADDR, advmss)?;
            if !spec.tx_checksum_offload {
                self.tx_csum_off(&format!("c{}", i + 1), CLIENT_IF)?;
            }
        }
        // With direct return the backends answer clients through the
        // router; otherwise through the gateway (which reverses its NAT).
        let backend_gw = if spec.direct_return {
            ROUTER_BACKEND_ADDR
        } else {
            GW_BACKEND_ADDR
        };
        for (i, backend) in backends.iter().enumerate() {
            self.up_dual(backend, BACKEND_IF, addr::backend_addr(i))?;
            self.route_dual(backend, "default", backend_gw, None)?;
            if spec.direct_return {
                // A VIP on loopback: never answer ARP for it on eth0
                // (arp_ignore 1: only for addresses of the asking
                // interface), never use it as an ARP source (arp_announce
                // 2: the best local address of the outgoing interface).
                let short = format!("b{}", i + 1);
                for key in ["all", BACKEND_IF] {
                    self.sysctl(&short, &format!("net.ipv4.conf.{key}.arp_ignore"), "1")?;
                    self.sysctl(&short, &format!("net.ipv4.conf.{key}.arp_announce"), "2")?;
                }
            }
            if !spec.tx_checksum_offload {
                self.tx_csum_off(&format!("b{}", i + 1), BACKEND_IF)?;
            }
        }
        Ok(())
    }

    /// `a` on `ifname` in `ns` (a full name), and in an IPv6 lab its twin
    /// ([`addr::v6_of`]) too, `nodad`; the link up.
    fn up_dual(&self, ns: &str, ifname: &str, a: Ipv4Addr) -> Result<()> {
        if self.spec.ipv6 {
            let a6 = format!("{}/{PREFIX_LEN6}", addr::v6_of(a));
            ip(&["-n", ns, "addr", "add", &a6, "dev", ifname, "nodad"])?;
        }
        up_with_addr(ns, ifname, a)
    }

    /// A route to `dest` (`"default"` or a lab prefix such as
    /// [`VIP_NET`]) via `via` in `ns` (a full name), and in an IPv6 lab
    /// its twin. `advmss` is the IPv4 route's; the IPv6 route's is 20
    /// bytes less (its header is 20 bytes longer), so both promise the
    /// same packet size.
    fn route_dual(&self, ns: &str, dest: &str, via: Ipv4Addr, advmss: Option<u16>) -> Result<()> {
        let mut args = vec![
            "-n".to_string(),
            ns.into(),
            "route".into(),
            "add".into(),
            dest.into(),
            "via".into(),
            via.to_string(),
        ];
        if let Some(m) = advmss {
            args.extend(["advmss".into(), m.to_string()]);
        }
        ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        if self.spec.ipv6 {
            let dest6 = if dest == "default" {
                dest.to_string()
            } else {
                addr::v6_net(dest)
            };
            let mut args = vec![
                "-6".to_string(),
                "-n".into(),
                ns.into(),
                "route".into(),
                "add".into(),
                dest6,
                "via".into(),
                addr::v6_of(via).to_string(),
            ];
            if let Some(m) = advmss {
                args.extend(["advmss".into(), (m - 20).to_string()]);
            }
            ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        Ok(())
    }

    /// IPv6 forwarding on in `ns`, in an IPv6 lab (`bpf_fib_lookup` for
    /// AF_INET6 answers FWD_DISABLED without it, as for IPv4).
    fn forward_ipv6(&self, ns: &str) -> Result<()> {
        if self.spec.ipv6 {
            self.sysctl(ns, "net.ipv6.conf.all.forwarding", "1")?;
            self.sysctl(ns, "net.ipv6.conf.default.forwarding", "1")?;
        }
        Ok(())
    }

    /// Whether this lab is dual-stack ([`LabBuilder::ipv6`]).
    pub fn is_ipv6(&self) -> bool {
        self.spec.ipv6
    }

    /// IPv6 address of backend `i` (0-based): 2001:2:0:1::11, ::12, …
    /// (only configured in an IPv6 lab).
    pub fn backend_addr6(i: usize) -> std::net::Ipv6Addr {
        addr::backend_addr6(i)
    }

    /// IPv6 address of client `i` (0-based): 2001:2::2, ::3, …
    pub fn client_addr6(i: usize) -> std::net::Ipv6Addr {
        addr::client_addr6(i)
    }

    /// IPv6 VIP `i` (0-based): 2001:2:0:2::10, ::11, …
    pub fn vip6(i: usize) -> std::net::Ipv6Addr {
        addr::vip6(i)
    }

    /// GRO on the far end of a gateway veth, so it accepts XDP-redirected
    /// frames (without it veth drops them silently; shared/TOOLCHAIN.md).
    pub(crate) fn gro_on(&self, ns: &str, ifname: &str) -> Result<()> {
        self.exec_ok(ns, &["ethtool", "-K", ifname, "gro", "on"])
            .map(drop)
    }

    fn tx_csum_off(&self, ns: &str, ifname: &str) -> Result<()> {
        self.exec_ok(ns, &["ethtool", "-K", ifname, "tx", "off"])
            .map(drop)
    }

    /// Removes namespaces, pins and lab directories left by lab processes
    /// that no longer run (a crashed or killed test). Labs of live
    /// processes — including this one — are left alone. Errors are printed,
    /// not returned: this is best effort.
    pub fn cleanup_stale() {
        let me = std::process::id();
        let dead = |name: &str| match stale_pid(name) {
            Some(pid) => pid != me && !Path::new(&format!("/proc/{pid}")).exists(),
            None => false,
        };
        if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if dead(&name) {
                    eprintln!("lab: removing stale namespace {name}");
                    kill_ns_pids(&name);
                    if let Err(err) = ip(&["netns", "del", &name]) {
                        eprintln!("lab: {err:#}");
                    }
                }
            }
        }
        for root in [
            PathBuf::from(BPFFS),
            std::env::temp_dir().join("xdplb-lab"),
            Path::new(BPFFS).join(DECAP_PINS),
        ] {
            if let Ok(entries) = std::fs::read_dir(&root) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let name = name.strip_prefix("ns-").unwrap_or(&name);
                    if dead(name) {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        // 1. Our own children (reaped under their lock: no pid reuse race).
        let children = std::mem::take(&mut *lock(&self.children));
        for c in &children {
            kill_and_reap(&mut lock(c));
        }
        if panicking {
            self.print_logs();
        }
        // 2. Anything else still running inside (daemons that forked).
        // 3. The namespaces; deleting one destroys its veths and bridges.
        for (_, full) in self.names.iter().rev() {
            kill_ns_pids(full);
            if let Err(err) = ip(&["netns", "del", full]) {
                eprintln!("lab: {err:#}");
            }
        }
        let decap = self.names.iter().map(|(_, full)| decap_ns_root(full));
        for pins in std::iter::once(self.pin_path()).chain(decap) {
            if pins.exists() {
                if let Err(err) = std::fs::remove_dir_all(&pins) {
                    eprintln!("lab: cannot remove {}: {err}", pins.display());
                }
            }
        }
        // Shared by every lab (and the host): only once empty.
        let _ = std::fs::remove_dir(Path::new(BPFFS).join(DECAP_PINS));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn print_logs(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!("---- lab log {} (last {} lines)", log.display(), tail.len());
            for l in tail {
                eprintln!("  {l}");
            }
        }
    }
}

/// A process started with [`Lab::spawn`]; killed (SIGKILL) when dropped.
pub struct LabChild {
    child: Arc<Mutex<Child>>,
    pid: u32,
    log: PathBuf,
    what: String,
}

impl LabChild {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        matches!(lock(&self.child).try_wait(), Ok(None))
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`, `libc::SIGHUP`) if still running.
    pub fn signal(&self, sig: i32) -> Result<()> {
        let mut child = lock(&self.child);
        if child.try_wait()?.is_some() {
            bail!("{} has already exited", self.what);
        }
        // SAFETY: the child is not reaped (we hold its lock and it has not
        // exited), so the pid still names it.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("kill -{sig} {}", self.pid));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        crate::wait_until(timeout, Duration::from_millis(20), || {
            status = lock(&self.child).try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// SIGTERM, then waits up to `timeout` for the exit status.
    pub fn terminate(&self, timeout: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        self.wait_exit(timeout)
            .with_context(|| format!("{} did not exit within {timeout:?} of SIGTERM", self.what))
    }

    /// SIGKILL and reap.
    pub fn kill(&self) {
        kill_and_reap(&mut lock(&self.child));
    }

    /// Path of the file receiving its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LabChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `f` on a thread inside the network namespace `full` (a full lab
/// namespace name, [`Lab::ns`]). [`Lab::run_in`] without the `Lab`: for
/// a thread of a test's own that must not borrow the lab (e.g. traffic
/// kept flowing while the test restarts the daemon).
pub fn run_in_netns<T: Send, F: FnOnce() -> T + Send>(full: &str, f: F) -> Result<T> {
    let path = Path::new(NETNS_DIR).join(full);
    let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<T> {
            // SAFETY: setns on a valid namespace fd; it only changes this
            // (scoped, short-lived) thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("setns into {}", path.display()));
            }
            drop(file);
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// `xl<pid>-<n>-…` → pid.
fn stale_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_MARK)?;
    let (pid, rest) = rest.split_once('-')?;
    let (n, _) = rest.split_once('-').unwrap_or((rest, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn kill_and_reap(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
        crate::wait_until(REAP_TIMEOUT, Duration::from_millis(10), || {
            !matches!(child.try_wait(), Ok(None))
        });
    }
}

/// SIGKILLs every process inside `full` (`ip netns pids`).
fn kill_ns_pids(full: &str) {
    let Ok(out) = Command::new("ip")
        .args(["netns", "pids", full])
        .stdin(Stdio::null())
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
    {
        // SAFETY: plain kill(2) on a pid that `ip` reported inside our
        // namespace; a race with its exit only makes this a no-op.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run `ip {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A veth pair created inside `ns_a` with its peer placed directly in `ns_b`.
pub(crate) fn veth(ns_a: &str, a: &str, ns_b: &str, b: &str) -> Result<()> {
    veth_queues(ns_a, a, ns_b, b, 1)
}

/// [`veth`] with `queues` TX and RX queues on each end.
fn veth_queues(ns_a: &str, a: &str, ns_b: &str, b: &str, queues: u32) -> Result<()> {
    let q = queues.to_string();
    let mut args = vec!["-n", ns_a, "link", "add", a];
    if queues > 1 {
        args.extend(["numtxqueues", &q, "numrxqueues", &q]);
    }
    args.extend(["type", "veth", "peer", "name", b]);
    if queues > 1 {
        args.extend(["numtxqueues", &q, "numrxqueues", &q]);
    }
    args.extend(["netns", ns_b]);
    ip(&args)
}

pub(crate) fn bridge(ns: &str, name: &str) -> Result<()> {
    ip(&["-n", ns, "link", "add", name, "type", "bridge"])?;
    ip(&["-n", ns, "link", "set", name, "up"])
}

pub(crate) fn port(ns: &str, ifname: &str, bridge: &str) -> Result<()> {
    ip(&["-n", ns, "link", "set", ifname, "master", bridge])?;
    ip(&["-n", ns, "link", "set", ifname, "up"])
}

pub(crate) fn up_with_addr(ns: &str, ifname: &str, a: Ipv4Addr) -> Result<()> {
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{a}/{PREFIX_LEN}"),
        "dev",
        ifname,
    ])?;
    ip(&["-n", ns, "link", "set", ifname, "up"])
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        || ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file())
}

fn show<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_names() {
        assert_eq!(stale_pid("xl4242-0-gw"), Some(4242));
        assert_eq!(stale_pid("xl4242-17-b10"), Some(4242));
        assert_eq!(stale_pid("xl4242-x-gw"), None);
        assert_eq!(stale_pid("xlab-0-gw"), None);
        assert_eq!(stale_pid("other"), None);
        // A lab's pin and log directory is the bare prefix.
        assert_eq!(stale_pid("xl4242-3"), Some(4242));
    }
}

/// How a command enters a lab namespace.
#[derive(Clone, Copy)]
enum Entry {
    /// `ip netns exec`: network namespace plus a private mount namespace
    /// with that network namespace's /sys.
    NetnsExec,
    /// `nsenter --net`: the network namespace only. Both exec the command,
    /// so the child's pid is the command's own and signals reach it.
    NetOnly,
}

impl Entry {
    fn command(self, full: &str) -> Command {
        match self {
            Entry::NetnsExec => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", full]);
                c
            }
            Entry::NetOnly => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{full}")).arg("--");
                c
            }
        }
    }
}
