//! `xdplb plan`: what a reload would do, before it does it. Adding a
//! backend: the plan says no established flow moves and which share of
//! the ring (so of new flows) goes to the new backend; the reload then does
//! exactly that. A refused plan changes nothing (maps, status, state file).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use xdplb_tests::{
    deploy::{render_config, BackendSpec, Deployment, PoolSpec},
    skip_unless_root, wait_until, KeepAliveClient,
};

/// Established connections held through the reload.
const HELD: usize = 12;
/// New connections after it, to measure the new backend's share.
const NEW_FLOWS: usize = 400;

/// `xdplb plan --config PATH --json`: its exit code and the plan.
fn plan(d: &Deployment, path: &std::path::Path) -> Result<(Option<i32>, Value, String)> {
    let out = d.xdplb(&[
        "plan",
        "--config",
        &path.to_string_lossy(),
        "--json",
        "--socket",
        &d.lab.socket_path().to_string_lossy(),
    ])?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("plan said: {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok((
        out.status.code(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Established flows per backend, as the last census counted them.
fn census(d: &Deployment) -> Result<BTreeMap<String, u64>> {
    let s = d.status()?;
    Ok(s["pools"][0]["backends"]
        .as_array()
        .context("no backends")?
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap_or("?").to_string(),
                b["flows"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

/// What a change may not touch: per backend its state, weight and runtime
/// state (status), each slot and VIP (the pinned maps), and the state file.
#[derive(Debug, PartialEq)]
struct Snapshot {
    status: Vec<String>,
    maps: Vec<String>,
    state_file: Option<Vec<u8>>,
}

fn snapshot(d: &Deployment) -> Result<Snapshot> {
    let s = d.status()?;
    let status = s["pools"][0]["backends"]
        .as_array()
        .context("no backends")?
        .iter()
        .map(|b| {
            format!(
                "{} {} {} {} {} {}",
                b["name"],
                b["state"],
                b["weight"],
                b["config_weight"],
                b["admin_state"],
                b["weight_override"]
            )
        })
        .collect();
    let pin = d.lab.pin_path();
    let out = d.xdplb(&["stats", "--json", "--pin-path", &pin.to_string_lossy()])?;
    ensure!(out.status.success(), "stats failed");
    let stats: Value = serde_json::from_slice(&out.stdout)?;
    let mut maps: Vec<String> = stats["backends"]
        .as_array()
        .context("no backends in stats")?
        .iter()
        .map(|b| format!("{} {} {} {}", b["pool"], b["name"], b["addr"], b["state"]))
        .collect();
    maps.extend(
        stats["vips"]
            .as_array()
            .context("no vips in stats")?
            .iter()
            .map(|v| format!("{} {} {}", v["pool"], v["vip"], v["protocol"])),
    );
    let state_file = std::fs::read(d.lab.dir().join("state.json")).ok();
    Ok(Snapshot {
        status,
        maps,
        state_file,
    })
}

#[test]
fn plan_predicts_what_adding_a_backend_moves_and_a_refused_plan_changes_nothing() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut pool = PoolSpec::new(3, 0);
    pool.min_active = 1;
    // Lab backend 3 exists from the start but joins the pool by reload.
    let mut spec = pool.clone();
    spec.backends.push(BackendSpec {
        name: "web-4".into(),
        lab_index: 3,
        weight: 100,
        spare: false,
    });
    let mut d = Deployment::new(vec![spec.clone()])?;
    std::fs::write(&d.config_path, render_config(&d.lab, &[pool.clone()]))?;
    d.pools = vec![pool];
    d.start_daemon()?;
    ensure!(
        d.ctl(&["status"])?.contains("web-3"),
        "status before the plan"
    );
    // A runtime state, so the state file exists and can be compared.
    d.ctl(&["set", "weight", "web", "web-3", "100"])?;

    let vip = SocketAddr::V4(d.pools[0].vip);
    let mut held = Vec::new();
    for _ in 0..HELD {
        let mut c = d.lab.run_in("client", || KeepAliveClient::connect(vip))??;
        let (_, who) = d.lab.run_in("client", || c.get("/"))??;
        held.push((c, who.trim().to_string()));
    }
    let mut per_backend: BTreeMap<String, u64> = BTreeMap::new();
    for (_, who) in &held {
        *per_backend.entry(who.clone()).or_default() += 1;
    }
    // The census (every 2 s) sees them.
    let counted = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        census(&d).is_ok_and(|c| c.values().sum::<u64>() == HELD as u64)
    });
    ensure!(
        counted,
        "census never saw the {HELD} flows: {:?}",
        census(&d)?
    );
    ensure!(
        per_backend
            .iter()
            .all(|(b, n)| census(&d).unwrap_or_default().get(b) == Some(n)),
        "census {:?} != connections {per_backend:?}",
        census(&d)?
    );

    // A refused plan (its [dataplane] differs) changes nothing.
    let good = render_config(&d.lab, &[spec.clone()]);
    let refused_path = d.lab.dir().join("refused.toml");
    std::fs::write(
        &refused_path,
        good.replace("ring_size = 4099", "ring_size = 4111"),
    )?;
    let before = snapshot(&d)?;
    ensure!(before.state_file.is_some(), "no state file to compare");
    let (code, v, err) = plan(&d, &refused_path)?;
    ensure!(code == Some(1), "refused plan exit {code:?}");
    ensure!(v["accepted"] == false, "{v}");
    ensure!(
        err.starts_with("error: refused:") && err.contains("[dataplane] changed"),
        "{err}"
    );
    ensure!(snapshot(&d)? == before, "a refused plan changed something");

    // The plan for web-4.
    let new_path = d.lab.dir().join("new.toml");
    std::fs::write(&new_path, &good)?;
    let (code, v, err) = plan(&d, &new_path)?;
    ensure!(code == Some(0), "plan exit {code:?}: {err}");
    ensure!(
        snapshot(&d)? == before,
        "an accepted plan changed something"
    );
    let p = &v["pools"][0];
    ensure!(p["backends_added"] == serde_json::json!(["web-4"]), "{p}");
    ensure!(
        p["flows_drained"] == 0 && p["flows_reset"] == 0 && p["flows_stranded"] == 0,
        "established flows predicted to move: {p}"
    );
    let planned: BTreeMap<String, (u64, i64)> = p["backends"]
        .as_array()
        .context("no backends in the plan")?
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap_or("?").to_string(),
                (
                    b["flows"].as_u64().unwrap_or(0),
                    b["ring_delta"].as_i64().unwrap_or(0),
                ),
            )
        })
        .collect();
    for (b, n) in &per_backend {
        ensure!(
            planned.get(b).map(|p| p.0) == Some(*n),
            "plan's flows for {b}: {planned:?}, held {per_backend:?}"
        );
    }
    let ring_size = p["ring_size"].as_u64().context("ring_size")? as f64;
    let share = planned["web-4"].1 as f64 / ring_size;
    ensure!((0.2..0.3).contains(&share), "web-4's planned share {share}");

    // The reload.
    std::fs::copy(&new_path, &d.config_path)?;
    d.ctl(&["reload"])?;
    d.pools = vec![spec];
    d.wait_state("web-4", "state", "active", Duration::from_secs(5))?;
    // No established flow moved (as planned): each held connection still
    // answers from its backend, and the census counts the same.
    for (c, who) in &mut held {
        let (s, body) = d.lab.run_in("client", || c.get("/"))??;
        ensure!(
            s == 200 && body.trim() == who,
            "{who}'s connection moved to {body}"
        );
    }
    let stable = wait_until(Duration::from_secs(6), Duration::from_millis(200), || {
        census(&d).is_ok_and(|c| {
            per_backend.iter().all(|(b, n)| c.get(b) == Some(n)) && c.get("web-4") == Some(&0)
        })
    });
    ensure!(
        stable,
        "census after the reload {:?}, before {per_backend:?}",
        census(&d)?
    );
    // New flows: web-4 gets its planned share (binomial, 4 sigma).
    let seen = d.spread(NEW_FLOWS)?;
    ensure!(seen.values().sum::<usize>() == NEW_FLOWS, "{seen:?}");
    let got = *seen.get("web-4").unwrap_or(&0) as f64;
    let want = share * NEW_FLOWS as f64;
    let sigma = (NEW_FLOWS as f64 * share * (1.0 - share)).sqrt();
    ensure!(
        (got - want).abs() <= 4.0 * sigma,
        "web-4 got {got} of {NEW_FLOWS} new flows, the plan said {want:.0} (σ {sigma:.1}): {seen:?}"
    );
    eprintln!("plan: web-4 {want:.1} of {NEW_FLOWS} new flows expected, {got} seen");
    Ok(())
}
