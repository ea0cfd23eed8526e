//! xdplb's network-namespace test lab.
//!
//! Integration tests (`tests/tests/<feature>.rs`), `cargo xtask demo` and
//! `cargo xtask bench lab` build their hosts with [`Lab`]: a client, a
//! gateway (where xdplb runs), a switch and N backends, each a network
//! namespace joined by veth pairs. See `tests/README.md` for the diagram and
//! the rules.
//!
//! # Layout
//!
//! - [`lab`]: [`Lab`] and its builder — creating, using and removing the
//!   namespaces; running commands and closures inside them.
//! - [`addr`]: the lab's fixed names and addresses (198.18.0.0/15 only).
//! - [`fleet`]: gateways behind an ECMP router, each with `xdplb run`
//!   and a BIRD announcing its VIPs over BGP with BFD.
//! - [`pair`]: two gateways `gwa`/`gwb` sharing VRRP addresses with
//!   keepalived (a sync group moves the clients' and the backends' side
//!   together), each with `xdplb run`.
//! - [`http`]: a tiny blocking HTTP/1.1 client: [`http_get`] on a fresh
//!   connection, [`KeepAliveClient`] reusing one.
//! - [`wait`]: [`wait_until`], the one bounded polling loop.
//! - [`raw`]: frames straight onto a lab wire from an `AF_PACKET` socket,
//!   and a flood generator of spoofed TCP segments.
//! - [`udp`]: a UDP client: [`udp_ask`] on a fresh flow, [`UdpFlow`]
//!   keeping one source port; bounded retries, answers checked to come
//!   from the address asked.
//! - [`operator`]: a booted Debian container (systemd-nspawn) with the
//!   client and backend namespaces around it, for the operator suite
//!   (`tests/operator.rs`).
//! - [`deploy`]: xdplb deployed on a lab (config, daemon, agents) and
//!   driven through the `xdplb` binary only.
//! - `src/bin/lab-backend.rs`: the HTTP server the backends run;
//!   `src/bin/lab-udp-backend.rs`: the UDP server of UDP pools.

pub mod addr;
pub mod deploy;
pub mod fleet;
pub mod http;
pub mod lab;
pub mod narrate;
pub mod operator;
pub mod pair;
pub mod raw;
pub mod udp;
pub mod wait;

pub use http::{connect_from, get_on, http_get, KeepAliveClient};
pub use lab::{
    is_root, raise_nofile, skip_or_fail, skip_unless_root, xdplb_bin, Lab, LabBuilder, LabChild,
};
pub use udp::{udp_ask, UdpFlow};
pub use wait::wait_until;
