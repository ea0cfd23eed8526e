//! An IPv6 TCP pool in NAT mode (NAT66: VIP 2001:2:0:2::10 port 80 →
//! backends 2001:2:0:1::11.. port 8080 and back), on a dual-stack lab:
//! new connections spread by weight 1:2:1, `xdplb drain` keeps an
//! established keep-alive connection and moves new ones, a killed backend
//! gets no new connection beyond interval × fall + timeout, and keep-alive
//! connections survive a restart of `xdplb run` with traffic flowing (see
//! `pools/mod.rs`).

mod pools;

use anyhow::Result;
use xdplb_tests::{deploy::PoolSpec, skip_unless_root};

fn pool() -> PoolSpec {
    pools::weighted(PoolSpec::new(3, 0).in_ipv6())
}

#[test]
fn ipv6_tcp_spreads_by_weight_and_drains() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let d = pools::deploy(pool())?;
    pools::spread_follows_weights(&d)?;
    pools::drain_keeps_established(&d)?;
    Ok(())
}

#[test]
fn ipv6_tcp_survives_a_restart_with_traffic_and_fails_over() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = pools::deploy(pool())?;
    pools::restart_with_traffic(&mut d)?;
    pools::failover_heals(&d, "web-2")?;
    Ok(())
}
