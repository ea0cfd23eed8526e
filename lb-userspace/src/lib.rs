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
//! - [`dataplane`]: the only module that touches aya: load or adopt the
//!   pinned program and maps, attach, sync maps, read counters.
//! - [`packet`]: frames built byte by byte and checksums recomputed in full
//!   (tests, benchmark, hostile-input scenario).
pub mod config;
pub mod dataplane;
pub mod health;
pub mod load;
pub mod maglev;
pub mod packet;
pub mod planner;
