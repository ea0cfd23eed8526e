//! Generic (skb) XDP: what `xdp_mode = "auto"` falls back to on a NIC
//! without native XDP. The kernel hands the program whole GRO packets
//! there (tens of kilobytes, one skb of many segments), not wire-sized
//! frames (a container's or VM's TCP hands its veth or tap 64 KB GSO
//! packets): 4 MiB downloads through IPv4 and IPv6 NAT pools must still
//! complete.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use xdplb_tests::{
    deploy::{DataplaneSpec, Deployment, PoolSpec},
    skip_unless_root, Lab,
};

/// The download: thousands of full-size segments, GRO-merged on the way.
const BODY: usize = 4 << 20;
/// A working path moves it in well under a second.
const DEADLINE: Duration = Duration::from_secs(10);

/// `ip -d -j link show`'s `xdp.mode` for a program attached in generic
/// (skb) mode (`XDP_ATTACHED_SKB` of linux/if_link.h; 1 is native).
const XDP_ATTACHED_SKB: u64 = 2;

/// The XDP attach mode of `iface` in the gateway, as the kernel reports it.
fn xdp_mode(d: &Deployment, iface: &str) -> Result<u64> {
    let out = d.lab.exec_ok(
        d.lab.gw_ns(),
        &["ip", "-d", "-j", "link", "show", "dev", iface],
    )?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("ip -j: {out}"))?;
    v[0]["xdp"]["mode"]
        .as_u64()
        .with_context(|| format!("no XDP program on {iface}: {out}"))
}

fn too_big_to_kernel(d: &Deployment) -> Result<u64> {
    let stats = d.stats()?;
    stats["global"]["events"]["too_big_to_kernel"]
        .as_u64()
        .with_context(|| format!("no too_big_to_kernel in xdplb stats: {stats}"))
}

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
        for iface in Lab::gw_ifaces() {
            let mode = xdp_mode(&d, iface)?;
            ensure!(
                mode == XDP_ATTACHED_SKB,
                "xdp_mode = \"generic\": {iface} has XDP attached in mode {mode}, not generic ({XDP_ATTACHED_SKB})"
            );
        }
        let vip = d.pools[0].vip_addr();
        for b in ["web-1", "web-2"] {
            d.wait_state(b, "state", "active", Duration::from_secs(5))?;
        }
        for i in 0..2 {
            let before = too_big_to_kernel(&d)?;
            let took = d
                .download(vip, BODY, DEADLINE)
                .with_context(|| format!("download {i} in generic mode"))?;
            let aggregates = too_big_to_kernel(&d)? - before;
            println!(
                "generic mode: {BODY} bytes through {vip} in {took:?}; {aggregates} aggregates longer than the MTU handed to the kernel"
            );
            // The backend's full-size segments reach the gateway merged by
            // GRO into frames longer than the MTU: the path under test.
            ensure!(
                aggregates > 0,
                "download {i}: no frame over the MTU reached the program (too_big_to_kernel did not rise), so the GRO path was not exercised"
            );
        }
    }
    Ok(())
}
