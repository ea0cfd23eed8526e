//! xdplb: a layer-4 TCP load balancer whose data plane is an XDP program.
//!
//! Layout:
//! - [`config`]: the TOML schema, defaults and validation (`FILE:LINE:COL`
//!   errors).
//! - [`maglev`]: weighted Maglev lookup tables, deterministic across hosts.
//! - [`health`]: the rise/fall state machine, TCP and HTTP probes, and one
//!   checker task per backend.
//! - [`load`]: the agent protocol, load scores and their staleness, the
//!   controller's agent client and the backend-side agent.
//! - [`planner`]: per tick, each backend's state and effective weight from
//!   config and observations (clock injected; pure).
//! - [`controller`]: `xdplb run`: probes, agents, planner ticks, map sync,
//!   reload, drains; answers [`command::Command`]s.
//! - [`command`]: what the admin socket asks the controller.
//! - [`announce`]: `[announce]`: the VIP routes file for BIRD and its
//!   control socket.
//! - [`state`]: `[control] state_file`: operator drains across `down`
//!   and reboots.
//! - [`status`]: the controller's live view (status output, admin replies).
//! - [`admin`]: the unix-socket protocol, server and client.
//! - [`metrics`]: Prometheus exposition.
//! - [`web`]: the HTTP server on `metrics_listen`: `/metrics`, `/status.json`,
//!   and the status page `/`.
//! - [`serving`]: `xdplb serving`, whether this gateway can serve
//!   (keepalived's track_script).
//! - [`netlink`]: the kernel's routing netlink: route lookups, link events.
//! - [`notify`]: systemd readiness and watchdog notifications.
//! - [`cli`]: the `xdplb` command line and its human output.
//! - [`dataplane`]: the only module that touches aya: load or adopt the
//!   pinned program and maps, attach, sync maps, read counters.
//! - [`owner`]: one controller per pin path (a lock file naming its pid).
//! - [`packet`]: frames built byte by byte and checksums recomputed in full
//!   (tests, benchmark, hostile-input scenario).
pub mod admin;
pub mod announce;
pub mod cli;
pub mod command;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod explain;
pub mod flowsync;
pub mod fsutil;
pub mod health;
pub mod load;
pub mod maglev;
pub mod metrics;
pub mod netlink;
pub mod notify;
pub mod owner;
pub mod packet;
pub mod planner;
pub mod serving;
pub mod state;
pub mod status;
pub mod web;
