//! A config edited while the controller is down: on start, whatever the
//! pins hold that the file no longer has is removed as a reload would
//! remove it. A removed pool's VIP stops taking new flows at once; a
//! removed backend drains (its established connections go on, new ones go
//! elsewhere) and its slot is freed once it has no flow left.

use std::{net::SocketAddr, time::Duration};

use anyhow::{ensure, Result};
use serde_json::Value;
use xdplb_tests::{
    deploy::{render_config, BackendSpec, Deployment, PoolSpec},
    http_get, skip_unless_root, wait_until, KeepAliveClient, Lab,
};

fn stats_names(stats: &Value, list: &str, field: &str) -> Vec<String> {
    stats[list]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v[field].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn stats_state(stats: &Value, backend: &str) -> Option<String> {
    stats["backends"]
        .as_array()?
        .iter()
        .find(|b| b["name"] == backend)
        .and_then(|b| b["state"].as_str().map(String::from))
}

#[test]
fn a_pool_and_a_backend_removed_from_the_file_are_removed_on_start() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut web = PoolSpec::new(3, 0);
    web.min_active = 1;
    let mut api = PoolSpec::new(0, 0);
    api.name = "api".into();
    api.vip = std::net::SocketAddrV4::new(Lab::vip(1), 80);
    api.min_active = 1;
    api.backends.push(BackendSpec {
        name: "api-1".into(),
        lab_index: 3,
        weight: 100,
        spare: false,
    });
    let mut d = Deployment::new(vec![web.clone(), api.clone()])?;
    d.start_daemon()?;
    let web_vip = SocketAddr::V4(web.vip);
    let api_vip = SocketAddr::V4(api.vip);
    let (_, body) = d.lab.run_in("client", || http_get(api_vip, "/"))??;
    ensure!(body.trim() == "api-1", "api answered {body}");
    let (mut conn, victim) =
        d.lab
            .run_in("client", || -> Result<(KeepAliveClient, String)> {
                let mut c = KeepAliveClient::connect(web_vip)?;
                let (_, b) = c.get("/")?;
                Ok((c, b.trim().to_string()))
            })??;

    // While the controller is down, the operator removes pool "api" and
    // the backend that holds our connection.
    d.stop_daemon()?;
    let mut edited = web.clone();
    edited.backends.retain(|b| b.name != victim);
    ensure!(
        edited.backends.len() == 2,
        "{victim} not in {:?}",
        web.backends
    );
    std::fs::write(&d.config_path, render_config(&d.lab, &[edited.clone()]))?;
    d.pools = vec![edited.clone()];
    d.start_daemon()?;

    // The removed VIP takes no new flow.
    let refused = d.lab.run_in("client", || http_get(api_vip, "/"))?;
    ensure!(refused.is_err(), "removed VIP still answers: {refused:?}");
    let stats = d.stats()?;
    ensure!(
        stats_names(&stats, "vips", "pool") == ["web"],
        "VIPs after restart: {stats}"
    );
    // The removed backend drains: its connection goes on ...
    for _ in 0..3 {
        let (s, body) = conn.get("/")?;
        ensure!(
            s == 200 && body.trim() == victim,
            "established connection to the removed {victim} broke: {s} {body}"
        );
    }
    ensure!(
        stats_state(&stats, &victim).as_deref() == Some("draining"),
        "{victim} not draining: {stats}"
    );
    // ... and new flows go only to what the file has.
    let seen = d.spread(30)?;
    ensure!(
        seen.values().sum::<usize>() == 30
            && seen
                .keys()
                .all(|k| edited.backends.iter().any(|b| &b.name == k)),
        "new flows after restart: {seen:?}"
    );
    ensure!(
        d.status()?["pools"].as_array().map(Vec::len) == Some(1),
        "status still shows the removed pool"
    );
    // Once its connection is closed, the slot is freed (and so are the
    // removed pool's).
    drop(conn);
    let freed = wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        d.stats().is_ok_and(|s| {
            let names = stats_names(&s, "backends", "name");
            !names.contains(&victim) && !names.iter().any(|n| n == "api-1")
        })
    });
    ensure!(
        freed,
        "slots not freed: {}\nlog:\n{}",
        d.stats()?,
        d.daemon_log()
    );
    Ok(())
}
