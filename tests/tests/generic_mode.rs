//! Generic (skb) XDP: what `xdp_mode = "auto"` falls back to on a NIC
//! without native XDP. The kernel hands the program whole GRO packets
//! there (tens of kilobytes, one skb of many segments), not wire-sized
//! frames (a container's or VM's TCP hands its veth or tap 64 KB GSO
//! packets): 4 MiB downloads through IPv4 and IPv6 NAT pools must still
//! complete.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xdplb_tests::{
    deploy::{DataplaneSpec, Deployment, PoolSpec},
    http::{http_get_bytes, pattern},
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
            let started = Instant::now();
            let (status, body) = d
                .lab
                .run_in("client", || {
                    http_get_bytes(vip, &format!("/bytes/{BODY}"), BODY, DEADLINE)
                })?
                .with_context(|| {
                    format!(
                        "download {i}: {BODY} bytes through {vip} in generic mode; stats: {}",
                        d.stats().map(|s| s.to_string()).unwrap_or_default()
                    )
                })?;
            let took = started.elapsed();
            println!("generic mode: {BODY} bytes through {vip} in {took:?}");
            ensure!(status == 200, "status {status}");
            ensure!(body.len() == BODY, "{} bytes", body.len());
            ensure!(body == pattern(BODY), "the body differs from what was sent");
        }
    }
    Ok(())
}
