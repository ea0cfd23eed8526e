//! Health across a controller restart: a backend the pinned maps show
//! active stays active until `fall` probes fail, so one probe lost while
//! the controller restarts resets no connection.

use std::{net::SocketAddr, time::Duration};

use anyhow::{ensure, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    skip_unless_root, KeepAliveClient,
};

#[test]
fn a_restart_with_one_probe_lost_keeps_every_connection() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut pool = PoolSpec::new(2, 0);
    pool.fall = 4;
    let mut d = Deployment::new(vec![pool.clone()])?;
    d.start_daemon()?;
    let vip = SocketAddr::V4(pool.vip);
    // Enough connections that both backends hold some.
    let mut conns = Vec::new();
    for _ in 0..8 {
        let c = d
            .lab
            .run_in("client", || -> Result<(KeepAliveClient, String)> {
                let mut c = KeepAliveClient::connect(vip)?;
                let (_, b) = c.get("/")?;
                Ok((c, b.trim().to_string()))
            })??;
        conns.push(c);
    }
    let lossy = conns[0].1.clone();
    let ix = pool.backend(&lossy).lab_index;
    d.stop_daemon()?;

    // The lossy backend drops the gateway's probes (its clients' packets
    // come from client addresses and pass) while the controller starts.
    let ns = d.lab.backend_ns(ix).to_string();
    for cmd in [
        "add table inet lose",
        "add chain inet lose input { type filter hook input priority 0 ; }",
        "add rule inet lose input ip saddr 198.18.1.1 tcp dport 8080 drop",
    ] {
        d.lab.exec_ok(&ns, &["nft", cmd])?;
    }
    d.start_daemon()?;
    // Its first probe has failed (start_daemon waits for every first
    // probe); the next ones succeed.
    let seen = d.backend_status("web", &lossy)?;
    d.lab.exec_ok(&ns, &["nft", "delete table inet lose"])?;
    ensure!(
        seen["last_error"].is_string(),
        "no probe of {lossy} failed: the test lost nothing: {seen}"
    );
    // Traffic at once (while a lost probe could have marked it down) and
    // after the next probes.
    for round in 0..2 {
        for (c, who) in conns.iter_mut() {
            let (s, body) = c.get("/")?;
            ensure!(
                s == 200 && body.trim() == who,
                "round {round}: connection to {who} moved or broke after a restart with one \
                 lost probe: {s} {body}\n{}",
                d.daemon_log()
            );
        }
        std::thread::sleep(Duration::from_millis(pool.interval_ms * 3));
    }
    ensure!(
        !d.daemon_log().contains("backend is down"),
        "a backend went down: {}",
        d.daemon_log()
    );
    d.wait_state(&lossy, "state", "active", Duration::from_secs(1))?;
    Ok(())
}
