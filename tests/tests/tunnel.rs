//! `mode = "tunnel"`: the gateway encapsulates requests in IPIP from
//! `tunnel_source` to the backend; each backend runs `xdplb decap
//! --interface eth0` (this kernel has no ipip device), holds the VIP on
//! loopback and answers the clients through a router, never through the
//! gateway. Spread by weight, drain, a multi-MB download with the gateway's
//! reply counters at zero and decap's own counters moving, a controller
//! restart with a live connection, failover, and `decap --down` leaving no
//! program or pin behind (see `direct/mod.rs`).

mod direct;

use anyhow::{ensure, Result};
use xdplb_tests::{addr::BACKEND_IF, deploy::Deployment, skip_unless_root};

#[test]
fn tunnel_spreads_drains_and_replies_bypass_the_gateway() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let d = direct::deploy("tunnel", direct::weighted("tunnel"))?;
    direct::backends_are_configured(&d)?;
    direct::spread_follows_weights(&d)?;
    direct::drain_keeps_established(&d)?;
    direct::replies_bypass_the_gateway(&d, "tunnel_sent")?;
    for i in 0..d.lab.backends() {
        let s = d.decap_stats(i)?;
        println!("b{}: xdplb decap --stats --json: {s}", i + 1);
        ensure!(
            s["decapsulated"].as_u64().unwrap_or(0) > 0,
            "b{}: nothing decapsulated: {s}",
            i + 1
        );
        ensure!(
            s["dropped_malformed"].as_u64() == Some(0),
            "b{}: {s}",
            i + 1
        );
    }
    decap_down(&d)
}

#[test]
fn tunnel_survives_a_controller_restart_and_fails_over() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = direct::deploy("tunnel", direct::weighted("tunnel"))?;
    direct::restart_keeps_a_live_connection(&mut d)?;
    direct::failover_heals(&d, "web-3")?;
    decap_down(&d)
}

/// `xdplb decap --down` on every backend: no XDP program left on eth0, no
/// pin left under the lab's decap pin path.
fn decap_down(d: &Deployment) -> Result<()> {
    for i in 0..d.lab.backends() {
        d.decap(i, &["--down", "--interface", BACKEND_IF])?;
        let link = d.lab.exec_ok(
            d.lab.backend_ns(i),
            &["ip", "-d", "link", "show", BACKEND_IF],
        )?;
        ensure!(!link.contains("xdp"), "b{}: still attached: {link}", i + 1);
        let pin = d.lab.decap_pin_path(i);
        ensure!(!pin.exists(), "b{}: pins left at {}", i + 1, pin.display());
    }
    Ok(())
}
