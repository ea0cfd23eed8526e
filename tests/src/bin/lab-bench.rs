//! `lab-bench`: the namespace-lab half of `cargo xtask bench` (run as root).
//!
//! Builds one lab (a client, the gateway, 4 backends) and runs, in order:
//!
//! - `probe`: `xdplb run` probing 1000 backends once a second — its CPU
//!   time and peak RSS ([`probe`]);
//! - `gateways`: forwarding, nftables DNAT, HAProxy and xdplb swapped in
//!   turn on the gateway, interleaved over rounds ([`gateways`]);
//! - `failover`: time until traffic is whole after a primary is killed
//!   ([`failover`]);
//! - `bulk`: a bulk download through NAT, dsr and tunnel (and no gateway),
//!   side by side, with the gateway's CPU per GB, on a direct-return lab
//!   of its own ([`bulk`]).
//!
//! Each section's result (or its error) goes into one JSON document written
//! to `--out`, which `xtask bench` turns into `docs/BENCHMARKS.md`. A failed
//! section does not stop the others; the exit status is non-zero if any
//! failed. The lab is removed on exit, also after a panic.

#[path = "../bench/bulk.rs"]
mod bulk;
#[path = "../bench/failover.rs"]
mod failover;
#[path = "../bench/gateways.rs"]
mod gateways;
#[path = "../bench/probe.rs"]
mod probe;
#[path = "../bench/sys.rs"]
mod sys;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use xdplb_tests::{deploy::Deployment, Lab};

/// Backend namespaces of the benchmark lab (4 × 250 ports = 1000 probed
/// backends; 4 nginx servers behind the gateways).
const LAB_BACKENDS: usize = 4;

/// Namespace-lab benchmarks of xdplb against kernel forwarding, nftables
/// DNAT and HAProxy. Needs root, wrk, iperf3, nginx, haproxy, nft.
#[derive(Parser)]
struct Args {
    /// Where to write the JSON results.
    #[arg(long, required_unless_present = "cleanup_stale")]
    out: Option<PathBuf>,
    /// Only remove labs left by dead runs (after a killed lab-bench), then exit.
    #[arg(long)]
    cleanup_stale: bool,
    /// Comma-separated sections: probe, gateways, failover, bulk.
    #[arg(long, default_value = "probe,gateways,failover,bulk")]
    sections: String,
    /// Short runs (1 round, 3 s wrk, 2 s iperf3, 5 s probe window, 3 kills).
    #[arg(long)]
    quick: bool,
    /// Gateways compared, in the order each round runs them.
    #[arg(long, default_value = "forward,nft,haproxy,xdplb")]
    gateways: String,
    /// Rounds of the interleaved gateway comparison.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 10)]
    wrk_secs: u64,
    /// Seconds of each iperf3 run.
    #[arg(long, default_value_t = 5)]
    iperf_secs: u64,
    /// Backends probed in the probe section.
    #[arg(long, default_value_t = 1000)]
    probe_backends: usize,
    /// Seconds the probe section measures.
    #[arg(long, default_value_t = 20)]
    probe_secs: u64,
    /// Primary kills in the failover section.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Rounds of the bulk comparison (none, nat, dsr, tunnel interleaved).
    #[arg(long, default_value_t = 3)]
    bulk_rounds: usize,
    /// Seconds of each bulk download.
    #[arg(long, default_value_t = 5)]
    bulk_secs: u64,
}

fn main() {
    let mut args = Args::parse();
    if args.cleanup_stale {
        Lab::cleanup_stale();
        return;
    }
    if args.quick {
        args.rounds = 1;
        args.wrk_secs = 3;
        args.iperf_secs = 2;
        args.probe_secs = 5;
        args.kills = 3;
        args.bulk_rounds = 1;
        args.bulk_secs = 2;
    }
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Runs a section, turning an error or a panic into `{"error": …}`.
fn section(name: &str, f: impl FnOnce() -> Result<Value>) -> Value {
    println!("\n== lab-bench: {name}");
    let t0 = Instant::now();
    let mut v = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            println!("lab-bench: {name} failed: {e:#}");
            json!({ "error": format!("{e:#}") })
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            println!("lab-bench: {name} panicked: {msg}");
            json!({ "error": format!("panic: {msg}") })
        }
    };
    v["wall_s"] = json!(t0.elapsed().as_secs_f64());
    v
}

fn run(a: &Args) -> Result<bool> {
    let wanted: Vec<&str> = a.sections.split(',').map(str::trim).collect();
    let t0 = Instant::now();
    let lab = Lab::builder().backends(LAB_BACKENDS).clients(1).build()?;
    let config_path = lab.dir().join("xdplb.toml");
    let mut d = Deployment {
        lab,
        pools: Vec::new(),
        config_path,
        daemon: None,
        servers: Default::default(),
        agents: BTreeMap::new(),
    };
    let mut out = json!({ "quick": a.quick });
    if wanted.contains(&"probe") {
        out["probe"] = section("probe", || {
            probe::run(
                &mut d,
                &probe::ProbeOpts {
                    backends: a.probe_backends,
                    seconds: a.probe_secs,
                },
            )
        });
    }
    if wanted.contains(&"gateways") {
        out["gateways"] = section("gateways", || {
            gateways::run(
                &mut d,
                &gateways::GwOpts {
                    gateways: a
                        .gateways
                        .split(',')
                        .map(|g| {
                            gateways::Gw::parse(g.trim())
                                .with_context(|| format!("unknown gateway {g:?}"))
                        })
                        .collect::<Result<_>>()?,
                    rounds: a.rounds,
                    wrk_secs: a.wrk_secs,
                    iperf_secs: a.iperf_secs,
                    connections: 50,
                    threads: 2,
                },
            )
        });
    }
    if wanted.contains(&"failover") {
        out["failover"] = section("failover", || {
            failover::run(&mut d, &failover::FailoverOpts { kills: a.kills })
        });
    }
    drop(d); // removes the lab; bulk builds one of its own
    if wanted.contains(&"bulk") {
        out["bulk"] = section("bulk", || {
            bulk::run(&bulk::BulkOpts {
                rounds: a.bulk_rounds,
                secs: a.bulk_secs,
            })
        });
    }
    out["wall_s"] = json!(t0.elapsed().as_secs_f64());
    let ok = ["probe", "gateways", "failover", "bulk"]
        .iter()
        .all(|s| out[s].get("error").is_none());
    let path = a.out.as_deref().context("--out is required")?;
    std::fs::write(path, serde_json::to_string_pretty(&out)?)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(ok)
}
