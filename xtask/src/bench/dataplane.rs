//! The data-plane section: runs `lb-userspace/examples/dataplane_bench.rs`
//! (BPF_PROG_TEST_RUN, every iteration on the original frame) and parses
//! the per-path lines it prints:
//!
//! ```text
//!   established  min  120.1 ns  median  121.3 ns  max  125.0 ns  (counter rose by …)
//! ```

use std::path::Path;

use anyhow::{ensure, Context, Result};

use crate::cmd::Cmd;

/// The paths the example measures, in its order; `floor` is a trivial
/// XDP_TX program, the harness's own cost (`floor_1500` the same with a
/// 1514-byte frame, for the `_1500` paths). The `_partial` paths send the
/// established flow's frame with a partial checksum (CHECKSUM_PARTIAL).
/// The `_v6` paths are an IPv6 TCP VIP (74-byte frames, the smallest
/// IPv6 TCP segment), the `_udp` paths an IPv4 UDP VIP (64 bytes).
pub const PATHS: [&str; 17] = [
    "established",
    "new_flow",
    "non_vip",
    "floor",
    "established_dsr",
    "established_tunnel",
    "new_flow_capped",
    "established_partial",
    "established_1500",
    "established_1500_partial",
    "floor_1500",
    "established_v6",
    "new_flow_v6",
    "non_vip_v6",
    "established_udp",
    "new_flow_udp",
    "non_vip_udp",
];

/// Targets, ns net of the floor.
pub const TARGETS: [(&str, f64); 3] = [
    ("established", 130.0),
    ("new_flow", 400.0),
    ("non_vip", 45.0),
];

/// Katran's figures measured on this kind of machine with the same harness
/// (ns): established, new flow (1k LRU … 4M LRU), non-VIP.
pub const KATRAN: [(&str, &str); 3] = [
    ("established", "156–207"),
    ("new_flow", "575 (1k LRU) – 880 (4M LRU)"),
    ("non_vip", "75–84"),
];

/// min / median / max ns of one path over the runs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stat {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

/// One invocation of the example.
#[derive(Clone, Debug)]
pub struct DpRun {
    /// e.g. "flow table 1,048,576".
    pub label: String,
    pub flow_table: u64,
    /// In [`PATHS`] order.
    pub paths: Vec<(String, Stat)>,
}

impl DpRun {
    pub fn get(&self, path: &str) -> Option<Stat> {
        self.paths.iter().find(|(p, _)| p == path).map(|(_, s)| *s)
    }

    /// Median of `path` minus the median of the floor of its frame size.
    pub fn net(&self, path: &str) -> Option<f64> {
        let floor = if path.contains("_1500") {
            "floor_1500"
        } else {
            "floor"
        };
        Some(self.get(path)?.median - self.get(floor)?.median)
    }

    /// What completing a partial checksum costs at 64 and 1514 bytes: the
    /// partial frame's median minus the complete one's (same size, same
    /// wrapper, so the harness cancels).
    pub fn partial_cost(&self) -> Option<(f64, f64)> {
        let d = |a: &str, b: &str| Some(self.get(a)?.median - self.get(b)?.median);
        Some((
            d("established_partial", "established")?,
            d("established_1500_partial", "established_1500")?,
        ))
    }
}

/// Parses the example's stdout.
pub fn parse(out: &str) -> Result<Vec<(String, Stat)>> {
    let mut paths = Vec::new();
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let Some(name) = w.first().filter(|n| PATHS.contains(n)) else {
            continue;
        };
        let after = |key: &str| -> Option<f64> {
            let i = w.iter().position(|x| *x == key)?;
            w.get(i + 1)?.parse().ok()
        };
        if let (Some(min), Some(median), Some(max)) = (after("min"), after("median"), after("max"))
        {
            paths.push((name.to_string(), Stat { min, median, max }));
        }
    }
    for p in PATHS {
        ensure!(
            paths.iter().any(|(n, _)| n == p),
            "no `{p}` line in the dataplane_bench output:\n{out}"
        );
    }
    Ok(paths)
}

/// Runs the built example with `--repeat --runs --flow-table`.
pub fn run(example: &Path, repeat: u64, runs: u64, flow_table: u64) -> Result<DpRun> {
    let out = Cmd::new(example)
        .args([
            "--repeat".to_string(),
            repeat.to_string(),
            "--runs".into(),
            runs.to_string(),
            "--flow-table".into(),
            flow_table.to_string(),
        ])
        .read()
        .context("dataplane_bench (needs root and BPF)")?;
    print!("{out}");
    Ok(DpRun {
        label: format!("flow table {}", thousands(flow_table)),
        flow_table,
        paths: parse(&out)?,
    })
}

/// 1048576 → "1,048,576".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "dataplane bench: repeat=1000000 runs=5 flow_table=1000 ring=65537 cpus=2
  established  min  120.1 ns  median  121.3 ns  max  125.0 ns  (counter rose by 1000000 per run)
  new_flow     min  300.0 ns  median  310.5 ns  max  320.0 ns  (counter rose by 1000000 per run)
  non_vip      min   60.0 ns  median   61.0 ns  max   62.0 ns  (counter rose by 1000000 per run)
  floor        min   35.0 ns  median   36.0 ns  max   37.0 ns  (counter rose by 1000000 per run)
  established_dsr min  100.0 ns  median  101.0 ns  max  102.0 ns  (counter rose by 1000000 per run)
  established_tunnel min  110.0 ns  median  111.0 ns  max  112.0 ns  (counter rose by 1000000 per run)
  new_flow_capped min  100.0 ns  median  101.0 ns  max  102.0 ns  (counter rose by 1000000 per run)
  established_partial min  180.0 ns  median  181.3 ns  max  182.0 ns  (counter rose by 1000000 per run)
  established_1500 min  400.0 ns  median  401.0 ns  max  402.0 ns  (counter rose by 1000000 per run)
  established_1500_partial min  500.0 ns  median  501.0 ns  max  502.0 ns  (counter rose by 1000000 per run)
  floor_1500   min  250.0 ns  median  251.0 ns  max  252.0 ns  (counter rose by 1000000 per run)
  established_v6 min  130.0 ns  median  131.0 ns  max  132.0 ns  (counter rose by 1000000 per run)
  new_flow_v6  min  330.0 ns  median  331.0 ns  max  332.0 ns  (counter rose by 1000000 per run)
  non_vip_v6   min   62.0 ns  median   63.0 ns  max   64.0 ns  (counter rose by 1000000 per run)
  established_udp min  118.0 ns  median  119.0 ns  max  120.0 ns  (counter rose by 1000000 per run)
  new_flow_udp min  305.0 ns  median  306.0 ns  max  307.0 ns  (counter rose by 1000000 per run)
  non_vip_udp  min   59.0 ns  median   60.0 ns  max   61.0 ns  (counter rose by 1000000 per run)
  established  net of floor:   85.3 ns
dataplane: established_ns=121 new_flow_ns=310 non_vip_ns=61 floor_ns=36
";

    #[test]
    fn parses_paths() {
        let p = parse(OUT).unwrap();
        assert_eq!(p.len(), 17);
        let run = DpRun {
            label: String::new(),
            flow_table: 1000,
            paths: p,
        };
        assert_eq!(run.get("new_flow").unwrap().median, 310.5);
        assert!((run.net("established").unwrap() - 85.3).abs() < 1e-9);
        assert!((run.net("established_1500").unwrap() - 150.0).abs() < 1e-9);
        assert!((run.net("established_v6").unwrap() - 95.0).abs() < 1e-9);
        assert_eq!(run.get("non_vip_udp").unwrap().median, 60.0);
        let (small, full) = run.partial_cost().unwrap();
        assert!((small - 60.0).abs() < 1e-9 && (full - 100.0).abs() < 1e-9);
        assert!(parse("nothing").is_err());
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(1_048_576), "1,048,576");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(999), "999");
    }
}
