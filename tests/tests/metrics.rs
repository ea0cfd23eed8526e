//! The Prometheus endpoint of a running daemon: the exposition parses,
//! carries the contract's names and labels, and its counters move with
//! traffic.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec, METRICS_LISTEN},
    skip_unless_root,
};

/// `name{labels}` → value, for every sample line.
fn parse(text: &str) -> Result<HashMap<String, f64>> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("bad line {line:?}"))?;
        let value: f64 = value
            .parse()
            .with_context(|| format!("bad value in {line:?}"))?;
        out.insert(series.to_string(), value);
    }
    Ok(out)
}

fn scrape(d: &Deployment) -> Result<HashMap<String, f64>> {
    let text = d.lab.run_in(d.lab.gw_ns(), || -> Result<String> {
        let mut s = TcpStream::connect(METRICS_LISTEN)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf)
    })??;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    parse(body)
}

fn find(m: &HashMap<String, f64>, name: &str, label: &str) -> Option<f64> {
    m.iter()
        .find(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(label))
        .map(|(_, v)| *v)
}

/// A metrics listener that cannot bind fails the start with the reason,
/// before the data plane is touched (not a controller running without
/// the metrics it was told to serve).
#[test]
fn a_metrics_address_in_use_fails_the_start() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = Deployment::new(vec![PoolSpec::new(1, 0)])?;
    // Another program holds the address in the gateway's namespace.
    let holder = d.lab.run_in(d.lab.gw_ns(), || {
        std::net::TcpListener::bind(METRICS_LISTEN)
    })??;
    let err = match d.start_daemon() {
        Ok(()) => anyhow::bail!("started without its metrics: {}", d.daemon_log()),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains(&format!("cannot listen for metrics on {METRICS_LISTEN}"))
            && err.contains("in use"),
        "{err}"
    );
    ensure!(
        !d.lab.pin_path().exists(),
        "the data plane was loaded before the start failed"
    );
    drop(holder);
    Ok(())
}

#[test]
fn metrics_parse_and_move_with_traffic() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = Deployment::new(vec![PoolSpec::new(2, 0)])?;
    d.start_daemon()?;
    let before = scrape(&d)?;
    for name in [
        "xdplb_backend_up",
        "xdplb_backend_active",
        "xdplb_backend_load",
        "xdplb_backend_weight",
    ] {
        ensure!(
            find(&before, name, "backend=\"web-1\"").is_some(),
            "{name} missing for web-1: {before:?}"
        );
    }
    ensure!(find(&before, "xdplb_backend_up", "backend=\"web-1\"") == Some(1.0));
    // The probe round trip: a real, small, positive time, the same in
    // status (ms) and metrics (s).
    let rtt = find(&before, "xdplb_backend_rtt_seconds", "backend=\"web-1\"")
        .context("xdplb_backend_rtt_seconds missing for web-1")?;
    ensure!(rtt > 0.0 && rtt < 0.1, "rtt {rtt} s");
    let rtt_ms = d.backend_status("web", "web-1")?["rtt_ms"].as_f64();
    ensure!(
        rtt_ms.is_some_and(|ms| ms > 0.0 && ms < 100.0),
        "{rtt_ms:?}"
    );
    ensure!(
        before
            .keys()
            .any(|k| k.starts_with("xdplb_health_check_duration_seconds_bucket")),
        "no health-check histogram"
    );
    let vip_label = format!("vip=\"{}\"", d.pools[0].vip);
    let p0 = find(&before, "xdplb_vip_packets_total", &vip_label).unwrap_or(0.0);
    let s = d.spread(25)?;
    ensure!(s.values().sum::<usize>() == 25);
    let after = scrape(&d)?;
    let p1 = find(&after, "xdplb_vip_packets_total", &vip_label).context("vip packets")?;
    let f1 = find(&after, "xdplb_vip_new_flows_total", &vip_label).context("vip new flows")?;
    ensure!(p1 >= p0 + 25.0 * 3.0, "packets {p0} → {p1}");
    ensure!(f1 >= 25.0, "new flows {f1}");
    let b: f64 = ["web-1", "web-2"]
        .iter()
        .filter_map(|n| {
            find(
                &after,
                "xdplb_backend_new_flows_total",
                &format!("backend=\"{n}\""),
            )
        })
        .sum();
    ensure!(b >= 25.0, "backend new flows {b}");
    ensure!(
        after
            .keys()
            .any(|k| k.starts_with("xdplb_dropped_packets_total{")),
        "no dropped_packets_total"
    );
    // Nothing rejected while the pool has backends; every event is
    // exported, and the lab's default offloads show as completed partial
    // checksums.
    ensure!(
        find(&after, "xdplb_vip_rejected_total", &vip_label) == Some(0.0),
        "vip rejected: {after:?}"
    );
    let events = after
        .keys()
        .filter(|k| k.starts_with("xdplb_events_total{"))
        .count();
    ensure!(
        events == lb_common::GlobalCounter::EVENTS.len(),
        "{events} event series"
    );
    let partial = find(&after, "xdplb_events_total", "event=\"partial_checksum\"")
        .context("partial_checksum event")?;
    ensure!(partial >= 25.0, "partial checksums completed: {partial}");
    ensure!(
        after.contains_key("xdplb_answered_packets_total"),
        "no answered_packets_total"
    );
    Ok(())
}
