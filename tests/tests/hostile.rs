//! Hostile input: a burst of malformed and truncated frames from the
//! client side (an AF_PACKET socket, so nothing in the kernel tidies them
//! first) is counted by reason and does not disturb forwarding.

use std::{collections::BTreeMap, net::SocketAddr};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use xdplb::packet::{TcpFrame, TCP_SYN};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    raw::{parse_mac as mac, RawSocket},
    skip_unless_root, KeepAliveClient, Lab,
};

/// The malformed frames, each aimed at the VIP through the gateway, with
/// the drop reason (`xdplb stats`' `drop_reasons` label) each must be
/// counted under.
fn frames(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    vip: std::net::SocketAddrV4,
) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut base = TcpFrame::new("198.18.0.2:50000".parse().unwrap(), vip, TCP_SYN);
    base.dst_mac = dst_mac;
    base.src_mac = src_mac;
    let good = base.build();
    let mut v = Vec::new();
    v.push(("eth only", "truncated_ip", good[..14].to_vec()));
    v.push(("truncated ip", "truncated_ip", good[..30].to_vec()));
    let mut f = good.clone();
    f[14] = 0x65;
    v.push(("version 6", "bad_ip_version", f));
    let mut f = good.clone();
    f[14] = 0x43;
    v.push(("ihl 3", "bad_ihl", f));
    let mut f = good.clone();
    f[16..18].copy_from_slice(&9000u16.to_be_bytes());
    v.push(("total length too big", "bad_total_length", f));
    // A later fragment whose first never came (a first fragment is
    // balanced, and no longer malformed).
    let mut f = good.clone();
    f[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
    v.push(("orphan fragment", "fragment", f));
    let mut f = good.clone();
    f[46] = 0x10;
    v.push(("tcp doff 1", "truncated_tcp", f));
    let mut f = good[..40].to_vec();
    f[16..18].copy_from_slice(&26u16.to_be_bytes());
    v.push(("tcp cut short", "truncated_tcp", f));
    v
}

#[test]
fn malformed_burst_is_counted_and_forwarding_goes_on() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = Deployment::new(vec![PoolSpec::new(2, 0)])?;
    d.start_daemon()?;
    let vip = d.pools[0].vip;
    let gw_mac = mac(&d.lab.mac(d.lab.gw_ns(), Lab::gw_ifaces()[0])?)?;
    let cl_mac = mac(&d.lab.mac("client", "cl0")?)?;
    let mut conn = d
        .lab
        .run_in("client", || KeepAliveClient::connect(SocketAddr::V4(vip)))??;
    let (_, first) = conn.get("/")?;
    let before = d.stats()?;
    let frames = frames(gw_mac, cl_mac, vip);
    let rounds: u64 = 250;
    let sent = d.lab.run_in("client", || -> Result<usize> {
        let sock = RawSocket::open("cl0")?;
        let mut sent = 0;
        for _ in 0..rounds {
            for (name, _, f) in &frames {
                sock.send(f).with_context(|| name.to_string())?;
                sent += 1;
            }
        }
        Ok(sent)
    })??;
    let (s, body) = conn.get("/").context("keep-alive after the burst")?;
    ensure!(s == 200 && body == first);
    let spread = d.spread(20)?;
    ensure!(spread.values().sum::<usize>() == 20, "{spread:?}");
    let after = d.stats()?;
    let dropped = after["global"]["dropped"].as_u64().unwrap()
        - before["global"]["dropped"].as_u64().unwrap();
    println!("sent {sent} malformed frames; dropped counter rose by {dropped}");
    // Every frame is malformed and aimed at the VIP: each is dropped, and
    // counted under its own reason, once. (No frame is padded on the way:
    // veth pads short frames only if the sender asks.)
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, reason, _) in &frames {
        *want.entry(reason).or_default() += rounds;
    }
    let rose = |v: &Value, reason: &str| -> Result<u64> {
        v["global"]["drop_reasons"][reason]
            .as_u64()
            .with_context(|| format!("no drop reason {reason} in xdplb stats: {v}"))
    };
    for (reason, n) in &want {
        let got = rose(&after, reason)? - rose(&before, reason)?;
        ensure!(
            got == *n,
            "drop reason {reason} rose by {got}, but {n} frames of its kinds were sent ({:?}): {after}",
            frames
                .iter()
                .filter(|(_, r, _)| r == reason)
                .map(|(name, _, _)| *name)
                .collect::<Vec<_>>()
        );
    }
    ensure!(
        dropped == sent as u64,
        "dropped rose by {dropped}, {sent} frames sent: {after}"
    );
    Ok(())
}
