//! `mode = "dsr"`: the gateway rewrites only the destination MAC to the
//! backend's; backends hold the VIP on loopback (arp_ignore 1, arp_announce
//! 2) and answer the clients through a router, never through the gateway.
//! Spread by weight, drain, a multi-MB download with the gateway's reply
//! counters at zero, a backend that lost its VIP named `unanswered` in
//! `xdplb status`, a controller restart with a live connection, and
//! failover — all through the real daemon (see `direct/mod.rs`).

mod direct;

use anyhow::Result;
use xdplb_tests::skip_unless_root;

#[test]
fn dsr_spreads_drains_and_replies_bypass_the_gateway() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let d = direct::deploy("dsr", direct::weighted("dsr"))?;
    direct::backends_are_configured(&d)?;
    direct::spread_follows_weights(&d)?;
    direct::drain_keeps_established(&d)?;
    direct::replies_bypass_the_gateway(&d, "dsr_sent")?;
    direct::unanswered_backend_is_named(&d, "web-3")?;
    Ok(())
}

#[test]
fn dsr_survives_a_controller_restart_and_fails_over() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = direct::deploy("dsr", direct::weighted("dsr"))?;
    direct::restart_keeps_a_live_connection(&mut d)?;
    direct::failover_heals(&d, "web-3")?;
    Ok(())
}
