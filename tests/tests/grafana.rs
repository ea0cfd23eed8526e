//! The Grafana dashboard (`deploy/grafana/xdplb.json`): well-formed, and
//! every metric and label its queries name is one a running daemon really
//! exports (scraped from `metrics_listen` in the lab, with traffic and
//! health checks behind it).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use xdplb_tests::{
    deploy::{Deployment, LoadSpec, PoolSpec, METRICS_LISTEN},
    skip_unless_root, wait_until,
};

fn dashboard() -> Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/xdplb.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

/// Every PromQL query: panel targets and templating queries.
fn queries(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(e.to_string());
            }
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// Metric names in a query, each with the label names its selector uses;
/// and the labels of its `by (…)` clauses.
fn names_in(expr: &str) -> (BTreeMap<String, BTreeSet<String>>, BTreeSet<String>) {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            // Skip string literals (label values, `$pool`).
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if !ident(b[i]) || (i > 0 && ident(b[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && ident(b[i]) {
            i += 1;
        }
        let word = &expr[start..i];
        let rest = expr[i..].trim_start();
        if word.starts_with("xdplb_") {
            let labels = metrics.entry(word.to_string()).or_default();
            if let Some(sel) = rest.strip_prefix('{') {
                let sel = sel.split('}').next().unwrap_or("");
                for m in sel.split(',') {
                    let name: String = m
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        labels.insert(name);
                    }
                }
            }
        } else if word == "by" || word == "without" {
            if let Some(list) = rest.strip_prefix('(') {
                for l in list.split(')').next().unwrap_or("").split(',') {
                    let l = l.trim();
                    if !l.is_empty() {
                        by.insert(l.to_string());
                    }
                }
            }
        }
    }
    (metrics, by)
}

#[test]
fn dashboard_is_well_formed() -> Result<()> {
    let d = dashboard()?;
    ensure!(d["uid"] == "xdplb" && d["title"].is_string());
    let panels = d["panels"].as_array().context("panels")?;
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for p in panels {
        ensure!(
            ids.insert(p["id"].as_u64().context("panel id")?),
            "duplicate id in {p}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().context("x")?, g["w"].as_u64().context("w")?);
        ensure!(x + w <= 24, "{} is wider than the grid", p["title"]);
        if p["type"] != "row" {
            ensure!(
                p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "{} has no query",
                p["title"]
            );
            titles.push(p["title"].as_str().unwrap_or("").to_lowercase());
        }
    }
    // What the dashboard is for.
    for want in [
        "vip packets",
        "backend packets",
        "new flows",
        "drops/s by reason",
        "backend state",
        "health-check latency",
        "load",
    ] {
        ensure!(
            titles.iter().any(|t| t.contains(want)),
            "no panel about {want}: {titles:?}"
        );
    }
    let (m, by) =
        names_in(r#"sum by (pool, vip) (rate(xdplb_vip_packets_total{pool=~"$pool"}[5m]))"#);
    ensure!(m["xdplb_vip_packets_total"].contains("pool") && by.contains("vip"));
    Ok(())
}

fn scrape(d: &Deployment) -> Result<String> {
    let text = d.lab.run_in(d.lab.gw_ns(), || -> Result<String> {
        let mut s = TcpStream::connect(METRICS_LISTEN)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf)
    })??;
    let (_, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
    Ok(body.to_string())
}

/// Sample name → label names seen on it.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let set = out.entry(name.to_string()).or_default();
        for kv in labels.trim_end_matches('}').split("\",") {
            if let Some((k, _)) = kv.split_once('=') {
                set.insert(k.to_string());
            }
        }
    }
    out
}

#[test]
fn every_query_names_metrics_the_daemon_exports() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    // A pool polling agents, so the agent families are exported too.
    let mut pool = PoolSpec::new(2, 0);
    pool.load = Some(LoadSpec {
        interval_ms: 200,
        high: 0.8,
        low: 0.3,
        scale_up_after_ms: 1000,
        scale_down_after_ms: 1000,
        slow_start_ms: 0,
    });
    let mut d = Deployment::new(vec![pool])?;
    d.start_daemon()?;
    d.spread(20)?;
    let dash = dashboard()?;
    // Wait until the exposition has every family the dashboard queries
    // (the agent families appear once agents have answered); what is
    // missing after that is reported below, label by label.
    let wanted: BTreeSet<String> = queries(&dash)
        .iter()
        .flat_map(|q| names_in(q).0.into_keys())
        .collect();
    ensure!(!wanted.is_empty(), "the dashboard queries no xdplb metric");
    let _all_there = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        scrape(&d).is_ok_and(|t| {
            let have = exported(&t);
            wanted.iter().all(|m| have.contains_key(m))
        })
    });
    let text = scrape(&d)?;
    let have = exported(&text);
    let mut checked = BTreeSet::new();
    for q in queries(&dash) {
        let (metrics, by) = names_in(&q);
        ensure!(!metrics.is_empty(), "query names no xdplb metric: {q}");
        for (name, labels) in &metrics {
            let got = have.get(name).with_context(|| {
                format!(
                    "{name} (in {q}) is not exported; the daemon has {:?}",
                    have.keys().collect::<Vec<_>>()
                )
            })?;
            for l in labels {
                ensure!(
                    got.contains(l),
                    "{name} has no label {l} (in {q}); it has {got:?}"
                );
            }
            checked.insert(name.clone());
        }
        for l in &by {
            ensure!(
                metrics.keys().any(|m| have[m].contains(l)),
                "by ({l}) in {q}: no metric there carries it"
            );
        }
    }
    println!(
        "grafana: {} metric names checked against the exposition: {checked:?}",
        checked.len()
    );
    // The contract's names are all charted.
    for name in [
        "xdplb_vip_packets_total",
        "xdplb_vip_bytes_total",
        "xdplb_vip_new_flows_total",
        "xdplb_backend_packets_total",
        "xdplb_backend_bytes_total",
        "xdplb_backend_new_flows_total",
        "xdplb_backend_up",
        "xdplb_backend_active",
        "xdplb_backend_load",
        "xdplb_backend_weight",
        "xdplb_dropped_packets_total",
        "xdplb_health_check_duration_seconds_bucket",
    ] {
        ensure!(
            checked.contains(name),
            "the dashboard does not chart {name}"
        );
    }
    Ok(())
}
