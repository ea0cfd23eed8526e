//! The controller section's pure half: runs
//! `lb-userspace/examples/controller_bench.rs` (Maglev build time and
//! moved share) and parses its `controller: key=value …` lines. The other
//! half — `xdplb run` probing 1000 backends — runs in the lab (`lab-bench
//! --sections probe`).

use std::path::Path;

use anyhow::{ensure, Context, Result};

use crate::cmd::Cmd;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MaglevRow {
    pub backends: u64,
    pub ring: u64,
    pub ms_min: f64,
    pub ms_median: f64,
    pub ms_max: f64,
    /// Share of the remaining backends' entries that moved when one left.
    pub moved_share: f64,
    /// Share the leaving backend owned (must move).
    pub removed_share: f64,
}

pub fn parse(out: &str) -> Result<Vec<MaglevRow>> {
    let mut rows = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("controller:") else {
            continue;
        };
        let mut r = MaglevRow::default();
        for kv in rest.split_whitespace() {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let f = || v.parse::<f64>().with_context(|| format!("{k}={v}"));
            match k {
                "backends" => r.backends = v.parse()?,
                "ring" => r.ring = v.parse()?,
                "build_ms_min" => r.ms_min = f()?,
                "build_ms_median" => r.ms_median = f()?,
                "build_ms_max" => r.ms_max = f()?,
                "moved_share" => r.moved_share = f()?,
                "removed_share" => r.removed_share = f()?,
                _ => {}
            }
        }
        rows.push(r);
    }
    ensure!(!rows.is_empty(), "no `controller:` lines in:\n{out}");
    Ok(rows)
}

pub fn run(example: &Path, args: &[&str]) -> Result<Vec<MaglevRow>> {
    let out = Cmd::new(example).args(args).read()?;
    print!("{out}");
    parse(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows() {
        let out = "controller bench: maglev ring=65537 runs=7 weight=100
     10 backends: build …
controller: backends=10 ring=65537 build_ms_min=2.6305 build_ms_median=2.7111 build_ms_max=3.2357 moved_share=0.002001 removed_share=0.100005
";
        let r = parse(out).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].backends, 10);
        assert_eq!(r[0].ms_median, 2.7111);
        assert!(parse("").is_err());
    }
}
