//! `on_down`: what a backend's established connections do when its health
//! check fails while the server still serves them. `keep` lets them run
//! out on it; `reset` (the default) re-steers them at once, so clients of
//! a dead server fail fast. Either way no new connection goes there.

use std::{
    io::ErrorKind,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    skip_unless_root, KeepAliveClient,
};

/// A pool of two, a keep-alive connection to one of them, then that one's
/// probes dropped (its clients' packets still pass) until it is down.
/// Returns the deployment, the connection and the backend's name.
fn one_fails_its_health_checks(
    on_down: Option<&str>,
) -> Result<(Deployment, KeepAliveClient, String)> {
    let mut pool = PoolSpec::new(2, 0);
    pool.min_active = 1;
    pool.on_down = on_down.map(String::from);
    let mut d = Deployment::new(vec![pool.clone()])?;
    d.start_daemon()?;
    let vip = SocketAddr::V4(pool.vip);
    let (conn, who) = d
        .lab
        .run_in("client", || -> Result<(KeepAliveClient, String)> {
            let mut c = KeepAliveClient::connect(vip)?;
            let (_, b) = c.get("/")?;
            Ok((c, b.trim().to_string()))
        })??;
    let ns = d.lab.backend_ns(pool.backend(&who).lab_index).to_string();
    for cmd in [
        "add table inet lose",
        "add chain inet lose input { type filter hook input priority 0 ; }",
        "add rule inet lose input ip saddr 198.18.1.1 tcp dport 8080 drop",
    ] {
        d.lab.exec_ok(&ns, &["nft", cmd])?;
    }
    d.wait_state(&who, "health", "down", Duration::from_secs(5))?;
    Ok((d, conn, who))
}

#[test]
fn keep_lets_a_down_backends_connections_run_out() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let (d, mut conn, who) = one_fails_its_health_checks(Some("keep"))?;
    ensure!(d.backend_status("web", &who)?["state"] == "down");
    for _ in 0..5 {
        let (s, body) = conn.get("/")?;
        ensure!(
            s == 200 && body.trim() == who,
            "on_down = keep: the connection to {who} moved or broke: {s} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = d.spread(20)?;
    ensure!(
        !seen.contains_key(&who) && seen.values().sum::<usize>() == 20,
        "{seen:?}"
    );
    Ok(())
}

/// How soon a client of a down backend must see its connection reset
/// under `on_down = "reset"`: its next packet is re-steered to a live
/// backend, which answers a segment of no connection of its own with a RST
/// (a round trip in the lab; a timeout would mean the packet went nowhere).
const RESET_WITHIN: Duration = Duration::from_secs(1);

#[test]
fn reset_re_steers_a_down_backends_connections() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let (d, mut conn, who) = one_fails_its_health_checks(None)?;
    conn.set_timeout(RESET_WITHIN)?;
    let asked = Instant::now();
    let answer = conn.get("/");
    let took = asked.elapsed();
    let err = match answer {
        Ok((s, body)) => bail!(
            "on_down = reset: the connection to down {who} still runs: {s} {}",
            body.trim()
        ),
        Err(e) => e,
    };
    let kind = err
        .chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map(|e| e.kind());
    ensure!(
        kind == Some(ErrorKind::ConnectionReset) && took < RESET_WITHIN,
        "on_down = reset: the connection to down {who} must be reset within {RESET_WITHIN:?}; \
         after {took:?} it failed with {kind:?}: {err:#}"
    );
    let other = d.pools[0]
        .backends
        .iter()
        .map(|b| b.name.clone())
        .find(|n| *n != who)
        .context("a second backend")?;
    let n = 20;
    let seen = d.spread(n)?;
    ensure!(
        seen.len() == 1 && seen.get(&other) == Some(&n),
        "every new connection must reach {other} (the one backend up): {seen:?}"
    );
    Ok(())
}
