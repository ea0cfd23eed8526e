//! The `xdplb` command line: clap definitions (their doc comments are the
//! `--help` text) and what each subcommand does.
//!
//! Every subcommand returns `Result<(), CliError>`; `main` prints a failure
//! as one `error: ...` line and exits 1. Human output is built by the pure
//! functions in [`format`].
mod docs;
pub mod format;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand};
use thiserror::Error;
use tokio::net::TcpListener;

use crate::{
    admin::{self, AdminError, Request},
    config::{self, ConfigError, DEFAULT_ADMIN_SOCKET, DEFAULT_PIN_PATH},
    dataplane::{self, CounterReader, DataplaneError},
    load::{
        agent::{serve_agent_with, AgentPolicy, Cidr, Sampler, DEFAULT_MAX_CONNECTIONS},
        LoadError,
    },
    owner,
};

/// Where `xdplb run` and `xdplb check` read the config by default.
pub const DEFAULT_CONFIG: &str = "/etc/xdplb/xdplb.toml";

/// xdplb: an XDP layer-4 TCP load balancer with health checks, warm spares
/// and load-driven weights.
///
/// `xdplb run` is the daemon; the other commands inspect or steer it.
/// Logs go to stderr, filtered by RUST_LOG (default: info).
#[derive(Debug, Parser)]
#[command(name = "xdplb", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the controller in the foreground (the daemon).
    ///
    /// Loads and attaches the XDP program (or adopts the one already
    /// pinned), probes backends, scores load and keeps the maps in sync.
    /// SIGHUP reloads the config; SIGTERM/SIGINT exit leaving the data plane
    /// pinned and forwarding with its last state (`xdplb down` removes it).
    /// A config it refuses makes it exit with status 78 (EX_CONFIG) before
    /// it touches anything: the packaged unit does not restart on that
    /// status, and starts xdplb-fallback.service instead.
    Run(RunArgs),
    /// Detach the XDP programs and remove the pinned maps.
    ///
    /// Established flows are forgotten. The pin path is --pin-path if
    /// given, else the one in --config, else /sys/fs/bpf/xdplb. Refuses
    /// while an `xdplb run` owns that pin path (naming its pid) unless
    /// --force. Removes only xdplb's own pins (its maps and `link_*`);
    /// anything else under the pin path is left, and named.
    Down(DownArgs),
    /// Withdraw this gateway's VIP announcements ([announce]): empty the
    /// routes file and tell BIRD. The data plane is left alone.
    ///
    /// With --after-hold (what xdplb-hold.service runs when the controller
    /// exits): first wait [announce] hold_ms, then withdraw only if no
    /// controller owns the data plane by then, so a restart or an upgrade
    /// keeps the VIPs announced and a controller gone for longer (stopped,
    /// crashed, failing to start) stops attracting traffic.
    Withdraw(WithdrawArgs),
    /// Validate a config file; nothing is attached.
    ///
    /// Errors name the file, line and column. Interfaces are not required to
    /// exist here (that is checked by `xdplb run`), so a config can be
    /// checked on another host. Prints `ok: N pools, M backends`.
    Check(ConfigArg),
    /// Show the running controller's live view: pools, backends, health,
    /// role, state, weight, load and flows.
    Status(StatusArgs),
    /// Exit 0 only when this gateway can serve: for keepalived's
    /// track_script.
    ///
    /// Reads the config for the admin socket, the pin path and the
    /// interfaces, then checks that the controller answers (within 0.9 s),
    /// that the data plane is attached on every configured interface (its
    /// pinned link attached to that very interface), and that at least one
    /// pool has an active backend. Prints `serving: ...` and exits 0, or
    /// prints `error: not serving: REASON` (the first thing missing) and
    /// exits 1. A config it cannot read exits 1 too.
    Serving(ConfigArg),
    /// Show the data plane's counters, read from the pinned maps.
    ///
    /// Works while the controller is stopped. Counters are cumulative since
    /// the data plane was loaded; --watch prints per-second rates instead.
    Stats(StatsArgs),
    /// Drain a backend: no new flows, established flows continue.
    ///
    /// The drain survives reloads and controller restarts until `xdplb
    /// undrain`. With --dry-run, prints what the drain would do (as `xdplb
    /// plan`) and changes nothing.
    Drain(DrainArgs),
    /// What a reload of another config would do, computed by the running
    /// controller without writing anything.
    ///
    /// Per pool: backends and VIPs added, removed, re-weighted; a VIP whose
    /// address, protocol or mode changes; the share of the ring that moves
    /// to another backend; the established flows (last flow census) that
    /// would be drained, reset or stranded; spares activated or drained;
    /// announcements that change; and whether the reload would be refused,
    /// in the words `xdplb reload` uses. Exits 0 if the reload would be
    /// accepted, 1 (with `error: refused: …`) if not.
    Plan(PlanArgs),
    /// Where one client's packet to a VIP goes, and why: run through the
    /// data plane's own code on its live maps, changing nothing.
    ///
    /// Builds the frame the client would send (TCP with --flags, or UDP)
    /// to the MAC of the interface it arrives on (--interface, else the
    /// one the route to CLIENT leaves by), and runs it with
    /// BPF_PROG_TEST_RUN through the data plane's program built with its
    /// writes turned off, over the pinned maps: no flow entry is inserted,
    /// no counter moves, no cache, fragment or answer credit is touched.
    /// Prints the programs and counters on its path, the flow table's
    /// answer (hit or miss, bucket and way), the ring index, the backend
    /// and why (an established flow's pin, drained, down, empty pool …),
    /// the rewritten frame's addresses, MACs and egress interface, and the
    /// verdict. A VIP address without a pool at that port says so (and
    /// that the program answers a closed port); an address that is no VIP
    /// is left to the kernel. The data plane's insert-cap window and
    /// answer credit are its own: explain assumes both have room. Fails
    /// when no data plane is pinned at the pin path.
    Explain(ExplainArgs),
    /// Undo `xdplb drain`: the backend takes new flows again (if healthy and
    /// needed).
    ///
    /// Clears the operator's drain only: a maintenance (`xdplb maint`, or an
    /// agent's `maint`), an agent's `drain` or a weight of 0 stays.
    Undrain(BackendArgs),
    /// Put a backend in maintenance: no new flows, health checks stopped,
    /// established flows continue (HAProxy's MAINT).
    ///
    /// Kept in `state_file`: it survives reloads, restarts, `xdplb down`
    /// and reboots until `xdplb ready`. The backend's load agent is still
    /// polled (an agent can put a backend in maintenance and take it out).
    Maint(BackendArgs),
    /// Return a backend to ready (HAProxy's `set server … state ready`).
    ///
    /// Clears drain and maintenance, whether the operator or the backend's
    /// agent set them (an agent that still answers `drain` or `maint` sets
    /// its state again); health checks resume, and the backend takes new
    /// flows once healthy. A weight set by `xdplb set weight` stays.
    Ready(BackendArgs),
    /// Set a runtime value (HAProxy's `set weight`).
    #[command(subcommand)]
    Set(SetCmd),
    /// Re-read the controller's config file (same as SIGHUP).
    ///
    /// A config that fails validation is refused with the reason, and the
    /// running state is left untouched.
    Reload(SocketArg),
    /// Run the backend-side load agent.
    ///
    /// Answers every TCP connection with one HAProxy agent-check compatible
    /// line, e.g. `up 100% cpu=0.70 mem=0.60 disk=0.50 net=0.80`, then
    /// closes. Utilisation is measured from /proc every second unless
    /// --fixed or --fixed-file is given. Runs until SIGINT/SIGTERM.
    Agent(AgentArgs),
    /// On a backend of a `tunnel` pool: open the tunnels the gateways send
    /// this host.
    ///
    /// Attaches a small XDP program to --interface that strips the outer
    /// header of IPv4-in-IPv4 and IPv6-in-IPv6 packets addressed to one of
    /// this host's addresses from an outer source in --allow (the gateways'
    /// tunnel_source), and passes the inner packet (to the VIP, held on a
    /// loopback) to the kernel, so the backend needs no ipip device or
    /// module. Tunnels to this host from other sources, or whose inner
    /// destination is not an address of this host, are dropped and
    /// counted; an outer CE mark is carried into the inner header (RFC
    /// 6040; CE around a packet that is not ECN-capable is dropped).
    /// Everything else passes untouched. Without --allow it refuses to
    /// attach unless --allow-any is given. The host's addresses are read
    /// when it starts: run it again after adding one. The program stays
    /// attached after the command returns (its link is pinned); --down
    /// removes it, --stats prints its counters.
    Decap(DecapArgs),
    /// Write man pages and shell completions into a directory (packaging).
    #[command(hide = true)]
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where to write `man1/*.1` and `completions/*`.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct DecapArgs {
    /// The interface tunnels arrive on.
    #[arg(long, value_name = "IFACE", required_unless_present_all = ["stats", "pin_path"])]
    pub interface: Option<String>,
    /// Open tunnels whose outer source is in CIDR (repeatable): the
    /// gateways' tunnel_source, e.g. 198.51.100.7/32 or 2001:db8::/64.
    #[arg(long, value_name = "CIDR", value_parser = parse_allow)]
    pub allow: Vec<ipnet::IpNet>,
    /// Open tunnels from any outer source (anyone who can reach this host
    /// can then hand it packets from any inner source).
    #[arg(long, conflicts_with = "allow")]
    pub allow_any: bool,
    /// Remove the program from --interface instead.
    #[arg(long, conflicts_with_all = ["stats", "allow", "allow_any"])]
    pub down: bool,
    /// Print the counters (decapsulated, passed, dropped by reason) and
    /// exit.
    #[arg(long, conflicts_with_all = ["allow", "allow_any"])]
    pub stats: bool,
    /// With --stats: print JSON.
    #[arg(long, requires = "stats")]
    pub json: bool,
    /// Where the program's maps and links are pinned [default:
    /// /sys/fs/bpf/xdplb-decap/<netns>/<IFACE>, <netns> being this network
    /// namespace's `ip netns` name (ns-NAME), host, or its inode
    /// (ns-inode-N)].
    #[arg(long, value_name = "PATH")]
    pub pin_path: Option<PathBuf>,
    /// XDP attach mode: auto (native where the driver has it), native or
    /// generic.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: config::XdpMode,
}

/// `--allow`: a CIDR, or a bare address (one host).
fn parse_allow(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or CIDR (e.g. 198.51.100.7/32)"))
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The config file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Keep a copy of the config last applied (at start and by every
    /// reload) here: what xdplb-fallback.service runs when a restart finds
    /// the file broken, and what xdplb-hold.service withdraws with.
    #[arg(long, value_name = "PATH")]
    pub keep_applied: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WithdrawArgs {
    /// The config whose [announce] to withdraw (and whose pin path names
    /// the controller to wait for). A config that does not exist means
    /// nothing was ever applied: nothing to withdraw.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Wait [announce] hold_ms first, and withdraw only if no controller
    /// owns the data plane by then.
    #[arg(long)]
    pub after_hold: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Read the pin path from this config file (its dataplane.pin_path);
    /// with `[announce]`, its VIPs are withdrawn too. Without --config and
    /// --pin-path, /etc/xdplb/xdplb.toml is read when it exists.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The pin path to take down; overrides --config. [default:
    /// /sys/fs/bpf/xdplb]
    #[arg(long, value_name = "PATH")]
    pub pin_path: Option<PathBuf>,
    /// Take the data plane down even while a controller runs on it (the
    /// controller keeps running, with nothing to steer).
    #[arg(long)]
    pub force: bool,
    /// After withdrawing the VIPs ([announce]), wait this long (ms) before
    /// detaching, so the routers move traffic to other gateways first
    /// (BGP withdrawal, then the routers' FIB update). Skipped when
    /// nothing was announced.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_WITHDRAW_WAIT_MS)]
    pub withdraw_wait: u64,
}

/// `xdplb down --withdraw-wait` by default: a BGP withdrawal reaches the
/// routers and their FIBs within a second or two; this leaves margin.
pub const DEFAULT_WITHDRAW_WAIT_MS: u64 = 5000;

#[derive(Debug, Args)]
pub struct SocketArg {
    /// The controller's admin socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_ADMIN_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as JSON (the fields are a stable interface).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print JSON (with --watch: one object of rates per line).
    #[arg(long)]
    pub json: bool,
    /// Where the data plane is pinned.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Every SECS seconds print per-second rates, until interrupted.
    /// Fractions are allowed (0.5).
    #[arg(long, value_name = "SECS", value_parser = parse_interval)]
    pub watch: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The client's address and port: 198.51.100.7:40000, [2001:db8::7]:40000.
    pub client: SocketAddr,
    /// The VIP and port, of the client's address family.
    pub vip: SocketAddr,
    /// The packet's protocol.
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
    pub protocol: String,
    /// TCP: a new connection's SYN, or an ACK of an established one.
    #[arg(long, default_value = "syn", value_parser = ["syn", "ack"])]
    pub flags: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The interface the frame arrives on. [default: the one the route to
    /// CLIENT leaves by]
    #[arg(long, value_name = "IFACE")]
    pub interface: Option<String>,
    /// Read the pin path and tunnel_source from this config file. Without
    /// --config and --pin-path, /etc/xdplb/xdplb.toml is read when it
    /// exists.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Where the data plane is pinned; overrides --config. [default:
    /// /sys/fs/bpf/xdplb]
    #[arg(long, value_name = "PATH")]
    pub pin_path: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The pool's name.
    pub pool: String,
    /// The backend's name within the pool.
    pub backend: String,
    /// Print what the drain would do; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: the plan as JSON.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The config to plan a reload of (read by the controller).
    #[arg(long, value_name = "PATH")]
    pub config: PathBuf,
    /// The plan as JSON (fields: docs/INTERFACE.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, Subcommand)]
pub enum SetCmd {
    /// Set a backend's weight in place of its config's (0: no new flows).
    ///
    /// 0 takes no new flows (established flows continue, as a drain);
    /// 1..=1000 stands in for the config's `weight`; `config` goes back to
    /// the config's. The agent's weight percent and the load score apply to it as they
    /// would to the config's weight. Kept in `state_file`: it survives
    /// reloads (also ones that change the config's weight), restarts and
    /// `xdplb down` until set back with `config`.
    Weight(SetWeightArgs),
}

#[derive(Debug, Args)]
pub struct SetWeightArgs {
    /// The pool's name.
    pub pool: String,
    /// The backend's name within the pool.
    pub backend: String,
    /// 0..=1000, or `config` for the config's weight.
    #[arg(value_parser = parse_weight, value_name = "N|config")]
    pub weight: WeightArg,
    #[command(flatten)]
    pub socket: SocketArg,
}

/// A weight on the command line: `Some(n)`, or `None` for the config's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightArg(pub Option<u32>);

fn parse_weight(s: &str) -> Result<WeightArg, String> {
    if s == "config" {
        return Ok(WeightArg(None));
    }
    match s.parse::<u32>() {
        Ok(w) if w <= config::MAX_WEIGHT => Ok(WeightArg(Some(w))),
        _ => Err(format!(
            "{s:?} is not a weight: 0..={} (0: no new flows) or `config`",
            config::MAX_WEIGHT
        )),
    }
}

#[derive(Debug, Args)]
pub struct BackendArgs {
    /// The pool's name.
    pub pool: String,
    /// The backend's name within the pool.
    pub backend: String,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Address and port to listen on, e.g. 0.0.0.0:9777 (9777 is what
    /// `[pool.load] agent_port` defaults to). Required: the agent answers
    /// whoever reaches it, so choose the address (and --allow) deliberately.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Answer only peers in this block (ADDR/PREFIX or ADDR); repeatable.
    /// Others are closed without a line. [default: every peer]
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<Cidr>,
    /// Connections answered at once; more are closed without a line.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = parse_max_connections)]
    pub max_connections: usize,
    /// Link capacity in bits per second used for net utilisation, for every
    /// interface. [default: each interface's reported speed, or 10 Gb/s if
    /// it reports none]
    #[arg(long, value_name = "BITS_PER_SEC", conflicts_with_all = ["fixed", "fixed_file"])]
    pub net_capacity: Option<u64>,
    /// The weight percent sent in each reply, 0 to 100 (the load is carried
    /// by the utilisation fields; this is a static operator weight).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub weight_percent: u8,
    /// Report fixed values instead of measuring, in agent-reply syntax,
    /// e.g. "cpu=0.9 mem=0.5 disk=0.1 net=0.3" (optionally with a state
    /// word and percent: "drain 50% cpu=0.1").
    #[arg(long, value_name = "SPEC", conflicts_with = "fixed_file")]
    pub fixed: Option<String>,
    /// Like --fixed, but re-read from this file on every connection.
    #[arg(long, value_name = "PATH")]
    pub fixed_file: Option<PathBuf>,
}

fn parse_max_connections(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=65_535).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a number from 1 to 65535")),
    }
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.01..=86_400.0).contains(&secs) {
        return Err(format!("{s} is out of range (0.01 to 86400 seconds)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Debug, Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `xdplb run` refused its config (exit status [`EX_CONFIG`]).
    #[error(transparent)]
    RunConfig(ConfigError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    NotServing(#[from] crate::serving::NotServing),
    #[error(transparent)]
    Explain(#[from] crate::explain::ExplainError),
    #[error("nothing to take down: no data plane pinned at {}", path.display())]
    NothingPinned { path: PathBuf },
    /// `xdplb plan` / `drain --dry-run`: the change would be refused.
    #[error("refused: {reason}")]
    Refused { reason: String },
    #[error(
        "xdplb decap: refusing to attach to {iface} without --allow CIDR (the gateways' \
         tunnel_source); --allow-any opens tunnels from any source"
    )]
    DecapNoAllow { iface: String },
    #[error("cannot name this network namespace for decap's default pin path: {source}")]
    DecapNetns {
        #[source]
        source: std::io::Error,
    },
    #[error(
        "an `xdplb run` (pid {pid}) owns the data plane at {}: stop it first, or take \
         the data plane down under it with --force",
        path.display()
    )]
    ControllerRunning { path: PathBuf, pid: String },
    #[error(transparent)]
    Owner(#[from] crate::owner::OwnerError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {source}")]
    Signals {
        #[source]
        source: std::io::Error,
    },
    #[error("writing output: {source}")]
    Output {
        #[source]
        source: std::io::Error,
    },
    #[error("the controller answered {cmd} without {what}")]
    EmptyReply {
        cmd: &'static str,
        what: &'static str,
    },
    /// `xdplb run` failed (the controller's error chain, on one line).
    #[error("{message}")]
    Daemon { message: String },
}

/// Exit status of `xdplb run` for a config it refuses (sysexits.h
/// EX_CONFIG): the unit's RestartPreventExitStatus.
pub const EX_CONFIG: u8 = 78;

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::RunConfig(_) => EX_CONFIG,
            _ => 1,
        }
    }
}

/// `xdplb withdraw`: see [`Cmd::Withdraw`].
async fn withdraw(a: WithdrawArgs) -> Result<(), CliError> {
    if !a.config.exists() {
        return print(&format!(
            "nothing to withdraw: {} does not exist (no config applied here)\n",
            a.config.display()
        ));
    }
    let cfg = config::load(&a.config)?;
    let Some(ann) = cfg.announce.as_ref() else {
        return print("nothing to withdraw: no [announce] in the config\n");
    };
    let lock_dir = Path::new(owner::LOCK_DIR);
    if a.after_hold {
        tokio::time::sleep(std::time::Duration::from_millis(ann.hold_ms)).await;
        if let Some(pid) = owner::holder(lock_dir, &cfg.dataplane.pin_path)? {
            return print(&format!(
                "a controller (pid {pid}) owns the data plane again within hold_ms {}: the VIPs \
                 stay announced\n",
                ann.hold_ms
            ));
        }
    }
    crate::announce::withdraw_all(ann)
        .await
        .map_err(|e| CliError::Daemon {
            message: format!("withdrawing the VIPs: {e}"),
        })?;
    tracing::warn!(
        routes = %ann.routes_file.display(),
        "no controller runs: VIP announcements withdrawn (the data plane still forwards \
         established flows)"
    );
    print("VIP routes withdrawn\n")
}

/// Runs one subcommand.
pub async fn execute(cmd: Cmd) -> Result<(), CliError> {
    match cmd {
        Cmd::Run(a) => crate::controller::run(a.config, a.keep_applied)
            .await
            .map_err(|e| match e.downcast::<ConfigError>() {
                Ok(c) => CliError::RunConfig(c),
                Err(e) => CliError::Daemon {
                    message: format!("{e:#}"),
                },
            }),
        Cmd::Withdraw(a) => withdraw(a).await,
        Cmd::Down(a) => down(a).await,
        Cmd::Check(a) => check(&a.config),
        Cmd::Man(a) => docs::generate(&a.out).map_err(|source| CliError::Output { source }),
        Cmd::Status(a) => status(&a.socket.socket, a.json).await,
        Cmd::Serving(a) => {
            let cfg = config::load(&a.config)?;
            let line = crate::serving::check(&cfg).await?;
            print(&format!("{line}\n"))
        }
        Cmd::Explain(a) => explain(a),
        Cmd::Stats(a) => match a.watch {
            None => stats(&a.pin_path, a.json),
            Some(every) => watch(&a.pin_path, a.json, every).await,
        },
        Cmd::Drain(a) if a.dry_run => {
            plan(
                &a.socket.socket,
                Request::PlanDrain {
                    pool: a.pool,
                    backend: a.backend,
                },
                a.json,
            )
            .await
        }
        Cmd::Drain(a) => {
            steer(
                &a.socket.socket,
                Request::Drain {
                    pool: a.pool,
                    backend: a.backend,
                },
            )
            .await
        }
        Cmd::Plan(a) => {
            // The controller reads it: from its own working directory.
            let config = std::path::absolute(&a.config)
                .unwrap_or(a.config)
                .to_string_lossy()
                .into_owned();
            plan(&a.socket.socket, Request::Plan { config }, a.json).await
        }
        Cmd::Undrain(a) => {
            steer(
                &a.socket.socket,
                Request::Undrain {
                    pool: a.pool,
                    backend: a.backend,
                },
            )
            .await
        }
        Cmd::Maint(a) => {
            steer(
                &a.socket.socket,
                Request::Maint {
                    pool: a.pool,
                    backend: a.backend,
                },
            )
            .await
        }
        Cmd::Ready(a) => {
            steer(
                &a.socket.socket,
                Request::Ready {
                    pool: a.pool,
                    backend: a.backend,
                },
            )
            .await
        }
        Cmd::Set(SetCmd::Weight(a)) => {
            steer(
                &a.socket.socket,
                Request::SetWeight {
                    pool: a.pool,
                    backend: a.backend,
                    weight: a.weight.0,
                },
            )
            .await
        }
        Cmd::Reload(a) => steer(&a.socket, Request::Reload {}).await,
        Cmd::Agent(a) => agent(a).await,
        Cmd::Decap(a) => decap(a),
    }
}

fn decap(a: DecapArgs) -> Result<(), CliError> {
    use dataplane::decap;
    let named = match (&a.pin_path, &a.interface) {
        (Some(p), _) => p.clone(),
        (None, Some(iface)) => {
            decap::default_pin_path(iface).map_err(|source| CliError::DecapNetns { source })?
        }
        (None, None) => unreachable!("clap requires --interface or --pin-path"),
    };
    let pin_path = dataplane::resolve_pin_path(&named)?;
    if a.stats {
        let c = decap::counters(&pin_path).map_err(|e| match e {
            DataplaneError::NotPinned { .. } => CliError::NothingPinned {
                path: named.clone(),
            },
            e => e.into(),
        })?;
        let get = |k: &str| c.get(k).copied().unwrap_or(0);
        return if a.json {
            print(&format!("{}\n", serde_json::json!(c)))
        } else {
            print(&format!(
                "decapsulated {}  passed {}  dropped: source not allowed {}  inner not local {}  \
                 CE on not-ECT {}  malformed {}\n",
                get("decapsulated"),
                get("passed"),
                get("dropped_source"),
                get("dropped_not_local"),
                get("dropped_ecn"),
                get("dropped_malformed")
            ))
        };
    }
    let iface = a
        .interface
        .expect("clap requires --interface without --stats");
    if a.down {
        return if decap::detach(&pin_path, &iface)? {
            if a.pin_path.is_none() {
                decap::remove_empty_parents(&pin_path);
            }
            print(&format!("decap removed from {iface}\n"))
        } else {
            Err(CliError::NothingPinned {
                path: named.join(format!("{}{iface}", lb_common::maps::LINK_PREFIX)),
            })
        };
    }
    let allow: Vec<ipnet::IpNet> = if a.allow_any {
        vec![
            ipnet::IpNet::V4(ipnet::Ipv4Net::default()),
            ipnet::IpNet::V6(ipnet::Ipv6Net::default()),
        ]
    } else if a.allow.is_empty() {
        return Err(CliError::DecapNoAllow { iface });
    } else {
        a.allow.clone()
    };
    let mode = match a.xdp_mode {
        config::XdpMode::Auto => dataplane::AttachMode::Auto,
        config::XdpMode::Native => dataplane::AttachMode::Native,
        config::XdpMode::Generic => dataplane::AttachMode::Generic,
    };
    let addrs = decap::attach(&pin_path, &iface, mode, &allow)?;
    let from: Vec<String> = allow.iter().map(ToString::to_string).collect();
    print(&format!(
        "decap attached to {iface} (pins {}): IPIP and IPv6-in-IPv6 to {} from {} are opened\n",
        named.display(),
        addrs.join(", "),
        from.join(", ")
    ))
}

fn print(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| CliError::Output { source })
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn check(path: &Path) -> Result<(), CliError> {
    let cfg = config::load(path)?;
    config::check_host_if_gateway(&cfg).map_err(|e| e.placed(path))?;
    let announce = cfg.announce.as_ref().map_or(String::new(), |a| {
        format!(
            "; announcing through BIRD (routes {}, socket {})",
            a.routes_file.display(),
            a.control_socket.display()
        )
    });
    print(&format!(
        "ok: {}, {}{announce}\n",
        plural(cfg.pools.len(), "pool", "pools"),
        plural(cfg.total_backends(), "backend", "backends")
    ))
}

fn explain(a: ExplainArgs) -> Result<(), CliError> {
    let cfg = match (&a.config, &a.pin_path) {
        (Some(c), _) => Some(config::load(c)?),
        (None, None) if Path::new(DEFAULT_CONFIG).exists() => {
            Some(config::load(Path::new(DEFAULT_CONFIG))?)
        }
        (None, _) => None,
    };
    let pin_path = match (a.pin_path, &cfg) {
        (Some(p), _) => p,
        (None, Some(c)) => c.dataplane.pin_path.clone(),
        (None, None) => PathBuf::from(DEFAULT_PIN_PATH),
    };
    let mut tuning = dataplane::Tuning::default();
    if let Some(c) = &cfg {
        tuning.tunnel_source_v4 = c.dataplane.tunnel_source_v4;
        tuning.tunnel_source_v6 = c.dataplane.tunnel_source_v6;
        tuning.answers_per_sec = c.dataplane.answers_per_sec;
    }
    // The data plane first: without one, nothing else is worth asking.
    // Under `ip netns exec` its pins are the host's (as `xdplb stats`).
    let pin_path = dataplane::resolve_pin_path(&pin_path)?;
    let mut explainer = dataplane::Explainer::open(&pin_path, &tuning)?;
    let udp = a.protocol == "udp";
    let question = crate::explain::Question {
        client: a.client,
        vip: a.vip,
        udp,
        tcp_flags: crate::explain::tcp_flags(&a.flags).unwrap_or(crate::packet::TCP_SYN),
        ingress: crate::explain::ingress(a.client.ip(), a.interface.as_deref())?,
    };
    let report = crate::explain::explain(&mut explainer, &question)?;
    if a.json {
        let mut s = serde_json::to_string(&report).expect("explain report serialises");
        s.push('\n');
        print(&s)
    } else {
        print(&crate::explain::text(&report))
    }
}

async fn down(a: DownArgs) -> Result<(), CliError> {
    let cfg = match (&a.config, &a.pin_path) {
        (Some(c), _) => Some(config::load(c)?),
        // The default config, if there is a usable one: its pin path and
        // its [announce] (a broken default file does not stop `down`).
        (None, None) if Path::new(DEFAULT_CONFIG).exists() => {
            config::load(Path::new(DEFAULT_CONFIG))
                .map_err(|e| tracing::warn!(error = %e, "default config not used"))
                .ok()
        }
        (None, _) => None,
    };
    let pin_path = match (a.pin_path, &cfg) {
        (Some(p), _) => p,
        (None, Some(c)) => c.dataplane.pin_path.clone(),
        (None, None) => PathBuf::from(DEFAULT_PIN_PATH),
    };
    if let Some(pid) = owner::holder(Path::new(owner::LOCK_DIR), &pin_path)? {
        if !a.force {
            return Err(CliError::ControllerRunning {
                path: pin_path,
                pid,
            });
        }
        tracing::warn!(
            pid,
            "--force: taking the data plane down under a running controller"
        );
    }
    // [announce]: a gateway taken down withdraws its VIPs first, so the
    // routers stop sending before the program stops forwarding. BIRD not
    // answering is reported, not fatal: the operator asked for down.
    let mut withdrawn = String::new();
    if let Some(ann) = cfg.as_ref().and_then(|c| c.announce.as_ref()) {
        match crate::announce::withdraw_all(ann).await {
            Ok(()) => {
                withdrawn = format!("; VIP routes withdrawn {} ms before", a.withdraw_wait);
                tracing::info!(
                    wait_ms = a.withdraw_wait,
                    "VIP routes withdrawn; waiting for the routers to move traffic before detaching"
                );
                tokio::time::sleep(std::time::Duration::from_millis(a.withdraw_wait)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "VIP routes emptied but BIRD not told");
                withdrawn = format!(
                    "; VIP routes emptied in {} (BIRD not told: {e})",
                    ann.routes_file.display()
                );
            }
        }
    }
    let resolved = dataplane::resolve_pin_path(&pin_path)?;
    let report = dataplane::down(&resolved).map_err(|e| match e {
        DataplaneError::NotPinned { .. } => CliError::NothingPinned {
            path: pin_path.clone(),
        },
        e => e.into(),
    })?;
    let what = if report.detached.is_empty() {
        "no XDP links were pinned".to_string()
    } else {
        format!("detached XDP from {}", report.detached.join(", "))
    };
    let left = if report.foreign.is_empty() {
        String::new()
    } else {
        format!(
            "; left what xdplb did not pin there: {}",
            report.foreign.join(", ")
        )
    };
    print(&format!(
        "{what}; removed pins at {}{left}{withdrawn}\n",
        pin_path.display()
    ))
}

async fn status(socket: &Path, json: bool) -> Result<(), CliError> {
    let resp = admin::request(socket, &Request::Status {})
        .await?
        .into_result()?;
    let status = resp.status.ok_or(CliError::EmptyReply {
        cmd: "status",
        what: "a status",
    })?;
    if json {
        let mut s = serde_json::to_string(&status).expect("status serialises");
        s.push('\n');
        print(&s)
    } else {
        print(&format::status_text(&status))
    }
}

/// plan, drain --dry-run: print the plan; a change that would be refused
/// exits 1 with the reason.
async fn plan(socket: &Path, req: Request, json: bool) -> Result<(), CliError> {
    let resp = admin::request(socket, &req).await?.into_result()?;
    let Some(plan) = resp.plan else {
        return Err(CliError::Admin(AdminError::Refused {
            error: "the controller sent no plan".to_string(),
        }));
    };
    if json {
        let mut s = serde_json::to_string(&plan).expect("a plan serialises");
        s.push('\n');
        print(&s)?;
    } else {
        print(&format::plan_text(&plan))?;
    }
    match plan.refused {
        Some(reason) if !plan.accepted => Err(CliError::Refused { reason }),
        _ => Ok(()),
    }
}

/// drain, undrain, maint, ready, set weight, reload: print what the
/// controller says it did.
async fn steer(socket: &Path, req: Request) -> Result<(), CliError> {
    let resp = admin::request(socket, &req).await?.into_result()?;
    let msg = resp.message.unwrap_or_else(|| "done".to_string());
    print(&format!("{}\n", msg.trim_end()))
}

fn read_counters(pin_path: &Path) -> Result<dataplane::Counters, CliError> {
    let resolved = dataplane::resolve_pin_path(pin_path)?;
    Ok(CounterReader::open(&resolved)?.read()?)
}

fn stats(pin_path: &Path, json: bool) -> Result<(), CliError> {
    let c = read_counters(pin_path)?;
    if json {
        let mut s = serde_json::to_string(&format::stats_json(&c)).expect("stats serialise");
        s.push('\n');
        print(&s)
    } else {
        print(&format::stats_text(&c))
    }
}

async fn watch(pin_path: &Path, json: bool, every: Duration) -> Result<(), CliError> {
    let mut prev = read_counters(pin_path)?;
    let mut at = Instant::now();
    let mut first = true;
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    let stop = shutdown_signal()?;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = ticker.tick() => {}
        }
        // Re-opened every time: a data plane taken down and loaded afresh
        // meanwhile is followed, not read from stale maps.
        let cur = read_counters(pin_path)?;
        let now = Instant::now();
        let r = format::rates(&prev, &cur, now - at);
        if json {
            let mut s = serde_json::to_string(&r).expect("rates serialise");
            s.push('\n');
            print(&s)?;
        } else {
            if !first {
                print("\n")?;
            }
            print(&format::rates_text(&r))?;
        }
        first = false;
        prev = cur;
        at = now;
    }
}

/// Completes on the first SIGINT or SIGTERM.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let err = |source| CliError::Signals { source };
    let mut int = signal(SignalKind::interrupt()).map_err(err)?;
    let mut term = signal(SignalKind::terminate()).map_err(err)?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

async fn agent(a: AgentArgs) -> Result<(), CliError> {
    let sampler = match (&a.fixed, &a.fixed_file) {
        (Some(spec), _) => Sampler::fixed_str(spec)?,
        (None, Some(path)) => Sampler::fixed_file(path.clone()),
        (None, None) => Sampler::from_proc(a.net_capacity),
    };
    let sampler = Arc::new(sampler.with_weight_percent(a.weight_percent));
    // Fail early on a --fixed-file that cannot be read or parsed, rather
    // than closing every connection without a line.
    sampler.reply()?;
    let listener = TcpListener::bind(a.listen)
        .await
        .map_err(|source| CliError::Listen {
            addr: a.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(a.listen);
    let stop = shutdown_signal()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampling = sampler.spawn(stop_rx);
    tracing::info!(%addr, allow = ?a.allow, max_connections = a.max_connections, "load agent listening");
    let policy = AgentPolicy {
        allow: a.allow,
        max_connections: a.max_connections,
    };
    serve_agent_with(listener, sampler, policy, stop).await;
    tracing::info!("load agent stopping");
    let _ = stop_tx.send(true);
    if let Some(t) = sampling {
        let _ = t.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_operator_contract() {
        let p = |args: &[&str]| Cli::try_parse_from(args).unwrap().command;
        match p(&["xdplb", "run"]) {
            Cmd::Run(a) => {
                assert_eq!(a.config, Path::new("/etc/xdplb/xdplb.toml"));
                assert_eq!(a.keep_applied, None);
            }
            c => panic!("{c:?}"),
        }
        match p(&["xdplb", "status"]) {
            Cmd::Status(a) => {
                assert_eq!(a.socket.socket, Path::new("/run/xdplb.sock"));
                assert!(!a.json);
            }
            c => panic!("{c:?}"),
        }
        match p(&["xdplb", "serving"]) {
            Cmd::Serving(a) => assert_eq!(a.config, Path::new("/etc/xdplb/xdplb.toml")),
            c => panic!("{c:?}"),
        }
        match p(&["xdplb", "stats", "--watch", "0.5"]) {
            Cmd::Stats(a) => {
                assert_eq!(a.pin_path, Path::new("/sys/fs/bpf/xdplb"));
                assert_eq!(a.watch, Some(Duration::from_millis(500)));
            }
            c => panic!("{c:?}"),
        }
        match p(&["xdplb", "drain", "web", "web-1", "--socket", "/tmp/s"]) {
            Cmd::Drain(a) => {
                assert_eq!((a.pool.as_str(), a.backend.as_str()), ("web", "web-1"));
                assert_eq!(a.socket.socket, Path::new("/tmp/s"));
            }
            c => panic!("{c:?}"),
        }
        // No silent 0.0.0.0: the agent's address is the operator's choice.
        assert!(Cli::try_parse_from(["xdplb", "agent"]).is_err());
        match p(&[
            "xdplb",
            "agent",
            "--listen",
            "198.18.1.11:9777",
            "--allow",
            "198.18.1.0/24",
            "--allow",
            "198.18.0.1",
        ]) {
            Cmd::Agent(a) => {
                assert_eq!(a.listen, "198.18.1.11:9777".parse().unwrap());
                assert_eq!(a.weight_percent, 100);
                assert_eq!(a.allow.len(), 2);
                assert_eq!(a.max_connections, DEFAULT_MAX_CONNECTIONS);
            }
            c => panic!("{c:?}"),
        }
        assert!(
            Cli::try_parse_from(["xdplb", "agent", "--listen", ":1", "--allow", "1.2.3.4/40"])
                .is_err()
        );
        assert!(Cli::try_parse_from([
            "xdplb",
            "agent",
            "--listen",
            "127.0.0.1:1",
            "--max-connections",
            "0"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["xdplb", "agent", "--weight-percent", "101"]).is_err());
        assert!(
            Cli::try_parse_from(["xdplb", "agent", "--fixed", "cpu=1", "--fixed-file", "f"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["xdplb", "stats", "--watch", "0"]).is_err());
        assert!(Cli::try_parse_from(["xdplb", "stats", "--watch", "soon"]).is_err());
    }
}
