//! Generic (skb) XDP: what `xdp_mode = "auto"` falls back to on a NIC
//! without native XDP. The kernel hands the program whole GRO packets
//! there (tens of kilobytes, one skb of many segments), not wire-sized
//! frames (a container's or VM's TCP hands its veth or tap 64 KB GSO
//! packets): 4 MiB downloads through IPv4 and IPv6 NAT pools must still
//! complete.

use std::time::Duration;

use anyhow::{Context, Result};
use xdplb_tests::{
    deploy::{DataplaneSpec, Deployment, PoolSpec},
    skip_unless_root, Lab,
};

/// The download: thousands of full-size segments, GRO-merged on the way.
const BODY: usize = 4 << 20;
/// A working path moves it in well under a second.
const DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn a_large_download_completes_through_generic_xdp() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let dp = DataplaneSpec {
        xdp_mode: "generic",
        ..DataplaneSpec::default()
    };
    for pool in [PoolSpec::new(2, 0), PoolSpec::new(2, 0).in_ipv6()] {
        let mut d = Deployment::configured(Lab::builder(), vec![pool], dp.clone())?;
        d.start_daemon()?;
        let vip = d.pools[0].vip_addr();
        for b in ["web-1", "web-2"] {
            d.wait_state(b, "state", "active", Duration::from_secs(5))?;
        }
        for i in 0..2 {
            let took = d
                .download(vip, BODY, DEADLINE)
                .with_context(|| format!("download {i} in generic mode"))?;
            println!("generic mode: {BODY} bytes through {vip} in {took:?}");
        }
    }
    Ok(())
}
