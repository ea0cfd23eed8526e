//! An IPv4 UDP pool (`protocol = "udp"`, health `kind = "udp"` with a
//! `payload`; VIP 198.18.2.10 port 53 → backends port 5300, each running
//! `lab-udp-backend`, which answers every datagram with its name): new
//! flows (fresh source ports) spread by weight 1:2:1, `xdplb drain` keeps
//! a flow with a fixed source port on its backend and moves new ones, a
//! killed server gets no new flow beyond interval × fall + timeout, and a
//! restart of `xdplb run` with traffic flowing leaves every flow on its
//! backend. Answers are accepted only from the VIP's own address and port
//! (`pools/mod.rs`).

mod pools;

use anyhow::{ensure, Result};
use xdplb_tests::{deploy::PoolSpec, skip_unless_root};

fn pool() -> PoolSpec {
    pools::weighted(PoolSpec::udp(3))
}

#[test]
fn udp_spreads_by_weight_answers_from_the_vip_and_drains() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let d = pools::deploy(pool())?;
    let who = pools::connected_udp_socket_is_answered(&d)?;
    ensure!(
        d.pools[0].backends.iter().any(|b| b.name == who),
        "a connected socket was answered {who:?}, not a backend's name"
    );
    pools::spread_follows_weights(&d)?;
    pools::drain_keeps_established(&d)?;
    Ok(())
}

#[test]
fn udp_survives_a_restart_with_traffic_and_fails_over() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = pools::deploy(pool())?;
    pools::restart_with_traffic(&mut d)?;
    pools::failover_heals(&d, "dns-2")?;
    Ok(())
}
