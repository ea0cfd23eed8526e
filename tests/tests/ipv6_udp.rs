//! An IPv6 UDP pool (VIP [2001:2:0:2::10]:53 → backends
//! [2001:2:0:1::11..]:5300, health `kind = "udp"`): new flows spread by
//! weight 1:2:1, and answers come from the VIP's own address and port
//! (`pools/mod.rs`).

mod pools;

use anyhow::{ensure, Result};
use xdplb_tests::{deploy::PoolSpec, skip_unless_root};

#[test]
fn ipv6_udp_spreads_by_weight() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let d = pools::deploy(pools::weighted(PoolSpec::udp(3).in_ipv6()))?;
    let who = pools::connected_udp_socket_is_answered(&d)?;
    ensure!(
        d.pools[0].backends.iter().any(|b| b.name == who),
        "a connected socket was answered {who:?}, not a backend's name"
    );
    pools::spread_follows_weights(&d)?;
    Ok(())
}
