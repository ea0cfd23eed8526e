//! xdplb: a layer-4 TCP load balancer whose data plane is an XDP program.
//!
//! Layout:
//! - `dataplane`: the only module that touches aya: load or adopt the
//!   pinned program and maps, attach, sync maps, read counters.
//! - `packet`: frames built byte by byte and checksums recomputed in full
//!   (tests, benchmark, hostile-input scenario).
pub mod dataplane;
pub mod packet;
