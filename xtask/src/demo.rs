//! `cargo xtask demo [hot-warm|fleet|pair]`: sets the machine up, builds xdplb,
//! then runs a narrated demo in a namespace lab of its own, which it
//! removes on exit and on Ctrl-C: the hot-warm demo
//! (`tests/src/bin/xdplb-demo.rs`) or the fleet demo — three gateways
//! behind a BIRD router (`tests/src/bin/xdplb-fleet-demo.rs`) — or the
//! pair demo: two gateways with keepalived, a ring change, the master lost
//! (`tests/src/bin/xdplb-pair-demo.rs`).

use anyhow::{Context, Result};

use crate::cmd::{cargo, header, target_dir};

/// Which demo `cargo xtask demo` runs.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Which {
    /// One gateway: spread, drain, a killed primary, the warm spare.
    HotWarm,
    /// Three gateways behind an ECMP router, VIPs announced over BGP.
    Fleet,
    /// Two gateways with keepalived (VRRP): a ring change, the master lost.
    Pair,
}

pub fn run(which: Which) -> Result<()> {
    crate::setup::run(crate::setup::Step::Test).context("setup")?;
    header("demo: building xdplb and the lab (release)");
    cargo(&[
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "-p",
        "xdplb-tests",
        "--bins",
    ])
    .run()?;
    let release = target_dir()?.join("release");
    header("demo: running");
    let bin = match which {
        Which::HotWarm => "xdplb-demo",
        Which::Fleet => "xdplb-fleet-demo",
        Which::Pair => "xdplb-pair-demo",
    };
    crate::cmd::Cmd::new(release.join(bin))
        .env("XDPLB_BIN", release.join("xdplb"))
        .env("LAB_BACKEND_BIN", release.join("lab-backend"))
        .run()
}
