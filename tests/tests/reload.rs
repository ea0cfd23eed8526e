//! Reload: a good config is applied live without breaking established
//! connections; a bad one is refused with its reason (file:line), and the
//! running state and traffic are untouched. Also by SIGHUP.

use std::{net::SocketAddr, time::Duration};

use anyhow::{ensure, Result};
use xdplb_tests::{
    deploy::{render_config, Deployment, PoolSpec},
    skip_unless_root, wait_until, KeepAliveClient,
};

#[test]
fn good_reload_applies_and_bad_reload_changes_nothing() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut pool = PoolSpec::new(2, 0);
    pool.min_active = 1;
    // Lab backend 2 exists from the start but is not in the pool yet.
    let mut spec = pool.clone();
    spec.backends.push(xdplb_tests::deploy::BackendSpec {
        name: "web-3".into(),
        lab_index: 2,
        weight: 100,
        spare: false,
    });
    let mut d = Deployment::new(vec![spec.clone()])?;
    std::fs::write(&d.config_path, render_config(&d.lab, &[pool.clone()]))?;
    d.pools = vec![pool];
    d.start_daemon()?;
    let vip = SocketAddr::V4(d.pools[0].vip);
    let mut conn = d.lab.run_in("client", || KeepAliveClient::connect(vip))??;
    let (_, first) = conn.get("/")?;
    let first = first.trim().to_string();

    // Good: add web-3, reweight web-1.
    spec.backends[0].weight = 300;
    std::fs::write(&d.config_path, render_config(&d.lab, &[spec.clone()]))?;
    let out = d.ctl(&["reload"])?;
    ensure!(out.contains("web-3"), "reload summary: {out}");
    d.pools = vec![spec.clone()];
    d.wait_state("web-3", "state", "active", Duration::from_secs(5))?;
    ensure!(d.backend_status("web", "web-1")?["config_weight"] == 300);
    let (s, body) = conn.get("/")?;
    ensure!(
        s == 200 && body.trim() == first,
        "established connection moved: {body}"
    );
    let seen = d.spread(60)?;
    ensure!(
        seen.contains_key("web-3") && seen.values().sum::<usize>() == 60,
        "{seen:?}"
    );

    // Bad: a syntax error and a semantic one. Refused, nothing changes.
    let good = std::fs::read_to_string(&d.config_path)?;
    for (bad, needle) in [
        (good.replace("rise = 2", "rise = 0"), "rise"),
        (good.replace("[[pool]]", "[[pool]\n"), "xdplb.toml:"),
    ] {
        std::fs::write(&d.config_path, &bad)?;
        let before = d.status()?;
        let out = d.xdplb(&["reload", "--socket", &d.lab.socket_path().to_string_lossy()])?;
        ensure!(!out.status.success(), "bad config accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            err.starts_with("error:") && err.contains(needle),
            "reason: {err}"
        );
        ensure!(
            err.contains("xdplb.toml:"),
            "reason names no file:line: {err}"
        );
        let after = d.status()?;
        let (was, is) = (
            before["pools"][0]["backends"].as_array().unwrap(),
            after["pools"][0]["backends"].as_array().unwrap(),
        );
        // The three backends, before and after: a zip over shorter lists
        // would compare less (or nothing).
        ensure!(
            was.len() == 3 && is.len() == 3,
            "backends listed before the refused reload: {}, after: {}: {after}",
            was.len(),
            is.len()
        );
        for (b, a) in was.iter().zip(is) {
            ensure!(
                b["name"] == a["name"]
                    && b["state"] == a["state"]
                    && b["config_weight"] == a["config_weight"],
                "a refused reload changed {b} into {a}"
            );
        }
        let (s, body) = conn.get("/")?;
        ensure!(s == 200 && body.trim() == first);
        let seen = d.spread(10)?;
        ensure!(seen.values().sum::<usize>() == 10, "{seen:?}");
    }

    // SIGHUP: remove web-3 again.
    let mut trimmed = spec.clone();
    trimmed.backends.pop();
    std::fs::write(&d.config_path, render_config(&d.lab, &[trimmed]))?;
    d.daemon.as_ref().unwrap().signal(libc::SIGHUP)?;
    let gone = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        d.status().is_ok_and(|s| {
            s["pools"][0]["backends"]
                .as_array()
                .is_some_and(|b| b.len() == 2)
        })
    });
    ensure!(gone, "SIGHUP reload not applied: {}", d.daemon_log());
    let (s, body) = conn.get("/")?;
    ensure!(s == 200 && body.trim() == first);
    Ok(())
}
