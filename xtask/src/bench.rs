//! `cargo xtask bench [dataplane|controller|lab|all]` (default `all`):
//! measures, then rewrites `docs/BENCHMARKS.md` and `docs/benchmarks.svg`.
//!
//! - `dataplane`: ns per packet of the XDP program under BPF_PROG_TEST_RUN
//!   (`lb-userspace/examples/dataplane_bench.rs`), with a 1M- and a
//!   1k-entry flow table; with `--peer DIR`, Katran's balancer
//!   (`DIR/balancer.bpf.o`, built outside this repository as
//!   docs/BENCHMARKS.md says) side by side, in the same run.
//! - `controller`: Maglev build time and moved share
//!   (`lb-userspace/examples/controller_bench.rs`), and `xdplb run`'s CPU and
//!   peak RSS while probing 1000 backends in a namespace lab.
//! - `lab`: forwarding, nftables DNAT, HAProxy and xdplb swapped in turn on a
//!   namespace lab's gateway (new connections/s, latency, bulk throughput,
//!   CPU per connection), and failover time after a primary is killed.
//!
//! The lab parts run in `lab-bench` (`tests/src/bin/lab-bench.rs`), which
//! writes JSON that this module reads. A failed section is recorded in the
//! report and the others still run; the command then exits non-zero.
//! `--quick` makes every part short (1 round, 3 s runs):
//! indicative only, for trying the pipeline.
//!
//! # Layout
//!
//! - [`dataplane`], [`controller`], [`lab`]: run one part, parse its output.
//! - [`report`]: the Markdown, the plot's panels and the stdout summary.
//! - [`svg`]: a hand-written SVG bar chart.
//! - [`machine`]: the report header (CPU, memory, kernel, date, commit).

mod controller;
mod dataplane;
mod lab;
mod machine;
mod report;
mod svg;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde_json::Value;

use crate::cmd::{cargo, header, repo_root, target_dir};
use controller::MaglevRow;
use dataplane::DpRun;
use machine::Machine;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    Dataplane,
    Controller,
    Lab,
    All,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::Dataplane => "dataplane",
            Suite::Controller => "controller",
            Suite::Lab => "lab",
            Suite::All => "all",
        }
    }

    fn has(self, part: Suite) -> bool {
        self == Suite::All || self == part
    }

    /// The lab-bench sections this suite needs.
    fn lab_sections(self) -> Vec<&'static str> {
        match self {
            Suite::Dataplane => vec![],
            Suite::Controller => vec!["probe"],
            Suite::Lab => vec!["gateways", "failover", "bulk"],
            Suite::All => vec!["probe", "gateways", "failover", "bulk"],
        }
    }
}

/// Flow-table sizes the data plane is measured with: the config default,
/// and Katran's small-LRU comparison point.
const DP_FLOW_TABLES: [u64; 2] = [1_048_576, 1_000];
/// Timed Maglev builds per backend count.
const MAGLEV_RUNS: usize = 7;
/// Ring for 1000 backends in a real config (prime, ≥ 100 × 1000).
const BIG_RING: &str = "100003";
/// How long lab-bench may run before it is killed (full / quick).
const LAB_DEADLINE: Duration = Duration::from_secs(20 * 60);
const LAB_DEADLINE_QUICK: Duration = Duration::from_secs(6 * 60);

/// Everything one run measured; [`report`] renders it.
pub struct Results {
    pub suite_name: &'static str,
    pub quick: bool,
    pub machine: Machine,
    pub wall: Duration,
    pub dp_repeat: u64,
    pub dp_runs: u64,
    /// `None`: not part of this suite.
    pub dataplane: Option<Vec<Result<DpRun, String>>>,
    /// Katran's build the data plane was compared with (`--peer`).
    pub peer: Option<Peer>,
    pub maglev_runs: usize,
    pub maglev: Option<Result<Vec<MaglevRow>, String>>,
    /// lab-bench sections requested.
    pub lab_sections: Vec<&'static str>,
    pub lab: Option<Result<Value, String>>,
    pub failures: Vec<String>,
}

impl Results {
    pub fn lab_ran(&self, section: &str) -> bool {
        self.lab_sections.contains(&section)
    }

    /// The idle machine's busy rate measured before the gateway rounds.
    pub fn idle_baseline(&self) -> Option<f64> {
        let v: Vec<f64> = match &self.lab {
            Some(Ok(l)) => l["gateways"]["idle_busy_per_s"]
                .as_array()?
                .iter()
                .filter_map(Value::as_f64)
                .collect(),
            _ => return None,
        };
        (!v.is_empty()).then(|| median(&v))
    }
}

/// Katran's balancer for `--peer DIR`: `DIR/balancer.bpf.o`, and what
/// `DIR/BUILD` says of how it was built (commit, flags), if it is there.
pub struct Peer {
    pub object: PathBuf,
    pub build: Option<String>,
}

impl Peer {
    pub fn open(dir: &std::path::Path) -> Result<Peer> {
        let object = dir.join("balancer.bpf.o");
        if !object.is_file() {
            bail!(
                "--peer {}: no balancer.bpf.o there (docs/BENCHMARKS.md says how to build Katran's)",
                dir.display()
            );
        }
        let build = std::fs::read_to_string(dir.join("BUILD"))
            .ok()
            .map(|s| s.trim().to_string());
        Ok(Peer { object, build })
    }
}

/// Median (upper middle) of a non-empty slice; NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs `suite`; `quick` is one round of short runs (indicative only);
/// `peer` a directory with Katran's `balancer.bpf.o` for the data plane.
pub fn run_with(suite: Suite, quick: bool, peer: Option<PathBuf>) -> Result<()> {
    let peer = peer.as_deref().map(Peer::open).transpose()?;
    let t0 = Instant::now();
    let (dp_repeat, dp_runs) = if quick { (200_000, 3) } else { (1_000_000, 5) };
    let maglev_runs = if quick { 5 } else { MAGLEV_RUNS };
    let mut r = Results {
        suite_name: suite.name(),
        quick,
        machine: Machine::probe(),
        wall: Duration::ZERO,
        dp_repeat,
        dp_runs,
        dataplane: None,
        peer,
        maglev_runs,
        maglev: None,
        lab_sections: suite.lab_sections(),
        lab: None,
        failures: Vec::new(),
    };

    header(&format!("bench {}: build (release)", suite.name()));
    let built = build(suite);
    if let Err(e) = &built {
        r.failures.push(format!("build: {e:#}"));
    }
    let release = target_dir()
        .map(|t| t.join("release"))
        .unwrap_or_else(|_| repo_root().join("target/release"));
    let examples = release.join("examples");
    let build_err = built.as_ref().err().map(|e| format!("build failed: {e:#}"));

    if suite.has(Suite::Dataplane) {
        header("bench: data plane (BPF_PROG_TEST_RUN)");
        let runs = DP_FLOW_TABLES
            .iter()
            .map(|&ft| match &build_err {
                Some(e) => Err(e.clone()),
                None => dataplane::run(
                    &examples.join("dataplane_bench"),
                    dp_repeat,
                    dp_runs,
                    ft,
                    r.peer.as_ref().map(|p| p.object.as_path()),
                )
                .map_err(|e| format!("dataplane_bench --flow-table {ft}: {e:#}")),
            })
            .collect::<Vec<_>>();
        r.failures
            .extend(runs.iter().filter_map(|x| x.as_ref().err().cloned()));
        r.dataplane = Some(runs);
    }

    if suite.has(Suite::Controller) {
        header("bench: controller (Maglev)");
        let runs = maglev_runs.to_string();
        let ex = examples.join("controller_bench");
        let m = match &build_err {
            Some(e) => Err(e.clone()),
            None => controller::run(&ex, &["--runs", &runs])
                .and_then(|mut rows| {
                    rows.extend(controller::run(
                        &ex,
                        &["--runs", &runs, "--ring", BIG_RING, "--backends", "1000"],
                    )?);
                    Ok(rows)
                })
                .map_err(|e| format!("controller_bench: {e:#}")),
        };
        if let Err(e) = &m {
            r.failures.push(e.clone());
        }
        r.maglev = Some(m);
    }

    if !r.lab_sections.is_empty() {
        header(&format!(
            "bench: namespace lab ({})",
            r.lab_sections.join(", ")
        ));
        let out = std::env::temp_dir().join(format!("xdplb-lab-bench-{}.json", std::process::id()));
        let mut args = vec!["--sections".to_string(), r.lab_sections.join(",")];
        if quick {
            args.push("--quick".into());
        }
        let deadline = if quick {
            LAB_DEADLINE_QUICK
        } else {
            LAB_DEADLINE
        };
        let lab = match &build_err {
            Some(e) => Err(e.clone()),
            None => lab::run(
                &release.join("lab-bench"),
                &release.join("xdplb"),
                &out,
                &args,
                deadline,
            )
            .map_err(|e| format!("lab-bench: {e:#}")),
        };
        let _ = std::fs::remove_file(&out);
        match &lab {
            Err(e) => r.failures.push(e.clone()),
            Ok(v) => {
                for s in &r.lab_sections {
                    if let Some(e) = lab::section_error(&v[*s]) {
                        r.failures.push(format!("lab {s}: {e}"));
                    }
                }
                for run in v["bulk"]["runs"].as_array().into_iter().flatten() {
                    if let Some(e) = run["error"].as_str() {
                        r.failures.push(format!(
                            "lab bulk: {} round {}: {e}",
                            run["path"].as_str().unwrap_or("?"),
                            run["round"].as_u64().unwrap_or(0) + 1
                        ));
                    }
                }
                for run in v["gateways"]["runs"].as_array().into_iter().flatten() {
                    if let Some(e) = run["error"].as_str() {
                        r.failures.push(format!(
                            "lab gateways: {} round {}: {e}",
                            run["gateway"].as_str().unwrap_or("?"),
                            run["round"].as_u64().unwrap_or(0) + 1
                        ));
                    }
                    if let Some(e) = run["bulk_error"].as_str() {
                        r.failures.push(format!(
                            "lab gateways: {} round {} bulk: {e}",
                            run["gateway"].as_str().unwrap_or("?"),
                            run["round"].as_u64().unwrap_or(0) + 1
                        ));
                    }
                }
            }
        }
        r.lab = Some(lab);
    }

    r.wall = t0.elapsed();
    let docs = write_docs(&r)?;
    header("bench: summary");
    print!("{}", report::summary(&r));
    println!(
        "wall time {:.0} s; report: {}",
        r.wall.as_secs_f64(),
        docs.display()
    );
    // The data plane's one-line verdict comes last, in the form scripts
    // grep for (medians at the default flow-table size).
    if let Some(run) = r
        .dataplane
        .iter()
        .flatten()
        .filter_map(|run| run.as_ref().ok())
        .max_by_key(|run| run.flow_table)
    {
        let ns = |p: &str| run.get(p).map_or(f64::NAN, |s| s.median);
        println!(
            "dataplane: established_ns={:.0} new_flow_ns={:.0} non_vip_ns={:.0} floor_ns={:.0}",
            ns("established"),
            ns("new_flow"),
            ns("non_vip"),
            ns("floor")
        );
    }
    if !r.failures.is_empty() {
        for f in &r.failures {
            println!("FAILED: {}", f.lines().next().unwrap_or(""));
        }
        bail!(
            "{} benchmark part(s) failed (recorded in {})",
            r.failures.len(),
            docs.display()
        );
    }
    Ok(())
}

/// Builds what `suite` runs, in one cargo invocation per package.
fn build(suite: Suite) -> Result<()> {
    let mut args = vec!["build", "--release", "-p", "lb-userspace", "--bin", "xdplb"];
    if suite.has(Suite::Dataplane) {
        args.extend(["--example", "dataplane_bench"]);
    }
    if suite.has(Suite::Controller) {
        args.extend(["--example", "controller_bench"]);
    }
    cargo(&args).run()?;
    if !suite.lab_sections().is_empty() {
        cargo(&[
            "build",
            "--release",
            "-p",
            "xdplb-tests",
            "--bin",
            "lab-bench",
            "--bin",
            "lab-backend",
        ])
        .run()?;
    }
    Ok(())
}

/// Writes `docs/BENCHMARKS.md` and `docs/benchmarks.svg`; returns the former.
fn write_docs(r: &Results) -> Result<PathBuf> {
    let docs = repo_root().join("docs");
    std::fs::create_dir_all(&docs).with_context(|| format!("create {}", docs.display()))?;
    let md = docs.join("BENCHMARKS.md");
    std::fs::write(&md, report::markdown(r)).with_context(|| format!("write {}", md.display()))?;
    let commit = r
        .machine
        .commit
        .replace(" (with uncommitted changes)", "+dirty");
    let title = format!(
        "xdplb benchmarks · {} · {} CPUs · kernel {} · {commit}{}",
        r.machine.date,
        r.machine.nproc,
        r.machine.kernel,
        if r.quick {
            " · QUICK (indicative)"
        } else {
            ""
        }
    );
    let svg = docs.join("benchmarks.svg");
    std::fs::write(&svg, svg::render(&title, &report::panels(r)))
        .with_context(|| format!("write {}", svg.display()))?;
    Ok(md)
}
