//! The lab sections: runs `lab-bench` (xdplb-tests' `src/bin/lab-bench.rs`)
//! as a child with a deadline, reads the JSON it writes, and aggregates
//! the interleaved gateway runs into medians.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::median;

/// The gateways in the order lab-bench interleaves them; xdplb last.
pub const GATEWAYS: [&str; 4] = ["forward", "nft", "haproxy", "xdplb"];

/// Human names for the report.
pub fn gateway_title(g: &str) -> &'static str {
    match g {
        "forward" => "plain forwarding (ceiling)",
        "nft" => "nftables DNAT",
        "haproxy" => "HAProxy mode tcp",
        "xdplb" => "xdplb",
        _ => "?",
    }
}

/// Runs `lab-bench` with `args`, killing it after `deadline`; returns its
/// JSON (which records per-section failures itself).
pub fn run(
    bin: &Path,
    xdplb: &Path,
    out: &Path,
    args: &[String],
    deadline: Duration,
) -> Result<Value> {
    let _ = std::fs::remove_file(out);
    println!(
        "+ {} --out {} {}",
        bin.display(),
        out.display(),
        args.join(" ")
    );
    let mut child = Command::new(bin)
        .arg("--out")
        .arg(out)
        .args(args)
        .env("XDPLB_BIN", xdplb)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let start = Instant::now();
    // Bounded wait: one poll a second up to the deadline.
    let mut status = None;
    for _ in 0..=deadline.as_secs() {
        if let Some(s) = child.try_wait()? {
            status = Some(s);
            break;
        }
        if start.elapsed() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        // A killed lab-bench cannot remove its lab; a new one clears it.
        let _ = Command::new(bin).arg("--cleanup-stale").status();
        bail!("lab-bench did not finish within {deadline:?}; killed");
    };
    let text = std::fs::read_to_string(out).with_context(|| {
        format!(
            "lab-bench exited {status} without writing {}",
            out.display()
        )
    })?;
    let v: Value = serde_json::from_str(&text).context("lab-bench JSON")?;
    Ok(v)
}

/// A section's error, if it failed.
pub fn section_error(v: &Value) -> Option<String> {
    v.get("error").and_then(Value::as_str).map(str::to_owned)
}

/// One gateway's medians over its successful rounds.
#[derive(Clone, Debug, Default)]
pub struct GwSummary {
    pub gateway: String,
    pub ok_runs: usize,
    pub failed_runs: Vec<String>,
    pub rps: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors: Option<f64>,
    pub cpu_per_10k: Option<f64>,
    pub softirq_per_10k: Option<f64>,
    pub ksoftirqd_per_10k: Option<f64>,
    pub process_per_10k: Option<f64>,
    pub bulk_gbps: Option<f64>,
    pub bulk_errors: Vec<String>,
}

pub fn summarize(g: &Value) -> Vec<GwSummary> {
    let runs = g["runs"].as_array().cloned().unwrap_or_default();
    GATEWAYS
        .iter()
        .map(|name| {
            let mine: Vec<&Value> = runs.iter().filter(|r| r["gateway"] == *name).collect();
            let ok: Vec<&Value> = mine
                .iter()
                .copied()
                .filter(|r| r.get("error").is_none())
                .collect();
            let med = |key: &str| -> Option<f64> {
                let v: Vec<f64> = ok.iter().filter_map(|r| r[key].as_f64()).collect();
                (!v.is_empty()).then(|| median(&v))
            };
            GwSummary {
                gateway: name.to_string(),
                ok_runs: ok.len(),
                failed_runs: mine
                    .iter()
                    .filter_map(|r| r["error"].as_str().map(str::to_owned))
                    .collect(),
                rps: med("rps"),
                p50_ms: med("p50_ms"),
                p99_ms: med("p99_ms"),
                errors: med("errors"),
                cpu_per_10k: med("cpu_per_10k_s"),
                softirq_per_10k: med("softirq_per_10k_s"),
                ksoftirqd_per_10k: med("ksoftirqd_per_10k_s"),
                process_per_10k: med("process_cpu_per_10k_s"),
                bulk_gbps: med("bulk_gbps"),
                bulk_errors: ok
                    .iter()
                    .filter_map(|r| r["bulk_error"].as_str().map(str::to_owned))
                    .collect(),
            }
        })
        .collect()
}

/// The paths of the bulk section, in the order lab-bench runs them.
pub const BULK_PATHS: [&str; 4] = ["none", "nat", "dsr", "tunnel"];

/// Human names for the bulk report.
pub fn bulk_title(p: &str) -> &'static str {
    match p {
        "none" => "no gateway (router → backend)",
        "nat" => "xdplb nat",
        "dsr" => "xdplb dsr",
        "tunnel" => "xdplb tunnel (IPIP, `xdplb decap`)",
        _ => "?",
    }
}

/// One path's medians over its successful bulk rounds.
#[derive(Clone, Debug, Default)]
pub struct BulkSummary {
    pub path: String,
    pub ok_runs: usize,
    pub failed_runs: Vec<String>,
    pub gbps: Option<f64>,
    pub mb: Option<f64>,
    /// Whole machine, idle subtracted.
    pub cpu_per_gb: Option<f64>,
    /// The machine's CPU per GB less the same round's `none`: what the
    /// gateway adds.
    pub gateway_cpu_per_gb: Option<f64>,
    /// Softirq time (where XDP, forwarding and veth delivery run) per GB,
    /// whole machine, and less the same round's `none`.
    pub softirq_per_gb: Option<f64>,
    pub gateway_softirq_per_gb: Option<f64>,
    pub gateway_rx_mb_per_gb: Option<f64>,
    pub xdp_packets_per_gb: Option<f64>,
}

pub fn summarize_bulk(b: &Value) -> Vec<BulkSummary> {
    let runs = b["runs"].as_array().cloned().unwrap_or_default();
    let ok = |r: &&Value| r.get("error").is_none();
    let none_in = |round: &Value, key: &str| -> Option<f64> {
        runs.iter()
            .filter(ok)
            .find(|r| r["path"] == "none" && r["round"] == *round)
            .and_then(|r| r[key].as_f64())
    };
    BULK_PATHS
        .iter()
        .map(|name| {
            let mine: Vec<&Value> = runs.iter().filter(|r| r["path"] == *name).collect();
            let good: Vec<&Value> = mine.iter().copied().filter(ok).collect();
            let med = |v: Vec<f64>| (!v.is_empty()).then(|| median(&v));
            let key = |k: &str| med(good.iter().filter_map(|r| r[k].as_f64()).collect());
            let net = |k: &str| {
                med(good
                    .iter()
                    .filter_map(|r| Some(r[k].as_f64()? - none_in(&r["round"], k)?))
                    .collect())
            };
            BulkSummary {
                path: name.to_string(),
                ok_runs: good.len(),
                failed_runs: mine
                    .iter()
                    .filter_map(|r| r["error"].as_str().map(str::to_owned))
                    .collect(),
                gbps: key("gbps"),
                mb: key("bytes").map(|b| b / 1e6),
                cpu_per_gb: key("cpu_per_gb_s"),
                gateway_cpu_per_gb: net("cpu_per_gb_s"),
                softirq_per_gb: key("softirq_per_gb_s"),
                gateway_softirq_per_gb: net("softirq_per_gb_s"),
                gateway_rx_mb_per_gb: key("gateway_rx_per_gb").map(|b| b / 1e6),
                xdp_packets_per_gb: key("xdp_packets_per_gb"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bulk_gateway_cpu_is_net_of_the_same_rounds_none() {
        let v = json!({"runs": [
            {"path": "none", "round": 0, "cpu_per_gb_s": 1.0, "gbps": 10.0},
            {"path": "nat", "round": 0, "cpu_per_gb_s": 4.0, "gbps": 4.0},
            {"path": "none", "round": 1, "cpu_per_gb_s": 2.0, "gbps": 10.0},
            {"path": "nat", "round": 1, "cpu_per_gb_s": 4.5, "gbps": 4.0},
            {"path": "dsr", "round": 1, "error": "boom"},
        ]});
        let s = summarize_bulk(&v);
        let nat = s.iter().find(|b| b.path == "nat").unwrap();
        assert_eq!(nat.ok_runs, 2);
        // round 0: 3.0, round 1: 2.5; median = upper middle.
        assert_eq!(nat.gateway_cpu_per_gb, Some(3.0));
        let none = s.iter().find(|b| b.path == "none").unwrap();
        assert_eq!(none.gateway_cpu_per_gb, Some(0.0));
        let dsr = s.iter().find(|b| b.path == "dsr").unwrap();
        assert_eq!((dsr.ok_runs, dsr.failed_runs.len()), (0, 1));
        assert_eq!(dsr.gbps, None);
    }
}
