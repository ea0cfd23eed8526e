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
/// IPv6 TCP segment), the `_udp` paths an IPv4 UDP VIP (64 bytes). The
/// `_full` paths go through half the table's size in live flows, a
/// different one each iteration (cache misses, as on a busy gateway).
pub const PATHS: [&str; 20] = [
    "established_full",
    "established_full_tunnel",
    "established_full_v6",
    "established",
    "new_flow",
    "non_vip",
    "floor",
    "established_partial",
    "established_1500",
    "established_1500_partial",
    "established_dsr",
    "established_tunnel",
    "new_flow_capped",
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

/// min / median / max ns of one path over the runs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stat {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

/// What the kernel made of one program: instructions the verifier
/// processed, instructions after its rewrites, JITed bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Program {
    pub name: String,
    pub verified: Option<u64>,
    pub xlated: Option<u64>,
    pub jited: Option<u64>,
}

/// One invocation of the example.
#[derive(Clone, Debug)]
pub struct DpRun {
    /// e.g. "flow table 1,048,576".
    pub label: String,
    pub flow_table: u64,
    /// Live flows of the `_full` paths.
    pub full_flows: Option<u64>,
    /// In [`PATHS`] order.
    pub paths: Vec<(String, Stat)>,
    /// Katran's runs of the paths it runs (`--peer`), alternating with
    /// xdplb's; empty without a peer.
    pub peer: Vec<(String, Stat)>,
    /// `xdplb` and `katran` (with `--peer`); then the balancer's programs
    /// by name with their verifier counts alone.
    pub programs: Vec<Program>,
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

    /// Katran's median of `path` minus the floor of its frame size (the
    /// same floor: both ran through one wrapper in one run).
    pub fn peer_net(&self, path: &str) -> Option<f64> {
        let (_, st) = self.peer.iter().find(|(p, _)| p == path)?;
        let floor = if path.contains("_1500") {
            "floor_1500"
        } else {
            "floor"
        };
        Some(st.median - self.get(floor)?.median)
    }

    /// xdplb's net over Katran's net for `path`.
    pub fn ratio(&self, path: &str) -> Option<f64> {
        let (a, b) = (self.net(path)?, self.peer_net(path)?);
        (b > 0.0).then(|| a / b)
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

/// min / median / max after the words `min`, `median`, `max` of a line.
fn stat_of(w: &[&str]) -> Option<Stat> {
    let after = |key: &str| -> Option<f64> {
        let i = w.iter().position(|x| *x == key)?;
        w.get(i + 1)?.parse().ok()
    };
    Some(Stat {
        min: after("min")?,
        median: after("median")?,
        max: after("max")?,
    })
}

/// The example's stdout, parsed.
#[derive(Debug, Default)]
pub struct Parsed {
    pub paths: Vec<(String, Stat)>,
    pub peer: Vec<(String, Stat)>,
    pub programs: Vec<Program>,
    pub full_flows: Option<u64>,
}

/// Parses the example's stdout: `PATH min … median … max …`, `katran PATH
/// min …`, `program NAME verified_insns N xlated_insns N jited_bytes N`,
/// `verified NAME N` and the header's `full_flows=N`.
pub fn parse(out: &str) -> Result<Parsed> {
    let mut p = Parsed::default();
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| w.get(i).and_then(|x| x.parse::<u64>().ok());
        match w.as_slice() {
            ["katran", name, rest @ ..] if PATHS.contains(name) => {
                if let Some(st) = stat_of(rest) {
                    p.peer.push((name.to_string(), st));
                }
            }
            ["program", name, ..] => p.programs.push(Program {
                name: name.to_string(),
                verified: num(3),
                xlated: num(5),
                jited: num(7),
            }),
            ["verified", name, ..] => p.programs.push(Program {
                name: name.to_string(),
                verified: num(2),
                ..Default::default()
            }),
            [name, rest @ ..] if PATHS.contains(name) => {
                if let Some(st) = stat_of(rest) {
                    p.paths.push((name.to_string(), st));
                }
            }
            _ => {}
        }
        if let Some(v) = w.iter().find_map(|x| x.strip_prefix("full_flows=")) {
            p.full_flows = v.parse().ok();
        }
    }
    for path in PATHS {
        ensure!(
            p.paths.iter().any(|(n, _)| n == path),
            "no `{path}` line in the dataplane_bench output:\n{out}"
        );
    }
    Ok(p)
}

/// Runs the built example with `--repeat --runs --flow-table`, and
/// `--peer OBJECT` (Katran's balancer) when given.
pub fn run(
    example: &Path,
    repeat: u64,
    runs: u64,
    flow_table: u64,
    peer: Option<&Path>,
) -> Result<DpRun> {
    let mut args = vec![
        "--repeat".to_string(),
        repeat.to_string(),
        "--runs".into(),
        runs.to_string(),
        "--flow-table".into(),
        flow_table.to_string(),
    ];
    if let Some(object) = peer {
        args.push("--peer".into());
        args.push(object.display().to_string());
    }
    let out = Cmd::new(example)
        .args(args)
        .read()
        .context("dataplane_bench (needs root and BPF)")?;
    print!("{out}");
    let parsed = parse(&out)?;
    ensure!(
        peer.is_none() || !parsed.peer.is_empty(),
        "dataplane_bench ran with --peer but printed no `katran` line:\n{out}"
    );
    Ok(DpRun {
        label: format!("flow table {}", thousands(flow_table)),
        flow_table,
        full_flows: parsed.full_flows,
        paths: parsed.paths,
        peer: parsed.peer,
        programs: parsed.programs,
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

    const OUT: &str = "dataplane bench: repeat=1000000 runs=5 flow_table=1000 ring=65537 cpus=2 full_flows=625 peer=katran
  established_full min  150.0 ns  median  151.0 ns  max  152.0 ns  (counter rose by 1000000 per run)
  katran established_full min  160.0 ns  median  161.0 ns  max  162.0 ns  (its stats rose by 1000000 per run: Hits)
  established_full_tunnel min  155.0 ns  median  156.0 ns  max  157.0 ns  (counter rose by 1000000 per run)
  katran established_full_tunnel min  160.0 ns  median  161.0 ns  max  162.0 ns  (its stats rose by 1000000 per run: Hits)
  established_full_v6 min  170.0 ns  median  171.0 ns  max  172.0 ns  (counter rose by 1000000 per run)
  established  min  120.1 ns  median  121.3 ns  max  125.0 ns  (counter rose by 1000000 per run)
  katran established  min  100.0 ns  median  101.0 ns  max  102.0 ns  (its stats rose by 1000000 per run: Hits)
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
  ratio established  xdplb   85.3 ns / katran   65.0 ns net = 1.31
  program xdplb verified_insns 364673 xlated_insns 10952 jited_bytes 49937
  verified xdplb_udp4 347467
  program katran verified_insns 108061 xlated_insns 3146 jited_bytes 14378
dataplane: established_ns=121 new_flow_ns=310 non_vip_ns=61 floor_ns=36
";

    #[test]
    fn parses_paths() {
        let p = parse(OUT).unwrap();
        assert_eq!(p.paths.len(), 20);
        assert_eq!(p.full_flows, Some(625));
        let run = DpRun {
            label: String::new(),
            flow_table: 1000,
            full_flows: p.full_flows,
            paths: p.paths,
            peer: p.peer,
            programs: p.programs,
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
    fn parses_the_peer_and_programs() {
        let p = parse(OUT).unwrap();
        let names: Vec<&str> = p.peer.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["established_full", "established_full_tunnel", "established"]
        );
        let run = DpRun {
            label: String::new(),
            flow_table: 1000,
            full_flows: None,
            paths: p.paths,
            peer: p.peer,
            programs: p.programs,
        };
        // Katran's net uses the run's own floor; the ratio is xdplb's net
        // over Katran's.
        assert!((run.peer_net("established").unwrap() - 65.0).abs() < 1e-9);
        assert!((run.ratio("established").unwrap() - 85.3 / 65.0).abs() < 1e-9);
        assert!((run.ratio("established_full_tunnel").unwrap() - 120.0 / 125.0).abs() < 1e-9);
        assert_eq!(run.ratio("established_full_v6"), None);
        assert_eq!(run.ratio("new_flow"), None);
        assert_eq!(
            run.programs[0],
            Program {
                name: "xdplb".into(),
                verified: Some(364673),
                xlated: Some(10952),
                jited: Some(49937),
            }
        );
        assert_eq!(run.programs[1].name, "xdplb_udp4");
        assert_eq!(run.programs[1].verified, Some(347467));
        assert_eq!(run.programs[1].jited, None);
        assert_eq!(run.programs[2].name, "katran");
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(1_048_576), "1,048,576");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(999), "999");
    }
}
